//! `cargo xtask bench`: side-by-side, interleaved benchmarks whose ratios go to BENCHMARKS.md.
//!
//! - overhead: the same malloc/free workloads (one thread; two threads of random sizes)
//!   untraced, with probes the way existing tools attach (every probe at offset 0, classic
//!   uretprobes), with empty BPF programs at the tracer's own probe points (the kernel's
//!   floor), traced exactly, traced in sampled mode, under a bpftrace script with the same
//!   hooks, and untraced next to a traced process. Rounds interleave the modes (the order
//!   rotates) so machine noise hits each alike; medians are reported.
//! - instructions: what a uprobe costs on each instruction kind on this kernel.
//! - scale: the agent at a million outstanding allocations (an ignored test prints it).
//! - oom: OOM kill to durable evidence (an ignored test prints it).

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
}

const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

/// bpftrace with the hooks existing tools use: malloc entry and return (size and stack per
/// address), free entry.
const BPFTRACE_SCRIPT: &str = "uprobe:LIBC:malloc { @size[tid] = arg0; }
uretprobe:LIBC:malloc /@size[tid]/ { @sizes[retval] = @size[tid]; @stacks[retval] = ustack; delete(@size[tid]); }
uprobe:LIBC:free { delete(@sizes[arg0]); delete(@stacks[arg0]); }";

/// How one run is traced.
#[derive(Clone, Copy)]
enum Tracing {
    None,
    Daemon(&'static [&'static str]),
    Bpftrace,
    /// A tracer attached to another process using the same libc.
    Neighbour,
}

struct Mode {
    name: &'static str,
    tracing: Tracing,
}

const MODES: &[Mode] = &[
    Mode {
        name: "untraced",
        tracing: Tracing::None,
    },
    Mode {
        name: "naive placement (offset 0, uretprobes)",
        tracing: Tracing::Daemon(&["--probe-placement", "entry"]),
    },
    Mode {
        name: "floor (empty programs, smart points)",
        tracing: Tracing::Daemon(&["--empty-programs"]),
    },
    Mode {
        name: "exact (this tracer)",
        tracing: Tracing::Daemon(&[]),
    },
    Mode {
        name: "sampled (--sample-bytes 524288)",
        tracing: Tracing::Daemon(&["--sample-bytes", "524288"]),
    },
    Mode {
        name: "bpftrace, same hooks",
        tracing: Tracing::Bpftrace,
    },
    Mode {
        name: "untraced, next to a traced process",
        tracing: Tracing::Neighbour,
    },
];

pub(crate) fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!("benchmarks attach uprobes and must run as root");
    }
    if matches!(args.suite, Suite::All | Suite::Overhead) {
        crate::setup::apt_packages(&["bpftrace"])?;
        overhead(args)?;
    }
    if matches!(args.suite, Suite::All | Suite::Instructions) {
        instructions(args)?;
    }
    if matches!(args.suite, Suite::All | Suite::Scale) {
        scale(args)?;
    }
    if matches!(args.suite, Suite::All | Suite::Unwinding) {
        unwinding(args)?;
    }
    if matches!(args.suite, Suite::All | Suite::Oom) {
        oom(args)?;
    }
    Ok(())
}

fn build_daemon() -> anyhow::Result<PathBuf> {
    run(crate::cargo().args(["build", "--release", "--package", "tracer-daemon"]))?;
    Ok(workspace_root().join("target/release/tracer-daemon"))
}

/// Result of one run.
struct Sample {
    ns_per_pair: f64,
    /// Peak resident memory of the tracer, KiB (daemon modes).
    tracer_peak_kib: Option<u64>,
    /// CPU the tracer used during the run, as a fraction of one core.
    tracer_cpu: Option<f64>,
}

