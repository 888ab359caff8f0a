//! The gRPC API (package tracer.v1) over the agent: a thin tonic service that validates
//! requests, forwards them to the agent and maps its errors to precise status codes; plus
//! grpc.health.v1 and server reflection, and the listeners (Unix socket by default).

pub mod convert;
pub mod metrics;
pub mod server;

use std::{pin::Pin, sync::Arc, time::Duration};

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};
use tracer_proto::v1::{self as pb, leak_tracer_server::LeakTracer};

use crate::agent::{AgentHandle, ProfileSource};

/// Watch streams open at once, node-wide; more are refused with RESOURCE_EXHAUSTED.
pub const MAX_WATCH_STREAMS: usize = 64;

/// How long a request may wait for the agent.
const AGENT_DEADLINE: Duration = Duration::from_secs(30);

/// The LeakTracer service.
#[derive(Clone, Debug)]
pub struct LeakTracerService {
    agent: AgentHandle,
    watch_slots: Arc<Semaphore>,
}

impl LeakTracerService {
    /// A service forwarding to this agent.
    pub fn new(agent: AgentHandle) -> Self {
        Self {
            agent,
            watch_slots: Arc::new(Semaphore::new(MAX_WATCH_STREAMS)),
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
        let (sender, receiver) = mpsc::channel(2);
        let agent = self.agent.clone();
        let _watcher = tokio::spawn(async move {
            let _slot = slot;
            if sender.send(Ok((&first).into())).await.is_err() {
                return;
            }
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let _first_tick = ticks.tick().await;
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = sender.closed() => return,
                }
                let next = within_deadline(agent.report(report_request.clone())).await;
                let end = next.is_err();
                if sender.send(next.map(|r| (&r).into())).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
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
