//! Real-kernel leak tests: real C workloads with known leaks, traced by the real daemon, with
//! exact ground truth (each workload's header comment states it).

mod support;

use std::time::Duration;

use support::*;

const PAGE: u64 = 4096;

#[test]
fn a_leaking_function_is_the_top_stack_with_exact_bytes_and_count() {
    require_root();
    let mut workload = Workload::start(&workload("one_leak_site"), &[]);
    let mut trace = Trace::start(&[workload.pid], &[]);
    let done = workload.run_to_done();
    let report = trace.report_after(done);
    let process = process(&report, workload.pid);
    let top = &process["stacks"][0];
    assert_eq!(functions(top)[..2], ["leak_here", "main"], "{report:#}");
    assert_eq!(bytes_count(top), (100 * 4096, 100), "{report:#}");
    for function in ["churn_and_free", "calloc_and_free", "realloc_then_free"] {
        assert!(
            stacks_from(&report, workload.pid, function).is_empty(),
            "{function} leaked: {report:#}"
        );
    }
    workload.finish();
}

#[test]
fn every_allocator_entry_point_is_reported_at_its_own_call_site_with_exact_bytes() {
    require_root();
    let mut workload = Workload::start(&workload("alloc_kinds"), &[]);
    let mut trace = Trace::start(&[workload.pid], &["--top", "100"]);
    let done = workload.run_to_done();
    let report = trace.report_after(done);
    let pid = workload.pid;
    let expected: &[(&str, u64, u64)] = &[
        ("leak_malloc", 7000, 7),
        ("leak_calloc", 5000, 5),
        ("grow_with_realloc", 64000, 1),
        ("leak_reallocarray", 600, 1),
        ("leak_posix_memalign", 3000, 3),
        ("leak_aligned_alloc", 1024, 2),
        ("leak_memalign", 160, 4),
        ("leak_valloc", 5000, 1),
        ("leak_pvalloc", 8192, 1),
        ("keep_after_failed_realloc", 777, 1),
        ("leak_mmap", 15 * PAGE, 3),
    ];
    for &(function, bytes, count) in expected {
        assert_eq!(
            function_totals(&report, pid, function),
            (bytes, count),
            "{function}: {report:#}"
        );
    }
    let mmap_stack = stack_from(&report, pid, "leak_mmap");
    assert_eq!(mmap_stack["kind"], "mmap");
    assert_eq!(stack_from(&report, pid, "leak_malloc")["kind"], "heap");
    workload.finish();
}

#[test]
fn failed_calls_and_freed_blocks_record_nothing() {
    require_root();
    let mut workload = Workload::start(&workload("alloc_kinds"), &[]);
    let mut trace = Trace::start(&[workload.pid], &["--top", "100"]);
    let done = workload.run_to_done();
    let report = trace.report_after(done);
    for function in ["failed_calls", "freed_blocks", "file_mapping"] {
        assert_eq!(
            function_totals(&report, workload.pid, function),
            (0, 0),
            "{function}: {report:#}"
        );
    }
    assert!(
        report["stats"]["failed_calls"].as_u64().expect("stat") >= 4,
        "{report:#}"
    );
    workload.finish();
}

#[test]
fn unmapping_part_of_a_mapping_leaves_exactly_the_pages_still_mapped() {
    require_root();
    let mut workload = Workload::start(&workload("alloc_kinds"), &[]);
    let mut trace = Trace::start(&[workload.pid], &["--top", "100"]);
    let done = workload.run_to_done();
    let report = trace.report_after(done);
    // 10 pages, a 2-page hole in the middle, the last page unmapped: 7 pages in 2 pieces.
    assert_eq!(
        function_totals(&report, workload.pid, "mmap_with_holes"),
        (7 * PAGE, 2),
        "{report:#}"
    );
    workload.finish();
}

#[test]
fn forked_processes_leaking_at_identical_addresses_are_reported_separately() {
    require_root();
    let mut workload = Workload::start(&workload("fork_twins"), &[]);
    let parent = workload.pid;
    let child = *workload.other_pids.first().expect("child pid");
    let mut trace = Trace::start(&[parent, child], &[]);
    let done = workload.run_to_done();
    let report = trace.report_after(done);
    assert_eq!(
        function_totals(&report, parent, "leak_same_address"),
        (20_000, 20),
        "{report:#}"
    );
    assert_eq!(
        function_totals(&report, child, "leak_same_address"),
        (10_000, 10),
        "{report:#}"
    );
    workload.finish();
}

#[test]
fn thread_leaks_are_exact_and_arena_reservations_are_not_leaks() {
    require_root();
    let mut workload = Workload::start(&workload("threads_arena"), &[]);
    let mut trace = Trace::start(&[workload.pid], &["--top", "100"]);
    let done = workload.run_to_done();
    let report = trace.report_after(done);
    let pid = workload.pid;
    assert_eq!(
        function_totals(&report, pid, "thread_leak"),
        (200_000, 200),
        "{report:#}"
    );
    // Four arenas were created, each reserving 128 MiB inside malloc: none of it is a leak.
    let total = process(&report, pid)["outstanding_bytes"]
        .as_u64()
        .expect("bytes");
    assert!(
        total < 64 << 20,
        "allocator-internal mappings reported as leaks ({total} B): {report:#}"
    );
    workload.finish();
}

