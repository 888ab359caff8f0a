//! Reading what the BPF programs recorded: per-stack totals, outstanding allocations (for
//! ages), stacks, loss counters, the mmap/munmap ring buffer, and the page-fault growth
//! profile (`faults`).

pub mod ages;
pub use ages::AgeSummary;
pub mod batch;
pub mod faults;
pub mod mappings;
pub mod oom;
pub mod scanner;
pub mod stack_table;
pub mod stats;

use std::{collections::HashSet, io, sync::Arc};

use aya::maps::{
    Array, HashMap as BpfHashMap, IterableMap as _, MapData, MapError, PerCpuArray, Queue, RingBuf,
};
use tracer_common::{
    AllocInfo, AllocKey, ExecEvent, MmapEvent, MunmapEvent, OomKillEvent, StackKey, StackTotals,
    StackTrace, event_kind, names,
};

use crate::bpf::Probes;
use mappings::{Mapping, MappingTracker};
use stack_table::StackTable;
use stats::BpfStats;

/// Why the maps could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// A map is missing from the object or has another type.
    #[error("BPF map {name} is missing or has the wrong type")]
    Map {
        /// Map name.
        name: &'static str,
        #[source]
        source: Option<MapError>,
    },
    /// A map read failed.
    #[error("failed to read BPF map {name}")]
    Read {
        /// Map name.
        name: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The maps, taken out of the loaded object.
pub struct BpfMaps {
    allocs: BpfHashMap<MapData, AllocKey, AllocInfo>,
    /// `STACK_TOTALS`, mapped into memory.
    totals: Arc<StackTable>,
    slots: BpfHashMap<MapData, StackKey, u32>,
    free_slots: Queue<MapData, u32>,
    traces: BpfHashMap<MapData, u64, StackTrace>,
    stats: PerCpuArray<MapData, u64>,
    events: RingBuf<MapData>,
    /// The page-fault growth profile.
    pub faults: faults::FaultMaps,
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    probes: &mut Probes,
    name: &'static str,
) -> Result<T, CollectError> {
    let map = probes
        .ebpf
        .take_map(name)
        .ok_or(CollectError::Map { name, source: None })?;
    T::try_from(map).map_err(|e| CollectError::Map {
        name,
        source: Some(e),
    })
}

impl BpfMaps {
    /// Takes the maps out of the object (once).
    pub fn take(probes: &mut Probes) -> Result<Self, CollectError> {
        let totals: Array<MapData, StackTotals> = take(probes, names::STACK_TOTALS)?;
        let table = StackTable::map(&totals).map_err(|source| CollectError::Read {
            name: names::STACK_TOTALS,
            source,
        })?;
        // Every slot starts free, in order (so a small workload touches only the first pages).
        let mut free_slots: Queue<MapData, u32> = take(probes, names::FREE_STACK_SLOTS)?;
        for slot in 0..table.capacity() {
            free_slots.push(slot, 0).map_err(|e| CollectError::Read {
                name: names::FREE_STACK_SLOTS,
                source: io::Error::other(e),
            })?;
        }
        Ok(Self {
            allocs: take(probes, names::ALLOCS)?,
            totals: Arc::new(table),
            slots: take(probes, names::STACK_SLOTS)?,
            free_slots,
            traces: take(probes, names::STACK_TRACES)?,
            stats: take(probes, names::STATS)?,
            events: take(probes, names::EVENTS)?,
            faults: faults::FaultMaps::new(
                take(probes, names::WATCHED_CGROUPS)?,
                take(probes, names::FAULT_PROFILE)?,
            ),
        })
    }

    /// Calls `visit` with every per-stack total (O(stacks), streamed: nothing is kept).
    pub fn for_each_total(&self, mut visit: impl FnMut(StackKey, StackTotals)) {
        self.totals.for_each(|_, totals| visit(totals.key, totals));
    }

    /// The per-stack totals, shareable with the background scans.
    pub fn stack_table(&self) -> Arc<StackTable> {
        Arc::clone(&self.totals)
    }

    /// The allocation map's descriptor, for scans.
    pub fn allocs_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd as _;
        self.allocs.map().fd().as_fd()
    }

    /// A stack's return addresses, innermost first.
    pub fn stack_frames(&self, stack_id: u64) -> Option<Vec<u64>> {
        let trace = self.traces.get(&stack_id, 0).ok()?;
        let len = usize::try_from(trace.len).ok()?.min(trace.ips.len());
        Some(trace.ips[..len].to_vec())
    }

    /// Applies every pending mmap/munmap record and returns what the caller must act on.
    pub fn drain_events(&mut self, tracker: &mut MappingTracker, page_size: u64) -> Notices {
        let mut notices = Notices::default();
        while let Some(item) = self.events.next() {
            match apply_event(&item, tracker) {
                Some(Notice::OomKill(event)) => notices
                    .oom_kills
                    .push(oom::OomKill::from_event(&event, page_size)),
                Some(Notice::Exec(event)) => notices.execs.push(event.tgid),
                None => {}
            }
        }
        notices
    }

    /// The ring buffer's descriptor: readable when records are waiting (for event loops).
    pub fn events_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd as _;
        self.events.as_raw_fd()
    }

    /// The loss and activity counters.
    pub fn stats(&self) -> BpfStats {
        stats::read(&self.stats)
    }

    /// Drops every record of an ended process, and the stacks no other process uses.
    pub fn forget_process(&mut self, tgid: u32) -> Result<(), CollectError> {
        self.forget_processes(&HashSet::from([tgid]))
    }

    /// Like [`BpfMaps::forget_process`] for several processes in one pass over each map
    /// (reading the allocation map costs the same for one process as for many).
    pub fn forget_processes(&mut self, tgids: &HashSet<u32>) -> Result<(), CollectError> {
        if tgids.is_empty() {
            return Ok(());
        }
        let mut alloc_keys = Vec::new();
        batch::for_each(self.allocs.map(), |key: AllocKey, _: AllocInfo| {
            if tgids.contains(&key.tgid) {
                alloc_keys.push(key);
            }
        })
        .map_err(|source| CollectError::Read {
            name: names::ALLOCS,
            source,
        })?;
        batch::delete(self.allocs.map(), &alloc_keys).map_err(|source| CollectError::Read {
            name: names::ALLOCS,
            source,
        })?;

        // Unpublish the process's stacks, empty their slots, then hand the slots back.
        let mut ended = Vec::new();
        self.totals.for_each(|slot, totals| {
            if tgids.contains(&totals.key.tgid) {
                ended.push((slot, totals.key));
            }
        });
        let keys: Vec<StackKey> = ended.iter().map(|(_, key)| *key).collect();
        batch::delete(self.slots.map(), &keys).map_err(|source| CollectError::Read {
            name: names::STACK_SLOTS,
            source,
        })?;
        for (slot, _) in &ended {
            self.totals.clear(*slot);
            if let Err(error) = self.free_slots.push(slot, 0) {
                // The queue holds as many slots as the array: this cannot fill; if it did,
                // the slot is only lost until the daemon restarts.
                tracing::warn!(%error, slot, "could not recycle a stack slot");
            }
        }
        // The growth profile shares STACK_TRACES: its stacks stay while it uses them.
        let still_used = self.faults.stack_ids()?;
        self.delete_unused_stacks(keys.iter().map(|key| key.stack_id), still_used)
    }

    /// Drops the growth-profile entries of these processes (ended, or no longer profiled),
    /// and the stacks nothing else uses.
    pub fn forget_fault_processes(&mut self, tgids: &HashSet<u32>) -> Result<(), CollectError> {
        if tgids.is_empty() {
            return Ok(());
        }
        let (ended, still_used) = self.faults.forget(tgids)?;
        self.delete_unused_stacks(ended.into_iter(), still_used)
    }

    /// Deletes from `STACK_TRACES` the stacks in `candidates` that neither `still_used` nor any
    /// per-stack total holds.
    fn delete_unused_stacks(
        &mut self,
        candidates: impl Iterator<Item = u64>,
        mut still_used: HashSet<u64>,
    ) -> Result<(), CollectError> {
        self.totals.for_each(|_, totals| {
            let _ = still_used.insert(totals.key.stack_id);
        });
        let mut unused: Vec<u64> = candidates.filter(|id| !still_used.contains(id)).collect();
        unused.sort_unstable();
        unused.dedup();
        batch::delete(self.traces.map(), &unused).map_err(|source| CollectError::Read {
            name: names::STACK_TRACES,
            source,
        })?;
        Ok(())
    }
}

