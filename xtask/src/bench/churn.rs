//! The churn run the overhead and unwinding suites share: a malloc/free workload started
//! paused, the tracer (or bpftrace) attached to it, then timed from "go" to its reported
//! nanoseconds, with the tracer's own memory and CPU.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{start_paused, stop};

const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

/// bpftrace with the hooks existing tools use: malloc entry and return (size and stack per
/// address), free entry.
const BPFTRACE_SCRIPT: &str = "uprobe:LIBC:malloc { @size[tid] = arg0; }
uretprobe:LIBC:malloc /@size[tid]/ { @sizes[retval] = @size[tid]; @stacks[retval] = ustack; delete(@size[tid]); }
uprobe:LIBC:free { delete(@sizes[arg0]); delete(@stacks[arg0]); }";

/// How one run is traced.
#[derive(Clone, Copy)]
pub(super) enum Tracing {
    None,
    Daemon(&'static [&'static str]),
    Bpftrace,
    /// A tracer attached to another process using the same libc.
    Neighbour,
}

/// Result of one run.
pub(super) struct Sample {
    pub(super) ns_per_pair: f64,
    /// Peak resident memory of the tracer, KiB (daemon modes).
    pub(super) tracer_peak_kib: Option<u64>,
    /// CPU the tracer used during the run, as a fraction of one core.
    pub(super) tracer_cpu: Option<f64>,
}

/// Runs the churn workload once; returns ns per pair and the tracer's footprint.
pub(super) fn run_once(
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
