//! The gRPC API (package tracer.v1) over the agent: a thin tonic service that validates
//! requests, forwards them to the agent and maps its errors to precise status codes; plus
//! grpc.health.v1 and server reflection, and the listeners (Unix socket by default).

pub mod connections;
pub mod convert;
pub mod metrics;
pub mod server;

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prost::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracer_proto::v1::{self as pb, leak_tracer_server::LeakTracer};

use crate::agent::{AgentHandle, ProfileRequest, ProfileSource};
use connections::ListenerStats;

/// Watch streams open at once, node-wide; more are refused with RESOURCE_EXHAUSTED.
pub const MAX_WATCH_STREAMS: usize = 64;

/// What watch streams may hold in the agent, node-wide: each open stream is charged twice its
/// largest report (tonic's encoding buffer, which the frame in flight shares) for as long as it
/// lives. A report that would pass the budget is skipped (counted in the stream's next report
/// and in the metrics) and the stream tries again at its next tick.
pub const WATCH_QUEUE_BYTES: usize = 64 << 20;

/// Leak reports built and encoded at once for API calls: a top-1000 report of deep stacks is
/// megabytes while it is converted, and 64 clients asking at once must not hold 64 of them.
const REPORTS_AT_ONCE: usize = 2;

/// How long a request may wait for the agent.
const AGENT_DEADLINE: Duration = Duration::from_secs(30);

/// What the API layer counts, for the metrics endpoint: its listeners and its watch streams.
#[derive(Debug)]
pub struct ApiStats {
    /// The main API's listener.
    pub api: Arc<ListenerStats>,
    /// The health-only listener.
    pub health: Arc<ListenerStats>,
    /// The metrics listener.
    pub metrics: Arc<ListenerStats>,
    /// Reports sent on watch streams.
    pub watch_reports_sent: AtomicU64,
    /// Reports watch streams skipped (slow client, or the queue budget spent).
    pub watch_reports_skipped: AtomicU64,
    /// The node-wide budget of queued watch-stream bytes.
    watch_queue: Arc<Semaphore>,
    /// Reports being built and encoded (see [`REPORTS_AT_ONCE`]).
    report_slots: Arc<Semaphore>,
}

impl Default for ApiStats {
    fn default() -> Self {
        Self {
            api: Arc::default(),
            health: Arc::default(),
            metrics: Arc::default(),
            watch_reports_sent: AtomicU64::new(0),
            watch_reports_skipped: AtomicU64::new(0),
            watch_queue: Arc::new(Semaphore::new(WATCH_QUEUE_BYTES)),
            report_slots: Arc::new(Semaphore::new(REPORTS_AT_ONCE)),
        }
    }
}

impl ApiStats {
    /// Bytes watch streams hold in the agent (their charges against [`WATCH_QUEUE_BYTES`]).
    pub fn watch_queued_bytes(&self) -> u64 {
        WATCH_QUEUE_BYTES.saturating_sub(self.watch_queue.available_permits()) as u64
    }
}

/// The LeakTracer service.
#[derive(Clone, Debug)]
pub struct LeakTracerService {
    agent: AgentHandle,
    watch_slots: Arc<Semaphore>,
    stats: Arc<ApiStats>,
}

impl LeakTracerService {
    /// A service forwarding to this agent, counting into `stats`.
    pub fn new(agent: AgentHandle, stats: Arc<ApiStats>) -> Self {
        Self {
            agent,
            watch_slots: Arc::new(Semaphore::new(MAX_WATCH_STREAMS)),
            stats,
        }
    }
}

async fn within_deadline<T>(
    future: impl Future<Output = Result<T, crate::agent::AgentError>>,
) -> Result<T, Status> {
    match tokio::time::timeout(AGENT_DEADLINE, future).await {
        Ok(result) => result.map_err(Status::from),
        Err(_) => Err(Status::deadline_exceeded(
            "the tracer did not answer in time; retry",
        )),
    }
}

type ReportStream = Pin<Box<dyn Stream<Item = Result<pb::LeakReport, Status>> + Send>>;

#[tonic::async_trait]
impl LeakTracer for LeakTracerService {
    async fn list_targets(
        &self,
        _request: Request<pb::ListTargetsRequest>,
    ) -> Result<Response<pb::ListTargetsResponse>, Status> {
        let targets = within_deadline(self.agent.list_targets()).await?;
        Ok(Response::new((&targets).into()))
    }

    async fn get_leak_report(
        &self,
        request: Request<pb::GetLeakReportRequest>,
    ) -> Result<Response<pb::LeakReport>, Status> {
        let request = convert::report_request(request.into_inner())?;
        let report = leak_report(&self.agent, &self.stats, request).await?;
        Ok(Response::new(report))
    }

    type WatchLeakReportsStream = ReportStream;