#[test]
fn a_process_that_exits_is_reported_as_ended_and_the_tracer_then_exits() {
    require_root();
    let mut workload = Workload::start(&workload("one_leak_site"), &[]);
    let pid = workload.pid;
    let trace = Trace::start(&[pid], &["--interval", "30s"]);
    let _ = workload.run_to_done();
    workload.finish();
    let (status, reports) = trace.wait_exit();
    assert!(status.success(), "tracer exit status {status}");
    let last = reports
        .last()
        .expect("a last report after the target ended");
    assert_eq!(process(last, pid)["state"], "ended", "{last:#}");
    assert_eq!(
        function_totals(last, pid, "leak_here"),
        (409_600, 100),
        "{last:#}"
    );
}

#[test]
fn min_age_counts_only_allocations_at_least_that_old() {
    require_root();
    let mut workload = Workload::start(&workload("aged_leaks"), &[]);
    let pid = workload.pid;
    let mut trace = Trace::start(&[pid], &["--min-age", "1500ms"]);
    let _ = workload.run_to_done();
    std::thread::sleep(Duration::from_millis(1700));
    let late = workload.run_to_done();
    let report = trace.report_after(late);
    assert_eq!(
        function_totals(&report, pid, "leak_early"),
        (10_000, 10),
        "{report:#}"
    );
    assert_eq!(
        function_totals(&report, pid, "leak_late"),
        (0, 0),
        "{report:#}"
    );
    let age = stack_from(&report, pid, "leak_early")["oldest_age_ns"]
        .as_u64()
        .expect("age");
    assert!(
        (1_500_000_000..20_000_000_000).contains(&age),
        "oldest age {age} ns is not ~1.7 s"
    );
    std::thread::sleep(Duration::from_millis(1700));
    let report = trace.report_after(now_ms());
    assert_eq!(
        function_totals(&report, pid, "leak_late"),
        (5_000, 5),
        "{report:#}"
    );
    workload.finish();
}

#[test]
fn a_process_that_execs_another_program_is_followed_into_it() {
    require_root();
    let leaker = workload("one_leak_site");
    let mut workload = Workload::start(&workload("exec_into"), &[leaker.to_str().expect("utf8")]);
    let pid = workload.pid;
    let mut trace = Trace::start(&[pid], &[]);
    workload.send("go");
    let _ = workload.wait_for("ready");
    trace.wait_stderr("followed exec");
    let done = workload.run_to_done();
    let report = trace.report_after(done);
    assert_eq!(process(&report, pid)["comm"], "one_leak_site", "{report:#}");
    assert_eq!(
        function_totals(&report, pid, "leak_here"),
        (409_600, 100),
        "{report:#}"
    );
    workload.finish();
}

#[test]
fn a_full_stack_table_counts_what_it_lost_and_an_ended_process_gives_its_slots_back() {
    require_root();
    // 1000 leaking stacks (10 x 16 bytes each) into a table of 600 stacks: 600 are recorded
    // exactly, the 4000 allocations of the other 400 are counted as lost.
    let mut many = Workload::start(&workload("many_stacks"), &["1000"]);
    let mut one = Workload::start(&workload("one_leak_site"), &[]);
    let mut trace = Trace::start(
        &[many.pid, one.pid],
        &["--max-stacks", "600", "--top", "1000"],
    );
    let done = many.run_to_done();
    let report = trace.report_after(done);
    let stacks = process(&report, many.pid)["stacks"]
        .as_array()
        .expect("stacks");
    assert_eq!(stacks.len(), 600, "{:#}", report["stats"]);
    assert!(stacks.iter().all(|s| bytes_count(s) == (160, 10)));
    assert_eq!(
        report["stats"]["stack_totals_map_full"], 4000,
        "{:#}",
        report["stats"]
    );
    // Impossible to miss: a top-level flag with the reason and the setting to raise.
    assert_eq!(report["incomplete"], true, "{report:#}");
    assert!(
        report["incomplete_reason"].as_str().is_some_and(|r| r
            .contains("4000 because the per-stack totals were full")
            && r.contains("--max-stacks")),
        "{report:#}"
    );
    // Once that process has ended and been reported, its 600 slots are free again: the other
    // process's leak gets one and is recorded exactly.
    let many_pid = many.pid;
    many.finish();
    loop {
        let report = trace.next_report();
        let gone = report["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .all(|p| p["pid"].as_u64() != Some(u64::from(many_pid)));
        if gone {
            break;
        }
    }
    let done = one.run_to_done();
    let report = trace.report_after(done);
    assert_eq!(
        function_totals(&report, one.pid, "leak_here"),
        (409_600, 100),
        "{report:#}"
    );
    one.finish();
}
