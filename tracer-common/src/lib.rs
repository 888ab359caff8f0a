//! Types shared by the BPF programs (`tracer-ebpf`) and the daemon (`tracer-daemon`).
//!
//! Every type here is a map key, a map value or a ring-buffer record: `#[repr(C)]`, plain
//! integers only (no `bool`, no enums: a value read back from the kernel must be valid for
//! every bit pattern), explicit padding, and a size assertion so a layout change is loud.
#![no_std]

use core::mem::size_of;

/// Deepest user stack the BPF side records, in frames.
pub const MAX_STACK_DEPTH: usize = 64;

/// Stack id used when the stack could not be captured or stored (counted in [`Stat`]).
pub const UNKNOWN_STACK_ID: u64 = 0;

/// Names of the maps and globals in the BPF object, so the daemon never spells them twice.
pub mod names {
    /// Outstanding allocations: [`AllocKey`](crate::AllocKey) -> [`AllocInfo`](crate::AllocInfo).
    pub const ALLOCS: &str = "ALLOCS";
    /// Per-stack totals: a memory-mappable array of [`StackTotals`](crate::StackTotals), one
    /// slot per stack, so the daemon reads every total without a syscall.
    pub const STACK_TOTALS: &str = "STACK_TOTALS";
    /// Which slot of `STACK_TOTALS` holds a stack: [`StackKey`](crate::StackKey) -> `u32`.
    pub const STACK_SLOTS: &str = "STACK_SLOTS";
    /// Free slots of `STACK_TOTALS`, a queue of `u32`: the daemon fills it with every slot at
    /// start and gives back the slots of processes that ended.
    pub const FREE_STACK_SLOTS: &str = "FREE_STACK_SLOTS";
    /// Stack frames by stack id: `u64` -> [`StackTrace`](crate::StackTrace).
    pub const STACK_TRACES: &str = "STACK_TRACES";
    /// Per-thread allocator-call state: `u32` tid -> [`ThreadState`](crate::ThreadState).
    pub const THREAD_STATE: &str = "THREAD_STATE";
    /// Per-CPU counters indexed by [`Stat`](crate::Stat).
    pub const STATS: &str = "STATS";
    /// Per process: where its allocator library's code is, `u32` tgid ->
    /// [`AllocatorText`](crate::AllocatorText).
    pub const ALLOCATOR_TEXT: &str = "ALLOCATOR_TEXT";
    /// Processes armed for recording: `u32` tgid -> [`ArmedProcess`](crate::ArmedProcess) (see
    /// tracer-ebpf's `armed`).
    pub const ARMED: &str = "ARMED";
    /// Array: every loaded binary's unwind table rows.
    pub const UNWIND_ENTRIES: &str = "UNWIND_ENTRIES";
    /// LPM trie: (process, address) to how to unwind out of that code.
    pub const UNWIND_MAPPINGS: &str = "UNWIND_MAPPINGS";
    /// Ring buffer of [`MmapEvent`](crate::MmapEvent) and [`MunmapEvent`](crate::MunmapEvent).
    pub const EVENTS: &str = "EVENTS";
    /// Global: the daemon's own tgid, whose allocator calls are never recorded.
    pub const GLOBAL_DAEMON_TGID: &str = "DAEMON_TGID";
    /// Global: the page size, for pvalloc's rounding.
    pub const GLOBAL_PAGE_SIZE: &str = "PAGE_SIZE";
    /// Global: offsets into kernel structures ([`KernelLayout`](crate::KernelLayout)).
    pub const GLOBAL_KERNEL_LAYOUT: &str = "KERNEL_LAYOUT";
    /// `u32` array of [`SAMPLING_TABLE_LEN`](crate::SAMPLING_TABLE_LEN): `-ln(u)` in 16.16
    /// fixed point, for drawing the exponential distance to the next sample.
    pub const SAMPLE_DISTANCES: &str = "SAMPLE_DISTANCES";
    /// `u32` array of [`SAMPLING_TABLE_LEN`](crate::SAMPLING_TABLE_LEN): `r / (1 - e^-r)` at
    /// `r = k / SAMPLING_WEIGHT_STEPS` in 16.16 fixed point, the weight of a sampled
    /// allocation in units of the sampling mean.
    pub const SAMPLE_WEIGHTS: &str = "SAMPLE_WEIGHTS";
    /// cgroup v2 ids whose processes' page faults are profiled: `u64` -> `u32` (unused).
    pub const WATCHED_CGROUPS: &str = "WATCHED_CGROUPS";
    /// Resident growth by first touch: [`FaultKey`](crate::FaultKey) ->
    /// [`FaultTotals`](crate::FaultTotals).
    pub const FAULT_PROFILE: &str = "FAULT_PROFILE";
    /// Pages already counted, direct-mapped: slot -> [`fault_page_tag`](crate::fault_page_tag).
    pub const FAULT_PAGES: &str = "FAULT_PAGES";
    /// Global: `FAULT_PAGES`'s slot count minus one (`u32`, the count a power of two).
    pub const GLOBAL_FAULT_PAGE_SLOTS_MASK: &str = "FAULT_PAGE_SLOTS_MASK";
    /// Per-CPU: the watched fault in progress, [`PendingFault`](crate::PendingFault).
    pub const FAULT_PENDING: &str = "FAULT_PENDING";
    /// Global: log2 of the growth profile's sampling period (`u32`; 0 records every page).
    pub const GLOBAL_FAULT_SAMPLE_SHIFT: &str = "FAULT_SAMPLE_SHIFT";
    /// Global: the random key that chooses which pages the growth profile samples (`u64`).
    pub const GLOBAL_FAULT_SAMPLE_KEY: &str = "FAULT_SAMPLE_KEY";
}

