//! The tracing engine: attaches processes through the kernel side ([`Kernel`]), follows them
//! (exits, execs, new code) and keeps what is needed to report on them. This file is the
//! lifecycle; `queries` is the read side (reports, figures); the `trace` command and the node
//! agent drive both from one task.

mod profile;
mod queries;
#[cfg(test)]
pub(crate) mod tests;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use tracing::{debug, info, warn};

use crate::{
    attach::{
        self, AttachError, Attachment, ProgramSet, closer::LinkCloser, placement::PlacementMode,
    },
    bpf::{
        LoadOptions, MapSizes,
        kernel::{Kernel, KernelError, LoadedKernel},
        uprobes::UprobeLinks,
    },
    collect::{ages::OldestByStack, mappings::MappingTracker, oom::OomKill, scanner::Scanner},
    discover::{
        process::{self, Liveness},
        snapshot::ProcessSnapshot,
    },
    report::{ProcessState, assemble::RawStack},
    symbolize::Symbolizer,
    tracer::profile::ProfiledProcess,
    unwind::loader::{BinaryUnwinding, UnwindTables},
};

pub use profile::ProfileError;
pub use queries::ProbeHits;

/// Why the tracer could not start.
#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    /// Loading the BPF side or opening its maps failed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// A traced process and its stacks holding memory.
#[derive(Clone, Debug)]
pub struct ProcessStacks {
    /// Pid.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// Running or ended.
    pub state: ProcessState,
    /// Allocator library probed.
    pub allocator: String,
    /// How each of its binaries is unwound.
    pub unwinding: Vec<BinaryUnwinding>,
    /// Every stack holding memory.
    pub stacks: Vec<RawStack>,
}

/// Finds the allocator of a program that has just exec'd: its dynamic loader maps the C
/// library within a millisecond or two of the exec, so a few quick retries find it.
fn wait_for_allocator(
    pid: u32,
    catalog: &mut attach::ElfCatalog,
    placement: PlacementMode,
) -> Result<(ProcessSnapshot, attach::AllocatorLibrary), AttachError> {
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        let snapshot = ProcessSnapshot::read(pid)?;
        match attach::find_allocator(&snapshot, catalog, placement) {
            Err(AttachError::NoAllocator { .. }) if pause <= EXEC_WAIT_STEP_MAX => {
                std::thread::sleep(pause);
                pause *= 2;
            }
            result => return result.map(|library| (snapshot, library)),
        }
    }
}

/// Longest single wait for an exec'd program's allocator (1 + 2 + ... + 64 ms in all).
const EXEC_WAIT_STEP_MAX: std::time::Duration = std::time::Duration::from_millis(64);

/// How long a process that exec'd is retried before giving up on its new program.
const REATTACH_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How the tracer runs.
#[derive(Clone, Copy, Debug)]
pub struct TracerConfig {
    /// BPF map sizes.
    pub sizes: MapSizes,
    /// Where probes go in each function.
    pub placement: PlacementMode,
    /// Mean bytes between sampled allocations; 0 records every allocation (exact mode).
    pub sample_bytes: u64,
    /// Use uprobe sessions where the kernel has them.
    pub sessions: bool,
    /// How allocator probes are attached (uprobe_multi links where the kernel has them).
    pub uprobe_links: UprobeLinks,
    /// Load the page-fault growth profile's programs (the agent watches pods with them).
    pub fault_profile: bool,
    /// The growth profile records one new page in this many (a power of two; 1 records every
    /// page, exactly), weighting each by it.
    pub fault_sample_pages: u32,
}

impl Default for TracerConfig {
    fn default() -> Self {
        Self {
            sizes: MapSizes::default(),
            placement: PlacementMode::default(),
            sample_bytes: 0,
            sessions: true,
            uprobe_links: UprobeLinks::Auto,
            fault_profile: true,
            fault_sample_pages: crate::bpf::DEFAULT_FAULT_SAMPLE_PAGES,
        }
    }
}

/// Largest sampling mean accepted (the BPF side's fixed-point arithmetic relies on it).
pub const MAX_SAMPLE_BYTES: u64 = 1 << 40;

/// What a report should count.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReportOptions {
    /// Only allocations at least this old count (0: all).
    pub min_age_ns: u64,
}

/// What attaching a process needs read from /proc and its files: who it is, what it maps, and
/// where its allocator's functions are. Reading it is the slow, kernel-free half of an attach;
/// the agent does it on another thread ([`Prepared::read`]) and hands the result to
/// [`Tracer::trace_prepared`].
#[derive(Debug)]
pub struct Prepared {
    /// The one read of the process that attach, unwind and symbolize share.
    pub snapshot: ProcessSnapshot,
    /// Its allocator and the functions to probe.
    pub library: attach::AllocatorLibrary,
}

