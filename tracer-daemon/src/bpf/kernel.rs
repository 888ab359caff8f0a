//! The one seam between the daemon and the kernel side: everything the tracer does with the
//! loaded BPF object (probes per process, the records they keep, the unwinder's maps) goes
//! through [`Kernel`]. [`LoadedKernel`] is the real object; tests use the in-memory
//! `bpf::fake::FakeKernel`, so the tracer and the agent are tested without root.

use std::{collections::HashSet, os::fd::RawFd, time::Duration};

use aya::maps::{Array, MapData, MapError, lpm_trie::Key, lpm_trie::LpmTrie};
use tracer_common::{
    AllocInfo, AllocKey, ArmedProcess, FaultKey, FaultTotals, StackKey, StackTotals, UnwindEntry,
    UnwindMapping, UnwindMappingKey, names,
};

use crate::{
    attach::{
        self, AllocatorLibrary, AttachError, AttachFailure, Attachment, ProgramSet,
        closer::DetachedLinks,
    },
    bpf::{FaultHook, LoadOptions, MapSizes, OomHook, Probes, probe_cost::ProbeCost},
    collect::{
        BpfMaps, CollectError, Notices, mappings::MappingTracker, scanner::Scanner, stats::BpfStats,
    },
};

/// The unwinder's two maps: each binary's rows, and each process's mappings.
pub trait UnwindMaps {
    /// Writes row `index` of `UNWIND_ENTRIES`.
    fn set_unwind_row(&mut self, index: u32, row: &UnwindEntry) -> Result<(), String>;
    /// Adds (or replaces) a block of a process's mappings.
    fn insert_unwind_mapping(
        &mut self,
        key: &Key<UnwindMappingKey>,
        value: UnwindMapping,
    ) -> Result<(), String>;
    /// Removes a block.
    fn remove_unwind_mapping(&mut self, key: &Key<UnwindMappingKey>);
    /// Rows `UNWIND_ENTRIES` holds.
    fn unwind_rows(&self) -> u32;
}

/// Everything the tracer needs from the kernel side.
pub trait Kernel: UnwindMaps {
    /// Attaches a process's probes and arms it (see `attach::attach`); on failure, the links
    /// made so far come back with the error, for the caller to close.
    fn attach(
        &mut self,
        pid: u32,
        library: AllocatorLibrary,
        programs: ProgramSet,
    ) -> Result<Attachment, AttachFailure>;
    /// Disarms a process and takes its links out (dropping them detaches).
    fn detach(&mut self, attachment: Attachment) -> DetachedLinks;
    /// Arms a process again on the same probes after an exec (see `attach::rearm`).
    fn rearm(
        &mut self,
        attachment: &mut Attachment,
        library: AllocatorLibrary,
    ) -> Result<(), AttachError>;
    /// Switches an armed process to sampling with mean `sample_bytes` (see `attach::sample`).
    fn sample(&mut self, pid: u32, sample_bytes: u64) -> Result<(), String>;
    /// An armed process's sampling mean and probe hits (`None` when it is not armed).
    fn armed_process(&self, pid: u32) -> Option<ArmedProcess>;
    /// Moves the programs' pending log lines to the log.
    fn flush_log(&mut self);
    /// What a probe hit costs on this node (measured at load where the object can, else the
    /// development machines' figure).
    fn probe_cost(&self) -> crate::bpf::probe_cost::ProbeCost {
        crate::bpf::probe_cost::ProbeCost::MEASURED_HERE
    }
    /// Whether malloc is probed as a uprobe session (an unsampled call skips its return).
    fn sessions(&self) -> bool {
        false
    }
    /// The tracing programs' run counters (`None` where there are no real programs).
    fn program_runs(&self) -> Option<crate::bpf::program_runs::ProgramRuns> {
        None
    }
    /// Whether OOM kills are seen at the kernel hook.
    fn oom_hook(&self) -> &OomHook;
    /// Every per-stack total (O(stacks), no syscall for the real object).
    fn for_each_total(&self, visit: &mut dyn FnMut(StackKey, StackTotals));
    /// Every outstanding allocation (O(allocations)).
    fn for_each_allocation(
        &self,
        visit: &mut dyn FnMut(AllocKey, AllocInfo),
    ) -> Result<(), CollectError>;
    /// A stack's return addresses, innermost first.
    fn stack_frames(&self, stack_id: u64) -> Option<Vec<u64>>;
    /// The programs' counters.
    fn stats(&self) -> BpfStats;
    /// Drops every record of these processes, and the stacks nobody else uses.
    fn forget_processes(&mut self, tgids: &HashSet<u32>) -> Result<(), CollectError>;
    /// Applies pending mmap/munmap records; returns what the caller must act on.
    fn drain_events(&mut self, tracker: &mut MappingTracker, page_size: u64) -> Notices;
    /// A descriptor readable when records are waiting (`None`: poll instead).
    fn events_fd(&self) -> Option<RawFd>;
    /// Starts the background scans (`None` when this kernel side has none).
    fn start_scanner(&self, interval: Duration, keep: usize) -> std::io::Result<Option<Scanner>>;
    /// Whether the page-fault growth profile is recorded.
    fn fault_hook(&self) -> &FaultHook;
    /// Profiles the page faults of a cgroup's tasks (its v2 id); a full map is an error.
    fn watch_cgroup(&mut self, cgroup_id: u64) -> Result<(), String>;
    /// Stops profiling a cgroup's faults (what they recorded stays).
    fn unwatch_cgroup(&mut self, cgroup_id: u64);
    /// Every entry of the growth profile (one batched read for the real object).
    fn for_each_fault_total(
        &self,
        visit: &mut dyn FnMut(FaultKey, FaultTotals),
    ) -> Result<(), CollectError>;
    /// Drops the growth-profile entries of these processes, and the stacks nobody else uses.
    fn forget_fault_processes(&mut self, tgids: &HashSet<u32>) -> Result<(), CollectError>;
}