/// Entries of the sampling tables.
pub const SAMPLING_TABLE_LEN: u32 = 1024;
/// Steps per unit of `size / mean` in the weight table (so it covers sizes up to 16 means).
pub const SAMPLING_WEIGHT_STEPS: u64 = 64;
/// Fixed-point scale of the sampling tables.
pub const SAMPLING_FIXED_ONE: u64 = 1 << 16;
/// Per-stack counts are kept in thousandths of an allocation (an exact record adds 1,000), so
/// one process's records made exact and sampled (the overhead budget can switch a process to
/// sampling while it runs) add up in the same totals.
pub const COUNT_SCALE: u64 = 1000;

/// What one recorded allocation of `size_bytes` stands for: (bytes, count). Exact mode
/// (`sample_bytes` 0): `(size_bytes, 1)` allocation. Sampled mode, where it was recorded with probability
/// `p = 1 - exp(-size_bytes / sample_bytes)`: about `size_bytes / p` bytes and `1 / p`
/// allocations, the count in thousandths ([`COUNT_SCALE`]). `weight_at(k)` is entry
/// `k` of the weight table ([`names::SAMPLE_WEIGHTS`]), which the daemon computes (BPF has no
/// floating point). The BPF programs add exactly this to a stack's totals and the daemon
/// weighs the allocations it scans with it, so both always agree. Integer arithmetic without
/// 128-bit products, which BPF lacks.
#[inline(always)]
pub fn allocation_weights(
    size_bytes: u64,
    sample_bytes: u64,
    weight_at: impl Fn(u32) -> u32,
) -> (u64, u64) {
    if sample_bytes == 0 {
        return (size_bytes, COUNT_SCALE);
    }
    let steps = if size_bytes > u64::MAX / SAMPLING_WEIGHT_STEPS {
        u64::MAX
    } else {
        size_bytes * SAMPLING_WEIGHT_STEPS / sample_bytes
    };
    let bytes = if steps >= u64::from(SAMPLING_TABLE_LEN) {
        // Sixteen means or more: sampled with probability ~1.
        size_bytes
    } else {
        let scaled = weight_at(steps as u32);
        (sample_bytes.wrapping_mul(u64::from(scaled)) / SAMPLING_FIXED_ONE).max(size_bytes)
    };
    let count = if size_bytes == 0 || bytes > u64::MAX / COUNT_SCALE {
        COUNT_SCALE
    } else {
        bytes * COUNT_SCALE / size_bytes
    };
    (bytes, count)
}

