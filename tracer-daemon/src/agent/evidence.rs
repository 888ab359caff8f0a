//! Evidence in the agent: snapshots when a traced container's memory nears or hits its limit
//! (the watch says when) and at an OOM kill (before the victim's records are dropped), stored
//! durably; plus the queries over what is stored and pprof exports.

use std::{collections::BTreeMap, os::unix::fs::MetadataExt as _, time::Instant};

use tracing::{info, warn};

use super::{
    Agent, AgentError, EvidenceListing, EvidenceQuery, ProfileRequest, ProfileSource,
    reports::{Resolved, now_unix_ms},
    selector::Target,
};
use crate::{
    collect::{monotonic_now_ns, oom::OomKill},
    discover::node::{Container, Pod},
    evidence::{
        model::{Evidence, KIND_OOM_KILL, Subject, Trigger},
        pprof::{self, ProfileKind, ProfileMeta, ProfileStack},
        store::ListFilter,
    },
    report::{
        StackReport,
        first_touch::{FirstTouchOrder, FirstTouchStack, GrowthProfile},
        pod::SortBy,
    },
};

/// Call sites of the growth profile kept in an evidence record: symbolizing is what an OOM
/// kill's evidence waits for before it is durable, so fewer than the exact stacks.
const GROWTH_EVIDENCE_TOP: usize = 20;

/// A kernel-hook sighting of an OOM kill makes counter sightings of the same container within
/// this long duplicates.
const OOM_DEDUP: std::time::Duration = std::time::Duration::from_secs(10);

impl Agent {
    /// Records the OOM kills the kernel hook reported. Called before ended processes are
    /// reaped: the victims' records are there for the last time.
    pub(super) fn handle_oom_kills(&mut self) {
        for kill in self.tracer.take_oom_kills() {
            self.capture_oom_kill(kill);
        }
    }

    /// Checks every traced container's memory figures; snapshots what the watch says to.
    pub(super) fn watch_memory(&mut self) {
        // A kill the hook saw must be recorded from the hook (victim, rss) before the counters
        // report the same kill.
        self.tracer.drain_events();
        self.handle_oom_kills();
        let hook_attached = *self.tracer.oom_hook() == crate::bpf::OomHook::Attached;
        let traced: std::collections::HashSet<u32> = self.tracer.pids().into_iter().collect();
        let now = Instant::now();
        let mut due: Vec<(Pod, String, Trigger)> = Vec::new();
        for pod in self.view.pods.values() {
            for container in pod.containers.values() {
                if !container.pids.iter().any(|p| traced.contains(p)) {
                    continue;
                }
                let Some(figures) = container.memory() else {
                    continue;
                };
                let pressure = container
                    .unified_dir
                    .as_ref()
                    .map(|d| d.join("memory.pressure"));
                let pressure = pressure.filter(|p| p.exists());
                for trigger in self
                    .watch
                    .observe(&container.id, figures, pressure.as_deref(), now)
                {
                    due.push((pod.clone(), container.id.clone(), trigger));
                }
            }
        }
        let watched: std::collections::HashSet<String> = self
            .view
            .pods
            .values()
            .flat_map(|p| p.containers.keys().cloned())
            .collect();
        self.watch.retain(|id| watched.contains(id));
        for (pod, container_id, trigger) in due {
            // With the hook attached, counters only confirm what it saw; without it, they are
            // how OOM kills are noticed at all.
            if matches!(trigger, Trigger::OomKill { kill: None })
                && (hook_attached
                    || self
                        .recent_kernel_ooms
                        .get(&container_id)
                        .is_some_and(|at| at.elapsed() < OOM_DEDUP))
            {
                continue;
            }
            let _ = self.capture(trigger, Some(&pod), Some(&container_id));
        }
    }

