//! Growth profiles in the agent: the page faults of every watched container's cgroup are
//! recorded by the kernel (resident growth by first touch), its processes are profiled (unwind
//! tables and symbols, no uprobes), each sample interval feeds the windows, and a container's
//! profile is assembled on demand (the API, evidence, the OTLP export).

use std::{collections::HashSet, os::unix::fs::MetadataExt as _};

use tracing::{debug, warn};

use tracer_common::{FaultKey, FaultTotals};

use super::Agent;
use crate::{
    collect::monotonic_now_ns,
    discover::node::Container,
    report::first_touch::{self, FirstTouchOrder, GrowthProfile, RawFirstTouch},
};

/// Processes read for profiling per discovery round: reading one (its maps, new binaries'
/// unwind tables) takes about a millisecond on the agent's thread, so a node full of new
/// processes is profiled over a few rounds rather than in one long stall.
const PROFILED_PER_ROUND: usize = 16;

/// The cgroup v2 id of a container (the inode of its unified-hierarchy directory): what the
/// kernel's fault program keys by. `None` without a v2 directory (a v1-only host).
pub(super) fn cgroup_id(container: &Container) -> Option<u64> {
    let dir = container.unified_dir.as_deref()?;
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

impl Agent {
    /// After a rescan: the kernel records the faults of exactly the watched containers'
    /// cgroups, and their processes are profiled (a bounded number per round).
    pub(super) fn watch_page_faults(&mut self) {
        if *self.tracer.fault_hook() != crate::bpf::FaultHook::Attached {
            return;
        }
        let mut wanted = HashSet::new();
        let mut to_profile: Vec<u32> = Vec::new();
        let profiled: HashSet<u32> = self.tracer.profiled_pids().into_iter().collect();
        for pod in self.view.pods.values() {
            if !self.watches(pod) {
                continue;
            }
            for container in pod.containers.values() {
                if let Some(id) = cgroup_id(container) {
                    let _ = wanted.insert(id);
                    to_profile.extend(container.pids.iter().filter(|p| !profiled.contains(p)));
                }
            }
        }
        for &id in wanted.difference(&self.watched_cgroups) {
            if let Err(error) = self.tracer.watch_cgroup(id) {
                warn!(%error, "growth profile: cannot watch a container's cgroup");
            }
        }
        for &id in self.watched_cgroups.difference(&wanted) {
            self.tracer.unwatch_cgroup(id);
        }
        self.watched_cgroups = wanted;
        // Newest first, like attaching: under churn the youngest is likeliest still there.
        to_profile.sort_unstable_by(|a, b| b.cmp(a));
        for pid in to_profile.into_iter().take(PROFILED_PER_ROUND) {
            if let Err(error) = self.tracer.profile_pid(pid) {
                debug!(pid, %error, "cannot profile a watched process (it may have ended)");
            }
        }
    }

    /// Feeds the kernel's first-touch totals into the windows (each sample interval).
    pub(super) fn sample_first_touch(&mut self) {
        if *self.tracer.fault_hook() != crate::bpf::FaultHook::Attached {
            return;
        }
        match self.tracer.fault_totals() {
            Ok(totals) => self.first_touch.record(monotonic_now_ns(), &totals),
            Err(error) => warn!(%error, "cannot read the growth profile"),
        }
    }

    /// A container's growth profile now, its top `top` call sites in `order`; `None` when
    /// its faults are not recorded (not watched, no v2 cgroup, or the hook is unavailable).
    pub(super) fn growth_profile(
        &mut self,
        container: &Container,
        order: FirstTouchOrder,
        top: usize,
    ) -> Option<GrowthProfile> {
        let _ = cgroup_id(container).filter(|id| self.watched_cgroups.contains(id))?;
        let totals = match self.tracer.fault_totals() {
            Ok(totals) => totals,
            Err(error) => {
                warn!(%error, "cannot read the growth profile");
                return None;
            }
        };
        self.growth_profile_from(&totals, container, order, top)
    }

    /// The same from the kernel's totals read once (the OTLP export builds every container's
    /// profile from one read of the map).
    pub(super) fn growth_profile_from(
        &mut self,
        totals: &[(FaultKey, FaultTotals)],
        container: &Container,
        order: FirstTouchOrder,
        top: usize,
    ) -> Option<GrowthProfile> {
        let id = cgroup_id(container).filter(|id| self.watched_cgroups.contains(id))?;
        let mut mine: Vec<_> = totals
            .iter()
            .copied()
            .filter(|(key, totals)| {
                key.cgroup_id == id && (totals.bytes > 0 || totals.retouched_bytes > 0)
            })
            .map(|(key, totals)| {
                let window = self.first_touch.window_bytes(key.tgid, key.stack_id);
                (key, totals, window)
            })
            .collect();
        let (total_bytes, total_window_bytes, retouched_bytes, stacks_total) = (
            mine.iter().map(|(_, t, _)| t.bytes).sum::<u64>(),
            mine.iter().map(|(_, _, w)| w).sum::<u64>(),
            mine.iter().map(|(_, t, _)| t.retouched_bytes).sum::<u64>(),
            mine.len(),
        );
        // Symbolizing is the expensive step: only the stacks that can make the top (a call
        // site merged over processes could gather small stacks, so keep a margin).
        mine.sort_unstable_by_key(|(_, t, w)| {
            std::cmp::Reverse(match order {
                FirstTouchOrder::Window => (*w, t.bytes),
                FirstTouchOrder::Total => (t.bytes, *w),
            })
        });
        mine.truncate(top.saturating_mul(2).max(32));
        let stacks: Vec<(u32, u64)> = mine.iter().map(|(k, _, _)| (k.tgid, k.stack_id)).collect();
        let frames = self.tracer.symbolize_fault_stacks(&stacks);
        let raw = mine
            .into_iter()
            .zip(frames)
            .map(|((key, totals, window_bytes), frames)| RawFirstTouch {
                pid: key.tgid,
                totals,
                window_bytes,
                frames: frames.to_vec(),
            })
            .collect();
        let mut profile = first_touch::assemble(raw, self.first_touch.window_ns(), order, top);
        profile.total_bytes = total_bytes;
        profile.total_window_bytes = total_window_bytes;
        profile.retouched_bytes = retouched_bytes;
        profile.stacks_total = stacks_total;
        profile.sampled_one_page_in = self.tracer.fault_sample_pages();
        Some(profile)
    }
}

/// A request for a pod's growth profiles.
#[derive(Clone, Debug)]
pub struct GrowthProfileRequest {
    /// A pod, optionally one container (a pid is refused).
    pub selector: super::selector::Selector,
    /// Call sites per container.
    pub top: usize,
    /// Their order.
    pub order: FirstTouchOrder,
}

/// One container's growth profile with its figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ContainerGrowth {
    /// Name, when known.
    pub name: Option<String>,
    /// Runtime id.
    pub id: String,
    /// Memory figures now.
    pub memory: Option<crate::discover::memory::MemoryFigures>,
    /// The memory trend, when watched.
    pub trend: Option<crate::report::trend::ContainerTrend>,
    /// Whether it is traced exactly too.
    pub tracing: super::watch_all::TracingMode,
    /// The profile, when watched.
    pub profile: Option<GrowthProfile>,
}

