//! Serving the API: a Unix socket by default (TCP only when asked), with bounded message
//! sizes, per-connection concurrency and stream limits, health and reflection.

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::Server;
use tracer_proto::v1::leak_tracer_server::LeakTracerServer;
use tracing::{info, warn};

use crate::{agent::AgentHandle, api::LeakTracerService};

/// The socket both binaries use when told nothing else.
pub const DEFAULT_SOCKET: &str = "/run/tracer/tracer.sock";

/// Largest request accepted (requests are small: selectors and numbers).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest response sent (a report is bounded by top ≤ 1000 stacks of ≤ 64 frames).
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// Where to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() || !path.starts_with('/') {
                return Err(format!(
                    "{text:?}: a unix socket path must be absolute (unix:/run/tracer/tracer.sock)"
                ));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = text.strip_prefix("tcp:") {
            return addr.parse().map(Self::Tcp).map_err(|e| {
                format!("{text:?}: {e} (expected tcp:HOST:PORT, e.g. tcp:127.0.0.1:7443)")
            });
        }
        Err(format!("{text:?}: expected unix:PATH or tcp:HOST:PORT"))
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be created.
    #[error("cannot listen on {what}")]
    Listen {
        /// The socket or address.
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The reflection service could not be built.
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The server failed.
    #[error("the gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listen: &Listen,
    agent: AgentHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<LeakTracerServer<LeakTracerService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tracer_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let service = LeakTracerServer::new(LeakTracerService::new(agent))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);
    let router = Server::builder()
        .concurrency_limit_per_connection(32)
        .max_concurrent_streams(Some(128))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .timeout(Duration::from_secs(60))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service);
    match listen {
        Listen::Unix(path) => {
            let listener = bind_unix(path)?;
            info!(socket = %path.display(), "serving gRPC");
            let result = router
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
                .await;
            let _ = std::fs::remove_file(path);
            result?;
        }
        Listen::Tcp(addr) => {
            warn!(%addr, "serving gRPC over plain TCP: anyone who can reach it can read leak reports");
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen {
                    what: addr.to_string(),
                    source,
                })?;
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                .await?;
        }
    }
    Ok(())
}

/// Binds a Unix socket readable and writable by its owner only, replacing a stale one.
fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    let what = path.display().to_string();
    let error = |source| ServeError::Listen {
        what: what.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(error)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(error)?;
    Ok(listener)
}
