//! Sends the agent's profile batches to an OTLP/gRPC endpoint from a task of its own. The
//! agent only ever `offer`s a batch to a bounded queue (never waits): when the queue is full the
//! new batch is dropped and counted. The task retries a failed export with exponential backoff
//! until the batch is older than `max_age`, then drops it (counted), so that an endpoint that is
//! down or slow costs the agent nothing and every batch is either sent or counted as dropped.

use std::{
    path::PathBuf,
    str::FromStr as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::collector::profiles::v1development::{
    ExportProfilesServiceRequest, profiles_service_client::ProfilesServiceClient,
};
use tokio::sync::mpsc;
use tonic::{
    Code,
    metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};
use tracing::{error, info, warn};

/// The first wait before retrying a failed export; it doubles up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one export may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExporterSettings {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub endpoint: String,
    /// Headers sent with every export (e.g. `authorization`), as given.
    pub headers: Vec<(String, String)>,
    /// PEM CA bundle for an https endpoint (the node's roots otherwise).
    pub ca: Option<PathBuf>,
    /// Allow an `http://` endpoint (profiles in plain text).
    pub insecure: bool,
    /// Batches waiting to be sent at most.
    pub queue_batches: usize,
    /// A batch not sent after this long is dropped.
    pub max_age: Duration,
}

/// Why the exporter cannot start: every variant names the flag to fix.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    /// The endpoint is not a URL tonic can connect to.
    #[error(
        "invalid --export-otlp {endpoint:?}: {reason} (expected http://HOST:PORT or https://HOST:PORT)"
    )]
    Endpoint {
        /// As given.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// A plain-text endpoint without `--otlp-insecure`.
    #[error(
        "--export-otlp {endpoint} is plain http: profiles would cross the network unencrypted; \
         use https:// or add --otlp-insecure"
    )]
    Insecure {
        /// As given.
        endpoint: String,
    },
    /// A CA bundle for an endpoint without TLS.
    #[error("--otlp-ca is only for an https:// endpoint, not {endpoint}")]
    CaWithoutTls {
        /// As given.
        endpoint: String,
    },
    /// A header that gRPC cannot carry.
    #[error(
        "invalid --otlp-header {header:?}: {reason} (expected KEY=VALUE, the key in lowercase \
         letters, digits and -_., the value printable ASCII)"
    )]
    Header {
        /// As given.
        header: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The CA bundle cannot be read.
    #[error("cannot read --otlp-ca {path}")]
    Ca {
        /// The path.
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The TLS setup was refused.
    #[error("cannot set up TLS for --export-otlp {endpoint}")]
    Tls {
        /// As given.
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// A zero-sized queue.
    #[error("--otlp-queue must be at least 1")]
    EmptyQueue,
}

/// Parses `KEY=VALUE` (as `--otlp-header` takes it).
///
/// # Errors
///
/// [`ExporterError::Header`] without `=`.
pub fn parse_header(text: &str) -> Result<(String, String), ExporterError> {
    let (key, value) = text.split_once('=').ok_or_else(|| ExporterError::Header {
        header: text.to_owned(),
        reason: "no '='",
    })?;
    Ok((key.trim().to_owned(), value.trim().to_owned()))
}

/// What the exporter has done since start (shared by the agent, the task and the metrics).
#[derive(Debug, Default)]
pub struct ExportStats {
    built: AtomicU64,
    sent: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_exporter_stopped: AtomicU64,
    dropped_expired: AtomicU64,
    dropped_rejected: AtomicU64,
    failed_attempts: AtomicU64,
    profiles_rejected: AtomicU64,
    in_flight: AtomicU64,
}

/// A reading of [`ExportStats`]: `built == sent + dropped + pending` once every batch has left
/// the queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportFigures {
    /// Batches the agent built (one per interval).
    pub built: u64,
    /// Batches the endpoint accepted.
    pub sent: u64,
    /// Batches dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Batches dropped because the exporter task had ended (it never should; said in the log).
    pub dropped_exporter_stopped: u64,
    /// Batches dropped after retrying for `max_age`.
    pub dropped_expired: u64,
    /// Batches the endpoint refused for good (a status retrying cannot fix).
    pub dropped_rejected: u64,
    /// Export attempts that failed (each retried or dropped).
    pub failed_attempts: u64,
    /// Profiles the endpoint said it rejected in batches it accepted (partial success).
    pub profiles_rejected: u64,
    /// Batches queued or being sent now.
    pub pending: u64,
}

/// The agent's side of the exporter: offers batches, never waits.
#[derive(Clone, Debug)]
pub struct ExportQueue {
    batches: mpsc::Sender<Batch>,
    stats: Arc<ExportStats>,
}

#[derive(Debug)]
struct Batch {
    built_at: Instant,
    request: ExportProfilesServiceRequest,
}

impl ExportQueue {
    /// Queues a batch, or drops it (counted) when the queue is full or the exporter is gone.
    pub fn offer(&self, request: ExportProfilesServiceRequest) {
        let _ = self.stats.built.fetch_add(1, Ordering::Relaxed);
        let batch = Batch {
            built_at: Instant::now(),
            request,
        };
        match self.batches.try_send(batch) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let dropped = self
                    .stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                warn!(dropped, "OTLP export queue full; profile batch dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                let stopped = &self.stats.dropped_exporter_stopped;
                let dropped = stopped.fetch_add(1, Ordering::Relaxed) + 1;
                error!(
                    dropped,
                    "the OTLP exporter has stopped; profile batch dropped"
                );
            }
        }
    }

    /// The figures now.
    pub fn figures(&self) -> ExportFigures {
        let stats = &self.stats;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let queued = self.batches.max_capacity() - self.batches.capacity();
        ExportFigures {
            built: read(&stats.built),
            sent: read(&stats.sent),
            dropped_queue_full: read(&stats.dropped_queue_full),
            dropped_exporter_stopped: read(&stats.dropped_exporter_stopped),
            dropped_expired: read(&stats.dropped_expired),
            dropped_rejected: read(&stats.dropped_rejected),
            failed_attempts: read(&stats.failed_attempts),
            profiles_rejected: read(&stats.profiles_rejected),
            pending: queued as u64 + read(&stats.in_flight),
        }
    }
}

