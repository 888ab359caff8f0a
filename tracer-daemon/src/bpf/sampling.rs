//! Sampled mode's tables, computed here because BPF has no floating point (see tracer-ebpf's
//! `sampling`), and the weight of a recorded allocation from the same table, so what the daemon
//! estimates from scanned allocations matches the totals the BPF programs keep.

use std::sync::LazyLock;

use aya::{
    Ebpf,
    maps::{Array, MapData},
};
use tracer_common::{
    SAMPLING_FIXED_ONE, SAMPLING_TABLE_LEN, SAMPLING_WEIGHT_STEPS, allocation_weights, names,
};

use super::LoadError;

/// `value` in the tables' fixed point.
fn fixed(value: f64) -> u32 {
    (value * SAMPLING_FIXED_ONE as f64)
        .round()
        .min(f64::from(u32::MAX)) as u32
}

/// Entry `index` of `SAMPLE_DISTANCES`: `-ln(u)` at the middle of the index-th of the table's
/// equal steps of u.
fn distance_entry(index: u32) -> u32 {
    fixed(-((f64::from(index) + 0.5) / f64::from(SAMPLING_TABLE_LEN)).ln())
}

/// Entry `k` of `SAMPLE_WEIGHTS`: `r / (1 - e^-r)` at `r = k / SAMPLING_WEIGHT_STEPS`.
fn weight_entry(k: u32) -> u32 {
    let r = f64::from(k) / SAMPLING_WEIGHT_STEPS as f64;
    fixed(if k == 0 { 1.0 } else { r / (1.0 - (-r).exp()) })
}

/// `SAMPLE_WEIGHTS` as the BPF programs read it.
static WEIGHTS: LazyLock<Vec<u32>> =
    LazyLock::new(|| (0..SAMPLING_TABLE_LEN).map(weight_entry).collect());

/// What one recorded allocation of `size_bytes` adds to its stack's totals in the kernel, as
/// [`allocation_weights`] computes it there: (bytes, count; in sampled mode, `sample_bytes` >
/// 0, the count is in thousandths of an allocation).
pub fn weights(size_bytes: u64, sample_bytes: u64) -> (u64, u64) {
    allocation_weights(size_bytes, sample_bytes, |k| {
        WEIGHTS
            .get(k as usize)
            .copied()
            .unwrap_or(SAMPLING_FIXED_ONE as u32)
    })
}

/// Fills the object's `SAMPLE_DISTANCES` and `SAMPLE_WEIGHTS` tables.
pub(super) fn fill_tables(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let tables = [
        (names::SAMPLE_DISTANCES, distance_entry as fn(u32) -> u32),
        (names::SAMPLE_WEIGHTS, weight_entry),
    ];
    for (name, entry) in tables {
        let map = ebpf.map_mut(name).ok_or(LoadError::MissingMap { name })?;
        let error = |source| LoadError::Map {
            name,
            source: Box::new(source),
        };
        let mut array: Array<&mut MapData, u32> = Array::try_from(map).map_err(error)?;
        for index in 0..SAMPLING_TABLE_LEN {
            array.set(index, entry(index), 0).map_err(error)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tracer_common::COUNT_SCALE;

    use super::*;

    /// What a sampled allocation stands for without the table's steps: size / p bytes, 1 / p
    /// allocations, p = 1 - exp(-size / mean).
    fn exact(size: u64, mean: u64) -> (f64, f64) {
        let p = -(-(size as f64 / mean as f64)).exp_m1();
        (size as f64 / p, 1.0 / p)
    }

    #[test]
    fn sampled_weights_are_within_one_percent_of_size_over_probability() {
        let mean = 524_288;
        for size in [
            1,
            16,
            1000,
            4096,
            100_000,
            mean,
            3 * mean + 17,
            15 * mean,
            40 * mean,
        ] {
            let (bytes, count) = weights(size, mean);
            let (want_bytes, want_count) = exact(size, mean);
            let count = count as f64 / COUNT_SCALE as f64;
            assert!(
                (bytes as f64 / want_bytes - 1.0).abs() < 0.01,
                "size {size}: {bytes} bytes, want {want_bytes:.0}"
            );
            assert!(
                (count / want_count - 1.0).abs() < 0.01,
                "size {size}: {count} allocations, want {want_count:.4}"
            );
        }
    }

    #[test]
    fn exact_mode_weighs_an_allocation_as_itself() {
        assert_eq!(weights(4096, 0), (4096, COUNT_SCALE));
        assert_eq!(weights(0, 0), (0, COUNT_SCALE));
    }

    #[test]
    fn an_empty_sampled_allocation_stands_for_one_mean() {
        assert_eq!(weights(0, 1000), (1000, COUNT_SCALE));
    }
}
