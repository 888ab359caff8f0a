//! The overhead budget per traced process: what tracing costs each process while it runs (the
//! probe hits its programs counted, each priced at what that kind of hit costs on this node),
//! as a share of one core. A process over the budget for two reviews in a row is switched to
//! byte sampling, which skips the record work and, with uprobe sessions, the return probe of
//! every unsampled malloc; over again, it stops being traced, its records saved as evidence
//! first. The reason and the measured cost are reported. Bookkeeping only: the agent reads the
//! counts and acts.

use std::{collections::HashMap, time::Instant};

pub use crate::bpf::probe_cost::ProbeCost;
use crate::{
    bpf::program_runs::{ProgramRuns, RUN_TIME_EVERY, RUN_TIME_WINDOW, RunTimeStats},
    tracer::ProbeHits,
};

/// How much tracing may cost a process.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetPolicy {
    /// Off: a process stays traced whatever it costs.
    pub enabled: bool,
    /// Share of one core tracing may take from a process (0.05: 5%).
    pub max_core_share: f64,
    /// The sampling mean a process over the budget is switched to (0: no sampling step, it
    /// stops being traced at once).
    pub sample_bytes: u64,
}

/// The sampling mean the budget switches to by default: tcmalloc's and Go's heap-profile
/// default, where a leak of a few MiB is named with its bytes within a few percent.
pub const DEFAULT_BUDGET_SAMPLE_BYTES: u64 = 512 * 1024;

impl Default for BudgetPolicy {
    /// 5% of a core: about 33,000 malloc/free pairs a second at this node's measured cost of
    /// 1.5 µs a pair. A service doing a few thousand allocations a second stays exact; a hot
    /// allocation loop, where tracing would multiply the run time, does not.
    fn default() -> Self {
        Self {
            enabled: true,
            max_core_share: 0.05,
            sample_bytes: DEFAULT_BUDGET_SAMPLE_BYTES,
        }
    }
}

/// What tracing costs one process, measured over the last review interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeasuredCost {
    /// Share of one core.
    pub core_share: f64,
    /// Allocator calls per second (each an entry probe hit).
    pub allocations_per_second: f64,
    /// Frees per second.
    pub frees_per_second: f64,
    /// Its sampling mean while measured (0: exact).
    pub sample_bytes: u64,
}

impl MeasuredCost {
    /// `12.0% of a core (80000 allocations/s, 80000 frees/s)`, and `, sampled every 524288
    /// bytes` when it was sampled.
    pub fn describe(&self) -> String {
        let sampled = if self.sample_bytes > 0 {
            format!(", sampled every {} bytes", self.sample_bytes)
        } else {
            String::new()
        };
        format!(
            "{:.1}% of a core ({:.0} allocations/s, {:.0} frees/s{sampled})",
            self.core_share * 100.0,
            self.allocations_per_second,
            self.frees_per_second
        )
    }
}

/// What the budget decided for a process at a review.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BudgetAction {
    /// Over the budget while exact (or sampled more finely): switch it to sampling with this
    /// mean.
    Sample {
        /// The process.
        pid: u32,
        /// What it cost.
        cost: MeasuredCost,
        /// The mean to sample with.
        sample_bytes: u64,
    },
    /// Over the budget while sampled: stop tracing it.
    Stop {
        /// The process.
        pid: u32,
        /// What it cost.
        cost: MeasuredCost,
    },
}

struct Tracked {
    hits: ProbeHits,
    at: Instant,
    cost: Option<MeasuredCost>,
    /// Reviews in a row over the budget.
    over: u32,
}

/// Measuring the tracing programs' run time: when next, or the window in progress (see
/// [`crate::bpf::program_runs`]).
pub(super) enum RunTimeMeter {
    /// Statistics off until then.
    Idle {
        /// When the next window may open (while something is traced).
        next_at: Instant,
    },
    /// Statistics on since `since`; the counters then.
    Measuring {
        _stats: RunTimeStats,
        since: Instant,
        before: ProgramRuns,
    },
    /// No real programs, or the kernel refused: the development machines' figures stay.
    Unavailable,
}

impl RunTimeMeter {
    /// The first window opens as soon as something is traced.
    pub(super) fn new() -> Self {
        Self::Idle {
            next_at: Instant::now(),
        }
    }
}

