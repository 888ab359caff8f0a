//! `tracerctl diff`: two snapshots of a pod's call sites matched by what they name (the same
//! code in another process, or after a restart, has other addresses), with the change.

use std::{collections::HashMap, fmt::Write as _};

use serde::Serialize;
use tracer_proto::v1 as pb;

use super::{
    human_bytes,
    report::{FrameView, frames_to_show},
};

/// One side of a diff, as fetched.
#[derive(Debug)]
pub(crate) struct DiffSide {
    /// `evidence 3 (oom_kill)` or `shop/api-0 now`.
    pub(crate) source: String,
    /// When it was taken (RFC 3339), or `-`.
    pub(crate) taken_at: String,
    /// The container it is about, when one.
    pub(crate) container: Option<String>,
    /// Stacks there were in all (the record or report may hold only the top ones).
    pub(crate) stacks_total: u32,
    /// The stacks it holds.
    pub(crate) stacks: Vec<SideStack>,
}

/// A stack of one side.
#[derive(Debug)]
pub(crate) struct SideStack {
    pub(crate) frames: Vec<pb::Frame>,
    pub(crate) bytes: u64,
    /// Allocations, or pages for a growth profile.
    pub(crate) count: u64,
}

/// The diff as printed (`-o json` keeps these names).
#[derive(Debug, Serialize)]
pub(crate) struct DiffView<'a> {
    /// `outstanding` (allocations) or `growth` (resident growth by first touch; counts are
    /// pages).
    kind: &'static str,
    a: SideView<'a>,
    b: SideView<'a>,
    /// Total bytes of the stacks each side holds, and the change.
    bytes_a: u64,
    bytes_b: u64,
    bytes_change: i64,
    /// Call sites, largest growth first.
    stacks: Vec<StackDiffView<'a>>,
}

/// What one side was.
#[derive(Debug, Serialize)]
struct SideView<'a> {
    source: &'a str,
    taken_at: &'a str,
    container: Option<&'a str>,
    /// Stacks this side holds, and how many there were: when fewer are held, a call site
    /// missing from it may have been below the cut rather than absent.
    stacks_held: usize,
    stacks_total: u32,
}

/// One call site in both sides.
#[derive(Debug, Serialize)]
struct StackDiffView<'a> {
    bytes_a: u64,
    bytes_b: u64,
    bytes_change: i64,
    count_a: u64,
    count_b: u64,
    count_change: i64,
    /// Innermost first.
    frames: Vec<FrameView<'a>>,
}

impl<'a> DiffView<'a> {
    /// Matches the two sides' stacks (merged over processes) by their frames' names.
    pub(crate) fn new(a: &'a DiffSide, b: &'a DiffSide, growth: bool) -> Self {
        let mut sites: Vec<StackDiffView<'a>> = Vec::new();
        let mut index: HashMap<Vec<FrameKey<'a>>, usize> = HashMap::new();
        for (side, stacks) in [(0, &a.stacks), (1, &b.stacks)] {
            for stack in stacks {
                let key: Vec<FrameKey<'a>> = stack.frames.iter().map(FrameKey::of).collect();
                let at = *index.entry(key).or_insert_with(|| {
                    sites.push(StackDiffView {
                        bytes_a: 0,
                        bytes_b: 0,
                        bytes_change: 0,
                        count_a: 0,
                        count_b: 0,
                        count_change: 0,
                        frames: stack.frames.iter().map(FrameView::from).collect(),
                    });
                    sites.len() - 1
                });
                let site = &mut sites[at];
                if side == 0 {
                    site.bytes_a += stack.bytes;
                    site.count_a += stack.count;
                } else {
                    site.bytes_b += stack.bytes;
                    site.count_b += stack.count;
                }
            }
        }
        for site in &mut sites {
            site.bytes_change = change(site.bytes_a, site.bytes_b);
            site.count_change = change(site.count_a, site.count_b);
        }
        sites.sort_by(|x, y| {
            (y.bytes_change, y.bytes_b, y.count_change).cmp(&(
                x.bytes_change,
                x.bytes_b,
                x.count_change,
            ))
        });
        let bytes_a = a.stacks.iter().map(|s| s.bytes).sum();
        let bytes_b = b.stacks.iter().map(|s| s.bytes).sum();
        Self {
            kind: if growth { "growth" } else { "outstanding" },
            a: SideView::of(a),
            b: SideView::of(b),
            bytes_a,
            bytes_b,
            bytes_change: change(bytes_a, bytes_b),
            stacks: sites,
        }
    }
}

