//! Uprobe sessions (Linux 6.10+): one program runs at a function's entry and, only if the entry
//! returned 0, again at its return. In sampled mode an unsampled malloc declines its return:
//! the return-probe trap is the largest part of what an unsampled allocation would cost. The
//! daemon attaches this program with a raw session link where the kernel has them, and falls
//! back to the classic entry and return programs elsewhere.
//!
//! The program tells its two runs apart by the stack pointer: the return comes back with it
//! 8 bytes above the entry's (the return address popped), on the same thread, for the
//! outermost call only (nested calls always decline, and never move the depth).

use core::ffi::c_void;

use aya_ebpf::{EbpfContext as _, bindings::pt_regs, programs::ProbeContext};
use tracer_common::AllocFn;

use crate::{
    config::daemon_tgid,
    maps::THREAD_STATE,
    probes::{arg, record_returned},
    thread_state::{self, Session, current},
};

/// Keep the return run.
const WANT_RETURN: u32 = 0;
/// Skip the return run.
const NO_RETURN: u32 = 1;

/// The program's entry point, written out by hand: aya's `#[uprobe]` macro returns 0 whatever
/// the function returns, which would keep every return run.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub extern "C" fn malloc_session(ctx: *mut c_void) -> u32 {
    session(ProbeContext::new(ctx))
}

fn session(ctx: ProbeContext) -> u32 {
    let (tgid, tid) = current();
    if tgid == daemon_tgid() {
        return NO_RETURN;
    }
    // SAFETY: uprobe programs get the user registers as their context.
    let regs = unsafe { &*ctx.as_ptr().cast::<pt_regs>() };
    if let Some(state) = THREAD_STATE.get_ptr_mut(&tid) {
        // SAFETY: entries of this map are only touched by their own thread.
        let state = unsafe { &mut *state };
        if state.depth == 1
            && state.func == AllocFn::MALLOC.0
            && state.session_sp.wrapping_add(8) == regs.rsp
        {
            state.depth = 0;
            state.func = AllocFn::NONE.0;
            record_returned(&ctx, regs.rax, state);
            return WANT_RETURN;
        }
    }
    match thread_state::enter_session(&ctx, AllocFn::MALLOC, arg(&ctx, 0), 0, regs.rsp) {
        Session::Outermost => WANT_RETURN,
        Session::Declined => NO_RETURN,
    }
}
