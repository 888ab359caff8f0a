//! Stacks and allocators as production has them: code without frame pointers (unwound from
//! .eh_frame), C++'s operator new and delete, and the same leaks under glibc, jemalloc,
//! tcmalloc, mimalloc and musl, static and dynamic. Every workload's header comment states its
//! ground truth, asserted exactly.

mod support;

use serde_json::Value;
use support::*;

/// Traces a workload from "go" to "done" and returns (pid, report).
fn trace_workload(executable: &std::path::Path) -> (Workload, Value) {
    let mut workload = Workload::start(executable, &[]);
    let mut trace = Trace::start(&[workload.pid], &["--top", "200"]);
    let done = workload.run_to_done();
    let report = trace.report_after(done);
    (workload, report)
}

/// (bytes, count) over every stack of a process with `function` anywhere in it.
fn totals_through(report: &Value, pid: u32, function: &str) -> (u64, u64) {
    process(report, pid)["stacks"]
        .as_array()
        .expect("stacks")
        .iter()
        .filter(|stack| functions(stack).iter().any(|f| f == function))
        .map(bytes_count)
        .fold((0, 0), |(b, c), (sb, sc)| (b + sb, c + sc))
}

#[test]
fn a_leak_four_calls_deep_without_frame_pointers_names_every_caller_in_order() {
    require_root();
    let executable = build_workload(&Build {
        source: "deep_leak.c",
        compiler: "gcc",
        flags: &["-fomit-frame-pointer", "-fno-optimize-sibling-calls"],
        libs: &[],
        output: "deep_leak_omit_frame_pointer",
    });
    let (workload, report) = trace_workload(&executable);
    let pid = workload.pid;
    let stack = stack_from(&report, pid, "alloc_node");
    assert_eq!(
        functions(stack)[..5],
        [
            "alloc_node",
            "build_index",
            "parse_payload",
            "request_handler",
            "main"
        ],
        "{report:#}"
    );
    assert_eq!(bytes_count(stack), (50 * 1000, 50), "{report:#}");
    assert!(stacks_from(&report, pid, "churn").is_empty(), "{report:#}");
    let binaries = process(&report, pid)["unwinding"]
        .as_array()
        .unwrap_or_else(|| panic!("no unwinding methods in the report: {report:#}"));
    let own = binaries
        .iter()
        .find(|b| b["binary"].as_str() == Some(executable.to_str().expect("utf-8 path")))
        .unwrap_or_else(|| panic!("the workload is not in the unwinding list: {report:#}"));
    assert_eq!(own["method"], "unwind table", "{report:#}");
    workload.finish();
}

#[test]
fn the_same_code_with_frame_pointers_is_walked_by_frame_pointer() {
    require_root();
    let executable = build_workload(&Build {
        source: "deep_leak.c",
        compiler: "gcc",
        flags: &[
            "-fno-omit-frame-pointer",
            "-mno-omit-leaf-frame-pointer",
            "-fno-optimize-sibling-calls",
        ],
        libs: &[],
        output: "deep_leak_frame_pointer",
    });
    let (workload, report) = trace_workload(&executable);
    let pid = workload.pid;
    let stack = stack_from(&report, pid, "alloc_node");
    assert_eq!(
        functions(stack)[..5],
        [
            "alloc_node",
            "build_index",
            "parse_payload",
            "request_handler",
            "main"
        ],
        "{report:#}"
    );
    assert_eq!(bytes_count(stack), (50 * 1000, 50), "{report:#}");
    let binaries = process(&report, pid)["unwinding"]
        .as_array()
        .expect("unwinding");
    let own = binaries
        .iter()
        .find(|b| b["binary"].as_str() == Some(executable.to_str().expect("utf-8 path")))
        .unwrap_or_else(|| panic!("the workload is not in the unwinding list: {report:#}"));
    assert_eq!(own["method"], "frame pointers", "{report:#}");
    workload.finish();
}