/// Applies one ring-buffer record; an OOM kill is returned to the caller.
/// Ring-buffer records the caller must act on.
#[derive(Debug, Default)]
pub struct Notices {
    /// OOM kills, in the order seen.
    pub oom_kills: Vec<oom::OomKill>,
    /// Traced processes that exec'd (disarmed by the kernel hook), in the order seen.
    pub execs: Vec<u32>,
}

enum Notice {
    OomKill(OomKillEvent),
    Exec(ExecEvent),
}

fn apply_event(bytes: &[u8], tracker: &mut MappingTracker) -> Option<Notice> {
    let kind = bytes
        .get(..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))?;
    match kind {
        event_kind::MMAP if bytes.len() >= size_of::<MmapEvent>() => {
            // SAFETY: the record is at least as long as the type, which is plain data.
            let event = unsafe { bytes.as_ptr().cast::<MmapEvent>().read_unaligned() };
            tracker.mapped(
                event.tgid,
                event.addr,
                Mapping {
                    len_bytes: event.len_bytes,
                    stack_id: event.stack_id,
                    timestamp_ns: event.timestamp_ns,
                    cgroup_id: event.cgroup_id,
                },
            );
        }
        event_kind::MUNMAP if bytes.len() >= size_of::<MunmapEvent>() => {
            // SAFETY: as above.
            let event = unsafe { bytes.as_ptr().cast::<MunmapEvent>().read_unaligned() };
            tracker.unmapped(event.tgid, event.addr, event.len_bytes);
        }
        event_kind::OOM_KILL if bytes.len() >= size_of::<OomKillEvent>() => {
            // SAFETY: as above.
            let event = unsafe { bytes.as_ptr().cast::<OomKillEvent>().read_unaligned() };
            return Some(Notice::OomKill(event));
        }
        event_kind::EXEC if bytes.len() >= size_of::<ExecEvent>() => {
            // SAFETY: as above.
            let event = unsafe { bytes.as_ptr().cast::<ExecEvent>().read_unaligned() };
            return Some(Notice::Exec(event));
        }
        _ => {}
    }
    None
}

/// What one allocation of `size` bytes recorded under the mean `sample_bytes` stands for:
/// (bytes, allocations). Exact (mean 0): itself. Sampled: the estimate the BPF programs add to
/// its stack's totals ([`bpf::sampling::weights`](crate::bpf::sampling::weights)), so an age
/// scan and the totals agree.
pub fn sampling_weight(size: u64, sample_bytes: u64) -> (f64, f64) {
    let (bytes, count) = crate::bpf::sampling::weights(size, sample_bytes);
    (
        bytes as f64,
        count as f64 / tracer_common::COUNT_SCALE as f64,
    )
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    let _ = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}
