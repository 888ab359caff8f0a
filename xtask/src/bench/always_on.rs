//! The always-on suite: what the agent's watching of every pod (trend sampling, the page-fault
//! growth profile, escalation) costs and how soon it acts, side by side in one run:
//! a flat malloc/free loop and a process touching new memory page by page, without the agent,
//! with it watching their pod, and with their pod excluded (interleaved rounds, medians); the
//! agent's CPU and memory watching 200 pods of 1,000 processes; and, at the default settings,
//! the time from a leak's start to its container classed growing and traced exactly.

mod agent;
pub(super) mod budget;
mod json;
mod node;
mod programs;

use std::{
    collections::HashSet,
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use self::{
    agent::{Agent, Binaries, container},
    json::Value,
    node::{Children, FakePod, LogRoots, cpu_ticks, status_kib, wait_until},
    programs::{ProgramCosts, fault_program_costs, foreign_fault_programs, ns_per_fault},
};
use super::{BenchArgs, build_daemon, compile, median, start_paused, today, write_section};
use crate::{run, workspace_root};

/// malloc/free pairs per churn run (about 0.3 s untraced).
const CHURN_PAIRS: u64 = 20_000_000;
/// Churn runs per mode and round.
const CHURN_RUNS: usize = 3;
/// Memory touched per run, page by page.
const TOUCH_MIB: u64 = 2048;
const PAGE_BYTES: u64 = 4096;
/// The namespace of the pod the cost runs use; excluded in the "excluded" mode.
const COST_NAMESPACE: &str = "bench-cost";
/// The config file's `[watch]` as shipped (deploy/base/config.toml); everything else default.
const WATCH_DEFAULTS: &str = "[watch]\nexclude_namespaces = [\"kube-system\", \"leak-tracer\"]\n";
/// The same, with the cost pod's namespace left out of watching.
const WATCH_EXCLUDING: &str =
    "[watch]\nexclude_namespaces = [\"kube-system\", \"leak-tracer\", \"bench-cost\"]\n";
/// The fleet: pods and processes per pod the footprint run watches.
const FLEET_PODS: usize = 200;
const FLEET_PROCESSES_PER_POD: usize = 5;
/// The leak: bytes every step, and the memory limit of its container.
const LEAK_BYTES: u64 = 10 << 10;
const LEAK_STEP_MS: u64 = 100;
const LEAK_LIMIT_BYTES: u64 = 256 << 20;
/// Shorter growth settings for `--quick` (the defaults are 10 s samples, a 5 min window).
const QUICK_GROWTH: [&str; 4] = ["--sample-interval", "1s", "--growth-window", "30s"];

/// What runs beside the workload.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    NoAgent,
    Watched,
    Excluded,
}

const MODES: [Mode; 3] = [Mode::NoAgent, Mode::Watched, Mode::Excluded];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::NoAgent => "no agent",
            Self::Watched => "agent, pod watched",
            Self::Excluded => "agent, pod excluded",
        }
    }

    fn start(self, binaries: &Binaries, logs: &LogRoots) -> anyhow::Result<Option<Agent>> {
        Ok(match self {
            Self::NoAgent => None,
            Self::Watched => Some(Agent::start(binaries, logs, WATCH_DEFAULTS, &[])?),
            Self::Excluded => Some(Agent::start(binaries, logs, WATCH_EXCLUDING, &[])?),
        })
    }
}

pub(super) fn always_on(args: &BenchArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let binaries = match &args.prebuilt {
        // Another build's binaries (an earlier commit's, to compare with): nothing is built.
        Some(dir) => Binaries {
            daemon: dir.join("tracer-daemon"),
            tracerctl: dir.join("tracerctl"),
        },
        None => {
            let daemon = build_daemon()?;
            run(crate::cargo().args(["build", "--release", "--package", "tracerctl"]))?;
            Binaries {
                daemon,
                tracerctl: root.join("target/release/tracerctl"),
            }
        }
    };
    let churn = compile(&root, "churn")?;
    let touch = compile(&root, "touch_pages")?;
    let leak = compile(&root, "leak")?;
    let logs = LogRoots::create("always-on")?;
    let others = foreign_fault_programs()?;
    if !others.is_empty() {
        eprintln!(
            "xtask bench: warning: fault programs of another agent are loaded ({others:?}); \
             they may watch this suite's pods too"
        );
    }

    if args.agent_cpu_only {
        let footprint = footprint(&binaries, &logs, if args.quick { 20 } else { 60 })?;
        println!("{}", footprint_rows(&footprint));
        eprintln!("xtask bench: --agent-cpu-only: BENCHMARKS.md is left as it is");
        return Ok(());
    }
    let costs = costs(&binaries, &logs, &churn, &touch, args.rounds)?;
    let programs = fault_program_costs(&binaries, &logs, &touch)?;
    if args.touch_only {
        println!("{}", cost_rows(args, &costs, &programs));
        eprintln!("xtask bench: --touch-only: BENCHMARKS.md is left as it is");
        return Ok(());
    }
    let footprint = footprint(&binaries, &logs, if args.quick { 20 } else { 60 })?;
    let escalation = escalation(&binaries, &logs, &leak, args.quick)?;

    let text = section(
        args,
        &costs,
        &programs,
        &footprint,
        &escalation,
        others.len(),
    );
    println!("{text}");
    if args.quick {
        eprintln!(
            "xtask bench: --quick: BENCHMARKS.md is left as it is (its rows are at defaults)"
        );
    } else if !args.no_write {
        write_section(&root.join("BENCHMARKS.md"), "always-on", &text)?;
    }
    Ok(())
}

