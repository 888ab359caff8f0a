//! Domain ↔ protobuf conversions, in one place at the API edge. Requests are validated here:
//! a malformed field is an `InvalidArgument` naming it.

use std::time::Duration;

use tonic::Status;
use tracer_proto::v1 as pb;

use crate::{
    agent::{
        AgentError, EvidenceQuery, GrowthProfileRequest, PodGrowthProfile, ReportRequest,
        selector::{Selector, Target},
        targets::{ContainerTarget, NodeTargets, PodTarget, TargetProcess},
        watch_all::TracingMode,
    },
    collect::stats::BpfStats,
    discover::memory::MemoryFigures,
    evidence::{
        model::{Evidence, Trigger},
        pprof::ProfileKind,
    },
    report::{
        MemoryKind, StackReport,
        first_touch::{FirstTouchOrder, GrowthProfile},
        growth::{Growth, GrowthClass},
        pod::{ContainerReport, PodReport, SortBy},
        trend::ContainerTrend,
    },
    symbolize::Frame,
    unwind::loader::BinaryUnwinding,
};
use tracer_common::Stat;

/// Most stacks a report may ask for.
pub const MAX_TOP: u32 = 1000;
/// Stacks per report when the request says 0.
pub const DEFAULT_TOP: u32 = 20;
/// Longest minimum age accepted.
pub const MAX_MIN_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Shortest and longest watch interval.
pub const WATCH_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));
/// Watch interval when the request gives none.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(5);

impl From<AgentError> for Status {
    fn from(error: AgentError) -> Self {
        let message = crate::error_chain(&error);
        match error {
            AgentError::InvalidArgument(_) => Status::invalid_argument(message),
            AgentError::NotFound(_) => Status::not_found(message),
            AgentError::NotTraced(_) | AgentError::CannotTrace(_) => {
                Status::failed_precondition(message)
            }
            AgentError::Unavailable(_) | AgentError::Start(_) => Status::unavailable(message),
            AgentError::Collect(_) | AgentError::Store(_) => Status::internal(message),
        }
    }
}

/// A request's selector, validated.
pub fn selector(selector: Option<pb::Selector>) -> Result<Selector, Status> {
    let selector = selector.ok_or_else(|| Status::invalid_argument("selector is required"))?;
    let container = Some(selector.container).filter(|c| !c.is_empty());
    let target = match selector.target {
        Some(pb::selector::Target::Pod(pod)) => Target::Pod {
            namespace: pod.namespace,
            name: pod.name,
        },
        Some(pb::selector::Target::PodUid(uid)) => Target::PodUid(uid),
        Some(pb::selector::Target::Pid(pid)) => Target::Pid(pid),
        None => {
            return Err(Status::invalid_argument(
                "selector must name a pod, a pod uid or a pid",
            ));
        }
    };
    Selector::new(target, container).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn duration(field: &str, value: Option<prost_types::Duration>) -> Result<Option<Duration>, Status> {
    let Some(value) = value else { return Ok(None) };
    Duration::try_from(value)
        .map(Some)
        .map_err(|_| Status::invalid_argument(format!("{field} must be a non-negative duration")))
}

/// A GetLeakReport request, validated.
pub fn report_request(request: pb::GetLeakReportRequest) -> Result<ReportRequest, Status> {
    let selector = selector(request.selector)?;
    if request.top > MAX_TOP {
        return Err(Status::invalid_argument(format!(
            "top must be at most {MAX_TOP}, got {}",
            request.top
        )));
    }
    let min_age = duration("min_age", request.min_age)?.unwrap_or_default();
    if min_age > MAX_MIN_AGE {
        return Err(Status::invalid_argument("min_age must be at most 30 days"));
    }
    let sort_by = match pb::SortBy::try_from(request.sort_by) {
        Ok(pb::SortBy::Unspecified | pb::SortBy::Bytes) => SortBy::Bytes,
        Ok(pb::SortBy::Growth) => SortBy::Growth,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown sort_by {}",
                request.sort_by
            )));
        }
    };
    Ok(ReportRequest {
        selector,
        top: if request.top == 0 {
            DEFAULT_TOP
        } else {
            request.top
        } as usize,
        min_age_ns: u64::try_from(min_age.as_nanos()).unwrap_or(u64::MAX),
        sort_by,
    })
}