/// The budget's view of every traced process.
pub struct Budget {
    policy: BudgetPolicy,
    probe_cost: ProbeCost,
    /// Whether an unsampled malloc skips its return probe (uprobe sessions).
    sessions: bool,
    processes: HashMap<u32, Tracked>,
    /// Why each process the budget switched to sampling was switched.
    sampling_reasons: HashMap<u32, String>,
}

impl Budget {
    /// Nothing measured yet.
    pub fn new(policy: BudgetPolicy, probe_cost: ProbeCost, sessions: bool) -> Self {
        Self {
            policy,
            probe_cost,
            sessions,
            processes: HashMap::new(),
            sampling_reasons: HashMap::new(),
        }
    }

    /// Why the budget switched a process to sampling, if it did.
    pub fn sampling_reason(&self, pid: u32) -> Option<&str> {
        self.sampling_reasons.get(&pid).map(String::as_str)
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

    /// Takes the tracing programs' run time measured between `before` and `after` into the
    /// price of each kind of hit (a kind that ran too little keeps its figure); returns the
    /// price now.
    pub fn measured_programs(&mut self, before: &ProgramRuns, after: &ProgramRuns) -> ProbeCost {
        let cost = &mut self.probe_cost;
        for (figure, now, then) in [
            (&mut cost.entry_program_ns, after.entry, before.entry),
            (&mut cost.return_program_ns, after.ret, before.ret),
            (&mut cost.free_program_ns, after.free, before.free),
        ] {
            if let Some(mean) = now.mean_ns_since(&then) {
                *figure = mean;
            }
        }
        *cost
    }

    /// Notes why a process was switched to sampling.
    pub fn note_sampled(&mut self, pid: u32, reason: String) {
        let _ = self.sampling_reasons.insert(pid, reason);
    }

    /// What `hits` (taken over `seconds`) cost, as a share of one core.
    fn price(&self, hits: ProbeHits, seconds: f64) -> MeasuredCost {
        let entries = hits.entries as f64 / seconds;
        let frees = hits.frees as f64 / seconds;
        // Every exact call returns through a probe; sampled, with sessions, an unsampled malloc
        // does not (other functions' returns still trap, so this is a floor).
        let returns = if hits.sample_bytes > 0 && self.sessions {
            hits.recorded as f64 / seconds
        } else {
            entries
        };
        MeasuredCost {
            core_share: (entries * self.probe_cost.per_entry_ns()
                + returns * self.probe_cost.per_return_ns()
                + frees * self.probe_cost.per_free_ns())
                / 1e9,
            allocations_per_second: entries,
            frees_per_second: frees,
            sample_bytes: hits.sample_bytes,
        }
    }

    /// Takes each traced process's running probe hits at `now` (processes not listed are
    /// forgotten) and returns what to do with those over the budget at this review and the one
    /// before (a single burst is not enough): sample the exact ones, stop the sampled ones.
    pub fn review(&mut self, now: Instant, hits: &HashMap<u32, ProbeHits>) -> Vec<BudgetAction> {
        self.processes.retain(|pid, _| hits.contains_key(pid));
        // A process armed again at another mean (after an exec) was not switched by the budget.
        self.sampling_reasons.retain(|pid, _| {
            hits.get(pid)
                .is_some_and(|h| h.sample_bytes == self.policy.sample_bytes)
        });
        let mut actions = Vec::new();
        for (&pid, &now_hits) in hits {
            let Some(tracked) = self.processes.get(&pid) else {
                let _ = self.processes.insert(
                    pid,
                    Tracked {
                        hits: now_hits,
                        at: now,
                        cost: None,
                        over: 0,
                    },
                );
                continue;
            };
            let seconds = now.duration_since(tracked.at).as_secs_f64();
            let before = tracked.hits;
            // Counters restart when a process is armed again (after an exec), and a switch of
            // mode starts a new measurement: compare like with like only.
            let restarted = now_hits.entries < before.entries
                || now_hits.frees < before.frees
                || now_hits.sample_bytes != before.sample_bytes;
            if seconds <= 0.0 || restarted {
                let tracked = self.processes.get_mut(&pid).expect("present");
                tracked.hits = now_hits;
                tracked.at = now;
                tracked.over = 0;
                continue;
            }
            let delta = ProbeHits {
                entries: now_hits.entries - before.entries,
                frees: now_hits.frees - before.frees,
                recorded: now_hits.recorded.saturating_sub(before.recorded),
                sample_bytes: now_hits.sample_bytes,
            };
            let cost = self.price(delta, seconds);
            let over_budget = self.policy.enabled && cost.core_share > self.policy.max_core_share;
            let tracked = self.processes.get_mut(&pid).expect("present");
            tracked.hits = now_hits;
            tracked.at = now;
            tracked.cost = Some(cost);
            if !over_budget {
                tracked.over = 0;
                continue;
            }
            tracked.over += 1;
            if tracked.over < 2 {
                continue;
            }
            tracked.over = 0;
            if now_hits.sample_bytes < self.policy.sample_bytes {
                actions.push(BudgetAction::Sample {
                    pid,
                    cost,
                    sample_bytes: self.policy.sample_bytes,
                });
            } else {
                actions.push(BudgetAction::Stop { pid, cost });
            }
        }
        actions.sort_by_key(|action| match action {
            BudgetAction::Sample { pid, .. } | BudgetAction::Stop { pid, .. } => *pid,
        });
        actions
    }
}

/// Why a process stopped being traced for the budget (its plan failure; `tracing_mode` and
/// ListTargets read it back by this prefix).
pub const OVER_BUDGET: &str = "over the tracing budget";

impl super::Agent {
    /// Each sample interval: prices every traced process's probe hits. A process over the
    /// budget twice in a row is switched to sampling (its exact records so far are kept, with
    /// their exact weights); over again while sampled, its container's records are saved as
    /// evidence and it stops being traced (not tried again until it is started by hand or comes
    /// back). Processes a person started by hand (StartTracing by pid, pod or container) are
    /// measured, never changed: like StopTracing over escalation, a person's choice wins over
    /// the policy.
    pub(super) fn review_budget(&mut self) {
        let hits = self.tracer.probe_hits();
        let actions = self.budget.review(Instant::now(), &hits);
        let budget = self.budget.policy().max_core_share * 100.0;
        for action in actions {
            match action {
                BudgetAction::Sample {
                    pid,
                    cost,
                    sample_bytes,
                } => {
                    if self.started_by_hand(pid) {
                        continue;
                    }
                    // Its exact records so far, as evidence before anything is estimated.
                    self.capture_for_process(
                        pid,
                        crate::evidence::model::Trigger::BudgetSampled {
                            pid,
                            cost: cost.describe(),
                            sample_bytes,
                        },
                    );
                    match self.tracer.sample(pid, sample_bytes) {
                        Ok(()) => {
                            let reason = format!(
                                "{OVER_BUDGET}: {} against {budget:.1}% ([budget] \
                                 max_core_percent): sampled every {sample_bytes} bytes since",
                                cost.describe()
                            );
                            tracing::warn!(
                                pid,
                                reason,
                                "tracing switches to sampling; what it recorded exactly is kept"
                            );
                            self.budget.note_sampled(pid, reason);
                            self.budget_sampled += 1;
                        }
                        Err(error) => {
                            tracing::warn!(
                                pid,
                                error,
                                "cannot switch to sampling; stopping instead"
                            );
                            self.stop_over_budget(pid, cost);
                        }
                    }
                }
                BudgetAction::Stop { pid, cost } => {
                    if self.started_by_hand(pid) {
                        continue;
                    }
                    self.stop_over_budget(pid, cost);
                }
            }
        }
    }