/// Medians per mode (in `MODES` order): ns per malloc/free pair, seconds to touch.
struct Costs {
    churn_ns: [f64; 3],
    touch_s: [f64; 3],
    /// The touching thread's CPU time, seconds (medians): the faults' own cost, which other
    /// load on the machine disturbs far less than the wall time.
    touch_cpu_s: [f64; 3],
    /// Runs during which another process's fault programs were loaded (a test suite on the
    /// same machine), and runs in all.
    disturbed: usize,
    runs: usize,
}

fn costs(
    binaries: &Binaries,
    logs: &LogRoots,
    churn: &Path,
    touch: &Path,
    rounds: usize,
) -> anyhow::Result<Costs> {
    let pod = FakePod::create(logs, COST_NAMESPACE, "hot-0")?;
    let mut churn_ns: [Vec<f64>; 3] = Default::default();
    let mut touch_s: [Vec<f64>; 3] = Default::default();
    let mut touch_cpu_s: [Vec<f64>; 3] = Default::default();
    let mut disturbed = 0;
    for round in 0..rounds {
        for i in 0..MODES.len() {
            let index = (i + round) % MODES.len();
            let mode = MODES[index];
            let before = foreign_fault_programs()?;
            let agent = mode.start(binaries, logs)?;
            let ours: HashSet<u64> = foreign_fault_programs()?
                .into_iter()
                .filter(|id| !before.contains(id))
                .collect();
            // The churn is short and its noise is of the size of what is measured: three runs.
            for _ in 0..CHURN_RUNS {
                let pairs = CHURN_PAIRS.to_string();
                let (ns, _) = run_in_pod(churn, &[pairs, "1".into()], &pod, agent.as_ref(), mode)?;
                churn_ns[index].push(ns / CHURN_PAIRS as f64);
            }
            let (ns, cpu_ns) =
                run_in_pod(touch, &[TOUCH_MIB.to_string()], &pod, agent.as_ref(), mode)?;
            touch_s[index].push(ns / 1e9);
            touch_cpu_s[index].push(cpu_ns.context("touch_pages printed no CPU time")? / 1e9);
            if let Some(agent) = &agent
                && agent.lines_with(&["escalating", COST_NAMESPACE]) > 0
            {
                bail!("the agent escalated the cost pod:\n{}", agent.log());
            }
            let foreign = !before.is_empty()
                || foreign_fault_programs()?
                    .iter()
                    .any(|id| !ours.contains(id));
            disturbed += usize::from(foreign);
            eprintln!(
                "xtask bench: always-on round {}: {:<20} churn {:>6.2} ns/pair, touch {:.3} s \
                 ({:.3} s CPU){}",
                round + 1,
                mode.name(),
                churn_ns[index].last().copied().unwrap_or(f64::NAN),
                touch_s[index].last().copied().unwrap_or(f64::NAN),
                touch_cpu_s[index].last().copied().unwrap_or(f64::NAN),
                if foreign {
                    " (another process's fault programs were loaded)"
                } else {
                    ""
                },
            );
        }
    }
    Ok(Costs {
        churn_ns: churn_ns.map(|mut v| median(&mut v)),
        touch_s: touch_s.map(|mut v| median(&mut v)),
        touch_cpu_s: touch_cpu_s.map(|mut v| median(&mut v)),
        disturbed,
        runs: rounds * MODES.len(),
    })
}

