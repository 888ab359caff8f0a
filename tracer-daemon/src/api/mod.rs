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
    task::{Context, Poll},
    time::{Duration, Instant},
};

use prost::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracer_proto::v1::{self as pb, leak_tracer_server::LeakTracer};

use crate::agent::{AgentHandle, ProfileSource};
use connections::ListenerStats;

/// Watch streams open at once, node-wide; more are refused with RESOURCE_EXHAUSTED.
pub const MAX_WATCH_STREAMS: usize = 64;

/// Encoded bytes of watch-stream reports waiting for their clients, node-wide. A stream holds
/// at most one report its client has not taken; a report that would pass this budget is
/// skipped (counted) and the stream tries again at its next tick.
pub const WATCH_QUEUE_BYTES: usize = 64 << 20;

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
        }
    }
}

impl ApiStats {
    /// Encoded bytes of watch-stream reports sent to clients that have not taken them yet.
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
        let report = within_deadline(self.agent.report(request)).await?;
        Ok(Response::new((&report).into()))
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
        let first = within_deadline(self.agent.report(report_request.clone())).await?;
        // One slot: the producer waits for the client to take a report before making the next,
        // so an unread stream holds one report, never a queue of them.
        let (sender, receiver) = mpsc::channel(1);
        let agent = self.agent.clone();
        let stats = Arc::clone(&self.stats);
        let _watcher = tokio::spawn(async move {
            let _slot = slot;
            let mut pending = Some(pb::LeakReport::from(&first));
            let mut skipped = 0u64;
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let _first_tick = ticks.tick().await;
            let mut last_tick = Instant::now();
            loop {
                let Ok(room) = sender.reserve().await else {
                    return;
                };
                let mut report = match pending.take() {
                    Some(report) => report,
                    None => {
                        tokio::select! {
                            _ = ticks.tick() => {}
                            () = sender.closed() => return,
                        }
                        // Ticks that passed while the client was not reading.
                        let missed = last_tick.elapsed().as_nanos() / interval.as_nanos().max(1);
                        let missed = u64::try_from(missed).unwrap_or(u64::MAX).saturating_sub(1);
                        last_tick = Instant::now();
                        if missed > 0 {
                            skipped = skipped.saturating_add(missed);
                            let _ = stats
                                .watch_reports_skipped
                                .fetch_add(missed, Ordering::Relaxed);
                        }
                        match within_deadline(agent.report(report_request.clone())).await {
                            Ok(report) => pb::LeakReport::from(&report),
                            Err(status) => {
                                room.send((Err(status), None));
                                return;
                            }
                        }
                    }
                };
                report.reports_skipped = skipped;
                let size = u32::try_from(report.encoded_len()).unwrap_or(u32::MAX);
                match Arc::clone(&stats.watch_queue).try_acquire_many_owned(size) {
                    Ok(bytes) => {
                        let _ = stats.watch_reports_sent.fetch_add(1, Ordering::Relaxed);
                        room.send((Ok(report), Some(bytes)));
                    }
                    Err(_) => {
                        skipped = skipped.saturating_add(1);
                        let _ = stats.watch_reports_skipped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(WatchStream {
            receiver,
            held: None,
        })))
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
        let evidence = within_deadline(self.agent.list_evidence(query)).await?;
        Ok(Response::new(pb::ListOomEventsResponse {
            events: evidence.iter().filter_map(convert::oom_event).collect(),
        }))
    }

    async fn list_evidence(
        &self,
        request: Request<pb::ListEvidenceRequest>,
    ) -> Result<Response<pb::ListEvidenceResponse>, Status> {
        let query = convert::evidence_query(request.into_inner().filter, false)?;
        let evidence = within_deadline(self.agent.list_evidence(query)).await?;
        Ok(Response::new(pb::ListEvidenceResponse {
            evidence: evidence.iter().map(convert::evidence_summary).collect(),
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
        let source = match request.into_inner().source {
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
        let gzipped_profile = within_deadline(self.agent.profile(source)).await?;
        Ok(Response::new(pb::PprofProfile { gzipped_profile }))
    }
}

/// A watch stream's reports as the client takes them. A report's share of the node's queue
/// budget is held until the client asks for the next one: by then tonic has encoded it and the
/// HTTP/2 layer (which only asks for more data once the previous data went out) has sent it.
struct WatchStream {
    receiver: mpsc::Receiver<(Result<pb::LeakReport, Status>, Option<OwnedSemaphorePermit>)>,
    held: Option<OwnedSemaphorePermit>,
}

impl Stream for WatchStream {
    type Item = Result<pb::LeakReport, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.held = None;
        match this.receiver.poll_recv(cx) {
            Poll::Ready(Some((item, bytes))) => {
                this.held = bytes;
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
