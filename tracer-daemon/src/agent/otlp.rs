//! The agent's part of the OTLP export: at every interval, each traced process's outstanding
//! allocations (its container's top stacks) and each watched container's growth profile,
//! built here (bounded: `top` stacks per container) and offered to the exporter's queue,
//! which never makes the agent wait.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use tracing::warn;

use super::{
    Agent,
    evidence::{first_touch_stack, profile_stack},
    reports::Resolved,
};
use crate::{
    discover::node::{Container, Pod},
    export::{
        exporter::ExportQueue,
        profiles::{self, ProcessProfiles, ProcessResource},
    },
    report::{
        first_touch::{FirstTouchOrder, GrowthProfile},
        pod::SortBy,
    },
};

/// How the agent exports profiles.
#[derive(Clone, Debug)]
pub struct OtlpExport {
    /// Time between exports.
    pub interval: Duration,
    /// Stacks per container and profile.
    pub top: usize,
    /// `k8s.node.name`.
    pub node_name: String,
    /// The exporter's queue.
    pub queue: ExportQueue,
}

impl Agent {
    /// Builds this interval's profiles and offers them to the exporter.
    pub(super) fn export_profiles(&mut self) {
        let Some(export) = self.config.otlp.clone() else {
            return;
        };
        let traced: HashSet<u32> = self.traced();
        let pods: Vec<Pod> = self.view.pods.values().cloned().collect();
        // One read of the growth map for every container (it holds the whole node's stacks).
        let fault_totals = if *self.tracer.fault_hook() == crate::bpf::FaultHook::Attached {
            self.tracer.fault_totals().unwrap_or_else(|error| {
                warn!(%error, "cannot read the growth profiles to export");
                Vec::new()
            })
        } else {
            Vec::new()
        };
        let mut processes: BTreeMap<u32, ProcessProfiles> = BTreeMap::new();
        for pod in &pods {
            for container in pod.containers.values() {
                let growth = self.growth_profile_from(
                    &fault_totals,
                    container,
                    FirstTouchOrder::Total,
                    export.top,
                );
                self.export_container(pod, container, growth, &traced, &export, &mut processes);
            }
        }
        // Nothing traced or watched: nothing to send (and no batch to count).
        if processes.is_empty() {
            return;
        }
        let time_unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let processes: Vec<ProcessProfiles> = processes.into_values().collect();
        export
            .queue
            .offer(profiles::build(&processes, time_unix_ns));
    }

    fn export_container(
        &mut self,
        pod: &Pod,
        container: &Container,
        growth: Option<GrowthProfile>,
        traced: &HashSet<u32>,
        export: &OtlpExport,
        processes: &mut BTreeMap<u32, ProcessProfiles>,
    ) {
        let traced_pids: Vec<u32> = container
            .pids
            .iter()
            .copied()
            .filter(|pid| traced.contains(pid))
            .collect();
        let mut in_use = Vec::new();
        if !traced_pids.is_empty() {
            let resolved = Resolved {
                pod: Some(pod.clone()),
                containers: BTreeMap::from([(Some(container.id.clone()), traced_pids.clone())]),
            };
            match self.container_reports(&resolved, 0, SortBy::Bytes, export.top) {
                Ok(reports) => in_use.extend(
                    reports
                        .iter()
                        .flat_map(|report| report.stacks.iter().map(profile_stack)),
                ),
                Err(error) => {
                    warn!(%error, pod = %pod.display_name(), "no in-use profile to export")
                }
            }
        }
        let view = &self.view;
        let proc_root = &self.config.paths.proc_root;
        let resource = |pid: u32| ProcessResource {
            namespace: pod.namespace.clone(),
            pod_name: pod.name.clone(),
            pod_uid: Some(pod.uid.clone()),
            container_name: container.name.clone(),
            node_name: export.node_name.clone(),
            pid,
            executable_path: executable(proc_root, pid),
            comm: view.processes.get(&pid).map(|p| p.comm.clone()),
        };
        // Every traced process gets its in-use profiles, empty when it holds nothing.
        for &pid in &traced_pids {
            let _ = entry(processes, pid, &resource)
                .in_use
                .get_or_insert_with(Vec::new);
        }
        for stack in in_use {
            entry(processes, stack.pid, &resource)
                .in_use
                .get_or_insert_with(Vec::new)
                .push(stack);
        }
        if let Some(growth) = growth.filter(|g| !g.stacks.is_empty()) {
            for stack in &growth.stacks {
                let stack = first_touch_stack(stack);
                let process = entry(processes, stack.pid, &resource);
                process.growth_sampled_one_page_in = growth.sampled_one_page_in;
                process.growth.get_or_insert_with(Vec::new).push(stack);
            }
        }
    }
}

/// The process's profiles, new ones with their resource.
fn entry<'a>(
    processes: &'a mut BTreeMap<u32, ProcessProfiles>,
    pid: u32,
    resource: &impl Fn(u32) -> ProcessResource,
) -> &'a mut ProcessProfiles {
    processes.entry(pid).or_insert_with(|| ProcessProfiles {
        resource: resource(pid),
        ..ProcessProfiles::default()
    })
}

/// The executable's path as the process sees it (`None` when it has exited or is a kernel
/// thread).
fn executable(proc_root: &std::path::Path, pid: u32) -> Option<String> {
    std::fs::read_link(proc_root.join(pid.to_string()).join("exe"))
        .ok()
        .map(|path| path.display().to_string())
}
