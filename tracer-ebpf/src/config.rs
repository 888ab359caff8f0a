//! Load-time settings the daemon writes into the object (read-only globals the verifier can
//! fold).

use aya_ebpf::Global;

/// The daemon's own tgid: its allocator calls are never recorded.
#[unsafe(no_mangle)]
static DAEMON_TGID: Global<u32> = Global::new(0);

/// Page size, for pvalloc's rounding and mmap lengths.
#[unsafe(no_mangle)]
static PAGE_SIZE: Global<u64> = Global::new(4096);

/// An outermost allocator call whose return has not come after this long is abandoned (its
/// return probe was lost), so a thread can never stay stuck "inside the allocator".
pub(crate) const STALE_CALL_NS: u64 = 1_000_000_000;

pub(crate) fn daemon_tgid() -> u32 {
    DAEMON_TGID.load()
}

pub(crate) fn page_size() -> u64 {
    PAGE_SIZE.load()
}
