//! Leak reports (`top`, `watch`, an evidence record's stacks): per container, the stacks
//! holding memory with their growth, as JSON and as a table.

use std::fmt::Write as _;

use serde::Serialize;
use tracer_proto::v1 as pb;

use super::{MemoryView, human_bytes, human_duration_ns, memory_text, non_empty, ns_of};

/// A leak report for one pod, container or process.
#[derive(Debug, Serialize)]
pub(crate) struct ReportView<'a> {
    /// When the agent read its maps, ms since the Unix epoch.
    taken_at_unix_ms: u64,
    namespace: Option<&'a str>,
    pod_name: Option<&'a str>,
    /// `None` for a process outside any pod.
    pod_uid: Option<&'a str>,
    containers: Vec<ContainerView<'a>>,
    sort_by: SortBy,
    min_age_ns: u64,
    /// Sampling mean in bytes (0: exact mode).
    sample_bytes: u64,
    estimated: bool,
    incomplete: bool,
    incomplete_reason: Option<&'a str>,
    stats: LossesView,
}

/// Stack order.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum SortBy {
    Bytes,
    Growth,
}

/// The agent's loss counters, under the names of its BPF counters (`tracer_common::Stat`),
/// in their order (alphabetical, as the agent's own map of counters printed them).
#[derive(Clone, Copy, Debug, Serialize)]
struct LossesView {
    allocs_map_full: u64,
    events_dropped: u64,
    stack_totals_map_full: u64,
    stacks_lost: u64,
    thread_state_full: u64,
}

/// One container's part of a report.
#[derive(Debug, Serialize)]
pub(crate) struct ContainerView<'a> {
    name: Option<&'a str>,
    /// Runtime container id (`None` for processes outside any pod).
    id: Option<&'a str>,
    memory: Option<MemoryView>,
    outstanding_bytes: u64,
    outstanding_count: u64,
    /// Sum of the rates of the stacks classed as growing.
    leak_bytes_per_second: f64,
    /// Sum of the measured rates of the stacks too new to class.
    provisional_leak_bytes_per_second: f64,
    /// When the first of those will be classed, ns.
    classed_in_ns: Option<u64>,
    time_to_limit_ns: Option<u64>,
    stacks: Vec<StackView<'a>>,
    /// Stacks holding memory before the top-N cut.
    stacks_total: u32,
    pids: &'a [u32],
    estimated: bool,
}

/// Where a stack's memory came from.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum MemoryKind {
    /// malloc family.
    Heap,
    /// Anonymous mmap made by the program itself.
    Mmap,
}

/// One stack holding memory.
#[derive(Debug, Serialize)]
struct StackView<'a> {
    stack_id: &'a str,
    pid: u32,
    kind: MemoryKind,
    bytes: u64,
    count: u64,
    oldest_age_ns: u64,
    /// Change since the previous report of the same reader: the agent's API does not carry
    /// it (its growth is `growth`), so always 0, kept for the JSON's shape.
    growth_bytes: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    growth: Option<GrowthView>,
    /// Innermost (the allocation's call site) first.
    frames: Vec<FrameView<'a>>,
}

/// How a stack's outstanding bytes evolve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum GrowthClass {
    InsufficientData,
    Growing,
    LevellingOff,
    Stable,
    Shrinking,
}

/// A stack's growth over the agent's sliding window.
#[derive(Clone, Copy, Debug, Serialize)]
struct GrowthView {
    bytes_per_second: f64,
    recent_bytes_per_second: f64,
    class: GrowthClass,
    samples: u32,
    span_ns: u64,
    /// While the class is `insufficient_data`: about how long until it is classed, ns.
    classed_in_ns: u64,
}

/// One symbolized frame.
#[derive(Debug, Serialize)]
pub(crate) struct FrameView<'a> {
    addr: u64,
    function: Option<&'a str>,
    file: Option<&'a str>,
    line: Option<u32>,
    module: Option<&'a str>,
    module_offset: Option<u64>,
    inlined: bool,
}

