//! Pod-level leak reports: the stacks of a pod's traced processes grouped by container, ranked
//! by bytes or growth, with the container's memory figures and the projected time until its
//! limit at the current leak rate.

use serde::{Deserialize, Serialize};

use crate::{
    collect::stats::BpfStats,
    discover::memory::MemoryFigures,
    report::{
        StackReport,
        growth::{Growth, GrowthClass},
    },
};

/// Stack order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortBy {
    /// Most outstanding bytes first.
    #[default]
    Bytes,
    /// Fastest growth (over the sliding window) first.
    Growth,
}

/// One container's part of a pod report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerReport {
    /// Container name, when the kubelet's records give it.
    pub name: Option<String>,
    /// Runtime container id (`None` for processes outside any pod).
    pub id: Option<String>,
    /// Memory figures of the container's cgroup now.
    pub memory: Option<MemoryFigures>,
    /// Outstanding bytes over its traced processes.
    pub outstanding_bytes: u64,
    /// Outstanding allocations.
    pub outstanding_count: u64,
    /// Sum of the growth rates of the stacks classed as growing, bytes per second.
    pub leak_bytes_per_second: f64,
    /// Sum of the measured growth rates of the stacks not classed yet (too new), bytes per
    /// second: provisional, shown from the start so an obvious leak is not "0 B/s".
    #[serde(default)]
    pub provisional_leak_bytes_per_second: f64,
    /// When those stacks will be classed (the soonest), ns; `None` when none is waiting.
    #[serde(default)]
    pub classed_in_ns: Option<u64>,
    /// Time until usage reaches the limit at that rate, ns (no limit or no growth: `None`).
    pub time_to_limit_ns: Option<u64>,
    /// The top stacks.
    pub stacks: Vec<StackReport>,
    /// Stacks holding memory before the top-N cut.
    pub stacks_total: usize,
    /// Traced processes included.
    pub pids: Vec<u32>,
    /// True when bytes and counts are estimates (sampled mode).
    #[serde(default)]
    pub estimated: bool,
}

/// A leak report for one pod, container or process.
#[derive(Clone, Debug, Serialize)]
pub struct PodReport {
    /// When the maps were read, ms since the Unix epoch.
    pub taken_at_unix_ms: u64,
    /// Namespace, when known.
    pub namespace: Option<String>,
    /// Pod name, when known.
    pub pod_name: Option<String>,
    /// Pod uid (`None` for a process outside any pod).
    pub pod_uid: Option<String>,
    /// Per container.
    pub containers: Vec<ContainerReport>,
    /// Stack order used.
    pub sort_by: SortBy,
    /// Minimum age applied, ns.
    pub min_age_ns: u64,
    /// Sampling mean in bytes (0: exact mode).
    pub sample_bytes: u64,
    /// True when bytes and counts are estimates (sampled mode).
    pub estimated: bool,
    /// True when allocations on this node could not be recorded (full maps): bytes may be short.
    pub incomplete: bool,
    /// Why, with the setting to raise (`None` when complete).
    pub incomplete_reason: Option<String>,
    /// The BPF side's counters (node-wide).
    pub stats: BpfStats,
}

/// Orders a container's stacks and keeps the top `top`.
pub fn rank_stacks(mut stacks: Vec<StackReport>, sort_by: SortBy, top: usize) -> Vec<StackReport> {
    let rate = |s: &StackReport| s.growth.map_or(0.0, |g| g.bytes_per_second);
    stacks.sort_by(|a, b| {
        let primary = match sort_by {
            SortBy::Bytes => b.bytes.cmp(&a.bytes),
            SortBy::Growth => rate(b).total_cmp(&rate(a)),
        };
        primary
            .then(b.bytes.cmp(&a.bytes))
            .then(a.pid.cmp(&b.pid))
            .then(a.stack_id.cmp(&b.stack_id))
    });
    stacks.truncate(top);
    stacks
}

/// Sum of the growth rates of the stacks classed as growing.
pub fn leak_rate(stacks: &[StackReport]) -> f64 {
    leak_rate_of(stacks.iter().filter_map(|s| s.growth.as_ref()))
}

