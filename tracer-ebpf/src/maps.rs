//! All maps of the object. Sizes are defaults; the daemon sets the real ones at load.
//! Hash maps are preallocated: an insert never allocates in the probe, and a full map is an
//! error the programs count, never an eviction (LRU would silently hide leaks). The LRU maps
//! hold per-thread call state, which is only ever stale for threads that have gone. The pages
//! the fault profile has counted are a direct-mapped array, where a page that lost its slot
//! only means a later retouch of it counts as new growth.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, Queue, RingBuf},
};
use tracer_common::{
    AllocInfo, AllocKey, AllocatorText, ArmedProcess, FaultKey, FaultTotals, PendingFault,
    SAMPLING_TABLE_LEN, StackKey, StackTotals, StackTrace, Stat, ThreadState, UnwindEntry,
    UnwindMapping, UnwindMappingKey,
};

#[map]
pub(crate) static ALLOCS: HashMap<AllocKey, AllocInfo> = HashMap::with_max_entries(1 << 19, 0);

/// Per-stack totals, one array slot per stack: the daemon maps the array into its memory and
/// reads every total without a syscall (a hash map's batch read costs ~250 ns per entry).
#[map]
pub(crate) static STACK_TOTALS: Array<StackTotals> =
    Array::with_max_entries(1 << 16, BPF_F_MMAPABLE);

/// The slot of each stack in `STACK_TOTALS`.
#[map]
pub(crate) static STACK_SLOTS: HashMap<StackKey, u32> = HashMap::with_max_entries(1 << 16, 0);

/// Free slots of `STACK_TOTALS` (the daemon puts every slot here at start, and gives back the
/// slots of ended processes). A queue needs no atomic fetch-add, which BPF's v1 instruction set
/// (what bpf-linker targets here) lacks.
#[map]
pub(crate) static FREE_STACK_SLOTS: Queue<u32> = Queue::with_max_entries(1 << 16, 0);

#[map]
pub(crate) static STACK_TRACES: HashMap<u64, StackTrace> = HashMap::with_max_entries(1 << 15, 0);

#[map]
pub(crate) static THREAD_STATE: LruHashMap<u32, ThreadState> =
    LruHashMap::with_max_entries(1 << 14, 0);

#[map]
pub(crate) static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT, 0);

/// One stack buffer per CPU: a 520-byte trace does not fit on the 512-byte BPF stack.
#[map]
pub(crate) static STACK_SCRATCH: PerCpuArray<StackTrace> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Sampled mode: `-ln(u)` table for exponential draws (filled by the daemon).
#[map]
pub(crate) static SAMPLE_DISTANCES: Array<u32> = Array::with_max_entries(SAMPLING_TABLE_LEN, 0);

/// Sampled mode: weight table (filled by the daemon).
#[map]
pub(crate) static SAMPLE_WEIGHTS: Array<u32> = Array::with_max_entries(SAMPLING_TABLE_LEN, 0);

/// Where each traced process's allocator code is (filled by the daemon at attach).
#[map]
pub(crate) static ALLOCATOR_TEXT: HashMap<u32, AllocatorText> = HashMap::with_max_entries(4096, 0);

/// Processes armed for recording, with their sampling mean and probe hits: see `armed`.
/// Written by the daemon, and cleared by the exec hook.
#[map]
pub(crate) static ARMED: HashMap<u32, ArmedProcess> = HashMap::with_max_entries(1 << 16, 0);

/// Every loaded binary's unwind table, one after the other (see `UnwindMapping::table_start`).
#[map]
pub(crate) static UNWIND_ENTRIES: Array<UnwindEntry> = Array::with_max_entries(1 << 19, 0);

/// Each traced or profiled process's executable mappings: how to unwind out of the code at an
/// address. Trie nodes are allocated on demand (an LPM trie cannot be preallocated), so the
/// capacity costs nothing until used; the daemon sets it (`MapSizes::unwind_mappings`).
#[map]
pub(crate) static UNWIND_MAPPINGS: LpmTrie<UnwindMappingKey, UnwindMapping> =
    LpmTrie::with_max_entries(1 << 18, 0);

/// cgroup v2 ids whose tasks' page faults are profiled (filled by the daemon; value unused).
#[map]
pub(crate) static WATCHED_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(4096, 0);

/// Resident growth by first touch, per (cgroup, process, stack).
#[map]
pub(crate) static FAULT_PROFILE: HashMap<FaultKey, FaultTotals> =
    HashMap::with_max_entries(1 << 14, 0);

/// Pages the fault profile counted, per process: a fault at one of them again is a retouch.
/// Direct-mapped, one tag per slot ([`tracer_common::fault_page_tag`]); the daemon makes the
/// size a power of two and sets the mask (`FAULT_PAGE_SLOTS_MASK`).
#[map]
pub(crate) static FAULT_PAGES: Array<u64> = Array::with_max_entries(1 << 17, 0);

/// The last stack walked at a fault on each CPU, to reuse (see `fault::StackCache`).
#[map]
pub(crate) static FAULT_STACK_CACHE: PerCpuArray<crate::fault::StackCache> =
    PerCpuArray::with_max_entries(1, 0);

/// The watched fault in progress on each CPU.
#[map]
pub(crate) static FAULT_PENDING: PerCpuArray<PendingFault> = PerCpuArray::with_max_entries(1, 0);