    /// At each poll: opens a window of the kernel's run-time statistics when one is due and
    /// something is traced, and closes it after [`RUN_TIME_WINDOW`], pricing probe hits with
    /// what the programs measured.
    pub(super) fn meter_program_run_time(&mut self) {
        let now = Instant::now();
        match &self.run_time_meter {
            RunTimeMeter::Unavailable => {}
            RunTimeMeter::Idle { next_at } => {
                if now < *next_at || self.tracer.pids().is_empty() {
                    return;
                }
                let Some(before) = self.tracer.program_runs() else {
                    self.run_time_meter = RunTimeMeter::Unavailable;
                    return;
                };
                self.run_time_meter = match RunTimeStats::enable() {
                    Ok(stats) => RunTimeMeter::Measuring {
                        _stats: stats,
                        since: now,
                        before,
                    },
                    Err(error) => {
                        tracing::warn!(
                            error,
                            "the budget prices the tracing programs at the development machines' figures"
                        );
                        RunTimeMeter::Unavailable
                    }
                };
            }
            RunTimeMeter::Measuring { since, before, .. } => {
                if now.duration_since(*since) < RUN_TIME_WINDOW {
                    return;
                }
                let before = *before;
                let after = self.tracer.program_runs();
                // Statistics off again (the descriptor closes here).
                self.run_time_meter = RunTimeMeter::Idle {
                    next_at: now + RUN_TIME_EVERY,
                };
                if let Some(after) = after {
                    let cost = self.budget.measured_programs(&before, &after);
                    tracing::info!(
                        trap_ns = cost.trap_ns.round(),
                        entry_program_ns = cost.entry_program_ns.round(),
                        return_program_ns = cost.return_program_ns.round(),
                        free_program_ns = cost.free_program_ns.round(),
                        entry_runs = after.entry.runs.saturating_sub(before.entry.runs),
                        free_runs = after.free.runs.saturating_sub(before.free.runs),
                        "measured the tracing programs' run time"
                    );
                }
            }
        }
    }