    async fn watch_leak_reports(
        &self,
        request: Request<pb::WatchLeakReportsRequest>,
    ) -> Result<Response<Self::WatchLeakReportsStream>, Status> {
        let (report_request, interval) = convert::watch_request(request.into_inner())?;
        let slot = Arc::clone(&self.watch_slots)
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "{MAX_WATCH_STREAMS} watch streams are already open on this node; retry later"
                ))
            })?;
        // The first report is produced now, so a bad target fails the call itself.
        let first = leak_report(&self.agent, &self.stats, report_request.clone()).await?;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let watcher = Watcher {
            agent: self.agent.clone(),
            stats: Arc::clone(&self.stats),
            request: report_request,
            interval,
            ticks,
            last_tick: Instant::now(),
            expected_bytes: first.encoded_len(),
            first: Some(first),
            skipped: 0,
            charge: None,
            charged_bytes: 0,
            ended: false,
            _slot: slot,
        };
        let stream = futures_util::stream::unfold(watcher, Watcher::next);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn start_tracing(
        &self,
        request: Request<pb::StartTracingRequest>,
    ) -> Result<Response<pb::StartTracingResponse>, Status> {
        let selector = convert::selector(request.into_inner().selector)?;
        let processes = within_deadline(self.agent.start(selector)).await?;
        Ok(Response::new(pb::StartTracingResponse {
            processes: processes.iter().map(Into::into).collect(),
        }))
    }

    async fn stop_tracing(
        &self,
        request: Request<pb::StopTracingRequest>,
    ) -> Result<Response<pb::StopTracingResponse>, Status> {
        let selector = convert::selector(request.into_inner().selector)?;
        let pids = within_deadline(self.agent.stop(selector)).await?;
        Ok(Response::new(pb::StopTracingResponse { pids }))
    }

    async fn list_oom_events(
        &self,
        request: Request<pb::ListOomEventsRequest>,
    ) -> Result<Response<pb::ListOomEventsResponse>, Status> {
        let query = convert::evidence_query(request.into_inner().filter, true)?;
        let listing = within_deadline(self.agent.list_evidence(query)).await?;
        Ok(Response::new(pb::ListOomEventsResponse {
            events: listing
                .records
                .iter()
                .filter_map(convert::oom_event)
                .collect(),
        }))
    }

    async fn list_evidence(
        &self,
        request: Request<pb::ListEvidenceRequest>,
    ) -> Result<Response<pb::ListEvidenceResponse>, Status> {
        let query = convert::evidence_query(request.into_inner().filter, false)?;
        let listing = within_deadline(self.agent.list_evidence(query)).await?;
        Ok(Response::new(pb::ListEvidenceResponse {
            evidence: listing
                .records
                .iter()
                .map(convert::evidence_summary)
                .collect(),
            store_warning: listing.store_warning.unwrap_or_default(),
            save_failures: listing.save_failures,
        }))
    }

    async fn get_evidence(
        &self,
        request: Request<pb::GetEvidenceRequest>,
    ) -> Result<Response<pb::Evidence>, Status> {
        let id = request.into_inner().id;
        if id == 0 {
            return Err(Status::invalid_argument(
                "evidence id 0 does not exist; ids start at 1",
            ));
        }
        let evidence = within_deadline(self.agent.evidence(id)).await?;
        Ok(Response::new((&evidence).into()))
    }

    async fn export_pprof(
        &self,
        request: Request<pb::ExportPprofRequest>,
    ) -> Result<Response<pb::PprofProfile>, Status> {
        let request = request.into_inner();
        let kind = convert::profile_kind(request.kind)?;
        let source = match request.source {
            Some(pb::export_pprof_request::Source::Selector(selector)) => {
                ProfileSource::Live(convert::selector(Some(selector))?)
            }
            Some(pb::export_pprof_request::Source::EvidenceId(id)) if id > 0 => {
                ProfileSource::Evidence(id)
            }
            Some(pb::export_pprof_request::Source::EvidenceId(_)) => {
                return Err(Status::invalid_argument(
                    "evidence id 0 does not exist; ids start at 1",
                ));
            }
            None => {
                return Err(Status::invalid_argument(
                    "name a selector or an evidence id",
                ));
            }
        };
        let request = ProfileRequest {
            source,
            kind,
            base_evidence: (request.base_evidence_id > 0).then_some(request.base_evidence_id),
        };
        let gzipped_profile = within_deadline(self.agent.profile(request)).await?;
        Ok(Response::new(pb::PprofProfile { gzipped_profile }))
    }

    async fn get_growth_profile(
        &self,
        request: Request<pb::GetGrowthProfileRequest>,
    ) -> Result<Response<pb::GrowthProfileReport>, Status> {
        let request = convert::growth_profile_request(request.into_inner())?;
        let report = within_deadline(self.agent.growth_profile(request)).await?;
        Ok(Response::new((&report).into()))
    }
}

