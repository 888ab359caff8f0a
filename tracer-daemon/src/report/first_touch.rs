//! Resident growth by first touch: where a container's anonymous memory became resident, by
//! the user stack of the page fault that first touched each page (the kernel side is
//! `tracer-ebpf/src/fault.rs`). Any program has it, traced or not, with no uprobes.
//!
//! It is its own kind of report, never mixed with outstanding-allocation bytes: a page counts
//! when it is first touched, not when it is allocated, and a free is not seen (a page the
//! allocator reuses after a free does not fault again). So these bytes only grow; what they
//! say is where resident memory grew, in the last window and since the process was watched.
//! Pages given back and touched again (an allocator trimming its heap top) are counted apart
//! as retouched, so churn does not outrank a leak.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tracer_common::{FaultKey, FaultTotals};

use crate::{
    report::growth::{GrowthConfig, GrowthTracker},
    symbolize::Frame,
};

/// One call site's first-touch growth (stacks of the container's processes merged by their
/// frames).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FirstTouchStack {
    /// Bytes first touched since the process was watched.
    pub bytes: u64,
    /// Bytes first touched within the last window.
    pub window_bytes: u64,
    /// Pages behind `bytes`.
    pub pages: u64,
    /// Bytes touched again after the allocator gave them back (churn, not growth).
    pub retouched_bytes: u64,
    /// The processes it was seen in.
    pub pids: Vec<u32>,
    /// Frames, the faulting instruction first.
    pub frames: Vec<Frame>,
}

impl FirstTouchStack {
    /// The frame that names the call site: the first one outside the C library, the C++
    /// runtime, an allocator library and the Go runtime (a fault is usually taken in memset or
    /// the allocator, for the code that called it). The first frame when all are.
    pub fn site(&self) -> Option<&Frame> {
        const RUNTIME_LIBRARIES: [&str; 8] = [
            "libc.so",
            "libc-",
            "ld-linux",
            "libstdc++",
            "libjemalloc",
            "libtcmalloc",
            "libmimalloc",
            "ld-musl",
        ];
        let runtime = |frame: &Frame| {
            let module = frame.module.as_deref().unwrap_or("");
            let file = module.rsplit('/').next().unwrap_or(module);
            RUNTIME_LIBRARIES.iter().any(|l| file.starts_with(l))
                || frame
                    .function
                    .as_deref()
                    .is_some_and(|f| f.starts_with("runtime."))
        };
        self.frames
            .iter()
            .find(|f| !runtime(f))
            .or(self.frames.first())
    }
}

/// A container's (or process's) growth profile.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GrowthProfile {
    /// The window `window_bytes` covers, ns.
    pub window_ns: u64,
    /// First-touch bytes over every stack.
    pub total_bytes: u64,
    /// First-touch bytes within the window over every stack.
    pub total_window_bytes: u64,
    /// Retouched bytes over every stack.
    pub retouched_bytes: u64,
    /// The top call sites.
    pub stacks: Vec<FirstTouchStack>,
    /// Stacks (per process) before the top-N cut.
    pub stacks_total: usize,
    /// One new page in this many was recorded, weighted by it: the bytes and pages are
    /// estimates unless it is 1 (0 in evidence stored before sampling: exact).
    #[serde(default)]
    pub sampled_one_page_in: u32,
}

/// Order of a growth profile's stacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FirstTouchOrder {
    /// Most bytes first touched within the window first: where memory grows now.
    #[default]
    Window,
    /// Most bytes since the process was watched first: where the memory went (at an OOM kill).
    Total,
}

/// Each (process, stack)'s cumulative first-touch bytes over the sliding window, so the
/// bytes of the last window are the newest sample less the oldest.
#[derive(Debug)]
pub struct FirstTouchWindows {
    windows: GrowthTracker<(u32, u64)>,
    /// When each tracked stack was first seen: one first seen within the window counts from 0
    /// (everything it has was touched within the window).
    first_seen_ns: HashMap<(u32, u64), u64>,
    newest_ns: u64,
    window_ns: u64,
    keep: usize,
}

