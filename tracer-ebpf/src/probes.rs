//! Entry points: one uprobe program per kind of allocator entry, one uretprobe program for
//! every return that hands out a block (`alloc_exit`) and one for mmap's. The daemon's table (`attach::functions`) puts each on every symbol whose
//! arguments sit in the same registers (C++'s operator new and delete, jemalloc's and
//! mimalloc's APIs); where the kernel has uprobe sessions, malloc's pair gives way to one
//! session program (`session`).
//!
//! Placement: the daemon attaches each program, per process, in the file that really serves the
//! function there, at the offset `attach::placement` picks from the function's first
//! instructions: the first one the kernel emulates instead of single-stepping (about a tenth of
//! the cost), if nothing before it writes an argument register the entry program reads, moves
//! the stack pointer (where a return probe, or mmap's and munmap's caller check, needs the
//! return address on top), enters the kernel, or can branch away, except free's NULL check
//! (free(NULL) records nothing). Otherwise, and under `--probe-placement entry`, the probe is at
//! offset 0. An entry program may therefore run a few instructions into the function, but always
//! sees the arguments as the caller passed them. Return probes capture the stack: there the
//! instruction pointer is the call site, so the direct caller is always the first frame.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_probe_read_user,
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{AllocFn, Stat, ThreadState};

use crate::{
    armed,
    config::daemon_tgid,
    heap,
    mmap::{self, MAP_ANONYMOUS, MAP_FAILED},
    stats::bump,
    thread_state::{self, current},
};

pub(crate) fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

/// `count * size`, saturating: an overflowing product makes the call fail, which records
/// nothing.
fn array_bytes(count: u64, size: u64) -> u64 {
    // By 32-bit halves: LLVM turns any division-based overflow test into a 128-bit multiply,
    // which BPF lacks.
    let (count_hi, count_lo) = (count >> 32, count & 0xffff_ffff);
    let (size_hi, size_lo) = (size >> 32, size & 0xffff_ffff);
    if count_hi != 0 && size_hi != 0 {
        return u64::MAX;
    }
    let cross = count_hi * size_lo + count_lo * size_hi;
    if cross >> 32 != 0 {
        return u64::MAX;
    }
    let low = count_lo * size_lo;
    let total = low.wrapping_add(cross << 32);
    if total < low { u64::MAX } else { total }
}

// ---- malloc(size) ----

#[uprobe]
pub fn malloc_enter(ctx: ProbeContext) -> u32 {
    let _ = thread_state::enter(&ctx, AllocFn::MALLOC, arg(&ctx, 0), 0);
    0
}

// ---- calloc(nmemb, size) ----

#[uprobe]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    let size = array_bytes(arg(&ctx, 0), arg(&ctx, 1));
    let _ = thread_state::enter(&ctx, AllocFn::CALLOC, size, 0);
    0
}

// ---- realloc(ptr, size), reallocarray(ptr, nmemb, size) ----

#[uprobe]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    resize_entered(&ctx, AllocFn::REALLOC, arg(&ctx, 0), arg(&ctx, 1));
    0
}

#[uprobe]
pub fn reallocarray_enter(ctx: ProbeContext) -> u32 {
    let size = array_bytes(arg(&ctx, 1), arg(&ctx, 2));
    resize_entered(&ctx, AllocFn::REALLOCARRAY, arg(&ctx, 0), size);
    0
}

/// The old block leaves the books at entry, not at return: once realloc has freed it, another
/// thread may be handed the same address before our return probe runs. If realloc fails, the
/// record is put back.
fn resize_entered(ctx: &ProbeContext, func: AllocFn, old: u64, size: u64) {
    let Some(state) = thread_state::enter(ctx, func, size, old) else {
        return;
    };
    if old != 0 {
        let (tgid, _) = current();
        if let Some(info) = heap::remove(tgid, old) {
            state.stash = info;
            state.stash_valid = 1;
        }
    }
}

// ---- free(ptr) ----

#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    let ptr = arg(&ctx, 0);
    let (tgid, _) = current();
    if tgid == daemon_tgid() {
        return 0;
    }
    if let Some(process) = armed::armed(tgid) {
        armed::count_hit(&mut process.free_hits);
    }
    if ptr != 0 {
        let _ = heap::remove(tgid, ptr);
    }
    0
}

// ---- posix_memalign(memptr, alignment, size) ----

#[uprobe]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    let _ = thread_state::enter(&ctx, AllocFn::POSIX_MEMALIGN, arg(&ctx, 2), arg(&ctx, 0));
    0
}

// ---- aligned_alloc(alignment, size), memalign(alignment, size), valloc(size), pvalloc(size) ----

#[uprobe]
pub fn aligned_alloc_enter(ctx: ProbeContext) -> u32 {
    let _ = thread_state::enter(&ctx, AllocFn::ALIGNED_ALLOC, arg(&ctx, 1), 0);
    0
}

