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
        self,
        assemble::RawStack,
        pod::{self, ContainerReport, PodReport, SortBy},
    },
    tracer::ReportOptions,
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
                self.rescan_view();
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
            let raw: Vec<RawStack> = included
                .iter()
                .flat_map(|p| by_pid[p].iter().copied())
                .collect();
            // Only tracked stacks (the largest node-wide) have a growth window.
            let growth = &self.growth;
            let growth_of = |pid: u32, id: u64| {
                growth
                    .contains(&(pid, id))
                    .then(|| growth.growth(&(pid, id)))
            };
            let tracer = &mut self.tracer;
            let assembled = report::assemble::assemble(raw, &growth_of, sort_by, top, &mut |raw| {
                tracer.symbolize_stacks(raw)
            });
            let memory = container.and_then(node::Container::memory);
            containers.push(ContainerReport {
                name: container.and_then(|c| c.name.clone()),
                id: container_id.clone(),
                outstanding_bytes: assembled.outstanding_bytes,
                outstanding_count: assembled.outstanding_count,
                leak_bytes_per_second: assembled.leak_bytes_per_second,
                provisional_leak_bytes_per_second: assembled.provisional_leak_bytes_per_second,
                classed_in_ns: assembled.classed_in_ns,
                time_to_limit_ns: pod::time_to_limit_ns(
                    memory.as_ref(),
                    assembled.leak_bytes_per_second,
                ),
                memory,
                stacks_total: assembled.stacks_total,
                stacks: assembled.stacks,
                estimated: included
                    .iter()
                    .any(|&pid| self.tracer.sample_bytes_of(pid).unwrap_or(0) > 0),
                pids: included,
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
        let estimated = self.tracer.sample_bytes() > 0 || containers.iter().any(|c| c.estimated);
        Ok(PodReport {
            taken_at_unix_ms,
            namespace: pod.and_then(|p| p.namespace.clone()),
            pod_name: pod.and_then(|p| p.name.clone()),
            pod_uid: pod.map(|p| p.uid.clone()),
            containers,
            sort_by: request.sort_by,
            min_age_ns: request.min_age_ns,
            sample_bytes: self.tracer.sample_bytes(),
            estimated,
            incomplete: stats.incomplete_reason().is_some(),
            incomplete_reason: stats.incomplete_reason(),
            stats,
        })
    }
}
