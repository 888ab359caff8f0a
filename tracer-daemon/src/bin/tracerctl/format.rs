//! Human output of tracerctl.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicBool, Ordering},
};

use tracer_daemon::{
    agent::targets::{NodeTargets, TargetProcess},
    discover::memory::MemoryFigures,
    report::{
        growth::GrowthClass,
        pod::{ContainerReport, PodReport},
    },
};
use tracer_proto::v1 as pb;

/// `1.5 MiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Whether text reports show every frame (`--full-stacks`), set once from the command line.
static FULL_STACKS: AtomicBool = AtomicBool::new(false);

/// Shows every frame of a stack in text reports, none folded.
pub(crate) fn show_full_stacks(full: bool) {
    FULL_STACKS.store(full, Ordering::Relaxed);
}

fn human_duration_ns(ns: u64) -> String {
    let seconds = ns as f64 / 1e9;
    if seconds < 1.0 {
        format!("{:.0}ms", seconds * 1e3)
    } else if seconds < 120.0 {
        format!("{seconds:.1}s")
    } else if seconds < 7200.0 {
        format!("{:.1}m", seconds / 60.0)
    } else {
        format!("{:.1}h", seconds / 3600.0)
    }
}

fn memory(m: Option<&MemoryFigures>) -> String {
    match m {
        None => "-".into(),
        Some(m) => match m.limit_bytes {
            Some(limit) => format!(
                "{} / {} ({:.0}%)",
                human_bytes(m.usage_bytes),
                human_bytes(limit),
                m.usage_bytes as f64 * 100.0 / limit.max(1) as f64
            ),
            None => format!("{} / no limit", human_bytes(m.usage_bytes)),
        },
    }
}

pub(crate) fn targets(targets: &NodeTargets) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<40} {:<20} {:<8} {:<26} PROCESSES",
        "POD", "CONTAINER", "TRACED", "MEMORY"
    );
    for pod in &targets.pods {
        let name = match (&pod.namespace, &pod.name) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            _ => format!("uid:{}", pod.uid),
        };
        for container in &pod.containers {
            let traced = container.processes.iter().filter(|p| p.traced).count();
            let processes: Vec<String> = container
                .processes
                .iter()
                .map(|p| match &p.not_traced_reason {
                    Some(reason) if !p.traced => format!("{}({}: {reason})", p.pid, p.comm),
                    _ => format!("{}({})", p.pid, p.comm),
                })
                .collect();
            let _ = writeln!(
                out,
                "{:<40} {:<20} {:<8} {:<26} {}",
                name,
                container
                    .name
                    .as_deref()
                    .unwrap_or(&container.id[..12.min(container.id.len())]),
                format!("{traced}/{}", container.processes.len()),
                memory(container.memory.as_ref()),
                processes.join(" ")
            );
        }
    }
    for process in &targets.other_processes {
        let _ = writeln!(
            out,
            "{:<40} {:<20} {:<8} {:<26} {}({})",
            "-", "-", "1/1", "-", process.pid, process.comm
        );
    }
    out
}

