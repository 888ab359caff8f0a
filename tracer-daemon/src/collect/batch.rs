//! Batched map reads and deletes (BPF_MAP_LOOKUP_BATCH / BPF_MAP_DELETE_BATCH).
//!
//! aya 0.14 iterates a map with two syscalls per element; scanning a million outstanding
//! allocations that way takes seconds. The batch commands copy thousands per syscall. aya has
//! no API for them, so this module issues them with aya-obj's generated `bpf_attr`.

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
};

use aya::{Pod, maps::MapData};
use aya_obj::generated::{bpf_attr, bpf_cmd};

use crate::bpf::syscall::sys_bpf;

/// Elements asked for per syscall.
const CHUNK: usize = 4096;

/// Calls `visit` with every (key, value) of a hash map. Elements inserted or deleted during
/// the scan may or may not be seen, as with any map iteration.
pub fn for_each<K: Pod, V: Pod>(map: &MapData, visit: impl FnMut(K, V)) -> io::Result<()> {
    for_each_fd(map.fd().as_fd(), visit)
}

/// [`for_each`] on a map descriptor (a duplicate can scan from another thread).
pub fn for_each_fd<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    mut visit: impl FnMut(K, V),
) -> io::Result<()> {
    let fd = map.as_raw_fd() as u32;
    let mut chunk = CHUNK;
    // Per-thread buffers, reused across scans: a report reads ~100k entries; fresh multi-page
    // buffers every time would cost page faults on every query.
    let (mut keys, mut values) = BUFFERS.with_borrow_mut(std::mem::take);
    keys.resize(chunk * size_of::<K>(), 0);
    values.resize(chunk * size_of::<V>(), 0);
    let result = scan_chunks(fd, &mut chunk, &mut keys, &mut values, &mut visit);
    BUFFERS.with_borrow_mut(|buffers| *buffers = (keys, values));
    result
}

thread_local! {
    static BUFFERS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

fn scan_chunks<K: Pod, V: Pod>(
    fd: u32,
    chunk: &mut usize,
    keys: &mut Vec<u8>,
    values: &mut Vec<u8>,
    visit: &mut impl FnMut(K, V),
) -> io::Result<()> {
    let mut in_batch = 0u64;
    let mut out_batch = 0u64;
    let mut first = true;
    loop {
        // SAFETY: bpf_attr is plain data; all-zero is its documented initial state.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.batch.in_batch = if first {
            0
        } else {
            std::ptr::from_ref(&in_batch) as u64
        };
        attr.batch.out_batch = std::ptr::from_mut(&mut out_batch) as u64;
        attr.batch.keys = keys.as_mut_ptr() as u64;
        attr.batch.values = values.as_mut_ptr() as u64;
        attr.batch.count = *chunk as u32;
        attr.batch.map_fd = fd;
        // SAFETY: `in_batch` and `out_batch` are live u64s; `keys` and `values` hold `chunk`
        // keys and values, the count asked for.
        let result = unsafe { sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr) }.map(drop);
        // SAFETY: the kernel wrote back how many elements it copied.
        let count = unsafe { attr.batch.count } as usize;
        for i in 0..count.min(*chunk) {
            // SAFETY: the kernel wrote `count` keys and values of these sizes; Pod types are
            // valid for any bytes, and read_unaligned needs no alignment.
            let (key, value) = unsafe {
                (
                    keys.as_ptr()
                        .add(i * size_of::<K>())
                        .cast::<K>()
                        .read_unaligned(),
                    values
                        .as_ptr()
                        .add(i * size_of::<V>())
                        .cast::<V>()
                        .read_unaligned(),
                )
            };
            visit(key, value);
        }
        match result {
            Ok(()) => {}
            // End of the map (the last chunk may still have carried elements).
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            // One bucket holds more elements than the buffer: grow it and retry the bucket.
            Err(error) if error.raw_os_error() == Some(libc::ENOSPC) && count == 0 => {
                *chunk *= 2;
                keys.resize(*chunk * size_of::<K>(), 0);
                values.resize(*chunk * size_of::<V>(), 0);
                continue;
            }
            Err(error) => return Err(error),
        }
        in_batch = out_batch;
        first = false;
    }
}

/// Deletes these keys from a hash map; keys already gone are skipped.
pub fn delete<K: Pod>(map: &MapData, keys: &[K]) -> io::Result<()> {
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    for chunk in keys.chunks(CHUNK) {
        let mut remaining = chunk;
        while !remaining.is_empty() {
            // SAFETY: as above.
            let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
            attr.batch.keys = remaining.as_ptr() as u64;
            attr.batch.count = remaining.len() as u32;
            attr.batch.map_fd = fd;
            // SAFETY: `remaining` holds the `count` keys, and outlives the call.
            let result = unsafe { sys_bpf(bpf_cmd::BPF_MAP_DELETE_BATCH, &mut attr) }.map(drop);
            // SAFETY: the kernel wrote back how many it deleted.
            let deleted = (unsafe { attr.batch.count } as usize).min(remaining.len());
            match result {
                Ok(()) => remaining = &[],
                // The key after the deleted ones is absent: skip it and go on.
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {
                    remaining = &remaining[(deleted + 1).min(remaining.len())..];
                }
                Err(error) => return Err(error),
            }
        }
    }
    Ok(())
}
