//! An in-memory kernel side for unit tests: it keeps what the real BPF programs would (armed
//! processes, outstanding allocations, per-stack totals, stacks, counters, ring-buffer notices,
//! the unwinder's rows and mappings) and lets a test play the programs' part, so the tracer and
//! the agent run their real code without root.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    os::fd::RawFd,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use aya::maps::lpm_trie::Key;
use tracer_common::{
    AllocInfo, AllocKey, ArmedProcess, COUNT_SCALE, FaultKey, FaultTotals, StackKey, StackTotals,
    Stat, UnwindEntry, UnwindMapping, UnwindMappingKey,
};

use crate::{
    attach::{
        AllocatorLibrary, AttachError, AttachFailure, Attachment, ProgramSet, closer::DetachedLinks,
    },
    bpf::{
        FaultHook, OomHook,
        kernel::{Kernel, UnwindMaps},
    },
    collect::{
        CollectError, Notices, mappings::MappingTracker, oom::OomKill, scanner::Scanner,
        stats::BpfStats,
    },
};

/// What the fake kernel holds; tests read and change it through [`FakeKernel::state`].
#[derive(Debug, Default)]
pub struct FakeState {
    /// Processes armed for recording.
    pub armed: HashSet<u32>,
    /// Processes switched to sampling, with their mean.
    pub sampled: HashMap<u32, u64>,
    /// Probe hits of armed processes: (allocator entries, frees).
    pub hits: HashMap<u32, (u64, u64)>,
    /// Every attach and detach, in order: (pid, attached?).
    pub history: Vec<(u32, bool)>,
    /// Outstanding allocations.
    pub allocations: HashMap<AllocKey, AllocInfo>,
    /// Per-stack totals.
    pub totals: HashMap<StackKey, StackTotals>,
    /// Stacks by id.
    pub stacks: HashMap<u64, Vec<u64>>,
    /// Counters by `Stat` index.
    pub counters: BTreeMap<u32, u64>,
    /// OOM kills waiting in the ring buffer.
    pub oom_kills: VecDeque<OomKill>,
    /// Execs waiting in the ring buffer.
    pub execs: VecDeque<u32>,
    /// Processes whose attach fails (as when one exits while its probes are attached).
    pub refuse_attach: HashSet<u32>,
    /// Unwind rows written.
    pub unwind_rows: BTreeMap<u32, UnwindEntry>,
    /// Unwind mapping blocks, by (prefix length, key bytes).
    pub unwind_mappings: BTreeMap<(u32, u32, u64), UnwindMapping>,
    /// Watched cgroups (their faults are profiled).
    pub watched_cgroups: HashSet<u64>,
    /// How many cgroups can be watched (0: no limit).
    pub watched_capacity: usize,
    /// The page-fault growth profile.
    pub fault_totals: HashMap<FaultKey, FaultTotals>,
}

impl FakeState {
    /// What the BPF programs do for an allocation: recorded only when the process is armed
    /// (counted as unarmed otherwise).
    pub fn allocate(&mut self, pid: u32, stack: &[u64], addr: u64, size_bytes: u64, at_ns: u64) {
        if !self.armed.contains(&pid) {
            *self
                .counters
                .entry(Stat::UNARMED_ALLOCATIONS.0)
                .or_default() += 1;
            return;
        }
        self.hits.entry(pid).or_default().0 += 1;
        let stack_id = stack_id_of(stack);
        let _ = self.stacks.insert(stack_id, stack.to_vec());
        let key = StackKey {
            tgid: pid,
            _pad: 0,
            stack_id,
        };
        let _ = self.allocations.insert(
            AllocKey {
                tgid: pid,
                _pad: 0,
                addr,
            },
            AllocInfo {
                size_bytes,
                timestamp_ns: at_ns,
                stack_id,
                cgroup_id: 0,
                sample_bytes: 0,
            },
        );
        let totals = self.totals.entry(key).or_insert(StackTotals {
            key,
            ..StackTotals::default()
        });
        totals.outstanding_bytes += size_bytes;
        totals.outstanding_count += COUNT_SCALE;
        totals.allocations_total += 1;
        *self
            .counters
            .entry(Stat::ALLOCATIONS_RECORDED.0)
            .or_default() += 1;
    }

