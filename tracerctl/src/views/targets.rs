//! What is on the node (`pods`) and what `trace start|stop` did: pods, containers and
//! processes with memory figures, whether each is traced and how its stacks are unwound.

use std::fmt::Write as _;

use serde::Serialize;
use tracer_proto::v1 as pb;

use super::{MemoryView, human_bytes, human_duration_ns, memory_text, non_empty, ns_of};

/// Everything on the node.
#[derive(Debug, Serialize)]
pub(crate) struct NodeTargetsView<'a> {
    pods: Vec<PodView<'a>>,
    /// Processes traced by pid outside any pod.
    other_processes: Vec<ProcessView<'a>>,
}

/// A pod.
#[derive(Debug, Serialize)]
struct PodView<'a> {
    namespace: Option<&'a str>,
    name: Option<&'a str>,
    uid: &'a str,
    qos_class: &'a str,
    /// Whether the agent's selection includes it.
    selected: bool,
    containers: Vec<ContainerView<'a>>,
}

/// A container.
#[derive(Debug, Serialize)]
struct ContainerView<'a> {
    name: Option<&'a str>,
    /// Runtime id.
    id: &'a str,
    runtime: &'a str,
    memory: Option<MemoryView>,
    processes: Vec<ProcessView<'a>>,
    /// `selected`, `auto`, `excluded`, `watched` or `off` (absent from older agents).
    #[serde(skip_serializing_if = "Option::is_none")]
    tracing: Option<&'a str>,
    /// Why, when there is more to say (an escalation's trigger).
    #[serde(skip_serializing_if = "Option::is_none")]
    tracing_reason: Option<&'a str>,
    /// The memory trend from the cgroup files, when watched.
    #[serde(skip_serializing_if = "Option::is_none")]
    trend: Option<TrendView>,
}

/// A watched container's memory trend.
#[derive(Debug, Serialize)]
struct TrendView {
    anon_bytes: u64,
    bytes_per_second: f64,
    recent_bytes_per_second: f64,
    /// `growing`, `levelling_off`, `stable`, `shrinking` or `insufficient_data`.
    class: &'static str,
    time_to_limit_ns: Option<u64>,
    classed_in_ns: u64,
}

impl From<&pb::ContainerTrend> for TrendView {
    fn from(t: &pb::ContainerTrend) -> Self {
        Self {
            anon_bytes: t.anon_bytes,
            bytes_per_second: t.growth_bytes_per_second,
            recent_bytes_per_second: t.recent_growth_bytes_per_second,
            class: match t.growth_class() {
                pb::GrowthClass::Growing => "growing",
                pb::GrowthClass::LevellingOff => "levelling_off",
                pb::GrowthClass::Stable => "stable",
                pb::GrowthClass::Shrinking => "shrinking",
                pb::GrowthClass::InsufficientData | pb::GrowthClass::Unspecified => {
                    "insufficient_data"
                }
            },
            time_to_limit_ns: t.time_to_limit.as_ref().map(ns_of),
            classed_in_ns: t.classed_in.as_ref().map_or(0, ns_of),
        }
    }
}

/// A trend in a few words: `growing +1.0 MiB/s, 2.1h to limit`, `stable`, `new (in 2.0m)`.
fn trend_text(trend: Option<&TrendView>) -> String {
    let Some(t) = trend else {
        return "-".into();
    };
    let rate = |bps: f64| {
        let sign = if bps < 0.0 { "-" } else { "+" };
        format!("{sign}{}/s", human_bytes(bps.abs() as u64))
    };
    match t.class {
        "growing" => match t.time_to_limit_ns {
            Some(left) => format!(
                "growing {}, {} to limit",
                rate(t.bytes_per_second),
                human_duration_ns(left)
            ),
            None => format!("growing {}", rate(t.bytes_per_second)),
        },
        "insufficient_data" if t.classed_in_ns > 0 => format!(
            "new {} (in {})",
            rate(t.bytes_per_second),
            human_duration_ns(t.classed_in_ns)
        ),
        "insufficient_data" => "new".into(),
        "levelling_off" => "levelling off".into(),
        other => other.into(),
    }
}

/// A process.
#[derive(Debug, Serialize)]
pub(crate) struct ProcessView<'a> {
    pid: u32,
    comm: &'a str,
    /// True when its allocator is probed.
    traced: bool,
    /// The allocator library probed.
    allocator: Option<&'a str>,
    /// Why a selected process is not traced.
    not_traced_reason: Option<&'a str>,
    unwinding: Vec<UnwindingView<'a>>,
    /// While traced: what tracing costs it, as a share of one core.
    #[serde(skip_serializing_if = "Option::is_none")]
    tracing_core_share: Option<f64>,
    /// While traced: mean bytes between sampled allocations (absent: exact).
    #[serde(skip_serializing_if = "Option::is_none")]
    sample_bytes: Option<u64>,
    /// Why the overhead budget switched it to sampling.
    #[serde(skip_serializing_if = "Option::is_none")]
    sampling_reason: Option<&'a str>,
}

