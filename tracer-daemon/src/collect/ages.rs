//! Ages of outstanding allocations, per stack. Only a scan of every allocation gives them
//! (O(allocations)); the node agent runs it in the background (see `scanner`).

use std::{collections::HashSet, io, os::fd::BorrowedFd};

use foldhash::{HashMap, HashMapExt as _};

use tracer_common::{AllocInfo, AllocKey, StackKey};

use super::{batch, sampling_weight};

/// Ages of one stack's outstanding allocations.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AgeSummary {
    /// Timestamp of the oldest outstanding allocation (CLOCK_MONOTONIC ns).
    pub oldest_ns: u64,
    /// Bytes of allocations at least the minimum age old (an estimate in sampled mode).
    pub aged_bytes: f64,
    /// Count of allocations at least the minimum age old (an estimate in sampled mode).
    pub aged_count: f64,
}

/// Summarises allocations, as they are visited, into ages per stack: the oldest one, and what
/// is at least `min_age_ns` old at `now_ns` (only of `tgids`, when given).
#[derive(Debug)]
pub struct AgeScan<'a> {
    tgids: Option<&'a HashSet<u32>>,
    now_ns: u64,
    min_age_ns: u64,
    out: HashMap<StackKey, AgeSummary>,
}

impl<'a> AgeScan<'a> {
    /// An empty summary.
    pub fn new(tgids: Option<&'a HashSet<u32>>, now_ns: u64, min_age_ns: u64) -> Self {
        Self {
            tgids,
            now_ns,
            min_age_ns,
            out: HashMap::new(),
        }
    }

    /// Counts one outstanding allocation.
    pub fn add(&mut self, key: AllocKey, info: AllocInfo) {
        if self.tgids.is_some_and(|t| !t.contains(&key.tgid)) {
            return;
        }
        let stack = StackKey {
            tgid: key.tgid,
            _pad: 0,
            stack_id: info.stack_id,
        };
        let summary = self.out.entry(stack).or_insert(AgeSummary {
            oldest_ns: u64::MAX,
            ..AgeSummary::default()
        });
        summary.oldest_ns = summary.oldest_ns.min(info.timestamp_ns);
        if self.now_ns.saturating_sub(info.timestamp_ns) >= self.min_age_ns {
            let (bytes, count) = sampling_weight(info.size_bytes, info.sample_bytes);
            summary.aged_bytes += bytes;
            summary.aged_count += count;
        }
    }

    /// The summary per stack.
    pub fn finish(self) -> HashMap<StackKey, AgeSummary> {
        self.out
    }
}

/// Counts one allocation into the oldest per stack.
pub fn add_oldest(oldest: &mut OldestByStack, key: AllocKey, info: AllocInfo) {
    let stack = StackKey {
        tgid: key.tgid,
        _pad: 0,
        stack_id: info.stack_id,
    };
    let entry = oldest.entry(stack).or_insert(u64::MAX);
    *entry = (*entry).min(info.timestamp_ns);
}

/// Oldest outstanding allocation per stack (CLOCK_MONOTONIC ns).
pub type OldestByStack = HashMap<StackKey, u64>;

/// Scans every outstanding allocation for the oldest one per stack (the background scan, so it
/// keeps nothing else), also counting the allocations read.
pub fn oldest_and_count(allocs: BorrowedFd<'_>) -> io::Result<(OldestByStack, u64)> {
    let mut out = OldestByStack::new();
    let mut count = 0u64;
    batch::for_each_fd(allocs, |key: AllocKey, info: AllocInfo| {
        count += 1;
        add_oldest(&mut out, key, info);
    })?;
    Ok((out, count))
}