/// The allocator entry points the probes know, as stored in [`ThreadState::func`].
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocFn(pub u32);

impl AllocFn {
    pub const NONE: Self = Self(0);
    pub const MALLOC: Self = Self(1);
    pub const CALLOC: Self = Self(2);
    pub const REALLOC: Self = Self(3);
    pub const REALLOCARRAY: Self = Self(4);
    pub const FREE: Self = Self(5);
    pub const POSIX_MEMALIGN: Self = Self(6);
    pub const ALIGNED_ALLOC: Self = Self(7);
    pub const MEMALIGN: Self = Self(8);
    pub const VALLOC: Self = Self(9);
    pub const PVALLOC: Self = Self(10);
    pub const MMAP: Self = Self(11);
    pub const MUNMAP: Self = Self(12);
}

/// Key of an outstanding allocation: the process and the address it returned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AllocKey {
    pub tgid: u32,
    pub _pad: u32,
    pub addr: u64,
}
const _: () = assert!(size_of::<AllocKey>() == 16);

/// One outstanding allocation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocInfo {
    /// Bytes requested (pvalloc: rounded up to pages, as that call defines).
    pub size_bytes: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the allocation returned.
    pub timestamp_ns: u64,
    /// Key into `STACK_TRACES`; [`UNKNOWN_STACK_ID`] when the stack was lost.
    pub stack_id: u64,
    /// cgroup v2 id of the allocating task.
    pub cgroup_id: u64,
    /// The sampling mean it was recorded under (0: exact), so its free takes exactly what its
    /// allocation added off its stack's totals whatever the process's mode is by then.
    pub sample_bytes: u64,
}
const _: () = assert!(size_of::<AllocInfo>() == 40);

/// A process armed for recording (the value of `ARMED`): how its allocations are sampled and
/// how often its probes ran, which the overhead budget prices.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArmedProcess {
    /// Mean bytes between sampled allocations; 0 records every allocation. The daemon sets it
    /// when it arms the process (its `--sample-bytes`) and the budget raises it.
    pub sample_bytes: u64,
    /// Allocator entry probes hit (outermost and nested calls), running total.
    pub entry_hits: u64,
    /// Free probes hit, running total.
    pub free_hits: u64,
}
const _: () = assert!(size_of::<ArmedProcess>() == 24);

/// Key of a per-stack total: stacks are per process (the same addresses mean different code in
/// different processes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub tgid: u32,
    pub _pad: u32,
    pub stack_id: u64,
}
const _: () = assert!(size_of::<StackKey>() == 16);

/// Running totals of one stack, maintained by the BPF programs with atomic adds on every
/// allocation and free, so a report costs O(stacks). One slot of the `STACK_TOTALS` array;
/// `key.tgid == 0` marks a free slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackTotals {
    /// The stack this slot holds.
    pub key: StackKey,
    /// Bytes allocated from this stack and not yet freed.
    pub outstanding_bytes: u64,
    /// Allocations from this stack not yet freed.
    pub outstanding_count: u64,
    /// Allocations ever recorded from this stack (freed or not).
    pub allocations_total: u64,
}
const _: () = assert!(size_of::<StackTotals>() == 40);

/// A captured user stack: `len` return addresses, innermost first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackTrace {
    pub len: u64,
    pub ips: [u64; MAX_STACK_DEPTH],
}
const _: () = assert!(size_of::<StackTrace>() == 8 + 8 * MAX_STACK_DEPTH);

