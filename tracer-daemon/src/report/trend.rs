//! Every watched container's memory trend, from its cgroup files alone (no probes): its
//! anonymous memory sampled into the same sliding windows and classes as stacks' bytes
//! (growing, levelling off, stable, shrinking), and the projected time until its usage reaches
//! its limit. This is what says, for a pod nobody selected, that something is leaking, and
//! what the escalation policy acts on.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash as _, Hasher as _},
};

use serde::{Deserialize, Serialize};

use crate::{
    discover::memory::MemoryFigures,
    report::growth::{Growth, GrowthClass, GrowthConfig, GrowthTracker},
};

/// One container's trend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerTrend {
    /// The sampled figure: anonymous memory (usage when memory.stat is unreadable).
    pub anon_bytes: u64,
    /// Its growth over the window.
    pub growth: Growth,
    /// While growing against a limit: the time until usage reaches the limit at the window's
    /// rate, ns.
    pub time_to_limit_ns: Option<u64>,
}

/// The trends of the watched containers, by container id.
#[derive(Debug)]
pub struct ContainerTrends {
    windows: GrowthTracker<u64>,
    latest: HashMap<u64, MemoryFigures>,
}

/// The window key of a container id (a 64-bit hash: ids are 64 hex digits, and two of a node's
/// containers colliding is out of reach).
fn key(container_id: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    container_id.hash(&mut hasher);
    hasher.finish()
}

/// The figure a container's trend follows.
pub fn sampled_bytes(figures: &MemoryFigures) -> u64 {
    figures.anon_bytes.unwrap_or(figures.usage_bytes)
}

impl ContainerTrends {
    /// No containers yet.
    pub fn new(config: GrowthConfig) -> Self {
        Self {
            windows: GrowthTracker::new(config),
            latest: HashMap::new(),
        }
    }

    /// One sampling round at `now_ns` over every watched container; containers missing from
    /// it are forgotten (they ended or are no longer watched).
    pub fn record<'a>(
        &mut self,
        now_ns: u64,
        round: impl IntoIterator<Item = (&'a str, MemoryFigures)>,
    ) {
        let round: HashMap<u64, MemoryFigures> = round
            .into_iter()
            .map(|(id, figures)| (key(id), figures))
            .collect();
        self.windows.forget(|k| !round.contains_key(k));
        self.windows
            .record(now_ns, round.iter().map(|(&k, f)| (k, sampled_bytes(f))));
        self.latest = round;
    }

    /// The trend of a container; `None` when it was not in the last round.
    pub fn trend(&self, container_id: &str) -> Option<ContainerTrend> {
        let key = key(container_id);
        let figures = self.latest.get(&key)?;
        let growth = self.windows.growth(&key);
        let time_to_limit_ns = match (growth.class, figures.limit_bytes) {
            (GrowthClass::Growing, Some(limit)) if growth.bytes_per_second > 0.0 => {
                let left = limit.saturating_sub(figures.usage_bytes) as f64;
                Some(
                    (left / growth.bytes_per_second * 1e9)
                        .round()
                        .min(u64::MAX as f64) as u64,
                )
            }
            _ => None,
        };
        Some(ContainerTrend {
            anon_bytes: sampled_bytes(figures),
            growth,
            time_to_limit_ns,
        })
    }

    /// Containers in the last round.
    pub fn len(&self) -> usize {
        self.latest.len()
    }

    /// Whether the last round had no container.
    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn figures(anon: u64, limit: Option<u64>) -> MemoryFigures {
        MemoryFigures {
            usage_bytes: anon + (8 << 20),
            limit_bytes: limit,
            anon_bytes: Some(anon),
            ..MemoryFigures::default()
        }
    }

    fn config() -> GrowthConfig {
        GrowthConfig {
            window_ns: 60 * SECOND,
            ..GrowthConfig::default()
        }
    }

    #[test]
    fn a_leaking_container_is_growing_with_its_time_to_the_limit() {
        let mut trends = ContainerTrends::new(config());
        let limit = 256 << 20;
        for i in 0..13u64 {
            // 1 MiB/s of anonymous memory; a flat neighbour.
            trends.record(
                i * 5 * SECOND,
                [
                    ("leaky", figures((64 << 20) + i * (5 << 20), Some(limit))),
                    ("flat", figures(64 << 20, Some(limit))),
                ],
            );
        }
        let leaky = trends.trend("leaky").expect("watched");
        assert_eq!(leaky.growth.class, GrowthClass::Growing);
        assert!((leaky.growth.bytes_per_second - f64::from(1 << 20)).abs() < 1.0);
        // Usage 64 + 60 + 8 MiB of 256 MiB: 124 MiB left at 1 MiB/s.
        let left_s = (leaky.time_to_limit_ns.expect("growing with a limit") + SECOND / 2) / SECOND;
        assert_eq!(left_s, 124);
        let flat = trends.trend("flat").expect("watched");
        assert_eq!(flat.growth.class, GrowthClass::Stable);
        assert_eq!(flat.time_to_limit_ns, None);
    }

    #[test]
    fn a_container_missing_from_a_round_is_forgotten() {
        let mut trends = ContainerTrends::new(config());
        trends.record(SECOND, [("a", figures(1 << 20, None))]);
        trends.record(2 * SECOND, [("b", figures(1 << 20, None))]);
        assert!(trends.trend("a").is_none());
        assert_eq!(trends.len(), 1);
    }

    #[test]
    fn usage_stands_in_when_memory_stat_is_unreadable() {
        let no_stat = MemoryFigures {
            usage_bytes: 4096,
            ..MemoryFigures::default()
        };
        assert_eq!(sampled_bytes(&no_stat), 4096);
    }
}