/// Checks the settings and starts the exporter task on the current runtime (it connects
/// lazily: an endpoint down at start is retried like any other failure).
///
/// # Errors
///
/// A bad endpoint, header or CA bundle ([`ExporterError`] names the flag).
pub fn start(settings: &ExporterSettings) -> Result<ExportQueue, ExporterError> {
    let (endpoint, headers) = prepare(settings)?;
    let channel = endpoint.connect_lazy();
    let (batches, inbox) = mpsc::channel(settings.queue_batches);
    let stats = Arc::new(ExportStats::default());
    let _task = tokio::spawn(run(
        inbox,
        ProfilesServiceClient::new(channel),
        headers,
        Arc::clone(&stats),
        settings.max_age,
        settings.endpoint.clone(),
    ));
    info!(endpoint = %settings.endpoint, queue_batches = settings.queue_batches, "exporting profiles over OTLP");
    Ok(ExportQueue { batches, stats })
}

/// The endpoint and headers, checked.
fn prepare(settings: &ExporterSettings) -> Result<(Endpoint, MetadataMap), ExporterError> {
    if settings.queue_batches == 0 {
        return Err(ExporterError::EmptyQueue);
    }
    let bad_endpoint = |reason: String| ExporterError::Endpoint {
        endpoint: settings.endpoint.clone(),
        reason,
    };
    let uri = tonic::codegen::http::Uri::from_str(&settings.endpoint)
        .map_err(|e| bad_endpoint(e.to_string()))?;
    if uri.host().is_none() {
        return Err(bad_endpoint("no host".into()));
    }
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad_endpoint("the scheme must be http or https".into())),
    };
    if !tls && !settings.insecure {
        return Err(ExporterError::Insecure {
            endpoint: settings.endpoint.clone(),
        });
    }
    if !tls && settings.ca.is_some() {
        return Err(ExporterError::CaWithoutTls {
            endpoint: settings.endpoint.clone(),
        });
    }
    let mut headers = MetadataMap::new();
    for (key, value) in &settings.headers {
        let header = || format!("{key}={value}");
        let key = AsciiMetadataKey::from_str(key).map_err(|_| ExporterError::Header {
            header: header(),
            reason: "not a valid header name",
        })?;
        let value = AsciiMetadataValue::from_str(value).map_err(|_| ExporterError::Header {
            header: header(),
            reason: "not a valid header value",
        })?;
        let _ = headers.insert(key, value);
    }
    let mut endpoint = Endpoint::from(uri)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(ATTEMPT_TIMEOUT);
    if tls {
        let config = match &settings.ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| ExporterError::Ca {
                    path: path.display().to_string(),
                    source,
                })?;
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
            }
            None => ClientTlsConfig::new().with_native_roots(),
        };
        endpoint = endpoint
            .tls_config(config)
            .map_err(|source| ExporterError::Tls {
                endpoint: settings.endpoint.clone(),
                source,
            })?;
    }
    Ok((endpoint, headers))
}

