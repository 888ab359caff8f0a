//! Anonymous mappings each traced process made itself, kept exactly as its mmap/munmap calls
//! describe them: unmapping a prefix, a suffix, a hole, or several mappings at once all leave
//! exactly the bytes still mapped.

use std::collections::{BTreeMap, HashMap};

/// One mapping (or what is left of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Bytes still mapped from `start`.
    pub len_bytes: u64,
    /// Stack of the mmap call.
    pub stack_id: u64,
    /// When it was mapped (CLOCK_MONOTONIC ns).
    pub timestamp_ns: u64,
    /// cgroup v2 id of the mapping task.
    pub cgroup_id: u64,
}

/// Totals of one stack's mappings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingTotals {
    /// Bytes still mapped.
    pub bytes: u64,
    /// Mappings (pieces count separately once a hole splits one).
    pub count: u64,
    /// Oldest still-mapped piece (CLOCK_MONOTONIC ns).
    pub oldest_ns: u64,
}

/// Per-process mapping index, by start address.
#[derive(Debug, Default)]
pub struct MappingTracker {
    by_process: HashMap<u32, BTreeMap<u64, Mapping>>,
}

impl MappingTracker {
    /// A new mapping; whatever it replaces (MAP_FIXED over an old one) is unmapped first.
    pub fn mapped(&mut self, tgid: u32, start: u64, mapping: Mapping) {
        if mapping.len_bytes == 0 {
            return;
        }
        self.unmapped(tgid, start, mapping.len_bytes);
        let _ = self
            .by_process
            .entry(tgid)
            .or_default()
            .insert(start, mapping);
    }

    /// Removes `[start, start + len)` from whatever mappings it overlaps.
    pub fn unmapped(&mut self, tgid: u32, start: u64, len_bytes: u64) {
        let Some(index) = self.by_process.get_mut(&tgid) else {
            return;
        };
        let end = start.saturating_add(len_bytes);
        let mut affected: Vec<u64> = Vec::new();
        if let Some((&first, mapping)) = index.range(..start).next_back()
            && first.saturating_add(mapping.len_bytes) > start
        {
            affected.push(first);
        }
        affected.extend(index.range(start..end).map(|(&s, _)| s));
        for piece_start in affected {
            let Some(mapping) = index.remove(&piece_start) else {
                continue;
            };
            let piece_end = piece_start.saturating_add(mapping.len_bytes);
            if piece_start < start {
                let _ = index.insert(
                    piece_start,
                    Mapping {
                        len_bytes: start - piece_start,
                        ..mapping
                    },
                );
            }
            if piece_end > end {
                let _ = index.insert(
                    end,
                    Mapping {
                        len_bytes: piece_end - end,
                        ..mapping
                    },
                );
            }
        }
        if index.is_empty() {
            let _ = self.by_process.remove(&tgid);
        }
    }

    /// Drops everything known about a process.
    pub fn forget(&mut self, tgid: u32) {
        let _ = self.by_process.remove(&tgid);
    }

    /// A process's mappings, by start address.
    pub fn mappings(&self, tgid: u32) -> impl Iterator<Item = (u64, &Mapping)> {
        self.by_process
            .get(&tgid)
            .into_iter()
            .flatten()
            .map(|(&start, m)| (start, m))
    }

