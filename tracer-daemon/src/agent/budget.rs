//! The overhead budget per traced process: what exact tracing costs each process while it runs
//! (its allocator calls the probes saw, times what a probe hit costs on this node), as a share
//! of one core. A process over the budget for two reviews in a row stops being traced, its
//! records saved as evidence first; the reason and the measured cost are reported.
//! Bookkeeping only: the agent reads the counts and acts.

use std::{collections::HashMap, time::Instant};

pub use crate::bpf::probe_cost::ProbeCost;

/// How much tracing may cost a process.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetPolicy {
    /// Off: a process stays traced whatever it costs.
    pub enabled: bool,
    /// Share of one core tracing may take from a process (0.05: 5%).
    pub max_core_share: f64,
}

impl Default for BudgetPolicy {
    /// 5% of a core: about 33,000 malloc/free pairs a second at this node's measured cost of
    /// 1.5 µs a pair. A service doing a few thousand allocations a second stays exact; a hot
    /// allocation loop, where tracing would multiply the run time, does not.
    fn default() -> Self {
        Self {
            enabled: true,
            max_core_share: 0.05,
        }
    }
}

/// A process's allocator calls the probes saw so far (running totals).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// Allocations.
    pub allocations: u64,
    /// Frees.
    pub frees: u64,
}

/// What tracing costs one process, measured over the last review interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeasuredCost {
    /// Share of one core.
    pub core_share: f64,
    /// Allocations per second.
    pub allocations_per_second: f64,
    /// Frees per second.
    pub frees_per_second: f64,
}

impl MeasuredCost {
    /// `12.0% of a core (80000 allocations/s, 80000 frees/s)`.
    pub fn describe(&self) -> String {
        format!(
            "{:.1}% of a core ({:.0} allocations/s, {:.0} frees/s)",
            self.core_share * 100.0,
            self.allocations_per_second,
            self.frees_per_second
        )
    }
}

struct Tracked {
    counts: CallCounts,
    at: Instant,
    cost: Option<MeasuredCost>,
    /// Reviews in a row over the budget.
    over: u32,
}

/// The budget's view of every traced process.
pub struct Budget {
    policy: BudgetPolicy,
    probe_cost: ProbeCost,
    processes: HashMap<u32, Tracked>,
}

