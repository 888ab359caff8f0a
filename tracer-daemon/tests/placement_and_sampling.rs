//! Probe placement and sampled mode, for real: smart placement and entry placement give
//! identical exact reports; `--explain-probes` shows the choice; sampled mode's estimates land
//! within 10% of the ground truth.

mod support;

use std::collections::BTreeMap;

use support::*;

/// Every function of the alloc_kinds workload, with its exact (bytes, count).
fn alloc_kinds_totals(extra: &[&str]) -> BTreeMap<String, (u64, u64)> {
    let mut workload = Workload::start(&workload("alloc_kinds"), &[]);
    let mut args = vec!["--top", "100"];
    args.extend_from_slice(extra);
    let mut trace = Trace::start(&[workload.pid], &args);
    let done = workload.run_to_done();
    let report = trace.report_after(done);
    let mut totals = BTreeMap::new();
    for stack in process(&report, workload.pid)["stacks"]
        .as_array()
        .expect("stacks")
    {
        let function = functions(stack).first().cloned().unwrap_or_default();
        let entry = totals.entry(function).or_insert((0, 0));
        entry.0 += stack["bytes"].as_u64().expect("bytes");
        entry.1 += stack["count"].as_u64().expect("count");
    }
    workload.finish();
    totals.retain(|function, _| {
        function.starts_with("leak_") || function.contains("realloc") || function.contains("mmap")
    });
    totals
}

#[test]
fn smart_and_entry_placement_give_identical_exact_reports() {
    require_root();
    let smart = alloc_kinds_totals(&["--probe-placement", "smart"]);
    let entry = alloc_kinds_totals(&["--probe-placement", "entry"]);
    assert_eq!(smart, entry, "placement changed what was recorded");
    assert_eq!(smart.get("leak_memalign"), Some(&(160, 4)), "{smart:?}");
    assert_eq!(
        smart.get("grow_with_realloc"),
        Some(&(64_000, 1)),
        "{smart:?}"
    );
    assert_eq!(
        smart.get("mmap_with_holes"),
        Some(&(7 * 4096, 2)),
        "{smart:?}"
    );
}

#[test]
fn uprobe_sessions_and_classic_return_probes_give_identical_exact_reports() {
    require_root();
    // This kernel (6.18) has sessions: the tracer must say it uses them.
    let mut workload = Workload::start(&workload("one_leak_site"), &[]);
    let trace = Trace::start(&[workload.pid], &[]);
    assert!(
        trace.stderr().contains("uprobe sessions available"),
        "{}",
        trace.stderr()
    );
    drop(trace);
    workload.send("exit");
    let sessions = alloc_kinds_totals(&["--uprobe-sessions", "auto"]);
    let classic = alloc_kinds_totals(&["--uprobe-sessions", "off"]);
    assert_eq!(sessions, classic, "sessions changed what was recorded");
    assert_eq!(
        sessions.get("leak_malloc"),
        Some(&(7000, 7)),
        "{sessions:?}"
    );
}

#[test]
fn explain_probes_shows_each_function_offset_instruction_and_reason() {
    require_root();
    let workload = Workload::start(&workload("one_leak_site"), &[]);
    let pid = workload.pid.to_string();
    let output = std::process::Command::new(daemon_binary())
        .args(["trace", "--pid", &pid, "--explain-probes"])
        .output()
        .expect("run tracer-daemon");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for function in ["malloc", "free", "calloc", "realloc", "mmap", "munmap"] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(function))
            .unwrap_or_else(|| panic!("no line for {function}:\n{text}"));
        assert!(
            line.contains("emulated") || line.contains("stepped"),
            "{line}"
        );
        assert!(line.contains('+'), "{line}");
    }
    let free = text.lines().find(|l| l.starts_with("free")).expect("free");
    assert!(
        !free.contains(" +0 "),
        "free's NULL check is not where its probe should go: {free}"
    );
    workload.finish();
}

#[test]
fn sampled_estimates_are_within_ten_percent_of_the_truth() {
    require_root();
    let mut workload = Workload::start(&workload("sampled_leaks"), &[]);
    let mut trace = Trace::start(
        &[workload.pid],
        &["--sample-bytes", "16384", "--interval", "500ms"],
    );
    let done = workload.run_to_done();
    let report = trace.report_after(done);
    assert_eq!(report["estimated"], true, "{report:#}");
    let pid = workload.pid;
    for (function, bytes, count) in [
        ("leak_small", 40_000_000u64, 400_000u64),
        ("leak_mixed", 49_996_000, 10_000),
    ] {
        let (estimated_bytes, estimated_count) = function_totals(&report, pid, function);
        let error =
            |estimate: u64, truth: u64| (estimate as f64 - truth as f64).abs() / truth as f64;
        assert!(
            error(estimated_bytes, bytes) < 0.10,
            "{function}: {estimated_bytes} bytes vs {bytes}"
        );
        assert!(
            error(estimated_count, count) < 0.10,
            "{function}: {estimated_count} allocations vs {count}"
        );
    }
    // The churn freed everything it allocated: nothing (or next to nothing) is left of it.
    let (churn_bytes, _) = function_totals(&report, pid, "churn");
    assert!(
        churn_bytes < 200_000,
        "freed memory estimated as outstanding: {churn_bytes}"
    );
    // Far fewer allocations were recorded than made.
    let recorded = report["stats"]["allocations_recorded"]
        .as_u64()
        .expect("stat");
    assert!(
        recorded < 50_000,
        "{recorded} allocations recorded: sampling did not sample"
    );
    // Nothing in this workload nests allocator calls. With uprobe sessions an unsampled malloc
    // declines its return run; a return run that came anyway would look like a nested call.
    let nested = report["stats"]["nested_calls"].as_u64().expect("stat");
    assert!(
        nested < 1_000,
        "{nested} nested calls: unsampled mallocs still ran their return probes"
    );
    workload.finish();
}