/// What a thread is doing inside the allocator: the outermost traced call in progress, so that
/// calls the allocator makes to itself (malloc inside realloc, mmap inside malloc) are not
/// recorded twice, and a return is matched only with the entry of the same function.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadState {
    /// Traced allocator calls active on this thread (1 = the outermost only).
    pub depth: u32,
    /// [`AllocFn`] of the outermost call.
    pub func: u32,
    /// When the outermost call entered, to recover from a lost return probe.
    pub entry_ns: u64,
    /// Bytes the outermost call asked for.
    pub size_bytes: u64,
    /// Function-specific argument: realloc's old pointer, posix_memalign's out-pointer,
    /// mmap's flags.
    pub arg: u64,
    /// realloc: the old block's record, removed at entry and put back if realloc fails.
    pub stash: AllocInfo,
    /// 1 when `stash` holds a record.
    pub stash_valid: u32,
    /// Sampled mode: 1 when the outermost call's allocation is sampled.
    pub sampled: u32,
    /// The process's sampling mean when the outermost call entered (0: exact), which its
    /// record keeps.
    pub sample_bytes: u64,
    /// Sampled mode: bytes this thread may still allocate before the next sample.
    pub bytes_until_sample: i64,
    /// Uprobe sessions: the stack pointer at the outermost call's entry (its return comes back
    /// with it 8 bytes higher).
    pub session_sp: u64,
}
const _: () = assert!(size_of::<ThreadState>() == 104);

/// The address range of a process's allocator library code: mmap and munmap called from
/// there are the allocator's own (arenas, large chunks), never the program's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocatorText {
    /// First address.
    pub start: u64,
    /// One past the last.
    pub end: u64,
}
const _: () = assert!(size_of::<AllocatorText>() == 16);

/// One row of a binary's unwind table, compiled in userspace from its `.eh_frame`: from `pc`
/// (an ELF virtual address of that binary) up to the next row's `pc`, how to find the caller's
/// frame. x86-64 only: the return address is always at CFA - 8.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindEntry {
    /// First virtual address the row covers.
    pub pc: u32,
    /// CFA = the register named by `rule` + this offset.
    pub cfa_offset: i32,
    /// One of the `UnwindEntry::RULE_*` values.
    pub rule: u8,
    pub _pad: u8,
    /// The caller's %rbp is saved at CFA + this offset; 0 when %rbp is unchanged.
    pub rbp_offset: i16,
}
const _: () = assert!(size_of::<UnwindEntry>() == 12);

impl UnwindEntry {
    /// No CFI covers these addresses, or it uses a rule the BPF unwinder cannot follow (a DWARF
    /// expression): unwinding stops here and is counted.
    pub const RULE_UNSUPPORTED: u8 = 0;
    /// CFA = %rsp + offset.
    pub const RULE_CFA_RSP: u8 = 1;
    /// CFA = %rbp + offset.
    pub const RULE_CFA_RBP: u8 = 2;
    /// The outermost frame (the return address is undefined, as in `_start`): a complete stack.
    pub const RULE_END: u8 = 3;
}

/// How the BPF unwinder walks out of one binary's code.
pub mod unwind_method {
    /// Saved frame pointers (the binary keeps them): one user read per frame.
    pub const FRAME_POINTERS: u32 = 1;
    /// The binary's unwind table (`.eh_frame` compiled into `UNWIND_ENTRIES`).
    pub const UNWIND_TABLE: u32 = 2;
}

/// Key of `UNWIND_MAPPINGS`, a longest-prefix-match trie: one process's executable mapping,
/// split into aligned power-of-two blocks. `tgid` and `addr` are big-endian, so that a prefix
/// of the key bytes is a numeric prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMappingKey {
    pub tgid_be: u32,
    pub _pad: u32,
    pub addr_be: u64,
}
const _: () = assert!(size_of::<UnwindMappingKey>() == 16);

/// Bits of [`UnwindMappingKey`] before the address: a prefix length is this plus address bits.
pub const UNWIND_MAPPING_KEY_PREFIX_BITS: u32 = 64;

