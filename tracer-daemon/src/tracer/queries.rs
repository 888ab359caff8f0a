//! The tracer's read side: what it holds for reports and health figures, read from the kernel
//! side's records (per-stack totals, stacks, ages, counters) and symbolized on demand.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use tracer_common::UNKNOWN_STACK_ID;

use super::{ProcessStacks, ReportOptions, Tracer, TracerHealth, oldest_age};

/// A traced process's probe hits so far (running totals) and its sampling mean now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeHits {
    /// Allocator entry probes hit (every call, sampled or not, nested or not).
    pub entries: u64,
    /// Free probes hit.
    pub frees: u64,
    /// Allocations recorded (each also ran its return probe).
    pub recorded: u64,
    /// Its sampling mean now (0: exact).
    pub sample_bytes: u64,
}
use crate::{
    collect::oom::OomKill,
    collect::{
        self, CollectError,
        ages::{self, OldestByStack},
        scanner::{Scanner, Snapshot},
        stats::BpfStats,
    },
    report::{self, MemoryKind, ProcessState, StackReport, assemble::RawStack},
    symbolize::Frame,
    unwind::loader::BinaryUnwinding,
};

impl Tracer {
    /// Figures for health metrics (O(stack slots), no syscall).
    pub fn health(&self) -> TracerHealth {
        let mut stacks = 0u64;
        self.kernel.for_each_total(&mut |_, _| stacks += 1);
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
            oom_hook_attached: matches!(self.kernel.oom_hook(), crate::bpf::OomHook::Attached),
        }
    }

    /// A descriptor that becomes readable when the kernel side has records waiting (mmap
    /// records, OOM kills): event loops wait on it to react at once.
    pub fn events_fd(&self) -> Option<std::os::fd::RawFd> {
        self.kernel.events_fd()
    }

    /// The OOM kills seen since the last call (the victim's records are still here: they go
    /// only with [`Tracer::reap_ended`]).
    pub fn take_oom_kills(&mut self) -> Vec<OomKill> {
        std::mem::take(&mut self.oom_kills)
    }

    /// Whether OOM kills are seen at the kernel hook.
    pub fn oom_hook(&self) -> &crate::bpf::OomHook {
        self.kernel.oom_hook()
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

    /// The growth profile records one new page in this many, weighted by it (1: every page,
    /// exact).
    pub fn fault_sample_pages(&self) -> u32 {
        self.fault_sample_pages
    }

    /// Where probes go in each function (what [`super::Prepared::read`] needs to know).
    pub fn placement(&self) -> crate::attach::placement::PlacementMode {
        self.placement
    }

    /// The BPF programs' counters.
    pub fn stats(&self) -> BpfStats {
        self.kernel.stats()
    }

    /// Rescans every outstanding allocation for ages (O(allocations)); reports without a minimum
    /// age use the result until the next scan. With a background scanner, takes its latest.
    pub fn refresh_ages(&mut self) -> Result<(), CollectError> {
        if let Some(scanner) = &self.scanner {
            self.ages = Arc::clone(&scanner.latest().oldest);
            return Ok(());
        }
        let mut oldest = OldestByStack::default();
        self.kernel
            .for_each_allocation(&mut |key, info| ages::add_oldest(&mut oldest, key, info))?;
        self.ages = Arc::new(oldest);
        Ok(())
    }

    /// Moves the periodic scans (ages of every allocation, the largest stacks for growth) to a
    /// thread of their own, every `interval` (for the node agent: queries never wait for them).
    pub fn start_scanner(
        &mut self,
        interval: std::time::Duration,
        keep_largest: usize,
    ) -> std::io::Result<()> {
        self.scanner = self.kernel.start_scanner(interval, keep_largest)?;
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
            let mut scan = ages::AgeScan::new(Some(&wanted), now_ns, options.min_age_ns);
            self.kernel
                .for_each_allocation(&mut |key, info| scan.add(key, info))?;
            Some(scan.finish())
        } else {
            None
        };
        // Counts are kept in thousandths.
        let scale = tracer_common::COUNT_SCALE;
        // This loop runs once per stack on the node: one process is the common case, so it
        // avoids hashing for it; ages are looked up later, for the stacks a report shows.
        let single = (pids.len() == 1).then(|| pids[0]);
        let mut by_pid: HashMap<u32, Vec<RawStack>> = HashMap::new();
        let mut only: Vec<RawStack> = Vec::new();
        self.kernel.for_each_total(&mut |key, totals| {
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
                comm: traced.snapshot.info.comm.clone(),
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

    pub(super) fn frames(&mut self, pid: u32, stack_id: u64) -> Arc<[Frame]> {
        if stack_id == UNKNOWN_STACK_ID {
            return Arc::from(Vec::new());
        }
        let addrs = self.kernel.stack_frames(stack_id).unwrap_or_default();
        self.symbolizer.symbolize(pid, stack_id, &addrs)
    }
}

impl Tracer {
    /// What a probe hit costs on this node.
    pub fn probe_cost(&self) -> crate::bpf::probe_cost::ProbeCost {
        self.kernel.probe_cost()
    }

    /// Whether an unsampled malloc skips its return probe (uprobe sessions).
    pub fn sessions(&self) -> bool {
        self.kernel.sessions()
    }

    /// The tracing programs' run counters (`None` without real programs).
    pub fn program_runs(&self) -> Option<crate::bpf::program_runs::ProgramRuns> {
        self.kernel.program_runs()
    }

    /// Each armed process's probe hits so far, as the programs counted them: every allocator
    /// entry and every free trapped into the kernel, sampled or not, plus the allocations
    /// recorded (each of which also ran a return probe). What the overhead budget prices.
    pub fn probe_hits(&self) -> std::collections::HashMap<u32, ProbeHits> {
        let mut hits: std::collections::HashMap<u32, ProbeHits> = self
            .processes
            .keys()
            .filter_map(|&pid| {
                let armed = self.kernel.armed_process(pid)?;
                Some((
                    pid,
                    ProbeHits {
                        entries: armed.entry_hits,
                        frees: armed.free_hits,
                        recorded: 0,
                        sample_bytes: armed.sample_bytes,
                    },
                ))
            })
            .collect();
        self.kernel.for_each_total(&mut |key, totals| {
            if let Some(process) = hits.get_mut(&key.tgid) {
                process.recorded += totals.allocations_total;
            }
        });
        hits
    }

    /// Switches a traced process to sampling with mean `sample_bytes` from its next allocator
    /// call on; what it recorded exactly keeps its exact weights.
    pub fn sample(&mut self, pid: u32, sample_bytes: u64) -> Result<(), String> {
        let Some(process) = self.processes.get_mut(&pid) else {
            return Err(format!("process {pid} is not traced"));
        };
        let sample_bytes = sample_bytes.min(super::MAX_SAMPLE_BYTES);
        self.kernel.sample(pid, sample_bytes)?;
        process.sample_bytes = sample_bytes;
        Ok(())
    }

    /// The sampling mean of a traced process (0: exact; `None` when it is not traced).
    pub fn sample_bytes_of(&self, pid: u32) -> Option<u64> {
        self.processes.get(&pid).map(|p| p.sample_bytes)
    }
}