    /// A process's mappings totalled per stack.
    pub fn per_stack(&self, tgid: u32) -> HashMap<u64, MappingTotals> {
        let mut totals: HashMap<u64, MappingTotals> = HashMap::new();
        for (_, mapping) in self.mappings(tgid) {
            let entry = totals.entry(mapping.stack_id).or_insert(MappingTotals {
                oldest_ns: u64::MAX,
                ..MappingTotals::default()
            });
            entry.bytes += mapping.len_bytes;
            entry.count += 1;
            entry.oldest_ns = entry.oldest_ns.min(mapping.timestamp_ns);
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    fn mapping(len_bytes: u64, stack_id: u64) -> Mapping {
        Mapping {
            len_bytes,
            stack_id,
            timestamp_ns: 1,
            cgroup_id: 0,
        }
    }

    fn bytes(tracker: &MappingTracker) -> u64 {
        tracker.mappings(1).map(|(_, m)| m.len_bytes).sum()
    }

    #[test]
    fn unmapping_a_hole_splits_the_mapping_in_two() {
        let mut tracker = MappingTracker::default();
        tracker.mapped(1, 0x10000, mapping(10 * PAGE, 7));
        tracker.unmapped(1, 0x10000 + 3 * PAGE, 2 * PAGE);
        let pieces: Vec<(u64, u64)> = tracker.mappings(1).map(|(s, m)| (s, m.len_bytes)).collect();
        assert_eq!(
            pieces,
            vec![(0x10000, 3 * PAGE), (0x10000 + 5 * PAGE, 5 * PAGE)]
        );
        assert_eq!(
            tracker.per_stack(1)[&7],
            MappingTotals {
                bytes: 8 * PAGE,
                count: 2,
                oldest_ns: 1
            }
        );
    }

    #[test]
    fn unmapping_prefix_and_suffix_keeps_the_middle() {
        let mut tracker = MappingTracker::default();
        tracker.mapped(1, 0x10000, mapping(10 * PAGE, 7));
        tracker.unmapped(1, 0x10000, PAGE);
        tracker.unmapped(1, 0x10000 + 9 * PAGE, PAGE);
        assert_eq!(bytes(&tracker), 8 * PAGE);
        assert_eq!(
            tracker.mappings(1).next().map(|(s, _)| s),
            Some(0x10000 + PAGE)
        );
    }

    #[test]
    fn one_munmap_across_several_mappings_and_gaps_removes_each() {
        let mut tracker = MappingTracker::default();
        tracker.mapped(1, 0x10000, mapping(2 * PAGE, 1));
        tracker.mapped(1, 0x10000 + 4 * PAGE, mapping(2 * PAGE, 2));
        tracker.mapped(1, 0x10000 + 8 * PAGE, mapping(2 * PAGE, 3));
        tracker.unmapped(1, 0x10000 + PAGE, 8 * PAGE);
        let pieces: Vec<(u64, u64)> = tracker.mappings(1).map(|(s, m)| (s, m.len_bytes)).collect();
        assert_eq!(pieces, vec![(0x10000, PAGE), (0x10000 + 9 * PAGE, PAGE)]);
    }

    #[test]
    fn a_fixed_mapping_replaces_what_it_covers() {
        let mut tracker = MappingTracker::default();
        tracker.mapped(1, 0x10000, mapping(4 * PAGE, 1));
        tracker.mapped(1, 0x10000 + PAGE, mapping(PAGE, 2));
        assert_eq!(bytes(&tracker), 4 * PAGE);
        assert_eq!(tracker.per_stack(1)[&1].bytes, 3 * PAGE);
        assert_eq!(tracker.per_stack(1)[&2].bytes, PAGE);
    }

    #[test]
    fn processes_never_share_mappings() {
        let mut tracker = MappingTracker::default();
        tracker.mapped(1, 0x10000, mapping(PAGE, 1));
        tracker.mapped(2, 0x10000, mapping(PAGE, 1));
        tracker.unmapped(2, 0x10000, PAGE);
        assert_eq!(bytes(&tracker), PAGE);
        assert!(tracker.per_stack(2).is_empty());
    }

    #[test]
    fn unmapping_what_was_never_mapped_changes_nothing() {
        let mut tracker = MappingTracker::default();
        tracker.mapped(1, 0x10000, mapping(PAGE, 1));
        tracker.unmapped(1, 0x50000, PAGE);
        tracker.unmapped(3, 0x10000, PAGE);
        assert_eq!(bytes(&tracker), PAGE);
    }
}
