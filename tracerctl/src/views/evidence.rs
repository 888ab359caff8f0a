//! The evidence store's records (`oom-events`, `evidence`): OOM kills and the snapshots taken
//! as a container neared its limit, as JSON and as tables.

use std::fmt::Write as _;

use serde::Serialize;
use tracer_proto::v1 as pb;

use super::{
    MemoryView,
    growth::{self, GrowthProfileView},
    human_bytes, memory_text,
    report::{self, ContainerView},
    time_of,
};

/// An OOM kill.
#[derive(Debug, Serialize)]
pub(crate) struct OomEventView<'a> {
    evidence_id: u64,
    /// RFC 3339, to the second.
    time: String,
    /// `namespace/name`, `uid:UID` or `-`.
    pod: String,
    pod_uid: &'a str,
    container: &'a str,
    /// 0 when only the cgroup's counters saw the kill.
    victim_pid: u32,
    victim_comm: &'a str,
    trigger_pid: u32,
    trigger_comm: &'a str,
    rss_anon_bytes: u64,
    rss_file_bytes: u64,
    rss_shmem_bytes: u64,
    memory: Option<MemoryView>,
    /// `kernel hook` or `cgroup counter`.
    source: &'a str,
    top_call_site: &'a str,
    /// Where the container's memory grew most (growth profile), when watched.
    #[serde(skip_serializing_if = "str::is_empty")]
    top_growth_site: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    top_growth_bytes: u64,
    /// Why the escalation policy traced the container, if it did.
    #[serde(skip_serializing_if = "str::is_empty")]
    escalation_reason: &'a str,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// An evidence listing row.
#[derive(Debug, Serialize)]
pub(crate) struct SummaryView<'a> {
    id: u64,
    kind: &'a str,
    /// RFC 3339, to the second.
    taken_at: String,
    pod: String,
    pod_uid: &'a str,
    container: &'a str,
    summary: &'a str,
}

/// One evidence record.
#[derive(Debug, Serialize)]
pub(crate) struct EvidenceView<'a> {
    #[serde(flatten)]
    summary: SummaryView<'a>,
    memory: Option<MemoryView>,
    oom: Option<OomEventView<'a>>,
    /// The container's stacks then (`None` when nothing in it was traced).
    report: Option<ContainerView<'a>>,
    /// Where its resident memory grew, by first touch (`None` when it was not watched).
    #[serde(skip_serializing_if = "Option::is_none")]
    growth_profile: Option<GrowthProfileView<'a>>,
    /// Why the escalation policy traced it, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    escalation: Option<&'a str>,
}

/// `namespace/name`, or `uid:UID`, or `-`.
fn pod_of(pod: Option<&pb::PodName>, uid: &str) -> String {
    match pod {
        Some(p) if !p.namespace.is_empty() => format!("{}/{}", p.namespace, p.name),
        _ if !uid.is_empty() => format!("uid:{uid}"),
        _ => "-".into(),
    }
}

impl<'a> From<&'a pb::OomEvent> for OomEventView<'a> {
    fn from(e: &'a pb::OomEvent) -> Self {
        Self {
            evidence_id: e.evidence_id,
            time: time_of(e.time.as_ref()),
            pod: pod_of(e.pod.as_ref(), &e.pod_uid),
            pod_uid: &e.pod_uid,
            container: &e.container,
            victim_pid: e.victim_pid,
            victim_comm: &e.victim_comm,
            trigger_pid: e.trigger_pid,
            trigger_comm: &e.trigger_comm,
            rss_anon_bytes: e.rss_anon_bytes,
            rss_file_bytes: e.rss_file_bytes,
            rss_shmem_bytes: e.rss_shmem_bytes,
            memory: e.memory.as_ref().map(MemoryView::from),
            source: &e.source,
            top_call_site: &e.top_call_site,
            top_growth_site: &e.top_growth_site,
            top_growth_bytes: e.top_growth_bytes,
            escalation_reason: &e.escalation_reason,
        }
    }
}

impl<'a> From<&'a pb::EvidenceSummary> for SummaryView<'a> {
    fn from(s: &'a pb::EvidenceSummary) -> Self {
        Self {
            id: s.id,
            kind: &s.kind,
            taken_at: time_of(s.taken_at.as_ref()),
            pod: pod_of(s.pod.as_ref(), &s.pod_uid),
            pod_uid: &s.pod_uid,
            container: &s.container,
            summary: &s.summary,
        }
    }
}

/// The summary of a record that came without one.
static NO_SUMMARY: pb::EvidenceSummary = pb::EvidenceSummary {
    id: 0,
    kind: String::new(),
    taken_at: None,
    pod: None,
    pod_uid: String::new(),
    container: String::new(),
    summary: String::new(),
};

