//! The node agent: one actor owns the tracer, the node view, the selection and the growth
//! windows; RPCs reach it as commands over a channel and get answers on oneshots. It runs on
//! its own thread so symbolization and map scans never stall the gRPC server.

pub mod selector;
pub mod targets;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::{
    bpf::MapSizes,
    collect::{CollectError, monotonic_now_ns},
    discover::{
        memory::{self, CgroupMounts},
        node::{self, NodePaths, NodeView},
    },
    report::{
        ProcessReport, StackReport,
        growth::{GrowthConfig, GrowthTracker},
        pod::{self, ContainerReport, PodReport, SortBy},
    },
    select::{Explicit, Selection, SelectionConfig},
    tracer::{ReportOptions, Tracer, TracerError},
};
use selector::{Selector, Target};
use targets::{ContainerTarget, NodeTargets, PodTarget, TargetProcess};

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// BPF map sizes.
    pub sizes: MapSizes,
    /// Where the node's records are.
    pub paths: NodePaths,
    /// Which pods to trace.
    pub selection: SelectionConfig,
    /// Growth windows.
    pub growth: GrowthConfig,
    /// How often exits and mmap records are processed.
    pub poll_interval: Duration,
    /// How often /proc is rescanned for new processes and pods.
    pub discovery_interval: Duration,
    /// How often every stack's bytes are sampled into the growth windows.
    pub sample_interval: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            sizes: MapSizes::default(),
            paths: NodePaths::default(),
            selection: SelectionConfig::default(),
            growth: GrowthConfig::default(),
            poll_interval: Duration::from_millis(200),
            discovery_interval: Duration::from_secs(2),
            sample_interval: Duration::from_secs(10),
        }
    }
}

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
    /// The agent is not running (starting, stopping, or failed).
    #[error("the tracer is not running: {0}")]
    Unavailable(String),
    /// Reading the kernel's records failed.
    #[error("failed to read the tracer's records")]
    Collect(#[from] CollectError),
    /// The tracer could not start.
    #[error(transparent)]
    Start(#[from] TracerError),
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

enum Command {
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
}

/// Starts the agent on its own thread; returns once the BPF programs are loaded (or failed).
pub fn spawn(
    config: AgentConfig,
) -> Result<(AgentHandle, std::thread::JoinHandle<()>), AgentError> {
    let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
    let (started, start_result) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
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
            runtime.block_on(agent.run(inbox));
        })
        .map_err(|e| AgentError::Unavailable(e.to_string()))?;
    match start_result.recv() {
        Ok(Ok(())) => Ok((AgentHandle { commands }, thread)),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(AgentError::Unavailable(
            "the agent thread died while starting".into(),
        )),
    }
}

struct Agent {
    config: AgentConfig,
    tracer: Tracer,
    mounts: CgroupMounts,
    view: NodeView,
    selection: Selection,
    growth: GrowthTracker<(u32, u64)>,
    /// Pids traced by pid (outside the pod selection).
    explicit_pids: HashSet<u32>,
    /// Selected processes that could not be traced, and why.
    failures: HashMap<u32, String>,
}