/// A WatchLeakReports request, validated: the report request and the interval.
pub fn watch_request(
    request: pb::WatchLeakReportsRequest,
) -> Result<(ReportRequest, Duration), Status> {
    let report = report_request(
        request
            .report
            .ok_or_else(|| Status::invalid_argument("report is required"))?,
    )?;
    let interval = duration("interval", request.interval)?.unwrap_or(DEFAULT_WATCH_INTERVAL);
    let (min, max) = WATCH_INTERVAL_RANGE;
    if interval < min || interval > max {
        return Err(Status::invalid_argument(
            "interval must be between 100ms and 1h",
        ));
    }
    Ok((report, interval))
}

fn proto_duration_ns(ns: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ns / 1_000_000_000) as i64,
        nanos: (ns % 1_000_000_000) as i32,
    }
}

fn ns_of(duration: Option<&prost_types::Duration>) -> u64 {
    duration.map_or(0, |d| {
        (d.seconds.max(0) as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(d.nanos.max(0) as u64)
    })
}

/// A container's memory figures, as the API sends them (a function: both types are other
/// crates').
pub fn memory_figures(m: &MemoryFigures) -> pb::MemoryFigures {
    pb::MemoryFigures {
        usage_bytes: m.usage_bytes,
        limit_bytes: m.limit_bytes,
        limit_hits: m.limit_hits,
        oom_kills: m.oom_kills,
        anon_bytes: m.anon_bytes,
    }
}

/// The API's memory figures as the daemon's (what the API does not carry is zero).
pub fn domain_memory_figures(m: &pb::MemoryFigures) -> MemoryFigures {
    MemoryFigures {
        usage_bytes: m.usage_bytes,
        limit_bytes: m.limit_bytes,
        limit_hits: m.limit_hits,
        oom_kills: m.oom_kills,
        high_events: 0,
        under_oom: false,
        anon_bytes: m.anon_bytes,
    }
}

impl From<&TargetProcess> for pb::ProcessTarget {
    fn from(p: &TargetProcess) -> Self {
        Self {
            pid: p.pid,
            comm: p.comm.clone(),
            traced: p.traced,
            allocator: p.allocator.clone().unwrap_or_default(),
            not_traced_reason: p.not_traced_reason.clone().unwrap_or_default(),
            unwinding: p
                .unwinding
                .iter()
                .map(|u| pb::BinaryUnwinding {
                    binary: u.binary.clone(),
                    method: u.method.clone(),
                    rows: u.rows as u64,
                    note: u.note.clone().unwrap_or_default(),
                })
                .collect(),
            tracing_core_share: p.tracing_core_share,
            sample_bytes: p.sample_bytes,
            sampling_reason: p.sampling_reason.clone().unwrap_or_default(),
        }
    }
}

impl From<&pb::ProcessTarget> for TargetProcess {
    fn from(p: &pb::ProcessTarget) -> Self {
        Self {
            pid: p.pid,
            comm: p.comm.clone(),
            traced: p.traced,
            allocator: Some(p.allocator.clone()).filter(|s| !s.is_empty()),
            not_traced_reason: Some(p.not_traced_reason.clone()).filter(|s| !s.is_empty()),
            unwinding: p
                .unwinding
                .iter()
                .map(|u| BinaryUnwinding {
                    binary: u.binary.clone(),
                    method: u.method.clone(),
                    rows: usize::try_from(u.rows).unwrap_or(usize::MAX),
                    note: Some(u.note.clone()).filter(|s| !s.is_empty()),
                })
                .collect(),
            tracing_core_share: p.tracing_core_share,
            sample_bytes: p.sample_bytes,
            sampling_reason: (!p.sampling_reason.is_empty()).then(|| p.sampling_reason.clone()),
        }
    }
}

impl From<&NodeTargets> for pb::ListTargetsResponse {
    fn from(targets: &NodeTargets) -> Self {
        Self {
            pods: targets
                .pods
                .iter()
                .map(|pod| pb::PodTarget {
                    pod: Some(pb::PodName {
                        namespace: pod.namespace.clone().unwrap_or_default(),
                        name: pod.name.clone().unwrap_or_default(),
                    }),
                    uid: pod.uid.clone(),
                    qos_class: pod.qos_class.clone(),
                    selected: pod.selected,
                    containers: pod
                        .containers
                        .iter()
                        .map(|c| pb::ContainerTarget {
                            name: c.name.clone().unwrap_or_default(),
                            id: c.id.clone(),
                            runtime: c.runtime.clone(),
                            memory: c.memory.as_ref().map(memory_figures),
                            processes: c.processes.iter().map(Into::into).collect(),
                            tracing: c.tracing.as_str().to_owned(),
                            tracing_reason: c.tracing_reason.clone().unwrap_or_default(),
                            trend: c.trend.as_ref().map(container_trend),
                        })
                        .collect(),
                })
                .collect(),
            other_processes: targets.other_processes.iter().map(Into::into).collect(),
        }
    }
}

impl From<&pb::ListTargetsResponse> for NodeTargets {
    fn from(response: &pb::ListTargetsResponse) -> Self {
        let non_empty = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
        Self {
            pods: response
                .pods
                .iter()
                .map(|pod| PodTarget {
                    namespace: pod.pod.as_ref().and_then(|p| non_empty(&p.namespace)),
                    name: pod.pod.as_ref().and_then(|p| non_empty(&p.name)),
                    uid: pod.uid.clone(),
                    qos_class: pod.qos_class.clone(),
                    selected: pod.selected,
                    containers: pod
                        .containers
                        .iter()
                        .map(|c| ContainerTarget {
                            name: non_empty(&c.name),
                            id: c.id.clone(),
                            runtime: c.runtime.clone(),
                            memory: c.memory.as_ref().map(domain_memory_figures),
                            processes: c.processes.iter().map(Into::into).collect(),
                            tracing: TracingMode::from_name(&c.tracing),
                            tracing_reason: non_empty(&c.tracing_reason),
                            trend: c.trend.as_ref().map(domain_container_trend),
                        })
                        .collect(),
                })
                .collect(),
            other_processes: response.other_processes.iter().map(Into::into).collect(),
        }
    }
}

/// A container's trend, as the API sends it.
pub fn container_trend(t: &ContainerTrend) -> pb::ContainerTrend {
    pb::ContainerTrend {
        anon_bytes: t.anon_bytes,
        growth_bytes_per_second: t.growth.bytes_per_second,
        recent_growth_bytes_per_second: t.growth.recent_bytes_per_second,
        growth_class: growth_class(Some(t.growth.class)).into(),
        time_to_limit: t.time_to_limit_ns.map(proto_duration_ns),
        classed_in: (t.growth.classed_in_ns > 0).then(|| proto_duration_ns(t.growth.classed_in_ns)),
        growth_samples: u32::try_from(t.growth.samples).unwrap_or(u32::MAX),
    }
}

fn domain_container_trend(t: &pb::ContainerTrend) -> ContainerTrend {
    ContainerTrend {
        anon_bytes: t.anon_bytes,
        growth: Growth {
            bytes_per_second: t.growth_bytes_per_second,
            recent_bytes_per_second: t.recent_growth_bytes_per_second,
            class: domain_growth_class(t.growth_class()).unwrap_or_default(),
            samples: t.growth_samples as usize,
            span_ns: 0,
            classed_in_ns: ns_of(t.classed_in.as_ref()),
        },
        time_to_limit_ns: t.time_to_limit.as_ref().map(|d| ns_of(Some(d))),
    }
}

fn growth_class(class: Option<GrowthClass>) -> pb::GrowthClass {
    match class {
        None => pb::GrowthClass::Unspecified,
        Some(GrowthClass::InsufficientData) => pb::GrowthClass::InsufficientData,
        Some(GrowthClass::Growing) => pb::GrowthClass::Growing,
        Some(GrowthClass::LevellingOff) => pb::GrowthClass::LevellingOff,
        Some(GrowthClass::Stable) => pb::GrowthClass::Stable,
        Some(GrowthClass::Shrinking) => pb::GrowthClass::Shrinking,
    }
}

fn domain_growth_class(class: pb::GrowthClass) -> Option<GrowthClass> {
    match class {
        pb::GrowthClass::Unspecified => None,
        pb::GrowthClass::InsufficientData => Some(GrowthClass::InsufficientData),
        pb::GrowthClass::Growing => Some(GrowthClass::Growing),
        pb::GrowthClass::LevellingOff => Some(GrowthClass::LevellingOff),
        pb::GrowthClass::Stable => Some(GrowthClass::Stable),
        pb::GrowthClass::Shrinking => Some(GrowthClass::Shrinking),
    }
}

/// Longest function or path text sent (bounded responses).
const MAX_TEXT: usize = 1024;

fn bounded(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl From<&Frame> for pb::Frame {
    fn from(f: &Frame) -> Self {
        Self {
            address: f.addr,
            function: f.function.as_deref().map(bounded).unwrap_or_default(),
            file: f.file.as_deref().map(bounded).unwrap_or_default(),
            line: f.line.unwrap_or(0),
            module: f.module.as_deref().map(bounded).unwrap_or_default(),
            module_offset: f.module_offset.unwrap_or(0),
            inlined: f.inlined,
        }
    }
}

impl From<&pb::Frame> for Frame {
    fn from(f: &pb::Frame) -> Self {
        let non_empty = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
        Self {
            addr: f.address,
            function: non_empty(&f.function),
            file: non_empty(&f.file),
            line: Some(f.line).filter(|&l| l != 0),
            module: non_empty(&f.module),
            module_offset: Some(f.module_offset).filter(|_| !f.module.is_empty()),
            inlined: f.inlined,
        }
    }
}

impl From<&StackReport> for pb::StackReport {
    fn from(s: &StackReport) -> Self {
        Self {
            stack_id: s.stack_id.clone(),
            pid: s.pid,
            kind: match s.kind {
                MemoryKind::Heap => pb::MemoryKind::Heap,
                MemoryKind::Mmap => pb::MemoryKind::Mmap,
            } as i32,
            bytes: s.bytes,
            count: s.count,
            oldest_age: Some(proto_duration_ns(s.oldest_age_ns)),
            growth_bytes_per_second: s.growth.map_or(0.0, |g| g.bytes_per_second),
            recent_growth_bytes_per_second: s.growth.map_or(0.0, |g| g.recent_bytes_per_second),
            growth_class: growth_class(s.growth.map(|g| g.class)) as i32,
            frames: s.frames.iter().map(Into::into).collect(),
            growth_samples: s
                .growth
                .map_or(0, |g| u32::try_from(g.samples).unwrap_or(u32::MAX)),
            growth_span: s.growth.map(|g| proto_duration_ns(g.span_ns)),
            classed_in: s
                .growth
                .filter(|g| g.class == GrowthClass::InsufficientData)
                .map(|g| proto_duration_ns(g.classed_in_ns)),
        }
    }
}

impl From<&pb::StackReport> for StackReport {
    fn from(s: &pb::StackReport) -> Self {
        let class =
            domain_growth_class(pb::GrowthClass::try_from(s.growth_class).unwrap_or_default());
        Self {
            stack_id: s.stack_id.clone(),
            pid: s.pid,
            kind: if s.kind == pb::MemoryKind::Mmap as i32 {
                MemoryKind::Mmap
            } else {
                MemoryKind::Heap
            },
            bytes: s.bytes,
            count: s.count,
            oldest_age_ns: ns_of(s.oldest_age.as_ref()),
            growth_bytes: 0,
            growth: class.map(|class| Growth {
                bytes_per_second: s.growth_bytes_per_second,
                recent_bytes_per_second: s.recent_growth_bytes_per_second,
                class,
                samples: s.growth_samples as usize,
                span_ns: ns_of(s.growth_span.as_ref()),
                classed_in_ns: ns_of(s.classed_in.as_ref()),
            }),
            frames: s.frames.iter().map(Frame::from).collect::<Vec<_>>().into(),
            members: Vec::new(),
        }
    }
}

fn losses(stats: &BpfStats) -> pb::LossCounters {
    pb::LossCounters {
        allocations_map_full: stats.get(Stat::ALLOCS_MAP_FULL),
        stack_totals_map_full: stats.get(Stat::STACK_TOTALS_MAP_FULL),
        stacks_lost: stats.get(Stat::STACKS_LOST) + stats.get(Stat::STACK_TRACES_MAP_FULL),
        dropped_events: stats.get(Stat::EVENTS_DROPPED),
        thread_state_full: stats.get(Stat::THREAD_STATE_FULL),
    }
}

impl From<&PodReport> for pb::LeakReport {
    fn from(r: &PodReport) -> Self {
        Self {
            taken_at: Some(prost_types::Timestamp {
                seconds: (r.taken_at_unix_ms / 1000) as i64,
                nanos: ((r.taken_at_unix_ms % 1000) * 1_000_000) as i32,
            }),
            pod: Some(pb::PodName {
                namespace: r.namespace.clone().unwrap_or_default(),
                name: r.pod_name.clone().unwrap_or_default(),
            }),
            pod_uid: r.pod_uid.clone().unwrap_or_default(),
            containers: r.containers.iter().map(container_report).collect(),
            sort_by: match r.sort_by {
                SortBy::Bytes => pb::SortBy::Bytes,
                SortBy::Growth => pb::SortBy::Growth,
            } as i32,
            min_age: Some(proto_duration_ns(r.min_age_ns)),
            losses: Some(losses(&r.stats)),
            sample_bytes: r.sample_bytes,
            estimated: r.estimated,
            reports_skipped: 0,
            incomplete: r.incomplete,
            incomplete_reason: r.incomplete_reason.clone().unwrap_or_default(),
        }
    }
}

impl From<&pb::LeakReport> for PodReport {
    fn from(r: &pb::LeakReport) -> Self {
        let non_empty = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
        let losses = r.losses.unwrap_or_default();
        let stats = BpfStats(
            [
                (
                    Stat::NAMES[Stat::ALLOCS_MAP_FULL.0 as usize],
                    losses.allocations_map_full,
                ),
                (
                    Stat::NAMES[Stat::STACK_TOTALS_MAP_FULL.0 as usize],
                    losses.stack_totals_map_full,
                ),
                (
                    Stat::NAMES[Stat::STACKS_LOST.0 as usize],
                    losses.stacks_lost,
                ),
                (
                    Stat::NAMES[Stat::EVENTS_DROPPED.0 as usize],
                    losses.dropped_events,
                ),
                (
                    Stat::NAMES[Stat::THREAD_STATE_FULL.0 as usize],
                    losses.thread_state_full,
                ),
            ]
            .into_iter()
            .collect(),
        );
        Self {
            taken_at_unix_ms: r.taken_at.map_or(0, |t| {
                (t.seconds.max(0) as u64) * 1000 + (t.nanos.max(0) as u64) / 1_000_000
            }),
            namespace: r.pod.as_ref().and_then(|p| non_empty(&p.namespace)),
            pod_name: r.pod.as_ref().and_then(|p| non_empty(&p.name)),
            pod_uid: non_empty(&r.pod_uid),
            containers: r
                .containers
                .iter()
                .map(|c| ContainerReport {
                    name: non_empty(&c.name),
                    id: non_empty(&c.id),
                    memory: c.memory.as_ref().map(domain_memory_figures),
                    outstanding_bytes: c.outstanding_bytes,
                    outstanding_count: c.outstanding_count,
                    leak_bytes_per_second: c.leak_bytes_per_second,
                    provisional_leak_bytes_per_second: c.provisional_leak_bytes_per_second,
                    classed_in_ns: c.classed_in.as_ref().map(|d| ns_of(Some(d))),
                    time_to_limit_ns: c.time_to_limit.as_ref().map(|d| ns_of(Some(d))),
                    stacks: c.stacks.iter().map(Into::into).collect(),
                    stacks_total: c.stacks_total as usize,
                    pids: c.pids.clone(),
                    estimated: r.estimated,
                })
                .collect(),
            sort_by: if r.sort_by == pb::SortBy::Growth as i32 {
                SortBy::Growth
            } else {
                SortBy::Bytes
            },
            min_age_ns: ns_of(r.min_age.as_ref()),
            sample_bytes: r.sample_bytes,
            estimated: r.estimated,
            incomplete: r.incomplete,
            incomplete_reason: Some(r.incomplete_reason.clone()).filter(|s| !s.is_empty()),
            stats,
        }
    }
}

/// Most evidence records listed at once.
pub const MAX_EVIDENCE_LIST: u32 = 1000;

fn unix_ms(field: &str, t: Option<prost_types::Timestamp>) -> Result<Option<u64>, Status> {
    let Some(t) = t else { return Ok(None) };
    if t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Status::invalid_argument(format!(
            "{field} must be a valid time after 1970"
        )));
    }
    Ok(Some(
        (t.seconds as u64).saturating_mul(1000) + t.nanos as u64 / 1_000_000,
    ))
}