/// Sum of the rates of the growths classed as growing.
pub fn leak_rate_of<'a>(growths: impl IntoIterator<Item = &'a Growth>) -> f64 {
    growths
        .into_iter()
        .filter(|g| g.class == GrowthClass::Growing && g.bytes_per_second > 0.0)
        .map(|g| g.bytes_per_second)
        .sum()
}

/// Sum of the measured rates of the growing stacks not classed yet, and when the first of them
/// will be classed (`None` when none is waiting).
pub fn provisional_rate_of<'a>(
    growths: impl IntoIterator<Item = &'a Growth>,
) -> (f64, Option<u64>) {
    growths
        .into_iter()
        .filter(|g| g.class == GrowthClass::InsufficientData && g.bytes_per_second > 0.0)
        .fold((0.0, None), |(rate, soonest), g| {
            (
                rate + g.bytes_per_second,
                Some(soonest.map_or(g.classed_in_ns, |s: u64| s.min(g.classed_in_ns))),
            )
        })
}

/// Time until usage reaches the limit at `bytes_per_second`, ns; `None` without a limit or
/// without growth; 0 when already at or above the limit.
pub fn time_to_limit_ns(memory: Option<&MemoryFigures>, bytes_per_second: f64) -> Option<u64> {
    let memory = memory?;
    let limit = memory.limit_bytes?;
    if bytes_per_second <= 0.0 || !bytes_per_second.is_finite() {
        return None;
    }
    let headroom = limit.saturating_sub(memory.usage_bytes) as f64;
    let seconds = headroom / bytes_per_second;
    Some((seconds * 1e9).min(u64::MAX as f64) as u64)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::report::{
        MemoryKind,
        growth::{Growth, GrowthClass},
    };

    fn stack(id: &str, bytes: u64, rate: f64, class: GrowthClass) -> StackReport {
        StackReport {
            stack_id: id.to_owned(),
            pid: 7,
            kind: MemoryKind::Heap,
            bytes,
            count: 1,
            oldest_age_ns: 0,
            growth_bytes: 0,
            growth: Some(Growth {
                classed_in_ns: 0,
                bytes_per_second: rate,
                recent_bytes_per_second: rate,
                class,
                samples: 10,
                span_ns: 1,
            }),
            frames: Arc::from(Vec::new()),
            members: Vec::new(),
        }
    }

    fn memory(usage_bytes: u64, limit_bytes: Option<u64>) -> MemoryFigures {
        MemoryFigures {
            usage_bytes,
            limit_bytes,
            limit_hits: 0,
            oom_kills: 0,
            high_events: 0,
            under_oom: false,
            anon_bytes: None,
        }
    }

    #[test]
    fn sorting_by_growth_puts_the_fastest_grower_first() {
        let stacks = vec![
            stack("big", 1 << 30, 0.0, GrowthClass::Stable),
            stack("fast", 1 << 10, 5000.0, GrowthClass::Growing),
        ];
        let by_growth = rank_stacks(stacks.clone(), SortBy::Growth, 10);
        assert_eq!(by_growth[0].stack_id, "fast");
        let by_bytes = rank_stacks(stacks, SortBy::Bytes, 1);
        assert_eq!(by_bytes.len(), 1);
        assert_eq!(by_bytes[0].stack_id, "big");
    }

    #[test]
    fn only_growing_stacks_count_towards_the_leak_rate() {
        let stacks = vec![
            stack("leak", 10, 1000.0, GrowthClass::Growing),
            stack("cache", 10, 800.0, GrowthClass::LevellingOff),
            stack("other", 10, 24.0, GrowthClass::Growing),
        ];
        assert!((leak_rate(&stacks) - 1024.0).abs() < 1e-9);
    }

    #[test]
    fn time_to_limit_is_headroom_over_rate_and_absent_without_limit_or_growth() {
        let m = memory(60 << 20, Some(64 << 20));
        assert_eq!(
            time_to_limit_ns(Some(&m), (1 << 20) as f64),
            Some(4_000_000_000)
        );
        assert_eq!(time_to_limit_ns(Some(&memory(1, None)), 100.0), None);
        assert_eq!(time_to_limit_ns(Some(&m), 0.0), None);
        assert_eq!(time_to_limit_ns(None, 100.0), None);
        assert_eq!(
            time_to_limit_ns(Some(&memory(65 << 20, Some(64 << 20))), 10.0),
            Some(0)
        );
    }
}