/// Value of `UNWIND_MAPPINGS`: how to unwind out of the code in one mapping.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    /// The whole mapping's first address (a trie block may cover only part of it): frames
    /// in the same mapping reuse one lookup.
    pub start: u64,
    /// One past the mapping's last address.
    pub end: u64,
    /// Runtime address minus the binary's ELF virtual address.
    pub bias: u64,
    /// One of the [`unwind_method`] values.
    pub method: u32,
    /// First row of the binary's table in `UNWIND_ENTRIES` (method `UNWIND_TABLE`).
    pub table_start: u32,
    /// Rows in the table.
    pub table_len: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<UnwindMapping>() == 40);

/// Steps of the BPF unwinder's binary search: enough for a table of 2^22 rows.
pub const UNWIND_BINARY_SEARCH_STEPS: u32 = 22;

/// Key of the page-fault growth profile: a stack of one process in one cgroup. The cgroup is
/// part of the key because the BPF side attributes at fault time (a process moved between
/// cgroups keeps both histories apart).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FaultKey {
    /// cgroup v2 id of the faulting task (the inode of its cgroup directory).
    pub cgroup_id: u64,
    pub tgid: u32,
    pub _pad: u32,
    /// Key into `STACK_TRACES`; [`UNKNOWN_STACK_ID`] when the stack was lost. The first frame
    /// is the faulting instruction plus one, so that it reads as a return address like every
    /// other frame (the unwinder and the symbolizer look up `pc - 1`).
    pub stack_id: u64,
}
const _: () = assert!(size_of::<FaultKey>() == 24);

/// What faults at one [`FaultKey`] mapped, since the process was first seen. Added to with
/// atomic adds (threads of a process fault on several CPUs at once). When the profile samples
/// pages (one in N, `FAULT_SAMPLE_SHIFT`), each recorded page adds N pages' bytes: `bytes`,
/// `pages` and `retouched_bytes` are then unbiased estimates, `faults` and `huge_faults` count
/// the recorded faults only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultTotals {
    /// Bytes of anonymous memory made resident by first touch of pages never counted before.
    pub bytes: u64,
    /// Pages behind `bytes` (a transparent huge page counts its 512).
    pub pages: u64,
    /// Bytes made resident again at addresses already counted: an allocator that gave memory
    /// back (trim, MADV_DONTNEED) and touched it again. Churn, not growth.
    pub retouched_bytes: u64,
    /// Faults counted (new and retouched).
    pub faults: u64,
    /// Of those, faults that mapped more than one page at once (transparent huge pages).
    pub huge_faults: u64,
    /// `bpf_ktime_get_ns()` of the latest fault (CLOCK_MONOTONIC); a plain store.
    pub last_ns: u64,
}
const _: () = assert!(size_of::<FaultTotals>() == 48);

/// Bits of a page number in a [`fault_page_tag`]: user addresses below 2^48 (4-level paging).
pub const FAULT_PAGE_NUMBER_BITS: u32 = 36;

/// The word `FAULT_PAGES` keeps for a counted page (or huge page, by its aligned start) of
/// process `tgid`, and the slot it hashes to (before the mask): `None` for an address above
/// 4-level user space (never counted as a retouch). The tag holds the page number and the tgid
/// whole (pid_max is at most 2^22), so a slot only ever matches its own page; 0 is an empty
/// slot.
#[must_use]
#[inline(always)]
pub const fn fault_page_tag(tgid: u32, page: u64) -> Option<(u64, u32)> {
    let number = page >> 12;
    if number >> FAULT_PAGE_NUMBER_BITS != 0 {
        return None;
    }
    let tag = ((tgid as u64 + 1) << FAULT_PAGE_NUMBER_BITS) | number;
    // Fibonacci hashing: consecutive pages land far apart.
    let slot = (tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32;
    Some((tag, slot))
}

/// A watched task's write fault between the fault tracepoint and the rss change that says
/// it mapped a new anonymous page (one slot per CPU; `tid` 0 when empty).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingFault {
    pub tid: u32,
    /// Pages the fault maps (1, or `1 << order` when it allocated a huge folio).
    pub pages: u32,
    /// `bpf_ktime_get_ns()` at the fault.
    pub timestamp_ns: u64,
    /// The faulting user address.
    pub address: u64,
    /// cgroup v2 id of the faulting task.
    pub cgroup_id: u64,
}
const _: () = assert!(size_of::<PendingFault>() == 32);