fn timestamp(unix_ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (unix_ms / 1000) as i64,
        nanos: ((unix_ms % 1000) * 1_000_000) as i32,
    }
}

/// An evidence filter, validated.
pub fn evidence_query(
    filter: Option<pb::EvidenceFilter>,
    oom_kills_only: bool,
) -> Result<EvidenceQuery, Status> {
    let filter = filter.unwrap_or_default();
    let selector = match filter.selector {
        None => None,
        Some(s) => {
            let selector = selector(Some(s))?;
            if matches!(selector.target, Target::Pid(_)) {
                return Err(Status::invalid_argument(
                    "evidence is listed by pod (namespace/name or uid), not by pid",
                ));
            }
            Some(selector)
        }
    };
    if filter.limit > MAX_EVIDENCE_LIST {
        return Err(Status::invalid_argument(format!(
            "limit must be at most {MAX_EVIDENCE_LIST}"
        )));
    }
    Ok(EvidenceQuery {
        selector,
        oom_kills_only,
        since_unix_ms: unix_ms("since", filter.since)?,
        until_unix_ms: unix_ms("until", filter.until)?,
        limit: if filter.limit == 0 {
            100
        } else {
            filter.limit as usize
        },
    })
}

fn pod_name(evidence: &Evidence) -> pb::PodName {
    pb::PodName {
        namespace: evidence.subject.namespace.clone().unwrap_or_default(),
        name: evidence.subject.pod_name.clone().unwrap_or_default(),
    }
}

