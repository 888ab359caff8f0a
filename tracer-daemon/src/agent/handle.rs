//! The agent's side facing its callers (the gRPC service, metrics, health): the handle that
//! turns calls into commands for the agent's thread, what the calls take and answer, and how
//! the thread is started and how its end is seen.

use tokio::sync::{mpsc, oneshot};

use super::{
    Agent, AgentConfig,
    growth_profiles::{GrowthProfileRequest, PodGrowthProfile},
    metrics,
    selector::Selector,
    targets::{NodeTargets, TargetProcess},
};
use crate::{
    collect::CollectError,
    evidence::{model::Evidence, pprof::ProfileKind, store::StoreError},
    report::pod::{PodReport, SortBy},
    tracer::TracerError,
};

/// Why a command failed; the API maps each kind to its status code.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The pod, container or process does not exist on this node.
    #[error("{0}")]
    NotFound(String),
    /// It exists but is not traced.
    #[error("{0}")]
    NotTraced(String),
    /// It exists but cannot be traced (a kernel thread, another architecture, no allocator).
    #[error("{0}")]
    CannotTrace(String),
    /// The agent is not running (starting, stopping, or failed).
    #[error("the tracer is not running: {0}")]
    Unavailable(String),
    /// Reading the kernel's records failed.
    #[error("failed to read the tracer's records")]
    Collect(#[from] CollectError),
    /// The tracer could not start.
    #[error(transparent)]
    Start(#[from] TracerError),
    /// The evidence store failed.
    #[error("the evidence store failed")]
    Store(#[from] StoreError),
}

/// A leak report request.
#[derive(Clone, Debug)]
pub struct ReportRequest {
    /// What to report on.
    pub selector: Selector,
    /// Stacks per container.
    pub top: usize,
    /// Minimum age, ns.
    pub min_age_ns: u64,
    /// Stack order.
    pub sort_by: SortBy,
}

/// What the agent's thread is asked to do.
pub(super) enum Command {
    ListTargets(oneshot::Sender<NodeTargets>),
    Report(
        ReportRequest,
        oneshot::Sender<Result<PodReport, AgentError>>,
    ),
    Start(
        Selector,
        oneshot::Sender<Result<Vec<TargetProcess>, AgentError>>,
    ),
    Stop(Selector, oneshot::Sender<Result<Vec<u32>, AgentError>>),
    ListEvidence(
        EvidenceQuery,
        oneshot::Sender<Result<EvidenceListing, AgentError>>,
    ),
    GetEvidence(u64, oneshot::Sender<Result<Evidence, AgentError>>),
    Profile(ProfileRequest, oneshot::Sender<Result<Vec<u8>, AgentError>>),
    GrowthProfile(
        GrowthProfileRequest,
        oneshot::Sender<Result<PodGrowthProfile, AgentError>>,
    ),
    Metrics(usize, oneshot::Sender<metrics::NodeMetrics>),
    Ping(oneshot::Sender<()>),
}

/// Which evidence to list.
#[derive(Clone, Debug, Default)]
pub struct EvidenceQuery {
    /// Only this pod (a pid selector is refused).
    pub selector: Option<Selector>,
    /// Only OOM kills.
    pub oom_kills_only: bool,
    /// Only records at or after this time (ms since the epoch).
    pub since_unix_ms: Option<u64>,
    /// Only records before this time.
    pub until_unix_ms: Option<u64>,
    /// At most this many.
    pub limit: usize,
}

/// Evidence records and what the store says about itself.
#[derive(Clone, Debug, Default)]
pub struct EvidenceListing {
    /// The records, newest first.
    pub records: Vec<Evidence>,
    /// Damage found at start, or the cause of the last failed save; `None` when whole.
    pub store_warning: Option<String>,
    /// Saves that failed since the agent started.
    pub save_failures: u64,
}

/// A pprof export: of what, which kind, and the evidence it is compared with.
#[derive(Clone, Debug)]
pub struct ProfileRequest {
    /// What the profile is of.
    pub source: ProfileSource,
    /// Outstanding allocations or the growth profile.
    pub kind: ProfileKind,
    /// A stored evidence record whose samples are added negated (`pprof::base`), so the
    /// profile shows the change from it.
    pub base_evidence: Option<u64>,
}

/// What a pprof export is of.
#[derive(Clone, Debug)]
pub enum ProfileSource {
    /// A live target.
    Live(Selector),
    /// A stored evidence record.
    Evidence(u64),
}

/// A cheap, cloneable handle to the agent.
#[derive(Clone, Debug)]
pub struct AgentHandle {
    commands: mpsc::Sender<Command>,
}

/// Commands queued at most; beyond, callers wait (their deadline bounds the wait).
const COMMAND_QUEUE: usize = 256;

impl AgentHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, AgentError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| AgentError::Unavailable("the agent has stopped".into()))?;
        answer
            .await
            .map_err(|_| AgentError::Unavailable("the agent dropped the request".into()))
    }

    /// Pods, containers and processes on the node.
    pub async fn list_targets(&self) -> Result<NodeTargets, AgentError> {
        self.ask(Command::ListTargets).await
    }

    /// A leak report.
    pub async fn report(&self, request: ReportRequest) -> Result<PodReport, AgentError> {
        self.ask(|reply| Command::Report(request, reply)).await?
    }

    /// Starts tracing what the selector names.
    pub async fn start(&self, selector: Selector) -> Result<Vec<TargetProcess>, AgentError> {
        self.ask(|reply| Command::Start(selector, reply)).await?
    }

    /// Stops tracing what the selector names.
    pub async fn stop(&self, selector: Selector) -> Result<Vec<u32>, AgentError> {
        self.ask(|reply| Command::Stop(selector, reply)).await?
    }

    /// Evidence records, newest first (payloads included: callers summarise), with the store's
    /// state.
    pub async fn list_evidence(&self, query: EvidenceQuery) -> Result<EvidenceListing, AgentError> {
        self.ask(|reply| Command::ListEvidence(query, reply))
            .await?
    }

    /// One evidence record.
    pub async fn evidence(&self, id: u64) -> Result<Evidence, AgentError> {
        self.ask(|reply| Command::GetEvidence(id, reply)).await?
    }

    /// Health and per-container leak figures for the metrics endpoint, at most
    /// `max_containers` containers.
    pub async fn metrics(&self, max_containers: usize) -> Result<metrics::NodeMetrics, AgentError> {
        self.ask(|reply| Command::Metrics(max_containers, reply))
            .await
    }

    /// A gzipped pprof profile.
    pub async fn profile(&self, request: ProfileRequest) -> Result<Vec<u8>, AgentError> {
        self.ask(|reply| Command::Profile(request, reply)).await?
    }

    /// A pod's growth profiles.
    pub async fn growth_profile(
        &self,
        request: GrowthProfileRequest,
    ) -> Result<PodGrowthProfile, AgentError> {
        self.ask(|reply| Command::GrowthProfile(request, reply))
            .await?
    }

    /// Answers once the agent has taken this request from its queue: it is alive and turning.
    pub async fn ping(&self) -> Result<(), AgentError> {
        self.ask(Command::Ping).await
    }
}