impl<'a> From<&'a pb::Evidence> for EvidenceView<'a> {
    fn from(e: &'a pb::Evidence) -> Self {
        Self {
            summary: SummaryView::from(e.summary.as_ref().unwrap_or(&NO_SUMMARY)),
            memory: e.memory.as_ref().map(MemoryView::from),
            oom: e.oom.as_ref().map(OomEventView::from),
            // A record's stacks are exact: sampling is a property of live reports.
            report: e.report.as_ref().map(|r| ContainerView::new(r, false)),
            growth_profile: e.growth_profile.as_ref().map(GrowthProfileView::from),
            escalation: e.escalation.as_ref().map(|e| e.reason.as_str()),
        }
    }
}

/// One line per OOM kill.
pub(crate) fn oom_events_table(events: &[OomEventView<'_>]) -> String {
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
            if e.top_call_site.is_empty() && !e.top_growth_site.is_empty() {
                format!(
                    "{} (grew {} by first touch)",
                    e.top_growth_site,
                    human_bytes(e.top_growth_bytes)
                )
            } else {
                e.top_call_site.to_owned()
            }
        );
    }
    if events.is_empty() {
        out.push_str("no OOM kills recorded\n");
    }
    out
}

/// One line per record.
pub(crate) fn list_table(list: &[SummaryView<'_>]) -> String {
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

/// One record: what it is, the memory then, the OOM kill if it is one, and the stacks.
pub(crate) fn table(e: &EvidenceView<'_>, full_stacks: bool) -> String {
    let mut out = String::new();
    let s = &e.summary;
    let _ = writeln!(
        out,
        "evidence {} [{}] taken {}: pod {} container {}",
        s.id, s.kind, s.taken_at, s.pod, s.container
    );
    let _ = writeln!(out, "  {}", s.summary);
    let _ = writeln!(out, "  memory: {}", memory_text(e.memory.as_ref()));
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
    if let Some(reason) = e.escalation {
        let _ = writeln!(out, "  traced by the escalation policy: {reason}");
    }
    match &e.report {
        Some(report) => out.push_str(&report::container_table(report, full_stacks)),
        None => out.push_str("  no stacks (nothing in the container was traced)\n"),
    }
    if let Some(profile) = &e.growth_profile {
        out.push_str("  resident growth by first touch (page faults), since watched:\n");
        out.push_str(&growth::profile_table(profile, full_stacks));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::json_line;

    #[test]
    fn oom_events_print_as_before() {
        let (events, printed) = fixture!(pb::ListOomEventsResponse, "oom-events-json");
        let views: Vec<OomEventView<'_>> = events.events.iter().map(Into::into).collect();
        assert_eq!(json_line(&views), printed);
        for (events, printed) in [
            fixture!(pb::ListOomEventsResponse, "oom-events-table"),
            fixture!(pb::ListOomEventsResponse, "oom-events-all-table"),
            fixture!(pb::ListOomEventsResponse, "oom-events-none-table"),
        ] {
            let views: Vec<OomEventView<'_>> = events.events.iter().map(Into::into).collect();
            assert_eq!(oom_events_table(&views), printed);
        }
    }

    #[test]
    fn evidence_listings_print_as_before() {
        let (list, printed) = fixture!(pb::ListEvidenceResponse, "evidence-list-json");
        let views: Vec<SummaryView<'_>> = list.evidence.iter().map(Into::into).collect();
        assert_eq!(json_line(&views), printed);
        let (list, printed) = fixture!(pb::ListEvidenceResponse, "evidence-list-table");
        let views: Vec<SummaryView<'_>> = list.evidence.iter().map(Into::into).collect();
        assert_eq!(list_table(&views), printed);
    }

    #[test]
    fn a_record_prints_its_kill_memory_and_stacks_as_before() {
        for (record, printed) in [
            fixture!(pb::Evidence, "evidence-oom-kill-json"),
            fixture!(pb::Evidence, "evidence-threshold-json"),
        ] {
            assert_eq!(json_line(&EvidenceView::from(&record)), printed);
        }
        let (record, printed) = fixture!(pb::Evidence, "evidence-oom-kill-table");
        assert_eq!(table(&EvidenceView::from(&record), false), printed);
        assert!(
            printed.contains("OOM kill (kernel hook): victim "),
            "{printed}"
        );
        let (record, printed) = fixture!(pb::Evidence, "evidence-threshold-table-full-stacks");
        assert_eq!(table(&EvidenceView::from(&record), true), printed);
    }

    #[test]
    fn a_record_without_stacks_or_summary_still_prints() {
        let record = pb::Evidence::default();
        assert_eq!(
            table(&EvidenceView::from(&record), false),
            "evidence 0 [] taken -: pod - container \n  \n  memory: -\n  no stacks (nothing in \
             the container was traced)\n"
        );
        assert_eq!(
            json_line(&EvidenceView::from(&record)),
            "{\"id\":0,\"kind\":\"\",\"taken_at\":\"-\",\"pod\":\"-\",\"pod_uid\":\"\",\
             \"container\":\"\",\"summary\":\"\",\"memory\":null,\"oom\":null,\"report\":null}\n"
        );
    }
}
