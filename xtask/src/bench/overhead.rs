//! The overhead suite: ns per malloc/free pair in every tracing mode, one and two threads,
//! with the ratios BENCHMARKS.md quotes and the tracer's footprint in exact mode.

use super::{
    BenchArgs, build_daemon,
    churn::{Sample, Tracing, run_once},
    compile, median, today, write_section,
};
use crate::workspace_root;

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

pub(super) fn overhead(args: &BenchArgs) -> anyhow::Result<()> {
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
