//! Answering report requests: resolving a selector to pods, containers and pids, and building
//! per-container reports from the tracer's per-process reports and the growth windows.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{SystemTime, UNIX_EPOCH},
};

use super::{
    Agent, AgentError, ReportRequest,
    selector::{Selector, Target},
};
use crate::{
    discover::node,
    report::{
        growth::{self, Growth},
        pod::{self, ContainerReport, PodReport, SortBy},
    },
    tracer::{RawStack, ReportOptions, candidates, keep_largest},
};

/// What a selector resolved to: the pod (if any) and pids per container id.
pub(super) struct Resolved {
    pub(super) pod: Option<node::Pod>,
    pub(super) containers: BTreeMap<Option<String>, Vec<u32>>,
}

pub(super) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Agent {
    /// The pids a selector names (traced or not) with their container id, or why none.
    /// Like [`Agent::resolve`], but a pod or container not in the last discovery pass is looked
    /// for again on the node before NOT_FOUND is answered (a pod that started a second ago).
    pub(super) fn resolve_now(&mut self, selector: &Selector) -> Result<Resolved, AgentError> {
        match self.resolve(selector) {
            // At most a few rescans a second, however many unknown names clients ask for.
            Err(AgentError::NotFound(_))
                if self.last_rescan.elapsed() >= std::time::Duration::from_millis(100) =>
            {
                self.view = crate::discover::node::scan(&self.config.paths, &self.mounts);
                self.last_rescan = std::time::Instant::now();
                self.resolve(selector)
            }
            resolved => resolved,
        }
    }

    pub(super) fn resolve(&self, selector: &Selector) -> Result<Resolved, AgentError> {
        let pod = match &selector.target {
            Target::Pid(pid) => {
                let container = self.view.processes.get(pid).map(|p| p.container_id.clone());
                let known = container.is_some() || self.tracer.state(*pid).is_some();
                if !known && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    return Err(AgentError::NotFound(format!(
                        "no process with pid {pid} on this node"
                    )));
                }
                let pod = self
                    .view
                    .processes
                    .get(pid)
                    .and_then(|p| self.view.pods.get(&p.pod_uid));
                let mut containers = BTreeMap::new();
                let _ = containers.insert(container, vec![*pid]);
                return Ok(Resolved {
                    pod: pod.cloned(),
                    containers,
                });
            }
            Target::Pod { namespace, name } => {
                self.view.pod_by_name(namespace, name).ok_or_else(|| {
                    AgentError::NotFound(format!("no pod {namespace}/{name} on this node"))
                })?
            }
            Target::PodUid(uid) => self.view.pods.get(uid).ok_or_else(|| {
                AgentError::NotFound(format!("no pod with uid {uid} on this node"))
            })?,
        };
        let mut containers = BTreeMap::new();
        for container in pod.containers.values() {
            if let Some(wanted) = &selector.container
                && container.name.as_deref() != Some(wanted.as_str())
            {
                continue;
            }
            let _ = containers.insert(
                Some(container.id.clone()),
                container.pids.iter().copied().collect(),
            );
        }
        if containers.is_empty()
            && let Some(wanted) = &selector.container
        {
            return Err(AgentError::NotFound(format!(
                "pod {} has no container {wanted}",
                pod.display_name()
            )));
        }
        Ok(Resolved {
            pod: Some(pod.clone()),
            containers,
        })
    }

    /// Per-container reports of what a selector resolved to (containers with nothing traced are
    /// left out). Only the stacks a report can show are symbolized; `top` 0 gives the totals
    /// alone.
    pub(super) fn container_reports(
        &mut self,
        resolved: &Resolved,
        min_age_ns: u64,
        sort_by: SortBy,
        top: usize,
    ) -> Result<Vec<ContainerReport>, AgentError> {
        let traced: HashSet<u32> = self.tracer.pids().into_iter().collect();
        let pids: Vec<u32> = resolved
            .containers
            .values()
            .flatten()
            .copied()
            .filter(|p| traced.contains(p))
            .collect();
        let processes = self
            .tracer
            .process_stacks(&pids, &ReportOptions { min_age_ns })?;
        let by_pid: HashMap<u32, Vec<RawStack>> =
            processes.into_iter().map(|p| (p.pid, p.stacks)).collect();
        let mut containers = Vec::new();
        for (container_id, container_pids) in &resolved.containers {
            let container = resolved
                .pod
                .as_ref()
                .zip(container_id.as_ref())
                .and_then(|(pod, id)| pod.containers.get(id));
            let included: Vec<u32> = container_pids
                .iter()
                .copied()
                .filter(|p| by_pid.contains_key(p))
                .collect();
            if included.is_empty() {
                continue;
            }
            let mut raw: Vec<RawStack> = included
                .iter()
                .flat_map(|p| by_pid[p].iter().copied())
                .collect();
            let outstanding_bytes = raw.iter().map(|s| s.bytes).sum();
            let outstanding_count = raw.iter().map(|s| s.count).sum();
            let stacks_total = raw.len();
            // Only tracked stacks (the largest node-wide) have a growth: look those up, not
            // every stack the container has.
            let pid_set: HashSet<u32> = included.iter().copied().collect();
            let tracked: foldhash::HashMap<(u32, u64), Growth> = self
                .growth
                .keys()
                .filter(|(pid, _)| pid_set.contains(pid))
                .map(|key| (*key, self.growth.growth(key)))
                .collect();
            // The leak rate counts every growing stack, shown or not.
            let leak_bytes_per_second = pod::leak_rate_of(tracked.values());
            let (provisional_leak_bytes_per_second, classed_in_ns) =
                pod::provisional_rate_of(tracked.values());
            match sort_by {
                SortBy::Bytes => keep_largest(&mut raw, candidates(top)),
                SortBy::Growth => {
                    let rate = |s: &RawStack| {
                        tracked
                            .get(&(s.pid, s.stack_id))
                            .map_or(0.0, |g| g.bytes_per_second)
                    };
                    let by_rate = |a: &RawStack, b: &RawStack| rate(b).total_cmp(&rate(a));
                    if raw.len() > candidates(top) {
                        let _ = raw.select_nth_unstable_by(candidates(top), by_rate);
                        raw.truncate(candidates(top));
                    }
                }
            }
            let growths = |pid: u32, id: u64| {
                tracked
                    .get(&(pid, id))
                    .copied()
                    .unwrap_or_else(|| self.growth.growth(&(pid, id)))
            };
            if top == 0 {
                raw.clear();
            }
            let mut stacks = self.tracer.symbolize_stacks(&raw);
            for stack in &mut stacks {
                let members: Vec<Growth> = stack
                    .members
                    .iter()
                    .map(|id| growths(stack.pid, *id))
                    .collect();
                stack.growth = growth::combine(&members);
            }
            let memory = container.and_then(node::Container::memory);
            containers.push(ContainerReport {
                name: container.and_then(|c| c.name.clone()),
                id: container_id.clone(),
                outstanding_bytes,
                outstanding_count,
                leak_bytes_per_second,
                provisional_leak_bytes_per_second,
                classed_in_ns,
                time_to_limit_ns: pod::time_to_limit_ns(memory.as_ref(), leak_bytes_per_second),
                memory,
                stacks_total,
                stacks: pod::rank_stacks(stacks, sort_by, top),
                pids: included,
                estimated: self.tracer.sample_bytes() > 0,
            });
        }
        Ok(containers)
    }

    pub(super) fn report(&mut self, request: &ReportRequest) -> Result<PodReport, AgentError> {
        let taken_at_unix_ms = now_unix_ms();
        self.tracer.poll();
        let resolved = self.resolve_now(&request.selector)?;
        let traced: HashSet<u32> = self.tracer.pids().into_iter().collect();
        if !resolved
            .containers
            .values()
            .flatten()
            .any(|p| traced.contains(p))
        {
            return Err(AgentError::NotTraced(format!(
                "{} is not traced; start it with StartTracing (tracerctl trace start)",
                request.selector
            )));
        }
        let containers =
            self.container_reports(&resolved, request.min_age_ns, request.sort_by, request.top)?;
        let pod = resolved.pod.as_ref();
        let stats = self.tracer.stats();
        Ok(PodReport {
            taken_at_unix_ms,
            namespace: pod.and_then(|p| p.namespace.clone()),
            pod_name: pod.and_then(|p| p.name.clone()),
            pod_uid: pod.map(|p| p.uid.clone()),
            containers,
            sort_by: request.sort_by,
            min_age_ns: request.min_age_ns,
            sample_bytes: self.tracer.sample_bytes(),
            estimated: self.tracer.sample_bytes() > 0,
            incomplete: stats.incomplete_reason().is_some(),
            incomplete_reason: stats.incomplete_reason(),
            stats,
        })
    }
}
