//! Resident growth by first touch: where processes of watched cgroups make new anonymous memory
//! resident, per (cgroup, process, stack) in bytes, for any program (C, Rust, Go, the native
//! frames of Python, Node or Java) and without a single uprobe.
//!
//! Placement, and why it is cheap enough to stay on: a page fault is already a trip into the
//! kernel that allocates and zeroes a page (about a microsecond), and the programs here add
//! work only to write faults of watched tasks. Three BTF tracepoints (no tracefs, no kprobes):
//! - `page_fault_user` / `page_fault_kernel` (the latter for user addresses only: a `read()`
//!   into a fresh buffer faults in the kernel's copy): a write fault of a task in a watched
//!   cgroup leaves a per-CPU pending slot {tid, time, address}. Read faults map the shared
//!   zero page and instruction fetches map file pages: neither grows anonymous memory, and
//!   skipping them keeps the slot from going stale.
//! - `rss_stat` with member `MM_ANONPAGES`, from the same thread within [`PENDING_MAX_NS`] of
//!   its fault: the fault mapped a new anonymous page. Only then is the slot consumed, the page
//!   checked against the pages counted before, and the user stack walked (the walker of
//!   `stack`: frame pointers and the unwind tables of `UNWIND_MAPPINGS`).
//! - `mm_page_alloc` (transparent huge pages): a movable allocation of order > 0 while a fault
//!   is pending on this CPU for the current thread is the huge folio the fault maps (its
//!   `rss_stat` adds 512 pages at once, in one event): the slot then says `1 << order` pages.
//!   Page tables and slab pages are never movable, so they do not count; a huge allocation
//!   that falls back to a small page is followed by the small page's movable allocation,
//!   which sets the slot back to one page.
//!
//! `rss_stat` also fires when anonymous pages go (munmap, exit) and does not say which way the
//! counter moved; the pending slot's thread and time bound are what make a decrease after a
//! write fault that mapped no anonymous page (a shared file mapping, a COW of a page shared
//! with a forked child) rare, and such stale slots are counted (`FAULT_PENDING_EXPIRED`).

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, pt_regs},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_task_btf, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_task_pt_regs,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tracer_common::{FaultKey, FaultPageKey, FaultTotals, PendingFault, Stat};

use crate::{
    config::page_size,
    maps::{FAULT_PAGES, FAULT_PENDING, FAULT_PROFILE, WATCHED_CGROUPS},
    stack,
    stats::bump,
    thread_state::current,
};

const EEXIST: i32 = 17;

/// First address above user space on x86-64 (4-level paging; 5-level kernels keep user space
/// below it unless a program asks for more).
const USER_ADDRESS_END: u64 = 0x0000_8000_0000_0000;

/// x86 page-fault error code: the access was a write.
const PF_WRITE: u64 = 1 << 1;
/// x86 page-fault error code: the access was an instruction fetch.
const PF_INSTR: u64 = 1 << 4;

/// `MM_ANONPAGES`, the rss counter of anonymous pages.
const MM_ANONPAGES: u64 = 1;

/// `__GFP_MOVABLE`: user pages (anonymous folios, huge or not) are allocated movable; page
/// tables and slab pages are not.
const GFP_MOVABLE: u64 = 0x08;

/// Largest folio order counted (a PUD-sized page would be 18; anonymous THP is 9).
const MAX_ORDER_COUNTED: u64 = 18;

/// How long after its fault an anonymous rss increase by the same thread still belongs to it.
/// A small page is allocated, zeroed and mapped within a few microseconds and a huge page
/// within a few hundred; a fault slower than this (direct reclaim under a memory limit) is not
/// counted, and says so (`FAULT_PENDING_EXPIRED`). Short, so that a decrease (an unmap) soon
/// after a fault that mapped no anonymous page is rarely mistaken for one.
const PENDING_MAX_NS: u64 = 1_000_000;

#[btf_tracepoint(function = "page_fault_user")]
pub fn fault_user(ctx: BtfTracePointContext) -> i32 {
    // (address, regs, error_code)
    on_fault(ctx.arg::<u64>(0), ctx.arg::<u64>(2));
    0
}

#[btf_tracepoint(function = "page_fault_kernel")]
pub fn fault_kernel(ctx: BtfTracePointContext) -> i32 {
    let address = ctx.arg::<u64>(0);
    // The kernel touching user memory for the task (copy_to_user in read()); faults on its
    // own addresses are none of ours.
    if address < USER_ADDRESS_END {
        on_fault(address, ctx.arg::<u64>(2));
    }
    0
}

#[btf_tracepoint(function = "mm_page_alloc")]
pub fn fault_page_alloc(ctx: BtfTracePointContext) -> i32 {
    // (page, order, gfp_flags, migratetype). Every page allocation on the node comes here:
    // the empty slot is the common case and returns after one per-CPU lookup.
    let Some(slot) = FAULT_PENDING.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU, and tracing programs do not migrate while they run.
    let slot = unsafe { &mut *slot };
    if slot.tid == 0 {
        return 0;
    }
    let gfp = ctx.arg::<u64>(2);
    if gfp & GFP_MOVABLE == 0 {
        return 0;
    }
    let (_, tid) = current();
    if slot.tid != tid {
        return 0;
    }
    let order = ctx.arg::<u64>(1) & 0xff;
    slot.pages = 1 << order.min(MAX_ORDER_COUNTED);
    0
}