/// Ring-buffer record kinds (the first field of every record).
pub mod event_kind {
    pub const MMAP: u32 = 1;
    pub const MUNMAP: u32 = 2;
    pub const OOM_KILL: u32 = 3;
    pub const EXEC: u32 = 4;
}

/// Byte offsets into kernel structures, read by the daemon from the running kernel's BTF and
/// handed to the OOM-kill program (Rust BPF has no CO-RE relocations, so the layout is resolved
/// in userspace the same way libbpf would). `valid` is 0 when they could not all be found.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    /// `task_struct.pid`.
    pub task_pid: u32,
    /// `task_struct.tgid`.
    pub task_tgid: u32,
    /// `task_struct.comm`.
    pub task_comm: u32,
    /// `task_struct.mm`.
    pub task_mm: u32,
    /// `task_struct.cgroups` (a `css_set *`).
    pub task_cgroups: u32,
    /// `mm_struct.rss_stat`.
    pub mm_rss_stat: u32,
    /// Bytes between consecutive rss counters (a `percpu_counter` since 6.2, an atomic before).
    pub rss_counter_stride: u32,
    /// Offset of the value inside one rss counter.
    pub rss_counter_value: u32,
    /// `css_set.dfl_cgrp` (the default-hierarchy cgroup).
    pub css_set_dfl_cgrp: u32,
    /// `css_set.subsys` (array of `cgroup_subsys_state *`).
    pub css_set_subsys: u32,
    /// `cgroup_subsys_state.cgroup`.
    pub css_cgroup: u32,
    /// `cgroup.kn`.
    pub cgroup_kn: u32,
    /// `kernfs_node.id` (the cgroup directory's inode number).
    pub kernfs_node_id: u32,
    /// Index of the memory controller in `css_set.subsys`.
    pub memory_cgrp_id: u32,
    /// 1 when every offset above was found.
    pub valid: u32,
    /// 1 when the five uretprobe offsets below were found: a stack walked while a uretprobe
    /// (or a uprobe session's return) is pending reads the kernel's trampoline where the
    /// hijacked return address was, and the walkers put the original back from the task's
    /// pending return instances.
    pub uretprobes_valid: u32,
    /// `task_struct.utask` (a `struct uprobe_task *`, NULL until the task hits a uprobe).
    pub task_utask: u32,
    /// `uprobe_task.return_instances` (the innermost pending return first).
    pub utask_return_instances: u32,
    /// `return_instance.stack`: the address of the return-address slot it hijacked.
    pub return_instance_stack: u32,
    /// `return_instance.orig_ret_vaddr`: the return address that was in that slot.
    pub return_instance_orig_ret_vaddr: u32,
    /// `return_instance.next`: the next outer pending return.
    pub return_instance_next: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<KernelLayout>() == 88);

/// Length of a task's command name.
pub const COMM_LEN: usize = 16;

/// The kernel chose a victim for an OOM kill (`mark_victim`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OomKillEvent {
    /// [`event_kind::OOM_KILL`].
    pub kind: u32,
    /// The victim's process (read from the hook's task argument, not the current task).
    pub victim_tgid: u32,
    /// The victim's thread.
    pub victim_tid: u32,
    /// The task whose allocation triggered the OOM (the current task at the hook).
    pub trigger_tgid: u32,
    /// The triggering thread.
    pub trigger_tid: u32,
    /// 1 when the victim's fields were read through a valid [`KernelLayout`].
    pub victim_read: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    /// Victim's command name.
    pub victim_comm: [u8; COMM_LEN],
    /// Triggering task's command name.
    pub trigger_comm: [u8; COMM_LEN],
    /// Victim's resident file pages.
    pub rss_file_pages: i64,
    /// Victim's resident anonymous pages.
    pub rss_anon_pages: i64,
    /// Victim's swap entries.
    pub swap_entries: i64,
    /// Victim's resident shared-memory pages.
    pub rss_shmem_pages: i64,
    /// Victim's cgroup id on the default (v2) hierarchy.
    pub victim_cgroup_id: u64,
    /// Victim's memory-controller cgroup id (the v1 memcg on hybrid hosts).
    pub victim_memcg_id: u64,
    /// Triggering task's v2 cgroup id.
    pub trigger_cgroup_id: u64,
}
const _: () = assert!(size_of::<OomKillEvent>() == 120);