    /// What the BPF programs do for a free.
    pub fn free(&mut self, pid: u32, addr: u64) {
        if self.armed.contains(&pid) {
            self.hits.entry(pid).or_default().1 += 1;
        }
        let key = AllocKey {
            tgid: pid,
            _pad: 0,
            addr,
        };
        let Some(info) = self.allocations.remove(&key) else {
            *self.counters.entry(Stat::FREES_UNKNOWN.0).or_default() += 1;
            return;
        };
        let stack = StackKey {
            tgid: pid,
            _pad: 0,
            stack_id: info.stack_id,
        };
        if let Some(totals) = self.totals.get_mut(&stack) {
            totals.outstanding_bytes -= info.size_bytes;
            totals.outstanding_count -= COUNT_SCALE;
        }
        *self.counters.entry(Stat::FREES_MATCHED.0).or_default() += 1;
    }
}

impl FakeState {
    /// What the fault programs do when a task of `cgroup_id` in process `pid` maps `pages` new
    /// anonymous pages at `stack` (`retouched`: at an address counted before): recorded only
    /// when the cgroup is watched. Returns the stack id.
    pub fn fault(
        &mut self,
        cgroup_id: u64,
        pid: u32,
        stack: &[u64],
        pages: u64,
        retouched: bool,
    ) -> u64 {
        let stack_id = stack_id_of(stack);
        if !self.watched_cgroups.contains(&cgroup_id) {
            return stack_id;
        }
        let _ = self.stacks.insert(stack_id, stack.to_vec());
        let totals = self
            .fault_totals
            .entry(FaultKey {
                cgroup_id,
                tgid: pid,
                _pad: 0,
                stack_id,
            })
            .or_default();
        let bytes = pages * 4096;
        if retouched {
            totals.retouched_bytes += bytes;
        } else {
            totals.bytes += bytes;
            totals.pages += pages;
        }
        totals.faults += 1;
        *self.counters.entry(Stat::FAULTS_COUNTED.0).or_default() += 1;
        stack_id
    }
}

/// A stack's id as a hash of its frames (the real programs hash the same way in spirit).
fn stack_id_of(stack: &[u64]) -> u64 {
    stack
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, &frame| {
            (hash ^ frame).wrapping_mul(0x100_0000_01b3)
        })
        .max(1)
}

/// The in-memory kernel side.
#[derive(Clone, Debug)]
pub struct FakeKernel {
    state: Arc<Mutex<FakeState>>,
    rows: u32,
    oom_hook: OomHook,
    fault_hook: FaultHook,
}

impl Default for FakeKernel {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            rows: 1 << 16,
            oom_hook: OomHook::Attached,
            fault_hook: FaultHook::Attached,
        }
    }
}

impl FakeKernel {
    /// Its state, for the test to play the programs' part or to check what was done.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A kernel side whose fault programs could not be attached.
    pub fn without_fault_hook(reason: &str) -> Self {
        Self {
            fault_hook: FaultHook::Unavailable(reason.to_owned()),
            ..Self::default()
        }
    }
}

impl UnwindMaps for FakeKernel {
    fn set_unwind_row(&mut self, index: u32, row: &UnwindEntry) -> Result<(), String> {
        if index >= self.rows {
            return Err(format!("row {index} past {}", self.rows));
        }
        let _ = self.state().unwind_rows.insert(index, *row);
        Ok(())
    }

    fn insert_unwind_mapping(
        &mut self,
        key: &Key<UnwindMappingKey>,
        value: UnwindMapping,
    ) -> Result<(), String> {
        let data = key.data();
        let _ = self.state().unwind_mappings.insert(
            (
                key.prefix_len(),
                u32::from_be(data.tgid_be),
                u64::from_be(data.addr_be),
            ),
            value,
        );
        Ok(())
    }

    fn remove_unwind_mapping(&mut self, key: &Key<UnwindMappingKey>) {
        let data = key.data();
        let _ = self.state().unwind_mappings.remove(&(
            key.prefix_len(),
            u32::from_be(data.tgid_be),
            u64::from_be(data.addr_be),
        ));
    }

    fn unwind_rows(&self) -> u32 {
        self.rows
    }
}

impl Kernel for FakeKernel {
    fn attach(
        &mut self,
        pid: u32,
        library: AllocatorLibrary,
        _programs: ProgramSet,
    ) -> Result<Attachment, AttachFailure> {
        let mut state = self.state();
        if state.refuse_attach.contains(&pid) {
            return Err(AttachError::Unsupported {
                pid,
                reason: "the test's kernel refuses it".to_owned(),
            }
            .into());
        }
        state.history.push((pid, true));
        // Armed only now: every probe would be live.
        let _ = state.armed.insert(pid);
        Ok(Attachment::unlinked(pid, library))
    }

