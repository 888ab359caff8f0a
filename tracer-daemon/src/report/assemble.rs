//! One assembly of a leak report's stacks, for every caller (`trace`, the agent's pod and
//! container reports, evidence): from the raw per-stack numbers to ranked, symbolized stacks
//! with growth, and the totals and leak rates over all of them. Pure: the caller hands in how
//! to symbolize and where growth comes from.

use super::{
    MemoryKind, StackReport,
    growth::{self, Growth},
    pod::{self, SortBy},
};

/// One stack's numbers before symbolization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawStack {
    /// The process.
    pub pid: u32,
    /// Stack id.
    pub stack_id: u64,
    /// Heap or mmap.
    pub kind: MemoryKind,
    /// Outstanding bytes (estimated in sampled mode).
    pub bytes: u64,
    /// Outstanding allocations (estimated in sampled mode).
    pub count: u64,
    /// Age of the oldest outstanding allocation, ns; `None` until looked up (see
    /// `Tracer::symbolize_stacks`).
    pub oldest_age_ns: Option<u64>,
}

/// Keeps the `n` stacks with the most bytes (ties by id), in that order; O(stacks).
pub fn keep_largest(stacks: &mut Vec<RawStack>, n: usize) {
    let order =
        |a: &RawStack, b: &RawStack| b.bytes.cmp(&a.bytes).then(a.stack_id.cmp(&b.stack_id));
    if stacks.len() > n {
        let _ = stacks.select_nth_unstable_by(n, order);
        stacks.truncate(n);
    }
    stacks.sort_unstable_by(order);
}

/// Stacks symbolized for a report of `top`: a margin for stacks that merge at one call site.
pub fn candidates(top: usize) -> usize {
    top.saturating_mul(4).saturating_add(16)
}

/// A set of stacks made into a report's part.
#[derive(Clone, Debug, Default)]
pub struct Assembled {
    /// Outstanding bytes over every stack (not just those shown).
    pub outstanding_bytes: u64,
    /// Outstanding allocations over every stack.
    pub outstanding_count: u64,
    /// Stacks holding memory before the top-N cut.
    pub stacks_total: usize,
    /// The top stacks, symbolized, merged by call site, ranked.
    pub stacks: Vec<StackReport>,
    /// Sum of the rates of the stacks classed growing, bytes per second.
    pub leak_bytes_per_second: f64,
    /// Sum of the measured rates of the stacks too new to class, bytes per second.
    pub provisional_leak_bytes_per_second: f64,
    /// When the first of those will be classed, ns.
    pub classed_in_ns: Option<u64>,
}