/// A pod's growth profiles.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PodGrowthProfile {
    /// When read, ms since the Unix epoch.
    pub taken_at_unix_ms: u64,
    /// Namespace, when known.
    pub namespace: Option<String>,
    /// Name, when known.
    pub pod_name: Option<String>,
    /// Uid.
    pub pod_uid: String,
    /// Per container.
    pub containers: Vec<ContainerGrowth>,
    /// Why no growth profile is recorded on this node, if it is not.
    pub unavailable_reason: Option<String>,
}

impl Agent {
    /// The growth profiles of the pod (or container) a selector names.
    pub(super) fn growth_report(
        &mut self,
        request: &GrowthProfileRequest,
    ) -> Result<PodGrowthProfile, super::AgentError> {
        if matches!(request.selector.target, super::selector::Target::Pid(_)) {
            return Err(super::AgentError::InvalidArgument(
                "growth profiles are per pod or container, not per pid: name the pod \
                 (NAMESPACE/POD, optionally -c CONTAINER)"
                    .into(),
            ));
        }
        let resolved = self.resolve_now(&request.selector)?;
        let pod = resolved
            .pod
            .clone()
            .ok_or_else(|| super::AgentError::NotFound("no such pod".into()))?;
        let unavailable_reason = match self.tracer.fault_hook() {
            crate::bpf::FaultHook::Attached => None,
            crate::bpf::FaultHook::Unavailable(reason) => Some(reason.clone()),
        };
        let mut containers = Vec::new();
        for id in resolved.containers.keys().flatten() {
            let Some(container) = pod.containers.get(id) else {
                continue;
            };
            let (tracing, _) = self.tracing_mode(&pod, container);
            containers.push(ContainerGrowth {
                name: container.name.clone(),
                id: container.id.clone(),
                memory: container.memory(),
                trend: self.trends.trend(&container.id),
                tracing,
                profile: self.growth_profile(container, request.order, request.top),
            });
        }
        Ok(PodGrowthProfile {
            taken_at_unix_ms: super::reports::now_unix_ms(),
            namespace: pod.namespace.clone(),
            pod_name: pod.name.clone(),
            pod_uid: pod.uid.clone(),
            containers,
            unavailable_reason,
        })
    }
}