/// An armed (traced) process called execve: its recording stopped at once in the kernel, and the
/// daemon re-attaches it to whatever allocator the new program maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExecEvent {
    /// [`event_kind::EXEC`].
    pub kind: u32,
    pub tgid: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the exec.
    pub timestamp_ns: u64,
}
const _: () = assert!(size_of::<ExecEvent>() == 16);

/// An anonymous mapping a traced process made itself (not from inside its allocator).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MmapEvent {
    /// [`event_kind::MMAP`].
    pub kind: u32,
    pub tgid: u32,
    pub addr: u64,
    pub len_bytes: u64,
    pub stack_id: u64,
    pub timestamp_ns: u64,
    pub cgroup_id: u64,
}
const _: () = assert!(size_of::<MmapEvent>() == 48);

/// A munmap a traced process made itself; the daemon matches it against its mappings, so
/// unmapping part of a mapping is handled exactly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MunmapEvent {
    /// [`event_kind::MUNMAP`].
    pub kind: u32,
    pub tgid: u32,
    pub addr: u64,
    pub len_bytes: u64,
    pub timestamp_ns: u64,
}
const _: () = assert!(size_of::<MunmapEvent>() == 32);

/// Per-CPU counters the BPF programs keep; every loss is one of these, never silent.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat(pub u32);

