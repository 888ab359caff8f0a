//! The page-fault growth profile's side of the tracer: which cgroups are watched, which
//! processes are profiled (their fault stacks walkable by unwind table and symbolizable,
//! without a single uprobe), and the raw totals and symbolized stacks the agent reads.
//!
//! A watched cgroup's faults are recorded by the kernel for every process in it; profiling a
//! process only makes its stacks better (unwind tables through code without frame pointers)
//! and nameable. A traced process is already both, so profiling it costs nothing more.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use tracer_common::{FaultKey, FaultTotals};
use tracing::{debug, info, warn};

use super::Tracer;
use crate::{
    bpf::FaultHook,
    collect::CollectError,
    discover::{
        process::{self, AddressSpaceHint, Liveness, ProcessError},
        snapshot::ProcessSnapshot,
    },
    report::ProcessState,
    symbolize::Frame,
    unwind::loader::BinaryUnwinding,
};

/// How often [`Tracer::reap_ended`] looks for ended processes that the growth profile holds
/// but nobody profiled (a read of the whole map).
pub(super) const FAULT_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// How often [`Tracer::poll`] checks the profiled processes that are due (see
/// [`PROFILED_CHECK_INTERVAL`]).
pub(super) const PROFILED_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How often each profiled (not traced) process is checked for new code, an exec or an end:
/// one read of its stat, its maps read only when the stat hints at a change
/// ([`AddressSpaceHint`]). New code that grows the address space, and an exec, are found
/// within this interval (plus one [`PROFILED_POLL_INTERVAL`]).
pub(super) const PROFILED_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// How often each profiled process's program and maps are read whatever its stat says: new
/// code that leaves the hint as it was (mapped over a region reserved earlier) is found
/// within this interval (plus one [`PROFILED_POLL_INTERVAL`]).
pub(super) const PROFILED_FULL_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// Why a cgroup could not be watched or a process profiled.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The kernel's watched-cgroup map refused it (full).
    #[error("cannot watch cgroup {cgroup_id}: {reason}")]
    Watch {
        /// The cgroup's v2 id.
        cgroup_id: u64,
        /// What the kernel side said.
        reason: String,
    },
    /// The process could not be read.
    #[error(transparent)]
    Process(#[from] ProcessError),
}

/// A process whose fault stacks are made walkable and nameable.
pub(super) struct ProfiledProcess {
    pub(super) snapshot: ProcessSnapshot,
    pub(super) state: ProcessState,
    /// How each of its binaries is unwound.
    pub(super) unwinding: Vec<BinaryUnwinding>,
    /// Its stat's hint when its maps were last read (`None`: read them at the next check).
    hint: Option<AddressSpaceHint>,
    /// When it is next checked (one read of its stat).
    next_check: Instant,
    /// When its program and maps are next read whatever its stat says.
    next_full_check: Instant,
}

impl ProfiledProcess {
    /// Checked in full at the next poll, then on its own schedule from there: processes
    /// profiled over time (discovery profiles a bounded number per round) are checked spread
    /// over the interval, not all in one round.
    fn new(snapshot: ProcessSnapshot, unwinding: Vec<BinaryUnwinding>, now: Instant) -> Self {
        Self {
            snapshot,
            state: ProcessState::Running,
            unwinding,
            // Read at the first check, before the maps are read again: a hint read now, after
            // the snapshot, could already include a change the snapshot does not.
            hint: None,
            next_check: now,
            next_full_check: now,
        }
    }
}

impl Tracer {
    /// Whether the page-fault growth profile is recorded (and why not).
    pub fn fault_hook(&self) -> &FaultHook {
        self.kernel.fault_hook()
    }

    /// Profiles the page faults of every task in a cgroup (its v2 id: the inode of its cgroup
    /// directory). Idempotent.
    pub fn watch_cgroup(&mut self, cgroup_id: u64) -> Result<(), ProfileError> {
        self.kernel
            .watch_cgroup(cgroup_id)
            .map_err(|reason| ProfileError::Watch { cgroup_id, reason })?;
        debug!(cgroup_id, "watching page faults");
        Ok(())
    }

    /// Stops profiling a cgroup's faults. What they recorded stays until their processes end.
    pub fn unwatch_cgroup(&mut self, cgroup_id: u64) {
        self.kernel.unwatch_cgroup(cgroup_id);
        debug!(cgroup_id, "no longer watching page faults");
    }