impl<'a> SideView<'a> {
    fn of(side: &'a DiffSide) -> Self {
        Self {
            source: &side.source,
            taken_at: &side.taken_at,
            container: side.container.as_deref(),
            stacks_held: side.stacks.len(),
            stacks_total: side.stacks_total,
        }
    }
}

/// What a frame names: function, file and line when symbolized, else the module and offset
/// (the same in every process of a binary), else the address.
#[derive(Debug, PartialEq, Eq, Hash)]
enum FrameKey<'a> {
    Symbol(&'a str, &'a str, u32, bool),
    Module(&'a str, u64),
    Address(u64),
}

impl<'a> FrameKey<'a> {
    fn of(frame: &'a pb::Frame) -> Self {
        if !frame.function.is_empty() {
            Self::Symbol(&frame.function, &frame.file, frame.line, frame.inlined)
        } else if !frame.module.is_empty() {
            Self::Module(&frame.module, frame.module_offset)
        } else {
            Self::Address(frame.address)
        }
    }
}

fn change(from: u64, to: u64) -> i64 {
    let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    signed(to).saturating_sub(signed(from))
}

/// `+1.5 MiB` or `-512 B`.
fn signed_bytes(change: i64) -> String {
    let sign = if change < 0 { '-' } else { '+' };
    format!("{sign}{}", human_bytes(change.unsigned_abs()))
}