/// Starts `program` paused, moves it into `pod`, waits until the agent (if any) has it in the
/// state `mode` says, then lets it run; returns the nanoseconds it reports (wall time, and CPU
/// time if it reports that too).
fn run_in_pod(
    program: &Path,
    args: &[String],
    pod: &FakePod,
    agent: Option<&Agent>,
    mode: Mode,
) -> anyhow::Result<(f64, Option<f64>)> {
    let mut workload = start_paused(program, args)?;
    let pid = workload.child.id();
    pod.place(pid)?;
    if let Some(agent) = agent {
        match mode {
            Mode::Watched => {
                agent.wait_profiled(pid)?;
                agent.wait_tracing(pod, "watched")?;
            }
            Mode::Excluded => agent.wait_tracing(pod, "excluded")?,
            Mode::NoAgent => {}
        }
    }
    let mut stdin = workload.child.stdin.take().context("stdin")?;
    writeln!(stdin, "go")?;
    let line = workload
        .lines
        .next()
        .context("the workload printed no time")??;
    let mut times = line.split_whitespace().map(str::parse::<f64>);
    let ns = times.next().context("the workload printed no time")??;
    let cpu_ns = times.next().transpose()?;
    // touch_pages waits for a second line; churn has exited already.
    let _ = writeln!(stdin, "exit");
    drop(stdin);
    let _ = workload.child.wait();
    Ok((ns, cpu_ns))
}

/// The agent watching the fleet.
struct Footprint {
    processes: usize,
    profiled: usize,
    settled_s: f64,
    settling_cpu: f64,
    window_s: u64,
    cpu: f64,
    rss_kib: u64,
    peak_kib: u64,
    watched_containers: usize,
    with_trend: usize,
}

fn footprint(binaries: &Binaries, logs: &LogRoots, window_s: u64) -> anyhow::Result<Footprint> {
    let mut children = Children::default();
    let mut pods = Vec::new();
    let mut pids = HashSet::new();
    for i in 0..FLEET_PODS {
        let pod = FakePod::create(logs, "bench-fleet", &format!("svc-{i}"))?;
        for _ in 0..FLEET_PROCESSES_PER_POD {
            let pid = children.sleeper()?;
            pod.place(pid)?;
            let _ = pids.insert(pid);
        }
        pods.push(pod);
    }
    let agent = Agent::start(binaries, logs, WATCH_DEFAULTS, &[])?;
    let profiled = || -> HashSet<u32> {
        agent
            .log()
            .lines()
            .filter(|l| l.contains("profiling page faults"))
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("pid=")))
            .filter_map(|pid| pid.parse().ok())
            .filter(|pid| pids.contains(pid))
            .collect()
    };
    // Settled: every process profiled, or none more for 30 s.
    let (mut count, mut changed) = (0, Instant::now());
    wait_until(
        "the agent has profiled the fleet",
        Duration::from_secs(900),
        Duration::from_secs(1),
        || {
            let now = profiled().len();
            if now != count {
                (count, changed) = (now, Instant::now());
            }
            Ok(count == pids.len() || changed.elapsed() > Duration::from_secs(30))
        },
    )?;
    let settled_s = agent.started.elapsed().as_secs_f64();
    let settling_cpu = cpu_ticks(agent.pid())? as f64 / 100.0 / settled_s;
    eprintln!(
        "xtask bench: always-on: {count} of {} processes profiled after {settled_s:.0} s \
         ({:.1}% of a core meanwhile); measuring for {window_s} s",
        pids.len(),
        settling_cpu * 100.0
    );
    // One sample interval for every container's first trend sample, then the window.
    std::thread::sleep(Duration::from_secs(10));
    let before = cpu_ticks(agent.pid())?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(window_s));
    let cpu = (cpu_ticks(agent.pid())? - before) as f64 / 100.0 / started.elapsed().as_secs_f64();
    let rss_kib = status_kib(agent.pid(), "VmRSS:").unwrap_or(0);
    let peak_kib = status_kib(agent.pid(), "VmHWM:").unwrap_or(0);
    let listed = agent.pods()?;
    let fleet: Vec<&Value> = pods.iter().map(|pod| container(&listed, pod)).collect();
    let footprint = Footprint {
        processes: pids.len(),
        profiled: profiled().len(),
        settled_s,
        settling_cpu,
        window_s,
        cpu,
        rss_kib,
        peak_kib,
        watched_containers: fleet
            .iter()
            .filter(|c| c.get("tracing").as_str() == Some("watched"))
            .count(),
        with_trend: fleet
            .iter()
            .filter(|c| c.get("trend").get("class").as_str().is_some())
            .count(),
    };
    drop(agent);
    drop(children);
    Ok(footprint)
}