/// How stacks are unwound through one of a process's executable files.
#[derive(Debug, Serialize)]
struct UnwindingView<'a> {
    /// The binary's path as the process sees it.
    binary: &'a str,
    /// `frame pointers` or `unwind table`.
    method: &'a str,
    /// Rows of its unwind table (0 when walked by frame pointer).
    rows: u64,
    /// Why the preferred method could not be used, if so.
    note: Option<&'a str>,
}

impl<'a> From<&'a pb::ListTargetsResponse> for NodeTargetsView<'a> {
    fn from(response: &'a pb::ListTargetsResponse) -> Self {
        Self {
            pods: response
                .pods
                .iter()
                .map(|pod| PodView {
                    namespace: pod.pod.as_ref().and_then(|p| non_empty(&p.namespace)),
                    name: pod.pod.as_ref().and_then(|p| non_empty(&p.name)),
                    uid: &pod.uid,
                    qos_class: &pod.qos_class,
                    selected: pod.selected,
                    containers: pod
                        .containers
                        .iter()
                        .map(|c| ContainerView {
                            name: non_empty(&c.name),
                            id: &c.id,
                            runtime: &c.runtime,
                            memory: c.memory.as_ref().map(MemoryView::from),
                            processes: c.processes.iter().map(ProcessView::from).collect(),
                            tracing: non_empty(&c.tracing),
                            tracing_reason: non_empty(&c.tracing_reason),
                            trend: c.trend.as_ref().map(TrendView::from),
                        })
                        .collect(),
                })
                .collect(),
            other_processes: response
                .other_processes
                .iter()
                .map(ProcessView::from)
                .collect(),
        }
    }
}

impl<'a> From<&'a pb::ProcessTarget> for ProcessView<'a> {
    fn from(p: &'a pb::ProcessTarget) -> Self {
        Self {
            pid: p.pid,
            comm: &p.comm,
            traced: p.traced,
            allocator: non_empty(&p.allocator),
            not_traced_reason: non_empty(&p.not_traced_reason),
            tracing_core_share: p.tracing_core_share,
            sample_bytes: (p.sample_bytes > 0).then_some(p.sample_bytes),
            sampling_reason: non_empty(&p.sampling_reason),
            unwinding: p
                .unwinding
                .iter()
                .map(|u| UnwindingView {
                    binary: &u.binary,
                    method: &u.method,
                    rows: u.rows,
                    note: non_empty(&u.note),
                })
                .collect(),
        }
    }
}

/// One line per container: its pod, how many of its processes are traced, its memory and
/// its processes (with why one is not traced); then the processes traced outside any pod.
pub(crate) fn table(targets: &NodeTargetsView<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<40} {:<20} {:<8} {:<9} {:<26} {:<34} PROCESSES",
        "POD", "CONTAINER", "TRACED", "TRACING", "MEMORY", "TREND"
    );
    for pod in &targets.pods {
        let name = match (pod.namespace, pod.name) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            _ => format!("uid:{}", pod.uid),
        };
        for container in &pod.containers {
            let traced = container.processes.iter().filter(|p| p.traced).count();
            let processes: Vec<String> = container
                .processes
                .iter()
                .map(|p| match (p.not_traced_reason, p.tracing_core_share) {
                    (Some(reason), _) if !p.traced => format!("{}({}: {reason})", p.pid, p.comm),
                    (_, Some(share)) if p.traced => {
                        let sampled = p
                            .sample_bytes
                            .map(|bytes| format!(", sampled every {bytes} B"))
                            .unwrap_or_default();
                        format!(
                            "{}({}, tracing {:.1}% of a core{sampled})",
                            p.pid,
                            p.comm,
                            share * 100.0
                        )
                    }
                    _ => format!("{}({})", p.pid, p.comm),
                })
                .collect();
            let _ = writeln!(
                out,
                "{:<40} {:<20} {:<8} {:<9} {:<26} {:<34} {}",
                name,
                container
                    .name
                    .unwrap_or_else(|| container.id.get(..12).unwrap_or(container.id)),
                format!("{traced}/{}", container.processes.len()),
                container.tracing.unwrap_or("-"),
                memory_text(container.memory.as_ref()),
                trend_text(container.trend.as_ref()),
                processes.join(" ")
            );
            if let Some(reason) = container.tracing_reason {
                let _ = writeln!(out, "{:<40} {:<20} └ {reason}", "", "");
            }
        }
    }
    for process in &targets.other_processes {
        let _ = writeln!(
            out,
            "{:<40} {:<20} {:<8} {:<9} {:<26} {:<34} {}({})",
            "-", "-", "1/1", "pid", "-", "-", process.pid, process.comm
        );
    }
    out
}

