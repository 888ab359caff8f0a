//! The node agent: one actor owns the tracer, the node view, the tracing plan (`reconcile`)
//! and the growth windows; RPCs reach it as commands over a channel and get answers on
//! oneshots. It runs on its own thread so symbolization and map scans never stall the gRPC
//! server, and processes found by discovery are read for attaching on another (`preparer`):
//! the agent's thread does only the kernel half of each attach.
//!
//! The agent's work is split by what it answers: `reports` (leak reports), `evidence`
//! (snapshots at OOM kills and memory pressure, and their queries), `metrics`, `targets`.

pub mod budget;
mod config;
pub mod escalation;
mod evidence;
pub mod growth_profiles;
mod handle;
pub mod metrics;
pub mod otlp;
pub mod preparer;
pub mod reconcile;
mod reports;
pub use tracer_parse::selector;
pub mod targets;
#[cfg(test)]
mod tests;
pub mod watch_all;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::{info, warn};

pub use config::{AgentConfig, DEFAULT_STATE_DIR, Fault, GROWTH_TRACKED_STACKS, WatchAll};
pub use growth_profiles::{ContainerGrowth, GrowthProfileRequest, PodGrowthProfile};
pub use handle::{
    AgentEnd, AgentError, AgentExit, AgentHandle, EvidenceListing, EvidenceQuery, ProfileRequest,
    ProfileSource, ReportRequest, spawn,
};
use handle::{Command, panic_message};
use preparer::Preparer;
use reconcile::Reconciler;
use selector::{Selector, Target};
use targets::{ContainerTarget, NodeTargets, PodTarget, TargetProcess};

use crate::{
    discover::{
        memory::{self, CgroupMounts},
        node::{self, NodeView},
    },
    evidence::{store::EvidenceStore, watch::MemoryWatch},
    report::{first_touch::FirstTouchWindows, growth::GrowthTracker, trend::ContainerTrends},
    select::{Exclusions, Explicit},
    tracer::{Prepared, Tracer},
};

