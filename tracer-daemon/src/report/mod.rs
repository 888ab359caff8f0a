//! Leak reports: per process, the stacks holding memory, ranked, with growth.
//!
//! These are the daemon's domain types; the CLI prints them and the API converts them at its
//! edge. Nothing here knows about maps or protobuf.

use std::sync::Arc;

use serde::Serialize;

use crate::{collect::stats::BpfStats, symbolize::Frame};

/// Whether a traced process is still running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// Alive and traced.
    Running,
    /// Exited since the last report; this is its last report and its records are dropped.
    Ended,
}

/// Where a stack's memory came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryKind {
    /// malloc family.
    Heap,
    /// Anonymous mmap made by the program itself.
    Mmap,
}

/// One stack holding memory.
#[derive(Clone, Debug, Serialize)]
pub struct StackReport {
    /// Stack id, hex.
    pub stack_id: String,
    /// Heap or mmap.
    pub kind: MemoryKind,
    /// Outstanding bytes (those at least `min_age` old when a minimum age is set).
    pub bytes: u64,
    /// Outstanding allocations (same filter).
    pub count: u64,
    /// Age of the oldest outstanding allocation, ns.
    pub oldest_age_ns: u64,
    /// Change of `bytes` since the previous report (negative when freed).
    pub growth_bytes: i64,
    /// Frames, innermost (the allocation's call site) first.
    pub frames: Arc<[Frame]>,
}

/// One traced process.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessReport {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// Running or ended.
    pub state: ProcessState,
    /// The allocator library probed.
    pub allocator: String,
    /// Outstanding bytes over all its stacks (same filter as the stacks).
    pub outstanding_bytes: u64,
    /// Outstanding allocations over all its stacks.
    pub outstanding_count: u64,
    /// Change of `outstanding_bytes` since the previous report.
    pub growth_bytes: i64,
    /// Stacks holding memory, before the top-N cut.
    pub stacks_total: usize,
    /// The top stacks by bytes.
    pub stacks: Vec<StackReport>,
}

/// One report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// 1 for the first report, then counting.
    pub sequence: u64,
    /// Wall-clock time, ms since the Unix epoch.
    pub timestamp_unix_ms: u64,
    /// The minimum age applied, ns (0: every outstanding allocation counts).
    pub min_age_ns: u64,
    /// Traced processes.
    pub processes: Vec<ProcessReport>,
    /// The BPF programs' counters, so losses are never silent.
    pub stats: BpfStats,
}

/// Orders stacks by bytes, then count, then id (a stable order for equal stacks) and keeps the
/// top `top` of those holding anything.
pub fn rank(mut stacks: Vec<StackReport>, top: usize) -> Vec<StackReport> {
    stacks.retain(|s| s.bytes > 0 || s.count > 0);
    stacks.sort_by(|a, b| {
        b.bytes.cmp(&a.bytes).then(b.count.cmp(&a.count)).then(a.stack_id.cmp(&b.stack_id))
    });
    stacks.truncate(top);
    stacks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(id: &str, bytes: u64, count: u64) -> StackReport {
        StackReport {
            stack_id: id.to_owned(),
            kind: MemoryKind::Heap,
            bytes,
            count,
            oldest_age_ns: 0,
            growth_bytes: 0,
            frames: Arc::from(Vec::new()),
        }
    }

    #[test]
    fn ranking_puts_most_bytes_first_and_cuts_at_top() {
        let ranked = rank(vec![stack("a", 10, 1), stack("b", 30, 1), stack("c", 20, 5)], 2);
        let ids: Vec<&str> = ranked.iter().map(|s| s.stack_id.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
    }

    #[test]
    fn ranking_breaks_ties_by_count_then_id_and_drops_empty_stacks() {
        let ranked =
            rank(vec![stack("z", 8, 1), stack("y", 8, 2), stack("x", 8, 1), stack("e", 0, 0)], 10);
        let ids: Vec<&str> = ranked.iter().map(|s| s.stack_id.as_str()).collect();
        assert_eq!(ids, ["y", "x", "z"]);
    }
}
