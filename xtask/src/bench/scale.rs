//! The scale suite: the agent at a million outstanding allocations, measured by an ignored
//! test (tests/bench_scale.rs) whose result line goes to BENCHMARKS.md.

use super::{BenchArgs, bench_test, today, write_section};
use crate::workspace_root;

pub(super) fn scale(args: &BenchArgs) -> anyhow::Result<()> {
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
