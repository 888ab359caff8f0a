//! `cargo xtask bench`: side-by-side, interleaved benchmarks whose ratios go to BENCHMARKS.md.
//!
//! Allocation overhead: the same malloc/free workload untraced, under empty BPF programs at
//! exactly the tracer's probe points (the kernel's floor), and under the tracer. Rounds are
//! interleaved (the mode order rotates each round) so machine noise hits every mode alike;
//! medians are reported, and the ratios are what matter.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{is_root, run, workspace_root};

/// Which benchmarks to run.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Suite {
    /// All of them.
    All,
    /// Per-allocation overhead against the kernel's floor.
    Overhead,
    /// OOM kill to durable evidence.
    Oom,
}

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// Which benchmarks to run.
    #[arg(long, value_enum, default_value_t = Suite::All)]
    suite: Suite,
    /// OOM kills measured.
    #[arg(long, default_value_t = 10)]
    oom_rounds: usize,
    /// malloc/free pairs per run.
    #[arg(long, default_value_t = 1_000_000)]
    pairs: u64,
    /// Interleaved rounds (each runs every mode once).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Print the results without rewriting BENCHMARKS.md.
    #[arg(long)]
    no_write: bool,
}

/// One way of running the workload.
struct Mode {
    name: &'static str,
    /// `tracer-daemon trace` arguments; `None` runs untraced.
    tracer_args: Option<&'static [&'static str]>,
}

const MODES: &[Mode] = &[
    Mode {
        name: "untraced",
        tracer_args: None,
    },
    Mode {
        name: "floor (empty programs)",
        tracer_args: Some(&["--empty-programs"]),
    },
    Mode {
        name: "tracer",
        tracer_args: Some(&[]),
    },
];

pub(crate) fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!("benchmarks attach uprobes and must run as root");
    }
    if matches!(args.suite, Suite::All | Suite::Overhead) {
        overhead(args)?;
    }
    if matches!(args.suite, Suite::All | Suite::Oom) {
        oom(args)?;
    }
    Ok(())
}

/// OOM kill → durable evidence: the ignored benchmark test kills processes for real and prints
/// the agent's measured latencies.
fn oom(args: &BenchArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let output = crate::cargo()
        .args([
            "test",
            "--release",
            "--package",
            "tracer-daemon",
            "--test",
            "bench_oom",
            "--",
            "--ignored",
            "--nocapture",
        ])
        .env("TRACER_BENCH_OOM_ROUNDS", args.oom_rounds.to_string())
        .stderr(Stdio::inherit())
        .output()
        .context("run the OOM benchmark")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("the OOM benchmark failed:\n{stdout}");
    }
    let mut values: Vec<f64> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH oom_durable_ms "))
        .context("the OOM benchmark printed no result")?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let n = values.len();
    let median = median(&mut values);
    let p90 = values[((n * 9).div_ceil(10)).saturating_sub(1).min(n - 1)];
    let max = values[n - 1];
    let section = format!(
        "Measured {} with `cargo xtask bench --suite oom --oom-rounds {}` (release build): {} real OOM \
         kills of a traced process in a 64 MiB memory cgroup; latency from the kernel's \
         mark_victim timestamp to the evidence commit being fsync'd.\n\n\
         | OOM kills | median | p90 | max |\n|---:|---:|---:|---:|\n| {n} | {median:.1} ms | {p90:.1} ms | {max:.1} ms |\n",
        today(),
        args.oom_rounds,
        n
    );
    println!("{section}");
    if !args.no_write {
        write_section(&root.join("BENCHMARKS.md"), "oom", &section)?;
    }
    Ok(())
}

fn overhead(args: &BenchArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    run(crate::cargo().args(["build", "--release", "--package", "tracer-daemon"]))?;
    let daemon = root.join("target/release/tracer-daemon");
    let churn = compile(&root, "churn")?;

    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    for round in 0..args.rounds {
        for i in 0..MODES.len() {
            let index = (i + round) % MODES.len();
            let mode = &MODES[index];
            let ns = run_once(&churn, &daemon, args.pairs, 1, mode.tracer_args)?;
            eprintln!(
                "xtask bench: round {} {:<24} {:>8.1} ns/pair",
                round + 1,
                mode.name,
                ns
            );
            samples[index].push(ns);
        }
    }
    let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    let (untraced, floor, tracer) = (medians[0], medians[1], medians[2]);
    let mut table = String::new();
    table.push_str(
        "| mode | ns per malloc/free pair (median) | added ns per pair |\n|---|---:|---:|\n",
    );
    for (mode, &ns) in MODES.iter().zip(&medians) {
        table.push_str(&format!(
            "| {} | {:.0} | {:.0} |\n",
            mode.name,
            ns,
            ns - untraced
        ));
    }
    table.push_str(&format!(
        "\nRatios: tracer / floor = **{:.2}×**; tracer's own work above the floor = {:.0} ns per pair; \
         tracer / untraced = {:.0}×.\n",
        tracer / floor,
        tracer - floor,
        tracer / untraced,
    ));
    let section = format!(
        "Measured {} with `cargo xtask bench --pairs {} --rounds {}` ({} interleaved rounds, \
         single-thread loop of malloc(16..1039)/free).\n\n{table}",
        today(),
        args.pairs,
        args.rounds,
        args.rounds
    );
    println!("{section}");
    if !args.no_write {
        write_section(&root.join("BENCHMARKS.md"), "overhead", &section)?;
    }
    Ok(())
}

fn compile(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let out = out_dir.join(name);
    run(Command::new("gcc")
        .args(["-O2", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&out)
        .arg(root.join(format!("xtask/bench/{name}.c"))))?;
    Ok(out)
}

/// Runs the workload once; returns ns per pair.
fn run_once(
    churn: &Path,
    daemon: &Path,
    pairs: u64,
    threads: u32,
    tracer_args: Option<&[&str]>,
) -> anyhow::Result<f64> {
    let mut workload = Command::new(churn)
        .args([pairs.to_string(), threads.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the churn workload")?;
    let mut lines = BufReader::new(workload.stdout.take().context("stdout")?).lines();
    let _ready = lines.next().context("workload said nothing")??;
    let tracer = match tracer_args {
        Some(extra) => Some(start_tracer(daemon, workload.id(), extra)?),
        None => None,
    };
    let mut stdin = workload.stdin.take().context("stdin")?;
    writeln!(stdin, "go")?;
    let elapsed_ns: f64 = lines
        .next()
        .context("workload printed no time")??
        .trim()
        .parse()?;
    let _ = workload.wait();
    if let Some(mut tracer) = tracer {
        stop(&mut tracer);
    }
    Ok(elapsed_ns / pairs as f64)
}

fn start_tracer(daemon: &Path, pid: u32, extra: &[&str]) -> anyhow::Result<Child> {
    let mut child = Command::new(daemon)
        .args([
            "trace",
            "--pid",
            &pid.to_string(),
            "--interval",
            "1h",
            "--json",
        ])
        .args(extra)
        .env("TRACER_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start tracer-daemon")?;
    let stderr = child.stderr.take().context("stderr")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        if line.contains("attached; first report") {
            return Ok(child);
        }
        if Instant::now() > deadline {
            break;
        }
    }
    stop(&mut child);
    bail!("tracer-daemon did not attach")
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