    /// Records an OOM kill seen at the kernel hook, with the victim's container's report taken
    /// now, while the victim's records still exist.
    pub(super) fn capture_oom_kill(&mut self, kill: OomKill) {
        let found = self.container_of_victim(&kill);
        let (pod, container_id) = match &found {
            Some((pod, container)) => (Some(pod.clone()), Some(container.id.clone())),
            None => (None, None),
        };
        if let Some(id) = &container_id {
            let _ = self.recent_kernel_ooms.insert(id.clone(), Instant::now());
        }
        let kill_ns = kill.timestamp_ns;
        if let Some(id) = self.capture(
            Trigger::OomKill { kill: Some(kill) },
            pod.as_ref(),
            container_id.as_deref(),
        ) {
            let durable_after_ms = monotonic_now_ns().saturating_sub(kill_ns) as f64 / 1e6;
            info!(evidence = id, durable_after_ms, "OOM-kill evidence durable");
        }
    }

    /// The victim's pod and container: by pid when discovery has seen it, else by the memory
    /// cgroup's inode (the memcg id the hook read).
    fn container_of_victim(&self, kill: &OomKill) -> Option<(Pod, Container)> {
        if let Some(process) = kill
            .victim_pid
            .and_then(|pid| self.view.processes.get(&pid))
        {
            let pod = self.view.pods.get(&process.pod_uid)?;
            return Some((
                pod.clone(),
                pod.containers.get(&process.container_id)?.clone(),
            ));
        }
        let inode = |dir: &std::path::Path| std::fs::metadata(dir).ok().map(|m| m.ino());
        for pod in self.view.pods.values() {
            for container in pod.containers.values() {
                let memcg = container.memory_dir.as_ref().and_then(|(d, _)| inode(d));
                let unified = container.unified_dir.as_deref().and_then(inode);
                if memcg == Some(kill.victim_memcg_id) || unified == Some(kill.victim_cgroup_id) {
                    return Some((pod.clone(), container.clone()));
                }
            }
        }
        None
    }

    /// Takes and stores one snapshot; returns its id (failures are logged: evidence capture
    /// must never take the agent down).
    pub(super) fn capture(
        &mut self,
        trigger: Trigger,
        pod: Option<&Pod>,
        container_id: Option<&str>,
    ) -> Option<u64> {
        let container = pod
            .zip(container_id)
            .and_then(|(p, id)| p.containers.get(id))
            .cloned();
        let report = match (&container, pod) {
            (Some(container), Some(pod)) => {
                let mut containers: BTreeMap<Option<String>, Vec<u32>> = BTreeMap::new();
                let _ = containers.insert(
                    Some(container.id.clone()),
                    container.pids.iter().copied().collect(),
                );
                // An OOM victim may already have left the container's cgroup: include it.
                if let Trigger::OomKill { kill: Some(kill) } = &trigger
                    && let (Some(pid), Some(pids)) = (
                        kill.victim_pid,
                        containers.get_mut(&Some(container.id.clone())),
                    )
                    && !pids.contains(&pid)
                {
                    pids.push(pid);
                }
                let resolved = Resolved {
                    pod: Some(pod.clone()),
                    containers,
                };
                match self.container_reports(&resolved, 0, SortBy::Bytes, self.config.evidence_top)
                {
                    Ok(mut reports) => reports.pop(),
                    Err(error) => {
                        warn!(%error, "evidence snapshot without stacks");
                        None
                    }
                }
            }
            _ => None,
        };
        let evidence = Evidence {
            id: 0,
            trigger,
            taken_at_unix_ms: now_unix_ms(),
            subject: Subject {
                namespace: pod.and_then(|p| p.namespace.clone()),
                pod_name: pod.and_then(|p| p.name.clone()),
                pod_uid: pod.map(|p| p.uid.clone()),
                container: container.as_ref().and_then(|c| c.name.clone()),
            },
            container_id: container.as_ref().map(|c| c.id.clone()),
            memory: report
                .as_ref()
                .and_then(|r| r.memory)
                .or_else(|| container.as_ref().and_then(Container::memory)),
            report,
            growth_profile: container
                .as_ref()
                .and_then(|c| self.growth_profile(c, FirstTouchOrder::Total, GROWTH_EVIDENCE_TOP)),
            escalation: container.as_ref().and_then(|c| self.escalation(c)).cloned(),
        };
        let payload = match serde_json::to_vec(&evidence) {
            Ok(payload) => payload,
            Err(error) => {
                warn!(%error, "cannot encode evidence");
                return None;
            }
        };
        match self.store.put(evidence.meta(), &payload) {
            Ok(id) => {
                self.evidence_saved += 1;
                info!(evidence = id, kind = evidence.trigger.kind(), summary = %evidence.summary(), "evidence saved");
                Some(id)
            }
            Err(error) => {
                self.evidence_failed += 1;
                warn!(
                    error = %crate::error_chain(&error),
                    failures = self.evidence_failed,
                    "cannot save evidence; the next save opens the store afresh"
                );
                None
            }
        }
    }