impl<'a> From<&'a pb::LeakReport> for ReportView<'a> {
    fn from(r: &'a pb::LeakReport) -> Self {
        let losses = r.losses.unwrap_or_default();
        Self {
            taken_at_unix_ms: r.taken_at.map_or(0, |t| {
                (t.seconds.max(0) as u64)
                    .saturating_mul(1000)
                    .saturating_add(t.nanos.max(0) as u64 / 1_000_000)
            }),
            namespace: r.pod.as_ref().and_then(|p| non_empty(&p.namespace)),
            pod_name: r.pod.as_ref().and_then(|p| non_empty(&p.name)),
            pod_uid: non_empty(&r.pod_uid),
            containers: r
                .containers
                .iter()
                .map(|c| ContainerView::new(c, r.estimated))
                .collect(),
            sort_by: if r.sort_by == pb::SortBy::Growth as i32 {
                SortBy::Growth
            } else {
                SortBy::Bytes
            },
            min_age_ns: r.min_age.as_ref().map_or(0, ns_of),
            sample_bytes: r.sample_bytes,
            estimated: r.estimated,
            incomplete: r.incomplete,
            incomplete_reason: non_empty(&r.incomplete_reason),
            stats: LossesView {
                allocs_map_full: losses.allocations_map_full,
                events_dropped: losses.dropped_events,
                stack_totals_map_full: losses.stack_totals_map_full,
                stacks_lost: losses.stacks_lost,
                thread_state_full: losses.thread_state_full,
            },
        }
    }
}

impl<'a> ContainerView<'a> {
    /// A container's report; `estimated` is the whole report's (sampled mode).
    pub(crate) fn new(c: &'a pb::ContainerReport, estimated: bool) -> Self {
        Self {
            name: non_empty(&c.name),
            id: non_empty(&c.id),
            memory: c.memory.as_ref().map(MemoryView::from),
            outstanding_bytes: c.outstanding_bytes,
            outstanding_count: c.outstanding_count,
            leak_bytes_per_second: c.leak_bytes_per_second,
            provisional_leak_bytes_per_second: c.provisional_leak_bytes_per_second,
            classed_in_ns: c.classed_in.as_ref().map(ns_of),
            time_to_limit_ns: c.time_to_limit.as_ref().map(ns_of),
            stacks: c.stacks.iter().map(StackView::from).collect(),
            stacks_total: c.stacks_total,
            pids: &c.pids,
            estimated,
        }
    }
}

impl<'a> From<&'a pb::StackReport> for StackView<'a> {
    fn from(s: &'a pb::StackReport) -> Self {
        let class = match pb::GrowthClass::try_from(s.growth_class).unwrap_or_default() {
            pb::GrowthClass::Unspecified => None,
            pb::GrowthClass::InsufficientData => Some(GrowthClass::InsufficientData),
            pb::GrowthClass::Growing => Some(GrowthClass::Growing),
            pb::GrowthClass::LevellingOff => Some(GrowthClass::LevellingOff),
            pb::GrowthClass::Stable => Some(GrowthClass::Stable),
            pb::GrowthClass::Shrinking => Some(GrowthClass::Shrinking),
        };
        Self {
            stack_id: &s.stack_id,
            pid: s.pid,
            kind: if s.kind == pb::MemoryKind::Mmap as i32 {
                MemoryKind::Mmap
            } else {
                MemoryKind::Heap
            },
            bytes: s.bytes,
            count: s.count,
            oldest_age_ns: s.oldest_age.as_ref().map_or(0, ns_of),
            growth_bytes: 0,
            growth: class.map(|class| GrowthView {
                bytes_per_second: s.growth_bytes_per_second,
                recent_bytes_per_second: s.recent_growth_bytes_per_second,
                class,
                samples: s.growth_samples,
                span_ns: s.growth_span.as_ref().map_or(0, ns_of),
                classed_in_ns: s.classed_in.as_ref().map_or(0, ns_of),
            }),
            frames: s.frames.iter().map(FrameView::from).collect(),
        }
    }
}

impl<'a> From<&'a pb::Frame> for FrameView<'a> {
    fn from(f: &'a pb::Frame) -> Self {
        Self {
            addr: f.address,
            function: non_empty(&f.function),
            file: non_empty(&f.file),
            line: Some(f.line).filter(|&line| line != 0),
            module: non_empty(&f.module),
            module_offset: Some(f.module_offset).filter(|_| !f.module.is_empty()),
            inlined: f.inlined,
        }
    }
}

impl FrameView<'_> {
    /// `function (file:line)`, or `module+0xoffset`, or the bare address.
    pub(crate) fn display_name(&self) -> String {
        match (self.function, self.file, self.line) {
            (Some(function), Some(file), Some(line)) => {
                let file = file.rsplit('/').next().unwrap_or(file);
                format!("{function} ({file}:{line})")
            }
            (Some(function), _, _) => function.to_owned(),
            (None, _, _) => match (self.module, self.module_offset) {
                (Some(module), Some(offset)) => format!("{module}+{offset:#x}"),
                _ => format!("{:#x}", self.addr),
            },
        }
    }
}