impl FirstTouchWindows {
    /// Windows of `config.window_ns`, for the `keep` largest stacks.
    pub fn new(config: GrowthConfig, keep: usize) -> Self {
        Self {
            windows: GrowthTracker::new(config),
            first_seen_ns: HashMap::new(),
            newest_ns: 0,
            window_ns: config.window_ns,
            keep,
        }
    }

    /// One round of the kernel's totals at `now_ns`.
    pub fn record(&mut self, now_ns: u64, totals: &[(FaultKey, FaultTotals)]) {
        let mut largest: Vec<((u32, u64), u64)> = totals
            .iter()
            .map(|(k, t)| ((k.tgid, k.stack_id), t.bytes))
            .collect();
        if largest.len() > self.keep {
            largest.select_nth_unstable_by(self.keep, |a, b| b.1.cmp(&a.1));
            largest.truncate(self.keep);
        }
        let first_round = self.newest_ns == 0;
        for &(key, _) in &largest {
            // Stacks there at the first round had their bytes before it.
            let _ = self
                .first_seen_ns
                .entry(key)
                .or_insert(if first_round { 0 } else { now_ns });
        }
        self.windows.record(now_ns, largest);
        self.newest_ns = now_ns;
        let windows = &self.windows;
        self.first_seen_ns.retain(|key, _| windows.contains(key));
    }

    /// Bytes first touched at a stack within the window (0 when it is not tracked).
    pub fn window_bytes(&self, pid: u32, stack_id: u64) -> u64 {
        let key = (pid, stack_id);
        match self.first_seen_ns.get(&key) {
            Some(&seen) if seen > 0 && self.newest_ns.saturating_sub(seen) < self.window_ns => {
                self.windows.newest(&key)
            }
            _ => self.windows.change(&key),
        }
    }

    /// The window, ns.
    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    /// Forgets an ended process.
    pub fn forget(&mut self, pid: u32) {
        self.windows.forget(|&(p, _)| p == pid);
        self.first_seen_ns.retain(|&(p, _), _| p != pid);
    }
}

/// One (process, stack) with its totals and frames, as read for a profile.
pub struct RawFirstTouch {
    /// Process.
    pub pid: u32,
    /// Its totals.
    pub totals: FaultTotals,
    /// Bytes of the window.
    pub window_bytes: u64,
    /// Symbolized frames.
    pub frames: Vec<Frame>,
}