/// A leak report as protobuf, built and encoded in one of the few report slots.
async fn leak_report(
    agent: &AgentHandle,
    stats: &ApiStats,
    request: crate::agent::ReportRequest,
) -> Result<pb::LeakReport, Status> {
    let _slot = Arc::clone(&stats.report_slots)
        .acquire_owned()
        .await
        .map_err(|_| Status::unavailable("the API is shutting down"))?;
    let report = within_deadline(agent.report(request)).await?;
    Ok(pb::LeakReport::from(&report))
}

/// One watch stream's state. A report is produced only when tonic asks for the next one, which
/// it does only once the client has taken the previous one (HTTP/2 flow control): a stream its
/// client does not read produces nothing and holds nothing but what tonic keeps for it.
struct Watcher {
    agent: AgentHandle,
    stats: Arc<ApiStats>,
    request: crate::agent::ReportRequest,
    interval: Duration,
    ticks: tokio::time::Interval,
    last_tick: Instant,
    first: Option<pb::LeakReport>,
    /// Encoded size of the last report produced: the next is about as large.
    expected_bytes: usize,
    /// Reports not sent since the stream opened.
    skipped: u64,
    /// This stream's share of the node's budget ([`WATCH_QUEUE_BYTES`]), held while it lives:
    /// tonic keeps an encoding buffer of about twice its largest report for the stream's life.
    charge: Option<OwnedSemaphorePermit>,
    charged_bytes: usize,
    /// An error was sent: the stream ends.
    ended: bool,
    _slot: OwnedSemaphorePermit,
}

/// What one sent report costs the agent while its stream lives, per encoded byte: tonic's
/// encoding buffer grows by doubling, and the frame it hands HTTP/2 shares that buffer.
const WATCH_BYTES_PER_ENCODED_BYTE: usize = 2;

impl Watcher {
    /// The next report to send (`None` ends the stream).
    async fn next(mut self) -> Option<(Result<pb::LeakReport, Status>, Self)> {
        if self.ended {
            return None;
        }
        if let Some(first) = self.first.take() {
            if self.charge_for(first.encoded_len()) {
                return Some((Ok(self.sent(first)), self));
            }
            self.skip(1);
        }
        loop {
            let _ = self.ticks.tick().await;
            // Ticks that passed while the client was not reading.
            let missed = self.last_tick.elapsed().as_nanos() / self.interval.as_nanos().max(1);
            self.skip(u64::try_from(missed).unwrap_or(u64::MAX).saturating_sub(1));
            self.last_tick = Instant::now();
            // Nothing is produced that the budget could not take (a stream that never gets
            // room costs a check per tick, not a report).
            if !self.has_room_for(self.expected_bytes) {
                self.skip(1);
                continue;
            }
            let report = match leak_report(&self.agent, &self.stats, self.request.clone()).await {
                Ok(report) => report,
                Err(status) => {
                    self.ended = true;
                    return Some((Err(status), self));
                }
            };
            self.expected_bytes = report.encoded_len();
            if self.charge_for(self.expected_bytes) {
                return Some((Ok(self.sent(report)), self));
            }
            // The node's budget has no room for this stream's buffer: try at the next tick.
            self.skip(1);
        }
    }

    fn sent(&mut self, mut report: pb::LeakReport) -> pb::LeakReport {
        report.reports_skipped = self.skipped;
        let _ = self
            .stats
            .watch_reports_sent
            .fetch_add(1, Ordering::Relaxed);
        report
    }

    fn skip(&mut self, reports: u64) {
        if reports > 0 {
            self.skipped = self.skipped.saturating_add(reports);
            let _ = self
                .stats
                .watch_reports_skipped
                .fetch_add(reports, Ordering::Relaxed);
        }
    }

    /// Whether this stream's share, grown to cover a report of `encoded_bytes`, would fit now.
    fn has_room_for(&self, encoded_bytes: usize) -> bool {
        let wanted = encoded_bytes
            .max(1)
            .saturating_mul(WATCH_BYTES_PER_ENCODED_BYTE);
        wanted <= self.charged_bytes
            || wanted - self.charged_bytes <= self.stats.watch_queue.available_permits()
    }

    /// Grows this stream's share of the budget to cover a report of `encoded_bytes`; false when
    /// the node's budget has no room.
    fn charge_for(&mut self, encoded_bytes: usize) -> bool {
        let wanted = encoded_bytes
            .max(1)
            .saturating_mul(WATCH_BYTES_PER_ENCODED_BYTE);
        if wanted <= self.charged_bytes {
            return true;
        }
        let more = u32::try_from(wanted - self.charged_bytes).unwrap_or(u32::MAX);
        let Ok(more) = Arc::clone(&self.stats.watch_queue).try_acquire_many_owned(more) else {
            return false;
        };
        match &mut self.charge {
            Some(charge) => charge.merge(more),
            None => self.charge = Some(more),
        }
        self.charged_bytes = wanted;
        true
    }
}