    /// Reads a live process and profiles it (see [`Tracer::profile_process`]).
    pub fn profile_pid(&mut self, pid: u32) -> Result<(), ProfileError> {
        if self.is_profiled(pid) {
            return Ok(());
        }
        let snapshot = ProcessSnapshot::read(pid)?;
        self.profile_process(snapshot)
    }

    /// Makes a process's fault stacks walkable by unwind table and symbolizable, without
    /// uprobes: its code mappings go into the unwinder's maps and the symbolizer. Idempotent;
    /// a traced process has both already. Forgotten when the process ends (at
    /// [`Tracer::reap_ended`]) or with [`Tracer::unprofile_process`]; code it maps later
    /// (dlopen) is picked up by [`Tracer::poll`]. A snapshot of a process that has since ended
    /// or exec'd is read again.
    pub fn profile_process(&mut self, snapshot: ProcessSnapshot) -> Result<(), ProfileError> {
        let pid = snapshot.pid();
        if self.is_profiled(pid) {
            return Ok(());
        }
        let snapshot = match process::liveness(&snapshot.info) {
            Liveness::Alive => snapshot,
            Liveness::Gone | Liveness::Execed => ProcessSnapshot::read(pid)?,
        };
        let unwinding = match self.processes.get(&pid) {
            Some(traced) if traced.attachment.is_some() => traced.unwinding.clone(),
            _ => {
                self.symbolizer.update(&snapshot);
                self.unwind.add_process(&snapshot, self.kernel.as_mut())
            }
        };
        info!(pid, comm = %snapshot.info.comm, "profiling page faults");
        let _ = self.profiled.insert(
            pid,
            ProfiledProcess::new(snapshot, unwinding, Instant::now()),
        );
        Ok(())
    }

    /// Stops profiling a process: its unwind mappings and symbols go (unless it is traced).
    /// What its faults recorded stays until it ends.
    pub fn unprofile_process(&mut self, pid: u32) {
        if self.profiled.remove(&pid).is_some() && !self.processes.contains_key(&pid) {
            self.symbolizer.forget(pid);
            self.unwind.remove_process(pid, self.kernel.as_mut());
        }
    }

    /// Pids profiled (running, or ended and not yet reaped).
    pub fn profiled_pids(&self) -> Vec<u32> {
        self.profiled.keys().copied().collect()
    }

    /// How a profiled process's binaries are unwound.
    pub fn fault_unwinding(&self, pid: u32) -> &[BinaryUnwinding] {
        self.profiled
            .get(&pid)
            .map_or(&[], |p| p.unwinding.as_slice())
    }

    fn is_profiled(&self, pid: u32) -> bool {
        self.profiled
            .get(&pid)
            .is_some_and(|p| p.state == ProcessState::Running)
    }

    /// Every entry of the growth profile, raw: cumulative since each process was first seen
    /// (one batched read of the kernel map; cheap enough for every sample interval).
    pub fn fault_totals(&self) -> Result<Vec<(FaultKey, FaultTotals)>, CollectError> {
        let mut out = Vec::new();
        self.kernel
            .for_each_fault_total(&mut |key, totals| out.push((key, totals)))?;
        Ok(out)
    }

    /// The frames of fault stacks, by (pid, stack id), innermost first: the first frame is the
    /// faulting instruction. Processes neither profiled nor traced get unnamed frames (their
    /// addresses only). Only call this on the stacks a report shows: it is the expensive step.
    pub fn symbolize_fault_stacks(&mut self, stacks: &[(u32, u64)]) -> Vec<Arc<[Frame]>> {
        stacks
            .iter()
            .map(|&(pid, stack_id)| self.frames(pid, stack_id))
            .collect()
    }