    pub(super) fn list_evidence(
        &self,
        query: &EvidenceQuery,
    ) -> Result<EvidenceListing, AgentError> {
        let mut filter = ListFilter {
            kind: query.oom_kills_only.then(|| KIND_OOM_KILL.to_owned()),
            since_unix_ms: query.since_unix_ms,
            until_unix_ms: query.until_unix_ms,
            limit: Some(query.limit),
            ..ListFilter::default()
        };
        match query.selector.as_ref().map(|s| &s.target) {
            None => {}
            Some(Target::Pod { namespace, name }) => {
                filter.namespace = Some(namespace.clone());
                filter.pod_name = Some(name.clone());
            }
            Some(Target::PodUid(uid)) => filter.pod_uid = Some(uid.clone()),
            Some(Target::Pid(_)) => {
                return Err(AgentError::InvalidArgument(
                    "evidence is listed by pod, not by pid".into(),
                ));
            }
        }
        let container = query.selector.as_ref().and_then(|s| s.container.clone());
        let mut out = Vec::new();
        for meta in self.store.list(&filter)? {
            if container.is_some() && meta.subject.container != container {
                continue;
            }
            out.push(self.get_evidence(meta.id)?);
        }
        let health = self.store.health();
        let store_warning = match (health.damage, health.last_failure) {
            (Some(damage), Some(failure)) => {
                Some(format!("{damage}; the last save failed: {failure}"))
            }
            (Some(damage), None) => Some(damage),
            (None, Some(failure)) => Some(format!("the last save failed: {failure}")),
            (None, None) => None,
        };
        Ok(EvidenceListing {
            records: out,
            store_warning,
            save_failures: self.evidence_failed,
        })
    }

    pub(super) fn get_evidence(&self, id: u64) -> Result<Evidence, AgentError> {
        let (meta, payload) = self
            .store
            .get(id)?
            .ok_or_else(|| AgentError::NotFound(format!("no evidence with id {id}")))?;
        let mut evidence: Evidence = serde_json::from_slice(&payload).map_err(|e| {
            AgentError::Unavailable(format!(
                "evidence {id} is unreadable ({e}); it was written by another version"
            ))
        })?;
        evidence.id = meta.id;
        Ok(evidence)
    }

    pub(super) fn profile(&mut self, request: &ProfileRequest) -> Result<Vec<u8>, AgentError> {
        let kind = request.kind;
        let (stacks, mut comments, time_unix_ms) = self.profile_stacks(&request.source, kind)?;
        let base = match request.base_evidence {
            Some(id) => {
                let (base, base_comments, _) =
                    self.profile_stacks(&ProfileSource::Evidence(id), kind)?;
                if base.is_empty() {
                    return Err(AgentError::NotTraced(format!(
                        "evidence {id} holds no {} to compare with{}",
                        kind.describe(),
                        match kind {
                            ProfileKind::Outstanding => {
                                " (its container was not traced): compare growth profiles instead"
                            }
                            ProfileKind::FirstTouch => "",
                        }
                    )));
                }
                comments.extend(base_comments.into_iter().map(|c| format!("base: {c}")));
                base
            }
            None => Vec::new(),
        };
        let meta = ProfileMeta {
            time_unix_ns: i64::try_from(time_unix_ms)
                .unwrap_or(i64::MAX)
                .saturating_mul(1_000_000),
            duration_ns: 0,
            comments,
            kind,
        };
        pprof::encode_gzipped(&stacks, &base, &meta)
            .map_err(|e| AgentError::Unavailable(format!("cannot encode the profile: {e}")))
    }