/// The loaded BPF object: its programs and links, and its maps.
pub struct LoadedKernel {
    probes: Probes,
    /// What a probe hit costs here, measured at load (the agent's), else the default figure.
    probe_cost: crate::bpf::probe_cost::ProbeCost,
    maps: BpfMaps,
    unwind_entries: Array<MapData, UnwindEntry>,
    unwind_mappings: LpmTrie<MapData, UnwindMappingKey, UnwindMapping>,
}

/// Why the kernel side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Loading the BPF object failed.
    #[error(transparent)]
    Load(#[from] super::LoadError),
    /// Its maps could not be opened.
    #[error(transparent)]
    Collect(#[from] CollectError),
    /// The unwinder's maps are missing.
    #[error("the BPF object has no usable map {name}")]
    MissingMap {
        /// Map name.
        name: &'static str,
        #[source]
        source: Option<MapError>,
    },
}

impl LoadedKernel {
    /// Loads and verifies the BPF programs (nothing is attached yet) and opens their maps.
    pub fn load(sizes: &MapSizes, options: &LoadOptions) -> Result<Self, KernelError> {
        let fault_profile = options.fault_profile;
        let mut probes = Probes::load(sizes, options)?;
        // The agent (which loads the fault programs) prices traced processes' calls against its
        // budget; `trace` does not.
        let probe_cost = if fault_profile {
            probes
                .calibrate_trap_ns()
                .map_or(ProbeCost::MEASURED_HERE, ProbeCost::from_trap_ns)
        } else {
            ProbeCost::MEASURED_HERE
        };
        let maps = BpfMaps::take(&mut probes)?;
        let mut take = |name: &'static str| {
            probes
                .ebpf
                .take_map(name)
                .ok_or(KernelError::MissingMap { name, source: None })
        };
        let entries = take(names::UNWIND_ENTRIES)?;
        let mappings = take(names::UNWIND_MAPPINGS)?;
        Ok(Self {
            unwind_entries: Array::try_from(entries).map_err(|source| KernelError::MissingMap {
                name: names::UNWIND_ENTRIES,
                source: Some(source),
            })?,
            unwind_mappings: LpmTrie::try_from(mappings).map_err(|source| {
                KernelError::MissingMap {
                    name: names::UNWIND_MAPPINGS,
                    source: Some(source),
                }
            })?,
            probes,
            probe_cost,
            maps,
        })
    }
}

impl UnwindMaps for LoadedKernel {
    fn set_unwind_row(&mut self, index: u32, row: &UnwindEntry) -> Result<(), String> {
        self.unwind_entries
            .set(index, row, 0)
            .map_err(|e| e.to_string())
    }

