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
mod tests;
