//! The unwinding suite: a ten-frame stack unwound from .eh_frame against the same code walked
//! by frame pointer, untraced and traced.

use super::{
    BenchArgs, build_daemon,
    churn::{Tracing, run_once},
    compile_with, median, today, write_section,
};
use crate::workspace_root;

/// Cost per traced allocation of a ten-frame stack unwound from .eh_frame, against the same
/// code walked by frame pointer: four runs interleaved per round (each build untraced and
/// traced).
pub(super) fn unwinding(args: &BenchArgs) -> anyhow::Result<()> {
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
