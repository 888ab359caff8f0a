//! The tracing engine: loads the probes, attaches processes, and builds leak reports from
//! what the kernel side recorded. Owned by one task; the CLI and the node agent drive it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use tracer_common::{StackKey, UNKNOWN_STACK_ID};
use tracing::{info, warn};

use crate::{
    attach::{self, AttachError, Attachment, ProgramSet},
    bpf::{LoadError, MapSizes, Probes},
    collect::{self, BpfMaps, CollectError, mappings::MappingTracker},
    discover::process::{self, ProcessInfo},
    report::{self, MemoryKind, ProcessReport, ProcessState, Report, StackReport},
    symbolize::{Frame, Symbolizer},
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
}

/// What a report should contain.
#[derive(Clone, Copy, Debug)]
pub struct ReportOptions {
    /// Stacks per process.
    pub top: usize,
    /// Only allocations at least this old count (0: all).
    pub min_age_ns: u64,
}

struct TracedProcess {
    info: ProcessInfo,
    attachment: Option<Attachment>,
    allocator: String,
    state: ProcessState,
}

/// The tracing engine.
pub struct Tracer {
    probes: Probes,
    maps: BpfMaps,
    mappings: MappingTracker,
    symbolizer: Symbolizer,
    processes: BTreeMap<u32, TracedProcess>,
    previous_bytes: HashMap<(u32, u64), u64>,
    previous_process_bytes: HashMap<u32, u64>,
    sequence: u64,
}

impl Tracer {
    /// Loads and verifies the BPF programs (nothing is attached yet).
    pub fn new(sizes: &MapSizes) -> Result<Self, TracerError> {
        let mut probes = Probes::load(sizes)?;
        let maps = BpfMaps::take(&mut probes)?;
        Ok(Self {
            probes,
            maps,
            mappings: MappingTracker::default(),
            symbolizer: Symbolizer::new(),
            processes: BTreeMap::new(),
            previous_bytes: HashMap::new(),
            previous_process_bytes: HashMap::new(),
            sequence: 0,
        })
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
        let info = process::inspect(pid)?;
        let library = attach::find_allocator(pid)?;
        let allocator = library.path.clone();
        self.symbolizer.refresh(pid);
        let attachment = attach::attach(&mut self.probes, pid, library, programs)?;
        info!(pid, comm = %info.comm, allocator = %allocator, "tracing");
        let _ = self.processes.insert(
            pid,
            TracedProcess {
                info,
                attachment: Some(attachment),
                allocator,
                state: ProcessState::Running,
            },
        );
        Ok(())
    }

    /// Stops tracing a process and drops its records.
    pub fn untrace(&mut self, pid: u32) {
        if let Some(mut traced) = self.processes.remove(&pid) {
            if let Some(attachment) = traced.attachment.take() {
                attach::detach(&mut self.probes, attachment);
            }
            self.drop_records(pid);
        }
    }

    /// Applies pending mmap records, notices exited processes (detaching them; their data stays
    /// for one last report) and refreshes module snapshots of the live ones.
    pub fn poll(&mut self) {
        self.probes.flush_log();
        let _ = self.maps.drain_events(&mut self.mappings);
        let pids: Vec<u32> = self.processes.keys().copied().collect();
        for pid in pids {
            let Some(traced) = self.processes.get_mut(&pid) else {
                continue;
            };
            if traced.state == ProcessState::Ended {
                continue;
            }
            if process::is_alive(&traced.info) {
                self.symbolizer.refresh(pid);
            } else {
                info!(pid, comm = %traced.info.comm, "process ended");
                traced.state = ProcessState::Ended;
                if let Some(attachment) = traced.attachment.take() {
                    attach::detach(&mut self.probes, attachment);
                }
            }
        }
        let _ = self.maps.drain_events(&mut self.mappings);
    }

    /// True when nothing is traced or every traced process has ended.
    pub fn all_ended(&self) -> bool {
        self.processes
            .values()
            .all(|p| p.state == ProcessState::Ended)
    }

    /// Pids traced (running or ended but not yet reported).
    pub fn pids(&self) -> Vec<u32> {
        self.processes.keys().copied().collect()
    }

