//! Automatic escalation: the policy that starts exact tracing of a watched container by itself
//! when its trend says it will run out of memory, and stops it when the growth levels off.
//! Bookkeeping only (no /proc, no kernel): the agent feeds it each round of trends and acts on
//! the decisions through its plan.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    discover::memory::MemoryFigures,
    report::{growth::GrowthClass, trend::ContainerTrend},
};

/// When to escalate.
#[derive(Clone, Debug, PartialEq)]
pub struct EscalationPolicy {
    /// Off: only selections and StartTracing start exact tracing.
    pub enabled: bool,
    /// A growing container whose projected time to its limit is under this escalates.
    pub time_to_limit: Duration,
    /// A growing container using at least this share of its limit escalates (0..=1).
    pub usage_ratio: f64,
    /// Most containers escalated at once.
    pub max_containers: usize,
    /// How long an escalation lasts; one still growing then is kept for as long again.
    pub max_duration: Duration,
}

impl Default for EscalationPolicy {
    /// 6 h to the limit or 70 % of it while growing; two containers at once, 30 min each.
    /// Two: exact tracing costs about 1.5 µs per malloc/free pair, so a node carries it for a
    /// few containers, not all; 30 min: two growth windows of the default 5 min with room to
    /// see a leak's stacks age, without leaving probes on a pod for hours.
    fn default() -> Self {
        Self {
            enabled: true,
            time_to_limit: Duration::from_secs(6 * 3600),
            usage_ratio: 0.7,
            max_containers: 2,
            max_duration: Duration::from_secs(30 * 60),
        }
    }
}

/// Why and since when a container is traced by the policy (kept in evidence too).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EscalationRecord {
    /// When exact tracing started, Unix ms.
    pub started_at_unix_ms: u64,
    /// What the trend said then, e.g. "growing at 1.0 MiB/s, 2h3m to the limit".
    pub reason: String,
}

/// One watched container as the policy sees it.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Container id.
    pub container_id: String,
    /// Its trend.
    pub trend: ContainerTrend,
    /// Its figures now.
    pub figures: MemoryFigures,
    /// Excluded from watching, stopped by hand, or already traced by selection: never
    /// escalated (and an escalation in force ends).
    pub barred: bool,
}

/// What to do after a round.
#[derive(Debug, Default, PartialEq)]
pub struct Decisions {
    /// Containers to start tracing, with the reason.
    pub start: Vec<(String, String)>,
    /// Containers to stop tracing, with the reason.
    pub stop: Vec<(String, String)>,
}

struct Active {
    record: EscalationRecord,
    until: Instant,
}

/// The escalations in force.
pub struct Escalations {
    policy: EscalationPolicy,
    active: BTreeMap<String, Active>,
}

/// Why a trend calls for exact tracing, if it does.
fn reason(policy: &EscalationPolicy, candidate: &Candidate) -> Option<String> {
    let trend = &candidate.trend;
    if trend.growth.class != GrowthClass::Growing {
        return None;
    }
    let rate = crate::report::human_rate(trend.growth.bytes_per_second);
    if let Some(left) = trend.time_to_limit_ns.map(Duration::from_nanos)
        && left < policy.time_to_limit
    {
        let left = humantime::format_duration(Duration::from_secs(left.as_secs()));
        return Some(format!("growing at {rate}, {left} to the limit"));
    }
    let limit = candidate.figures.limit_bytes?;
    let ratio = candidate.figures.usage_bytes as f64 / limit as f64;
    (ratio >= policy.usage_ratio).then(|| {
        format!(
            "growing at {rate} with {:.0}% of the limit used",
            ratio * 100.0
        )
    })
}

impl Escalations {
    /// None in force.
    pub fn new(policy: EscalationPolicy) -> Self {
        Self {
            policy,
            active: BTreeMap::new(),
        }
    }

    /// The escalation in force for a container.
    pub fn get(&self, container_id: &str) -> Option<&EscalationRecord> {
        self.active.get(container_id).map(|a| &a.record)
    }

    /// Containers escalated now.
    pub fn containers(&self) -> impl Iterator<Item = &str> {
        self.active.keys().map(String::as_str)
    }

    /// Reviews a round of every watched container's trend: escalations that end (growth
    /// levelled off, time up and not growing, barred, container gone) and new ones (the most
    /// urgent first, up to the policy's bound).
    pub fn review(&mut self, now: Instant, unix_ms: u64, round: &[Candidate]) -> Decisions {
        let mut decisions = Decisions::default();
        let by_id: BTreeMap<&str, &Candidate> =
            round.iter().map(|c| (c.container_id.as_str(), c)).collect();
        let policy = self.policy.clone();
        self.active.retain(|id, active| {
            let why = match by_id.get(id.as_str()) {
                None => Some("the container is gone or no longer watched".to_owned()),
                Some(c) if c.barred => Some("stopped by hand or excluded".to_owned()),
                Some(c) => match c.trend.growth.class {
                    GrowthClass::Growing if now >= active.until => {
                        // Still growing at the end: keep it as long again.
                        active.until = now + policy.max_duration;
                        None
                    }
                    GrowthClass::Growing | GrowthClass::InsufficientData => None,
                    _ if now >= active.until => Some(format!(
                        "{} elapsed and the growth stopped",
                        humantime::format_duration(policy.max_duration)
                    )),
                    GrowthClass::LevellingOff => Some("the growth levelled off".to_owned()),
                    GrowthClass::Stable => Some("the memory is stable".to_owned()),
                    GrowthClass::Shrinking => Some("the memory is shrinking".to_owned()),
                },
            };
            match why {
                Some(why) => {
                    decisions.stop.push((id.clone(), why));
                    false
                }
                None => true,
            }
        });
        if !self.policy.enabled {
            return decisions;
        }
        let mut due: Vec<(&Candidate, String)> = round
            .iter()
            .filter(|c| !c.barred && !self.active.contains_key(&c.container_id))
            .filter_map(|c| reason(&self.policy, c).map(|r| (c, r)))
            .collect();
        due.sort_by_key(|(c, _)| c.trend.time_to_limit_ns.unwrap_or(u64::MAX));
        for (candidate, reason) in due {
            if self.active.len() >= self.policy.max_containers {
                break;
            }
            let _ = self.active.insert(
                candidate.container_id.clone(),
                Active {
                    record: EscalationRecord {
                        started_at_unix_ms: unix_ms,
                        reason: reason.clone(),
                    },
                    until: now + self.policy.max_duration,
                },
            );
            decisions
                .start
                .push((candidate.container_id.clone(), reason));
        }
        decisions
    }