    /// Saves a process's container's records as evidence, then stops tracing it.
    fn stop_over_budget(&mut self, pid: u32, cost: MeasuredCost) {
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
        self.capture_for_process(
            pid,
            crate::evidence::model::Trigger::OverBudget {
                pid,
                cost: cost.describe(),
            },
        );
        self.plan.fail(pid, reason);
        self.plan.forget_pid(pid);
        self.untrace(pid);
        self.over_budget += 1;
    }

    /// Saves the records of a process's container (of the process alone outside pods).
    fn capture_for_process(&mut self, pid: u32, trigger: crate::evidence::model::Trigger) {
        let found = self.view.processes.get(&pid).and_then(|p| {
            let pod = self.view.pods.get(&p.pod_uid)?;
            Some((pod.clone(), p.container_id.clone()))
        });
        match &found {
            Some((pod, container)) => {
                let _ = self.capture(trigger, Some(pod), Some(container));
            }
            None => {
                let _ = self.capture(trigger, None, None);
            }
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

    const SAMPLE: u64 = 512 * 1024;

    fn budget(enabled: bool) -> Budget {
        Budget::new(
            BudgetPolicy {
                enabled,
                max_core_share: 0.05,
                sample_bytes: SAMPLE,
            },
            ProbeCost {
                trap_ns: 300.0,
                entry_program_ns: 100.0,
                return_program_ns: 300.0,
                free_program_ns: 200.0,
            },
            true,
        )
    }

    /// `pairs` malloc/free pairs so far, all recorded (exact) or one in a thousand (sampled).
    fn hits(pairs: u64, sample_bytes: u64) -> ProbeHits {
        ProbeHits {
            entries: pairs,
            frees: pairs,
            recorded: if sample_bytes == 0 {
                pairs
            } else {
                pairs / 1000
            },
            sample_bytes,
        }
    }

    fn at(seconds: u32) -> Instant {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *START.get_or_init(Instant::now) + Duration::from_secs(1) * seconds
    }

    #[test]
    fn a_hot_process_is_sampled_after_two_reviews_then_stopped_if_still_over() {
        let mut b = budget(true);
        let review = |b: &mut Budget, second: u32, hot: ProbeHits, quiet: u64| {
            b.review(at(second), &HashMap::from([(1, hot), (2, hits(quiet, 0))]))
        };
        assert!(
            review(&mut b, 0, hits(0, 0), 0).is_empty(),
            "nothing to compare yet"
        );
        // 100,000 pairs/s exact: 100,000 × 1.5 µs = 15% of a core; 1,000 pairs/s: 0.15%.
        assert!(
            review(&mut b, 1, hits(100_000, 0), 1_000).is_empty(),
            "one burst"
        );
        let actions = review(&mut b, 2, hits(200_000, 0), 2_000);
        let [
            BudgetAction::Sample {
                pid: 1,
                cost,
                sample_bytes: SAMPLE,
            },
        ] = actions[..]
        else {
            panic!("{actions:?}");
        };
        assert!((cost.core_share - 0.15).abs() < 1e-9, "{cost:?}");
        assert_eq!(
            cost.describe(),
            "15.0% of a core (100000 allocations/s, 100000 frees/s)"
        );
        let quiet = b.cost(2).expect("measured");
        assert!((quiet.core_share - 0.0015).abs() < 1e-9);
        // Sampled from here: the switch starts a new measurement.
        assert!(review(&mut b, 3, hits(300_000, SAMPLE), 3_000).is_empty());
        // Still 100,000 pairs/s, now without most returns: 100,000 × (400 + 500) ns + 100
        // returns × 600 ns = 9.006%, over 5% twice: stopped.
        assert!(review(&mut b, 4, hits(400_000, SAMPLE), 4_000).is_empty());
        let actions = review(&mut b, 5, hits(500_000, SAMPLE), 5_000);
        let [BudgetAction::Stop { pid: 1, cost }] = actions[..] else {
            panic!("{actions:?}");
        };
        assert!((cost.core_share - 0.09006).abs() < 1e-9, "{cost:?}");
        assert_eq!(
            cost.describe(),
            "9.0% of a core (100000 allocations/s, 100000 frees/s, sampled every 524288 bytes)"
        );
    }

    #[test]
    fn sampling_that_brings_a_process_under_the_budget_keeps_it_traced() {
        let mut b = budget(true);
        // 40,000 pairs/s: 6% of a core exact, 3.6% sampled.
        let _ = b.review(at(0), &HashMap::from([(1, hits(0, 0))]));
        let _ = b.review(at(1), &HashMap::from([(1, hits(40_000, 0))]));
        let mut total = 80_000;
        let actions = b.review(at(2), &HashMap::from([(1, hits(total, 0))]));
        assert!(
            matches!(actions[..], [BudgetAction::Sample { pid: 1, .. }]),
            "{actions:?}"
        );
        for second in 3..10 {
            total += 40_000;
            assert!(
                b.review(at(second), &HashMap::from([(1, hits(total, SAMPLE))]))
                    .is_empty()
            );
        }
        let cost = b.cost(1).expect("measured");
        assert!((cost.core_share - 0.036).abs() < 1e-3, "{cost:?}");
    }

    #[test]
    fn without_a_sampling_step_or_when_already_sampled_coarser_it_stops_at_once() {
        let mut b = Budget::new(
            BudgetPolicy {
                sample_bytes: 0,
                ..BudgetPolicy::default()
            },
            ProbeCost::MEASURED_HERE,
            true,
        );
        let mut total = 0;
        let mut last = Vec::new();
        for second in 0..3 {
            last = b.review(at(second), &HashMap::from([(1, hits(total, 0))]));
            total += 200_000;
        }
        assert!(
            matches!(last[..], [BudgetAction::Stop { pid: 1, .. }]),
            "{last:?}"
        );
    }

    #[test]
    fn a_burst_then_calm_is_not_over_and_a_disabled_budget_only_measures() {
        let mut b = budget(true);
        let _ = b.review(at(0), &HashMap::from([(1, hits(0, 0))]));
        let _ = b.review(at(1), &HashMap::from([(1, hits(100_000, 0))]));
        assert!(
            b.review(at(2), &HashMap::from([(1, hits(100_100, 0))]))
                .is_empty()
        );
        let mut off = budget(false);
        let _ = off.review(at(0), &HashMap::from([(1, hits(0, 0))]));
        let _ = off.review(at(1), &HashMap::from([(1, hits(100_000, 0))]));
        assert!(
            off.review(at(2), &HashMap::from([(1, hits(200_000, 0))]))
                .is_empty()
        );
        assert!(off.cost(1).expect("measured").core_share > 0.1);
    }

    #[test]
    fn counters_that_restart_after_an_exec_start_a_new_measurement() {
        let mut b = budget(true);
        let _ = b.review(at(0), &HashMap::from([(1, hits(0, 0))]));
        let _ = b.review(at(1), &HashMap::from([(1, hits(200_000, 0))]));
        // Armed again: the counters start over; not a negative rate, not a second review.
        assert!(
            b.review(at(2), &HashMap::from([(1, hits(10, 0))]))
                .is_empty()
        );
        assert!(
            b.review(at(3), &HashMap::from([(1, hits(200_010, 0))]))
                .is_empty(),
            "only one review over since the restart"
        );
    }
}