impl Prepared {
    /// Reads a process for attaching; refuses what cannot be traced.
    pub fn read(
        pid: u32,
        catalog: &mut attach::ElfCatalog,
        placement: PlacementMode,
    ) -> Result<Self, AttachError> {
        let snapshot = ProcessSnapshot::read(pid)?;
        attach::check_traceable(pid)?;
        let library = attach::find_allocator(&snapshot, catalog, placement)?;
        Ok(Self { snapshot, library })
    }
}

struct TracedProcess {
    /// What was read of it (identity, mappings, files); read again when its code changes.
    snapshot: ProcessSnapshot,
    attachment: Option<Attachment>,
    allocator: String,
    /// How each of its binaries is unwound.
    unwinding: Vec<BinaryUnwinding>,
    state: ProcessState,
    /// Mean bytes between sampled allocations (0: exact): `--sample-bytes`, or what the
    /// overhead budget switched it to.
    sample_bytes: u64,
}

/// The tracing engine.
pub struct Tracer {
    /// The kernel side: probes, records, the unwinder's maps (the one seam to BPF).
    kernel: Box<dyn Kernel>,
    /// Unwind tables and process mappings for stacks without frame pointers.
    unwind: UnwindTables,
    mappings: MappingTracker,
    symbolizer: Symbolizer,
    /// What each mapped ELF file defines, read once per file.
    catalog: attach::ElfCatalog,
    processes: BTreeMap<u32, TracedProcess>,
    /// Oldest allocation per stack, from the last full scan.
    ages: Arc<OldestByStack>,
    /// The node agent's background scans (ages, largest stacks).
    scanner: Option<Scanner>,
    /// OOM kills seen and not yet taken by the caller.
    oom_kills: Vec<OomKill>,
    placement: PlacementMode,
    sample_bytes: u64,
    /// The growth profile's sampling period in pages (1: every page).
    fault_sample_pages: u32,
    /// Processes that exec'd, waiting to be attached to their new program.
    reattach: HashMap<u32, std::time::Instant>,
    /// Traced pids named as OOM victims, so their end is reported as an OOM kill.
    oom_victims: HashSet<u32>,
    page_size: u64,
    sizes: MapSizes,
    /// Closes detached processes' links in the background.
    closer: LinkCloser,
    /// Processes untraced while alive whose records wait for their links to close.
    closing: HashSet<u32>,
    /// Processes whose page-fault stacks are made walkable and nameable (see `profile`).
    profiled: BTreeMap<u32, ProfiledProcess>,
    /// When the growth profile was last swept for ended processes nobody profiled.
    last_fault_sweep: std::time::Instant,
    /// When profiled processes were last checked (see `poll_profiled`).
    last_profiled_poll: std::time::Instant,
}

/// What the tracer holds now, for the agent's health metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct TracerHealth {
    /// Processes traced.
    pub processes: usize,
    /// Of those, processes with probes attached now (the others wait for a re-attach).
    pub attached: usize,
    /// Outstanding allocations in the kernel map at the last background scan.
    pub allocations: u64,
    /// Capacity of that map.
    pub allocation_slots: u64,
    /// Stack slots holding a stack.
    pub stacks: u64,
    /// Capacity of the per-stack totals.
    pub stack_slots: u64,
    /// The symbol cache.
    pub symbol_cache: crate::symbolize::CacheStats,
    /// Whether OOM kills are seen at the kernel hook.
    pub oom_hook_attached: bool,
}

impl Tracer {
    /// Loads and verifies the BPF programs (nothing is attached yet).
    pub fn new(config: &TracerConfig) -> Result<Self, TracerError> {
        let kernel = LoadedKernel::load(
            &config.sizes,
            &LoadOptions {
                sample_bytes: config.sample_bytes.min(MAX_SAMPLE_BYTES),
                sessions: config.sessions,
                uprobe_links: config.uprobe_links,
                fault_profile: config.fault_profile,
                fault_sample_pages: config.fault_sample_pages,
            },
        )?;
        Ok(Self::with_kernel(Box::new(kernel), config))
    }

