//! Which processes are armed for recording. A process is armed only once every probe that
//! could see its allocations end (free, realloc, munmap, operator delete) is attached, and
//! disarmed before its probes are detached: an allocation is recorded only when the probe that
//! would see its free is live, so attaching to a process busy in malloc/free never records a
//! block whose free went unseen. Allocations seen while unarmed are counted.
//!
//! An exec replaces the address space: the kernel's `sched_process_exec` disarms the process at
//! once (nothing of the new program is recorded against the old one's probes) and tells the
//! daemon through the ring buffer, so it re-attaches within milliseconds, not at its next poll.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{ArmedProcess, ExecEvent, Stat, event_kind};

use crate::{
    maps::{ARMED, EVENTS},
    stats::bump,
    thread_state::current,
};

/// The armed process `tgid`: its sampling mean and probe-hit counters.
pub(crate) fn armed(tgid: u32) -> Option<&'static mut ArmedProcess> {
    // SAFETY: the counters are only changed with atomic adds, and the mean is a plain u64 the
    // daemon rewrites whole.
    ARMED
        .get_ptr_mut(&tgid)
        .map(|process| unsafe { &mut *process })
}

/// Counts one probe hit in `counter` (a field of an [`ArmedProcess`]).
pub(crate) fn count_hit(counter: &mut u64) {
    // SAFETY: a valid, aligned u64 in map memory; see `heap::add`.
    unsafe { crate::heap::add(counter, 1) };
}

/// True when `tgid` is armed; counts the allocation as unarmed otherwise.
pub(crate) fn recording(tgid: u32) -> bool {
    if ARMED.get_ptr(&tgid).is_some() {
        return true;
    }
    bump(Stat::UNARMED_ALLOCATIONS);
    false
}

/// Hook placement: `sched_process_exec` runs in the exec'ing task after the new program is
/// loaded and before it runs a single instruction, so no allocation of the new program can be
/// recorded before the daemon has seen the exec.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn process_exec(_ctx: BtfTracePointContext) -> i32 {
    let (tgid, _) = current();
    if ARMED.get_ptr(&tgid).is_none() {
        return 0;
    }
    let _ = ARMED.remove(&tgid);
    let event = ExecEvent {
        kind: event_kind::EXEC,
        tgid,
        // SAFETY: the helper has no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
    };
    if EVENTS.output::<ExecEvent>(&event, 0).is_err() {
        bump(Stat::EVENTS_DROPPED);
    }
    0
}
