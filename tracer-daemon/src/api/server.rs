//! Serving the API: a Unix socket by default (0600, or 0660 for a chosen group, in a directory
//! only its owner can write); TCP only with TLS (optionally requiring client certificates) or an
//! explicit `--insecure`; bounded message sizes, per-connection concurrency and stream limits,
//! health and reflection, and a health-only plain listener for kubelet probes.

use std::{
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
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

/// Files of the TCP listener's TLS: the server's certificate chain and key, and optionally the
/// CA whose certificates clients must present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle; when set, clients without a certificate it signed are refused.
    pub client_ca: Option<PathBuf>,
}

/// How the API is exposed.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The main listener.
    pub listen: Listen,
    /// Group allowed to use the Unix socket (mode 0660); `None`: owner only (0600).
    pub socket_group: Option<u32>,
    /// TLS for a TCP listener.
    pub tls: Option<TlsFiles>,
    /// Plain TCP without TLS, asked for explicitly.
    pub insecure: bool,
    /// A plain-TCP listener serving only grpc.health.v1 (for kubelet gRPC probes).
    pub health_listen: Option<SocketAddr>,
}

impl ServeOptions {
    /// Options for `listen` with every other setting at its default.
    pub fn new(listen: Listen) -> Self {
        Self {
            listen,
            socket_group: None,
            tls: None,
            insecure: false,
            health_listen: None,
        }
    }

    /// Checks the combination, and makes and checks the socket's directory, before anything
    /// starts (so a bad setting fails in milliseconds, not after the BPF programs load).
    pub fn prepare(&self) -> Result<(), ServeError> {
        self.validate()?;
        if let Listen::Unix(path) = &self.listen
            && let Some(dir) = path.parent()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|source| ServeError::Listen {
                    what: dir.display().to_string(),
                    source,
                })?;
            check_directory(dir)?;
        }
        Ok(())
    }

    /// Checks the combination.
    pub fn validate(&self) -> Result<(), ServeError> {
        match &self.listen {
            Listen::Unix(_) if self.tls.is_some() => Err(ServeError::Config(
                "--tls-cert/--tls-key apply to a tcp: listener; a Unix socket is protected by its \
                 file mode (see --socket-group)"
                    .into(),
            )),
            Listen::Tcp(addr) if self.tls.is_none() && !self.insecure => {
                Err(ServeError::Config(format!(
                    "listening on tcp:{addr} needs TLS: give --tls-cert and --tls-key (and \
                     --tls-client-ca to require client certificates), or --insecure to serve \
                     leak reports in plain text to anyone who can reach the port"
                )))
            }
            Listen::Tcp(_) if self.tls.is_some() && self.insecure => Err(ServeError::Config(
                "--insecure and --tls-cert contradict each other: drop one".into(),
            )),
            Listen::Tcp(_) if self.socket_group.is_some() => Err(ServeError::Config(
                "--socket-group applies to a unix: listener".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The options contradict each other or miss something.
    #[error("{0}")]
    Config(String),
    /// The socket could not be created.
    #[error("cannot listen on {what}")]
    Listen {
        /// The socket or address.
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The socket's directory could be written by someone else.
    #[error(
        "the socket directory {dir} is writable by {who}: they could replace the socket; use a \
         directory only root (or this user) can write (chmod 0755)"
    )]
    UnsafeDirectory {
        /// The directory.
        dir: String,
        /// Who else can write it.
        who: String,
    },
    /// A TLS file could not be read.
    #[error("cannot read {what} {path}")]
    TlsFile {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The reflection service could not be built.
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The server failed (or its TLS configuration was refused).
    #[error("the gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    options: &ServeOptions,
    agent: AgentHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    options.prepare()?;
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
    let mut builder = Server::builder()
        .concurrency_limit_per_connection(32)
        .max_concurrent_streams(Some(128))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .timeout(Duration::from_secs(60));
    if let Some(tls) = &options.tls {
        builder = builder.tls_config(server_tls(tls)?)?;
    }
    let router = builder
        .add_service(health_service.clone())
        .add_service(reflection)
        .add_service(service);
    // Stops the health listener with the main one.
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    if let Some(addr) = options.health_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen {
                what: addr.to_string(),
                source,
            })?;
        info!(%addr, "serving grpc.health.v1 only, plain TCP");
        let mut rx = stop_tx.subscribe();
        let health_only = Server::builder()
            .concurrency_limit_per_connection(4)
            .timeout(Duration::from_secs(5))
            .add_service(health_service);
        let _task = tokio::spawn(async move {
            let result = health_only
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    let _ = rx.recv().await;
                })
                .await;
            if let Err(error) = result {
                warn!(%error, "the health listener failed");
            }
        });
    }
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(());
    };
    match &options.listen {
        Listen::Unix(path) => {
            let listener = bind_unix(path, options.socket_group)?;
            info!(socket = %path.display(), group = ?options.socket_group, "serving gRPC");
            let result = router
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
                .await;
            let _ = std::fs::remove_file(path);
            result?;
        }
        Listen::Tcp(addr) => {
            if options.tls.is_none() {
                warn!(%addr, "serving gRPC over plain TCP (--insecure): anyone who can reach it can read leak reports and start tracing");
            } else {
                info!(%addr, client_certificates = options.tls.as_ref().is_some_and(|t| t.client_ca.is_some()), "serving gRPC over TLS");
            }
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

fn server_tls(files: &TlsFiles) -> Result<ServerTlsConfig, ServeError> {
    let read = |what: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| ServeError::TlsFile {
            what,
            path: path.display().to_string(),
            source,
        })
    };
    let identity = Identity::from_pem(
        read("the certificate", &files.cert)?,
        read("the private key", &files.key)?,
    );
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &files.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read("the client CA", ca)?));
    }
    Ok(config)
}