/// The listing form of a record.
pub fn evidence_summary(evidence: &Evidence) -> pb::EvidenceSummary {
    pb::EvidenceSummary {
        id: evidence.id,
        kind: evidence.trigger.kind().to_owned(),
        taken_at: Some(timestamp(evidence.taken_at_unix_ms)),
        pod: Some(pod_name(evidence)),
        pod_uid: evidence.subject.pod_uid.clone().unwrap_or_default(),
        container: evidence.subject.container.clone().unwrap_or_default(),
        summary: evidence.summary(),
    }
}

/// The OOM kill of a record, if it is one.
pub fn oom_event(evidence: &Evidence) -> Option<pb::OomEvent> {
    let Trigger::OomKill { kill } = &evidence.trigger else {
        return None;
    };
    let top_call_site = evidence
        .report
        .as_ref()
        .and_then(|r| r.stacks.first())
        .and_then(|s| s.frames.first())
        .map(Frame::display_name)
        .unwrap_or_default();
    let mut event = pb::OomEvent {
        evidence_id: evidence.id,
        time: Some(timestamp(evidence.taken_at_unix_ms)),
        pod: Some(pod_name(evidence)),
        pod_uid: evidence.subject.pod_uid.clone().unwrap_or_default(),
        container: evidence.subject.container.clone().unwrap_or_default(),
        memory: evidence.memory.as_ref().map(memory_figures),
        source: "cgroup counter".into(),
        top_call_site,
        escalation_reason: evidence
            .escalation
            .as_ref()
            .map(|e| e.reason.clone())
            .unwrap_or_default(),
        ..pb::OomEvent::default()
    };
    if let Some(top) = evidence
        .growth_profile
        .as_ref()
        .and_then(|p| p.stacks.first())
    {
        event.top_growth_site = top.site().map(Frame::display_name).unwrap_or_default();
        event.top_growth_bytes = top.bytes;
    }
    if let Some(kill) = kill {
        event.victim_pid = kill.victim_pid.unwrap_or(0);
        event.victim_comm = kill.victim_comm.clone();
        event.trigger_pid = kill.trigger_pid;
        event.trigger_comm = kill.trigger_comm.clone();
        event.rss_anon_bytes = kill.rss_anon_bytes;
        event.rss_file_bytes = kill.rss_file_bytes;
        event.rss_shmem_bytes = kill.rss_shmem_bytes;
        event.memcg_id = kill.victim_memcg_id;
        event.source = "kernel hook".into();
    }
    Some(event)
}

