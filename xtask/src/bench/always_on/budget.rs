//! The budget suite: what the overhead budget does for a hot malloc/free loop the agent traces
//! because its config selects the pod (not started by hand, which the budget never changes).
//! The same loop, in the same pod cgroup, with no agent, traced with the budget off, and traced
//! with the budget at its defaults, where it moves from exact to sampled to no longer traced;
//! nanoseconds per malloc/free pair in each phase, and when each phase began.

use std::{
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    agent::{Agent, Binaries, container},
    node::{FakePod, LogRoots, wait_until},
};
use crate::bench::{BenchArgs, build_daemon, compile, median, start_paused, today, write_section};
use crate::{run, workspace_root};

/// The pod's namespace, which the agent's config selects.
const NAMESPACE: &str = "bench-budget";
/// The config: select the pod; watching as shipped.
const SELECTING: &str = "[selection]\nnamespaces = [\"bench-budget\"]\n\
                         [watch]\nexclude_namespaces = [\"kube-system\", \"leak-tracer\"]\n";
/// Seconds measured in the modes without phases.
const STEADY_SECONDS: usize = 15;
/// At most this long for the budget to act (two 10 s reviews to sample, two more to stop).
const BUDGET_LIMIT: Duration = Duration::from_secs(150);
/// Seconds measured after tracing stopped.
const AFTER_STOP_SECONDS: usize = 10;

/// How the loop was traced during one second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    NoAgent,
    Exact,
    Sampled,
    Stopped,
}

/// One second of the loop: when it ended (s since "go"), ns per pair, and the phase then.
#[derive(Clone, Copy, Debug)]
struct Second {
    at_s: f64,
    ns_per_pair: f64,
    phase: Phase,
}

pub(crate) fn budget(args: &BenchArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let daemon = build_daemon()?;
    run(crate::cargo().args(["build", "--release", "--package", "tracerctl"]))?;
    let binaries = Binaries {
        daemon,
        tracerctl: root.join("target/release/tracerctl"),
    };
    let hot = compile(&root, "hot_churn")?;
    let logs = LogRoots::create("budget")?;
    let pod = FakePod::create(&logs, NAMESPACE, "hot-0")?;

    let none = run_loop(&hot, &pod, None, |seconds| seconds.len() >= STEADY_SECONDS)?;
    let off_config = format!("{SELECTING}[budget]\nenabled = false\n");
    let off = run_loop(
        &hot,
        &pod,
        Some((&binaries, &logs, &off_config)),
        |seconds| seconds.len() >= STEADY_SECONDS,
    )?;
    let on = run_loop(&hot, &pod, Some((&binaries, &logs, SELECTING)), |seconds| {
        let stopped = seconds.iter().filter(|s| s.phase == Phase::Stopped).count();
        stopped >= AFTER_STOP_SECONDS
            || seconds
                .last()
                .is_some_and(|s| s.at_s > BUDGET_LIMIT.as_secs_f64())
    })?;

    let text = section(&none, &off, &on);
    println!("{text}");
    if !args.no_write {
        write_section(&root.join("BENCHMARKS.md"), "budget", &text)?;
    }
    Ok(())
}

