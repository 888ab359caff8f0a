//! Anonymous mappings a process makes itself: sent to the daemon as ring-buffer records.
//!
//! User-level mmaps are rare next to malloc, and unmapping part of a mapping (a prefix, a
//! suffix, a hole in the middle, or several mappings at once) needs an ordered index that BPF
//! maps do not offer; the daemon keeps one per process and applies these records exactly.
//! mmap/munmap made inside a traced allocator call are the allocator's (arenas, large chunks)
//! and are never sent.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
};
use tracer_common::{MmapEvent, MunmapEvent, Stat, event_kind};

use crate::{config::page_size, maps::EVENTS, stack, stats::bump};

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
