//! Sampled mode: Poisson sampling on allocated bytes, as tcmalloc and jemalloc heap profiles do.
//!
//! Each thread counts down the bytes until its next sample, drawn from an exponential
//! distribution with the configured mean N; an allocation that reaches it is recorded. An
//! allocation of size s is therefore sampled with probability 1 - exp(-s/N), and recorded with
//! the weight s / (1 - exp(-s/N)) in bytes (and 1 / (1 - exp(-s/N)) allocations), so per-stack
//! totals are unbiased estimates. Unsampled allocations skip all map work; their frees miss in
//! `ALLOCS` after one lookup. BPF has no floating point: both functions come from tables the
//! daemon fills.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use tracer_common::{SAMPLING_FIXED_ONE, SAMPLING_TABLE_LEN, allocation_weights};

use crate::maps::{SAMPLE_DISTANCES, SAMPLE_WEIGHTS};

/// A fresh exponential distance to the next sample with mean `sample_bytes`, in bytes (at
/// least 1).
pub(crate) fn draw_distance(sample_bytes: u64) -> i64 {
    // SAFETY: the helper has no preconditions.
    let index = unsafe { bpf_get_prandom_u32() } % SAMPLING_TABLE_LEN;
    let scaled = SAMPLE_DISTANCES
        .get(index)
        .copied()
        .unwrap_or(SAMPLING_FIXED_ONE as u32);
    // The daemon caps the mean at 2^40 and table entries are below 2^20: no overflow (and no
    // saturating_mul, which needs a 128-bit multiply BPF lacks).
    let distance = sample_bytes.wrapping_mul(u64::from(scaled)) / SAMPLING_FIXED_ONE;
    (distance.max(1)).min(i64::MAX as u64) as i64
}

/// What one allocation of `size` bytes recorded under the mean `sample_bytes` adds to its
/// stack's totals: (bytes, count in thousandths). Exact (mean 0): itself. Sampled: the estimate
/// it stands for (see [`tracer_common::allocation_weights`], which the daemon uses too).
pub(crate) fn weights(size: u64, sample_bytes: u64) -> (u64, u64) {
    allocation_weights(size, sample_bytes, |step| {
        SAMPLE_WEIGHTS
            .get(step)
            .copied()
            .unwrap_or(SAMPLING_FIXED_ONE as u32)
    })
}
