//! User stack capture with our own storage, keyed by a 64-bit hash of the frames.
//!
//! The kernel's STACK_TRACE map buckets stacks by a hash and fails on a bucket collision, so
//! a half-full map loses stacks; exact keys here make a lost stack a full map, counted.
//! Stacks are captured in return probes: there the kernel has put the caller's return address
//! in the instruction pointer, so the first frame is the call site itself.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::generated::bpf_get_stack,
};
use tracer_common::{MAX_STACK_DEPTH, Stat, UNKNOWN_STACK_ID};

use crate::{
    maps::{STACK_SCRATCH, STACK_TRACES},
    stats::bump,
};

const EEXIST: i32 = 17;

/// Captures the current user stack and returns its id ([`UNKNOWN_STACK_ID`] when lost).
pub(crate) fn capture<C: EbpfContext>(ctx: &C) -> u64 {
    let Some(scratch) = STACK_SCRATCH.get_ptr_mut(0) else {
        bump(Stat::STACKS_LOST);
        return UNKNOWN_STACK_ID;
    };
    // SAFETY: per-CPU scratch, used by this program run only.
    let scratch = unsafe { &mut *scratch };
    // SAFETY: the buffer is MAX_STACK_DEPTH u64s long, as the size argument says.
    let bytes = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            scratch.ips.as_mut_ptr().cast(),
            (MAX_STACK_DEPTH * 8) as u32,
            u64::from(BPF_F_USER_STACK),
        )
    };
    if bytes <= 0 {
        bump(Stat::STACKS_LOST);
        return UNKNOWN_STACK_ID;
    }
    let frames = (bytes as u64 / 8).min(MAX_STACK_DEPTH as u64);
    scratch.len = frames;

    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ frames;
    for i in 0..MAX_STACK_DEPTH {
        if i as u64 >= frames {
            break;
        }
        hash = (hash ^ scratch.ips[i]).wrapping_mul(0x0000_0100_0000_01b3);
        hash ^= hash >> 31;
    }
    let stack_id = if hash == UNKNOWN_STACK_ID { 1 } else { hash };

    if STACK_TRACES.get_ptr(&stack_id).is_none() {
        match STACK_TRACES.insert(&stack_id, &*scratch, u64::from(BPF_NOEXIST)) {
            Ok(()) => {}
            Err(err) if err == -EEXIST => {}
            Err(_) => {
                bump(Stat::STACK_TRACES_MAP_FULL);
                return UNKNOWN_STACK_ID;
            }
        }
    }
    stack_id
}