#[btf_tracepoint(function = "rss_stat")]
pub fn fault_rss_stat(ctx: BtfTracePointContext) -> i32 {
    // (mm, member)
    if ctx.arg::<u64>(1) & 0xffff_ffff != MM_ANONPAGES {
        return 0;
    }
    let Some(slot) = FAULT_PENDING.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: as above.
    let slot = unsafe { &mut *slot };
    if slot.tid == 0 {
        return 0;
    }
    let (tgid, tid) = current();
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let fresh = now.wrapping_sub(slot.timestamp_ns) <= PENDING_MAX_NS;
    if slot.tid != tid {
        if fresh {
            bump(Stat::FAULT_PENDING_OTHER_THREAD);
        }
        return 0;
    }
    let pending = *slot;
    slot.tid = 0;
    if !fresh {
        bump(Stat::FAULT_PENDING_EXPIRED);
        return 0;
    }
    record(tgid, &pending, now);
    0
}

/// A fault: pending when it is a write by a task of a watched cgroup.
#[inline(always)]
fn on_fault(address: u64, error_code: u64) {
    if error_code & PF_WRITE == 0 || error_code & PF_INSTR != 0 {
        return;
    }
    // SAFETY: the helper has no preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if WATCHED_CGROUPS.get_ptr(&cgroup_id).is_none() {
        return;
    }
    let Some(slot) = FAULT_PENDING.get_ptr_mut(0) else {
        return;
    };
    let (_, tid) = current();
    // SAFETY: per-CPU, as above.
    unsafe {
        *slot = PendingFault {
            tid,
            pages: 1,
            timestamp_ns: bpf_ktime_get_ns(),
            address,
            cgroup_id,
        };
    }
}

/// The user registers the kernel saved when the current task entered it (for a fault in the
/// kernel's copy to user memory too: they are the task's, not the kernel's).
#[inline(always)]
fn user_regs() -> Option<pt_regs> {
    // SAFETY: the helpers have no preconditions beyond a valid task, which
    // bpf_get_current_task_btf returns; the read is checked.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        bpf_probe_read_kernel(regs).ok()
    }
}

/// Adds a fault that mapped `pending.pages` new anonymous pages to the profile.
#[inline(always)]
fn record(tgid: u32, pending: &PendingFault, now: u64) {
    let pages = u64::from(pending.pages.max(1));
    let bytes = pages.wrapping_mul(page_size());
    // A huge page is keyed by its aligned start, wherever in it the fault was.
    let page = pending.address & !(bytes.wrapping_sub(1));
    let page_key = FaultPageKey {
        tgid,
        _pad: 0,
        page,
    };
    let retouched = if FAULT_PAGES.get_ptr(&page_key).is_some() {
        true
    } else {
        // A full LRU evicts its oldest page: a later retouch of that one counts as new.
        let _ = FAULT_PAGES.insert(&page_key, &0, u64::from(BPF_NOEXIST));
        false
    };
    let stack_id = match user_regs() {
        Some(regs) => stack::capture_at_fault(tgid, &regs),
        None => {
            bump(Stat::STACKS_LOST);
            tracer_common::UNKNOWN_STACK_ID
        }
    };
    let key = FaultKey {
        cgroup_id: pending.cgroup_id,
        tgid,
        _pad: 0,
        stack_id,
    };
    let totals = match FAULT_PROFILE.get_ptr_mut(&key) {
        Some(totals) => totals,
        None => {
            match FAULT_PROFILE.insert(&key, &FaultTotals::default(), u64::from(BPF_NOEXIST)) {
                Ok(()) => {}
                Err(err) if err == -EEXIST => {}
                Err(_) => {
                    bump(Stat::FAULT_PROFILE_MAP_FULL);
                    return;
                }
            }
            let Some(totals) = FAULT_PROFILE.get_ptr_mut(&key) else {
                bump(Stat::FAULT_PROFILE_MAP_FULL);
                return;
            };
            totals
        }
    };
    // SAFETY: a value of a preallocated hash map, deleted only by the daemon once the process
    // has ended; atomic adds because threads of a process fault on several CPUs at once.
    unsafe {
        if retouched {
            add(&raw mut (*totals).retouched_bytes, bytes);
        } else {
            add(&raw mut (*totals).bytes, bytes);
            add(&raw mut (*totals).pages, pages);
        }
        add(&raw mut (*totals).faults, 1);
        if pages > 1 {
            add(&raw mut (*totals).huge_faults, 1);
        }
        (*totals).last_ns = now;
    }
    bump(Stat::FAULTS_COUNTED);
    if retouched {
        bump(Stat::FAULT_RETOUCHES);
    }
    if pages > 1 {
        bump(Stat::FAULT_HUGE_PAGES);
    }
}

/// Atomic add on a map value.
///
/// # Safety
/// `counter` must point at a valid, aligned u64 in map memory.
#[inline(always)]
unsafe fn add(counter: *mut u64, value: u64) {
    // SAFETY: the caller guarantees a valid, aligned u64 in map memory.
    let _previous = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value) };
}
