//! The instructions suite: what an empty uprobe costs on each kind of first instruction,
//! which tells where the kernel emulates a probe and where it single-steps it.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::{BenchArgs, build_daemon, compile, median, start_paused, stop, today, write_section};
use crate::workspace_root;

/// Probe cost per instruction kind: the microbenchmark untraced, then with an empty uprobe at
/// offset 0 of every kind's function.
pub(super) fn instructions(args: &BenchArgs) -> anyhow::Result<()> {
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
