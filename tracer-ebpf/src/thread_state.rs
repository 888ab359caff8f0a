//! Per-thread allocator-call state: which outermost traced call a thread is in.
//!
//! glibc calls itself: realloc(NULL, n) tail-jumps into malloc, memalign calls malloc, malloc
//! calls mmap for large chunks and new arenas. Only the outermost call is recorded; the inner
//! ones only move the depth. A return is matched with the entry of the same function, never
//! with whatever the thread entered last (the mix-up that makes an arena's 128 MiB reservation
//! look like a leak in other tools).

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
};
use aya_log_ebpf::warn;
use tracer_common::{AllocFn, Stat, ThreadState};

use crate::{
    armed,
    config::{STALE_CALL_NS, daemon_tgid},
    maps::THREAD_STATE,
    sampling,
    stats::bump,
};

/// The calling task: (tgid, tid).
pub(crate) fn current() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

/// Called at every traced entry. Returns the thread's state when this call is the outermost
/// traced one (the caller may stash more in it), `None` when it is nested or untracked.
pub(crate) fn enter<C: EbpfContext>(
    ctx: &C,
    func: AllocFn,
    size_bytes: u64,
    arg: u64,
) -> Option<&'static mut ThreadState> {
    let (tgid, tid) = current();
    if tgid == daemon_tgid() {
        return None;
    }
    // Every entry is a probe hit the budget prices; an unarmed process (being attached) records
    // nothing, so its calls are decided as exact.
    let sample_bytes = match armed::armed(tgid) {
        Some(process) => {
            armed::count_hit(&mut process.entry_hits);
            process.sample_bytes
        }
        None => 0,
    };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let state = state_of(tid)?;
    if state.depth > 0 {
        if now.wrapping_sub(state.entry_ns) < STALE_CALL_NS {
            state.depth += 1;
            bump(Stat::NESTED_CALLS);
            return None;
        }
        // Rare (a lost return probe): worth a line in the daemon's log.
        bump(Stat::STALE_CALLS);
        warn!(
            ctx,
            "tid {}: allocator call {} never returned; state reset", tid, state.func
        );
    }
    state.depth = 1;
    state.func = func.0;
    state.entry_ns = now;
    state.size_bytes = size_bytes;
    state.arg = arg;
    state.stash_valid = 0;
    state.sampled = 1;
    state.sample_bytes = sample_bytes;
    if sample_bytes > 0 {
        // Counting down the bytes to the next sample; a thread's first call draws its first
        // distance.
        if state.bytes_until_sample == 0 {
            state.bytes_until_sample = sampling::draw_distance(sample_bytes);
        }
        let remaining = state
            .bytes_until_sample
            .wrapping_sub(size_bytes.min(1 << 62) as i64);
        if remaining > 0 {
            state.bytes_until_sample = remaining;
            state.sampled = 0;
        } else {
            state.bytes_until_sample = sampling::draw_distance(sample_bytes);
        }
    }
    Some(state)
}

/// What a session entry decided.
pub(crate) enum Session {
    /// The outermost call, sampled: its return must run.
    Outermost,
    /// Nested, unsampled or untracked: no return run (and nothing to undo).
    Declined,
}

/// Entry of a uprobe session. Unlike [`enter`], a nested call leaves the depth alone (it will
/// not get a return run), and an unsampled outermost call leaves no state behind.
pub(crate) fn enter_session<C: EbpfContext>(
    ctx: &C,
    func: AllocFn,
    size_bytes: u64,
    arg: u64,
    sp: u64,
) -> Session {
    let (tgid, tid) = current();
    if tgid == daemon_tgid() {
        return Session::Declined;
    }
    if THREAD_STATE.get_ptr(&tid).is_some_and(|state| {
        // SAFETY: entries of this map are only touched by their own thread.
        let state = unsafe { &*state };
        // SAFETY: the helper has no preconditions.
        state.depth > 0
            && unsafe { bpf_ktime_get_ns() }.wrapping_sub(state.entry_ns) < STALE_CALL_NS
    }) {
        bump(Stat::NESTED_CALLS);
        return Session::Declined;
    }
    let Some(state) = enter(ctx, func, size_bytes, arg) else {
        return Session::Declined;
    };
    if state.sampled == 0 {
        state.depth = 0;
        state.func = AllocFn::NONE.0;
        return Session::Declined;
    }
    state.session_sp = sp;
    Session::Outermost
}

/// Called at every traced return. Returns the state of the outermost call when this is its
/// return, `None` for a nested return or a return without a matching entry.
pub(crate) fn exit(func: AllocFn) -> Option<&'static mut ThreadState> {
    let (outermost, state) = exit_outermost()?;
    if outermost != func {
        bump(Stat::RETURNS_WITHOUT_ENTRY);
        return None;
    }
    Some(state)
}

/// [`exit`] for a program on the return of several functions: the outermost call's function
/// and state when this is its return, whichever function it is.
pub(crate) fn exit_outermost() -> Option<(AllocFn, &'static mut ThreadState)> {
    let (tgid, tid) = current();
    if tgid == daemon_tgid() {
        return None;
    }
    let Some(state) = THREAD_STATE.get_ptr_mut(&tid) else {
        bump(Stat::RETURNS_WITHOUT_ENTRY);
        return None;
    };
    // SAFETY: entries of this map are only touched by their own thread.
    let state = unsafe { &mut *state };
    if state.depth == 0 {
        bump(Stat::RETURNS_WITHOUT_ENTRY);
        return None;
    }
    state.depth -= 1;
    if state.depth > 0 {
        return None;
    }
    let func = AllocFn(state.func);
    state.func = AllocFn::NONE.0;
    Some((func, state))
}

/// True when the calling thread is inside a traced allocator call (so a munmap it makes is
/// the allocator's own business).
pub(crate) fn inside_allocator(tid: u32) -> bool {
    let Some(state) = THREAD_STATE.get_ptr(&tid) else {
        return false;
    };
    // SAFETY: as above.
    let state = unsafe { &*state };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    state.depth > 0 && now.wrapping_sub(state.entry_ns) < STALE_CALL_NS
}

fn state_of(tid: u32) -> Option<&'static mut ThreadState> {
    if let Some(state) = THREAD_STATE.get_ptr_mut(&tid) {
        // SAFETY: entries of this map are only touched by their own thread.
        return Some(unsafe { &mut *state });
    }
    let _ignored = THREAD_STATE.insert(&tid, &ThreadState::default(), u64::from(BPF_NOEXIST));
    match THREAD_STATE.get_ptr_mut(&tid) {
        // SAFETY: as above.
        Some(state) => Some(unsafe { &mut *state }),
        None => {
            bump(Stat::THREAD_STATE_FULL);
            None
        }
    }
}