impl Budget {
    /// Nothing measured yet.
    pub fn new(policy: BudgetPolicy, probe_cost: ProbeCost) -> Self {
        Self {
            policy,
            probe_cost,
            processes: HashMap::new(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &BudgetPolicy {
        &self.policy
    }

    /// What a probe hit costs here.
    pub fn probe_cost(&self) -> ProbeCost {
        self.probe_cost
    }

    /// The last measured cost of a process.
    pub fn cost(&self, pid: u32) -> Option<MeasuredCost> {
        self.processes.get(&pid).and_then(|t| t.cost)
    }

    /// Takes each traced process's running call counts at `now` (processes not listed are
    /// forgotten) and returns those to stop tracing, with their cost: over the budget at this
    /// review and the one before (a single burst is not enough).
    pub fn review(
        &mut self,
        now: Instant,
        counts: &HashMap<u32, CallCounts>,
    ) -> Vec<(u32, MeasuredCost)> {
        self.processes.retain(|pid, _| counts.contains_key(pid));
        let mut over = Vec::new();
        for (&pid, &now_counts) in counts {
            let Some(tracked) = self.processes.get_mut(&pid) else {
                let _ = self.processes.insert(
                    pid,
                    Tracked {
                        counts: now_counts,
                        at: now,
                        cost: None,
                        over: 0,
                    },
                );
                continue;
            };
            let seconds = now.duration_since(tracked.at).as_secs_f64();
            if seconds <= 0.0 {
                continue;
            }
            // Counts restart when a process execs (new records): never negative.
            let allocations = now_counts
                .allocations
                .saturating_sub(tracked.counts.allocations) as f64
                / seconds;
            let frees = now_counts.frees.saturating_sub(tracked.counts.frees) as f64 / seconds;
            let cost = MeasuredCost {
                core_share: (allocations * self.probe_cost.per_allocation_ns
                    + frees * self.probe_cost.per_free_ns)
                    / 1e9,
                allocations_per_second: allocations,
                frees_per_second: frees,
            };
            tracked.counts = now_counts;
            tracked.at = now;
            tracked.cost = Some(cost);
            if self.policy.enabled && cost.core_share > self.policy.max_core_share {
                tracked.over += 1;
                if tracked.over >= 2 {
                    over.push((pid, cost));
                }
            } else {
                tracked.over = 0;
            }
        }
        over.sort_by_key(|&(pid, _)| pid);
        over
    }
}

/// Why a process stopped being traced for the budget (its plan failure; `tracing_mode` and
/// ListTargets read it back by this prefix).
pub const OVER_BUDGET: &str = "over the tracing budget";

impl super::Agent {
    /// Each sample interval: prices every traced process's calls; a process over the budget
    /// twice in a row has its container's records saved as evidence, then stops being traced
    /// (not tried again until it is started by hand or comes back). Processes a person started
    /// by hand (StartTracing by pid, pod or container) are measured, never stopped: like
    /// StopTracing over escalation, a person's choice wins over the policy.
    pub(super) fn review_budget(&mut self) {
        let counts: HashMap<u32, CallCounts> = self
            .tracer
            .call_counts()
            .into_iter()
            .map(|(pid, (allocations, frees))| (pid, CallCounts { allocations, frees }))
            .collect();
        let over = self.budget.review(Instant::now(), &counts);
        for (pid, cost) in over {
            if self.started_by_hand(pid) {
                continue;
            }
            let budget = self.budget.policy().max_core_share * 100.0;
            let reason = format!(
                "{OVER_BUDGET}: {} against {budget:.1}% ([budget] max_core_percent)",
                cost.describe()
            );
            tracing::warn!(
                pid,
                reason,
                "tracing stops; its records are saved as evidence"
            );
            let found = self.view.processes.get(&pid).and_then(|p| {
                let pod = self.view.pods.get(&p.pod_uid)?;
                Some((pod.clone(), p.container_id.clone()))
            });
            let trigger = crate::evidence::model::Trigger::OverBudget {
                pid,
                cost: cost.describe(),
            };
            match &found {
                Some((pod, container)) => {
                    let _ = self.capture(trigger, Some(pod), Some(container));
                }
                None => {
                    let _ = self.capture(trigger, None, None);
                }
            }
            self.plan.fail(pid, reason);
            self.plan.forget_pid(pid);
            self.untrace(pid);
            self.over_budget += 1;
        }
    }

    /// Whether a person started tracing this process (by pid, or its pod or container).
    fn started_by_hand(&self, pid: u32) -> bool {
        if self.plan.is_explicit(pid) {
            return true;
        }
        self.view.processes.get(&pid).is_some_and(|p| {
            self.view
                .pods
                .get(&p.pod_uid)
                .and_then(|pod| Some((pod, pod.containers.get(&p.container_id)?)))
                .is_some_and(|(pod, container)| self.plan.started_by_hand(pod, container))
        })
    }

    /// What tracing costs a process now, when measured.
    pub(super) fn tracing_cost(&self, pid: u32) -> Option<MeasuredCost> {
        self.budget.cost(pid)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn budget(enabled: bool) -> Budget {
        Budget::new(
            BudgetPolicy {
                enabled,
                max_core_share: 0.05,
            },
            ProbeCost {
                per_allocation_ns: 1000.0,
                per_free_ns: 500.0,
            },
        )
    }

    fn counts(pairs: u64) -> CallCounts {
        CallCounts {
            allocations: pairs,
            frees: pairs,
        }
    }

    #[test]
    fn a_hot_process_is_over_after_two_reviews_with_its_measured_cost() {
        let mut b = budget(true);
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let review = |b: &mut Budget, at: u32, hot: u64, quiet: u64| {
            b.review(
                start + second * at,
                &HashMap::from([(1, counts(hot)), (2, counts(quiet))]),
            )
        };
        assert!(review(&mut b, 0, 0, 0).is_empty(), "nothing to compare yet");
        // 100,000 pairs/s: 100,000 × 1.5 µs = 15% of a core; 1,000 pairs/s: 0.15%.
        assert!(review(&mut b, 1, 100_000, 1_000).is_empty(), "one burst");
        let over = review(&mut b, 2, 200_000, 2_000);
        assert_eq!(over.len(), 1);
        let (pid, cost) = over[0];
        assert_eq!(pid, 1);
        assert!((cost.core_share - 0.15).abs() < 1e-9, "{cost:?}");
        assert_eq!(
            cost.describe(),
            "15.0% of a core (100000 allocations/s, 100000 frees/s)"
        );
        let quiet = b.cost(2).expect("measured");
        assert!((quiet.core_share - 0.0015).abs() < 1e-9);
    }

    #[test]
    fn a_burst_then_calm_is_not_over_and_a_disabled_budget_only_measures() {
        let mut b = budget(true);
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let _ = b.review(start, &HashMap::from([(1, counts(0))]));
        let _ = b.review(start + second, &HashMap::from([(1, counts(100_000))]));
        assert!(
            b.review(start + second * 2, &HashMap::from([(1, counts(100_100))]))
                .is_empty()
        );
        let mut off = budget(false);
        let _ = off.review(start, &HashMap::from([(1, counts(0))]));
        let _ = off.review(start + second, &HashMap::from([(1, counts(100_000))]));
        assert!(
            off.review(start + second * 2, &HashMap::from([(1, counts(200_000))]))
                .is_empty()
        );
        assert!(off.cost(1).expect("measured").core_share > 0.1);
    }
}
