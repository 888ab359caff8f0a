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
//!   checked against the pages counted before (`FAULT_PAGES`, direct-mapped: a load and a
//!   store), and the user stack found: the CPU's last walk when the thread faults again from
//!   the same registers and the words that walk read are unchanged (a loop or memset touching
//!   page after page; [`StackCache`]), else walked (the walker of `stack`: frame pointers and
//!   the unwind tables of `UNWIND_MAPPINGS`).
//! - `mm_page_alloc` (transparent huge pages): a movable allocation of order > 0 while a fault
//!   is pending on this CPU for the current thread is the huge folio the fault maps (its
//!   `rss_stat` adds 512 pages at once, in one event): the slot then says `1 << order` pages.
//!   Page tables and slab pages are never movable, so they do not count; a huge allocation
//!   that falls back to a small page is followed by the small page's movable allocation,
//!   which sets the slot back to one page. It is the dearest hook here (every task's every
//!   page allocation, the page cache's too, runs it, if only to its first check), and the
//!   cheaper ways to find a huge first touch fail on the kernels this was built on: fentry on
//!   the THP fault path (`do_huge_pmd_anonymous_page`, `map_anon_folio_pmd`, in the BTF and
//!   not inlined) is refused at load (EPERM, as on `oom_kill_process`); reading the PMD at
//!   `rss_stat` (set before the counter moves) needs the direct map's base, which kallsyms
//!   does not list without CONFIG_KALLSYMS_ALL; and the jump of the mm's anonymous counter
//!   is blurred by other threads' per-CPU batches flushing during the fault.
//!
//! Sampling: recording a page (the stack, the profile entry, the retouch table) costs several
//! hundred ns against a fault of about 2 us, so by default one page in N (`FAULT_SAMPLE_SHIFT`,
//! set by the daemon) is recorded and counted as N: the fault tracepoints drop the others after
//! the error-code test and a multiply, before any helper call, so that `rss_stat` and
//! `mm_page_alloc` find no pending slot. Which pages are kept is a function of the address
//! ([`sampled`]), so retouches stay retouches.
//!
//! `rss_stat` also fires when anonymous pages go (munmap, exit) and does not say which way the
//! counter moved; the pending slot's thread and time bound are what make a decrease after a
//! write fault that mapped no anonymous page (a shared file mapping, a COW of a page shared
//! with a forked child) rare, and such stale slots are counted (`FAULT_PENDING_EXPIRED`).

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    Global,
    bindings::{BPF_NOEXIST, pt_regs},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_task_btf, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user, bpf_task_pt_regs,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tracer_common::{FaultKey, FaultTotals, PendingFault, Stat, fault_page_tag};

use crate::{
    config::page_size,
    maps::{FAULT_PAGES, FAULT_PENDING, FAULT_PROFILE, FAULT_STACK_CACHE, WATCHED_CGROUPS},
    stack::{self, ReadLog},
    stats::bump,
    thread_state::current,
};

const EEXIST: i32 = 17;

/// `FAULT_PAGES`'s slot count minus one (a power of two; the daemon sets it with the map's
/// size).
#[unsafe(no_mangle)]
static FAULT_PAGE_SLOTS_MASK: Global<u32> = Global::new((1 << 17) - 1);

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

/// The same for a fault that allocated a huge page: zeroing 2 MiB yields the CPU between
/// subpages, and the allocation may compact memory first, so on a busy node such a fault takes
/// milliseconds (1 ms lost seven huge faults in eight on a loaded 2-core test machine). The
/// slot only says huge once `mm_page_alloc` saw this thread's movable huge allocation, after
/// which this thread's next anonymous rss change is that page's mapping.
const HUGE_PENDING_MAX_NS: u64 = 200_000_000;

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
    let max_ns = if slot.pages > 1 {
        HUGE_PENDING_MAX_NS
    } else {
        PENDING_MAX_NS
    };
    let fresh = now.wrapping_sub(slot.timestamp_ns) <= max_ns;
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
    record(tgid, tid, &pending, now);
    0
}

