//! Reports printed from recorded answers, against what the daemon package's tracerctl printed.

use super::*;
use crate::views::json_line;

fn json(report: &pb::LeakReport) -> String {
    json_line(&ReportView::from(report))
}

fn text(report: &pb::LeakReport, full_stacks: bool) -> String {
    table(&ReportView::from(report), full_stacks)
}

#[test]
fn a_pod_report_has_the_json_shape_scripts_read() {
    let (report, printed) = fixture!(pb::LeakReport, "top-json");
    assert_eq!(json(&report), printed);
    let value: serde_json::Value = serde_json::from_str(&printed).expect("JSON");
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v.as_object().expect("object").keys().cloned().collect()
    };
    // serde_json's map is sorted: this is the set of names, not their order (the
    // comparison above pins the order).
    assert_eq!(
        keys(&value),
        [
            "containers",
            "estimated",
            "incomplete",
            "incomplete_reason",
            "min_age_ns",
            "namespace",
            "pod_name",
            "pod_uid",
            "sample_bytes",
            "sort_by",
            "stats",
            "taken_at_unix_ms"
        ]
    );
    assert_eq!(
        keys(&value["stats"]),
        [
            "allocs_map_full",
            "events_dropped",
            "stack_totals_map_full",
            "stacks_lost",
            "thread_state_full"
        ]
    );
    let container = &value["containers"][0];
    assert_eq!(
        keys(container),
        [
            "classed_in_ns",
            "estimated",
            "id",
            "leak_bytes_per_second",
            "memory",
            "name",
            "outstanding_bytes",
            "outstanding_count",
            "pids",
            "provisional_leak_bytes_per_second",
            "stacks",
            "stacks_total",
            "time_to_limit_ns"
        ]
    );
    assert_eq!(
        keys(&container["memory"]),
        [
            "high_events",
            "limit_bytes",
            "limit_hits",
            "oom_kills",
            "under_oom",
            "usage_bytes"
        ]
    );
    let stack = &container["stacks"][0];
    assert_eq!(
        keys(stack),
        [
            "bytes",
            "count",
            "frames",
            "growth",
            "growth_bytes",
            "kind",
            "oldest_age_ns",
            "pid",
            "stack_id"
        ]
    );
    assert_eq!(
        keys(&stack["growth"]),
        [
            "bytes_per_second",
            "class",
            "classed_in_ns",
            "recent_bytes_per_second",
            "samples",
            "span_ns"
        ]
    );
    assert_eq!(
        keys(&stack["frames"][0]),
        [
            "addr",
            "file",
            "function",
            "inlined",
            "line",
            "module",
            "module_offset"
        ]
    );
}

#[test]
fn reports_print_the_json_the_daemon_package_printed() {
    for (report, printed) in [
        fixture!(pb::LeakReport, "top-container-json"),
        fixture!(pb::LeakReport, "top-new-stacks-provisional-json"),
        fixture!(pb::LeakReport, "top-growing-time-to-limit-json"),
        fixture!(pb::LeakReport, "top-incomplete-json"),
        fixture!(pb::LeakReport, "top-pid-json"),
        fixture!(pb::LeakReport, "top-sampled-json"),
    ] {
        assert_eq!(json(&report), printed);
    }
}

#[test]
fn tables_fold_the_c_librarys_frames_unless_asked_for_all() {
    let (report, printed) = fixture!(pb::LeakReport, "top-table-folds-libc-frames");
    assert_eq!(text(&report, false), printed);
    assert!(printed.contains("frames below; --full-stacks shows them"));
    assert!(!printed.contains("__libc_start"));
    let (report, printed) = fixture!(pb::LeakReport, "top-table-full-stacks");
    assert_eq!(text(&report, true), printed);
    assert!(printed.contains("__libc_start"));
}

#[test]
fn new_stacks_show_their_rate_as_provisional_and_when_they_are_classed() {
    let (report, printed) = fixture!(pb::LeakReport, "top-new-stacks-provisional-table");
    assert_eq!(text(&report, false), printed);
    assert!(printed.contains("/s provisional, from call sites classed in ~"));
    assert!(printed.contains("new (in "));
}

#[test]
fn growing_stacks_project_the_time_to_the_limit() {
    let (report, printed) = fixture!(pb::LeakReport, "top-growing-time-to-limit-table");
    assert_eq!(text(&report, false), printed);
    assert!(printed.contains("; limit reached in ~"), "{printed}");
    assert!(printed.contains("GROWING"), "{printed}");
    assert!(printed.contains("levelling off"), "{printed}");
}

#[test]
fn an_incomplete_or_sampled_report_says_so_first() {
    let (report, printed) = fixture!(pb::LeakReport, "top-incomplete-table");
    assert_eq!(text(&report, false), printed);
    let second_line = printed.lines().nth(1).unwrap_or_default();
    assert!(
        second_line.contains("WARNING: INCOMPLETE REPORT"),
        "{printed}"
    );
    let (report, printed) = fixture!(pb::LeakReport, "top-sampled-table");
    assert_eq!(text(&report, false), printed);
    assert!(
        printed.contains("(sampled: one allocation per 4096 bytes"),
        "{printed}"
    );
}

#[test]
fn stacks_beyond_the_top_are_counted() {
    let (report, printed) = fixture!(pb::LeakReport, "top-more-stacks-table");
    assert_eq!(text(&report, false), printed);
    assert!(printed.contains(" more stacks\n"), "{printed}");
}

#[test]
fn frames_read_as_function_and_line_or_module_and_offset_or_address() {
    let frame = |function: &str, file: &str, line, module: &str| pb::Frame {
        address: 0x7f00_1234,
        function: function.into(),
        file: file.into(),
        line,
        module: module.into(),
        module_offset: 0x1234,
        inlined: false,
    };
    let name = |f: &pb::Frame| FrameView::from(f).display_name();
    assert_eq!(
        name(&frame("leak", "/src/leak.c", 7, "/app")),
        "leak (leak.c:7)"
    );
    assert_eq!(name(&frame("leak", "", 0, "/app")), "leak");
    assert_eq!(name(&frame("", "", 0, "/app")), "/app+0x1234");
    assert_eq!(name(&frame("", "", 0, "")), "0x7f001234");
    // The API's empty strings and zeros are JSON nulls, as the agent's own types print.
    assert_eq!(
        json_line(&FrameView::from(&frame("", "", 0, ""))),
        "{\"addr\":2130711092,\"function\":null,\"file\":null,\"line\":null,\
         \"module\":null,\"module_offset\":null,\"inlined\":false}\n"
    );
}

#[test]
fn a_stack_without_a_growth_class_has_no_growth_in_json() {
    let stack = pb::StackReport {
        stack_id: "00000000000000ff".into(),
        pid: 42,
        kind: pb::MemoryKind::Mmap as i32,
        bytes: 4096,
        count: 1,
        ..pb::StackReport::default()
    };
    assert_eq!(
        json_line(&StackView::from(&stack)),
        "{\"stack_id\":\"00000000000000ff\",\"pid\":42,\"kind\":\"mmap\",\"bytes\":4096,\
         \"count\":1,\"oldest_age_ns\":0,\"growth_bytes\":0,\"frames\":[]}\n"
    );
}
