//! Serving the API: a Unix socket by default (0600, or 0660 for a chosen group, in a directory
//! only its owner can write); TCP only with TLS (optionally requiring client certificates) or an
//! explicit `--insecure`; bounded message sizes, per-connection concurrency and stream limits,
//! health and reflection, and a health-only plain listener for kubelet probes.

use std::{
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracer_proto::v1::leak_tracer_server::LeakTracerServer;
use tracing::{info, warn};

use crate::{
    agent::AgentHandle,
    api::{
        ApiStats, LeakTracerService,
        connections::{API_LIMITS, Bounded, HEALTH_LIMITS},
    },
};

pub use tracer_parse::listen::Listen;

/// The socket both binaries use when told nothing else.
pub const DEFAULT_SOCKET: &str = "/run/tracer/tracer.sock";

/// Largest request accepted (requests are small: selectors and numbers).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest response sent (a report is bounded by top ≤ 1000 stacks of ≤ 64 frames).
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

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
            refuse_live_or_foreign(path)?;
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
    /// The socket path is taken by something that is not a socket.
    #[error(
        "{path} exists and is {kind}, not a socket: refusing to replace it; remove it or choose \
         another --listen path"
    )]
    NotASocket {
        /// The path.
        path: String,
        /// What is there.
        kind: &'static str,
    },
    /// Another process serves the socket.
    #[error(
        "another process is serving {path} (is another tracer-daemon running?); stop it or \
         choose another --listen path"
    )]
    SocketInUse {
        /// The path.
        path: String,
    },
    /// The socket's directory could be written by someone else.
    #[error(
        "{dir} is writable by {who}: they could replace the socket; use a directory that only \
         root (or this user) can write, on a path whose every directory is owned by root (or \
         this user) and not writable by others, unless sticky like /tmp (chmod 0755)"
    )]
    UnsafeDirectory {
        /// The directory, and how it relates to the socket.
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

/// The health service shared by every listener, and the handle that sets its status.
#[derive(Clone, Debug)]
pub struct Health {
    /// Sets what grpc.health.v1 answers.
    pub reporter: tonic_health::server::HealthReporter,
}

impl Health {
    /// A health service (tonic-health answers SERVING for the whole server from the start;
    /// [`serve`] marks the LeakTracer service too).
    pub fn new() -> Self {
        Self {
            reporter: tonic_health::server::HealthReporter::new(),
        }
    }

    /// The grpc.health.v1 service answering what the reporter says (one per listener).
    fn service(
        &self,
    ) -> tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService> {
        tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(self.reporter.clone()),
        )
    }

    /// Marks the whole server (the "" service) and the LeakTracer service serving or not.
    pub async fn set(&self, serving: bool) {
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        self.reporter
            .set_service_status(
                <LeakTracerServer<LeakTracerService> as tonic::server::NamedService>::NAME,
                status,
            )
            .await;
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    options: &ServeOptions,
    agent: AgentHandle,
    health: Health,
    stats: Arc<ApiStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    options.prepare()?;
    health.set(true).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tracer_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let service = LeakTracerServer::new(LeakTracerService::new(agent, Arc::clone(&stats)))
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
        .add_service(health.service())
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
        info!(%addr, max_connections = HEALTH_LIMITS.max_connections, "serving grpc.health.v1 only, plain TCP");
        let incoming = Bounded::new(listener, "health", HEALTH_LIMITS, Arc::clone(&stats.health));
        let mut rx = stop_tx.subscribe();
        let health_only = Server::builder()
            .concurrency_limit_per_connection(4)
            .timeout(Duration::from_secs(5))
            .add_service(health.service());
        let _task = tokio::spawn(async move {
            let result = health_only
                .serve_with_incoming_shutdown(incoming, async move {
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
            let socket = bind_unix(path, options.socket_group)?;
            info!(socket = %path.display(), group = ?options.socket_group, "serving gRPC");
            let incoming = Bounded::new(socket.listener, "api", API_LIMITS, Arc::clone(&stats.api));
            let result = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await;
            remove_own_socket(path, socket.identity);
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
            let incoming = Bounded::new(listener, "api", API_LIMITS, Arc::clone(&stats.api));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
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

/// A bound Unix socket and the (device, inode) of its file, to remove only our own file.
struct UnixSocket {
    listener: tokio::net::UnixListener,
    identity: Option<(u64, u64)>,
}

/// Binds a Unix socket usable by its owner only (0600), or also by `group` (0660), in a
/// directory nobody else can write. The socket is bound inside a fresh directory only we can
/// enter, given its mode there, then renamed into place: nobody can connect to it before its
/// mode is right, whatever the umask. An existing path is replaced only when it is a stale
/// socket: a file that is not a socket, or a socket another process still serves, is refused.
fn bind_unix(path: &Path, group: Option<u32>) -> Result<UnixSocket, ServeError> {
    let what = path.display().to_string();
    let error = |source| ServeError::Listen {
        what: what.clone(),
        source,
    };
    refuse_live_or_foreign(path)?;
    let dir = path.parent().unwrap_or_else(|| Path::new("/"));
    let private = dir.join(format!(".tracer-bind-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(error)?;
    let bound = (|| {
        let staged = private.join("socket");
        let listener = tokio::net::UnixListener::bind(&staged)?;
        let mode = match group {
            Some(gid) => {
                std::os::unix::fs::chown(&staged, None, Some(gid))?;
                0o660
            }
            None => 0o600,
        };
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    let listener = bound.map_err(error)?;
    let identity = std::fs::symlink_metadata(path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()));
    Ok(UnixSocket { listener, identity })
}

/// Refuses to replace a path that is not a socket, or a socket a live process answers on.
fn refuse_live_or_foreign(path: &Path) -> Result<(), ServeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServeError::Listen {
                what: path.display().to_string(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket {
            path: path.display().to_string(),
            kind: file_kind(&meta),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServeError::SocketInUse {
            path: path.display().to_string(),
        }),
        // Nobody listens: a socket left by an agent that was killed. Replaced below.
        Err(_) => Ok(()),
    }
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_file() {
        "a regular file"
    } else {
        "not a socket"
    }
}

/// Removes the socket file at shutdown only if it is still the one this process bound (another
/// agent may have taken the path over after ours went stale).
fn remove_own_socket(path: &Path, identity: Option<(u64, u64)>) {
    let current = std::fs::symlink_metadata(path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()));
    if identity.is_some() && current == identity {
        let _ = std::fs::remove_file(path);
    }
}

/// Refuses a socket directory that anyone but root and us can write, or any of whose ancestors
/// lets someone else replace it: every directory on the way must be owned by root or us, and
/// writable only by its owner, except that an ancestor with the sticky bit (such as /tmp) may
/// be writable by others, because there nobody but the owner can rename or remove an entry we
/// own. The socket's own directory may not be writable by others even with the sticky bit:
/// they could plant a socket at its name while ours is absent.
fn check_directory(dir: &Path) -> Result<(), ServeError> {
    let listen_error = |path: &Path, source| ServeError::Listen {
        what: path.display().to_string(),
        source,
    };
    let real = std::fs::canonicalize(dir).map_err(|source| listen_error(dir, source))?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    for (index, ancestor) in real.ancestors().enumerate() {
        let meta = std::fs::metadata(ancestor).map_err(|source| listen_error(ancestor, source))?;
        let mode = meta.mode();
        let sticky = mode & 0o1000 != 0;
        let own_directory = index == 0;
        let who = if meta.uid() != euid && meta.uid() != 0 {
            Some(format!("its owner uid {}", meta.uid()))
        } else if mode & 0o002 != 0 && (own_directory || !sticky) {
            Some("everyone".to_owned())
        } else if mode & 0o020 != 0 && (own_directory || !sticky) {
            Some(format!("group {}", meta.gid()))
        } else {
            None
        };
        if let Some(who) = who {
            return Err(ServeError::UnsafeDirectory {
                dir: if own_directory {
                    format!("the socket directory {}", ancestor.display())
                } else {
                    format!(
                        "{}, an ancestor of the socket directory {},",
                        ancestor.display(),
                        real.display()
                    )
                },
                who,
            });
        }
    }
    Ok(())
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