    fn detach(&mut self, attachment: Attachment) -> DetachedLinks {
        let mut state = self.state();
        // Disarmed before any probe goes.
        let _ = state.armed.remove(&attachment.pid);
        state.history.push((attachment.pid, false));
        DetachedLinks::default()
    }

    fn rearm(
        &mut self,
        attachment: &mut Attachment,
        library: AllocatorLibrary,
    ) -> Result<(), AttachError> {
        attachment.library = library;
        let _ = self.state().armed.insert(attachment.pid);
        Ok(())
    }

    fn sample(&mut self, pid: u32, sample_bytes: u64) -> Result<(), String> {
        let mut state = self.state();
        if !state.armed.contains(&pid) {
            return Err(format!("process {pid} is not armed"));
        }
        let _ = state.sampled.insert(pid, sample_bytes);
        Ok(())
    }

    fn armed_process(&self, pid: u32) -> Option<ArmedProcess> {
        let state = self.state();
        state.armed.contains(&pid).then(|| {
            let (entry_hits, free_hits) = state.hits.get(&pid).copied().unwrap_or_default();
            ArmedProcess {
                sample_bytes: state.sampled.get(&pid).copied().unwrap_or(0),
                entry_hits,
                free_hits,
            }
        })
    }

    fn flush_log(&mut self) {}

    fn oom_hook(&self) -> &OomHook {
        &self.oom_hook
    }

    fn for_each_total(&self, visit: &mut dyn FnMut(StackKey, StackTotals)) {
        for (&key, &totals) in &self.state().totals {
            visit(key, totals);
        }
    }

    fn for_each_allocation(
        &self,
        visit: &mut dyn FnMut(AllocKey, AllocInfo),
    ) -> Result<(), CollectError> {
        for (&key, &info) in &self.state().allocations {
            visit(key, info);
        }
        Ok(())
    }

    fn stack_frames(&self, stack_id: u64) -> Option<Vec<u64>> {
        self.state().stacks.get(&stack_id).cloned()
    }

    fn stats(&self) -> BpfStats {
        let state = self.state();
        BpfStats(
            Stat::NAMES
                .iter()
                .enumerate()
                .map(|(index, &name)| {
                    let index = u32::try_from(index).unwrap_or(u32::MAX);
                    (name, state.counters.get(&index).copied().unwrap_or(0))
                })
                .collect(),
        )
    }

    fn forget_processes(&mut self, tgids: &HashSet<u32>) -> Result<(), CollectError> {
        let mut state = self.state();
        state
            .allocations
            .retain(|key, _| !tgids.contains(&key.tgid));
        state.totals.retain(|key, _| !tgids.contains(&key.tgid));
        Ok(())
    }

    fn drain_events(&mut self, _tracker: &mut MappingTracker, _page_size: u64) -> Notices {
        let mut state = self.state();
        Notices {
            oom_kills: state.oom_kills.drain(..).collect(),
            execs: state.execs.drain(..).collect(),
        }
    }

    fn events_fd(&self) -> Option<RawFd> {
        None
    }

    fn start_scanner(&self, _interval: Duration, _keep: usize) -> std::io::Result<Option<Scanner>> {
        Ok(None)
    }

    fn fault_hook(&self) -> &FaultHook {
        &self.fault_hook
    }

    fn watch_cgroup(&mut self, cgroup_id: u64) -> Result<(), String> {
        let mut state = self.state();
        if state.watched_capacity > 0
            && state.watched_cgroups.len() >= state.watched_capacity
            && !state.watched_cgroups.contains(&cgroup_id)
        {
            return Err(format!(
                "cannot watch cgroup {cgroup_id}: the map is full ({} cgroups)",
                state.watched_capacity
            ));
        }
        let _ = state.watched_cgroups.insert(cgroup_id);
        Ok(())
    }

    fn unwatch_cgroup(&mut self, cgroup_id: u64) {
        let _ = self.state().watched_cgroups.remove(&cgroup_id);
    }

    fn for_each_fault_total(
        &self,
        visit: &mut dyn FnMut(FaultKey, FaultTotals),
    ) -> Result<(), CollectError> {
        for (&key, &totals) in &self.state().fault_totals {
            visit(key, totals);
        }
        Ok(())
    }

    fn forget_fault_processes(&mut self, tgids: &HashSet<u32>) -> Result<(), CollectError> {
        self.state()
            .fault_totals
            .retain(|key, _| !tgids.contains(&key.tgid));
        Ok(())
    }
}
