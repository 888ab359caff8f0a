//! The per-stack totals, read straight from kernel memory. `STACK_TOTALS` is a
//! memory-mappable BPF array with one slot per stack: the BPF side takes a slot from the
//! `FREE_STACK_SLOTS` queue for a new stack and publishes it in `STACK_SLOTS` (stack -> slot).
//! Mapping the array into the daemon makes a pass over every total a plain memory read, where
//! a hash map's batch read costs about 250 ns per entry (two checked copies to user space per
//! bucket): a pass over 110k slots reads 4.4 MB instead of making 200k copies.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use aya::maps::{Array, IterableMap as _, MapData};
use tracer_common::{StackKey, StackTotals};

/// A shared, writable mapping of a BPF array's values.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn of(map: &MapData, value_size: usize, entries: usize) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = (value_size * entries).div_ceil(page) * page;
        // SAFETY: a new shared mapping of the map's descriptor; the kernel checks the length
        // against the array's size and that it was created memory-mappable.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self { base, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `of` mapped.
        let _ = unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Every stack's totals, as the BPF programs keep them.
pub struct StackTable {
    totals: Mapping,
    capacity: u32,
}

// SAFETY: the mappings are plain memory that the kernel updates with atomic adds; the table
// only reads and writes whole aligned u64 words with volatile accesses.
unsafe impl Send for StackTable {}
// SAFETY: as above.
unsafe impl Sync for StackTable {}

impl StackTable {
    /// Maps `STACK_TOTALS`.
    pub fn map(totals: &Array<MapData, StackTotals>) -> io::Result<Self> {
        let capacity = totals.len();
        Ok(Self {
            totals: Mapping::of(totals.map(), size_of::<StackTotals>(), capacity as usize)?,
            capacity,
        })
    }

    /// Number of slots.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    fn slot(&self, index: u32) -> *mut StackTotals {
        // SAFETY: callers pass index < capacity, inside the mapping.
        unsafe {
            self.totals
                .base
                .cast::<StackTotals>()
                .as_ptr()
                .add(index as usize)
        }
    }

    /// Calls `visit` with every stack's slot and totals (O(stacks), no syscall). Totals change
    /// while they are read, as with any read of live maps.
    pub fn for_each(&self, mut visit: impl FnMut(u32, StackTotals)) {
        for index in 0..self.capacity {
            // SAFETY: inside the mapping; StackTotals is plain data valid for any bytes.
            let totals = unsafe { self.slot(index).read_volatile() };
            if totals.key.tgid != 0 {
                visit(index, totals);
            }
        }
    }

    /// The slots holding a process's stacks.
    pub fn slots_of(&self, tgid: u32) -> Vec<(u32, StackKey)> {
        let mut slots = Vec::new();
        self.for_each(|index, totals| {
            if totals.key.tgid == tgid {
                slots.push((index, totals.key));
            }
        });
        slots
    }

    /// Empties a slot no stack refers to any more (before it is recycled).
    pub fn clear(&self, index: u32) {
        if index < self.capacity {
            // SAFETY: inside the mapping; no BPF program writes a slot that is not in
            // STACK_SLOTS, which the caller removed it from.
            unsafe { self.slot(index).write_volatile(StackTotals::default()) };
        }
    }
}