fn container_report(c: &ContainerReport) -> pb::ContainerReport {
    pb::ContainerReport {
        name: c.name.clone().unwrap_or_default(),
        id: c.id.clone().unwrap_or_default(),
        memory: c.memory.as_ref().map(memory_figures),
        outstanding_bytes: c.outstanding_bytes,
        outstanding_count: c.outstanding_count,
        leak_bytes_per_second: c.leak_bytes_per_second,
        provisional_leak_bytes_per_second: c.provisional_leak_bytes_per_second,
        classed_in: c.classed_in_ns.map(proto_duration_ns),
        time_to_limit: c.time_to_limit_ns.map(proto_duration_ns),
        stacks: c.stacks.iter().map(Into::into).collect(),
        stacks_total: u32::try_from(c.stacks_total).unwrap_or(u32::MAX),
        pids: c.pids.clone(),
    }
}

impl From<&Evidence> for pb::Evidence {
    fn from(evidence: &Evidence) -> Self {
        Self {
            summary: Some(evidence_summary(evidence)),
            memory: evidence.memory.as_ref().map(memory_figures),
            report: evidence.report.as_ref().map(container_report),
            oom: oom_event(evidence),
            growth_profile: evidence.growth_profile.as_ref().map(growth_profile),
            escalation: evidence.escalation.as_ref().map(|e| pb::Escalation {
                started_at: Some(timestamp(e.started_at_unix_ms)),
                reason: e.reason.clone(),
            }),
        }
    }
}