    /// Ends an escalation at once (the container was stopped by hand).
    pub fn end(&mut self, container_id: &str) {
        let _ = self.active.remove(container_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::growth::Growth;

    const MIB: u64 = 1 << 20;

    fn candidate(id: &str, class: GrowthClass, usage: u64, left_s: Option<u64>) -> Candidate {
        Candidate {
            container_id: id.into(),
            trend: ContainerTrend {
                anon_bytes: usage,
                growth: Growth {
                    bytes_per_second: MIB as f64,
                    class,
                    ..Growth::default()
                },
                time_to_limit_ns: left_s.map(|s| s * 1_000_000_000),
            },
            figures: MemoryFigures {
                usage_bytes: usage,
                limit_bytes: Some(1024 * MIB),
                ..MemoryFigures::default()
            },
            barred: false,
        }
    }

    fn policy() -> EscalationPolicy {
        EscalationPolicy {
            max_containers: 1,
            max_duration: Duration::from_secs(60),
            ..EscalationPolicy::default()
        }
    }

    #[test]
    fn the_most_urgent_growing_container_escalates_within_the_bound() {
        let mut e = Escalations::new(policy());
        let now = Instant::now();
        let round = [
            candidate("soon", GrowthClass::Growing, 100 * MIB, Some(600)),
            candidate("later", GrowthClass::Growing, 100 * MIB, Some(3600)),
            candidate("cache", GrowthClass::LevellingOff, 900 * MIB, None),
            candidate("far", GrowthClass::Growing, 10 * MIB, Some(7 * 3600)),
        ];
        let d = e.review(now, 1, &round);
        assert_eq!(
            d.start,
            [(
                "soon".to_owned(),
                "growing at 1.0 MiB/s, 10m to the limit".to_owned()
            )]
        );
        assert!(e.get("later").is_none(), "at most one at once");
        assert_eq!(e.get("soon").map(|r| r.started_at_unix_ms), Some(1));
    }

    #[test]
    fn usage_over_the_ratio_escalates_only_while_growing() {
        let mut e = Escalations::new(policy());
        let now = Instant::now();
        let d = e.review(
            now,
            1,
            &[candidate("full", GrowthClass::Stable, 900 * MIB, None)],
        );
        assert!(
            d.start.is_empty(),
            "a full but flat container is not a leak"
        );
        let d = e.review(
            now,
            1,
            &[candidate("full", GrowthClass::Growing, 900 * MIB, None)],
        );
        assert_eq!(
            d.start[0].1,
            "growing at 1.0 MiB/s with 88% of the limit used"
        );
    }

    #[test]
    fn escalation_ends_when_growth_levels_off_or_time_is_up_unless_still_growing() {
        let mut e = Escalations::new(policy());
        let now = Instant::now();
        let growing = candidate("c", GrowthClass::Growing, 100 * MIB, Some(600));
        let _ = e.review(now, 1, std::slice::from_ref(&growing));
        let later = now + Duration::from_secs(61);
        let d = e.review(later, 2, std::slice::from_ref(&growing));
        assert!(d.stop.is_empty(), "still growing at the end: kept");
        let levelled = candidate("c", GrowthClass::LevellingOff, 100 * MIB, None);
        let d = e.review(later, 3, &[levelled]);
        assert_eq!(
            d.stop,
            [("c".to_owned(), "the growth levelled off".to_owned())]
        );
    }

    #[test]
    fn barred_containers_never_escalate_and_a_bar_ends_an_escalation() {
        let mut e = Escalations::new(policy());
        let now = Instant::now();
        let mut c = candidate("c", GrowthClass::Growing, 100 * MIB, Some(600));
        c.barred = true;
        assert!(e.review(now, 1, std::slice::from_ref(&c)).start.is_empty());
        c.barred = false;
        assert_eq!(e.review(now, 1, std::slice::from_ref(&c)).start.len(), 1);
        c.barred = true;
        assert_eq!(e.review(now, 1, &[c]).stop.len(), 1);
    }

    #[test]
    fn a_disabled_policy_starts_nothing() {
        let mut e = Escalations::new(EscalationPolicy {
            enabled: false,
            ..policy()
        });
        let c = candidate("c", GrowthClass::Growing, 100 * MIB, Some(600));
        assert!(e.review(Instant::now(), 1, &[c]).start.is_empty());
    }
}