/// Seconds from the leak's start until each milestone (None: not reached in time).
struct Escalation {
    settings: &'static str,
    growing_s: Option<f64>,
    auto_s: Option<f64>,
    traced_s: Option<f64>,
    reason: String,
}

fn escalation(
    binaries: &Binaries,
    logs: &LogRoots,
    leak: &Path,
    quick: bool,
) -> anyhow::Result<Escalation> {
    let pod = FakePod::create(logs, "bench-leak", "leaky-0")?;
    pod.limit_memory(LEAK_LIMIT_BYTES)?;
    let growth: &[&str] = if quick { &QUICK_GROWTH } else { &[] };
    let agent = Agent::start(binaries, logs, WATCH_DEFAULTS, growth)?;
    let mut workload = start_paused(leak, &[LEAK_BYTES.to_string(), LEAK_STEP_MS.to_string()])?;
    let pid = workload.child.id();
    pod.place(pid)?;
    agent.wait_profiled(pid)?;
    agent.wait_tracing(&pod, "watched")?;
    let mut stdin = workload.child.stdin.take().context("stdin")?;
    writeln!(stdin, "go")?;
    let _started = workload.lines.next().context("the leak never started")??;
    let start = Instant::now();
    let mut result = Escalation {
        settings: if quick {
            "--quick: 1 s samples, 30 s window"
        } else {
            "defaults: 10 s samples, 5 min window"
        },
        growing_s: None,
        auto_s: None,
        traced_s: None,
        reason: String::new(),
    };
    let limit = Duration::from_secs(if quick { 180 } else { 900 });
    while start.elapsed() < limit && result.traced_s.is_none() {
        std::thread::sleep(Duration::from_millis(500));
        let pods = agent.pods()?;
        let now = start.elapsed().as_secs_f64();
        let app = container(&pods, &pod);
        if result.growing_s.is_none() && app.get("trend").get("class").as_str() == Some("growing") {
            result.growing_s = Some(now);
        }
        if result.auto_s.is_none() && app.get("tracing").as_str() == Some("auto") {
            result.auto_s = Some(now);
            result.reason = app
                .get("tracing_reason")
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        let traced = app.get("processes").items().iter().any(|p| {
            p.get("pid").as_f64() == Some(f64::from(pid)) && p.get("traced").as_bool() == Some(true)
        });
        if result.traced_s.is_none() && traced {
            result.traced_s = Some(now);
        }
    }
    eprintln!(
        "xtask bench: always-on: growing after {:?} s, auto after {:?} s, traced after {:?} s ({})",
        result.growing_s, result.auto_s, result.traced_s, result.reason
    );
    let _ = workload.child.kill();
    let _ = workload.child.wait();
    Ok(result)
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "not reached".to_owned(), |s| format!("{s:.0} s"))
}

fn section(
    args: &BenchArgs,
    costs: &Costs,
    programs: &ProgramCosts,
    footprint: &Footprint,
    escalation: &Escalation,
    foreign_programs: usize,
) -> String {
    let mut text = cost_rows(args, costs, programs);
    text.push_str(&footprint_rows(footprint));
    text.push_str(&format!(
        "\n| leak | container limit | settings | classed growing | escalated (`tracing` = auto) | process traced |\n\
         |---|---:|---|---:|---:|---:|\n\
         | {} KiB every {} ms ({:.0} KiB/s) | {} MiB | {} | **{}** | **{}** | **{}** |\n\n\
         Escalation's reason, as `tracerctl pods` gave it: \"{}\".\n",
        LEAK_BYTES >> 10,
        LEAK_STEP_MS,
        (LEAK_BYTES >> 10) as f64 * 1000.0 / LEAK_STEP_MS as f64,
        LEAK_LIMIT_BYTES >> 20,
        escalation.settings,
        seconds(escalation.growing_s),
        seconds(escalation.auto_s),
        seconds(escalation.traced_s),
        escalation.reason,
    ));
    if costs.disturbed > 0 {
        text.push_str(&format!(
            "\nIn {} of the {} timed runs another process's fault programs were loaded (a test \
             suite running on the same machine).\n",
            costs.disturbed, costs.runs
        ));
    }
    if foreign_programs > 0 {
        text.push_str(&format!(
            "\nWarning: {foreign_programs} fault programs of another agent were loaded when \
             this ran; it may have watched these pods too.\n"
        ));
    }
    text
}

