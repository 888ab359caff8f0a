//! The oom suite: OOM kill to durable evidence, measured by an ignored test
//! (tests/bench_oom.rs) that kills processes for real.

use anyhow::bail;

use super::{BenchArgs, bench_test, median, today, write_section};
use crate::workspace_root;

/// OOM kill → durable evidence: the ignored benchmark test kills processes for real and prints
/// the agent's measured latencies.
pub(super) fn oom(args: &BenchArgs) -> anyhow::Result<()> {
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
