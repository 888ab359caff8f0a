//! Reaching the agent: its address and TLS settings from the command line, the channel, and
//! how a failed call reads.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};
use tracer_proto::v1::leak_tracer_client::LeakTracerClient;

/// The agent's default socket. Must match the daemon's `api::server::DEFAULT_SOCKET` (where
/// `tracer-daemon run` listens without `--listen`).
pub(crate) const DEFAULT_SOCKET: &str = "/run/tracer/tracer.sock";

/// Largest response accepted. Must match the daemon's `api::server::MAX_RESPONSE_BYTES` (the
/// largest it sends): a report of 1,000 stacks with deep frames is several MiB.
pub(crate) const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// The client of the agent's API.
pub(crate) type Client = LeakTracerClient<Channel>;

/// Where the agent is, and how to trust it.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// The agent's API: unix:PATH, https://HOST:PORT (TLS) or http://HOST:PORT (an agent run
    /// with --insecure).
    #[arg(long, global = true, env = "TRACER_SERVER", default_value_t = format!("unix:{DEFAULT_SOCKET}"))]
    server: String,

    /// PEM CA bundle that signed the agent's certificate (https:// servers).
    #[arg(long, global = true, env = "TRACER_TLS_CA")]
    tls_ca: Option<PathBuf>,

    /// PEM client certificate, for agents that require one (with --tls-key).
    #[arg(long, global = true, env = "TRACER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM key of the client certificate.
    #[arg(long, global = true, env = "TRACER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Name the agent's certificate must carry, when it differs from the server's host.
    #[arg(long, global = true, env = "TRACER_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
}

/// Connects to the agent.
pub(crate) async fn connect(args: &ServerArgs) -> anyhow::Result<Client> {
    let server = args.server.as_str();
    let channel = if let Some(path) = server.strip_prefix("unix:") {
        let path = path.to_owned();
        // The authority is `localhost` whatever the path: HTTP/2 servers refuse a socket path
        // as `:authority`.
        Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot connect to {server}: {} (is tracer-daemon run listening there, and \
                     may this user use its socket?)",
                    error_chain(&e)
                )
            })?
    } else if server.starts_with("https://") {
        Endpoint::from_shared(server.to_owned())?
            .tls_config(client_tls(args)?)?
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {server}: {}", error_chain(&e)))?
    } else if server.starts_with("http://") {
        Endpoint::from_shared(server.to_owned())?
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {server}: {}", error_chain(&e)))?
    } else {
        anyhow::bail!(
            "--server {server:?}: expected unix:PATH, https://HOST:PORT or http://HOST:PORT"
        );
    };
    Ok(LeakTracerClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES))
}

/// The client's TLS settings from its flags, for an https:// server.
fn client_tls(args: &ServerArgs) -> anyhow::Result<ClientTlsConfig> {
    let read = |what: &str, path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
    };
    let mut tls = ClientTlsConfig::new();
    tls = match &args.tls_ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read("--tls-ca", ca)?)),
        None => anyhow::bail!(
            "--server {} uses TLS: give --tls-ca with the CA that signed the agent's certificate",
            args.server
        ),
    };
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        tls = tls.identity(Identity::from_pem(
            read("--tls-cert", cert)?,
            read("--tls-key", key)?,
        ));
    }
    if let Some(name) = &args.tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(tls)
}

/// A failed call as people and scripts read it: the status code's name (`NotFound`,
/// `FailedPrecondition`), then the agent's message.
pub(crate) fn status(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

/// An error and its sources on one line (TLS failures hide the reason in the sources).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