/// What `trace start` found: each process, whether it is traced (with which allocator) and
/// how its stacks are unwound through each binary.
pub(crate) fn processes_table(processes: &[ProcessView<'_>]) -> String {
    let mut out = String::new();
    for p in processes {
        let state = if p.traced {
            format!("traced ({})", p.allocator.unwrap_or("?"))
        } else {
            format!("not traced: {}", p.not_traced_reason.unwrap_or("pending"))
        };
        let _ = writeln!(out, "{} {} {state}", p.pid, p.comm);
        for binary in &p.unwinding {
            let name = binary.binary.rsplit('/').next().unwrap_or(binary.binary);
            let note = binary
                .note
                .map(|note| format!(" ({note})"))
                .unwrap_or_default();
            let _ = writeln!(out, "    stacks through {name}: {}{note}", binary.method);
        }
    }
    out
}

/// What `trace stop` stopped.
pub(crate) fn stopped_table(pids: &[u32]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::json_line;

    #[test]
    fn the_node_prints_the_json_the_daemon_package_printed() {
        for (targets, printed) in [
            fixture!(pb::ListTargetsResponse, "pods-json"),
            fixture!(pb::ListTargetsResponse, "pods-process-outside-pods-json"),
            fixture!(pb::ListTargetsResponse, "pods-none-json"),
        ] {
            assert_eq!(json_line(&NodeTargetsView::from(&targets)), printed);
        }
    }

    #[test]
    fn the_node_table_names_pods_or_uids_and_why_a_process_is_not_traced() {
        for (targets, printed) in [
            fixture!(
                pb::ListTargetsResponse,
                "pods-table-with-a-reason-not-traced"
            ),
            fixture!(pb::ListTargetsResponse, "pods-table-two-drivers"),
            fixture!(pb::ListTargetsResponse, "pods-process-outside-pods-table"),
            fixture!(pb::ListTargetsResponse, "pods-none-table"),
        ] {
            assert_eq!(table(&NodeTargetsView::from(&targets)), printed);
        }
        let (_, printed) = fixture!(
            pb::ListTargetsResponse,
            "pods-table-with-a-reason-not-traced"
        );
        assert!(
            printed.contains("(aged_leaks: max processes reached (1))"),
            "{printed}"
        );
    }

    #[test]
    fn a_watched_container_shows_its_trend_and_an_escalated_one_why() {
        let (mut targets, _) = fixture!(pb::ListTargetsResponse, "pods-table-two-drivers");
        let container = &mut targets.pods[0].containers[0];
        container.tracing = "auto".into();
        container.tracing_reason = "growing at 1.0 MiB/s, 2h to the limit".into();
        container.trend = Some(pb::ContainerTrend {
            anon_bytes: 64 << 20,
            growth_bytes_per_second: f64::from(1 << 20),
            growth_class: pb::GrowthClass::Growing.into(),
            time_to_limit: Some(prost_types::Duration {
                seconds: 7200,
                nanos: 0,
            }),
            ..pb::ContainerTrend::default()
        });
        let printed = table(&NodeTargetsView::from(&targets));
        assert!(
            printed.contains("auto") && printed.contains("growing +1.0 MiB/s, 2.0h to limit"),
            "{printed}"
        );
        assert!(
            printed.contains("└ growing at 1.0 MiB/s, 2h to the limit"),
            "{printed}"
        );
        let json = json_line(&NodeTargetsView::from(&targets));
        assert!(
            json.contains(r#""tracing":"auto""#) && json.contains(r#""class":"growing""#),
            "{json}"
        );
    }

    #[test]
    fn started_processes_print_as_before_with_their_unwinding() {
        let (started, printed) = fixture!(pb::StartTracingResponse, "trace-start-json");
        let views: Vec<ProcessView<'_>> = started.processes.iter().map(Into::into).collect();
        assert_eq!(json_line(&views), printed);
        let (started, printed) = fixture!(pb::StartTracingResponse, "trace-start-table");
        let views: Vec<ProcessView<'_>> = started.processes.iter().map(Into::into).collect();
        assert_eq!(processes_table(&views), printed);
        assert!(
            printed.contains("stacks through libc.so.6: unwind table"),
            "{printed}"
        );
    }

    #[test]
    fn stopping_says_which_pids_or_that_nothing_was_traced() {
        let (stopped, printed) = fixture!(pb::StopTracingResponse, "trace-stop-json");
        assert_eq!(json_line(&stopped.pids), printed);
        let (stopped, printed) = fixture!(pb::StopTracingResponse, "trace-stop-table");
        assert_eq!(stopped_table(&stopped.pids), printed);
        let (stopped, printed) = fixture!(pb::StopTracingResponse, "trace-stop-nothing-table");
        assert_eq!(stopped_table(&stopped.pids), printed);
        assert_eq!(printed, "nothing was traced\n");
    }
}