/// The timed runs' table and the fault programs' run time (the part `--touch-only` prints).
fn cost_rows(args: &BenchArgs, costs: &Costs, programs: &ProgramCosts) -> String {
    let faults = (TOUCH_MIB << 20) / PAGE_BYTES;
    let [churn_none, churn_watched, churn_excluded] = costs.churn_ns;
    let [touch_none, touch_watched, touch_excluded] = costs.touch_s;
    let [cpu_none, cpu_watched, cpu_excluded] = costs.touch_cpu_s;
    let per_fault = |s: f64| s * 1e9 / faults as f64;
    let mut text = format!(
        "Measured {} with `cargo xtask bench --suite always-on --rounds {}` (release build; the \
         agent with no selection, as shipped: `[watch]` excluding kube-system and leak-tracer, \
         escalation on, 10 s samples, 5 min window, 2 s discovery; {} interleaved rounds, the \
         mode order rotating, medians; the same binaries in the same pod cgroup in every mode).\n\n\
         | workload | no agent | agent, pod watched | agent, pod excluded | watched / none | excluded / none | target |\n\
         |---|---:|---:|---:|---:|---:|---:|\n\
         | malloc/free churn, flat memory ({} M pairs, {CHURN_RUNS} runs a round) | {churn_none:.1} ns/pair | {churn_watched:.1} ns/pair | {churn_excluded:.1} ns/pair | **{:.2}×** | {:.2}× | 1.00× |\n\
         | touching {} GiB page by page ({faults} faults), wall time | {touch_none:.3} s ({:.0} ns/fault) | {touch_watched:.3} s ({:.0} ns/fault) | {touch_excluded:.3} s ({:.0} ns/fault) | **{:.2}×** | **{:.2}×** | ≤ 1.10× |\n\
         | the same, the touching thread's CPU time | {cpu_none:.3} s ({:.0} ns/fault) | {cpu_watched:.3} s ({:.0} ns/fault) | {cpu_excluded:.3} s ({:.0} ns/fault) | **{:.2}×** | **{:.2}×** | ≤ 1.10× |\n",
        today(),
        args.rounds,
        args.rounds,
        CHURN_PAIRS / 1_000_000,
        churn_watched / churn_none,
        churn_excluded / churn_none,
        TOUCH_MIB / 1024,
        per_fault(touch_none),
        per_fault(touch_watched),
        per_fault(touch_excluded),
        touch_watched / touch_none,
        touch_excluded / touch_none,
        per_fault(cpu_none),
        per_fault(cpu_watched),
        per_fault(cpu_excluded),
        cpu_watched / cpu_none,
        cpu_excluded / cpu_none,
    );
    text.push_str(
        "\nThe agent's fault programs' own run time during one more touching run in each mode, \
         with `kernel.bpf_stats_enabled=1` (which adds two clock reads per program run; restored \
         after; not part of the timings above). The runs are every task's on the machine, not \
         only the workload's 524,288 faults, so the first column is an upper bound:\n\n\
         | mode | run time over the workload's faults | per program: runs × mean run time |\n|---|---:|---|\n",
    );
    for (mode, list) in &programs.modes {
        let parts: Vec<String> = list
            .iter()
            .filter(|p| p.runs > 0.0)
            .map(|p| {
                format!(
                    "`{}` {:.2} M × {:.0} ns",
                    p.name,
                    p.runs / 1e6,
                    p.ns_per_run
                )
            })
            .collect();
        text.push_str(&format!(
            "| {} | ≤ {:.0} ns per fault | {} |\n",
            mode.name(),
            ns_per_fault(list),
            parts.join(", ")
        ));
    }
    text
}

/// The table of the agent watching the fleet.
fn footprint_rows(footprint: &Footprint) -> String {
    format!(
        "\n| agent watching | processes profiled | settled after | CPU while settling | CPU, settled ({} s) | RSS | peak RSS (VmHWM) | targets |\n\
         |---|---:|---:|---:|---:|---:|---:|---|\n\
         | {FLEET_PODS} pods × {FLEET_PROCESSES_PER_POD} `sleep` ({} containers listed watched, {} with a trend) | {} of {} | {:.0} s | {:.1}% of a core | **{:.2}%** of a core | **{:.1} MiB** | {:.1} MiB | ≤ 2% of a core, ≤ 96 MiB |\n",
        footprint.window_s,
        footprint.watched_containers,
        footprint.with_trend,
        footprint.profiled,
        footprint.processes,
        footprint.settled_s,
        footprint.settling_cpu * 100.0,
        footprint.cpu * 100.0,
        footprint.rss_kib as f64 / 1024.0,
        footprint.peak_kib as f64 / 1024.0,
    )
}
