//! Leak reports: per process, the stacks holding memory, ranked, with growth.
//!
//! These are the daemon's domain types; the CLI prints them and the API converts them at its
//! edge. Nothing here knows about maps or protobuf.

pub mod assemble;
pub mod first_touch;
pub mod growth;
pub mod pod;
pub mod trend;

use std::{collections::HashMap, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{collect::stats::BpfStats, symbolize::Frame};
use growth::Growth;

/// Whether a traced process is still running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// Alive and traced.
    Running,
    /// Exited since the last report; this is its last report and its records are dropped.
    Ended,
    /// Killed by the kernel's OOM killer (a kind of ended).
    OomKilled,
}

impl ProcessState {
    /// True once the process is gone, whatever ended it.
    pub fn has_ended(self) -> bool {
        self != Self::Running
    }
}

/// Where a stack's memory came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryKind {
    /// malloc family.
    Heap,
    /// Anonymous mmap made by the program itself.
    Mmap,
}

/// One stack holding memory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StackReport {
    /// Stack id, hex (the smallest id when stacks at the same call site were merged).
    pub stack_id: String,
    /// The process.
    pub pid: u32,
    /// Heap or mmap.
    pub kind: MemoryKind,
    /// Outstanding bytes (those at least `min_age` old when a minimum age is set).
    pub bytes: u64,
    /// Outstanding allocations (same filter).
    pub count: u64,
    /// Age of the oldest outstanding allocation, ns.
    pub oldest_age_ns: u64,
    /// Change of `bytes` since the previous report of the same reader (negative when freed).
    pub growth_bytes: i64,
    /// Growth over the daemon's sliding window, when it keeps one (the node agent does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth: Option<Growth>,
    /// Frames, innermost (the allocation's call site) first.
    pub frames: Arc<[Frame]>,
    /// Ids of the raw stacks merged into this one (for growth lookups).
    #[serde(skip)]
    pub members: Vec<u64>,
}

/// One traced process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessReport {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// Running or ended.
    pub state: ProcessState,
    /// The allocator library probed.
    pub allocator: String,
    /// How each of its binaries is unwound (frame pointers or unwind table).
    #[serde(default)]
    pub unwinding: Vec<crate::unwind::loader::BinaryUnwinding>,
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
    /// Sampling mean in bytes (0: exact mode).
    pub sample_bytes: u64,
    /// True when bytes and counts are estimates (sampled mode).
    pub estimated: bool,
    /// Traced processes.
    pub processes: Vec<ProcessReport>,
    /// True when allocations could not be recorded (full maps): bytes may be short.
    pub incomplete: bool,
    /// Why, with the setting to raise (`None` when complete).
    pub incomplete_reason: Option<String>,
    /// The BPF programs' counters, so losses are never silent.
    pub stats: BpfStats,
}

/// The frames a person reads: up to and including `main`, or up to the thread's start
/// (`start_thread` and the `clone` below it), since what lies below is the C library starting
/// the program or thread; with `full`, all of them. Returns them and how many were folded.
pub fn frames_to_show(frames: &[Frame], full: bool) -> (&[Frame], usize) {
    if full {
        return (frames, 0);
    }
    fn name(frame: &Frame) -> &str {
        frame.function.as_deref().unwrap_or_default()
    }
    let end = frames
        .iter()
        .position(|f| name(f) == "main")
        .map(|at| at + 1)
        .or_else(|| {
            frames
                .iter()
                .position(|f| matches!(name(f), "start_thread" | "clone3" | "__clone" | "clone"))
        })
        .unwrap_or(frames.len());
    (&frames[..end], frames.len() - end)
}

/// Merges stacks whose frames are the same source locations: an unrolled loop calls malloc
/// from two addresses of one line, which a person reads as one call site. Frames without line
/// info keep their address, so distinct call sites are never merged by function name alone.
pub fn merge_same_call_sites(stacks: Vec<StackReport>) -> Vec<StackReport> {
    let mut merged: Vec<StackReport> = Vec::with_capacity(stacks.len());
    let mut index: HashMap<(MemoryKind, Vec<FrameIdentity<'_>>), usize> = HashMap::new();
    let identities: Vec<Vec<FrameIdentity<'_>>> = stacks
        .iter()
        .map(|s| s.frames.iter().map(FrameIdentity::of).collect())
        .collect();
    for (stack, identity) in stacks.iter().zip(identities) {
        if stack.frames.is_empty() {
            merged.push(stack.clone());
            continue;
        }
        match index.get(&(stack.kind, identity.clone())) {
            Some(&at) => {
                let into = &mut merged[at];
                if stack.stack_id < into.stack_id {
                    into.stack_id.clone_from(&stack.stack_id);
                }
                into.bytes += stack.bytes;
                into.members.extend_from_slice(&stack.members);
                into.count += stack.count;
                into.oldest_age_ns = into.oldest_age_ns.max(stack.oldest_age_ns);
                into.growth_bytes = into.growth_bytes.saturating_add(stack.growth_bytes);
            }
            None => {
                let _ = index.insert((stack.kind, identity), merged.len());
                merged.push(stack.clone());
            }
        }
    }
    merged
}

/// What makes two frames the same call site.
#[derive(Clone, PartialEq, Eq, Hash)]
enum FrameIdentity<'a> {
    Source {
        function: &'a str,
        file: &'a str,
        line: u32,
    },
    Address(u64),
}

