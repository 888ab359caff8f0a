//! The memory-limit watch: per traced container, usage against limit and the cgroup's event
//! counters, turned into triggers for evidence snapshots — thresholds crossed going up (each
//! fires once per crossing, re-armed when usage falls back below it), limit hits and
//! memory.high events, PSI memory-pressure triggers where the kernel offers them, and OOM
//! kills seen in the counters. A cooldown per container and trigger kind bounds how often
//! snapshots are taken, so a container flapping at its limit cannot fill the store.

use std::{
    collections::HashMap,
    fs::OpenOptions,
    io::Write as _,
    os::fd::AsRawFd as _,
    path::Path,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::{discover::memory::MemoryFigures, evidence::model::Trigger};

/// How the watch behaves.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// Percentages of the limit that trigger a snapshot when crossed going up.
    pub thresholds: Vec<u32>,
    /// Least time between two snapshots of the same kind for one container.
    pub cooldown: Duration,
    /// PSI trigger written to each container's memory.pressure (cgroup v2): "some 500000
    /// 2000000" is 500 ms of stall within 2 s. Without CAP_SYS_RESOURCE the kernel only accepts
    /// windows that are multiples of 2 s (and checks them every 2 s); `None` disables it.
    pub pressure_trigger: Option<String>,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            thresholds: vec![80, 90, 95],
            cooldown: Duration::from_secs(30),
            pressure_trigger: Some("some 500000 2000000".into()),
        }
    }
}

/// A registered PSI trigger: the kernel marks the file POLLPRI when it fires.
struct PressureTrigger {
    file: std::fs::File,
}

impl PressureTrigger {
    fn register(path: &Path, trigger: &str) -> Option<Self> {
        let mut file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(error) => {
                // A read-only /sys/fs/cgroup (the DaemonSet mounts it so) refuses this.
                warn!(path = %path.display(), %error, "cannot open memory.pressure for writing; memory pressure will not trigger snapshots (--pressure-trigger off silences this)");
                return None;
            }
        };
        match file.write_all(trigger.as_bytes()) {
            Ok(()) => Some(Self { file }),
            Err(error) => {
                warn!(path = %path.display(), trigger, %error, "PSI trigger refused; memory pressure will not trigger snapshots");
                None
            }
        }
    }

    /// True when the trigger fired since the last look (non-blocking).
    fn fired(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no waiting.
        let ready = unsafe { libc::poll(&raw mut poll, 1, 0) };
        ready > 0 && poll.revents & libc::POLLPRI != 0
    }
}

#[derive(Default)]
struct ContainerState {
    /// Highest threshold crossed and not yet re-armed.
    level: u32,
    last: Option<MemoryFigures>,
    last_snapshot: HashMap<&'static str, Instant>,
    pressure: Option<PressureTrigger>,
    pressure_checked: bool,
}

/// The watch over every traced container.
pub struct MemoryWatch {
    config: WatchConfig,
    containers: HashMap<String, ContainerState>,
}

/// Percentage points usage must fall under a threshold before it fires again.
const HYSTERESIS_PERCENT: f64 = 5.0;

impl MemoryWatch {
    /// A watch with this configuration.
    pub fn new(mut config: WatchConfig) -> Self {
        config.thresholds.sort_unstable();
        config.thresholds.dedup();
        Self {
            config,
            containers: HashMap::new(),
        }
    }