    /// The stacks a profile of `source` holds, its comments and when it was taken.
    fn profile_stacks(
        &mut self,
        source: &ProfileSource,
        kind: ProfileKind,
    ) -> Result<(Vec<ProfileStack>, Vec<String>, u64), AgentError> {
        Ok(match (source, kind) {
            (ProfileSource::Evidence(id), ProfileKind::Outstanding) => {
                let evidence = self.get_evidence(*id)?;
                let stacks = evidence
                    .report
                    .as_ref()
                    .map(|r| r.stacks.iter().map(profile_stack).collect())
                    .unwrap_or_default();
                let comments = vec![
                    format!("evidence {}: {}", evidence.id, evidence.summary()),
                    who(&evidence),
                ];
                (stacks, comments, evidence.taken_at_unix_ms)
            }
            (ProfileSource::Evidence(id), ProfileKind::FirstTouch) => {
                let evidence = self.get_evidence(*id)?;
                let stacks = evidence
                    .growth_profile
                    .as_ref()
                    .map(first_touch_stacks)
                    .unwrap_or_default();
                let comments = vec![
                    format!(
                        "evidence {}: {} (resident growth by first touch)",
                        evidence.id,
                        evidence.summary()
                    ),
                    who(&evidence),
                ];
                (stacks, comments, evidence.taken_at_unix_ms)
            }
            (ProfileSource::Live(selector), ProfileKind::Outstanding) => {
                let request = super::ReportRequest {
                    selector: selector.clone(),
                    top: usize::MAX,
                    min_age_ns: 0,
                    sort_by: SortBy::Bytes,
                };
                let report = self.report(&request)?;
                let stacks = report
                    .containers
                    .iter()
                    .flat_map(|c| c.stacks.iter().map(profile_stack))
                    .collect();
                (
                    stacks,
                    vec![format!("live {selector}")],
                    report.taken_at_unix_ms,
                )
            }
            (ProfileSource::Live(selector), ProfileKind::FirstTouch) => {
                let request = super::GrowthProfileRequest {
                    selector: selector.clone(),
                    top: usize::MAX,
                    order: FirstTouchOrder::Total,
                };
                let report = self.growth_report(&request)?;
                let stacks = report
                    .containers
                    .iter()
                    .filter_map(|c| c.profile.as_ref())
                    .flat_map(first_touch_stacks)
                    .collect();
                (
                    stacks,
                    vec![format!("live {selector} (resident growth by first touch)")],
                    report.taken_at_unix_ms,
                )
            }
        })
    }
}

/// A growth profile's stacks as pprof samples: bytes since watched, pages as the count (a
/// call site merged over processes is labelled with the first).
fn first_touch_stacks(profile: &GrowthProfile) -> Vec<ProfileStack> {
    profile.stacks.iter().map(first_touch_stack).collect()
}

/// One growth-profile call site as a profile stack (pages as the count).
pub(super) fn first_touch_stack(stack: &FirstTouchStack) -> ProfileStack {
    ProfileStack {
        frames: stack.frames.clone().into(),
        bytes: stack.bytes,
        count: stack.pages,
        pid: stack.pids.first().copied().unwrap_or(0),
    }
}

fn who(evidence: &Evidence) -> String {
    format!(
        "pod {}/{} container {}",
        evidence.subject.namespace.as_deref().unwrap_or("?"),
        evidence.subject.pod_name.as_deref().unwrap_or("?"),
        evidence.subject.container.as_deref().unwrap_or("?")
    )
}

pub(super) fn profile_stack(stack: &StackReport) -> ProfileStack {
    ProfileStack {
        frames: stack.frames.clone(),
        bytes: stack.bytes,
        count: stack.count,
        pid: stack.pid,
    }
}
