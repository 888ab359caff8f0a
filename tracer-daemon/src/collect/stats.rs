//! The BPF programs' loss and activity counters, summed over CPUs.

use std::collections::BTreeMap;

use aya::maps::{MapData, PerCpuArray};
use serde::Serialize;
use tracer_common::Stat;

/// Counter values by name (see [`Stat`] for what each counts).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct BpfStats(pub BTreeMap<&'static str, u64>);

impl BpfStats {
    /// One counter.
    pub fn get(&self, stat: Stat) -> u64 {
        self.0
            .get(Stat::NAMES[stat.0 as usize])
            .copied()
            .unwrap_or(0)
    }

    /// Allocations the tracer could not record (full maps, lost stacks are counted apart).
    pub fn allocations_lost(&self) -> u64 {
        self.get(Stat::ALLOCS_MAP_FULL)
            + self.get(Stat::STACK_TOTALS_MAP_FULL)
            + self.get(Stat::THREAD_STATE_FULL)
            + self.get(Stat::EVENTS_DROPPED)
    }

    /// Why reports may be missing bytes, when they may: every loss since the tracer started,
    /// with the setting that would have avoided it. `None` when nothing was lost.
    pub fn incomplete_reason(&self) -> Option<String> {
        let causes: Vec<String> = [
            (
                Stat::ALLOCS_MAP_FULL,
                "the allocation map was full (raise --max-allocations, [limits] max_allocations)",
            ),
            (
                Stat::STACK_TOTALS_MAP_FULL,
                "the per-stack totals were full (raise --max-stacks, [limits] max_stacks)",
            ),
            (
                Stat::THREAD_STATE_FULL,
                "the per-thread call state was full (more threads in allocator calls at once \
                 than it holds)",
            ),
            (
                Stat::EVENTS_DROPPED,
                "the ring buffer was full (mmap records dropped)",
            ),
        ]
        .into_iter()
        .filter_map(|(stat, why)| {
            let lost = self.get(stat);
            (lost > 0).then(|| format!("{lost} because {why}"))
        })
        .collect();
        (!causes.is_empty()).then(|| {
            format!(
                "{} allocations were not recorded since the tracer started: {}; bytes and \
                 counts may be short",
                self.allocations_lost(),
                causes.join("; ")
            )
        })
    }
}

impl BpfStats {
    /// Why the page-fault growth profile may be missing bytes or callers, when it may: every
    /// such loss since the tracer started, with what would have avoided it. `None` when none.
    /// The pending-fault counters are upper bounds (see [`Stat`]).
    pub fn fault_incomplete_reason(&self) -> Option<String> {
        let causes: Vec<String> = [
            (
                Stat::FAULT_PROFILE_MAP_FULL,
                "faults were lost because the growth profile was full (raise the fault_stacks \
                 map size)",
            ),
            (
                Stat::FAULT_PENDING_EXPIRED,
                "anonymous-rss changes came more than 1 ms after their thread's fault (slow \
                 faults under reclaim go uncounted; unmaps after other faults are counted \
                 here too)",
            ),
            (
                Stat::FAULT_PENDING_OTHER_THREAD,
                "anonymous-rss changes came on a CPU where another thread's fault was pending \
                 (a fault that slept may have finished elsewhere, uncounted)",
            ),
            (
                Stat::FRAMES_WITHOUT_UNWIND_MAPPING,
                "frames were in code without an unwind mapping (a process not profiled, JIT \
                 code) and were walked by frame pointer, which may skip callers",
            ),
        ]
        .into_iter()
        .filter_map(|(stat, why)| {
            let count = self.get(stat);
            (count > 0).then(|| format!("{count}: {why}"))
        })
        .collect();
        (!causes.is_empty()).then(|| causes.join("; "))
    }
}

/// Reads and sums every counter.
pub fn read(stats: &PerCpuArray<MapData, u64>) -> BpfStats {
    let mut out = BTreeMap::new();
    for index in 0..Stat::COUNT {
        let total = stats
            .get(&index, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0);
        let _ = out.insert(Stat::NAMES[index as usize], total);
    }
    BpfStats(out)
}