#[test]
fn cxx_leaks_are_named_demangled_at_their_cxx_call_sites_with_exact_bytes() {
    require_root();
    let executable = build_workload(&Build {
        source: "cxx_leaks.cc",
        compiler: "g++",
        flags: &["-fno-optimize-sibling-calls"],
        libs: &[],
        output: "cxx_leaks",
    });
    let (workload, report) = trace_workload(&executable);
    let pid = workload.pid;
    let expected: &[(&str, u64, u64)] = &[
        ("Cache::remember(int)", 30 * 160 + 30 * 500, 60),
        ("make_cycle()", 50 * 232, 50),
        ("fill_vector()", 2048 * 4 + 24, 2),
        ("churn()", 0, 0),
    ];
    for &(site, bytes, count) in expected {
        assert_eq!(
            totals_through(&report, pid, site),
            (bytes, count),
            "{site}: {report:#}"
        );
    }
    for stack in process(&report, pid)["stacks"].as_array().expect("stacks") {
        let frames = functions(stack);
        // The innermost frame of our own code is the leak site, never its caller.
        let own = frames
            .iter()
            .find(|f| !f.starts_with("std::") && !f.starts_with("operator new"))
            .unwrap_or_else(|| panic!("no frame of the program: {report:#}"));
        assert!(
            expected.iter().any(|&(site, ..)| site == own),
            "a leak charged to {own}: {report:#}"
        );
    }
    workload.finish();
}

/// The same C leaks, built against one allocator.
fn same_leaks_under(output: &str, compiler: &str, flags: &[&str], libs: &[&str]) {
    require_root();
    let mut all_flags = vec!["-fno-omit-frame-pointer", "-fno-optimize-sibling-calls"];
    all_flags.extend_from_slice(flags);
    let executable = build_workload(&Build {
        source: "allocator_leaks.c",
        compiler,
        flags: &all_flags,
        libs,
        output,
    });
    let (workload, report) = trace_workload(&executable);
    let pid = workload.pid;
    let expected: &[(&str, u64, u64)] = &[
        ("leak_with_malloc", 20 * 3000, 20),
        ("leak_with_calloc", 10 * 8 * 100, 10),
        ("leak_with_realloc", 9000, 1),
        ("churn_and_free", 0, 0),
    ];
    for &(function, bytes, count) in expected {
        assert_eq!(
            function_totals(&report, pid, function),
            (bytes, count),
            "{output}: {function}: {report:#}"
        );
    }
    workload.finish();
}

#[test]
fn leaks_are_exact_under_glibc() {
    same_leaks_under("allocator_leaks_glibc", "gcc", &[], &[]);
}

#[test]
fn leaks_are_exact_under_jemalloc_linked_dynamically() {
    same_leaks_under(
        "allocator_leaks_jemalloc",
        "gcc",
        &[],
        &["-Wl,--no-as-needed", "-ljemalloc"],
    );
}

#[test]
fn leaks_are_exact_under_jemalloc_linked_statically() {
    same_leaks_under(
        "allocator_leaks_jemalloc_static",
        "gcc",
        &[],
        &["-Wl,-Bstatic", "-ljemalloc", "-Wl,-Bdynamic", "-lm", "-ldl"],
    );
}

#[test]
fn leaks_are_exact_under_tcmalloc() {
    same_leaks_under(
        "allocator_leaks_tcmalloc",
        "gcc",
        &[],
        &["-Wl,--no-as-needed", "-ltcmalloc"],
    );
}

#[test]
fn leaks_are_exact_under_mimalloc() {
    same_leaks_under(
        "allocator_leaks_mimalloc",
        "gcc",
        &[],
        &["-Wl,--no-as-needed", "-lmimalloc"],
    );
}

#[test]
fn leaks_are_exact_under_musl_linked_dynamically() {
    same_leaks_under("allocator_leaks_musl", "musl-gcc", &[], &[]);
}

#[test]
fn leaks_are_exact_under_musl_linked_statically() {
    same_leaks_under("allocator_leaks_musl_static", "musl-gcc", &["-static"], &[]);
}