/// Merges stacks by call site (the same frames in several processes of one binary), ranks
/// them and keeps the top `top`.
pub fn assemble(
    raw: Vec<RawFirstTouch>,
    window_ns: u64,
    order: FirstTouchOrder,
    top: usize,
) -> GrowthProfile {
    let mut profile = GrowthProfile {
        window_ns,
        ..GrowthProfile::default()
    };
    let mut sites: HashMap<Vec<(Option<String>, u64)>, FirstTouchStack> = HashMap::new();
    for stack in raw {
        profile.total_bytes += stack.totals.bytes;
        profile.total_window_bytes += stack.window_bytes;
        profile.retouched_bytes += stack.totals.retouched_bytes;
        let key = stack
            .frames
            .iter()
            .map(|f| (f.module.clone(), f.module_offset.unwrap_or(f.addr)))
            .collect();
        let site = sites.entry(key).or_insert_with(|| FirstTouchStack {
            frames: stack.frames,
            ..FirstTouchStack::default()
        });
        site.bytes += stack.totals.bytes;
        site.window_bytes += stack.window_bytes;
        site.pages += stack.totals.pages;
        site.retouched_bytes += stack.totals.retouched_bytes;
        if !site.pids.contains(&stack.pid) {
            site.pids.push(stack.pid);
        }
    }
    let mut stacks: Vec<FirstTouchStack> = sites
        .into_values()
        .filter(|s| s.bytes > 0 || s.retouched_bytes > 0)
        .collect();
    stacks.sort_by(|a, b| {
        let rank = |s: &FirstTouchStack| match order {
            FirstTouchOrder::Window => (s.window_bytes, s.bytes),
            FirstTouchOrder::Total => (s.bytes, s.window_bytes),
        };
        rank(b).cmp(&rank(a)).then_with(|| a.pids.cmp(&b.pids))
    });
    profile.stacks_total = stacks.len();
    stacks.truncate(top);
    profile.stacks = stacks;
    profile
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, offset: u64) -> Frame {
        Frame {
            addr: 0x1000 + offset,
            function: Some(function.into()),
            file: None,
            line: None,
            module: Some("/app".into()),
            module_offset: Some(offset),
            inlined: false,
        }
    }

    fn raw(pid: u32, function: &str, bytes: u64, window: u64, retouched: u64) -> RawFirstTouch {
        RawFirstTouch {
            pid,
            totals: FaultTotals {
                bytes,
                pages: bytes / 4096,
                retouched_bytes: retouched,
                ..FaultTotals::default()
            },
            window_bytes: window,
            frames: vec![frame(function, function.len() as u64)],
        }
    }

    #[test]
    fn call_sites_merge_across_processes_and_rank_by_the_window_or_the_total() {
        let stacks = || {
            vec![
                raw(1, "leak_records", 8 << 20, 4 << 20, 0),
                raw(2, "leak_records", 8 << 20, 4 << 20, 0),
                raw(1, "warm_cache", 32 << 20, 0, 0),
                raw(1, "trim_and_retouch", 4096, 0, 512 << 20),
            ]
        };
        let now = assemble(stacks(), 60, FirstTouchOrder::Window, 10);
        assert_eq!(
            now.stacks[0].frames[0].function.as_deref(),
            Some("leak_records")
        );
        assert_eq!(now.stacks[0].bytes, 16 << 20);
        assert_eq!(now.stacks[0].window_bytes, 8 << 20);
        assert_eq!(now.stacks[0].pids, [1, 2]);
        assert_eq!(now.stacks_total, 3);
        assert_eq!(now.retouched_bytes, 512 << 20);
        let since_start = assemble(stacks(), 60, FirstTouchOrder::Total, 1);
        assert_eq!(
            since_start.stacks[0].frames[0].function.as_deref(),
            Some("warm_cache")
        );
        assert_eq!(since_start.stacks.len(), 1);
        assert_eq!(
            since_start.total_bytes,
            (16 << 20) + (32 << 20) + 4096,
            "totals cover every stack, not only the top"
        );
    }

    #[test]
    fn the_site_is_the_caller_of_libc_and_the_go_runtime() {
        let libc = Frame {
            module: Some("/usr/lib/x86_64-linux-gnu/libc.so.6".into()),
            function: Some("__memset_avx2_unaligned_erms".into()),
            ..frame("x", 1)
        };
        let go_runtime = frame("runtime.memclrNoHeapPointers", 2);
        let leak = frame("leak_records", 3);
        let stack = FirstTouchStack {
            frames: vec![libc.clone(), go_runtime, leak],
            ..FirstTouchStack::default()
        };
        assert_eq!(
            stack.site().and_then(|f| f.function.as_deref()),
            Some("leak_records")
        );
        let only_libc = FirstTouchStack {
            frames: vec![libc],
            ..FirstTouchStack::default()
        };
        assert_eq!(
            only_libc.site().and_then(|f| f.function.as_deref()),
            Some("__memset_avx2_unaligned_erms")
        );
    }

    #[test]
    fn window_bytes_are_the_change_over_the_window() {
        let mut windows = FirstTouchWindows::new(
            GrowthConfig {
                window_ns: 10,
                ..GrowthConfig::default()
            },
            2,
        );
        let key = |tgid, stack_id| FaultKey {
            cgroup_id: 7,
            tgid,
            _pad: 0,
            stack_id,
        };
        let totals = |bytes| FaultTotals {
            bytes,
            ..FaultTotals::default()
        };
        for (now, bytes) in [(1, 100), (5, 300), (9, 700), (13, 900)] {
            windows.record(now, &[(key(1, 1), totals(bytes)), (key(1, 2), totals(5))]);
        }
        // Samples at 5, 9 and 13 are within 10 ns of 13: 900 - 300.
        assert_eq!(windows.window_bytes(1, 1), 600);
        assert_eq!(windows.window_bytes(1, 2), 0, "flat");
        windows.record(14, &[(key(1, 1), totals(900)), (key(1, 3), totals(64))]);
        assert_eq!(
            windows.window_bytes(1, 3),
            64,
            "new within the window: all of it"
        );
        windows.forget(1);
        assert_eq!(windows.window_bytes(1, 1), 0);
    }
}