    /// Follows profiled processes (called by [`Tracer::poll`]): new code mapped, an exec (a new
    /// address space: its old fault records go), an end.
    ///
    /// Each process is checked every [`PROFILED_CHECK_INTERVAL`], by one read of its stat; its
    /// program and maps are read only when the stat hints at a change, or every
    /// [`PROFILED_FULL_CHECK_INTERVAL`]. Reading a thousand watched processes' maps and stat
    /// every 200 ms cost the agent a third of a core, and every 5 s still 2% of one
    /// (BENCHMARKS.md, "Always-on watching"); a profiled process only needs its new code found
    /// before its faults there are reported.
    pub(super) fn poll_profiled(&mut self) {
        if self.last_profiled_poll.elapsed() < PROFILED_POLL_INTERVAL {
            return;
        }
        let now = Instant::now();
        self.last_profiled_poll = now;
        let due: Vec<u32> = self
            .profiled
            .iter()
            .filter(|(_, p)| !p.state.has_ended() && p.next_check <= now)
            .map(|(&pid, _)| pid)
            .collect();
        for pid in due {
            let traced = self.processes.contains_key(&pid);
            let Some(profiled) = self.profiled.get_mut(&pid) else {
                continue;
            };
            profiled.next_check = now + PROFILED_CHECK_INTERVAL;
            let hint = match process::address_space_hint(pid) {
                Ok(hint) => hint,
                Err(_) => {
                    debug!(pid, "profiled process ended");
                    profiled.state = ProcessState::Ended;
                    continue;
                }
            };
            if profiled.next_full_check > now && profiled.hint.as_ref() == Some(&hint) {
                continue;
            }
            profiled.next_full_check = now + PROFILED_FULL_CHECK_INTERVAL;
            profiled.hint = Some(hint);
            match process::liveness(&profiled.snapshot.info) {
                Liveness::Alive => {
                    if let Some(snapshot) = profiled.snapshot.changed() {
                        if !traced {
                            self.symbolizer.update(&snapshot);
                            profiled.unwinding =
                                self.unwind.add_process(&snapshot, self.kernel.as_mut());
                        }
                        profiled.snapshot = snapshot;
                    }
                }
                Liveness::Gone => {
                    debug!(pid, "profiled process ended");
                    profiled.state = ProcessState::Ended;
                }
                Liveness::Execed => {
                    info!(pid, old = %profiled.snapshot.info.comm, "profiled process exec'd another program");
                    let _ = self.profiled.remove(&pid);
                    self.forget_faults_of(&[pid]);
                    if !traced {
                        self.symbolizer.forget(pid);
                        self.unwind.remove_process(pid, self.kernel.as_mut());
                    }
                    if let Err(error) = self.profile_pid(pid) {
                        debug!(pid, %error, "cannot profile the program it exec'd");
                    }
                }
            }
        }
    }

    /// Drops what the profile holds of processes that ended: profiled ones (marked at the last
    /// poll), traced ones in `ended_traced`, and any other process the kernel recorded faults
    /// of (a watched cgroup's process nobody profiled) that no longer exists. Returns the
    /// profiled pids reaped.
    pub(super) fn reap_profiled(&mut self, ended_traced: &[u32]) -> Vec<u32> {
        let ended: Vec<u32> = self
            .profiled
            .iter()
            .filter(|(_, p)| p.state.has_ended())
            .map(|(&pid, _)| pid)
            .collect();
        for &pid in &ended {
            let _ = self.profiled.remove(&pid);
            if !self.processes.contains_key(&pid) {
                self.symbolizer.forget(pid);
                self.unwind.remove_process(pid, self.kernel.as_mut());
            }
        }
        let mut gone: HashSet<u32> = ended.iter().chain(ended_traced).copied().collect();
        if self.last_fault_sweep.elapsed() >= FAULT_SWEEP_INTERVAL {
            // Processes of watched cgroups that nobody profiled: the kernel recorded their
            // faults all the same. One read of the map now and then finds those that ended.
            self.last_fault_sweep = std::time::Instant::now();
            let mut unknown: HashSet<u32> = HashSet::new();
            let read = self.kernel.for_each_fault_total(&mut |key, _| {
                let _ = unknown.insert(key.tgid);
            });
            if let Err(error) = read {
                warn!(%error, "cannot read the growth profile to drop ended processes");
            }
            gone.extend(unknown.into_iter().filter(|pid| {
                !self.processes.contains_key(pid)
                    && !self.profiled.contains_key(pid)
                    && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            }));
        }
        let gone: Vec<u32> = gone.into_iter().collect();
        self.forget_faults_of(&gone);
        ended
    }

    fn forget_faults_of(&mut self, pids: &[u32]) {
        if pids.is_empty() {
            return;
        }
        let set: HashSet<u32> = pids.iter().copied().collect();
        if let Err(error) = self.kernel.forget_fault_processes(&set) {
            warn!(?pids, %error, "failed to drop the growth profile of ended processes");
        }
    }
}
