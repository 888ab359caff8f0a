//! `cargo xtask bench`: side-by-side, interleaved benchmarks whose ratios go to BENCHMARKS.md.
//! This module holds the command line and what the suites share (building the daemon and the
//! C workloads, starting a paused workload, medians, BENCHMARKS.md sections); each suite is
//! its own module:
//!
//! - overhead: the same malloc/free workloads (one thread; two threads of random sizes)
//!   untraced, with probes the way existing tools attach (every probe at offset 0, classic
//!   uretprobes), with empty BPF programs at the tracer's own probe points (the kernel's
//!   floor), traced exactly, traced in sampled mode, under a bpftrace script with the same
//!   hooks, and untraced next to a traced process. Rounds interleave the modes (the order
//!   rotates) so machine noise hits each alike; medians are reported.
//! - instructions: what a uprobe costs on each instruction kind on this kernel.
//! - scale: the agent at a million outstanding allocations (an ignored test prints it).
//! - unwinding: stacks from unwind tables against frame-pointer stacks.
//! - oom: OOM kill to durable evidence (an ignored test prints it).
//! - always-on: what watching every pod costs a flat malloc/free loop and a process touching
//!   new memory (no agent, pod watched, pod excluded), the agent's CPU and memory over 200
//!   pods, and how soon a leak at the default settings is classed growing and traced.
//! - budget: a hot malloc/free loop the agent's config selects, with no agent, traced with the
//!   budget off, and through the budget's phases (exact, sampled, no longer traced).

mod always_on;
mod churn;
mod instructions;
mod oom;
mod overhead;
mod scale;
mod unwinding;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{run, workspace_root};

/// Which benchmarks to run.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Suite {
    /// All of them.
    All,
    /// Per-allocation overhead of every mode.
    Overhead,
    /// Probe cost per instruction kind.
    Instructions,
    /// The agent at a million outstanding allocations.
    Scale,
    /// OOM kill to durable evidence.
    Oom,
    /// Stacks from unwind tables against frame-pointer stacks.
    Unwinding,
    /// What watching every pod costs, and how soon a leak is escalated.
    AlwaysOn,
    /// What the overhead budget does for a hot malloc/free loop.
    Budget,
}

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// Which benchmarks to run.
    #[arg(long, value_enum, default_value_t = Suite::All)]
    suite: Suite,
    /// malloc/free pairs per run.
    #[arg(long, default_value_t = 500_000)]
    pairs: u64,
    /// Interleaved rounds (each runs every mode once).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// OOM kills measured.
    #[arg(long, default_value_t = 10)]
    oom_rounds: usize,
    /// Print the results without rewriting BENCHMARKS.md.
    #[arg(long)]
    no_write: bool,
    /// always-on: time the escalation with 1 s samples and a 30 s growth window (and measure
    /// the agent's CPU over 20 s) for iterating; BENCHMARKS.md is left as it is.
    #[arg(long)]
    quick: bool,
    /// always-on: only the timed runs and the fault programs' run time (no fleet, no
    /// escalation), for iterating on the fault programs; BPF run-time stats as usual, and
    /// BENCHMARKS.md is left as it is.
    #[arg(long)]
    touch_only: bool,
    /// always-on: run the tracer-daemon and tracerctl found in this directory instead of
    /// building them (another commit's release build, for a before/after comparison); needs
    /// --touch-only.
    #[arg(long, requires = "touch_only")]
    prebuilt: Option<std::path::PathBuf>,
    /// always-on: only the agent's CPU and memory watching the fleet (printed; BENCHMARKS.md
    /// is left as it is), for iterating on what the agent costs.
    #[arg(long)]
    agent_cpu_only: bool,
}

/// Runs the chosen suites; the caller has checked for root (they attach uprobes).
pub(crate) fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    if matches!(args.suite, Suite::All | Suite::Overhead) {
        crate::setup::apt_packages(&["bpftrace"])?;
        overhead::overhead(args)?;
    }
    if matches!(args.suite, Suite::All | Suite::Instructions) {
        instructions::instructions(args)?;
    }
    if matches!(args.suite, Suite::All | Suite::Scale) {
        scale::scale(args)?;
    }
    if matches!(args.suite, Suite::All | Suite::Unwinding) {
        unwinding::unwinding(args)?;
    }
    if matches!(args.suite, Suite::All | Suite::Oom) {
        oom::oom(args)?;
    }
    if matches!(args.suite, Suite::All | Suite::AlwaysOn) {
        always_on::always_on(args)?;
    }
    if matches!(args.suite, Suite::All | Suite::Budget) {
        always_on::budget::budget(args)?;
    }
    Ok(())
}

fn build_daemon() -> anyhow::Result<PathBuf> {
    run(crate::cargo().args(["build", "--release", "--package", "tracer-daemon"]))?;
    Ok(workspace_root().join("target/release/tracer-daemon"))
}

fn compile(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    compile_with(root, name, name, "-fno-omit-frame-pointer")
}

fn compile_with(
    root: &Path,
    name: &str,
    output: &str,
    frame_pointers: &str,
) -> anyhow::Result<PathBuf> {
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let out = out_dir.join(output);
    run(Command::new("gcc")
        .args(["-O2", "-g", frame_pointers, "-pthread", "-o"])
        .arg(&out)
        .arg(root.join(format!("xtask/bench/{name}.c"))))?;
    Ok(out)
}

/// A workload started and waiting for "go".
struct Paused {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

fn start_paused(program: &Path, args: &[String]) -> anyhow::Result<Paused> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", program.display()))?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let _ready = lines.next().context("workload said nothing")??;
    Ok(Paused { child, lines })
}

fn stop(child: &mut Child) {
    // SAFETY: signalling our own child.
    let _ = unsafe { libc_kill(child.id() as i32, 2) };
    let _ = child.wait();
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

/// Runs an ignored benchmark test and returns the line it printed after `BENCH <name> `.
fn bench_test(test: &str, prefix: &str, envs: &[(&str, String)]) -> anyhow::Result<String> {
    let output = crate::cargo()
        .args([
            "test",
            "--release",
            "--package",
            "tracer-daemon",
            "--test",
            test,
            "--",
            "--ignored",
            "--nocapture",
        ])
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run the {test} benchmark"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("the {test} benchmark failed:\n{stdout}");
    }
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(str::to_owned)
        .with_context(|| format!("the {test} benchmark printed no result"))
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    }
}

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "today".to_owned(), |s| s.trim().to_owned())
}

/// Replaces the text between `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->`.
fn write_section(path: &Path, name: &str, body: &str) -> anyhow::Result<()> {
    let start = format!("<!-- bench:{name}:start -->");
    let end = format!("<!-- bench:{name}:end -->");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (Some(s), Some(e)) = (text.find(&start), text.find(&end)) else {
        bail!("{} has no {start} ... {end} markers", path.display());
    };
    let updated = format!("{}{start}\n{body}\n{}", &text[..s], &text[e..]);
    std::fs::write(path, updated).with_context(|| format!("failed to write {}", path.display()))?;
    eprintln!("xtask bench: updated {}", path.display());
    Ok(())
}