/// The ring buffer's descriptor, owned by the tracer (which outlives the event loop).
struct EventsFd(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for EventsFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

struct Agent {
    config: AgentConfig,
    tracer: Tracer,
    mounts: CgroupMounts,
    /// Rescans the node, remembering its processes in pods between scans.
    scanner: node::Scanner,
    view: NodeView,
    growth: GrowthTracker<(u32, u64)>,
    /// What to trace, what waits to be attached, what could not be.
    plan: Reconciler,
    /// Reads processes for attaching, off this thread.
    preparer: Preparer,
    store: EvidenceStore,
    watch: MemoryWatch,
    /// Containers with an OOM kill seen at the kernel hook recently (counter-based sightings of
    /// the same kill are then not recorded twice).
    recent_kernel_ooms: HashMap<String, Instant>,
    /// The background scan round last fed to the growth windows.
    last_sample_ns: u64,
    /// Evidence records saved since start.
    evidence_saved: u64,
    /// Evidence saves that failed since start.
    evidence_failed: u64,
    /// Allocations lost when that was last logged.
    logged_lost: u64,
    /// When the node was last rescanned for a name a request did not find.
    last_rescan: Instant,
    /// Pods left out of always-on watching.
    exclusions: Exclusions,
    /// Every watched container's memory trend.
    trends: ContainerTrends,
    /// Containers the escalation policy traces.
    escalations: escalation::Escalations,
    /// Cgroups whose page faults the kernel records (the watched containers').
    watched_cgroups: HashSet<u64>,
    /// The growth profile's windows.
    first_touch: FirstTouchWindows,
    /// What tracing costs each traced process, against the budget.
    budget: budget::Budget,
    /// Processes stopped for the budget since start.
    over_budget: u64,
    /// Processes the budget switched to sampling since start.
    budget_sampled: u64,
    /// Measures the tracing programs' run time now and then, for the budget.
    run_time_meter: budget::RunTimeMeter,
}

impl Agent {
    fn new(config: AgentConfig) -> Result<Self, AgentError> {
        let mut tracer = Tracer::new(&config.tracer)?;
        tracer
            .start_scanner(config.sample_interval, GROWTH_TRACKED_STACKS)
            .map_err(|e| AgentError::Unavailable(format!("cannot start the age scanner: {e}")))?;
        let mounts = memory::read_cgroup_mounts();
        info!(?mounts, "cgroup filesystems");
        Self::with_tracer(config, tracer, mounts)
    }

    /// An agent over a tracer that is already loaded (the tests' runs on the in-memory kernel
    /// side).
    fn with_tracer(
        config: AgentConfig,
        tracer: Tracer,
        mounts: CgroupMounts,
    ) -> Result<Self, AgentError> {
        let plan = Reconciler::new(&config.selection)
            .map_err(|e| AgentError::InvalidArgument(e.to_string()))?;
        let exclusions = Exclusions::new(
            &config.watch_all.exclude_namespaces,
            &config.watch_all.exclude_pods,
        )
        .map_err(|e| AgentError::InvalidArgument(e.to_string()))?;
        let store = EvidenceStore::open(&config.state_dir, config.retention)?;
        let preparer = Preparer::spawn(tracer.placement()).map_err(|e| {
            AgentError::Unavailable(format!("cannot start the thread that reads processes: {e}"))
        })?;
        Ok(Self {
            growth: GrowthTracker::new(config.growth),
            trends: ContainerTrends::new(config.growth),
            watched_cgroups: HashSet::new(),
            first_touch: FirstTouchWindows::new(config.growth, GROWTH_TRACKED_STACKS),
            budget: budget::Budget::new(
                config.budget.clone(),
                tracer.probe_cost(),
                tracer.sessions(),
            ),
            over_budget: 0,
            budget_sampled: 0,
            run_time_meter: budget::RunTimeMeter::new(),
            escalations: escalation::Escalations::new(config.escalation.clone()),
            exclusions,
            watch: MemoryWatch::new(config.watch.clone()),
            config,
            tracer,
            mounts,
            scanner: node::Scanner::default(),
            view: NodeView::default(),
            plan,
            preparer,
            store,
            recent_kernel_ooms: HashMap::new(),
            last_sample_ns: 0,
            evidence_saved: 0,
            evidence_failed: 0,
            logged_lost: 0,
            // Long enough ago that the first request may rescan at once.
            last_rescan: Instant::now()
                .checked_sub(Duration::from_secs(1))
                .unwrap_or_else(Instant::now),
        })
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        self.discover();
        // The command line and config refuse shorter periods; a zero one would panic here.
        let period = |interval: Duration| interval.max(crate::config::MIN_INTERVAL);
        let mut poll = tokio::time::interval(period(self.config.poll_interval));
        let mut discovery = tokio::time::interval(period(self.config.discovery_interval));
        let mut sample = tokio::time::interval(period(self.config.sample_interval));
        let mut watch = tokio::time::interval(period(self.config.watch_interval));
        let export_interval = self.config.otlp.as_ref().map(|o| o.interval);
        let mut export = export_interval
            .map(|i| tokio::time::interval_at(tokio::time::Instant::now() + period(i), period(i)));
        let fault = self.config.fault;
        let fault_timer = async move {
            match fault {
                Some(Fault::PanicAfter(after) | Fault::StallAfter(after)) => {
                    tokio::time::sleep(after).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(fault_timer);
        for timer in [&mut poll, &mut discovery, &mut sample, &mut watch]
            .into_iter()
            .chain(export.as_mut())
        {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        // Woken as soon as the kernel side writes a record: an OOM kill is captured within
        // milliseconds, not at the next tick.
        // SAFETY: the descriptor belongs to `self.tracer`, which outlives `events` (a local of
        // this function, dropped before `self`).
        let registered = self.tracer.events_fd().map(|fd| unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                EventsFd(fd),
                tokio::io::Interest::READABLE,
            )
        });
        let events = match registered {
            Some(Ok(events)) => Some(events),
            Some(Err(error)) => {
                warn!(%error, "cannot wait on the ring buffer; OOM kills are captured at the next tick");
                None
            }
            None => None,
        };
        loop {
            tokio::select! {
                ready = async {
                    match &events {
                        Some(events) => events.readable().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Ok(mut guard) = ready {
                        guard.clear_ready();
                    }
                    self.tracer.drain_events();
                    self.handle_oom_kills();
                }
                command = inbox.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                _ = poll.tick() => self.poll(),
                _ = discovery.tick() => self.discover(),
                prepared = self.preparer.next() => match prepared {
                    Some((pid, result)) => self.attach_prepared(pid, result),
                    // Nothing reads new processes any more: fail loudly (health turns
                    // NOT_SERVING) rather than stop attaching without a word.
                    None => panic!("{}", preparer::PreparerGone),
                },
                _ = sample.tick() => self.sample(),
                _ = watch.tick() => self.watch_memory(),
                _ = async {
                    match export.as_mut() {
                        Some(export) => export.tick().await,
                        None => std::future::pending().await,
                    }
                } => self.export_profiles(),
                () = &mut fault_timer => match fault {
                    Some(Fault::StallAfter(_)) => {
                        warn!("injected fault: the agent's thread stops answering");
                        loop {
                            std::thread::sleep(Duration::from_secs(3600));
                        }
                    }
                    _ => panic!("injected fault: the agent's thread panics"),
                },
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
            Command::ListEvidence(query, reply) => {
                let _ = reply.send(self.list_evidence(&query));
            }
            Command::GetEvidence(id, reply) => {
                let _ = reply.send(self.get_evidence(id));
            }
            Command::Profile(request, reply) => {
                let _ = reply.send(self.profile(&request));
            }
            Command::GrowthProfile(request, reply) => {
                let _ = reply.send(self.growth_report(&request));
            }
            Command::Metrics(max_containers, reply) => {
                let _ = reply.send(self.metrics(max_containers));
            }
            Command::Ping(reply) => {
                let _ = reply.send(());
            }
        }
    }

    fn poll(&mut self) {
        self.tracer.poll();
        self.handle_oom_kills();
        self.meter_program_run_time();
        for pid in self.tracer.reap_ended() {
            self.growth.forget(|&(p, _)| p == pid);
            self.first_touch.forget(pid);
            self.plan.forget_pid(pid);
        }
    }

    fn traced(&self) -> HashSet<u32> {
        self.tracer.pids().into_iter().collect()
    }

    /// Rescans the node, detaches what is no longer selected and sends what is selected and
    /// not yet traced to be read for attaching.
    fn discover(&mut self) {
        self.rescan_view();
        let unwanted = self.plan.rescanned(&self.view, &self.traced());
        for pid in unwanted {
            info!(pid, "no longer selected; detaching");
            self.untrace(pid);
        }
        self.dispatch();
    }

    /// Scans the node again. OOM kills the kernel hook reported are recorded first, against
    /// the view that still holds their victims: a rescan after a victim died forgets it, and
    /// its container too when it was the last process there (the evidence would name no pod).
    /// Kills reported while the scan ran are recorded against the old view as well.
    fn rescan_view(&mut self) {
        self.tracer.drain_events();
        self.handle_oom_kills();
        let view = self.scanner.scan(&self.config.paths, &self.mounts);
        self.tracer.drain_events();
        self.handle_oom_kills();
        self.view = view;
        self.watch_page_faults();
    }

    /// Sends selected processes to be read, as many as may be read at once.
    fn dispatch(&mut self) {
        let traced = self.traced();
        while let Some(pid) = self.plan.next_to_prepare(&traced, preparer::IN_FLIGHT) {
            if let Err(gone) = self.preparer.send(pid) {
                panic!("{gone}");
            }
        }
    }

    /// Attaches a process the preparer has read (the kernel half of the attach), then sends
    /// the next one to be read.
    fn attach_prepared(&mut self, pid: u32, result: Result<Prepared, String>) {
        let wanted = self.plan.prepared(pid);
        match result {
            Ok(prepared) if wanted => {
                if let Err(error) = self.tracer.trace_prepared(prepared) {
                    warn!(pid, %error, "cannot trace selected process");
                    self.plan.fail(pid, format!("{error:#}"));
                }
            }
            // Deselected, stopped or gone while it was read.
            Ok(_) => {}
            Err(reason) if wanted => {
                warn!(pid, error = %reason, "cannot trace selected process");
                self.plan.fail(pid, reason);
            }
            Err(_) => {}
        }
        self.dispatch();
    }

    fn untrace(&mut self, pid: u32) {
        self.tracer.untrace(pid);
        self.growth.forget(|&(p, _)| p == pid);
    }

    /// Feeds the background scanner's latest round of the largest stacks' bytes into the
    /// growth windows (only the top [`GROWTH_TRACKED_STACKS`] by bytes are tracked, so memory
    /// stays bounded however many stacks the node has).
    fn sample(&mut self) {
        self.log_new_losses();
        self.review_containers();
        self.sample_first_touch();
        self.review_budget();
        let Some(snapshot) = self.tracer.latest_scan() else {
            return;
        };
        if snapshot.taken_ns == 0 || snapshot.taken_ns <= self.last_sample_ns {
            return;
        }
        self.last_sample_ns = snapshot.taken_ns;
        let traced: HashSet<u32> = self.tracer.pids().into_iter().collect();
        let largest = snapshot
            .largest
            .iter()
            .copied()
            .filter(|((pid, _), _)| traced.contains(pid));
        self.growth.record(snapshot.taken_ns, largest);
    }

    /// Says in the log, at most once per sample interval, that reports have become incomplete
    /// (the API, metrics and tracerctl say it on every report).
    fn log_new_losses(&mut self) {
        let stats = self.tracer.stats();
        let lost = stats.allocations_lost();
        if lost > self.logged_lost {
            self.logged_lost = lost;
            if let Some(reason) = stats.incomplete_reason() {
                warn!(allocations_lost = lost, "reports are incomplete: {reason}");
            }
        }
    }

    fn start(&mut self, selector: &Selector) -> Result<Vec<TargetProcess>, AgentError> {
        let resolved = self.resolve_now(selector)?;
        match (&selector.target, &resolved.pod) {
            (Target::Pid(pid), _) => {
                self.plan.retry(*pid);
                if let Err(error) = self.tracer.trace(*pid) {
                    return Err(AgentError::CannotTrace(crate::error_chain(&error)));
                }
                self.plan.start_pid(*pid);
            }
            (_, Some(pod)) => {
                self.plan.start_pod(Explicit {
                    pod_uid: pod.uid.clone(),
                    container: selector.container.clone(),
                });
                let pids: Vec<u32> = resolved.containers.values().flatten().copied().collect();
                for &pid in &pids {
                    self.plan.retry(pid);
                }
                self.discover();
                // The caller asked for these: attached before the answer, here, so that the
                // answer says which are traced (the others are read in the background).
                for pid in pids {
                    if self.tracer.state(pid).is_none()
                        && self.plan.failure(pid).is_none()
                        && let Err(error) = self.tracer.trace(pid)
                    {
                        warn!(pid, %error, "cannot trace selected process");
                        self.plan.fail(pid, format!("{error:#}"));
                    }
                }
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
        let resolved = self.resolve_now(selector)?;
        if let (Some(pod), false) = (&resolved.pod, matches!(selector.target, Target::Pid(_))) {
            self.plan.stop_pod(Explicit {
                pod_uid: pod.uid.clone(),
                container: selector.container.clone(),
            });
        }
        let traced = self.traced();
        let mut stopped = Vec::new();
        for &pid in resolved.containers.values().flatten() {
            self.plan.forget_pid(pid);
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
            unwinding: self.tracer.unwinding(pid).to_vec(),
            not_traced_reason: if traced {
                None
            } else {
                self.plan.failure(pid).map(str::to_owned)
            },
            tracing_core_share: if traced {
                self.tracing_cost(pid).map(|c| c.core_share)
            } else {
                None
            },
            sample_bytes: self.tracer.sample_bytes_of(pid).unwrap_or(0),
            sampling_reason: if traced {
                self.budget.sampling_reason(pid).map(str::to_owned)
            } else {
                None
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
                    .map(|c| {
                        let (tracing, tracing_reason) = self.tracing_mode(pod, c);
                        ContainerTarget {
                            name: c.name.clone(),
                            id: c.id.clone(),
                            runtime: c.runtime.as_str().to_owned(),
                            memory: c.memory(),
                            processes: c.pids.iter().map(|&pid| self.target_process(pid)).collect(),
                            tracing,
                            tracing_reason,
                            trend: self.trends.trend(&c.id),
                        }
                    })
                    .collect();
                PodTarget {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    uid: pod.uid.clone(),
                    qos_class: pod.qos.as_str().to_owned(),
                    selected: pod.containers.values().any(|c| self.plan.selects(pod, c)),
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