/// Assembles raw stacks into a report's part: totals and leak rates over all of them, then the
/// top `top` by `sort_by` symbolized (a few more are symbolized first, so stacks at one call
/// site can merge before the cut). `growth_of` gives a stack's growth when it is tracked;
/// `top` 0 gives the totals alone.
pub fn assemble(
    mut raw: Vec<RawStack>,
    growth_of: &dyn Fn(u32, u64) -> Option<Growth>,
    sort_by: SortBy,
    top: usize,
    symbolize: &mut dyn FnMut(&[RawStack]) -> Vec<StackReport>,
) -> Assembled {
    let outstanding_bytes = raw.iter().map(|s| s.bytes).sum();
    let outstanding_count = raw.iter().map(|s| s.count).sum();
    let stacks_total = raw.len();
    let growths: Vec<Growth> = raw
        .iter()
        .filter_map(|s| growth_of(s.pid, s.stack_id))
        .collect();
    // The leak rate counts every growing stack, shown or not.
    let leak_bytes_per_second = pod::leak_rate_of(&growths);
    let (provisional_leak_bytes_per_second, classed_in_ns) = pod::provisional_rate_of(&growths);
    match sort_by {
        SortBy::Bytes => keep_largest(&mut raw, candidates(top)),
        SortBy::Growth => {
            let rate =
                |s: &RawStack| growth_of(s.pid, s.stack_id).map_or(0.0, |g| g.bytes_per_second);
            let by_rate = |a: &RawStack, b: &RawStack| rate(b).total_cmp(&rate(a));
            if raw.len() > candidates(top) {
                let _ = raw.select_nth_unstable_by(candidates(top), by_rate);
                raw.truncate(candidates(top));
            }
        }
    }
    if top == 0 {
        raw.clear();
    }
    let mut stacks = symbolize(&raw);
    for stack in &mut stacks {
        let members: Vec<Growth> = stack
            .members
            .iter()
            .filter_map(|&id| growth_of(stack.pid, id))
            .collect();
        stack.growth = growth::combine(&members);
    }
    Assembled {
        outstanding_bytes,
        outstanding_count,
        stacks_total,
        stacks: pod::rank_stacks(stacks, sort_by, top),
        leak_bytes_per_second,
        provisional_leak_bytes_per_second,
        classed_in_ns,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::report::growth::GrowthClass;

    fn raw(stack_id: u64, bytes: u64) -> RawStack {
        RawStack {
            pid: 1,
            stack_id,
            kind: MemoryKind::Heap,
            bytes,
            count: 1,
            oldest_age_ns: Some(0),
        }
    }

    fn symbolized(raw: &[RawStack]) -> Vec<StackReport> {
        raw.iter()
            .map(|r| StackReport {
                stack_id: format!("{:016x}", r.stack_id),
                pid: r.pid,
                kind: r.kind,
                bytes: r.bytes,
                count: r.count,
                oldest_age_ns: 0,
                growth_bytes: 0,
                growth: None,
                frames: Arc::from(Vec::new()),
                members: vec![r.stack_id],
            })
            .collect()
    }

    fn growth(rate: f64, class: GrowthClass) -> Growth {
        Growth {
            bytes_per_second: rate,
            recent_bytes_per_second: rate,
            class,
            samples: 10,
            span_ns: 1,
            classed_in_ns: if class == GrowthClass::InsufficientData {
                5
            } else {
                0
            },
        }
    }

    #[test]
    fn totals_and_rates_count_every_stack_and_only_the_top_are_symbolized() {
        let stacks: Vec<RawStack> = (1..=100).map(|id| raw(id, id * 10)).collect();
        let growth_of = |_: u32, id: u64| match id {
            1 => Some(growth(7.0, GrowthClass::Growing)),
            2 => Some(growth(5.0, GrowthClass::InsufficientData)),
            _ => None,
        };
        let mut symbolized_count = 0;
        let assembled = assemble(stacks, &growth_of, SortBy::Bytes, 3, &mut |raw| {
            symbolized_count = raw.len();
            symbolized(raw)
        });
        assert_eq!(
            assembled.outstanding_bytes,
            (1..=100).map(|id| id * 10).sum::<u64>()
        );
        assert_eq!(
            (assembled.outstanding_count, assembled.stacks_total),
            (100, 100)
        );
        // The growing stack is far from the top by bytes, and still counted.
        assert_eq!(assembled.leak_bytes_per_second, 7.0);
        assert_eq!(
            (
                assembled.provisional_leak_bytes_per_second,
                assembled.classed_in_ns
            ),
            (5.0, Some(5))
        );
        assert_eq!(symbolized_count, candidates(3));
        let ids: Vec<&str> = assembled
            .stacks
            .iter()
            .map(|s| s.stack_id.as_str())
            .collect();
        assert_eq!(
            ids,
            ["0000000000000064", "0000000000000063", "0000000000000062"]
        );
    }

    #[test]
    fn sorting_by_growth_puts_the_fastest_first_and_top_zero_gives_totals_alone() {
        let stacks = vec![raw(1, 1000), raw(2, 10)];
        let growth_of = |_: u32, id: u64| (id == 2).then(|| growth(99.0, GrowthClass::Growing));
        let assembled = assemble(
            stacks.clone(),
            &growth_of,
            SortBy::Growth,
            1,
            &mut symbolized,
        );
        assert_eq!(assembled.stacks[0].stack_id, "0000000000000002");
        let totals = assemble(stacks, &growth_of, SortBy::Bytes, 0, &mut symbolized);
        assert!(totals.stacks.is_empty());
        assert_eq!(totals.outstanding_bytes, 1010);
    }
}