/// A GetGrowthProfile request as the agent's, or INVALID_ARGUMENT naming what is wrong.
pub fn growth_profile_request(
    request: pb::GetGrowthProfileRequest,
) -> Result<GrowthProfileRequest, Status> {
    let selector = selector(request.selector)?;
    if request.top > MAX_TOP {
        return Err(Status::invalid_argument(format!(
            "top must be at most {MAX_TOP}, got {}",
            request.top
        )));
    }
    let order = match pb::GrowthProfileOrder::try_from(request.order) {
        Ok(pb::GrowthProfileOrder::Unspecified | pb::GrowthProfileOrder::Window) => {
            FirstTouchOrder::Window
        }
        Ok(pb::GrowthProfileOrder::Total) => FirstTouchOrder::Total,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "order {} is not a GrowthProfileOrder (1 window, 2 total)",
                request.order
            )));
        }
    };
    Ok(GrowthProfileRequest {
        selector,
        top: if request.top == 0 {
            20
        } else {
            request.top as usize
        },
        order,
    })
}

/// The pprof profile kind a request names, or INVALID_ARGUMENT.
pub fn profile_kind(kind: i32) -> Result<ProfileKind, Status> {
    match pb::ProfileKind::try_from(kind) {
        Ok(pb::ProfileKind::Unspecified | pb::ProfileKind::Outstanding) => {
            Ok(ProfileKind::Outstanding)
        }
        Ok(pb::ProfileKind::FirstTouch) => Ok(ProfileKind::FirstTouch),
        Err(_) => Err(Status::invalid_argument(format!(
            "kind {kind} is not a ProfileKind (1 outstanding, 2 first touch)"
        ))),
    }
}

