//! Anonymous mappings a process makes itself: sent to the daemon as ring-buffer records.
//!
//! User-level mmaps are rare next to malloc, and unmapping part of a mapping (a prefix, a
//! suffix, a hole in the middle, or several mappings at once) needs an ordered index that BPF
//! maps do not offer; the daemon keeps one per process and applies these records exactly.
//! mmap/munmap made inside a traced allocator call are the allocator's (arenas, large chunks)
//! and are never sent.

use aya_ebpf::{
    EbpfContext,
    bindings::pt_regs,
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns, bpf_probe_read_user},
};
use tracer_common::{MmapEvent, MunmapEvent, Stat, event_kind};

use crate::{
    config::page_size,
    maps::{ALLOCATOR_TEXT, EVENTS},
    stack,
    stats::bump,
};

/// True when the function at whose entry this probe sits was called from the process's
/// allocator code (read from the return address on top of the stack: the probe must sit
/// where the stack pointer is still the entry's). Those mmaps and munmaps are the allocator's
/// own, made inside a malloc whose return probe may not run (sampled mode declines it).
pub(crate) fn called_from_allocator<C: EbpfContext>(ctx: &C, tgid: u32) -> bool {
    let Some(text) = ALLOCATOR_TEXT.get_ptr(&tgid) else {
        return false;
    };
    // SAFETY: uprobe programs get the user registers as their context.
    let sp = unsafe { (*ctx.as_ptr().cast::<pt_regs>()).rsp };
    // SAFETY: a checked user-memory read.
    let Ok(return_address) = (unsafe { bpf_probe_read_user(sp as *const u64) }) else {
        return false;
    };
    // SAFETY: map value pointer from a successful lookup.
    let text = unsafe { &*text };
    return_address >= text.start && return_address < text.end
}

/// Marks a pending mmap as the allocator's own (no process flag uses bit 63).
pub(crate) const ALLOCATOR_OWN: u64 = 1 << 63;

/// `MAP_ANONYMOUS` on x86-64 and arm64.
pub(crate) const MAP_ANONYMOUS: u64 = 0x20;
/// `MAP_FAILED`.
pub(crate) const MAP_FAILED: u64 = u64::MAX;

/// Rounds up to whole pages (the page size is a power of two; no division, which could panic).
pub(crate) fn round_to_pages(len: u64) -> u64 {
    let mask = page_size().wrapping_sub(1);
    len.saturating_add(mask) & !mask
}

pub(crate) fn mapped<C: EbpfContext>(ctx: &C, tgid: u32, addr: u64, len_bytes: u64) {
    if !crate::armed::recording(tgid) {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<MmapEvent>(0) else {
        bump(Stat::EVENTS_DROPPED);
        return;
    };
    entry.write(MmapEvent {
        kind: event_kind::MMAP,
        tgid,
        addr,
        len_bytes: round_to_pages(len_bytes),
        stack_id: stack::capture(ctx),
        // SAFETY: the helpers have no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        // SAFETY: as above.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
    });
    entry.submit(0);
}

pub(crate) fn unmapped(tgid: u32, addr: u64, len_bytes: u64) {
    let event = MunmapEvent {
        kind: event_kind::MUNMAP,
        tgid,
        addr,
        len_bytes: round_to_pages(len_bytes),
        // SAFETY: the helper has no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
    };
    if EVENTS.output::<MunmapEvent>(&event, 0).is_err() {
        bump(Stat::EVENTS_DROPPED);
    }
}