/// Checks the settings without starting anything.
///
/// # Errors
///
/// As [`start`].
pub fn check(settings: &ExporterSettings) -> Result<(), ExporterError> {
    prepare(settings).map(|_| ())
}

/// Statuses that retrying may fix (the endpoint down, overloaded or restarting); the others
/// say the batch itself is refused.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
    )
}

async fn run(
    mut inbox: mpsc::Receiver<Batch>,
    mut client: ProfilesServiceClient<Channel>,
    headers: MetadataMap,
    stats: Arc<ExportStats>,
    max_age: Duration,
    endpoint: String,
) {
    let mut failing = false;
    while let Some(batch) = inbox.recv().await {
        stats.in_flight.store(1, Ordering::Relaxed);
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let mut request = tonic::Request::new(batch.request.clone());
            *request.metadata_mut() = headers.clone();
            let status = match client.export(request).await {
                Ok(response) => {
                    let _ = stats.sent.fetch_add(1, Ordering::Relaxed);
                    if failing {
                        failing = false;
                        info!(%endpoint, "OTLP endpoint accepts profiles again");
                    }
                    if let Some(partial) = response.into_inner().partial_success
                        && partial.rejected_profiles > 0
                    {
                        let rejected = u64::try_from(partial.rejected_profiles).unwrap_or(0);
                        let _ = stats
                            .profiles_rejected
                            .fetch_add(rejected, Ordering::Relaxed);
                        warn!(%endpoint, rejected, message = %partial.error_message, "the OTLP endpoint rejected some profiles");
                    }
                    break;
                }
                Err(status) => status,
            };
            let failures = stats.failed_attempts.fetch_add(1, Ordering::Relaxed) + 1;
            if !failing {
                failing = true;
                warn!(%endpoint, code = ?status.code(), message = %status.message(), "OTLP export failed; retrying with backoff (batches are queued, then dropped and counted)");
            }
            if !retryable(status.code()) {
                let _ = stats.dropped_rejected.fetch_add(1, Ordering::Relaxed);
                warn!(%endpoint, code = ?status.code(), message = %status.message(), failures, "the OTLP endpoint refused a profile batch; dropped");
                break;
            }
            if batch.built_at.elapsed() + backoff > max_age {
                let _ = stats.dropped_expired.fetch_add(1, Ordering::Relaxed);
                warn!(%endpoint, failures, max_age_s = max_age.as_secs_f64(), "profile batch not sent in time; dropped");
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        stats.in_flight.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, sync::Mutex};

    use opentelemetry_proto::tonic::collector::profiles::v1development::{
        ExportProfilesServiceResponse,
        profiles_service_server::{ProfilesService, ProfilesServiceServer},
    };
    use tonic::{Request, Response, Status};

    use super::*;

    /// A receiver answering each export with the next scripted code (OK once they run out),
    /// recording the authorization header of each accepted export.
    #[derive(Clone, Default)]
    struct Scripted {
        answers: Arc<Mutex<VecDeque<Code>>>,
        accepted: Arc<Mutex<Vec<Option<String>>>>,
    }

    #[tonic::async_trait]
    impl ProfilesService for Scripted {
        async fn export(
            &self,
            request: Request<ExportProfilesServiceRequest>,
        ) -> Result<Response<ExportProfilesServiceResponse>, Status> {
            let answer = self
                .answers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop_front();
            if let Some(code) = answer.filter(|c| *c != Code::Ok) {
                return Err(Status::new(code, "scripted"));
            }
            let authorization = request.metadata().get("authorization");
            let authorization = authorization
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            self.accepted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(authorization);
            Ok(Response::new(ExportProfilesServiceResponse::default()))
        }
    }

    /// Serves `receiver` on a loopback port, over TLS with `identity` (PEM certificate and
    /// key) if given; returns the port.
    async fn serve_on(receiver: Scripted, identity: Option<(String, String)>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let port = listener.local_addr().expect("local address").port();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let mut server = tonic::transport::Server::builder();
        if let Some((cert, key)) = identity {
            let identity = tonic::transport::Identity::from_pem(cert, key);
            server = server
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .expect("server TLS");
        }
        let _server = tokio::spawn(
            server
                .add_service(ProfilesServiceServer::new(receiver))
                .serve_with_incoming(incoming),
        );
        port
    }

    async fn serve(receiver: Scripted) -> String {
        format!("http://127.0.0.1:{}", serve_on(receiver, None).await)
    }

    /// A CA's certificate (PEM) and a certificate it signed for 127.0.0.1 with its key.
    fn pki() -> (String, (String, String)) {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("CA cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("sign");
        (ca.pem(), (cert.pem(), key.serialize_pem()))
    }

    #[tokio::test]
    async fn an_https_endpoint_is_trusted_through_the_given_ca_only() {
        let (ca, identity) = pki();
        let (rogue_ca, _) = pki();
        let receiver = Scripted::default();
        let port = serve_on(receiver.clone(), Some(identity)).await;
        let dir = std::env::temp_dir().join(format!("otlp-tls-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let exporter = |ca_file: &str, pem: &str| {
            let path = dir.join(ca_file);
            std::fs::write(&path, pem).expect("write CA");
            let settings = ExporterSettings {
                ca: Some(path),
                insecure: false,
                ..plain(
                    &format!("https://127.0.0.1:{port}"),
                    Duration::from_secs(60),
                    4,
                )
            };
            start(&settings).expect("starts")
        };
        let trusted = exporter("ca.pem", &ca);
        trusted.offer(ExportProfilesServiceRequest::default());
        let figures = until(&trusted, |f| f.sent == 1).await;
        assert_eq!(figures.failed_attempts, 0);
        let fooled = exporter("rogue.pem", &rogue_ca);
        fooled.offer(ExportProfilesServiceRequest::default());
        let figures = until(&fooled, |f| f.failed_attempts >= 1).await;
        assert_eq!(figures.sent, 0, "a certificate from another CA is refused");
        assert_eq!(receiver.accepted.lock().expect("accepted").len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn plain(endpoint: &str, max_age: Duration, queue_batches: usize) -> ExporterSettings {
        ExporterSettings {
            insecure: true,
            headers: vec![("authorization".into(), "Bearer token".into())],
            queue_batches,
            max_age,
            ..settings(endpoint)
        }
    }

    /// Polls the figures until `done` (the exporter's backoff is real time).
    async fn until(queue: &ExportQueue, done: impl Fn(&ExportFigures) -> bool) -> ExportFigures {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let figures = queue.figures();
            if done(&figures) {
                return figures;
            }
            assert!(Instant::now() < deadline, "never reached: {figures:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_failed_export_is_retried_with_its_headers_until_accepted() {
        let receiver = Scripted::default();
        receiver
            .answers
            .lock()
            .expect("fresh")
            .extend([Code::Unavailable, Code::ResourceExhausted]);
        let endpoint = serve(receiver.clone()).await;
        let queue = start(&plain(&endpoint, Duration::from_secs(60), 4)).expect("starts");
        queue.offer(ExportProfilesServiceRequest::default());
        let figures = until(&queue, |f| f.sent == 1).await;
        assert_eq!((figures.failed_attempts, figures.pending), (2, 0));
        let accepted = receiver.accepted.lock().expect("accepted").clone();
        assert_eq!(accepted, [Some("Bearer token".to_owned())]);
    }

    #[tokio::test]
    async fn refused_and_expired_batches_are_dropped_and_counted_by_reason() {
        let receiver = Scripted::default();
        let mut answers = vec![Code::InvalidArgument];
        answers.extend([Code::Unavailable; 64]);
        receiver.answers.lock().expect("fresh").extend(answers);
        let endpoint = serve(receiver.clone()).await;
        let queue = start(&plain(&endpoint, Duration::from_secs(1), 4)).expect("starts");
        queue.offer(ExportProfilesServiceRequest::default());
        let _ = until(&queue, |f| f.dropped_rejected == 1).await;
        queue.offer(ExportProfilesServiceRequest::default());
        let figures = until(&queue, |f| f.dropped_expired == 1).await;
        assert_eq!((figures.built, figures.sent, figures.pending), (2, 0, 0));
        assert!(figures.failed_attempts >= 2, "{figures:?}");
        assert!(receiver.accepted.lock().expect("accepted").is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_new_batch_and_counts_it() {
        // Nothing listens there: the first batch stays in flight, retried.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let queue = start(&plain(
            &format!("http://127.0.0.1:{port}"),
            Duration::from_secs(60),
            1,
        ))
        .expect("starts");
        queue.offer(ExportProfilesServiceRequest::default());
        let _ = until(&queue, |f| f.failed_attempts >= 1).await;
        queue.offer(ExportProfilesServiceRequest::default());
        queue.offer(ExportProfilesServiceRequest::default());
        let figures = queue.figures();
        assert_eq!(
            (figures.built, figures.dropped_queue_full, figures.pending),
            (3, 1, 2),
            "one in flight, one queued, one dropped"
        );
    }

    fn settings(endpoint: &str) -> ExporterSettings {
        ExporterSettings {
            endpoint: endpoint.to_owned(),
            headers: Vec::new(),
            ca: None,
            insecure: false,
            queue_batches: 4,
            max_age: Duration::from_secs(60),
        }
    }

    #[test]
    fn plain_http_needs_insecure_and_says_so() {
        let error = check(&settings("http://collector:4317")).expect_err("refused");
        assert!(error.to_string().contains("--otlp-insecure"), "{error}");
        let insecure = ExporterSettings {
            insecure: true,
            ..settings("http://collector:4317")
        };
        check(&insecure).expect("accepted with --otlp-insecure");
        let ca = ExporterSettings {
            ca: Some("/ca.pem".into()),
            ..insecure
        };
        let error = check(&ca).expect_err("a CA without TLS");
        assert!(error.to_string().contains("https"), "{error}");
    }

    #[test]
    fn bad_endpoints_and_headers_name_the_flag() {
        for endpoint in ["collector:4317", "ftp://collector", "not a url"] {
            let error = check(&settings(endpoint)).expect_err(endpoint).to_string();
            assert!(error.contains("--export-otlp"), "{endpoint}: {error}");
        }
        assert!(parse_header("no-equals").is_err());
        for header in [("Bad Key", "v"), ("authorization", "line\nbreak")] {
            let with_header = ExporterSettings {
                headers: vec![(header.0.into(), header.1.into())],
                ..settings("https://collector:4317")
            };
            let error = check(&with_header).expect_err("bad header").to_string();
            assert!(error.contains("--otlp-header"), "{error}");
        }
        let fine = parse_header("authorization=Bearer abc=").expect("parses");
        assert_eq!(fine, ("authorization".into(), "Bearer abc=".into()));
        let missing_ca = ExporterSettings {
            ca: Some("/nonexistent/ca.pem".into()),
            ..settings("https://collector:4317")
        };
        let error = check(&missing_ca).expect_err("unreadable CA").to_string();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn retrying_is_for_an_endpoint_down_not_for_a_refused_batch() {
        assert!(retryable(Code::Unavailable) && retryable(Code::DeadlineExceeded));
        assert!(!retryable(Code::InvalidArgument) && !retryable(Code::Unauthenticated));
    }
}
