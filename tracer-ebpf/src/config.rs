//! Load-time settings the daemon writes into the object (read-only globals the verifier can
//! fold).

use aya_ebpf::{Global, helpers::bpf_probe_read_kernel};
use tracer_common::KernelLayout;

/// The daemon's own tgid: its allocator calls are never recorded.
#[unsafe(no_mangle)]
static DAEMON_TGID: Global<u32> = Global::new(0);

/// Page size, for pvalloc's rounding and mmap lengths.
#[unsafe(no_mangle)]
static PAGE_SIZE: Global<u64> = Global::new(4096);

/// An outermost allocator call whose return has not come after this long is abandoned (its
/// return probe was lost), so a thread can never stay stuck "inside the allocator".
pub(crate) const STALE_CALL_NS: u64 = 1_000_000_000;

/// Offsets into kernel structures, from the kernel's BTF (the OOM hook's task fields, the
/// stack walkers' pending uretprobe returns).
#[unsafe(no_mangle)]
static KERNEL_LAYOUT: Global<KernelLayout> = Global::new(KernelLayout {
    task_pid: 0,
    task_tgid: 0,
    task_comm: 0,
    task_mm: 0,
    task_cgroups: 0,
    mm_rss_stat: 0,
    rss_counter_stride: 0,
    rss_counter_value: 0,
    css_set_dfl_cgrp: 0,
    css_set_subsys: 0,
    css_cgroup: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    memory_cgrp_id: 0,
    valid: 0,
    uretprobes_valid: 0,
    task_utask: 0,
    utask_return_instances: 0,
    return_instance_stack: 0,
    return_instance_orig_ret_vaddr: 0,
    return_instance_next: 0,
    _pad: 0,
});

pub(crate) fn kernel_layout() -> KernelLayout {
    KERNEL_LAYOUT.load()
}

/// Reads a `T` at `base + offset` in kernel memory; 0 when it faults.
#[inline(always)]
pub(crate) fn read_kernel<T: Copy + Default>(base: u64, offset: u32) -> T {
    if base == 0 {
        return T::default();
    }
    // SAFETY: a checked kernel read; a bad address gives an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.unwrap_or_default()
}

pub(crate) fn daemon_tgid() -> u32 {
    DAEMON_TGID.load()
}

pub(crate) fn page_size() -> u64 {
    PAGE_SIZE.load()
}