/// A growth profile as the API sends it.
pub fn growth_profile(p: &GrowthProfile) -> pb::GrowthProfile {
    pb::GrowthProfile {
        window: Some(proto_duration_ns(p.window_ns)),
        total_bytes: p.total_bytes,
        total_window_bytes: p.total_window_bytes,
        retouched_bytes: p.retouched_bytes,
        stacks: p
            .stacks
            .iter()
            .map(|s| pb::FirstTouchStack {
                bytes: s.bytes,
                window_bytes: s.window_bytes,
                pages: s.pages,
                retouched_bytes: s.retouched_bytes,
                pids: s.pids.clone(),
                frames: s.frames.iter().map(Into::into).collect(),
            })
            .collect(),
        stacks_total: u32::try_from(p.stacks_total).unwrap_or(u32::MAX),
        sampled_one_page_in: p.sampled_one_page_in,
    }
}

impl From<&PodGrowthProfile> for pb::GrowthProfileReport {
    fn from(r: &PodGrowthProfile) -> Self {
        Self {
            taken_at: Some(timestamp(r.taken_at_unix_ms)),
            pod: Some(pb::PodName {
                namespace: r.namespace.clone().unwrap_or_default(),
                name: r.pod_name.clone().unwrap_or_default(),
            }),
            pod_uid: r.pod_uid.clone(),
            containers: r
                .containers
                .iter()
                .map(|c| pb::ContainerGrowthProfile {
                    name: c.name.clone().unwrap_or_default(),
                    id: c.id.clone(),
                    memory: c.memory.as_ref().map(memory_figures),
                    trend: c.trend.as_ref().map(container_trend),
                    tracing: c.tracing.as_str().to_owned(),
                    profile: c.profile.as_ref().map(growth_profile),
                })
                .collect(),
            unavailable_reason: r.unavailable_reason.clone().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_selector(namespace: &str, name: &str) -> Option<pb::Selector> {
        Some(pb::Selector {
            target: Some(pb::selector::Target::Pod(pb::PodName {
                namespace: namespace.into(),
                name: name.into(),
            })),
            container: String::new(),
        })
    }

    #[test]
    fn a_missing_or_empty_selector_is_an_invalid_argument() {
        assert_eq!(
            selector(None).expect_err("must be rejected").code(),
            tonic::Code::InvalidArgument
        );
        let empty = Some(pb::Selector {
            target: None,
            container: String::new(),
        });
        assert_eq!(
            selector(empty).expect_err("must be rejected").code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            selector(pod_selector("", "x"))
                .expect_err("must be rejected")
                .code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn out_of_range_numbers_are_invalid_arguments_naming_the_field() {
        let request = |top, min_age_seconds| pb::GetLeakReportRequest {
            selector: pod_selector("shop", "api"),
            top,
            min_age: Some(prost_types::Duration {
                seconds: min_age_seconds,
                nanos: 0,
            }),
            sort_by: 0,
        };
        let error = report_request(request(5000, 0)).expect_err("must be rejected");
        assert!(error.message().contains("top"), "{error}");
        let error = report_request(request(10, -1)).expect_err("must be rejected");
        assert!(error.message().contains("min_age"), "{error}");
        let error = report_request(request(10, 100 * 24 * 3600)).expect_err("must be rejected");
        assert!(error.message().contains("min_age"), "{error}");
        assert_eq!(
            report_request(request(0, 5)).expect("valid").top,
            DEFAULT_TOP as usize
        );
        let watch = pb::WatchLeakReportsRequest {
            report: Some(request(10, 0)),
            interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 1_000_000,
            }),
        };
        assert!(
            watch_request(watch)
                .expect_err("must be rejected")
                .message()
                .contains("interval")
        );
    }

    #[test]
    fn a_report_survives_the_round_trip_through_protobuf() {
        let report = PodReport {
            taken_at_unix_ms: 1_700_000_000_123,
            namespace: Some("shop".into()),
            pod_name: Some("api".into()),
            pod_uid: Some("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into()),
            containers: vec![ContainerReport {
                name: Some("app".into()),
                id: Some("ab".repeat(32)),
                memory: None,
                outstanding_bytes: 4096,
                outstanding_count: 1,
                leak_bytes_per_second: 12.5,
                provisional_leak_bytes_per_second: 3.0,
                classed_in_ns: Some(60_000_000_000),
                time_to_limit_ns: Some(3_000_000_000),
                stacks: vec![StackReport {
                    stack_id: "00000000000000ff".into(),
                    pid: 42,
                    kind: MemoryKind::Mmap,
                    bytes: 4096,
                    count: 1,
                    oldest_age_ns: 1_500_000_000,
                    growth_bytes: 0,
                    growth: Some(Growth {
                        bytes_per_second: 12.5,
                        recent_bytes_per_second: 10.0,
                        class: GrowthClass::Growing,
                        samples: 12,
                        span_ns: 110_000_000_000,
                        classed_in_ns: 0,
                    }),
                    frames: vec![Frame {
                        addr: 0x1234,
                        function: Some("leak".into()),
                        file: Some("leak.c".into()),
                        line: Some(7),
                        module: Some("/app".into()),
                        module_offset: Some(0x234),
                        inlined: false,
                    }]
                    .into(),
                    members: vec![0xff],
                }],
                stacks_total: 1,
                pids: vec![42],
                estimated: true,
            }],
            sort_by: SortBy::Growth,
            min_age_ns: 2_000_000_000,
            sample_bytes: 524_288,
            estimated: true,
            incomplete: true,
            incomplete_reason: Some("3 allocations were not recorded".into()),
            stats: BpfStats::default(),
        };
        let back = PodReport::from(&pb::LeakReport::from(&report));
        let original = serde_json::to_value(&report).expect("json");
        let round_trip = serde_json::to_value(&back).expect("json");
        assert_eq!(original["containers"], round_trip["containers"]);
        assert_eq!(original["taken_at_unix_ms"], round_trip["taken_at_unix_ms"]);
        assert_eq!(
            original["incomplete_reason"],
            round_trip["incomplete_reason"]
        );
        assert_eq!(original["min_age_ns"], round_trip["min_age_ns"]);
        assert_eq!(original["estimated"], round_trip["estimated"]);
        assert_eq!(original["sample_bytes"], round_trip["sample_bytes"]);
    }
}
