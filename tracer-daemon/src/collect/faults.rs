//! The page-fault growth profile's maps: which cgroups are watched, and what their processes'
//! faults made resident, per (cgroup, process, stack) (tracer-ebpf's `fault`).

use std::collections::HashSet;

use aya::maps::{HashMap as BpfHashMap, IterableMap as _, MapData};
use tracer_common::{FaultKey, FaultTotals, names};

use super::{CollectError, batch};

/// The profile's maps, taken out of the loaded object.
pub struct FaultMaps {
    watched: BpfHashMap<MapData, u64, u32>,
    profile: BpfHashMap<MapData, FaultKey, FaultTotals>,
}

impl FaultMaps {
    pub(super) fn new(
        watched: BpfHashMap<MapData, u64, u32>,
        profile: BpfHashMap<MapData, FaultKey, FaultTotals>,
    ) -> Self {
        Self { watched, profile }
    }

    /// Starts profiling the faults of a cgroup's tasks (its v2 id). A full map is an error
    /// naming the limit.
    pub fn watch(&mut self, cgroup_id: u64) -> Result<(), String> {
        self.watched.insert(cgroup_id, 0, 0).map_err(|error| {
            format!(
                "cannot watch cgroup {cgroup_id}: {error} (at most {} cgroups are watched)",
                self.watched.map().info().map_or(0, |i| i.max_entries())
            )
        })
    }

    /// Stops profiling a cgroup's faults (what they recorded stays until their processes go).
    pub fn unwatch(&mut self, cgroup_id: u64) {
        let _ = self.watched.remove(&cgroup_id);
    }

    /// Calls `visit` with every entry of the profile (one batched read of the map).
    pub fn for_each(
        &self,
        visit: &mut dyn FnMut(FaultKey, FaultTotals),
    ) -> Result<(), CollectError> {
        batch::for_each(self.profile.map(), |key: FaultKey, totals: FaultTotals| {
            visit(key, totals);
        })
        .map_err(|source| CollectError::Read {
            name: names::FAULT_PROFILE,
            source,
        })
    }

    /// Deletes the entries of these processes; returns (their stack ids, the stack ids other
    /// processes' entries still use).
    pub(super) fn forget(
        &mut self,
        tgids: &HashSet<u32>,
    ) -> Result<(Vec<u64>, HashSet<u64>), CollectError> {
        let mut ended = Vec::new();
        let mut still_used = HashSet::new();
        self.for_each(&mut |key, _| {
            if tgids.contains(&key.tgid) {
                ended.push(key);
            } else {
                let _ = still_used.insert(key.stack_id);
            }
        })?;
        batch::delete(self.profile.map(), &ended).map_err(|source| CollectError::Read {
            name: names::FAULT_PROFILE,
            source,
        })?;
        Ok((ended.iter().map(|key| key.stack_id).collect(), still_used))
    }

    /// The stack ids the profile uses.
    pub(super) fn stack_ids(&self) -> Result<HashSet<u64>, CollectError> {
        let mut ids = HashSet::new();
        self.for_each(&mut |key, _| {
            let _ = ids.insert(key.stack_id);
        })?;
        Ok(ids)
    }
}
