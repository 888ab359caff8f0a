//! Outstanding allocations and per-stack totals: recorded at an allocation's return, removed
//! at its free. Totals are changed with atomic adds so concurrent threads never lose an update.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
};
use tracer_common::{AllocInfo, AllocKey, StackKey, StackTotals, Stat};

use crate::{
    armed,
    maps::{ALLOCS, FREE_STACK_SLOTS, STACK_SLOTS, STACK_TOTALS},
    sampling, stack,
    stats::bump,
};

const EEXIST: i32 = 17;

/// Records a successful allocation made by the current task, if its process is armed, under
/// the sampling mean its call entered with (`sample_bytes`, 0: exact).
pub(crate) fn record<C: EbpfContext>(
    ctx: &C,
    tgid: u32,
    addr: u64,
    size_bytes: u64,
    sample_bytes: u64,
) {
    if !armed::recording(tgid) {
        return;
    }
    let info = AllocInfo {
        size_bytes,
        // SAFETY: the helpers have no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        stack_id: stack::capture(ctx),
        // SAFETY: as above.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        sample_bytes,
    };
    if insert(tgid, addr, &info) {
        bump(Stat::ALLOCATIONS_RECORDED);
    }
}

/// Puts back a record taken out by [`remove`] (realloc failed: the old block is still live).
pub(crate) fn restore(tgid: u32, addr: u64, info: &AllocInfo) {
    let _restored = insert(tgid, addr, info);
}

/// Removes the record of `addr`, if any, and returns it.
pub(crate) fn remove(tgid: u32, addr: u64) -> Option<AllocInfo> {
    let key = AllocKey {
        tgid,
        _pad: 0,
        addr,
    };
    let Some(info) = ALLOCS.get_ptr(&key) else {
        bump(Stat::FREES_UNKNOWN);
        return None;
    };
    // SAFETY: a copy out of the map; only trusted if the delete below is ours.
    let info = unsafe { *info };
    // Two frees of one block race here; only the one whose delete succeeds updates the totals.
    ALLOCS.remove(&key).ok()?;
    let stack_key = StackKey {
        tgid,
        _pad: 0,
        stack_id: info.stack_id,
    };
    if let Some(totals) = STACK_SLOTS
        .get_ptr(&stack_key)
        // SAFETY: a copy of a map value.
        .and_then(|slot| STACK_TOTALS.get_ptr_mut(unsafe { *slot }))
    {
        // The same weights as when it was added, so adds and frees cancel.
        let (bytes, count) = sampling::weights(info.size_bytes, info.sample_bytes);
        // SAFETY: totals entries are never deleted while their process lives.
        unsafe {
            add(&raw mut (*totals).outstanding_bytes, bytes.wrapping_neg());
            add(&raw mut (*totals).outstanding_count, count.wrapping_neg());
        }
    }
    bump(Stat::FREES_MATCHED);
    Some(info)
}

/// Inserts a record and adds it to its stack's totals; false when a map was full (counted).
fn insert(tgid: u32, addr: u64, info: &AllocInfo) -> bool {
    let Some(totals) = totals_of(tgid, info.stack_id) else {
        return false;
    };
    let key = AllocKey {
        tgid,
        _pad: 0,
        addr,
    };
    match ALLOCS.insert(&key, info, u64::from(BPF_NOEXIST)) {
        Ok(()) => {}
        Err(err) if err == -EEXIST => {
            // The block at this address was freed by a path we did not see; drop the old record.
            bump(Stat::ALLOCS_REPLACED);
            let _old = remove(tgid, addr);
            if ALLOCS.insert(&key, info, u64::from(BPF_NOEXIST)).is_err() {
                bump(Stat::ALLOCS_MAP_FULL);
                return false;
            }
        }
        Err(_) => {
            bump(Stat::ALLOCS_MAP_FULL);
            return false;
        }
    }
    let (bytes, count) = sampling::weights(info.size_bytes, info.sample_bytes);
    // SAFETY: totals entries are never deleted while their process lives.
    unsafe {
        add(&raw mut (*totals).outstanding_bytes, bytes);
        add(&raw mut (*totals).outstanding_count, count);
        add(&raw mut (*totals).allocations_total, 1);
    }
    true
}

/// The totals of a stack, giving it a slot when it is new.
fn totals_of(tgid: u32, stack_id: u64) -> Option<*mut StackTotals> {
    let key = StackKey {
        tgid,
        _pad: 0,
        stack_id,
    };
    if let Some(slot) = STACK_SLOTS.get_ptr(&key) {
        // SAFETY: a copy of a map value.
        return STACK_TOTALS.get_ptr_mut(unsafe { *slot });
    }
    let totals = new_slot(&key);
    if totals.is_none() {
        bump(Stat::STACK_TOTALS_MAP_FULL);
    }
    totals
}

/// Takes a free slot for a new stack (none left: the table is full).
fn new_slot(key: &StackKey) -> Option<*mut StackTotals> {
    let slot = FREE_STACK_SLOTS.pop().ok()??;
    let totals = STACK_TOTALS.get_ptr_mut(slot)?;
    // SAFETY: the slot is ours alone until it is published in STACK_SLOTS below; its counts
    // are zero (never used, or zeroed by the daemon before it recycled the slot).
    unsafe { (*totals).key = *key };
    match STACK_SLOTS.insert(key, &slot, u64::from(BPF_NOEXIST)) {
        Ok(()) => Some(totals),
        Err(err) => {
            // SAFETY: as above.
            unsafe { (*totals).key = StackKey::default() };
            let _ignored = FREE_STACK_SLOTS.push(slot, 0);
            if err != -EEXIST {
                return None;
            }
            // Another CPU published the same stack first: use its slot.
            let slot = STACK_SLOTS.get_ptr(key)?;
            // SAFETY: a copy of a map value.
            STACK_TOTALS.get_ptr_mut(unsafe { *slot })
        }
    }
}

/// Atomic add (wrapping, so adding `x.wrapping_neg()` subtracts).
///
/// # Safety
/// `counter` must point into a live map value.
pub(crate) unsafe fn add(counter: *mut u64, value: u64) {
    // core's atomic types have no read-modify-write ops on the BPF target; the intrinsic
    // lowers to the BPF atomic add instruction.
    // SAFETY: the caller guarantees a valid, aligned u64 in map memory.
    let _previous = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value) };
}