/// The frames a person reads: up to and including `main`, or up to the thread's start
/// (`start_thread` and the `clone` below it), since what lies below is the C library starting
/// the program or thread; with `full`, all of them. Returns them and how many were folded.
pub(crate) fn frames_to_show<'f, 'a>(
    frames: &'f [FrameView<'a>],
    full: bool,
) -> (&'f [FrameView<'a>], usize) {
    if full {
        return (frames, 0);
    }
    fn name<'a>(frame: &FrameView<'a>) -> &'a str {
        frame.function.unwrap_or_default()
    }
    let end = frames
        .iter()
        .position(|f| name(f) == "main")
        .map(|at| at + 1)
        .or_else(|| {
            frames
                .iter()
                .position(|f| matches!(name(f), "start_thread" | "clone3" | "__clone" | "clone"))
        })
        .unwrap_or(frames.len());
    (&frames[..end], frames.len() - end)
}

/// The report as a table: who it is about, its warnings, then each container's stacks.
pub(crate) fn table(report: &ReportView<'_>, full_stacks: bool) -> String {
    let mut out = String::new();
    let who = match (report.namespace, report.pod_name) {
        (Some(ns), Some(name)) => format!("pod {ns}/{name}"),
        _ => report
            .pod_uid
            .map_or_else(|| "process".to_owned(), |uid| format!("pod uid {uid}")),
    };
    let _ = writeln!(out, "{who}");
    if let Some(reason) = report.incomplete_reason {
        let _ = writeln!(out, "  WARNING: INCOMPLETE REPORT: {reason}");
    }
    if report.estimated {
        let _ = writeln!(
            out,
            "  (sampled: one allocation per {} bytes on average; bytes and counts are estimates)",
            report.sample_bytes
        );
    }
    for container in &report.containers {
        out.push_str(&container_table(container, full_stacks));
    }
    out
}

/// One container's part of a report table: its totals, then its stacks ranked.
pub(crate) fn container_table(container: &ContainerView<'_>, full_stacks: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  container {}: {} outstanding ({} B) in {} allocations; memory {}; leaking {}/s{}{}",
        container.name.unwrap_or("-"),
        human_bytes(container.outstanding_bytes),
        container.outstanding_bytes,
        container.outstanding_count,
        memory_text(container.memory.as_ref()),
        human_bytes(container.leak_bytes_per_second.max(0.0) as u64),
        provisional(container),
        container
            .time_to_limit_ns
            .map(|ns| format!("; limit reached in ~{}", human_duration_ns(ns)))
            .unwrap_or_default(),
    );
    let _ = writeln!(
        out,
        "    {:>4} {:>12} {:>9} {:>8} {:>12} {:<16} CALL SITE",
        "#", "BYTES", "ALLOCS", "OLDEST", "GROWTH/s", "TREND"
    );
    for (rank, stack) in container.stacks.iter().enumerate() {
        let (rate, class) = stack.growth.map_or((0.0, "-".to_owned()), |g| {
            (
                g.bytes_per_second,
                match g.class {
                    // The rate is measured already; it is classed once enough of the window
                    // has passed.
                    GrowthClass::InsufficientData => {
                        format!("new (in {})", human_duration_ns(g.classed_in_ns))
                    }
                    GrowthClass::Growing => "GROWING".to_owned(),
                    GrowthClass::LevellingOff => "levelling off".to_owned(),
                    GrowthClass::Stable => "stable".to_owned(),
                    GrowthClass::Shrinking => "shrinking".to_owned(),
                },
            )
        });
        let (shown, folded) = frames_to_show(&stack.frames, full_stacks);
        let mut frames = shown.iter();
        let site = frames
            .next()
            .map_or_else(|| "[stack lost]".to_owned(), FrameView::display_name);
        let _ = writeln!(
            out,
            "    {:>4} {:>12} {:>9} {:>8} {:>12} {:<16} {} (pid {})",
            rank + 1,
            stack.bytes,
            stack.count,
            human_duration_ns(stack.oldest_age_ns),
            format!("{rate:+.0}"),
            class,
            site,
            stack.pid
        );
        for frame in frames.take(8) {
            let _ = writeln!(out, "    {:>69} {}", "", frame.display_name());
        }
        if folded > 0 {
            let _ = writeln!(
                out,
                "    {:>69} ({folded} C library frames below; --full-stacks shows them)",
                ""
            );
        }
    }
    let total = container.stacks_total as usize;
    if total > container.stacks.len() {
        let _ = writeln!(
            out,
            "    ... {} more stacks",
            total - container.stacks.len()
        );
    }
    out
}

/// The provisional part of a container's leak rate: what its stacks too new to class grow by.
fn provisional(container: &ContainerView<'_>) -> String {
    match container.classed_in_ns {
        Some(ns) if container.provisional_leak_bytes_per_second > 0.0 => format!(
            " (+{}/s provisional, from call sites classed in ~{})",
            human_bytes(container.provisional_leak_bytes_per_second as u64),
            human_duration_ns(ns)
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests;
