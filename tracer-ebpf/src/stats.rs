//! Per-CPU loss and activity counters; the daemon sums them across CPUs.

use tracer_common::Stat;

use crate::maps::STATS;

pub(crate) fn bump(stat: Stat) {
    if let Some(counter) = STATS.get_ptr_mut(stat.0) {
        // SAFETY: a per-CPU slot, and BPF programs do not migrate while they run.
        unsafe { *counter += 1 };
    }
}
