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
