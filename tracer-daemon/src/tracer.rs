//! The tracing engine: loads the probes, attaches processes, and builds per-process leak
//! reports from what the kernel side recorded. Owned by one task; the `trace` command and the
//! node agent drive it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use tracer_common::UNKNOWN_STACK_ID;
use tracing::{debug, info, warn};

use crate::{
    attach::{
        self, AttachError, Attachment, ProgramSet, closer::LinkCloser, placement::PlacementMode,
    },
    bpf::{LoadError, MapSizes, Probes},
    collect::{
        self, BpfMaps, CollectError,
        ages::{self, OldestByStack},
        mappings::MappingTracker,
        oom::OomKill,
        scanner::{Scanner, Snapshot},
        stats::BpfStats,
    },
    discover::process::{self, Liveness, ProcessInfo},
    report::{self, MemoryKind, ProcessReport, ProcessState, StackReport},
    symbolize::{Frame, Symbolizer},
    unwind::loader::{BinaryUnwinding, MissingMap, UnwindTables},
};

/// Why the tracer could not start.
#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    /// Loading the BPF side failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The maps could not be opened.
    #[error(transparent)]
    Collect(#[from] CollectError),
    /// The unwinder's maps could not be opened.
    #[error(transparent)]
    Unwind(#[from] MissingMap),
}

/// One stack's numbers before symbolization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawStack {
    /// The process.
    pub pid: u32,
    /// Stack id.
    pub stack_id: u64,
    /// Heap or mmap.
    pub kind: MemoryKind,
    /// Outstanding bytes (estimated in sampled mode).
    pub bytes: u64,
    /// Outstanding allocations (estimated in sampled mode).
    pub count: u64,
    /// Age of the oldest outstanding allocation, ns; `None` until looked up (see
    /// [`Tracer::symbolize_stacks`]).
    pub oldest_age_ns: Option<u64>,
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

/// Keeps the `n` stacks with the most bytes (ties by id), in that order; O(stacks).
pub fn keep_largest(stacks: &mut Vec<RawStack>, n: usize) {
    let order =
        |a: &RawStack, b: &RawStack| b.bytes.cmp(&a.bytes).then(a.stack_id.cmp(&b.stack_id));
    if stacks.len() > n {
        let _ = stacks.select_nth_unstable_by(n, order);
        stacks.truncate(n);
    }
    stacks.sort_unstable_by(order);
}

/// Stacks symbolized for a report of `top`: a margin for stacks that merge at one call site.
pub fn candidates(top: usize) -> usize {
    top.saturating_mul(4).saturating_add(16)
}

/// Finds the allocator of a program that has just exec'd: its dynamic loader maps the C
/// library within a millisecond or two of the exec, so a few quick retries find it.
fn wait_for_allocator(
    pid: u32,
    placement: PlacementMode,
) -> Result<attach::AllocatorLibrary, AttachError> {
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match attach::find_allocator(pid, placement) {
            Err(AttachError::NoAllocator { .. }) if pause <= EXEC_WAIT_STEP_MAX => {
                std::thread::sleep(pause);
                pause *= 2;
            }
            result => return result,
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
}

impl Default for TracerConfig {
    fn default() -> Self {
        Self {
            sizes: MapSizes::default(),
            placement: PlacementMode::default(),
            sample_bytes: 0,
            sessions: true,
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

struct TracedProcess {
    info: ProcessInfo,
    attachment: Option<Attachment>,
    allocator: String,
    /// How each of its binaries is unwound.
    unwinding: Vec<BinaryUnwinding>,
    state: ProcessState,
}

/// The tracing engine.
pub struct Tracer {
    probes: Probes,
    maps: BpfMaps,
    /// Unwind tables and process mappings for stacks without frame pointers.
    unwind: UnwindTables,
    mappings: MappingTracker,
    symbolizer: Symbolizer,
    processes: BTreeMap<u32, TracedProcess>,
    /// Oldest allocation per stack, from the last full scan.
    ages: Arc<OldestByStack>,
    /// The node agent's background scans (ages, largest stacks).
    scanner: Option<Scanner>,
    /// OOM kills seen and not yet taken by the caller.
    oom_kills: Vec<OomKill>,
    placement: PlacementMode,
    sample_bytes: u64,
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
        let mut probes = Probes::load(
            &config.sizes,
            config.sample_bytes.min(MAX_SAMPLE_BYTES),
            config.sessions,
        )?;
        let maps = BpfMaps::take(&mut probes)?;
        let unwind = UnwindTables::take(&mut probes)?;
        Ok(Self {
            probes,
            maps,
            unwind,
            mappings: MappingTracker::default(),
            symbolizer: Symbolizer::new(),
            processes: BTreeMap::new(),
            ages: Arc::new(OldestByStack::default()),
            scanner: None,
            oom_kills: Vec::new(),
            oom_victims: HashSet::new(),
            reattach: HashMap::new(),
            page_size: crate::bpf::page_size(),
            placement: config.placement,
            sample_bytes: config.sample_bytes.min(MAX_SAMPLE_BYTES),
            sizes: config.sizes,
            closer: LinkCloser::new(),
            closing: HashSet::new(),
        })
    }

    /// Figures for health metrics (O(stack slots), no syscall).
    pub fn health(&self) -> TracerHealth {
        let mut stacks = 0u64;
        self.maps.for_each_total(|_, _| stacks += 1);
        TracerHealth {
            processes: self.processes.len(),
            attached: self
                .processes
                .values()
                .filter(|p| p.attachment.is_some())
                .count(),
            allocations: self.latest_scan().map_or(0, |s| s.allocations),
            allocation_slots: u64::from(self.sizes.allocations),
            stacks,
            stack_slots: u64::from(self.sizes.stack_totals),
            symbol_cache: self.symbolizer.cache_stats(),
            oom_hook_attached: matches!(self.probes.oom_hook, crate::bpf::OomHook::Attached),
        }
    }

    /// Starts tracing a process.
    pub fn trace(&mut self, pid: u32) -> Result<(), AttachError> {
        self.trace_with(pid, ProgramSet::Tracing)
    }

    /// Attaches a process with the given programs (the empty ones only for benchmarks).
    pub fn trace_with(&mut self, pid: u32, programs: ProgramSet) -> Result<(), AttachError> {
        if self
            .processes
            .get(&pid)
            .is_some_and(|p| p.state == ProcessState::Running)
        {
            return Ok(());
        }
        if self.closer.is_closing(pid) {
            // Traced again right after being untraced: the old links must be gone first, or
            // both sets would record the same calls.
            self.closer.wait_for(pid);
        }
        self.forget_closed();
        let info = process::inspect(pid)?;
        attach::check_traceable(pid)?;
        let library = attach::find_allocator(pid, self.placement)?;
        let allocator = library.path.clone();
        let _ = self.symbolizer.refresh(pid);
        // Before the probes: the first allocation's stack already needs the tables.
        let unwinding = self.unwind.add_process(pid);
        for binary in &unwinding {
            debug!(pid, binary = %binary.binary, method = %binary.method, rows = binary.rows, note = ?binary.note, "unwinding");
        }
        let attachment = match attach::attach(&mut self.probes, pid, library, programs) {
            Ok(attachment) => attachment,
            Err(error) => {
                // Probes attached before the failure may have recorded allocations.
                self.drop_records(pid);
                return Err(error);
            }
        };
        info!(pid, comm = %info.comm, allocator = %allocator, "tracing");
        let _ = self.processes.insert(
            pid,
            TracedProcess {
                info,
                attachment: Some(attachment),
                allocator,
                unwinding,
                state: ProcessState::Running,
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
                    let links = attach::detach(&mut self.probes, attachment);
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
                drop(attach::detach(&mut self.probes, attachment));
            }
            self.drop_records(pid);
        }
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
        self.probes.flush_log();
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
            match process::liveness(&traced.info) {
                Liveness::Alive => {
                    // New code mapped (dlopen): its frames need its unwind table too.
                    if self.symbolizer.refresh(pid) && traced.attachment.is_some() {
                        traced.unwinding = self.unwind.add_process(pid);
                    }
                }
                Liveness::Gone => {
                    info!(pid, comm = %traced.info.comm, "process ended");
                    traced.state = if self.oom_victims.contains(&pid) {
                        ProcessState::OomKilled
                    } else {
                        ProcessState::Ended
                    };
                    // No probe can fire for a process that has gone: close in the background.
                    if let Some(attachment) = traced.attachment.take() {
                        let links = attach::detach(&mut self.probes, attachment);
                        self.closer.close(pid, links);
                    }
                }
                Liveness::Execed => {
                    // The old program's memory went with its address space: start afresh on
                    // whatever allocator the new program uses (retried while its dynamic
                    // loader is still mapping libraries).
                    info!(pid, old = %traced.info.comm, "process exec'd another program; re-attaching");
                    // At once: the new program may map the same library, where the old links
                    // would still fire.
                    self.untrace_now(pid);
                    let _ = self.reattach.insert(pid, std::time::Instant::now());
                }
            }
        }
        self.retry_reattach();
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
        let notices = self.maps.drain_events(&mut self.mappings, self.page_size);
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
        let old_comm = traced.info.comm.clone();
        self.drop_records(pid);
        let library = match wait_for_allocator(pid, self.placement) {
            Ok(library) => library,
            Err(error) => {
                // Not mapped yet (or not traceable): the poll path retries for a while.
                debug!(pid, %error, "the exec'd program maps no allocator yet");
                self.untrace_now(pid);
                let _ = self.reattach.insert(pid, seen);
                return;
            }
        };
        let info = match process::inspect(pid) {
            Ok(info) => info,
            Err(_) => return,
        };
        let _ = self.symbolizer.refresh(pid);
        let unwinding = self.unwind.add_process(pid);
        let Some(traced) = self.processes.get_mut(&pid) else {
            return;
        };
        traced.info = info;
        traced.unwinding = unwinding;
        traced.allocator = library.path.clone();
        let Some(mut attachment) = traced.attachment.take() else {
            return;
        };
        let kept = attachment.library.same_probes(&library);
        let result = if kept {
            attach::rearm(&mut self.probes, &mut attachment, library)
                .map(|()| attachment)
                .map_err(|source| AttachError::Arm {
                    pid,
                    source: Box::new(source),
                })
        } else {
            let links = attach::detach(&mut self.probes, attachment);
            self.closer.close(pid, links);
            attach::attach(&mut self.probes, pid, library, ProgramSet::Tracing)
        };
        let comm = traced.info.comm.clone();
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

    /// A descriptor that becomes readable when the kernel side has records waiting (mmap
    /// records, OOM kills): event loops wait on it to react at once.
    pub fn events_fd(&self) -> std::os::fd::RawFd {
        self.maps.events_fd()
    }

    /// The OOM kills seen since the last call (the victim's records are still here: they go
    /// only with [`Tracer::reap_ended`]).
    pub fn take_oom_kills(&mut self) -> Vec<OomKill> {
        std::mem::take(&mut self.oom_kills)
    }

    /// Whether OOM kills are seen at the kernel hook.
    pub fn oom_hook(&self) -> &crate::bpf::OomHook {
        &self.probes.oom_hook
    }

    /// Drops the records of every ended process; returns their pids.
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
        self.drop_records_of(&ended);
        ended
    }

    /// True when nothing is traced or every traced process has ended.
    pub fn all_ended(&self) -> bool {
        self.reattach.is_empty() && self.processes.values().all(|p| p.state.has_ended())
    }

    /// Pids traced (running, or ended and not yet reaped).
    pub fn pids(&self) -> Vec<u32> {
        self.processes.keys().copied().collect()
    }

    /// Running or ended, for a traced pid.
    pub fn state(&self, pid: u32) -> Option<ProcessState> {
        self.processes.get(&pid).map(|p| p.state)
    }

    /// How stacks are unwound through each executable file of a traced process.
    pub fn unwinding(&self, pid: u32) -> &[BinaryUnwinding] {
        self.processes
            .get(&pid)
            .map_or(&[], |p| p.unwinding.as_slice())
    }

    /// The allocator library probed in a traced process.
    pub fn allocator(&self, pid: u32) -> Option<&str> {
        self.processes.get(&pid).map(|p| p.allocator.as_str())
    }

    /// Mean bytes between samples (0: exact mode, every allocation recorded).
    pub fn sample_bytes(&self) -> u64 {
        self.sample_bytes
    }

    /// The BPF programs' counters.
    pub fn stats(&self) -> BpfStats {
        self.maps.stats()
    }

    /// Rescans every outstanding allocation for ages (O(allocations)); reports without a minimum
    /// age use the result until the next scan. With a background scanner, takes its latest.
    pub fn refresh_ages(&mut self) -> Result<(), CollectError> {
        if let Some(scanner) = &self.scanner {
            self.ages = Arc::clone(&scanner.latest().oldest);
            return Ok(());
        }
        let ages = ages::oldest(self.maps.allocs_fd()).map_err(|source| CollectError::Read {
            name: tracer_common::names::ALLOCS,
            source,
        })?;
        self.ages = Arc::new(ages);
        Ok(())
    }

    /// Moves the periodic scans (ages of every allocation, the largest stacks for growth) to a
    /// thread of their own, every `interval` (for the node agent: queries never wait for them).
    pub fn start_scanner(
        &mut self,
        interval: std::time::Duration,
        keep_largest: usize,
    ) -> std::io::Result<()> {
        let allocs = self.maps.allocs_fd().try_clone_to_owned()?;
        let totals = self.maps.stack_table();
        self.scanner = Some(Scanner::spawn(allocs, totals, interval, keep_largest)?);
        Ok(())
    }

    /// The last background scan (`None` without a scanner).
    pub fn latest_scan(&self) -> Option<Arc<Snapshot>> {
        self.scanner.as_ref().map(Scanner::latest)
    }

    /// Every stack holding memory in these traced processes (unknown pids are skipped), with
    /// bytes, counts and ages, not yet symbolized. Bytes and counts come from the kernel's
    /// per-stack totals, streamed (O(stacks), nothing kept for other processes); with a minimum
    /// age, from a scan of the allocations instead.
    pub fn process_stacks(
        &mut self,
        pids: &[u32],
        options: &ReportOptions,
    ) -> Result<Vec<ProcessStacks>, CollectError> {
        let pids: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| self.processes.contains_key(p))
            .collect();
        let wanted: HashSet<u32> = pids.iter().copied().collect();
        let now_ns = collect::monotonic_now_ns();
        let aged = if options.min_age_ns > 0 {
            let scan = ages::scan(
                self.maps.allocs_fd(),
                Some(&wanted),
                now_ns,
                options.min_age_ns,
                self.sample_bytes,
            )
            .map_err(|source| CollectError::Read {
                name: tracer_common::names::ALLOCS,
                source,
            })?;
            Some(scan)
        } else {
            None
        };
        // Counts are kept in thousandths in sampled mode.
        let scale = if self.sample_bytes > 0 {
            tracer_common::SAMPLED_COUNT_SCALE
        } else {
            1
        };
        // This loop runs once per stack on the node: one process is the common case, so it
        // avoids hashing for it; ages are looked up later, for the stacks a report shows.
        let single = (pids.len() == 1).then(|| pids[0]);
        let mut by_pid: HashMap<u32, Vec<RawStack>> = HashMap::new();
        let mut only: Vec<RawStack> = Vec::new();
        self.maps.for_each_total(|key, totals| {
            let wanted_here = match single {
                Some(pid) => key.tgid == pid,
                None => wanted.contains(&key.tgid),
            };
            if !wanted_here {
                return;
            }
            let (bytes, count, oldest_age_ns) = match &aged {
                Some(aged) => {
                    let Some(age) = aged.get(&key) else { return };
                    (
                        age.aged_bytes.round() as u64,
                        age.aged_count.round() as u64,
                        Some(oldest_age(age.oldest_ns, now_ns)),
                    )
                }
                None => (
                    totals.outstanding_bytes,
                    (totals.outstanding_count + scale / 2) / scale,
                    None,
                ),
            };
            if bytes == 0 && count == 0 {
                return;
            }
            let raw = RawStack {
                pid: key.tgid,
                stack_id: key.stack_id,
                kind: MemoryKind::Heap,
                bytes,
                count,
                oldest_age_ns,
            };
            match single {
                Some(_) => only.push(raw),
                None => by_pid.entry(key.tgid).or_default().push(raw),
            }
        });
        if let Some(pid) = single {
            let _ = by_pid.insert(pid, only);
        }
        let mut out = Vec::with_capacity(pids.len());
        for pid in pids {
            let mut stacks = by_pid.remove(&pid).unwrap_or_default();
            for (stack_id, mapped) in self.mappings.per_stack(pid) {
                let oldest_age_ns = oldest_age(mapped.oldest_ns, now_ns);
                if options.min_age_ns > 0 && oldest_age_ns < options.min_age_ns {
                    continue;
                }
                stacks.push(RawStack {
                    pid,
                    stack_id,
                    kind: MemoryKind::Mmap,
                    bytes: mapped.bytes,
                    count: mapped.count,
                    oldest_age_ns: Some(oldest_age_ns),
                });
            }
            let Some(traced) = self.processes.get(&pid) else {
                continue;
            };
            out.push(ProcessStacks {
                pid,
                comm: traced.info.comm.clone(),
                state: traced.state,
                allocator: traced.allocator.clone(),
                unwinding: traced.unwinding.clone(),
                stacks,
            });
        }
        Ok(out)
    }

    /// Symbolizes stacks and merges those at the same call site (see
    /// [`report::merge_same_call_sites`]). Only call this on the stacks a report shows: it is
    /// the expensive step, and its cache is bounded.
    pub fn symbolize_stacks(&mut self, stacks: &[RawStack]) -> Vec<StackReport> {
        if let Some(scanner) = &self.scanner {
            let snapshot = scanner.latest();
            return self.symbolize_with_ages(stacks, &snapshot.oldest);
        }
        let ages = Arc::clone(&self.ages);
        self.symbolize_with_ages(stacks, &ages)
    }

    fn symbolize_with_ages(
        &mut self,
        stacks: &[RawStack],
        oldest: &OldestByStack,
    ) -> Vec<StackReport> {
        let now_ns = collect::monotonic_now_ns();
        let reports: Vec<StackReport> = stacks
            .iter()
            .map(|raw| StackReport {
                stack_id: format!("{:016x}", raw.stack_id),
                pid: raw.pid,
                kind: raw.kind,
                bytes: raw.bytes,
                count: raw.count,
                oldest_age_ns: raw.oldest_age_ns.unwrap_or_else(|| {
                    let key = tracer_common::StackKey {
                        tgid: raw.pid,
                        _pad: 0,
                        stack_id: raw.stack_id,
                    };
                    oldest_age(oldest.get(&key).copied().unwrap_or(u64::MAX), now_ns)
                }),
                growth_bytes: 0,
                growth: None,
                frames: self.frames(raw.pid, raw.stack_id),
                members: vec![raw.stack_id],
            })
            .collect();
        report::merge_same_call_sites(reports)
    }

    /// Per-process reports with the top stacks by bytes symbolized (a few more than `top`, so
    /// stacks at one call site can merge before the cut), unranked.
    pub fn process_reports(
        &mut self,
        pids: &[u32],
        options: &ReportOptions,
        top: usize,
    ) -> Result<Vec<ProcessReport>, CollectError> {
        let processes = self.process_stacks(pids, options)?;
        let mut reports = Vec::with_capacity(processes.len());
        for mut process in processes {
            let outstanding_bytes = process.stacks.iter().map(|s| s.bytes).sum();
            let outstanding_count = process.stacks.iter().map(|s| s.count).sum();
            let stacks_total = process.stacks.len();
            keep_largest(&mut process.stacks, candidates(top));
            let stacks = self.symbolize_stacks(&process.stacks);
            reports.push(ProcessReport {
                pid: process.pid,
                comm: process.comm,
                state: process.state,
                allocator: process.allocator,
                unwinding: process.unwinding,
                outstanding_bytes,
                outstanding_count,
                growth_bytes: 0,
                stacks_total,
                stacks,
            });
        }
        Ok(reports)
    }

    fn frames(&mut self, pid: u32, stack_id: u64) -> Arc<[Frame]> {
        if stack_id == UNKNOWN_STACK_ID {
            return Arc::from(Vec::new());
        }
        let addrs = self.maps.stack_frames(stack_id).unwrap_or_default();
        self.symbolizer.symbolize(pid, stack_id, &addrs)
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
        if let Err(error) = self.maps.forget_processes(&set) {
            warn!(?pids, %error, "failed to drop the records of ended processes");
        }
        for &pid in pids {
            self.mappings.forget(pid);
            self.symbolizer.forget(pid);
            self.unwind.remove_process(pid);
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
                drop(attach::detach(&mut self.probes, attachment));
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