#[uprobe]
pub fn memalign_enter(ctx: ProbeContext) -> u32 {
    let _ = thread_state::enter(&ctx, AllocFn::MEMALIGN, arg(&ctx, 1), 0);
    0
}

#[uprobe]
pub fn valloc_enter(ctx: ProbeContext) -> u32 {
    let _ = thread_state::enter(&ctx, AllocFn::VALLOC, arg(&ctx, 0), 0);
    0
}

#[uprobe]
pub fn pvalloc_enter(ctx: ProbeContext) -> u32 {
    // pvalloc allocates whole pages by definition.
    let size = mmap::round_to_pages(arg(&ctx, 0));
    let _ = thread_state::enter(&ctx, AllocFn::PVALLOC, size, 0);
    0
}

/// The return of every allocator call that hands out a block (malloc, calloc, realloc,
/// reallocarray, posix_memalign, memalign, aligned_alloc, valloc, pvalloc, and the jemalloc,
/// mimalloc and C++ names the daemon's table gives them): one program for all, which the
/// thread's state tells apart. The kernel verifies each program at load, most of a second for
/// one that carries the stack walker; one program instead of nine is most of the agent's
/// startup.
#[uretprobe]
pub fn alloc_exit(ctx: RetProbeContext) -> u32 {
    let Some((func, state)) = thread_state::exit_outermost() else {
        return 0;
    };
    let ret: u64 = ctx.ret();
    let block = match func {
        AllocFn::REALLOC | AllocFn::REALLOCARRAY => {
            let stash_valid = state.stash_valid;
            // realloc(p, 0) returning NULL freed p, which left the books at entry.
            state.stash_valid = 0;
            if ret == 0 {
                if state.size_bytes != 0 || state.arg == 0 {
                    // Failed: realloc(p, n > 0) returned NULL and p is still the caller's.
                    bump(Stat::FAILED_CALLS);
                    if stash_valid == 1 {
                        let (tgid, _) = current();
                        heap::restore(tgid, state.arg, &state.stash);
                    }
                }
                return 0;
            }
            ret
        }
        AllocFn::POSIX_MEMALIGN => {
            if ret as i32 != 0 {
                bump(Stat::FAILED_CALLS);
                return 0;
            }
            if state.sampled == 0 {
                return 0;
            }
            // The result is only in the caller's out-pointer, written just before the return.
            // SAFETY: a user-memory read; the helper checks the address.
            unsafe { bpf_probe_read_user(state.arg as *const u64) }.unwrap_or(0)
        }
        AllocFn::MALLOC
        | AllocFn::CALLOC
        | AllocFn::MEMALIGN
        | AllocFn::ALIGNED_ALLOC
        | AllocFn::VALLOC
        | AllocFn::PVALLOC => ret,
        // An outermost call this program is not attached to the return of (mmap has its own).
        _ => {
            bump(Stat::RETURNS_WITHOUT_ENTRY);
            return 0;
        }
    };
    record_returned(&ctx, block, state);
    0
}

/// Records the block an outermost call returned (classic return probe or session return).
pub(crate) fn record_returned<C: EbpfContext>(ctx: &C, ptr: u64, state: &ThreadState) {
    if ptr == 0 {
        bump(Stat::FAILED_CALLS);
        return;
    }
    if state.sampled == 0 {
        return;
    }
    let (tgid, _) = current();
    heap::record(ctx, tgid, ptr, state.size_bytes, state.sample_bytes);
}

// ---- mmap(addr, length, prot, flags, fd, offset), munmap(addr, length) ----

#[uprobe]
pub fn mmap_enter(ctx: ProbeContext) -> u32 {
    let (tgid, _) = current();
    let mut flags = arg(&ctx, 3);
    if mmap::called_from_allocator(&ctx, tgid) {
        flags |= mmap::ALLOCATOR_OWN;
    }
    let _ = thread_state::enter(&ctx, AllocFn::MMAP, arg(&ctx, 1), flags);
    0
}

#[uretprobe]
pub fn mmap_exit(ctx: RetProbeContext) -> u32 {
    let Some(state) = thread_state::exit(AllocFn::MMAP) else {
        return 0;
    };
    let addr: u64 = ctx.ret();
    if addr == MAP_FAILED {
        bump(Stat::FAILED_CALLS);
        return 0;
    }
    if state.arg & MAP_ANONYMOUS != 0 && state.arg & mmap::ALLOCATOR_OWN == 0 {
        let (tgid, _) = current();
        mmap::mapped(&ctx, tgid, addr, state.size_bytes);
    }
    0
}

#[uprobe]
pub fn munmap_enter(ctx: ProbeContext) -> u32 {
    let (tgid, tid) = current();
    if tgid == daemon_tgid()
        || thread_state::inside_allocator(tid)
        || mmap::called_from_allocator(&ctx, tgid)
    {
        return 0;
    }
    mmap::unmapped(tgid, arg(&ctx, 0), arg(&ctx, 1));
    0
}