/// Why the agent's thread ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentEnd {
    /// Its command channel closed (the process is shutting down).
    Stopped,
    /// It panicked, with this message.
    Panicked(String),
}

impl std::fmt::Display for AgentEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stopped => f.write_str("the agent's thread stopped"),
            Self::Panicked(message) => write!(f, "the agent's thread panicked: {message}"),
        }
    }
}

/// Resolves when the agent's thread has ended, for any reason.
#[derive(Debug)]
pub struct AgentExit(oneshot::Receiver<AgentEnd>);

impl AgentExit {
    /// Waits for the agent's thread to end.
    pub async fn wait(self) -> AgentEnd {
        self.0.await.unwrap_or_else(|_| {
            AgentEnd::Panicked("the thread ended without saying why".to_owned())
        })
    }
}

pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Starts the agent on its own thread; returns once the BPF programs are loaded (or failed),
/// with a handle for requests and what resolves when the thread ends.
pub fn spawn(config: AgentConfig) -> Result<(AgentHandle, AgentExit), AgentError> {
    let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
    let (started, start_result) = std::sync::mpsc::channel();
    let (ended, exit) = oneshot::channel();
    let _thread = std::thread::Builder::new()
        .name("tracer-agent".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = started.send(Err(AgentError::Unavailable(error.to_string())));
                    return;
                }
            };
            let agent = match Agent::new(config) {
                Ok(agent) => agent,
                Err(error) => {
                    let _ = started.send(Err(error));
                    return;
                }
            };
            let _ = started.send(Ok(()));
            let run = std::panic::AssertUnwindSafe(|| runtime.block_on(agent.run(inbox)));
            let end = match std::panic::catch_unwind(run) {
                Ok(()) => AgentEnd::Stopped,
                Err(payload) => AgentEnd::Panicked(panic_message(payload.as_ref())),
            };
            let _ = ended.send(end);
        })
        .map_err(|e| AgentError::Unavailable(e.to_string()))?;
    match start_result.recv() {
        Ok(Ok(())) => Ok((AgentHandle { commands }, AgentExit(exit))),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(AgentError::Unavailable(
            "the agent thread died while starting".into(),
        )),
    }
}
