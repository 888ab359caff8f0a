//! Loads unwind tables and process mappings into the BPF maps the return probes walk.
//!
//! Each binary (by device and inode, so a libc shared by a hundred processes is compiled and
//! loaded once) gets a contiguous range of `UNWIND_ENTRIES` while any traced process maps it;
//! each traced process gets its executable mappings in the `UNWIND_MAPPINGS` trie, split into
//! aligned power-of-two blocks, each saying which method unwinds that code.

use std::{collections::HashMap, sync::Arc};

use aya::maps::lpm_trie::Key;
use object::{Object as _, ObjectSegment as _};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use tracer_common::{
    UNWIND_MAPPING_KEY_PREFIX_BITS, UnwindMapping, UnwindMappingKey, unwind_method,
};

use crate::{
    bpf::kernel::UnwindMaps,
    discover::{process::ExecMapping, snapshot::ProcessSnapshot},
    unwind::table::{self, UnwindMethod},
};

/// How one binary of a traced process is unwound (reported per process).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinaryUnwinding {
    /// The binary's path as the process sees it.
    pub binary: String,
    /// `frame pointers` or `unwind table`.
    pub method: String,
    /// Rows of its unwind table (0 when walked by frame pointer).
    pub rows: usize,
    /// Why the preferred method could not be used, if so.
    pub note: Option<String>,
}

/// A binary's table in `UNWIND_ENTRIES`, and what its mappings need.
#[derive(Clone, Debug)]
struct LoadedBinary {
    method: u32,
    start: u32,
    len: u32,
    /// Its segments (file offset, file size, virtual address), for each mapping's bias.
    segments: Arc<[(u64, u64, u64)]>,
    /// Why its table is not used, when it is not.
    note: Option<String>,
    /// Traced processes mapping it.
    users: usize,
}

impl LoadedBinary {
    /// How this binary is unwound, for the report of a process that maps it at `path`.
    fn unwinding(&self, path: &str) -> BinaryUnwinding {
        let table = self.method == unwind_method::UNWIND_TABLE;
        BinaryUnwinding {
            binary: path.to_owned(),
            method: if table {
                "unwind table"
            } else {
                "frame pointers"
            }
            .to_owned(),
            rows: if table { self.len as usize } else { 0 },
            note: self.note.clone(),
        }
    }
}

/// What one process put in the maps.
struct ProcessEntries {
    /// Its keys in the trie.
    keys: Vec<Key<UnwindMappingKey>>,
    /// The binaries (device, inode) whose tables it holds.
    binaries: Vec<(u64, u64)>,
}

/// What the unwinder put in its BPF maps (which it reaches through [`UnwindMaps`]).
pub struct UnwindTables {
    binaries: HashMap<(u64, u64), LoadedBinary>,
    /// Per process: what it put in the maps.
    processes: HashMap<u32, ProcessEntries>,
    /// Free ranges of `UNWIND_ENTRIES` (start, len), first fit.
    free: Vec<(u32, u32)>,
}

impl UnwindTables {
    /// An empty table of `rows` rows (the capacity of `UNWIND_ENTRIES`).
    pub fn new(rows: u32) -> Self {
        Self {
            binaries: HashMap::new(),
            processes: HashMap::new(),
            free: vec![(0, rows)],
        }
    }

    /// Loads how to unwind each executable mapping of a process, or updates it after the
    /// process mapped new code (dlopen): the new entries go in before the old ones go out, so
    /// no stack is taken without them. Never fails the attach: a binary whose table cannot be
    /// loaded is walked by frame pointer, and says so.
    pub fn add_process(
        &mut self,
        snapshot: &ProcessSnapshot,
        maps: &mut dyn UnwindMaps,
    ) -> Vec<BinaryUnwinding> {
        let pid = snapshot.pid();
        let old = self.processes.remove(&pid);
        let mut report: Vec<BinaryUnwinding> = Vec::new();
        let mut keys = Vec::new();
        let mut held = Vec::new();
        for mapping in &snapshot.mappings {
            let Some(file) = snapshot.file(&mapping.path) else {
                continue;
            };
            let Some(id) = file.id else {
                continue;
            };
            if !self.binaries.contains_key(&id) {
                // Compiled once per binary, whatever the number of processes mapping it.
                let Ok(data) = std::fs::read(&file.host_path) else {
                    debug!(pid, path = %file.path, "cannot read a mapped binary for the unwinder");
                    continue;
                };
                let binary = self.load_binary(&mapping.path, &data, maps);
                let _ = self.binaries.insert(id, binary);
            }
            let Some(binary) = self.binaries.get_mut(&id) else {
                continue;
            };
            if !held.contains(&id) {
                binary.users += 1;
                held.push(id);
                report.push(binary.unwinding(&mapping.path));
            }
            let Some(bias) = bias_of(&binary.segments, mapping) else {
                continue;
            };
            let value = UnwindMapping {
                start: mapping.start,
                end: mapping.end,
                bias,
                method: binary.method,
                table_start: binary.start,
                table_len: binary.len,
                _pad: 0,
            };
            for key in blocks(pid, mapping.start, mapping.end) {
                match maps.insert_unwind_mapping(&key, value) {
                    Ok(()) => keys.push(key),
                    Err(error) => {
                        warn!(pid, path = %mapping.path, %error, "unwind mapping not loaded; its frames are walked by frame pointer");
                        break;
                    }
                }
            }
        }
        if let Some(old) = old {
            self.release(old, &keys, maps);
        }
        let _ = self.processes.insert(
            pid,
            ProcessEntries {
                keys,
                binaries: held,
            },
        );
        report
    }