/// Runs the loop in `pod` (beside an agent started with `config`, if any, which must trace it
/// before it starts) and reads its seconds until `done` says so.
fn run_loop(
    hot: &Path,
    pod: &FakePod,
    agent: Option<(&Binaries, &LogRoots, &str)>,
    done: impl Fn(&[Second]) -> bool,
) -> anyhow::Result<Vec<Second>> {
    let agent = agent
        .map(|(binaries, logs, config)| Agent::start(binaries, logs, config, &[]))
        .transpose()?;
    let mut workload = start_paused(hot, &[])?;
    let pid = workload.child.id();
    pod.place(pid)?;
    let phase = |agent: &Agent| -> anyhow::Result<Phase> {
        let pods = agent.pods()?;
        let process = container(&pods, pod)
            .get("processes")
            .items()
            .iter()
            .find(|p| p.get("pid").as_f64() == Some(f64::from(pid)))
            .cloned();
        Ok(match process {
            Some(p) if p.get("traced").as_bool() == Some(true) => {
                if p.get("sample_bytes").as_f64().is_some_and(|b| b > 0.0) {
                    Phase::Sampled
                } else {
                    Phase::Exact
                }
            }
            _ => Phase::Stopped,
        })
    };
    if let Some(agent) = &agent {
        wait_until(
            &format!("the agent traces pid {pid}"),
            Duration::from_secs(60),
            Duration::from_millis(200),
            || Ok(phase(agent)? == Phase::Exact),
        )
        .with_context(|| agent.log())?;
    }
    let mut stdin = workload.child.stdin.take().context("stdin")?;
    writeln!(stdin, "go")?;
    let started = Instant::now();
    let mut seconds = Vec::new();
    while !done(&seconds) {
        let line = workload
            .lines
            .next()
            .context("the loop stopped printing")??;
        let mut fields = line.split_whitespace().map(str::parse::<f64>);
        let (Some(Ok(at_s)), Some(Ok(ns_per_pair))) = (fields.next(), fields.next()) else {
            anyhow::bail!("the loop printed {line:?}");
        };
        let phase = match &agent {
            Some(agent) => phase(agent)?,
            None => Phase::NoAgent,
        };
        seconds.push(Second {
            at_s,
            ns_per_pair,
            phase,
        });
        if started.elapsed() > BUDGET_LIMIT + Duration::from_secs(30) {
            break;
        }
    }
    let _ = workload.child.kill();
    let _ = workload.child.wait();
    if let Some(agent) = &agent {
        eprintln!(
            "xtask bench: budget: {} lines of the agent's log mention the budget",
            agent.lines_with(&["budget"])
        );
    }
    Ok(seconds)
}

/// Median ns per pair over the seconds of `phase` (the first second of each phase, which
/// straddles the change, left out), and how many there were.
fn phase_median(seconds: &[Second], phase: Phase) -> (f64, usize) {
    let mut values: Vec<f64> = seconds
        .windows(2)
        .filter(|w| w[0].phase == phase && w[1].phase == phase)
        .map(|w| w[1].ns_per_pair)
        .collect();
    let n = values.len();
    (median(&mut values), n)
}

/// When `phase` was first seen, s after the loop started.
fn began(seconds: &[Second], phase: Phase) -> Option<f64> {
    seconds.iter().find(|s| s.phase == phase).map(|s| s.at_s)
}

fn section(none: &[Second], off: &[Second], on: &[Second]) -> String {
    let (base, base_n) = phase_median(none, Phase::NoAgent);
    let (exact_off, exact_off_n) = phase_median(off, Phase::Exact);
    let rows = [
        ("no agent", base, base_n, None),
        (
            "traced exactly, budget off (`enabled = false`)",
            exact_off,
            exact_off_n,
            None,
        ),
        (
            "budget at its defaults: exact",
            phase_median(on, Phase::Exact).0,
            phase_median(on, Phase::Exact).1,
            Some(0.0),
        ),
        (
            "budget at its defaults: sampled (512 KiB)",
            phase_median(on, Phase::Sampled).0,
            phase_median(on, Phase::Sampled).1,
            began(on, Phase::Sampled),
        ),
        (
            "budget at its defaults: no longer traced",
            phase_median(on, Phase::Stopped).0,
            phase_median(on, Phase::Stopped).1,
            began(on, Phase::Stopped),
        ),
    ];
    let mut text = format!(
        "Measured {} with `cargo xtask bench --suite budget` (release build; one thread doing \
         malloc/free pairs of 16–1039 bytes without pause, in a pod the agent's config selects, \
         so the budget applies; the agent otherwise as shipped: 5% of a core, 10 s reviews, \
         sampling at 512 KiB; ns per pair each second, medians per phase, the second in which \
         a phase began left out).\n\n\
         | the loop | ns per pair | × no agent | seconds measured | phase began |\n\
         |---|---:|---:|---:|---:|\n",
        today()
    );
    for (name, ns, n, at) in rows {
        let began = at.map_or_else(|| "–".to_owned(), |s| format!("{s:.0} s"));
        let ratio = if base > 0.0 { ns / base } else { f64::NAN };
        text.push_str(&format!(
            "| {name} | {ns:.1} | **{ratio:.1}×** | {n} | {began} |\n"
        ));
    }
    text
}