/// A fault: pending when it is a write by a task of a watched cgroup, at a page the sampling
/// keeps. The tests are ordered by cost, cheapest first: every fault of every task on the node
/// comes here, and all but the watched, sampled ones should leave after as few instructions as
/// possible (the error code and the address are arguments; the cgroup id is a helper call and
/// the watched set a hash lookup).
#[inline(always)]
fn on_fault(address: u64, error_code: u64) {
    if error_code & PF_WRITE == 0 || error_code & PF_INSTR != 0 {
        return;
    }
    if !sampled(address) {
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

/// log2 of the sampling period: one page in `1 << FAULT_SAMPLE_SHIFT` is recorded, weighted by
/// the period (0 records every page). Set by the daemon at load.
#[unsafe(no_mangle)]
static FAULT_SAMPLE_SHIFT: Global<u32> = Global::new(0);

/// Random key of the page sampling, chosen by the daemon at load.
#[unsafe(no_mangle)]
static FAULT_SAMPLE_KEY: Global<u64> = Global::new(0);

/// Whether the page at `address` is one the profile records.
///
/// A page is kept by a function of its address, not by a coin toss per fault: a page is then
/// kept every time it is touched or never, so a retouch of a kept page is found as one (a coin
/// per fault would, over enough rounds of trim-and-retouch churn, count every page of the churn
/// as new growth once, weighted by the period). The function is Fibonacci hashing of the page
/// number plus a random key: the top bits of `(page + key) * 2^64/phi` are zero for one page in
/// 2^shift, evenly spread (consecutive pages step by the golden ratio around the circle, so any
/// run of consecutive pages keeps within a page or two of exactly 1 in 2^shift, far closer than
/// independent draws would), and with the key random every page is kept with probability exactly
/// 1 / 2^shift, so the weighted bytes are an unbiased estimate for any pattern of addresses.
/// A huge page is kept by the 4 KiB page its fault landed on.
#[inline(always)]
fn sampled(address: u64) -> bool {
    let shift = FAULT_SAMPLE_SHIFT.load();
    if shift == 0 {
        return true;
    }
    let page = (address >> 12).wrapping_add(FAULT_SAMPLE_KEY.load());
    page.wrapping_mul(GOLDEN_RATIO_64) >> (64 - u64::from(shift & 63)) == 0
}

/// 2^64 / phi, rounded to odd.
const GOLDEN_RATIO_64: u64 = 0x9e37_79b9_7f4a_7c15;

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
fn record(tgid: u32, tid: u32, pending: &PendingFault, now: u64) {
    let pages = u64::from(pending.pages.max(1));
    let size = pages.wrapping_mul(page_size());
    // A huge page is keyed by its aligned start, wherever in it the fault was.
    let page = pending.address & !(size.wrapping_sub(1));
    // A sampled page stands for the period's pages (see `sampled`).
    let weight = 1u64 << (FAULT_SAMPLE_SHIFT.load() & 31);
    let huge = pages > 1;
    let (pages, bytes) = (pages * weight, size * weight);
    let retouched = retouched(tgid, page);
    let stack_id = match user_regs() {
        Some(regs) => stack_at_fault(tgid, tid, &regs, now),
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
        if huge {
            add(&raw mut (*totals).huge_faults, 1);
        }
        (*totals).last_ns = now;
    }
    bump(Stat::FAULTS_COUNTED);
    if retouched {
        bump(Stat::FAULT_RETOUCHES);
    }
    if huge {
        bump(Stat::FAULT_HUGE_PAGES);
    }
}

/// Whether `page` of process `tgid` was counted before; marks it counted. `FAULT_PAGES` is
/// direct-mapped (one word per slot, no lock, no allocation: an LRU hash insert cost several
/// hundred ns per fault): a page whose slot another page took since counts as new again, as an
/// LRU's evicted page would.
#[inline(always)]
fn retouched(tgid: u32, page: u64) -> bool {
    let Some((tag, slot)) = fault_page_tag(tgid, page) else {
        return false;
    };
    let Some(word) = FAULT_PAGES.get_ptr_mut(slot & FAULT_PAGE_SLOTS_MASK.load()) else {
        return false;
    };
    // SAFETY: a word of an array map; a plain 8-byte load and store are atomic, and two CPUs
    // racing for one slot leave one of two valid tags.
    unsafe {
        if *word == tag {
            return true;
        }
        *word = tag;
    }
    false
}

/// Words a cached walk may have read (a deeper or odder walk is not cached).
const CACHED_READS: usize = 32;

/// Bytes of stack a cached walk's words may span to be replayed with one user read (a shallow
/// stack's frames are close together; a wider walk replays word by word).
const SPAN_WORDS: usize = 64;

/// How long a cached walk is reused at most: the unwind maps it used may have changed since
/// (a library mapped after the walk, now with its table).
const STACK_CACHE_MAX_NS: u64 = 10_000_000;

/// The last stack walked on a CPU, and what the walk read: a thread that faults again from the
/// same registers (memset or a loop touching page after page) gets the same stack if the words
/// the walk read are unchanged, because the walk is a function of nothing else. Replaying the
/// reads costs one user read per word, against a walk's unwind-map and table lookups.
#[repr(C)]
pub(crate) struct StackCache {
    tgid: u32,
    tid: u32,
    ip: u64,
    sp: u64,
    bp: u64,
    stack_id: u64,
    walked_ns: u64,
    /// Words read, in `addresses`/`values`.
    len: u32,
    /// 1 when the entry may be replayed.
    valid: u32,
    /// Bit i: the read at `addresses[i]` (16 bytes) failed, and must fail again.
    unreadable: u32,
    /// Words from `span_start` that cover every read (all readable and 8-byte aligned), 0
    /// when they do not fit `span`.
    span_words: u32,
    span_start: u64,
    addresses: [u64; CACHED_READS],
    values: [u64; CACHED_READS],
    /// Where a replay reads the span to.
    span: [u64; SPAN_WORDS],
}

impl ReadLog for StackCache {
    #[inline(always)]
    fn read(&mut self, address: u64, value: u64) {
        let index = self.len as usize;
        if index < CACHED_READS {
            self.addresses[index] = address;
            self.values[index] = value;
            self.len += 1;
        } else {
            self.valid = 0;
        }
    }

    #[inline(always)]
    fn unreadable(&mut self, address: u64) {
        let index = self.len as usize;
        if index < CACHED_READS {
            self.addresses[index] = address;
            self.values[index] = 0;
            self.unreadable |= 1 << index;
            self.len += 1;
        } else {
            self.valid = 0;
        }
    }

    #[inline(always)]
    fn spoil(&mut self) {
        self.valid = 0;
    }
}

/// The id of the user stack at a fault: the CPU's cached walk when it replays, else a walk
/// (which then becomes the cached one).
#[inline(always)]
fn stack_at_fault(tgid: u32, tid: u32, regs: &pt_regs, now: u64) -> u64 {
    let Some(cache) = FAULT_STACK_CACHE.get_ptr_mut(0) else {
        return stack::capture_at_fault(tgid, regs, &mut ());
    };
    // SAFETY: per-CPU, and tracing programs do not migrate while they run.
    let cache = unsafe { &mut *cache };
    if cache.valid == 1
        && cache.tid == tid
        && cache.tgid == tgid
        && cache.ip == regs.rip
        && cache.sp == regs.rsp
        && cache.bp == regs.rbp
        && now.wrapping_sub(cache.walked_ns) < STACK_CACHE_MAX_NS
        && replays(cache)
    {
        return cache.stack_id;
    }
    cache.valid = 1;
    cache.len = 0;
    cache.unreadable = 0;
    let stack_id = stack::capture_at_fault(tgid, regs, cache);
    cache.tgid = tgid;
    cache.tid = tid;
    cache.ip = regs.rip;
    cache.sp = regs.rsp;
    cache.bp = regs.rbp;
    cache.stack_id = stack_id;
    cache.walked_ns = now;
    cache.span_words = span_of(cache);
    stack_id
}

/// How many words from `cache.span_start` cover the walk's reads (setting `span_start`), 0 if
/// they cannot be replayed with one read.
#[inline(always)]
fn span_of(cache: &mut StackCache) -> u32 {
    if cache.unreadable != 0 || cache.len == 0 {
        return 0;
    }
    let mut low = u64::MAX;
    let mut high = 0;
    for index in 0..CACHED_READS {
        if index as u32 >= cache.len {
            break;
        }
        let address = cache.addresses[index];
        if address % 8 != 0 {
            return 0;
        }
        low = low.min(address);
        high = high.max(address);
    }
    let words = (high - low) / 8 + 1;
    if words > SPAN_WORDS as u64 {
        return 0;
    }
    cache.span_start = low;
    words as u32
}

/// Whether every word the cached walk read still reads the same (and every read that failed
/// still fails).
#[inline(always)]
fn replays(cache: &mut StackCache) -> bool {
    let words = cache.span_words;
    if words > 0 {
        // The mask is the bound the verifier needs (`span_of` keeps words <= SPAN_WORDS).
        let size = ((core::hint::black_box(words - 1) & (SPAN_WORDS as u32 - 1)) + 1) * 8;
        // SAFETY: a checked user-memory read into the entry's own buffer, at most its size.
        let read = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_user(
                cache.span.as_mut_ptr().cast(),
                size,
                cache.span_start as *const core::ffi::c_void,
            )
        };
        if read != 0 {
            return false;
        }
        for index in 0..CACHED_READS {
            if index as u32 >= cache.len {
                return true;
            }
            let word = (cache.addresses[index].wrapping_sub(cache.span_start) / 8) as usize;
            if word >= SPAN_WORDS || cache.span[word] != cache.values[index] {
                return false;
            }
        }
        return true;
    }
    for index in 0..CACHED_READS {
        if index as u32 >= cache.len {
            return true;
        }
        let address = cache.addresses[index];
        if cache.unreadable & (1 << index) != 0 {
            // SAFETY: a checked user-memory read.
            if unsafe { bpf_probe_read_user(address as *const [u64; 2]) }.is_ok() {
                return false;
            }
        } else {
            // SAFETY: as above.
            match unsafe { bpf_probe_read_user(address as *const u64) } {
                Ok(value) if value == cache.values[index] => {}
                _ => return false,
            }
        }
    }
    true
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
