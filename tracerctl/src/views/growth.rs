//! Growth profiles (`growth`, and the growth part of `evidence`): where a container's resident
//! memory grew, by the stack of the page fault that first touched it. Its own kind of report,
//! never mixed with outstanding-allocation bytes.

use std::fmt::Write as _;

use serde::Serialize;
use tracer_proto::v1 as pb;

use super::{
    MemoryView, human_bytes, human_duration_ns, memory_text, non_empty, ns_of,
    report::{FrameView, frames_to_show},
};

/// A pod's growth profiles.
#[derive(Debug, Serialize)]
pub(crate) struct GrowthReportView<'a> {
    namespace: Option<&'a str>,
    pod_name: Option<&'a str>,
    pod_uid: &'a str,
    /// Why the node records no growth profile, if it does not.
    unavailable_reason: Option<&'a str>,
    containers: Vec<ContainerGrowthView<'a>>,
}

/// One container's.
#[derive(Debug, Serialize)]
struct ContainerGrowthView<'a> {
    name: Option<&'a str>,
    id: &'a str,
    memory: Option<MemoryView>,
    /// `selected`, `auto`, `watched`, ...
    tracing: &'a str,
    profile: Option<GrowthProfileView<'a>>,
}

/// A growth profile.
#[derive(Debug, Serialize)]
pub(crate) struct GrowthProfileView<'a> {
    window_ns: u64,
    total_bytes: u64,
    total_window_bytes: u64,
    retouched_bytes: u64,
    stacks_total: u32,
    /// One new page in this many was recorded and weighted by it: bytes are estimates unless
    /// it is 1.
    sampled_one_page_in: u32,
    /// Whether the bytes and pages are estimates (sampled) rather than exact.
    estimated: bool,
    stacks: Vec<FirstTouchView<'a>>,
}

/// One call site.
#[derive(Debug, Serialize)]
struct FirstTouchView<'a> {
    bytes: u64,
    window_bytes: u64,
    pages: u64,
    retouched_bytes: u64,
    pids: &'a [u32],
    frames: Vec<FrameView<'a>>,
}

impl<'a> From<&'a pb::GrowthProfile> for GrowthProfileView<'a> {
    fn from(p: &'a pb::GrowthProfile) -> Self {
        Self {
            window_ns: p.window.as_ref().map_or(0, ns_of),
            total_bytes: p.total_bytes,
            total_window_bytes: p.total_window_bytes,
            retouched_bytes: p.retouched_bytes,
            stacks_total: p.stacks_total,
            sampled_one_page_in: p.sampled_one_page_in.max(1),
            estimated: p.sampled_one_page_in > 1,
            stacks: p
                .stacks
                .iter()
                .map(|s| FirstTouchView {
                    bytes: s.bytes,
                    window_bytes: s.window_bytes,
                    pages: s.pages,
                    retouched_bytes: s.retouched_bytes,
                    pids: &s.pids,
                    frames: s.frames.iter().map(FrameView::from).collect(),
                })
                .collect(),
        }
    }
}

impl<'a> From<&'a pb::GrowthProfileReport> for GrowthReportView<'a> {
    fn from(r: &'a pb::GrowthProfileReport) -> Self {
        Self {
            namespace: r.pod.as_ref().and_then(|p| non_empty(&p.namespace)),
            pod_name: r.pod.as_ref().and_then(|p| non_empty(&p.name)),
            pod_uid: &r.pod_uid,
            unavailable_reason: non_empty(&r.unavailable_reason),
            containers: r
                .containers
                .iter()
                .map(|c| ContainerGrowthView {
                    name: non_empty(&c.name),
                    id: &c.id,
                    memory: c.memory.as_ref().map(MemoryView::from),
                    tracing: &c.tracing,
                    profile: c.profile.as_ref().map(GrowthProfileView::from),
                })
                .collect(),
        }
    }
}

/// A pod's growth profiles as a table.
pub(crate) fn table(report: &GrowthReportView<'_>, full_stacks: bool) -> String {
    let mut out = String::new();
    let who = match (report.namespace, report.pod_name) {
        (Some(ns), Some(name)) => format!("pod {ns}/{name}"),
        _ => format!("pod uid {}", report.pod_uid),
    };
    let _ = writeln!(out, "{who}: resident growth by first touch (page faults)");
    if let Some(reason) = report.unavailable_reason {
        let _ = writeln!(out, "  NOT RECORDED ON THIS NODE: {reason}");
    }
    for c in &report.containers {
        let _ = writeln!(
            out,
            "  container {} ({}): memory {}",
            c.name.unwrap_or("-"),
            c.tracing,
            memory_text(c.memory.as_ref())
        );
        match &c.profile {
            Some(profile) => out.push_str(&profile_table(profile, full_stacks)),
            None => out.push_str("    not watched: no growth profile\n"),
        }
    }
    out
}