/// The diff as a table: the two sides, the totals, then each call site.
pub(crate) fn table(diff: &DiffView<'_>, full_stacks: bool) -> String {
    let mut out = String::new();
    let what = match diff.kind {
        "growth" => "resident growth by first touch (counts are pages)",
        _ => "outstanding allocations",
    };
    for (name, side) in [("A", &diff.a), ("B", &diff.b)] {
        let _ = writeln!(
            out,
            "{name}: {} at {}{}",
            side.source,
            side.taken_at,
            side.container
                .map(|c| format!(", container {c}"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(
        out,
        "{what}: {} -> {} ({})",
        human_bytes(diff.bytes_a),
        human_bytes(diff.bytes_b),
        signed_bytes(diff.bytes_change)
    );
    for (name, side) in [("A", &diff.a), ("B", &diff.b)] {
        if (side.stacks_held as u64) < u64::from(side.stacks_total) {
            let _ = writeln!(
                out,
                "  note: {name} holds its top {} of {} stacks: a call site missing from it may \
                 have been below the cut",
                side.stacks_held, side.stacks_total
            );
        }
    }
    let _ = writeln!(
        out,
        "  {:>12} {:>12} {:>12} {:>14} {:>14} CALL SITE",
        "CHANGE", "BYTES A", "BYTES B", "COUNT A->B", ""
    );
    for site in &diff.stacks {
        let (shown, folded) = frames_to_show(&site.frames, full_stacks);
        let mut frames = shown.iter();
        let call_site = frames
            .next()
            .map_or_else(|| "[stack lost]".to_owned(), FrameView::display_name);
        let _ = writeln!(
            out,
            "  {:>12} {:>12} {:>12} {:>14} {:>14} {call_site}",
            signed_bytes(site.bytes_change),
            site.bytes_a,
            site.bytes_b,
            format!("{}->{}", site.count_a, site.count_b),
            format!("({:+})", site.count_change),
        );
        for frame in frames.take(8) {
            let _ = writeln!(out, "  {:>68} {}", "", frame.display_name());
        }
        if folded > 0 {
            let _ = writeln!(
                out,
                "  {:>68} ({folded} C library frames below; --full-stacks shows them)",
                ""
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(address: u64, function: &str, line: u32) -> pb::Frame {
        pb::Frame {
            address,
            function: function.to_owned(),
            file: "/src/app.c".to_owned(),
            line,
            module: "/app/server".to_owned(),
            module_offset: address & 0xfff,
            inlined: false,
        }
    }

    fn stack(frames: Vec<pb::Frame>, bytes: u64, count: u64) -> SideStack {
        SideStack {
            frames,
            bytes,
            count,
        }
    }

    fn side(source: &str, stacks: Vec<SideStack>, stacks_total: u32) -> DiffSide {
        DiffSide {
            source: source.to_owned(),
            taken_at: "2026-12-08T02:17:00Z".to_owned(),
            container: Some("app".to_owned()),
            stacks_total,
            stacks,
        }
    }

    /// Before: `cache_put` holds 4 MiB in one process, `load` 1 MiB. After, in two new
    /// processes at other addresses: `cache_put` 3 MiB + 3 MiB, `parse` 3 MiB, `load` gone.
    fn before_and_after() -> (DiffSide, DiffSide) {
        let put = |base: u64| {
            vec![
                frame(base + 0x10, "cache_put", 12),
                frame(base + 0x80, "main", 40),
            ]
        };
        let before = side(
            "evidence 3 (threshold)",
            vec![
                stack(put(0x5500_0000_0000), 4 << 20, 4),
                stack(vec![frame(0x5500_0000_0200, "load", 7)], 1 << 20, 1),
            ],
            2,
        );
        let after = side(
            "shop/api-0 now",
            vec![
                stack(put(0x5600_0000_0000), 3 << 20, 3),
                stack(put(0x5700_0000_0000), 3 << 20, 3),
                stack(vec![frame(0x5600_0000_0300, "parse", 9)], 3 << 20, 3),
            ],
            40,
        );
        (before, after)
    }

    #[test]
    fn call_sites_match_across_processes_by_name_and_rank_by_growth() {
        let (before, after) = before_and_after();
        let diff = DiffView::new(&before, &after, false);
        let rows: Vec<(&str, u64, u64, i64, i64)> = diff
            .stacks
            .iter()
            .map(|s| {
                let site = s.frames[0].display_name();
                let name = ["cache_put", "parse", "load"]
                    .into_iter()
                    .find(|n| site.starts_with(n))
                    .expect("a known site");
                (name, s.bytes_a, s.bytes_b, s.bytes_change, s.count_change)
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("parse", 0, 3 << 20, 3 << 20, 3),
                ("cache_put", 4 << 20, 6 << 20, 2 << 20, 2),
                ("load", 1 << 20, 0, -(1 << 20), -1),
            ]
        );
        assert_eq!(diff.bytes_change, 4 << 20);
    }

    #[test]
    fn the_table_shows_both_sides_the_change_and_a_cut_side() {
        let (before, after) = before_and_after();
        let table = table(&DiffView::new(&before, &after, false), false);
        let expected = "\
A: evidence 3 (threshold) at 2026-12-08T02:17:00Z, container app
B: shop/api-0 now at 2026-12-08T02:17:00Z, container app
outstanding allocations: 5.0 MiB -> 9.0 MiB (+4.0 MiB)
  note: B holds its top 3 of 40 stacks: a call site missing from it may have been below the cut
        CHANGE      BYTES A      BYTES B     COUNT A->B                CALL SITE
      +3.0 MiB            0      3145728           0->3           (+3) parse (app.c:9)
      +2.0 MiB      4194304      6291456           4->6           (+2) cache_put (app.c:12)
                                                                       main (app.c:40)
      -1.0 MiB      1048576            0           1->0           (-1) load (app.c:7)
";
        assert_eq!(table, expected);
    }
}
