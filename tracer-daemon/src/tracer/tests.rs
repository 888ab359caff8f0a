//! The tracer on the in-memory kernel side: real processes (children of the test), real
//! /proc reads and symbolization, no root; the BPF programs' part is played by the test.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tracer_common::Stat;

use super::*;
use crate::{
    bpf::fake::FakeKernel,
    collect::{self, oom::OomKill},
    report::{ProcessState, assemble::RawStack},
};

/// A child that waits (a dynamic /bin/sleep: it maps glibc), killed on drop.
pub(crate) struct Sleeper(pub(crate) Child);

impl Sleeper {
    pub(crate) fn start(script: &str) -> Self {
        let child = Command::new("sh")
            .args(["-c", script])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn sh");
        Self(child)
    }

    /// A dynamic /bin/sleep, running with its C library mapped.
    pub(crate) fn sleeping() -> Self {
        let sleeper = Self::start("exec sleep 1000");
        sleeper.wait_comm("sleep");
        sleeper
    }

    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits until it runs `comm` with its C library mapped (an exec changes the name before
    /// the dynamic loader maps the libraries).
    pub(crate) fn wait_comm(&self, comm: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let ready = || {
            let name = std::fs::read_to_string(format!("/proc/{}/comm", self.pid()));
            let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid()));
            name.is_ok_and(|c| c.trim() == comm) && maps.is_ok_and(|m| m.contains("/libc.so"))
        };
        while !ready() {
            assert!(Instant::now() < deadline, "never became {comm}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the kernel hook reports when it OOM-kills `pid` (1 MiB resident).
pub(crate) fn oom_kill_of(pid: u32, at_ns: u64) -> OomKill {
    OomKill {
        victim_pid: Some(pid),
        victim_tid: Some(pid),
        victim_comm: "sleep".into(),
        trigger_pid: pid,
        trigger_comm: "sleep".into(),
        timestamp_ns: at_ns,
        rss_anon_bytes: 1 << 20,
        rss_file_bytes: 0,
        rss_shmem_bytes: 0,
        swap_bytes: 0,
        victim_cgroup_id: 0,
        victim_memcg_id: 0,
        trigger_cgroup_id: 0,
    }
}

fn tracer() -> (Tracer, FakeKernel) {
    let kernel = FakeKernel::default();
    let tracer = Tracer::with_kernel(Box::new(kernel.clone()), &TracerConfig::default());
    (tracer, kernel)
}

/// An address inside the process's first executable mapping (its program's code).
pub(crate) fn code_address(tracer: &Tracer, pid: u32) -> u64 {
    let traced = &tracer.processes[&pid];
    traced.snapshot.mappings[0].start + 0x10
}

#[test]
fn a_process_is_armed_only_with_its_probes_and_disarmed_before_they_go() {
    let (mut tracer, kernel) = tracer();
    let sleeper = Sleeper::sleeping();
    let pid = sleeper.pid();
    // Allocations before the attach are not recorded: nothing is armed yet.
    kernel.state().allocate(pid, &[1], 0x1000, 64, 1);
    tracer.trace(pid).expect("trace a sleeping child");
    assert!(kernel.state().armed.contains(&pid));
    assert_eq!(
        tracer.allocator(pid).map(|a| a.ends_with("libc.so.6")),
        Some(true)
    );
    assert!(
        tracer
            .unwinding(pid)
            .iter()
            .any(|b| b.binary.ends_with("libc.so.6")),
        "the unwinder loaded libc's table: {:?}",
        tracer.unwinding(pid)
    );
    assert!(
        !kernel.state().unwind_rows.is_empty(),
        "rows written through the seam"
    );
    tracer.untrace(pid);
    let state = kernel.state();
    assert!(!state.armed.contains(&pid));
    assert_eq!(state.history, [(pid, true), (pid, false)]);
    assert_eq!(state.counters.get(&Stat::UNARMED_ALLOCATIONS.0), Some(&1));
}

#[test]
fn stacks_come_from_the_kernels_totals_with_ages_from_its_allocations() {
    let (mut tracer, kernel) = tracer();
    let sleeper = Sleeper::sleeping();
    let pid = sleeper.pid();
    tracer.trace(pid).expect("trace");
    let site = code_address(&tracer, pid);
    let now = collect::monotonic_now_ns();
    {
        let mut state = kernel.state();
        for i in 0..10 {
            state.allocate(pid, &[site], 0x10_000 + i * 64, 64, now - 5_000_000_000);
        }
        state.allocate(pid, &[site + 1, site], 0x20_000, 4096, now);
        state.free(pid, 0x10_000);
    }
    let stacks = tracer
        .process_stacks(&[pid], &ReportOptions::default())
        .expect("stacks");
    assert_eq!(stacks.len(), 1);
    assert_eq!(stacks[0].comm, "sleep");
    let mut by_bytes: Vec<(u64, u64)> = stacks[0]
        .stacks
        .iter()
        .map(|s| (s.bytes, s.count))
        .collect();
    by_bytes.sort_unstable();
    assert_eq!(by_bytes, [(576, 9), (4096, 1)]);
    // Only allocations at least a second old count with a minimum age.
    let aged = tracer
        .process_stacks(
            &[pid],
            &ReportOptions {
                min_age_ns: 1_000_000_000,
            },
        )
        .expect("aged stacks");
    let aged: Vec<(u64, u64)> = aged[0].stacks.iter().map(|s| (s.bytes, s.count)).collect();
    assert_eq!(aged, [(576, 9)]);
    // Symbolized from the process's own snapshot: the frame is in sleep's code.
    let raw: Vec<RawStack> = stacks[0].stacks.clone();
    let reports = tracer.symbolize_stacks(&raw);
    assert!(reports.iter().all(|r| {
        r.frames[0]
            .module
            .as_deref()
            .is_some_and(|m| m.ends_with("/sleep"))
    }));
}

#[test]
fn an_exec_keeps_the_probes_when_the_new_program_maps_the_same_allocator() {
    let (mut tracer, kernel) = tracer();
    // dash first, then sleep: both map the same glibc.
    let sleeper = Sleeper::start("sleep 0.5; exec sleep 1000");
    sleeper.wait_comm("sh");
    let pid = sleeper.pid();
    tracer.trace(pid).expect("trace sh");
    let site = code_address(&tracer, pid);
    kernel.state().allocate(pid, &[site], 0x30_000, 128, 1);
    sleeper.wait_comm("sleep");
    // What the exec hook does in the kernel: disarm, and tell the daemon.
    {
        let mut state = kernel.state();
        let _ = state.armed.remove(&pid);
        state.execs.push_back(pid);
    }
    tracer.drain_events();
    let state = kernel.state();
    assert!(state.armed.contains(&pid), "armed again");
    assert_eq!(
        state.history,
        [(pid, true)],
        "the same probes serve the new program"
    );
    assert!(
        state.allocations.is_empty(),
        "the old program's records went with it"
    );
    drop(state);
    assert_eq!(tracer.state(pid), Some(ProcessState::Running));
    let stacks = tracer
        .process_stacks(&[pid], &ReportOptions::default())
        .expect("stacks");
    assert_eq!(stacks[0].comm, "sleep");
}

#[test]
fn an_oom_killed_process_is_reported_so_and_its_records_go_once_reaped() {
    let (mut tracer, kernel) = tracer();
    let mut sleeper = Sleeper::sleeping();
    let pid = sleeper.pid();
    tracer.trace(pid).expect("trace");
    let site = code_address(&tracer, pid);
    kernel.state().allocate(pid, &[site], 0x40_000, 1 << 20, 1);
    kernel.state().oom_kills.push_back(oom_kill_of(pid, 1));
    tracer.drain_events();
    assert_eq!(tracer.take_oom_kills().len(), 1);
    let _ = sleeper.0.kill();
    let _ = sleeper.0.wait();
    tracer.poll();
    assert_eq!(tracer.state(pid), Some(ProcessState::OomKilled));
    // Its records stay until the last report of it, then go.
    assert_eq!(kernel.state().allocations.len(), 1);
    assert_eq!(tracer.reap_ended(), [pid]);
    assert!(kernel.state().allocations.is_empty());
    assert!(tracer.pids().is_empty());
}

#[test]
fn what_cannot_be_traced_never_reaches_the_kernel() {
    let (mut tracer, kernel) = tracer();
    let own = std::process::id();
    let error = tracer.trace(own).expect_err("not the tracer itself");
    assert!(error.to_string().contains("the tracer itself"), "{error}");
    let error = tracer.trace(2).expect_err("not a kernel thread");
    assert!(error.to_string().contains("kernel thread"), "{error}");
    assert!(kernel.state().history.is_empty());
}

#[test]
fn a_failed_attach_arms_nothing_and_its_records_go_once_its_links_are_closed() {
    let (mut tracer, kernel) = tracer();
    let sleeper = Sleeper::sleeping();
    let pid = sleeper.pid();
    let _ = kernel.state().refuse_attach.insert(pid);
    let error = tracer.trace(pid).expect_err("the kernel refuses it");
    assert!(error.to_string().contains("refuses"), "{error}");
    assert!(!kernel.state().armed.contains(&pid));
    assert!(tracer.state(pid).is_none(), "not traced");
    // Its links close off the caller's thread; what the attach wrote for the unwinder goes
    // once they are closed.
    let mapped = |kernel: &FakeKernel| {
        kernel
            .state()
            .unwind_mappings
            .keys()
            .any(|&(_, tgid, _)| tgid == pid)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tracer.poll();
        if !mapped(&kernel) {
            break;
        }
        assert!(Instant::now() < deadline, "unwind mappings left behind");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Tried again (an explicit start): nothing of the first attempt is in the way.
    let _ = kernel.state().refuse_attach.remove(&pid);
    tracer.trace(pid).expect("trace");
    assert!(kernel.state().armed.contains(&pid));
}

#[test]
fn faults_are_profiled_only_in_watched_cgroups_and_stop_when_unwatched() {
    let (mut tracer, kernel) = tracer();
    assert_eq!(tracer.fault_hook(), &crate::bpf::FaultHook::Attached);
    tracer.watch_cgroup(7).expect("watch");
    tracer.watch_cgroup(7).expect("watching twice is fine");
    let leak = kernel.state().fault(7, 100, &[0x1000], 64, false);
    let _ = kernel.state().fault(7, 100, &[0x2000], 256, true);
    let _ = kernel.state().fault(8, 101, &[0x3000], 64, false);
    tracer.unwatch_cgroup(7);
    let _ = kernel.state().fault(7, 100, &[0x1000], 64, false);
    let mut totals = tracer.fault_totals().expect("totals");
    totals.sort_by_key(|(key, _)| key.stack_id != leak);
    assert_eq!(totals.len(), 2, "{totals:?}");
    let (key, leaked) = totals[0];
    assert_eq!((key.cgroup_id, key.tgid, key.stack_id), (7, 100, leak));
    assert_eq!(
        (leaked.bytes, leaked.pages, leaked.faults),
        (64 * 4096, 64, 1)
    );
    assert_eq!(totals[1].1.bytes, 0, "a retouch is not growth");
    assert_eq!(totals[1].1.retouched_bytes, 256 * 4096);
}

#[test]
fn a_full_watch_map_is_an_error_naming_the_cgroup() {
    let (mut tracer, kernel) = tracer();
    kernel.state().watched_capacity = 1;
    tracer.watch_cgroup(1).expect("first fits");
    let error = tracer.watch_cgroup(2).expect_err("full");
    assert!(error.to_string().contains("cgroup 2"), "{error}");
}

#[test]
fn a_profiled_process_gets_unwind_mappings_and_names_without_probes() {
    let (mut tracer, kernel) = tracer();
    let mut sleeper = Sleeper::sleeping();
    let pid = sleeper.pid();
    let snapshot = ProcessSnapshot::read(pid).expect("read");
    let site = snapshot.mappings[0].start + 0x10;
    tracer.profile_process(snapshot).expect("profile");
    tracer.profile_pid(pid).expect("profiling again is a no-op");
    assert_eq!(tracer.profiled_pids(), [pid]);
    let mapped = |kernel: &FakeKernel| {
        kernel
            .state()
            .unwind_mappings
            .keys()
            .any(|&(_, tgid, _)| tgid == pid)
    };
    {
        let state = kernel.state();
        assert!(state.history.is_empty(), "no probes attached");
        assert!(state.armed.is_empty());
    }
    assert!(mapped(&kernel), "its code is in the unwinder's maps");
    assert!(
        tracer
            .fault_unwinding(pid)
            .iter()
            .any(|b| b.binary.ends_with("libc.so.6") && b.method == "unwind table"),
        "{:?}",
        tracer.fault_unwinding(pid)
    );
    tracer.watch_cgroup(3).expect("watch");
    let stack_id = kernel.state().fault(3, pid, &[site + 1], 1, false);
    let frames = tracer.symbolize_fault_stacks(&[(pid, stack_id)]);
    assert_eq!(frames.len(), 1);
    assert!(
        frames[0][0]
            .module
            .as_deref()
            .is_some_and(|m| m.ends_with("/sleep")),
        "{:?}",
        frames[0]
    );

    // Its end: marked at the poll, everything of it goes at the reap.
    let _ = sleeper.0.kill();
    let _ = sleeper.0.wait();
    tracer.poll();
    assert!(tracer.reap_ended().is_empty(), "it was never traced");
    assert!(tracer.profiled_pids().is_empty());
    assert!(!mapped(&kernel), "unwind mappings removed");
    assert!(
        kernel.state().fault_totals.is_empty(),
        "fault records removed"
    );
}

#[test]
fn untracing_a_profiled_process_keeps_its_unwind_mappings_and_unprofiling_drops_them() {
    let (mut tracer, kernel) = tracer();
    let sleeper = Sleeper::sleeping();
    let pid = sleeper.pid();
    tracer.trace(pid).expect("trace");
    tracer.profile_pid(pid).expect("profile");
    let mapped = |kernel: &FakeKernel| {
        kernel
            .state()
            .unwind_mappings
            .keys()
            .any(|&(_, tgid, _)| tgid == pid)
    };
    tracer.untrace(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !kernel.state().history.contains(&(pid, false)) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    // Its links close in the background; then its allocation records go, not its profile.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        tracer.poll();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(mapped(&kernel), "still profiled: still walkable");
    tracer.unprofile_process(pid);
    assert!(!mapped(&kernel));
    assert!(tracer.profiled_pids().is_empty());
}

#[test]
fn the_fault_hook_being_unavailable_says_why() {
    let kernel = FakeKernel::without_fault_hook("no BTF");
    let tracer = Tracer::with_kernel(Box::new(kernel), &TracerConfig::default());
    assert_eq!(
        tracer.fault_hook(),
        &crate::bpf::FaultHook::Unavailable("no BTF".to_owned())
    );
}