    /// A tracer over any kernel side (the tests' in-memory one, for instance).
    pub fn with_kernel(kernel: Box<dyn Kernel>, config: &TracerConfig) -> Self {
        let unwind = UnwindTables::new(kernel.unwind_rows());
        Self {
            kernel,
            unwind,
            mappings: MappingTracker::default(),
            symbolizer: Symbolizer::new(),
            catalog: attach::ElfCatalog::default(),
            processes: BTreeMap::new(),
            ages: Arc::new(OldestByStack::default()),
            scanner: None,
            oom_kills: Vec::new(),
            oom_victims: HashSet::new(),
            reattach: HashMap::new(),
            page_size: crate::bpf::page_size(),
            placement: config.placement,
            sample_bytes: config.sample_bytes.min(MAX_SAMPLE_BYTES),
            fault_sample_pages: crate::bpf::fault_sample_period(config.fault_sample_pages),
            sizes: config.sizes,
            closer: LinkCloser::new(),
            closing: HashSet::new(),
            profiled: BTreeMap::new(),
            last_fault_sweep: std::time::Instant::now(),
            // Long enough ago that the first poll checks them.
            last_profiled_poll: std::time::Instant::now()
                .checked_sub(profile::PROFILED_POLL_INTERVAL)
                .unwrap_or_else(std::time::Instant::now),
        }
    }

    /// Starts tracing a process.
    pub fn trace(&mut self, pid: u32) -> Result<(), AttachError> {
        self.trace_with(pid, ProgramSet::Tracing)
    }

    /// Attaches a process with the given programs (the empty ones only for benchmarks).
    pub fn trace_with(&mut self, pid: u32, programs: ProgramSet) -> Result<(), AttachError> {
        if self.is_running(pid) {
            return Ok(());
        }
        let prepared = Prepared::read(pid, &mut self.catalog, self.placement)?;
        self.attach(prepared, programs)
    }

    /// Starts tracing a process read elsewhere (the agent reads processes on another thread,
    /// see [`Prepared`]). A process that ended or exec'd since is read again here.
    pub fn trace_prepared(&mut self, prepared: Prepared) -> Result<(), AttachError> {
        let pid = prepared.snapshot.pid();
        if self.is_running(pid) {
            return Ok(());
        }
        let prepared = match process::liveness(&prepared.snapshot.info) {
            Liveness::Alive => prepared,
            Liveness::Gone | Liveness::Execed => {
                Prepared::read(pid, &mut self.catalog, self.placement)?
            }
        };
        self.attach(prepared, ProgramSet::Tracing)
    }

    fn is_running(&self, pid: u32) -> bool {
        self.processes
            .get(&pid)
            .is_some_and(|p| p.state == ProcessState::Running)
    }

    /// The kernel half of attaching: symbols, unwind tables, probes.
    fn attach(&mut self, prepared: Prepared, programs: ProgramSet) -> Result<(), AttachError> {
        let Prepared { snapshot, library } = prepared;
        let pid = snapshot.pid();
        if self.closer.is_closing(pid) {
            // Traced again right after being untraced: the old links must be gone first, or
            // both sets would record the same calls.
            self.closer.wait_for(pid);
        }
        self.forget_closed();
        let allocator = library.path.clone();
        self.symbolizer.update(&snapshot);
        // Before the probes: the first allocation's stack already needs the tables.
        let unwinding = self.unwind.add_process(&snapshot, self.kernel.as_mut());
        for binary in &unwinding {
            debug!(pid, binary = %binary.binary, method = %binary.method, rows = binary.rows, note = ?binary.note, "unwinding");
        }
        let attachment = match self.kernel.attach(pid, library, programs) {
            Ok(attachment) => attachment,
            Err(failure) => {
                self.close_failed(pid, failure.links);
                return Err(failure.error);
            }
        };
        info!(pid, comm = %snapshot.info.comm, allocator = %allocator, "tracing");
        let _ = self.processes.insert(
            pid,
            TracedProcess {
                snapshot,
                attachment: Some(attachment),
                allocator,
                unwinding,
                state: ProcessState::Running,
                sample_bytes: self.sample_bytes,
            },
        );
        Ok(())
    }

    /// Stops tracing a process. Its links close in the background; its records go once they
    /// are closed (see [`Tracer::poll`]).
    pub fn untrace(&mut self, pid: u32) {
        if let Some(mut traced) = self.processes.remove(&pid) {
            match traced.attachment.take() {
                Some(attachment) => {
                    let links = self.kernel.detach(attachment);
                    self.closer.close(pid, links);
                    let _ = self.closing.insert(pid);
                }
                None => self.drop_records(pid),
            }
        }
    }

    /// Stops tracing a process now: links closed and records dropped before returning.
    fn untrace_now(&mut self, pid: u32) {
        if let Some(mut traced) = self.processes.remove(&pid) {
            if let Some(attachment) = traced.attachment.take() {
                drop(self.kernel.detach(attachment));
            }
            self.drop_records(pid);
        }
    }