/// Binds a Unix socket usable by its owner only (0600), or also by `group` (0660), in a
/// directory nobody else can write, replacing a stale socket.
fn bind_unix(path: &Path, group: Option<u32>) -> Result<tokio::net::UnixListener, ServeError> {
    let what = path.display().to_string();
    let error = |source| ServeError::Listen {
        what: what.clone(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(e)),
    }
    // Created with the process umask; nobody else can connect before the chmod below because
    // connecting needs write permission on the socket, which no umask grants to others here.
    let listener = tokio::net::UnixListener::bind(path).map_err(error)?;
    let mode = match group {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(error)?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(error)?;
    Ok(listener)
}

/// Refuses a socket directory that anyone but root and us (a group, everyone, another owner)
/// can write.
fn check_directory(dir: &Path) -> Result<(), ServeError> {
    let meta = std::fs::metadata(dir).map_err(|source| ServeError::Listen {
        what: dir.display().to_string(),
        source,
    })?;
    let mode = meta.mode();
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let who = if meta.uid() != euid && meta.uid() != 0 {
        Some(format!("its owner uid {}", meta.uid()))
    } else if mode & 0o002 != 0 {
        Some("everyone".to_owned())
    } else if mode & 0o020 != 0 {
        Some(format!("group {}", meta.gid()))
    } else {
        None
    };
    match who {
        Some(who) => Err(ServeError::UnsafeDirectory {
            dir: dir.display().to_string(),
            who,
        }),
        None => Ok(()),
    }
}

/// Resolves a group name or number to a gid.
pub fn resolve_group(text: &str) -> Result<u32, String> {
    if let Ok(gid) = text.parse::<u32>() {
        return Ok(gid);
    }
    let content = std::fs::read_to_string("/etc/group")
        .map_err(|e| format!("cannot read /etc/group to find group {text:?}: {e}"))?;
    content
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse::<u32>().ok()?;
            (name == text).then_some(gid)
        })
        .next()
        .ok_or_else(|| format!("no group {text:?} in /etc/group (give a name or a numeric gid)"))
}
