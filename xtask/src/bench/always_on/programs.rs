//! The fault programs' own run time, from the kernel's BPF run-time stats (turned on for one
//! touching run per mode and restored after), and which fault programs are loaded: another
//! agent's or test's programs on the same machine disturb the timed runs.

use std::{collections::HashSet, io::Write as _, path::Path};

use anyhow::{Context as _, bail};

use super::{
    COST_NAMESPACE, Mode, PAGE_BYTES, TOUCH_MIB,
    agent::Binaries,
    json,
    node::{FakePod, LogRoots},
};
use crate::bench::start_paused;

/// One fault program's runs during a touching run (every task's faults, not only the
/// workload's) and its mean run time.
pub(super) struct ProgramCost {
    pub(super) name: String,
    pub(super) runs: f64,
    pub(super) ns_per_run: f64,
}

/// What each fault program of the agent cost during a touching run, with the pod watched and
/// excluded, from the kernel's BPF run-time stats (on for these runs only).
pub(super) struct ProgramCosts {
    pub(super) modes: Vec<(Mode, Vec<ProgramCost>)>,
}

/// All the programs' run time over the workload's faults: an upper bound of their cost per
/// fault of the workload, since the faults of every other task count too.
pub(super) fn ns_per_fault(programs: &[ProgramCost]) -> f64 {
    let faults = (TOUCH_MIB << 20) as f64 / PAGE_BYTES as f64;
    programs.iter().map(|p| p.runs * p.ns_per_run).sum::<f64>() / faults
}

/// Turns the kernel's BPF run-time stats on, and back to what they were on drop.
struct BpfStats {
    before: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> anyhow::Result<Self> {
        let before = std::fs::read_to_string(BPF_STATS)
            .context("read kernel.bpf_stats_enabled")?
            .trim()
            .to_owned();
        std::fs::write(BPF_STATS, "1").context("set kernel.bpf_stats_enabled=1")?;
        Ok(Self { before })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.before);
    }
}

/// A loaded program named fault_*, with its run-time stats.
struct FaultProgram {
    id: u64,
    name: String,
    runs: f64,
    run_time_ns: f64,
}

/// Every loaded program named fault_* (`bpftool -j prog show`).
fn fault_programs() -> anyhow::Result<Vec<FaultProgram>> {
    let output = std::process::Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .context("run bpftool (Debian's bpftool)")?;
    if !output.status.success() {
        bail!("bpftool prog show failed");
    }
    let programs =
        json::parse(&String::from_utf8_lossy(&output.stdout)).context("bpftool -j prog show")?;
    Ok(programs
        .items()
        .iter()
        .filter_map(|p| {
            let name = p.get("name").as_str()?;
            name.starts_with("fault_").then(|| FaultProgram {
                id: p.get("id").as_f64().unwrap_or(0.0) as u64,
                name: name.to_owned(),
                runs: p.get("run_cnt").as_f64().unwrap_or(0.0),
                run_time_ns: p.get("run_time_ns").as_f64().unwrap_or(0.0),
            })
        })
        .collect())
}

/// Fault programs loaded before this suite starts an agent: another agent's.
pub(super) fn foreign_fault_programs() -> anyhow::Result<Vec<u64>> {
    Ok(fault_programs()?.into_iter().map(|p| p.id).collect())
}

pub(super) fn fault_program_costs(
    binaries: &Binaries,
    logs: &LogRoots,
    touch: &Path,
) -> anyhow::Result<ProgramCosts> {
    let _stats = BpfStats::enable()?;
    let pod = FakePod::create(logs, COST_NAMESPACE, "stats-0")?;
    let mut modes = Vec::new();
    for mode in [Mode::Watched, Mode::Excluded] {
        let others: HashSet<u64> = foreign_fault_programs()?.into_iter().collect();
        let agent = mode.start(binaries, logs)?;
        let ours: HashSet<u64> = foreign_fault_programs()?
            .into_iter()
            .filter(|id| !others.contains(id))
            .collect();
        let mut workload = start_paused(touch, &[TOUCH_MIB.to_string()])?;
        let pid = workload.child.id();
        pod.place(pid)?;
        if let Some(agent) = &agent {
            if mode == Mode::Watched {
                agent.wait_profiled(pid)?;
            } else {
                agent.wait_tracing(&pod, "excluded")?;
            }
        }
        let mine = || -> anyhow::Result<Vec<FaultProgram>> {
            Ok(fault_programs()?
                .into_iter()
                .filter(|p| ours.contains(&p.id))
                .collect())
        };
        let before = mine()?;
        let mut stdin = workload.child.stdin.take().context("stdin")?;
        writeln!(stdin, "go")?;
        let _ns = workload.lines.next().context("no time")??;
        let after = mine()?;
        let _ = writeln!(stdin, "exit");
        let _ = workload.child.wait();
        let programs = after
            .into_iter()
            .filter_map(|p| {
                let was = before.iter().find(|b| b.id == p.id)?;
                let runs = p.runs - was.runs;
                Some(ProgramCost {
                    name: p.name,
                    runs,
                    ns_per_run: (p.run_time_ns - was.run_time_ns) / runs.max(1.0),
                })
            })
            .collect();
        drop(agent);
        modes.push((mode, programs));
    }
    Ok(ProgramCosts { modes })
}