    /// Closes the links of a failed attach in the background: the process was never armed, so
    /// they recorded nothing, and closing them takes the kernel up to hundreds of milliseconds
    /// while processes come and go (the agent's thread would wait). What else the attach wrote
    /// (unwind mappings, symbols) goes once they are closed, as for an untraced process.
    fn close_failed(&mut self, pid: u32, links: crate::attach::closer::DetachedLinks) {
        self.closer.close(pid, links);
        let _ = self.closing.insert(pid);
    }

    /// Drops the records of untraced processes whose links are now closed.
    fn forget_closed(&mut self) {
        let closed: Vec<u32> = self
            .closer
            .take_closed()
            .into_iter()
            .filter(|pid| self.closing.remove(pid) && !self.processes.contains_key(pid))
            .collect();
        self.drop_records_of(&closed);
    }

    /// Applies pending mmap records, notices exited processes (detaching them; their records
    /// stay until [`Tracer::reap_ended`]) and refreshes module snapshots of the live ones.
    pub fn poll(&mut self) {
        self.kernel.flush_log();
        self.drain_events();
        self.forget_closed();
        let pids: Vec<u32> = self.processes.keys().copied().collect();
        for pid in pids {
            let Some(traced) = self.processes.get_mut(&pid) else {
                continue;
            };
            if traced.state.has_ended() {
                continue;
            }
            match process::liveness(&traced.snapshot.info) {
                Liveness::Alive => {
                    // New code mapped (dlopen): its frames need its unwind table too. One read
                    // of its maps per poll, compared with the last.
                    if let Some(snapshot) = traced.snapshot.changed() {
                        self.symbolizer.update(&snapshot);
                        if traced.attachment.is_some() {
                            traced.unwinding =
                                self.unwind.add_process(&snapshot, self.kernel.as_mut());
                        }
                        traced.snapshot = snapshot;
                    }
                }
                Liveness::Gone => {
                    info!(pid, comm = %traced.snapshot.info.comm, "process ended");
                    traced.state = if self.oom_victims.contains(&pid) {
                        ProcessState::OomKilled
                    } else {
                        ProcessState::Ended
                    };
                    // No probe can fire for a process that has gone: close in the background.
                    if let Some(attachment) = traced.attachment.take() {
                        let links = self.kernel.detach(attachment);
                        self.closer.close(pid, links);
                    }
                }
                Liveness::Execed => {
                    // The old program's memory went with its address space: start afresh on
                    // whatever allocator the new program uses (retried while its dynamic
                    // loader is still mapping libraries).
                    info!(pid, old = %traced.snapshot.info.comm, "process exec'd another program; re-attaching");
                    // At once: the new program may map the same library, where the old links
                    // would still fire.
                    self.untrace_now(pid);
                    let _ = self.reattach.insert(pid, std::time::Instant::now());
                }
            }
        }
        self.retry_reattach();
        self.poll_profiled();
        self.drain_events();
    }

    /// Tries again to attach processes that exec'd, until their new program maps an allocator
    /// or the grace period ends.
    fn retry_reattach(&mut self) {
        let pending: Vec<(u32, std::time::Instant)> =
            self.reattach.iter().map(|(&p, &t)| (p, t)).collect();
        for (pid, since) in pending {
            match self.trace(pid) {
                Ok(()) => {
                    let _ = self.reattach.remove(&pid);
                }
                Err(error) if since.elapsed() > REATTACH_GRACE => {
                    warn!(pid, %error, "cannot trace the program it exec'd");
                    let _ = self.reattach.remove(&pid);
                }
                Err(_) => {}
            }
        }
    }

    /// Reads the ring buffer (mmap records, OOM kills, execs) without checking processes: cheap
    /// enough to call whenever an OOM kill may just have happened.
    pub fn drain_events(&mut self) {
        let notices = self.kernel.drain_events(&mut self.mappings, self.page_size);
        for kill in &notices.oom_kills {
            // Only the agent's evidence cares about kills of processes this tracer does not
            // trace.
            let traced = kill
                .victim_pid
                .is_some_and(|pid| self.processes.contains_key(&pid));
            if traced {
                warn!(victim = ?kill.victim_pid, victim_comm = %kill.victim_comm, trigger = kill.trigger_pid, "OOM kill");
            } else {
                debug!(victim = ?kill.victim_pid, victim_comm = %kill.victim_comm, trigger = kill.trigger_pid, "OOM kill");
            }
        }
        self.oom_victims.extend(
            notices
                .oom_kills
                .iter()
                .filter_map(|k| k.victim_pid)
                .filter(|pid| self.processes.contains_key(pid)),
        );
        self.oom_kills.extend(notices.oom_kills);
        for pid in notices.execs {
            self.follow_exec(pid);
        }
    }