impl Stat {
    /// Allocations recorded in `ALLOCS`.
    pub const ALLOCATIONS_RECORDED: Self = Self(0);
    /// Frees (and reallocs) that removed a recorded allocation.
    pub const FREES_MATCHED: Self = Self(1);
    /// Frees of addresses never recorded (allocated before tracing began, or by an untraced path).
    pub const FREES_UNKNOWN: Self = Self(2);
    /// Allocations lost because `ALLOCS` was full.
    pub const ALLOCS_MAP_FULL: Self = Self(3);
    /// Allocations lost because `STACK_TOTALS` was full.
    pub const STACK_TOTALS_MAP_FULL: Self = Self(4);
    /// Stacks that could not be captured (recorded under [`UNKNOWN_STACK_ID`]).
    pub const STACKS_LOST: Self = Self(5);
    /// Stacks that could not be stored because `STACK_TRACES` was full.
    pub const STACK_TRACES_MAP_FULL: Self = Self(6);
    /// Allocator calls not tracked because `THREAD_STATE` could not hold the thread.
    pub const THREAD_STATE_FULL: Self = Self(7);
    /// Calls that failed (NULL, MAP_FAILED, non-zero) and so recorded nothing.
    pub const FAILED_CALLS: Self = Self(8);
    /// Allocator calls made from inside another traced allocator call (not recorded twice).
    pub const NESTED_CALLS: Self = Self(9);
    /// Returns seen without their entry (probe attached mid-call, or state lost).
    pub const RETURNS_WITHOUT_ENTRY: Self = Self(10);
    /// Ring-buffer records dropped because the buffer was full.
    pub const EVENTS_DROPPED: Self = Self(11);
    /// An allocation at an address already recorded: its free was missed; the old one was dropped.
    pub const ALLOCS_REPLACED: Self = Self(12);
    /// Outermost calls abandoned because their return never came (stale thread state).
    pub const STALE_CALLS: Self = Self(13);
    /// Frames walked with a binary's unwind table (code without frame pointers).
    pub const FRAMES_UNWOUND_BY_TABLE: Self = Self(14);
    /// Stacks cut short: a frame's code had no usable unwind row (no CFI, a DWARF expression),
    /// or the memory the row points at could not be read.
    pub const FRAMES_NOT_UNWOUND: Self = Self(15);
    /// Allocations a probe saw while their process was not armed for recording: while its
    /// probes were being attached or detached, or between an exec and the re-attach. Not
    /// recorded, because the probe that would see their free may not be live.
    pub const UNARMED_ALLOCATIONS: Self = Self(16);
    /// Anonymous page faults added to the growth profile (new and retouched pages).
    pub const FAULTS_COUNTED: Self = Self(17);
    /// Of those, faults at pages counted before (added to `retouched_bytes`, not `bytes`).
    pub const FAULT_RETOUCHES: Self = Self(18);
    /// Faults lost because `FAULT_PROFILE` was full.
    pub const FAULT_PROFILE_MAP_FULL: Self = Self(19);
    /// Anonymous-rss changes by a thread whose pending fault was older than the bound (1 ms):
    /// a slow fault (reclaim) whose page went uncounted, or an unmap after a fault that mapped
    /// no anonymous page. An upper bound on faults lost this way.
    pub const FAULT_PENDING_EXPIRED: Self = Self(20);
    /// Anonymous-rss changes on a CPU whose fresh pending fault is another thread's (the
    /// faulting thread slept mid-fault, and may finish on another CPU uncounted). An upper
    /// bound on faults lost this way.
    pub const FAULT_PENDING_OTHER_THREAD: Self = Self(21);
    /// Frames in code with no unwind mapping (a watched process not profiled, JIT code, code
    /// mapped since the last poll), walked by frame pointer: callers of code without frame
    /// pointers (glibc's memset) may be skipped.
    pub const FRAMES_WITHOUT_UNWIND_MAPPING: Self = Self(22);
    /// Counted faults that mapped more than one page at once (transparent huge pages).
    pub const FAULT_HUGE_PAGES: Self = Self(23);
    /// Number of counters.
    pub const COUNT: u32 = 24;

    /// Names, in index order, as the daemon reports them.
    pub const NAMES: [&'static str; Self::COUNT as usize] = [
        "allocations_recorded",
        "frees_matched",
        "frees_unknown",
        "allocs_map_full",
        "stack_totals_map_full",
        "stacks_lost",
        "stack_traces_map_full",
        "thread_state_full",
        "failed_calls",
        "nested_calls",
        "returns_without_entry",
        "events_dropped",
        "allocs_replaced",
        "stale_calls",
        "frames_unwound_by_table",
        "frames_not_unwound",
        "unarmed_allocations",
        "faults_counted",
        "fault_retouches",
        "fault_profile_map_full",
        "fault_pending_expired",
        "fault_pending_other_thread",
        "frames_without_unwind_mapping",
        "fault_huge_pages",
    ];
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all of these are #[repr(C)] plain integers with explicit padding, valid for any
    // bit pattern.
    unsafe impl aya::Pod for AllocKey {}
    unsafe impl aya::Pod for AllocInfo {}
    unsafe impl aya::Pod for ArmedProcess {}
    unsafe impl aya::Pod for StackKey {}
    unsafe impl aya::Pod for StackTotals {}
    unsafe impl aya::Pod for StackTrace {}
    unsafe impl aya::Pod for ThreadState {}
    unsafe impl aya::Pod for KernelLayout {}
    unsafe impl aya::Pod for AllocatorText {}
    unsafe impl aya::Pod for UnwindEntry {}
    unsafe impl aya::Pod for UnwindMappingKey {}
    unsafe impl aya::Pod for UnwindMapping {}
    unsafe impl aya::Pod for FaultKey {}
    unsafe impl aya::Pod for FaultTotals {}
    unsafe impl aya::Pod for PendingFault {}
}