    fn insert_unwind_mapping(
        &mut self,
        key: &Key<UnwindMappingKey>,
        value: UnwindMapping,
    ) -> Result<(), String> {
        self.unwind_mappings
            .insert(key, value, 0)
            .map_err(|e| e.to_string())
    }

    fn remove_unwind_mapping(&mut self, key: &Key<UnwindMappingKey>) {
        let _ = self.unwind_mappings.remove(key);
    }

    fn unwind_rows(&self) -> u32 {
        self.unwind_entries.len()
    }
}

impl Kernel for LoadedKernel {
    fn attach(
        &mut self,
        pid: u32,
        library: AllocatorLibrary,
        programs: ProgramSet,
    ) -> Result<Attachment, AttachFailure> {
        attach::attach(&mut self.probes, pid, library, programs)
    }

    fn detach(&mut self, attachment: Attachment) -> DetachedLinks {
        attach::detach(&mut self.probes, attachment)
    }

    fn rearm(
        &mut self,
        attachment: &mut Attachment,
        library: AllocatorLibrary,
    ) -> Result<(), AttachError> {
        let pid = attachment.pid;
        attach::rearm(&mut self.probes, attachment, library).map_err(|source| AttachError::Arm {
            pid,
            source: Box::new(source),
        })
    }

    fn sample(&mut self, pid: u32, sample_bytes: u64) -> Result<(), String> {
        attach::sample(&mut self.probes, pid, sample_bytes).map_err(|e| e.to_string())
    }

    fn armed_process(&self, pid: u32) -> Option<ArmedProcess> {
        attach::armed_process(&self.probes, pid)
    }

    fn flush_log(&mut self) {
        self.probes.flush_log();
    }

    fn probe_cost(&self) -> ProbeCost {
        self.probe_cost
    }

    fn sessions(&self) -> bool {
        self.probes.malloc_session.is_some()
    }

    fn program_runs(&self) -> Option<crate::bpf::program_runs::ProgramRuns> {
        Some(self.probes.program_runs())
    }

    fn oom_hook(&self) -> &OomHook {
        &self.probes.oom_hook
    }

    fn for_each_total(&self, visit: &mut dyn FnMut(StackKey, StackTotals)) {
        self.maps.for_each_total(visit);
    }

    fn for_each_allocation(
        &self,
        visit: &mut dyn FnMut(AllocKey, AllocInfo),
    ) -> Result<(), CollectError> {
        crate::collect::batch::for_each_fd(self.maps.allocs_fd(), visit).map_err(|source| {
            CollectError::Read {
                name: names::ALLOCS,
                source,
            }
        })
    }

    fn stack_frames(&self, stack_id: u64) -> Option<Vec<u64>> {
        self.maps.stack_frames(stack_id)
    }

    fn stats(&self) -> BpfStats {
        self.maps.stats()
    }

    fn forget_processes(&mut self, tgids: &HashSet<u32>) -> Result<(), CollectError> {
        self.maps.forget_processes(tgids)
    }

    fn drain_events(&mut self, tracker: &mut MappingTracker, page_size: u64) -> Notices {
        self.maps.drain_events(tracker, page_size)
    }

    fn events_fd(&self) -> Option<RawFd> {
        Some(self.maps.events_fd())
    }

    fn start_scanner(&self, interval: Duration, keep: usize) -> std::io::Result<Option<Scanner>> {
        let allocs = self.maps.allocs_fd().try_clone_to_owned()?;
        let totals = self.maps.stack_table();
        Scanner::spawn(allocs, totals, interval, keep).map(Some)
    }

    fn fault_hook(&self) -> &FaultHook {
        &self.probes.fault_hook
    }

    fn watch_cgroup(&mut self, cgroup_id: u64) -> Result<(), String> {
        self.maps.faults.watch(cgroup_id)
    }

    fn unwatch_cgroup(&mut self, cgroup_id: u64) {
        self.maps.faults.unwatch(cgroup_id);
    }

    fn for_each_fault_total(
        &self,
        visit: &mut dyn FnMut(FaultKey, FaultTotals),
    ) -> Result<(), CollectError> {
        self.maps.faults.for_each(visit)
    }

    fn forget_fault_processes(&mut self, tgids: &HashSet<u32>) -> Result<(), CollectError> {
        self.maps.forget_fault_processes(tgids)
    }
}