    /// Builds a report of every traced process; ended processes appear once more, then their
    /// records are dropped.
    pub fn report(&mut self, options: &ReportOptions) -> Result<Report, CollectError> {
        // Taken before the maps are read: everything recorded before this instant is in it.
        let timestamp_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.poll();
        let now_ns = collect::monotonic_now_ns();
        let tgids: HashSet<u32> = self.processes.keys().copied().collect();
        let totals = self.maps.stack_totals()?;
        let ages = self.maps.scan_ages(&tgids, now_ns, options.min_age_ns)?;
        self.sequence += 1;

        let mut processes = Vec::new();
        let pids: Vec<u32> = self.processes.keys().copied().collect();
        for pid in pids {
            let mut stacks = Vec::new();
            for (key, stack_totals) in totals.iter().filter(|(k, _)| k.tgid == pid) {
                let age = ages.get(key).copied().unwrap_or_default();
                let (bytes, count) = if options.min_age_ns > 0 {
                    (age.aged_bytes, age.aged_count)
                } else {
                    (
                        stack_totals.outstanding_bytes,
                        stack_totals.outstanding_count,
                    )
                };
                if bytes == 0 && count == 0 {
                    continue;
                }
                stacks.push(self.stack_report(
                    pid,
                    key.stack_id,
                    MemoryKind::Heap,
                    bytes,
                    count,
                    age.oldest_ns,
                    now_ns,
                ));
            }
            for (stack_id, mapped) in self.mappings.per_stack(pid) {
                let aged = now_ns.saturating_sub(mapped.oldest_ns) >= options.min_age_ns;
                if options.min_age_ns > 0 && !aged {
                    continue;
                }
                stacks.push(self.stack_report(
                    pid,
                    stack_id,
                    MemoryKind::Mmap,
                    mapped.bytes,
                    mapped.count,
                    mapped.oldest_ns,
                    now_ns,
                ));
            }
            let stacks = report::merge_same_call_sites(stacks);
            let outstanding_bytes = stacks.iter().map(|s| s.bytes).sum::<u64>();
            let outstanding_count = stacks.iter().map(|s| s.count).sum::<u64>();
            let previous = self
                .previous_process_bytes
                .insert(pid, outstanding_bytes)
                .unwrap_or(0);
            let stacks_total = stacks.len();
            let Some(traced) = self.processes.get(&pid) else {
                continue;
            };
            processes.push(ProcessReport {
                pid,
                comm: traced.info.comm.clone(),
                state: traced.state,
                allocator: traced.allocator.clone(),
                outstanding_bytes,
                outstanding_count,
                growth_bytes: signed_delta(outstanding_bytes, previous),
                stacks_total,
                stacks: report::rank(stacks, options.top),
            });
        }

        let report = Report {
            sequence: self.sequence,
            timestamp_unix_ms,
            min_age_ns: options.min_age_ns,
            processes,
            stats: self.maps.stats(),
        };

        let ended: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, p)| p.state == ProcessState::Ended)
            .map(|(&pid, _)| pid)
            .collect();
        for pid in ended {
            let _ = self.processes.remove(&pid);
            self.drop_records(pid);
        }
        Ok(report)
    }

    #[expect(clippy::too_many_arguments, reason = "one call site per memory kind")]
    fn stack_report(
        &mut self,
        pid: u32,
        stack_id: u64,
        kind: MemoryKind,
        bytes: u64,
        count: u64,
        oldest_ns: u64,
        now_ns: u64,
    ) -> StackReport {
        let previous = self
            .previous_bytes
            .insert((pid, stack_id), bytes)
            .unwrap_or(0);
        StackReport {
            stack_id: format!("{stack_id:016x}"),
            kind,
            bytes,
            count,
            oldest_age_ns: if oldest_ns == u64::MAX {
                0
            } else {
                now_ns.saturating_sub(oldest_ns)
            },
            growth_bytes: signed_delta(bytes, previous),
            frames: self.frames(pid, stack_id),
        }
    }

    fn frames(&mut self, pid: u32, stack_id: u64) -> Arc<[Frame]> {
        if stack_id == UNKNOWN_STACK_ID {
            return Arc::from(Vec::new());
        }
        let addrs = self.maps.stack_frames(stack_id).unwrap_or_default();
        self.symbolizer.symbolize(pid, stack_id, &addrs)
    }

    fn drop_records(&mut self, pid: u32) {
        if let Err(error) = self.maps.forget_process(pid) {
            warn!(pid, %error, "failed to drop the records of an ended process");
        }
        self.mappings.forget(pid);
        self.symbolizer.forget(pid);
        self.previous_bytes.retain(|&(p, _), _| p != pid);
        let _ = self.previous_process_bytes.remove(&pid);
    }

    /// The per-stack totals of one process as the kernel holds them (for tests and checks).
    pub fn raw_totals(
        &self,
        pid: u32,
    ) -> Result<HashMap<StackKey, tracer_common::StackTotals>, CollectError> {
        let mut totals = self.maps.stack_totals()?;
        totals.retain(|k, _| k.tgid == pid);
        Ok(totals)
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
                attach::detach(&mut self.probes, attachment);
            }
        }
    }
}

fn signed_delta(now: u64, before: u64) -> i64 {
    i64::try_from(i128::from(now) - i128::from(before)).unwrap_or(i64::MAX)
}