impl Agent {
    fn new(config: AgentConfig) -> Result<Self, AgentError> {
        let selection = Selection::new(&config.selection)
            .map_err(|e| AgentError::InvalidArgument(e.to_string()))?;
        let tracer = Tracer::new(&config.sizes)?;
        let mounts = memory::read_cgroup_mounts();
        info!(?mounts, "cgroup filesystems");
        Ok(Self {
            growth: GrowthTracker::new(config.growth),
            config,
            tracer,
            mounts,
            view: NodeView::default(),
            selection,
            explicit_pids: HashSet::new(),
            failures: HashMap::new(),
        })
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        self.discover();
        let mut poll = tokio::time::interval(self.config.poll_interval);
        let mut discovery = tokio::time::interval(self.config.discovery_interval);
        let mut sample = tokio::time::interval(self.config.sample_interval);
        for timer in [&mut poll, &mut discovery, &mut sample] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                command = inbox.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                _ = poll.tick() => self.poll(),
                _ = discovery.tick() => self.discover(),
                _ = sample.tick() => self.sample(),
            }
        }
        info!("agent stopped");
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::ListTargets(reply) => {
                let _ = reply.send(self.targets());
            }
            Command::Report(request, reply) => {
                let _ = reply.send(self.report(&request));
            }
            Command::Start(selector, reply) => {
                let _ = reply.send(self.start(&selector));
            }
            Command::Stop(selector, reply) => {
                let _ = reply.send(self.stop(&selector));
            }
        }
    }

    fn poll(&mut self) {
        self.tracer.poll();
        for pid in self.tracer.reap_ended() {
            self.growth.forget(|&(p, _)| p == pid);
            let _ = self.explicit_pids.remove(&pid);
        }
    }

    /// Rescans the node and attaches every selected process not yet traced.
    fn discover(&mut self) {
        self.view = node::scan(&self.config.paths, &self.mounts);
        let view = &self.view;
        self.selection
            .retain_pods(|uid| view.pods.contains_key(uid));
        self.failures
            .retain(|pid, _| view.processes.contains_key(pid) || self.explicit_pids.contains(pid));
        let mut traced: HashSet<u32> = self.tracer.pids().into_iter().collect();
        let mut wanted: Vec<u32> = Vec::new();
        let mut unwanted: Vec<u32> = Vec::new();
        for pod in self.view.pods.values() {
            for container in pod.containers.values() {
                let selected = self.selection.selects(
                    &pod.uid,
                    pod.namespace.as_deref(),
                    pod.name.as_deref(),
                    container.name.as_deref(),
                );
                for &pid in &container.pids {
                    if selected {
                        wanted.push(pid);
                    } else if traced.contains(&pid) && !self.explicit_pids.contains(&pid) {
                        unwanted.push(pid);
                    }
                }
            }
        }
        for pid in unwanted {
            info!(pid, "no longer selected; detaching");
            self.untrace(pid);
            let _ = traced.remove(&pid);
        }
        for pid in wanted {
            if traced.contains(&pid) || self.failures.contains_key(&pid) {
                continue;
            }
            if traced.len() >= self.selection.max_processes {
                let _ = self.failures.insert(
                    pid,
                    format!("max processes reached ({})", self.selection.max_processes),
                );
                continue;
            }
            match self.tracer.trace(pid) {
                Ok(()) => {
                    let _ = traced.insert(pid);
                }
                Err(error) => {
                    warn!(pid, %error, "cannot trace selected process");
                    let _ = self.failures.insert(pid, format!("{error:#}"));
                }
            }
        }
    }

    fn untrace(&mut self, pid: u32) {
        self.tracer.untrace(pid);
        self.growth.forget(|&(p, _)| p == pid);
    }

    /// Samples every traced stack's bytes into the growth windows.
    fn sample(&mut self) {
        if let Err(error) = self.tracer.refresh_ages() {
            warn!(%error, "age scan failed");
        }
        let pids = self.tracer.pids();
        match self
            .tracer
            .process_reports(&pids, &ReportOptions::default())
        {
            Ok(reports) => {
                let now = monotonic_now_ns();
                let samples = reports.iter().flat_map(|process| {
                    process.stacks.iter().filter_map(move |stack| {
                        Some(((process.pid, stack_id_value(&stack.stack_id)?), stack.bytes))
                    })
                });
                self.growth.record(now, samples);
            }
            Err(error) => warn!(%error, "growth sampling failed"),
        }
    }

    /// The pids a selector names (traced or not) with their container id, or why none.
    fn resolve(&self, selector: &Selector) -> Result<Resolved, AgentError> {
        let pod = match &selector.target {
            Target::Pid(pid) => {
                let container = self.view.processes.get(pid).map(|p| p.container_id.clone());
                let known = container.is_some() || self.tracer.state(*pid).is_some();
                if !known && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    return Err(AgentError::NotFound(format!(
                        "no process with pid {pid} on this node"
                    )));
                }
                let pod = self
                    .view
                    .processes
                    .get(pid)
                    .and_then(|p| self.view.pods.get(&p.pod_uid));
                let mut containers = BTreeMap::new();
                let _ = containers.insert(container, vec![*pid]);
                return Ok(Resolved {
                    pod: pod.cloned(),
                    containers,
                });
            }
            Target::Pod { namespace, name } => {
                self.view.pod_by_name(namespace, name).ok_or_else(|| {
                    AgentError::NotFound(format!("no pod {namespace}/{name} on this node"))
                })?
            }
            Target::PodUid(uid) => self.view.pods.get(uid).ok_or_else(|| {
                AgentError::NotFound(format!("no pod with uid {uid} on this node"))
            })?,
        };
        let mut containers = BTreeMap::new();
        for container in pod.containers.values() {
            if let Some(wanted) = &selector.container
                && container.name.as_deref() != Some(wanted.as_str())
            {
                continue;
            }
            let _ = containers.insert(
                Some(container.id.clone()),
                container.pids.iter().copied().collect(),
            );
        }
        if containers.is_empty()
            && let Some(wanted) = &selector.container
        {
            return Err(AgentError::NotFound(format!(
                "pod {} has no container {wanted}",
                pod.display_name()
            )));
        }
        Ok(Resolved {
            pod: Some(pod.clone()),
            containers,
        })
    }

    fn report(&mut self, request: &ReportRequest) -> Result<PodReport, AgentError> {
        let taken_at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.tracer.poll();
        let resolved = self.resolve(&request.selector)?;
        let traced: HashSet<u32> = self.tracer.pids().into_iter().collect();
        let pids: Vec<u32> = resolved
            .containers
            .values()
            .flatten()
            .copied()
            .filter(|p| traced.contains(p))
            .collect();
        if pids.is_empty() {
            return Err(AgentError::NotTraced(format!(
                "{} is not traced; start it with StartTracing (tracerctl trace start)",
                request.selector
            )));
        }
        let options = ReportOptions {
            min_age_ns: request.min_age_ns,
        };
        let processes = self.tracer.process_reports(&pids, &options)?;
        let by_pid: HashMap<u32, ProcessReport> =
            processes.into_iter().map(|p| (p.pid, p)).collect();

        let mut containers = Vec::new();
        for (container_id, container_pids) in &resolved.containers {
            let container = resolved
                .pod
                .as_ref()
                .zip(container_id.as_ref())
                .and_then(|(pod, id)| pod.containers.get(id));
            let mut stacks: Vec<StackReport> = Vec::new();
            let mut included = Vec::new();
            for pid in container_pids {
                let Some(process) = by_pid.get(pid) else {
                    continue;
                };
                included.push(*pid);
                for stack in &process.stacks {
                    let mut stack = stack.clone();
                    stack.growth =
                        stack_id_value(&stack.stack_id).map(|id| self.growth.growth(&(*pid, id)));
                    stacks.push(stack);
                }
            }
            if included.is_empty() {
                continue;
            }
            let memory = container.and_then(node::Container::memory);
            let leak_bytes_per_second = pod::leak_rate(&stacks);
            containers.push(ContainerReport {
                name: container.and_then(|c| c.name.clone()),
                id: container_id.clone(),
                outstanding_bytes: stacks.iter().map(|s| s.bytes).sum(),
                outstanding_count: stacks.iter().map(|s| s.count).sum(),
                leak_bytes_per_second,
                time_to_limit_ns: pod::time_to_limit_ns(memory.as_ref(), leak_bytes_per_second),
                memory,
                stacks_total: stacks.len(),
                stacks: pod::rank_stacks(stacks, request.sort_by, request.top),
                pids: included,
            });
        }
        let pod = resolved.pod.as_ref();
        Ok(PodReport {
            taken_at_unix_ms,
            namespace: pod.and_then(|p| p.namespace.clone()),
            pod_name: pod.and_then(|p| p.name.clone()),
            pod_uid: pod.map(|p| p.uid.clone()),
            containers,
            sort_by: request.sort_by,
            min_age_ns: request.min_age_ns,
            stats: self.tracer.stats(),
        })
    }

    fn start(&mut self, selector: &Selector) -> Result<Vec<TargetProcess>, AgentError> {
        let resolved = self.resolve(selector)?;
        match (&selector.target, &resolved.pod) {
            (Target::Pid(pid), _) => {
                let _ = self.explicit_pids.insert(*pid);
                let _ = self.failures.remove(pid);
                if let Err(error) = self.tracer.trace(*pid) {
                    let _ = self.failures.insert(*pid, format!("{error:#}"));
                }
            }
            (_, Some(pod)) => {
                self.selection.start(Explicit {
                    pod_uid: pod.uid.clone(),
                    container: selector.container.clone(),
                });
                for pid in resolved.containers.values().flatten() {
                    let _ = self.failures.remove(pid);
                }
                self.discover();
            }
            (_, None) => {}
        }
        Ok(resolved
            .containers
            .values()
            .flatten()
            .map(|&pid| self.target_process(pid))
            .collect())
    }

    fn stop(&mut self, selector: &Selector) -> Result<Vec<u32>, AgentError> {
        let resolved = self.resolve(selector)?;
        if let (Some(pod), false) = (&resolved.pod, matches!(selector.target, Target::Pid(_))) {
            self.selection.stop(Explicit {
                pod_uid: pod.uid.clone(),
                container: selector.container.clone(),
            });
        }
        let traced: HashSet<u32> = self.tracer.pids().into_iter().collect();
        let mut stopped = Vec::new();
        for &pid in resolved.containers.values().flatten() {
            let _ = self.explicit_pids.remove(&pid);
            if traced.contains(&pid) {
                self.untrace(pid);
                stopped.push(pid);
            }
        }
        Ok(stopped)
    }

    fn target_process(&self, pid: u32) -> TargetProcess {
        let comm = self
            .view
            .processes
            .get(&pid)
            .map(|p| p.comm.clone())
            .or_else(|| crate::discover::process::inspect(pid).ok().map(|i| i.comm))
            .unwrap_or_default();
        let traced = self.tracer.state(pid).is_some();
        TargetProcess {
            pid,
            comm,
            traced,
            allocator: self.tracer.allocator(pid).map(str::to_owned),
            not_traced_reason: if traced {
                None
            } else {
                self.failures.get(&pid).cloned()
            },
        }
    }

    fn targets(&self) -> NodeTargets {
        let mut pods: Vec<PodTarget> = self
            .view
            .pods
            .values()
            .map(|pod| {
                let containers = pod
                    .containers
                    .values()
                    .map(|c| ContainerTarget {
                        name: c.name.clone(),
                        id: c.id.clone(),
                        runtime: c.runtime.as_str().to_owned(),
                        memory: c.memory(),
                        processes: c.pids.iter().map(|&pid| self.target_process(pid)).collect(),
                    })
                    .collect();
                PodTarget {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    uid: pod.uid.clone(),
                    qos_class: pod.qos.as_str().to_owned(),
                    selected: pod.containers.values().any(|c| {
                        self.selection.selects(
                            &pod.uid,
                            pod.namespace.as_deref(),
                            pod.name.as_deref(),
                            c.name.as_deref(),
                        )
                    }),
                    containers,
                }
            })
            .collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name, &a.uid).cmp(&(&b.namespace, &b.name, &b.uid)));
        let mut other: Vec<u32> = self
            .tracer
            .pids()
            .into_iter()
            .filter(|pid| !self.view.processes.contains_key(pid))
            .collect();
        other.sort_unstable();
        NodeTargets {
            pods,
            other_processes: other
                .into_iter()
                .map(|pid| self.target_process(pid))
                .collect(),
        }
    }
}

/// What a selector resolved to: the pod (if any) and pids per container id.
struct Resolved {
    pod: Option<node::Pod>,
    containers: BTreeMap<Option<String>, Vec<u32>>,
}

fn stack_id_value(hex: &str) -> Option<u64> {
    u64::from_str_radix(hex, 16).ok()
}
