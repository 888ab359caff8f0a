//! What an evidence record holds: why it was taken, whose it is, the container's memory figures
//! and its top stacks at that moment. Stored as JSON (readable, and new fields stay optional).

use serde::{Deserialize, Serialize};

use crate::{
    agent::escalation::EscalationRecord,
    collect::oom::OomKill,
    discover::memory::MemoryFigures,
    evidence::store::EvidenceMeta,
    report::{first_touch::GrowthProfile, pod::ContainerReport},
};

/// Why a snapshot was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Trigger {
    /// Usage crossed this percentage of the limit, going up.
    Threshold {
        /// The threshold crossed.
        percent: u32,
    },
    /// The cgroup hit its limit this many more times (v2 memory.events max, v1 failcnt).
    LimitHit {
        /// Increase since the last look.
        count: u64,
    },
    /// The cgroup went over memory.high this many more times (v2 only).
    High {
        /// Increase since the last look.
        count: u64,
    },
    /// The cgroup's PSI memory-pressure trigger fired.
    Pressure {
        /// The trigger, as written to memory.pressure.
        trigger: String,
    },
    /// The kernel's OOM killer chose a victim here.
    OomKill {
        /// The kill as the kernel hook saw it; `None` when only cgroup counters saw it.
        kill: Option<OomKill>,
    },
    /// Exact tracing cost a process more than the overhead budget: its exact records, taken
    /// just before it was switched to sampling (they stay exact; what it records after is
    /// estimated).
    BudgetSampled {
        /// The process.
        pid: u32,
        /// What exact tracing cost it, e.g. "12.0% of a core (80000 allocations/s, ...)".
        cost: String,
        /// The sampling mean it was switched to.
        sample_bytes: u64,
    },
    /// Tracing a process cost more than the overhead budget: its records, taken just before
    /// it stopped being traced.
    OverBudget {
        /// The process.
        pid: u32,
        /// What tracing cost it, e.g. "12.0% of a core (80000 allocations/s, ...)".
        cost: String,
    },
}

impl Trigger {
    /// The record kind used for listing and filtering.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Threshold { .. } => "threshold",
            Self::LimitHit { .. } => "limit_hit",
            Self::High { .. } => "high",
            Self::Pressure { .. } => "pressure",
            Self::OomKill { .. } => KIND_OOM_KILL,
            Self::BudgetSampled { .. } => "budget_sampled",
            Self::OverBudget { .. } => "over_budget",
        }
    }
}

/// Record kind of OOM kills.
pub const KIND_OOM_KILL: &str = "oom_kill";

/// Whose evidence it is: the pod and container, as far as they are known. A record
/// ([`Evidence`]) and its index entry ([`EvidenceMeta`]) each hold one, flattened, so both are
/// stored with the same keys as when each spelled these fields out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// Kubernetes namespace of the pod, if known.
    pub namespace: Option<String>,
    /// Name of the pod, if known.
    pub pod_name: Option<String>,
    /// UID of the pod, if known.
    pub pod_uid: Option<String>,
    /// Name of the container, if known.
    pub container: Option<String>,
}

/// One evidence record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Evidence {
    /// Store id (0 until stored).
    #[serde(default)]
    pub id: u64,
    /// Why it was taken.
    pub trigger: Trigger,
    /// When, ms since the epoch.
    pub taken_at_unix_ms: u64,
    /// Whose it is.
    #[serde(flatten)]
    pub subject: Subject,
    /// Container id.
    pub container_id: Option<String>,
    /// The container's memory figures then.
    pub memory: Option<MemoryFigures>,
    /// The container's report then (`None` when nothing in it was traced).
    pub report: Option<ContainerReport>,
    /// Where the container's resident memory grew, by first touch (page faults), since its
    /// processes were watched; `None` when the container was not watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth_profile: Option<GrowthProfile>,
    /// Why and since when the escalation policy traced the container, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<EscalationRecord>,
}

fn human_bytes(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    format!("{:.1} MiB", bytes as f64 / MIB)
}

