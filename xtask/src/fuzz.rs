//! The fuzz step of `cargo xtask test`: builds the cargo-fuzz targets in fuzz/ and runs each for
//! a bounded time from its committed seed corpus (fuzz/corpus/TARGET/), failing with the path of
//! the input that crashed it.
//!
//! The targets fuzz tracer-parse alone (no aya, tonic, blazesym or redb, no BPF object), in a
//! debug build without sanitizer: they are safe Rust parsers, where AddressSanitizer finds
//! nothing a panic would not and only adds build time.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, bail};

use crate::{run, workspace_root};

/// The fuzz targets, one per parser family (fuzz/fuzz_targets/TARGET.rs).
const TARGETS: [&str; 6] = [
    "cgroup_path",
    "proc_maps",
    "memory_files",
    "pod_dir_name",
    "selector",
    "config",
];

/// Longest time one input may take before it counts as a hang (libFuzzer's default is 20 min).
const INPUT_TIMEOUT_SECONDS: u64 = 10;

/// Largest input libFuzzer makes: a /proc/PID/maps line holds at most a 4 KiB path, and bugs
/// show on short inputs; the default (the largest seed) makes the runs several times slower.
const MAX_INPUT_BYTES: usize = 4096;

/// Builds every target, then runs each for `seconds_per_target`; fails on the first crash,
/// hang or broken invariant, naming the input libFuzzer saved.
pub(crate) fn run_all(seconds_per_target: u64) -> anyhow::Result<()> {
    // fuzz/ is its own workspace; its lock file is the main one (copied, not committed), so the
    // parsers are fuzzed with the dependency versions the daemon ships with, and cargo only adds
    // libfuzzer-sys.
    let root = workspace_root();
    let lock = root.join("fuzz").join("Cargo.lock");
    let _ = fs::copy(root.join("Cargo.lock"), &lock)
        .with_context(|| format!("failed to copy Cargo.lock to {}", lock.display()))?;
    let build_started = Instant::now();
    run(&mut cargo_fuzz("build"))?;
    eprintln!(
        "xtask: fuzz targets built in {} s",
        build_started.elapsed().as_secs()
    );
    let fuzz_started = Instant::now();
    for target in TARGETS {
        run_target(target, seconds_per_target)?;
    }
    eprintln!(
        "xtask: fuzzed {} targets in {} s",
        TARGETS.len(),
        fuzz_started.elapsed().as_secs()
    );
    Ok(())
}

/// `cargo +nightly fuzz SUBCOMMAND` with the flags the build and every run share (a run with
/// other flags would rebuild everything).
fn cargo_fuzz(subcommand: &str) -> Command {
    let mut cmd = crate::cargo();
    let _ = cmd
        .args([
            "+nightly",
            "fuzz",
            subcommand,
            "--dev",
            "--sanitizer",
            "none",
        ])
        .arg("--target-dir")
        .arg(fuzz_dir_in_target());
    cmd
}

/// Build output, corpora grown by runs, and logs: under the workspace's target dir, so nothing
/// a run produces lands in the source tree.
fn fuzz_dir_in_target() -> PathBuf {
    workspace_root().join("target").join("fuzz")
}

fn run_target(target: &str, seconds: u64) -> anyhow::Result<()> {
    let root = workspace_root();
    let seeds = root.join("fuzz").join("corpus").join(target);
    let seed_count = fs::read_dir(&seeds)
        .with_context(|| format!("failed to list the seed corpus {}", seeds.display()))?
        .count();
    if seed_count == 0 {
        bail!("the seed corpus {} is empty", seeds.display());
    }
    // libFuzzer writes what it finds into the first corpus dir: the grown one, never the seeds.
    let grown = fuzz_dir_in_target().join("corpus").join(target);
    let logs = fuzz_dir_in_target().join("logs");
    for dir in [&grown, &logs] {
        fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let log = fs::File::create(&log_path)
        .with_context(|| format!("failed to create {}", log_path.display()))?;
    eprintln!("xtask: fuzzing {target} for {seconds} s ({seed_count} seeds)");
    let started = SystemTime::now();
    let mut cmd = cargo_fuzz("run");
    let _ = cmd
        .arg(target)
        .arg(&grown)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg(format!("-max_len={MAX_INPUT_BYTES}"))
        .arg("-print_final_stats=1")
        .stdout(Stdio::null())
        .stderr(log);
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    let output = String::from_utf8_lossy(&fs::read(&log_path).unwrap_or_default()).into_owned();
    if status.success() {
        let runs = output
            .lines()
            .find(|line| line.starts_with("Done "))
            .unwrap_or("no summary line");
        eprintln!("xtask: fuzz target {target}: {runs}");
        return Ok(());
    }
    print_failure(&output);
    let artifacts = new_artifacts(&root.join("fuzz").join("artifacts").join(target), started);
    if artifacts.is_empty() {
        bail!(
            "fuzz target {target} failed ({status}) without saving an input; full log: {}",
            log_path.display()
        );
    }
    let inputs: Vec<String> = artifacts.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "fuzz target {target} crashed on {}; reproduce with `cargo +nightly fuzz run --dev -s none \
         --target-dir target/fuzz {target} {}`; full log: {}",
        inputs.join(", "),
        inputs[0],
        log_path.display()
    )
}

/// Prints what explains a failure from a run's log: the panic message (a broken invariant
/// says which) and libFuzzer's report with the input, not the long backtraces.
fn print_failure(output: &str) {
    let lines: Vec<&str> = output.lines().collect();
    if let Some(panic) = lines.iter().position(|line| line.contains(" panicked at ")) {
        for line in lines.iter().skip(panic).take(4) {
            eprintln!("{line}");
        }
    }
    let report = lines
        .iter()
        .position(|line| line.contains("ERROR: libFuzzer"))
        .unwrap_or(lines.len().saturating_sub(40));
    for line in lines.iter().skip(report).take(40) {
        eprintln!("{line}");
    }
}

/// The inputs libFuzzer saved (crash-*, timeout-*, oom-*, leak-*) since `since`.
fn new_artifacts(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut artifacts: Vec<PathBuf> = entries
        .flatten()
        .filter(|entry| {
            entry
                .metadata()
                .and_then(|metadata| metadata.modified())
                .is_ok_and(|modified| modified >= since)
        })
        .map(|entry| entry.path())
        .collect();
    artifacts.sort();
    artifacts
}