    /// Forgets a process's mappings, and the tables no traced process maps any more.
    pub fn remove_process(&mut self, pid: u32, maps: &mut dyn UnwindMaps) {
        if let Some(entries) = self.processes.remove(&pid) {
            self.release(entries, &[], maps);
        }
    }

    /// Takes a process's old entries out of the maps, except the keys it still uses.
    fn release(
        &mut self,
        entries: ProcessEntries,
        kept: &[Key<UnwindMappingKey>],
        maps: &mut dyn UnwindMaps,
    ) {
        let same = |a: &Key<UnwindMappingKey>, b: &Key<UnwindMappingKey>| {
            a.prefix_len() == b.prefix_len() && a.data() == b.data()
        };
        for key in entries.keys {
            if !kept.iter().any(|kept| same(kept, &key)) {
                maps.remove_unwind_mapping(&key);
            }
        }
        for id in entries.binaries {
            let Some(binary) = self.binaries.get_mut(&id) else {
                continue;
            };
            binary.users = binary.users.saturating_sub(1);
            if binary.users == 0
                && let Some(binary) = self.binaries.remove(&id)
                && binary.len > 0
            {
                self.free.push((binary.start, binary.len));
            }
        }
    }

    /// Compiles a binary's table and loads it (or says why it is walked by frame pointer).
    fn load_binary(&mut self, path: &str, data: &[u8], maps: &mut dyn UnwindMaps) -> LoadedBinary {
        let mut binary = LoadedBinary {
            method: unwind_method::FRAME_POINTERS,
            start: 0,
            len: 0,
            segments: segments_of(data),
            note: None,
            users: 0,
        };
        let compiled = match table::compile(data) {
            Ok(compiled) => compiled,
            Err(error) => {
                binary.note = Some(error.to_string());
                return binary;
            }
        };
        if compiled.method == UnwindMethod::FramePointers {
            return binary;
        }
        let Ok(len) = u32::try_from(compiled.entries.len()) else {
            binary.note = Some("its unwind table is too large".to_owned());
            return binary;
        };
        let Some(start) = self.allocate(len) else {
            binary.note = Some(format!(
                "no room for its {len} unwind rows (raise --max-unwind-rows)"
            ));
            return binary;
        };
        for (index, entry) in (start..).zip(&compiled.entries) {
            if let Err(error) = maps.set_unwind_row(index, entry) {
                self.free.push((start, len));
                binary.note = Some(format!("loading its unwind table failed: {error}"));
                return binary;
            }
        }
        debug!(
            path,
            rows = len,
            unsupported = compiled.unsupported_rows,
            "unwind table loaded"
        );
        LoadedBinary {
            method: unwind_method::UNWIND_TABLE,
            start,
            len,
            ..binary
        }
    }

    /// Takes `len` rows from the free ranges (first fit).
    fn allocate(&mut self, len: u32) -> Option<u32> {
        if len == 0 {
            return None;
        }
        let index = self.free.iter().position(|&(_, free)| free >= len)?;
        let (start, free) = self.free[index];
        if free == len {
            let _ = self.free.swap_remove(index);
        } else {
            self.free[index] = (start + len, free - len);
        }
        Some(start)
    }
}

/// A binary's segments: (file offset, file size, virtual address).
fn segments_of(data: &[u8]) -> Arc<[(u64, u64, u64)]> {
    let Ok(file) = object::File::parse(data) else {
        return Arc::new([]);
    };
    file.segments()
        .map(|segment| {
            let (offset, size) = segment.file_range();
            (offset, size, segment.address())
        })
        .collect()
}

/// Runtime address minus ELF virtual address for the code of one mapping.
fn bias_of(segments: &[(u64, u64, u64)], mapping: &ExecMapping) -> Option<u64> {
    let &(offset, _, address) = segments.iter().find(|&&(offset, size, _)| {
        mapping.file_offset >= offset && mapping.file_offset < offset + size
    })?;
    let vaddr = address + (mapping.file_offset - offset);
    Some(mapping.start.wrapping_sub(vaddr))
}

/// Trie keys covering [start, end): the largest aligned power-of-two blocks.
fn blocks(pid: u32, start: u64, end: u64) -> Vec<Key<UnwindMappingKey>> {
    let mut keys = Vec::new();
    let mut at = start;
    while at < end {
        let mut bits = at.trailing_zeros().min(63);
        while bits > 0 && (at.checked_add(1 << bits).is_none_or(|next| next > end)) {
            bits -= 1;
        }
        let key = UnwindMappingKey {
            tgid_be: pid.to_be(),
            _pad: 0,
            addr_be: at.to_be(),
        };
        keys.push(Key::new(UNWIND_MAPPING_KEY_PREFIX_BITS + 64 - bits, key));
        at += 1 << bits;
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(keys: &[Key<UnwindMappingKey>]) -> Vec<(u64, u64)> {
        keys.iter()
            .map(|key| {
                let prefix = key.prefix_len();
                let data = key.data();
                let start = u64::from_be(data.addr_be);
                let bits = 64 - (prefix - UNWIND_MAPPING_KEY_PREFIX_BITS);
                (start, start + (1u64 << bits))
            })
            .collect()
    }

    #[test]
    fn blocks_cover_a_mapping_exactly_with_aligned_powers_of_two() {
        let (start, end) = (0x7f00_1234_5000, 0x7f00_1239_c000);
        let ranges = covered(&blocks(42, start, end));
        assert_eq!(ranges.first().map(|r| r.0), Some(start));
        assert_eq!(ranges.last().map(|r| r.1), Some(end));
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].1, pair[1].0);
        }
        for (from, to) in ranges {
            let size = to - from;
            assert!(
                size.is_power_of_two() && from % size == 0,
                "{from:#x}-{to:#x}"
            );
        }
    }
}