impl Evidence {
    /// One line for listings.
    pub fn summary(&self) -> String {
        let memory = self.memory.map(|m| match m.limit_bytes {
            Some(limit) => format!("{} / {}", human_bytes(m.usage_bytes), human_bytes(limit)),
            None => human_bytes(m.usage_bytes),
        });
        let memory = memory.map(|m| format!(" ({m})")).unwrap_or_default();
        let top = self
            .report
            .as_ref()
            .and_then(|r| r.stacks.first())
            .and_then(|s| s.frames.first())
            .map(|f| format!("; top: {}", f.display_name()))
            .or_else(|| {
                let site = self.growth_profile.as_ref()?.stacks.first()?;
                Some(format!(
                    "; grew most at: {} ({} first touched)",
                    site.site()?.display_name(),
                    human_bytes(site.bytes)
                ))
            })
            .unwrap_or_default();
        let what = match &self.trigger {
            Trigger::Threshold { percent } => format!("{percent}% of limit{memory}"),
            Trigger::LimitHit { count } => format!("hit its limit {count} more times{memory}"),
            Trigger::High { count } => format!("over memory.high {count} more times{memory}"),
            Trigger::Pressure { trigger } => format!("memory pressure ({trigger}){memory}"),
            Trigger::OomKill { kill: Some(kill) } => format!(
                "OOM kill of pid {} ({}){memory}",
                kill.victim_pid
                    .map_or_else(|| "?".to_owned(), |p| p.to_string()),
                kill.victim_comm
            ),
            Trigger::OomKill { kill: None } => format!("OOM kill seen in cgroup counters{memory}"),
            Trigger::BudgetSampled {
                pid,
                cost,
                sample_bytes,
            } => format!(
                "tracing pid {pid} switched to sampling every {sample_bytes} bytes: over the budget at {cost}{memory}"
            ),
            Trigger::OverBudget { pid, cost } => {
                format!("tracing pid {pid} stopped: over the budget at {cost}{memory}")
            }
        };
        format!("{what}{top}")
    }

    /// The store's index entry for this record.
    pub fn meta(&self) -> EvidenceMeta {
        EvidenceMeta {
            id: 0,
            kind: self.trigger.kind().to_owned(),
            taken_at_unix_ms: self.taken_at_unix_ms,
            subject: self.subject.clone(),
            pid: match &self.trigger {
                Trigger::OomKill { kill: Some(kill) } => kill.victim_pid,
                _ => None,
            },
            summary: self.summary(),
            payload_bytes: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the daemon stored it before [`Subject`] existed, each field spelled out.
    const STORED: &str = concat!(
        r#"{"id":3,"trigger":{"type":"threshold","percent":90},"taken_at_unix_ms":5,"#,
        r#""namespace":"shop","pod_name":"api-0","pod_uid":"u-1","container":"app","#,
        r#""container_id":"c0ffee","memory":null,"report":null}"#,
    );

    #[test]
    fn stored_records_read_back_and_encode_with_the_same_keys() {
        let evidence: Evidence = serde_json::from_str(STORED).expect("a stored record decodes");
        let subject = Subject {
            namespace: Some("shop".into()),
            pod_name: Some("api-0".into()),
            pod_uid: Some("u-1".into()),
            container: Some("app".into()),
        };
        assert_eq!(evidence.subject, subject);
        assert_eq!(evidence.container_id.as_deref(), Some("c0ffee"));
        assert_eq!(
            evidence.meta().subject,
            subject,
            "the index entry's subject"
        );
        let encoded = serde_json::to_string(&evidence).expect("a record encodes");
        assert_eq!(encoded, STORED, "the stored format changed");
    }

    #[test]
    fn a_record_of_an_unknown_pod_reads_back_with_an_empty_subject() {
        let stored = r#"{"trigger":{"type":"high","count":1},"taken_at_unix_ms":5,"container_id":null,"memory":null,"report":null}"#;
        let evidence: Evidence = serde_json::from_str(stored).expect("decodes");
        assert_eq!(evidence.subject, Subject::default());
    }
}