fn overhead(args: &BenchArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let daemon = build_daemon()?;
    let churn = compile(&root, "churn")?;
    let mut text = format!(
        "Measured {} with `cargo xtask bench --suite overhead --pairs {} --rounds {}` (release \
         build; {} interleaved rounds; medians).\n",
        today(),
        args.pairs,
        args.rounds,
        args.rounds
    );
    for threads in [1u32, 2] {
        let mut samples: Vec<Vec<Sample>> = (0..MODES.len()).map(|_| Vec::new()).collect();
        for round in 0..args.rounds {
            for i in 0..MODES.len() {
                let index = (i + round) % MODES.len();
                let sample = run_once(&churn, &daemon, args.pairs, threads, MODES[index].tracing)?;
                eprintln!(
                    "xtask bench: {threads} thread(s), round {}: {:<42} {:>9.1} ns/pair",
                    round + 1,
                    MODES[index].name,
                    sample.ns_per_pair
                );
                samples[index].push(sample);
            }
        }
        let medians: Vec<f64> = samples
            .iter()
            .map(|s| median(&mut s.iter().map(|x| x.ns_per_pair).collect::<Vec<_>>()))
            .collect();
        let (untraced, naive, floor, exact, sampled, neighbour) = (
            medians[0], medians[1], medians[2], medians[3], medians[4], medians[6],
        );
        let workload = if threads == 1 {
            "one thread, malloc(16..1039)/free".to_owned()
        } else {
            format!("{threads} threads, malloc(16..1039)/free each")
        };
        text.push_str(&format!(
            "\n### {workload}\n\n| mode | ns per pair | added ns per pair |\n|---|---:|---:|\n"
        ));
        for (mode, &ns) in MODES.iter().zip(&medians) {
            text.push_str(&format!(
                "| {} | {:.0} | {:.0} |\n",
                mode.name,
                ns,
                ns - untraced
            ));
        }
        let exact_samples = &samples[3];
        let peak_kib = exact_samples
            .iter()
            .filter_map(|s| s.tracer_peak_kib)
            .max()
            .unwrap_or(0);
        let cpu = median(
            &mut exact_samples
                .iter()
                .filter_map(|s| s.tracer_cpu)
                .collect::<Vec<_>>(),
        );
        text.push_str(&format!(
            "\nexact / floor = **{:.2}×** (target ≤ 1.10); naive / exact = **{:.1}×** cheaper per \
             pair (target ≥ 4); sampled / exact = **{:.2}×** (target ≤ 0.5); bpftrace / exact = \
             {:.1}×; untraced next to a traced process / untraced = **{:.2}×**. Tracer process \
             during the exact runs: peak RSS {:.1} MiB, {:.0}% of a core.\n",
            (exact - untraced) / (floor - untraced),
            (naive - untraced) / (exact - untraced),
            (sampled - untraced) / (exact - untraced),
            (medians[5] - untraced) / (exact - untraced),
            neighbour / untraced,
            peak_kib as f64 / 1024.0,
            cpu * 100.0
        ));
    }
    println!("{text}");
    if !args.no_write {
        write_section(&root.join("BENCHMARKS.md"), "overhead", &text)?;
    }
    Ok(())
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

/// Cost per traced allocation of a ten-frame stack unwound from .eh_frame, against the same
/// code walked by frame pointer: four runs interleaved per round (each build untraced and
/// traced).
fn unwinding(args: &BenchArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let daemon = build_daemon()?;
    let builds = [
        (
            "frame pointers",
            compile_with(
                &root,
                "deep_churn",
                "deep_churn_fp",
                "-fno-omit-frame-pointer",
            )?,
        ),
        (
            "unwind table (-fomit-frame-pointer)",
            compile_with(
                &root,
                "deep_churn",
                "deep_churn_nofp",
                "-fomit-frame-pointer",
            )?,
        ),
    ];
    let runs: Vec<(usize, Tracing)> = (0..builds.len())
        .flat_map(|b| [(b, Tracing::None), (b, Tracing::Daemon(&[]))])
        .collect();
    let mut samples: Vec<Vec<f64>> = runs.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        for i in 0..runs.len() {
            let index = (i + round) % runs.len();
            let (build, tracing) = runs[index];
            let sample = run_once(&builds[build].1, &daemon, args.pairs, 1, tracing)?;
            eprintln!(
                "xtask bench: round {}: {} {} {:>9.1} ns/pair",
                round + 1,
                builds[build].0,
                if matches!(tracing, Tracing::None) {
                    "untraced"
                } else {
                    "traced"
                },
                sample.ns_per_pair
            );
            samples[index].push(sample.ns_per_pair);
        }
    }
    let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    let added_fp = medians[1] - medians[0];
    let added_table = medians[3] - medians[2];
    let mut text = format!(
        "Measured {} with `cargo xtask bench --suite unwinding --pairs {} --rounds {}` (release \
         build; one thread; malloc/free pairs eight calls deep, so each recorded stack has ten \
         frames; {} interleaved rounds; medians).\n\n| stacks by | untraced ns per pair | \
         traced ns per pair | added ns per pair |\n|---|---:|---:|---:|\n",
        today(),
        args.pairs,
        args.rounds,
        args.rounds
    );
    for (b, (name, _)) in builds.iter().enumerate() {
        let (untraced, traced) = (medians[2 * b], medians[2 * b + 1]);
        text.push_str(&format!(
            "| {name} | {untraced:.0} | {traced:.0} | {:.0} |\n",
            traced - untraced
        ));
    }
    text.push_str(&format!(
        "\nunwind table / frame pointers, added cost per traced allocation = **{:.2}×** \
         ({:.0} ns more for ten frames, {:.0} ns per frame).\n",
        added_table / added_fp,
        added_table - added_fp,
        (added_table - added_fp) / 9.0
    ));
    println!("{text}");
    if !args.no_write {
        write_section(&root.join("BENCHMARKS.md"), "unwinding", &text)?;
    }
    Ok(())
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

/// Runs the churn workload once; returns ns per pair and the tracer's footprint.
fn run_once(
    churn: &Path,
    daemon: &Path,
    pairs: u64,
    threads: u32,
    tracing: Tracing,
) -> anyhow::Result<Sample> {
    let mut workload = start_paused(churn, &[pairs.to_string(), threads.to_string()])?;
    let mut neighbour = None;
    let tracer = match tracing {
        Tracing::None => None,
        Tracing::Daemon(extra) => Some(start_tracer(daemon, workload.child.id(), extra)?),
        Tracing::Bpftrace => Some(start_bpftrace(workload.child.id())?),
        Tracing::Neighbour => {
            let other = start_paused(churn, &["1".into(), "1".into()])?;
            let tracer = start_tracer(daemon, other.child.id(), &[])?;
            neighbour = Some(other);
            Some(tracer)
        }
    };
    let ticks_before = tracer.as_ref().map(|t| cpu_ticks(t.id()));
    let started = Instant::now();
    let mut stdin = workload.child.stdin.take().context("stdin")?;
    writeln!(stdin, "go")?;
    let elapsed_ns: f64 = workload
        .lines
        .next()
        .context("workload printed no time")??
        .trim()
        .parse()?;
    let wall = started.elapsed().as_secs_f64();
    let _ = workload.child.wait();
    let mut sample = Sample {
        ns_per_pair: elapsed_ns / pairs as f64,
        tracer_peak_kib: None,
        tracer_cpu: None,
    };
    if let Some(mut tracer) = tracer {
        if matches!(tracing, Tracing::Daemon(_)) {
            sample.tracer_peak_kib = status_kib(tracer.id(), "VmHWM:");
            sample.tracer_cpu =
                ticks_before.map(|before| (cpu_ticks(tracer.id()) - before) as f64 / 100.0 / wall);
        }
        stop(&mut tracer);
    }
    if let Some(mut other) = neighbour {
        let _ = other.child.kill();
        let _ = other.child.wait();
    }
    Ok(sample)
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
    let mut lines = BufReader::new(stderr).lines();
    while let Some(line) = lines.next() {
        if line?.contains("attached; first report") {
            // Keep draining stderr so the tracer never blocks on a full pipe.
            let _drain = std::thread::spawn(move || for _ in lines {});
            return Ok(child);
        }
        if Instant::now() > deadline {
            break;
        }
    }
    stop(&mut child);
    bail!("tracer-daemon did not attach")
}

fn start_bpftrace(pid: u32) -> anyhow::Result<Child> {
    let script = BPFTRACE_SCRIPT.replace("LIBC", LIBC);
    let mut child = Command::new("bpftrace")
        .args(["-p", &pid.to_string(), "-e", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start bpftrace (Debian's bpftrace)")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next() {
        if line?.starts_with("Attaching") {
            // bpftrace prints this before attaching; give it a moment to finish.
            std::thread::sleep(Duration::from_millis(500));
            let _drain = std::thread::spawn(move || for _ in lines {});
            return Ok(child);
        }
    }
    bail!("bpftrace did not start")
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

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
}

/// Probe cost per instruction kind: the microbenchmark untraced, then with an empty uprobe at
/// offset 0 of every kind's function.
fn instructions(args: &BenchArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let daemon = build_daemon()?;
    let program = compile(&root, "instructions")?;
    let calls = 100_000u64;
    let mut base: Vec<Vec<(String, f64)>> = Vec::new();
    let mut probed: Vec<Vec<(String, f64)>> = Vec::new();
    for _ in 0..args.rounds.max(3) {
        base.push(run_instructions(&program, calls, None)?);
        probed.push(run_instructions(&program, calls, Some(&daemon))?);
    }
    let mut text = format!(
        "Measured {} with `cargo xtask bench --suite instructions` ({} calls per kind, medians of \
         {} runs): an empty uprobe at the first instruction of a function, ns per hit.\n\n\
         | first instruction | ns per hit | the kernel |\n|---|---:|---|\n",
        today(),
        calls,
        base.len()
    );
    for (i, (name, _)) in base[0].iter().enumerate() {
        let mut costs: Vec<f64> = base
            .iter()
            .zip(&probed)
            .map(|(b, p)| p[i].1 - b[i].1)
            .collect();
        let cost = median(&mut costs);
        let verdict = if cost < 2_000.0 {
            "emulates"
        } else {
            "single-steps"
        };
        text.push_str(&format!("| `{name}` | {cost:.0} | {verdict} |\n"));
    }
    println!("{text}");
    if !args.no_write {
        write_section(&root.join("BENCHMARKS.md"), "instructions", &text)?;
    }
    Ok(())
}

fn run_instructions(
    program: &Path,
    calls: u64,
    daemon: Option<&Path>,
) -> anyhow::Result<Vec<(String, f64)>> {
    let mut workload = start_paused(program, &[calls.to_string()])?;
    let tracer = match daemon {
        Some(daemon) => {
            let mut child = Command::new(daemon)
                .args([
                    "probe-cost",
                    "--pid",
                    &workload.child.id().to_string(),
                    "--symbol-prefix",
                    "k_",
                    "--binary",
                ])
                .arg(program)
                .env("TRACER_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("start probe-cost")?;
            let stderr = child.stderr.take().context("stderr")?;
            let mut attached = false;
            for line in BufReader::new(stderr).lines() {
                if line?.contains("attached;") {
                    attached = true;
                    break;
                }
            }
            if !attached {
                bail!("probe-cost did not attach");
            }
            Some(child)
        }
        None => None,
    };
    let mut stdin = workload.child.stdin.take().context("stdin")?;
    writeln!(stdin, "go")?;
    let mut out = Vec::new();
    for line in workload.lines.by_ref() {
        let line = line?;
        let Some((name, ns)) = line.split_once('\t') else {
            continue;
        };
        out.push((name.to_owned(), ns.trim().parse()?));
    }
    let _ = workload.child.wait();
    if let Some(mut tracer) = tracer {
        stop(&mut tracer);
    }
    Ok(out)
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

fn scale(args: &BenchArgs) -> anyhow::Result<()> {
    let line = bench_test("bench_scale", "BENCH scale ", &[])?;
    let field = |name: &str| -> String {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or("?")
            .to_owned()
    };
    let text = format!(
        "Measured {} with `cargo xtask bench --suite scale` (release build): one traced pod holding \
         {} outstanding allocations over {} distinct stacks; the agent samples every 2 s; \
         GetLeakReport (top 20) over the real Unix socket: the first query (new connection, first \
         symbolization of the top stacks), then {} more.\n\n\
         | agent RSS | peak RSS | agent CPU while idle | first report | report p50 | report p99 |\n|---:|---:|---:|---:|---:|---:|\n\
         | {} MiB | {} MiB | {}% | {} ms | {} ms | {} ms |\n",
        today(),
        field("allocations"),
        field("stacks"),
        field("queries"),
        field("rss_mib"),
        field("peak_rss_mib"),
        field("idle_cpu_percent"),
        field("first_report_ms"),
        field("report_p50_ms"),
        field("report_p99_ms"),
    );
    println!("{text}");
    if !args.no_write {
        write_section(&workspace_root().join("BENCHMARKS.md"), "scale", &text)?;
    }
    Ok(())
}

/// OOM kill → durable evidence: the ignored benchmark test kills processes for real and prints
/// the agent's measured latencies.
fn oom(args: &BenchArgs) -> anyhow::Result<()> {
    let line = bench_test(
        "bench_oom",
        "BENCH oom_durable_ms ",
        &[("TRACER_BENCH_OOM_ROUNDS", args.oom_rounds.to_string())],
    )?;
    let mut values: Vec<f64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    if values.is_empty() {
        bail!("the OOM benchmark measured nothing");
    }
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
        write_section(&workspace_root().join("BENCHMARKS.md"), "oom", &section)?;
    }
    Ok(())
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
