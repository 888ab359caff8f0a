//! The tracing programs' own run time, from the kernel's BPF statistics: what the overhead
//! budget adds to the trap cost measured at startup to price each kind of probe hit.
//!
//! The kernel counts runs and run time per program only while statistics are on
//! (`BPF_ENABLE_STATS`, held by a file descriptor), and while they are on every BPF program on
//! the node pays two clock reads per run. So the agent turns them on for a short window now and
//! then ([`RUN_TIME_WINDOW`] every [`RUN_TIME_EVERY`], only while it traces something), reads
//! each program's counters from its fdinfo before and after, and closes the descriptor.

use std::{os::fd::OwnedFd, time::Duration};

use crate::attach::ALLOCATOR_FUNCTIONS;

/// How long statistics stay on for one measurement.
pub const RUN_TIME_WINDOW: Duration = Duration::from_secs(1);
/// How often the programs' run time is measured again.
pub const RUN_TIME_EVERY: Duration = Duration::from_secs(60);
/// Fewer runs of a kind than this in a window leave its figure as it was (too few to average).
pub const MIN_RUNS: u64 = 100;

/// Runs of one kind of program and their total run time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunTotals {
    /// Runs.
    pub runs: u64,
    /// Run time, ns.
    pub run_time_ns: u64,
}

impl RunTotals {
    /// The mean run time since `before`, when there were enough runs.
    pub fn mean_ns_since(&self, before: &Self) -> Option<f64> {
        let runs = self.runs.checked_sub(before.runs)?;
        let time = self.run_time_ns.checked_sub(before.run_time_ns)?;
        (runs >= MIN_RUNS).then(|| time as f64 / runs as f64)
    }

    fn add(&mut self, other: Self) {
        self.runs += other.runs;
        self.run_time_ns += other.run_time_ns;
    }
}

/// The tracing programs' counters, by kind of probe hit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramRuns {
    /// Allocator entries (and half of malloc's session program's runs).
    pub entry: RunTotals,
    /// Allocation returns (and the other half of the session program's runs).
    pub ret: RunTotals,
    /// Frees (free, operator delete, munmap).
    pub free: RunTotals,
}

/// Statistics kept on while this lives.
#[derive(Debug)]
pub struct RunTimeStats {
    _fd: OwnedFd,
}

impl RunTimeStats {
    /// Turns the kernel's run-time statistics on.
    pub fn enable() -> Result<Self, String> {
        aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map(|fd| Self { _fd: fd })
            .map_err(|e| format!("cannot turn the kernel's BPF run-time statistics on: {e}"))
    }
}

/// `run_time_ns` and `run_cnt` of a program, from its descriptor's fdinfo.
fn read_fdinfo(fd: i32) -> Option<RunTotals> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some(RunTotals {
        run_time_ns: field("run_time_ns:")?,
        runs: field("run_cnt:")?,
    })
}

impl super::Probes {
    /// Every loaded tracing program's counters, summed by kind of hit.
    pub fn program_runs(&self) -> ProgramRuns {
        let mut totals = ProgramRuns::default();
        let mut seen: Vec<&str> = Vec::new();
        for function in ALLOCATOR_FUNCTIONS {
            let programs = std::iter::once((function.entry, function.exit.is_some()))
                .chain(function.exit.map(|exit| (exit, false)));
            for (name, is_entry_with_return) in programs {
                if seen.contains(&name) {
                    continue;
                }
                seen.push(name);
                let Some(runs) = self.uprobe_fd(name).and_then(read_fdinfo) else {
                    continue;
                };
                let kind = if Some(name) == function.exit {
                    &mut totals.ret
                } else if is_entry_with_return {
                    &mut totals.entry
                } else {
                    &mut totals.free
                };
                kind.add(runs);
            }
        }
        // malloc's session program runs at its entry and at its return: its runs and time go
        // half to each kind (its entry run alone, when the call is not sampled, is cheaper than
        // this mean, so a sampled process is priced a little high, never low).
        if let Some(runs) = self
            .malloc_session
            .as_ref()
            .and_then(|session| read_fdinfo(session.raw_fd()))
        {
            let half = RunTotals {
                runs: runs.runs / 2,
                run_time_ns: runs.run_time_ns / 2,
            };
            totals.entry.add(half);
            totals.ret.add(half);
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mean_needs_enough_runs_and_counters_that_went_forward() {
        let before = RunTotals {
            runs: 1_000,
            run_time_ns: 100_000,
        };
        let after = RunTotals {
            runs: 1_200,
            run_time_ns: 130_000,
        };
        assert_eq!(after.mean_ns_since(&before), Some(150.0));
        let few = RunTotals {
            runs: 1_050,
            run_time_ns: 110_000,
        };
        assert_eq!(few.mean_ns_since(&before), None);
        assert_eq!(before.mean_ns_since(&after), None);
    }
}