    /// Looks at one container's figures; returns the triggers to snapshot now.
    /// `pressure_file` is its cgroup v2 memory.pressure, when there is one.
    pub fn observe(
        &mut self,
        container_id: &str,
        figures: MemoryFigures,
        pressure_file: Option<&Path>,
        now: Instant,
    ) -> Vec<Trigger> {
        let state = self.containers.entry(container_id.to_owned()).or_default();
        let mut triggers = Vec::new();
        if let Some(limit) = figures.limit_bytes.filter(|&l| l > 0) {
            let percent = figures.usage_bytes as f64 * 100.0 / limit as f64;
            if let Some(&crossed) = self
                .config
                .thresholds
                .iter()
                .rev()
                .find(|&&t| percent >= f64::from(t))
                && crossed > state.level
            {
                state.level = crossed;
                triggers.push(Trigger::Threshold { percent: crossed });
            }
            while state.level > 0 && percent < f64::from(state.level) - HYSTERESIS_PERCENT {
                state.level = self
                    .config
                    .thresholds
                    .iter()
                    .rev()
                    .copied()
                    .find(|&t| t < state.level)
                    .unwrap_or(0);
            }
        }
        if let Some(last) = state.last {
            if figures.limit_hits > last.limit_hits {
                triggers.push(Trigger::LimitHit {
                    count: figures.limit_hits - last.limit_hits,
                });
            }
            if figures.high_events > last.high_events {
                triggers.push(Trigger::High {
                    count: figures.high_events - last.high_events,
                });
            }
            if figures.oom_kills > last.oom_kills {
                triggers.push(Trigger::OomKill { kill: None });
            }
        }
        state.last = Some(figures);
        if !state.pressure_checked {
            state.pressure_checked = true;
            if let (Some(path), Some(trigger)) = (pressure_file, &self.config.pressure_trigger) {
                state.pressure = PressureTrigger::register(path, trigger);
                if state.pressure.is_some() {
                    info!(
                        container = container_id,
                        trigger, "PSI memory-pressure trigger registered"
                    );
                }
            }
        }
        if let (Some(pressure), Some(trigger)) = (&state.pressure, &self.config.pressure_trigger)
            && pressure.fired()
        {
            triggers.push(Trigger::Pressure {
                trigger: trigger.clone(),
            });
        }
        // OOM kills are never held back by the cooldown; the rest are, per kind.
        let cooldown = self.config.cooldown;
        triggers.retain(|trigger| {
            let kind = trigger.kind();
            if matches!(trigger, Trigger::OomKill { .. } | Trigger::Threshold { .. }) {
                return true;
            }
            match state.last_snapshot.get(kind) {
                Some(at) if now.duration_since(*at) < cooldown => false,
                _ => {
                    let _ = state.last_snapshot.insert(kind, now);
                    true
                }
            }
        });
        triggers
    }

    /// Forgets containers no longer watched.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.containers.retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(usage_bytes: u64, limit: u64) -> MemoryFigures {
        MemoryFigures {
            usage_bytes,
            limit_bytes: Some(limit),
            ..MemoryFigures::default()
        }
    }

    fn watch() -> MemoryWatch {
        MemoryWatch::new(WatchConfig {
            pressure_trigger: None,
            ..WatchConfig::default()
        })
    }

    #[test]
    fn each_threshold_fires_once_going_up_and_rearms_after_falling_below() {
        let mut w = watch();
        let now = Instant::now();
        assert!(w.observe("c", figures(50, 100), None, now).is_empty());
        assert_eq!(
            w.observe("c", figures(85, 100), None, now),
            [Trigger::Threshold { percent: 80 }]
        );
        assert!(w.observe("c", figures(86, 100), None, now).is_empty());
        // A jump past two thresholds reports the highest.
        assert_eq!(
            w.observe("c", figures(96, 100), None, now),
            [Trigger::Threshold { percent: 95 }]
        );
        assert!(
            w.observe("c", figures(92, 100), None, now).is_empty(),
            "inside the hysteresis band"
        );
        assert!(w.observe("c", figures(70, 100), None, now).is_empty());
        assert_eq!(
            w.observe("c", figures(81, 100), None, now),
            [Trigger::Threshold { percent: 80 }]
        );
    }

    #[test]
    fn counters_going_up_trigger_with_a_cooldown_but_oom_kills_always() {
        let mut w = watch();
        let start = Instant::now();
        let mut f = figures(10, 100);
        assert!(
            w.observe("c", f, None, start).is_empty(),
            "first look only records"
        );
        f.limit_hits = 3;
        f.oom_kills = 1;
        let triggers = w.observe("c", f, None, start);
        assert_eq!(
            triggers,
            [
                Trigger::LimitHit { count: 3 },
                Trigger::OomKill { kill: None }
            ]
        );
        f.limit_hits = 5;
        f.oom_kills = 2;
        let triggers = w.observe("c", f, None, start + Duration::from_secs(1));
        assert_eq!(
            triggers,
            [Trigger::OomKill { kill: None }],
            "limit hits are in their cooldown"
        );
        f.limit_hits = 6;
        let triggers = w.observe("c", f, None, start + Duration::from_secs(31));
        assert_eq!(triggers, [Trigger::LimitHit { count: 1 }]);
    }

    #[test]
    fn containers_without_a_limit_only_watch_counters() {
        let mut w = watch();
        let unlimited = MemoryFigures {
            usage_bytes: u64::MAX,
            ..MemoryFigures::default()
        };
        assert!(w.observe("c", unlimited, None, Instant::now()).is_empty());
    }
}