pub(crate) fn report(report: &PodReport) -> String {
    let mut out = String::new();
    let who = match (&report.namespace, &report.pod_name) {
        (Some(ns), Some(name)) => format!("pod {ns}/{name}"),
        _ => report
            .pod_uid
            .as_deref()
            .map_or_else(|| "process".to_owned(), |uid| format!("pod uid {uid}")),
    };
    let _ = writeln!(out, "{who}");
    if let Some(reason) = &report.incomplete_reason {
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
        let _ = writeln!(
            out,
            "  container {}: {} outstanding ({} B) in {} allocations; memory {}; leaking {}/s{}{}",
            container.name.as_deref().unwrap_or("-"),
            human_bytes(container.outstanding_bytes),
            container.outstanding_bytes,
            container.outstanding_count,
            memory(container.memory.as_ref()),
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
                        // The rate is measured already; it is classed once enough of the
                        // window has passed.
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
            let (shown, folded) = tracer_daemon::report::frames_to_show(
                &stack.frames,
                FULL_STACKS.load(Ordering::Relaxed),
            );
            let mut frames = shown.iter();
            let site = frames
                .next()
                .map_or_else(|| "[stack lost]".to_owned(), |f| f.display_name());
            let _ = writeln!(
                out,
                "    {:>4} {:>12} {:>9} {:>8} {:>12} {:<16} {} (pid {})",
                rank + 1,
                stack.bytes,
                stack.count,
                human_duration_ns(stack.oldest_age_ns),
                format!("{:+.0}", rate),
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
        if container.stacks_total > container.stacks.len() {
            let _ = writeln!(
                out,
                "    ... {} more stacks",
                container.stacks_total - container.stacks.len()
            );
        }
    }
    out
}

/// The provisional part of a container's leak rate: what its stacks too new to class grow by.
fn provisional(container: &tracer_daemon::report::pod::ContainerReport) -> String {
    match container.classed_in_ns {
        Some(ns) if container.provisional_leak_bytes_per_second > 0.0 => format!(
            " (+{}/s provisional, from call sites classed in ~{})",
            human_bytes(container.provisional_leak_bytes_per_second as u64),
            human_duration_ns(ns)
        ),
        _ => String::new(),
    }
}

pub(crate) fn processes(processes: &Vec<TargetProcess>) -> String {
    let mut out = String::new();
    for p in processes {
        let state = if p.traced {
            format!("traced ({})", p.allocator.as_deref().unwrap_or("?"))
        } else {
            format!(
                "not traced: {}",
                p.not_traced_reason.as_deref().unwrap_or("pending")
            )
        };
        let _ = writeln!(out, "{} {} {state}", p.pid, p.comm);
        for binary in &p.unwinding {
            let name = binary.binary.rsplit('/').next().unwrap_or(&binary.binary);
            let note = binary
                .note
                .as_deref()
                .map(|note| format!(" ({note})"))
                .unwrap_or_default();
            let _ = writeln!(out, "    stacks through {name}: {}{note}", binary.method);
        }
    }
    out
}

#[expect(
    clippy::ptr_arg,
    reason = "print takes fn(&T) and T is the response's Vec"
)]
pub(crate) fn stopped(pids: &Vec<u32>) -> String {
    if pids.is_empty() {
        return "nothing was traced\n".into();
    }
    format!(
        "stopped tracing {}\n",
        pids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn time_of(t: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = t else { return "-".into() };
    let secs = u64::try_from(t.seconds).unwrap_or(0);
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(when).to_string()
}

fn pod_of(pod: Option<&pb::PodName>, uid: &str) -> String {
    match pod {
        Some(p) if !p.namespace.is_empty() => format!("{}/{}", p.namespace, p.name),
        _ if !uid.is_empty() => format!("uid:{uid}"),
        _ => "-".into(),
    }
}

/// An OOM event, for JSON and tables.
#[derive(serde::Serialize)]
pub(crate) struct OomEventView {
    evidence_id: u64,
    time: String,
    pod: String,
    pod_uid: String,
    container: String,
    victim_pid: u32,
    victim_comm: String,
    trigger_pid: u32,
    trigger_comm: String,
    rss_anon_bytes: u64,
    rss_file_bytes: u64,
    rss_shmem_bytes: u64,
    memory: Option<MemoryFigures>,
    source: String,
    top_call_site: String,
}

impl From<&pb::OomEvent> for OomEventView {
    fn from(e: &pb::OomEvent) -> Self {
        Self {
            evidence_id: e.evidence_id,
            time: time_of(e.time.as_ref()),
            pod: pod_of(e.pod.as_ref(), &e.pod_uid),
            pod_uid: e.pod_uid.clone(),
            container: e.container.clone(),
            victim_pid: e.victim_pid,
            victim_comm: e.victim_comm.clone(),
            trigger_pid: e.trigger_pid,
            trigger_comm: e.trigger_comm.clone(),
            rss_anon_bytes: e.rss_anon_bytes,
            rss_file_bytes: e.rss_file_bytes,
            rss_shmem_bytes: e.rss_shmem_bytes,
            memory: e.memory.as_ref().map(Into::into),
            source: e.source.clone(),
            top_call_site: e.top_call_site.clone(),
        }
    }
}

pub(crate) fn oom_events(events: &Vec<OomEventView>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:<20} {:<32} {:<12} {:<22} {:<10} TOP CALL SITE",
        "EVIDENCE", "TIME", "POD", "CONTAINER", "VICTIM", "ANON RSS"
    );
    for e in events {
        let _ = writeln!(
            out,
            "{:<9} {:<20} {:<32} {:<12} {:<22} {:<10} {}",
            e.evidence_id,
            e.time,
            e.pod,
            e.container,
            if e.victim_pid == 0 {
                "? (counter)".to_owned()
            } else {
                format!("{} ({})", e.victim_pid, e.victim_comm)
            },
            human_bytes(e.rss_anon_bytes),
            e.top_call_site
        );
    }
    if events.is_empty() {
        out.push_str("no OOM kills recorded\n");
    }
    out
}