    /// Follows a traced process into the program it exec'd, at once (the kernel hook already
    /// stopped its recording): its old records go (the old address space went with them), and
    /// it is armed again on the new program's allocator, keeping its probes when they serve the
    /// new program as they are (the same allocator file), so the process never leaves reports.
    fn follow_exec(&mut self, pid: u32) {
        let Some(traced) = self.processes.get(&pid) else {
            return;
        };
        if traced.attachment.is_none() || traced.state.has_ended() {
            return;
        }
        let seen = std::time::Instant::now();
        let old_comm = traced.snapshot.info.comm.clone();
        self.drop_records(pid);
        let (snapshot, library) = match wait_for_allocator(pid, &mut self.catalog, self.placement) {
            Ok(found) => found,
            Err(error) => {
                // Not mapped yet (or not traceable): the poll path retries for a while.
                debug!(pid, %error, "the exec'd program maps no allocator yet");
                self.untrace_now(pid);
                let _ = self.reattach.insert(pid, seen);
                return;
            }
        };
        self.symbolizer.update(&snapshot);
        let unwinding = self.unwind.add_process(&snapshot, self.kernel.as_mut());
        let Some(traced) = self.processes.get_mut(&pid) else {
            return;
        };
        traced.snapshot = snapshot;
        traced.unwinding = unwinding;
        traced.allocator = library.path.clone();
        // A new program starts at `--sample-bytes`: the budget prices it afresh.
        traced.sample_bytes = self.sample_bytes;
        let Some(mut attachment) = traced.attachment.take() else {
            return;
        };
        let kept = attachment.library.same_probes(&library);
        let result = if kept {
            self.kernel
                .rearm(&mut attachment, library)
                .map(|()| attachment)
        } else {
            let links = self.kernel.detach(attachment);
            self.closer.close(pid, links);
            // A failure's links close in the background too (never armed: they recorded
            // nothing); `untrace_now` below drops the records.
            self.kernel
                .attach(pid, library, ProgramSet::Tracing)
                .map_err(|failure| {
                    self.closer.close(pid, failure.links);
                    failure.error
                })
        };
        let comm = traced.snapshot.info.comm.clone();
        match result {
            Ok(attachment) => {
                traced.attachment = Some(attachment);
                info!(
                    pid,
                    old = %old_comm,
                    new = %comm,
                    probes_kept = kept,
                    rearmed_after_ms = seen.elapsed().as_secs_f64() * 1e3,
                    "followed exec"
                );
            }
            Err(error) => {
                warn!(pid, %error, "cannot trace the program it exec'd");
                self.untrace_now(pid);
            }
        }
    }

    /// Drops the records of every ended process; returns the traced ones' pids. Ended
    /// profiled processes and their growth-profile entries go too (see `profile`).
    pub fn reap_ended(&mut self) -> Vec<u32> {
        let ended: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, p)| p.state.has_ended())
            .map(|(&pid, _)| pid)
            .collect();
        for &pid in &ended {
            let _ = self.oom_victims.remove(&pid);
            let _ = self.processes.remove(&pid);
        }
        let _ = self.reap_profiled(&ended);
        self.drop_records_of(&ended);
        ended
    }

    fn drop_records(&mut self, pid: u32) {
        self.drop_records_of(&[pid]);
    }

    /// Drops several processes' records in one pass over the maps.
    fn drop_records_of(&mut self, pids: &[u32]) {
        if pids.is_empty() {
            return;
        }
        let set: HashSet<u32> = pids.iter().copied().collect();
        if let Err(error) = self.kernel.forget_processes(&set) {
            warn!(?pids, %error, "failed to drop the records of ended processes");
        }
        for &pid in pids {
            self.mappings.forget(pid);
            // A profiled process keeps what makes its fault stacks walkable and nameable.
            if self
                .profiled
                .get(&pid)
                .is_some_and(|p| p.state == ProcessState::Running)
            {
                continue;
            }
            self.symbolizer.forget(pid);
            self.unwind.remove_process(pid, self.kernel.as_mut());
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let pids: Vec<u32> = self.processes.keys().copied().collect();
        for pid in pids {
            if let Some(attachment) = self
                .processes
                .get_mut(&pid)
                .and_then(|p| p.attachment.take())
            {
                drop(self.kernel.detach(attachment));
            }
        }
    }
}

fn oldest_age(oldest_ns: u64, now_ns: u64) -> u64 {
    if oldest_ns == u64::MAX {
        0
    } else {
        now_ns.saturating_sub(oldest_ns)
    }
}