impl<'a> FrameIdentity<'a> {
    fn of(frame: &'a Frame) -> Self {
        match (&frame.function, &frame.file, frame.line) {
            (Some(function), Some(file), Some(line)) => Self::Source {
                function,
                file,
                line,
            },
            _ => Self::Address(frame.module_offset.unwrap_or(frame.addr)),
        }
    }
}

/// Orders stacks by bytes, then count, then id (a stable order for equal stacks) and keeps the
/// top `top` of those holding anything.
pub fn rank(mut stacks: Vec<StackReport>, top: usize) -> Vec<StackReport> {
    stacks.retain(|s| s.bytes > 0 || s.count > 0);
    stacks.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(b.count.cmp(&a.count))
            .then(a.stack_id.cmp(&b.stack_id))
    });
    stacks.truncate(top);
    stacks
}

/// A growth rate for people: "1.0 MiB/s", "12.5 KiB/s", "300 B/s".
pub fn human_rate(bytes_per_second: f64) -> String {
    const KIB: f64 = 1024.0;
    const MIB: f64 = KIB * KIB;
    let magnitude = bytes_per_second.abs();
    if magnitude >= MIB {
        format!("{:.1} MiB/s", bytes_per_second / MIB)
    } else if magnitude >= KIB {
        format!("{:.1} KiB/s", bytes_per_second / KIB)
    } else {
        format!("{bytes_per_second:.0} B/s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(id: &str, bytes: u64, count: u64) -> StackReport {
        StackReport {
            stack_id: id.to_owned(),
            pid: 1,
            kind: MemoryKind::Heap,
            bytes,
            count,
            oldest_age_ns: 0,
            growth_bytes: 0,
            growth: None,
            frames: Arc::from(Vec::new()),
            members: Vec::new(),
        }
    }

    #[test]
    fn ranking_puts_most_bytes_first_and_cuts_at_top() {
        let ranked = rank(
            vec![stack("a", 10, 1), stack("b", 30, 1), stack("c", 20, 5)],
            2,
        );
        let ids: Vec<&str> = ranked.iter().map(|s| s.stack_id.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
    }

    fn frame(function: &str, line: Option<u32>, offset: u64) -> Frame {
        Frame {
            addr: offset,
            function: Some(function.to_owned()),
            file: line.map(|_| "leak.c".to_owned()),
            line,
            module: Some("/bin/leak".to_owned()),
            module_offset: Some(offset),
            inlined: false,
        }
    }

    fn stack_with(id: &str, bytes: u64, frames: Vec<Frame>) -> StackReport {
        StackReport {
            frames: Arc::from(frames),
            ..stack(id, bytes, 1)
        }
    }

    #[test]
    fn stacks_at_the_same_source_lines_merge_into_one_call_site() {
        let merged = merge_same_call_sites(vec![
            stack_with(
                "a",
                10,
                vec![frame("leak", Some(5), 0x10), frame("main", Some(9), 0x40)],
            ),
            stack_with(
                "b",
                20,
                vec![frame("leak", Some(5), 0x18), frame("main", Some(9), 0x40)],
            ),
            stack_with(
                "c",
                40,
                vec![frame("leak", Some(6), 0x20), frame("main", Some(9), 0x40)],
            ),
        ]);
        let summary: Vec<(&str, u64, u64)> = merged
            .iter()
            .map(|s| (s.stack_id.as_str(), s.bytes, s.count))
            .collect();
        assert_eq!(summary, [("a", 30, 2), ("c", 40, 1)]);
    }

    #[test]
    fn frames_without_line_info_merge_only_at_the_same_address() {
        let merged = merge_same_call_sites(vec![
            stack_with("a", 10, vec![frame("leak", None, 0x10)]),
            stack_with("b", 20, vec![frame("leak", None, 0x18)]),
        ]);
        assert_eq!(merged.len(), 2);
    }

    #[test]
    fn ranking_breaks_ties_by_count_then_id_and_drops_empty_stacks() {
        let ranked = rank(
            vec![
                stack("z", 8, 1),
                stack("y", 8, 2),
                stack("x", 8, 1),
                stack("e", 0, 0),
            ],
            10,
        );
        let ids: Vec<&str> = ranked.iter().map(|s| s.stack_id.as_str()).collect();
        assert_eq!(ids, ["y", "x", "z"]);
    }
}