/// An evidence listing row.
#[derive(serde::Serialize)]
pub(crate) struct SummaryView {
    id: u64,
    kind: String,
    taken_at: String,
    pod: String,
    pod_uid: String,
    container: String,
    summary: String,
}

impl From<&pb::EvidenceSummary> for SummaryView {
    fn from(s: &pb::EvidenceSummary) -> Self {
        Self {
            id: s.id,
            kind: s.kind.clone(),
            taken_at: time_of(s.taken_at.as_ref()),
            pod: pod_of(s.pod.as_ref(), &s.pod_uid),
            pod_uid: s.pod_uid.clone(),
            container: s.container.clone(),
            summary: s.summary.clone(),
        }
    }
}

pub(crate) fn evidence_list(list: &Vec<SummaryView>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<10} {:<20} {:<32} {:<12} SUMMARY",
        "ID", "KIND", "TAKEN", "POD", "CONTAINER"
    );
    for s in list {
        let _ = writeln!(
            out,
            "{:<6} {:<10} {:<20} {:<32} {:<12} {}",
            s.id, s.kind, s.taken_at, s.pod, s.container, s.summary
        );
    }
    out
}

/// One evidence record.
#[derive(serde::Serialize)]
pub(crate) struct EvidenceView {
    #[serde(flatten)]
    summary: SummaryView,
    memory: Option<MemoryFigures>,
    oom: Option<OomEventView>,
    report: Option<ContainerReport>,
}

impl From<&pb::Evidence> for EvidenceView {
    fn from(e: &pb::Evidence) -> Self {
        let summary = e
            .summary
            .as_ref()
            .map(SummaryView::from)
            .unwrap_or_else(|| SummaryView::from(&pb::EvidenceSummary::default()));
        let report = e.report.as_ref().map(|r| {
            let wrapper = pb::LeakReport {
                containers: vec![r.clone()],
                ..pb::LeakReport::default()
            };
            PodReport::from(&wrapper).containers.remove(0)
        });
        Self {
            summary,
            memory: e.memory.as_ref().map(Into::into),
            oom: e.oom.as_ref().map(OomEventView::from),
            report,
        }
    }
}

pub(crate) fn evidence(e: &EvidenceView) -> String {
    let mut out = String::new();
    let s = &e.summary;
    let _ = writeln!(
        out,
        "evidence {} [{}] taken {}: pod {} container {}",
        s.id, s.kind, s.taken_at, s.pod, s.container
    );
    let _ = writeln!(out, "  {}", s.summary);
    let _ = writeln!(out, "  memory: {}", memory(e.memory.as_ref()));
    if let Some(oom) = &e.oom {
        let _ = writeln!(
            out,
            "  OOM kill ({}): victim {} ({}), triggered by {} ({}); victim rss anon {} file {} shmem {}",
            oom.source,
            oom.victim_pid,
            oom.victim_comm,
            oom.trigger_pid,
            oom.trigger_comm,
            human_bytes(oom.rss_anon_bytes),
            human_bytes(oom.rss_file_bytes),
            human_bytes(oom.rss_shmem_bytes)
        );
    }
    if let Some(report) = &e.report {
        let pod = PodReport {
            taken_at_unix_ms: 0,
            namespace: None,
            pod_name: None,
            pod_uid: None,
            containers: vec![report.clone()],
            sort_by: tracer_daemon::report::pod::SortBy::Bytes,
            min_age_ns: 0,
            sample_bytes: 0,
            estimated: report.estimated,
            incomplete: false,
            incomplete_reason: None,
            stats: tracer_daemon::collect::stats::BpfStats::default(),
        };
        let text = self::report(&pod);
        out.push_str(text.split_once('\n').map_or("", |(_, rest)| rest));
    } else {
        out.push_str("  no stacks (nothing in the container was traced)\n");
    }
    out
}