/// A growth profile's totals and call sites.
pub(crate) fn profile_table(p: &GrowthProfileView<'_>, full_stacks: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "    {} first touched since watched, {} in the last {}; {} retouched (given back and touched again: churn, not growth)",
        human_bytes(p.total_bytes),
        human_bytes(p.total_window_bytes),
        human_duration_ns(p.window_ns),
        human_bytes(p.retouched_bytes)
    );
    if p.estimated {
        let _ = writeln!(
            out,
            "    estimated: one new page in {} recorded (by address), each counted as {}",
            p.sampled_one_page_in, p.sampled_one_page_in
        );
    }
    let _ = writeln!(
        out,
        "    {:>4} {:>12} {:>12} {:>12} CALL SITE",
        "#", "SINCE", "IN WINDOW", "RETOUCHED"
    );
    for (rank, stack) in p.stacks.iter().enumerate() {
        let (shown, folded) = frames_to_show(&stack.frames, full_stacks);
        let mut frames = shown.iter();
        let site = frames
            .next()
            .map_or_else(|| "[stack lost]".to_owned(), FrameView::display_name);
        let pids: Vec<String> = stack.pids.iter().map(u32::to_string).collect();
        let _ = writeln!(
            out,
            "    {:>4} {:>12} {:>12} {:>12} {} (pid {})",
            rank + 1,
            human_bytes(stack.bytes),
            human_bytes(stack.window_bytes),
            human_bytes(stack.retouched_bytes),
            site,
            pids.join(",")
        );
        for frame in frames.take(8) {
            let _ = writeln!(out, "    {:>43} {}", "", frame.display_name());
        }
        if folded > 0 {
            let _ = writeln!(
                out,
                "    {:>43} ({folded} C library frames below; --full-stacks shows them)",
                ""
            );
        }
    }
    let total = p.stacks_total as usize;
    if total > p.stacks.len() {
        let _ = writeln!(out, "    ... {} more stacks", total - p.stacks.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str) -> pb::Frame {
        pb::Frame {
            function: function.into(),
            module: "/app".into(),
            ..pb::Frame::default()
        }
    }

    #[test]
    fn a_growth_profile_table_names_the_call_sites_with_both_figures() {
        let report = pb::GrowthProfileReport {
            pod: Some(pb::PodName {
                namespace: "shop".into(),
                name: "api-0".into(),
            }),
            containers: vec![pb::ContainerGrowthProfile {
                name: "app".into(),
                tracing: "watched".into(),
                profile: Some(pb::GrowthProfile {
                    window: Some(prost_types::Duration {
                        seconds: 300,
                        nanos: 0,
                    }),
                    total_bytes: 48 << 20,
                    total_window_bytes: 16 << 20,
                    retouched_bytes: 1 << 30,
                    stacks_total: 3,
                    sampled_one_page_in: 16,
                    stacks: vec![pb::FirstTouchStack {
                        bytes: 40 << 20,
                        window_bytes: 16 << 20,
                        pages: 10240,
                        pids: vec![7],
                        frames: vec![frame("memset"), frame("leak_records"), frame("main")],
                        ..pb::FirstTouchStack::default()
                    }],
                }),
                ..pb::ContainerGrowthProfile::default()
            }],
            ..pb::GrowthProfileReport::default()
        };
        let printed = table(&GrowthReportView::from(&report), false);
        assert!(
            printed.contains("pod shop/api-0: resident growth by first touch"),
            "{printed}"
        );
        assert!(printed.contains("container app (watched)"), "{printed}");
        assert!(
            printed.contains(
                "48.0 MiB first touched since watched, 16.0 MiB in the last 5.0m; 1.0 GiB retouched"
            ),
            "{printed}"
        );
        assert!(
            printed.contains("40.0 MiB     16.0 MiB          0 B memset (pid 7)"),
            "{printed}"
        );
        assert!(printed.contains("leak_records"), "{printed}");
        assert!(printed.contains("... 2 more stacks"), "{printed}");
        assert!(
            printed.contains("estimated: one new page in 16 recorded"),
            "{printed}"
        );
    }
}
