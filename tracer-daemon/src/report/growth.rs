//! Growth of each stack's outstanding bytes over a sliding window.
//!
//! Tells a leak (still growing) from a cache levelling off, churn (stable) or memory being
//! freed; rates are bytes per second, so a memory limit can be turned into a time-to-limit.

use std::hash::Hash;

use foldhash::HashMap;

use serde::{Deserialize, Serialize};

const NANOS_PER_SECOND: f64 = 1e9;

/// A growth must exceed this many residual RMS of the newest half's least-squares line to
/// count (see [`classify`]).
const RECENT_NOISE_SIGMAS: f64 = 3.0;

/// A trend must exceed this many residual RMS of the whole window's line (see [`classify`]).
const TREND_SIGMAS: f64 = 2.5;

/// Tuning of the sliding window.
#[derive(Clone, Copy, Debug)]
pub struct GrowthConfig {
    /// Span of history kept per key, ns; samples this old or older are dropped.
    pub window_ns: u64,
    /// With fewer samples than this a key is [`GrowthClass::InsufficientData`].
    pub min_samples: usize,
    /// Growth smaller than this over a whole window is noise (proportionally less over a
    /// shorter span, i.e. a floor of `min_growth_bytes / window` bytes per second).
    pub min_growth_bytes: u64,
    /// Growth smaller than this fraction of the current bytes over a whole window is noise too
    /// (scaled the same way).
    pub min_growth_fraction: f64,
}

impl Default for GrowthConfig {
    /// 5 min window, 4 samples, 4 KiB or 1% per window.
    fn default() -> Self {
        Self {
            window_ns: 300 * 1_000_000_000,
            min_samples: 4,
            min_growth_bytes: 4096,
            min_growth_fraction: 0.01,
        }
    }
}

/// How a stack's outstanding bytes evolve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrowthClass {
    /// Too few samples, or they span less than half the window.
    #[default]
    InsufficientData,
    /// Grew over the window and is still growing: a leak suspect.
    Growing,
    /// Grew over the window but is flat now, like a cache that filled up: not a leak.
    LevellingOff,
    /// No significant trend (constant, or churning around a constant level).
    Stable,
    /// Being freed now.
    Shrinking,
}

/// Growth of one stack over the window; the default is that of a key without samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Growth {
    /// Least-squares slope over the whole window, bytes per second; the rate to project a
    /// time-to-limit with (it smooths bursts better than the recent one).
    pub bytes_per_second: f64,
    /// Least-squares slope over the newest half of the window (by time), bytes per second.
    pub recent_bytes_per_second: f64,
    /// What the two slopes say.
    pub class: GrowthClass,
    /// Samples in the window.
    pub samples: usize,
    /// Time between the oldest and the newest sample, ns.
    pub span_ns: u64,
    /// While the class is [`GrowthClass::InsufficientData`]: about how long until there are
    /// enough samples over enough of the window to class it, ns (the rates above are already
    /// measured, and provisional until then); 0 once classed.
    #[serde(default)]
    pub classed_in_ns: u64,
}

/// One key's samples, oldest first, at strictly increasing times.
#[derive(Debug, Default)]
struct Series {
    samples: Vec<(u64, u64)>,
    /// Time of the first sample of the current run of 0-byte samples.
    zero_since_ns: Option<u64>,
}

/// Per-key sliding windows of (time, bytes) samples.
#[derive(Debug)]
pub struct GrowthTracker<K> {
    config: GrowthConfig,
    series: HashMap<K, Series>,
    /// Time of the newest recorded round; older rounds are ignored.
    newest_round_ns: Option<u64>,
}

impl<K: Eq + Hash + Copy> GrowthTracker<K> {
    /// An empty tracker.
    pub fn new(config: GrowthConfig) -> Self {
        Self {
            config,
            series: HashMap::default(),
            newest_round_ns: None,
        }
    }

    /// Records one sampling round at `now_ns`: every key in `samples` gets a sample (a key
    /// listed twice gets the sum); keys absent from this round that had samples get a 0-bytes
    /// sample (their memory was freed) until they've been 0 for a whole window, then they are
    /// forgotten. Samples `window_ns` old or older are dropped, so a key holds at most
    /// `window_ns / sampling interval` samples. A round not newer than the newest recorded one
    /// is ignored (clocks that step back must not reorder a window), so call this once per
    /// round. A key first seen with 0 bytes is not tracked.
    pub fn record(&mut self, now_ns: u64, samples: impl IntoIterator<Item = (K, u64)>) {
        if self.newest_round_ns.is_some_and(|newest| now_ns <= newest) {
            return;
        }
        self.newest_round_ns = Some(now_ns);
        for (key, bytes) in samples {
            if bytes == 0 && !self.series.contains_key(&key) {
                continue;
            }
            let series = self.series.entry(key).or_default();
            match series.samples.last_mut() {
                Some((time_ns, total)) if *time_ns == now_ns => {
                    *total = total.saturating_add(bytes);
                }
                _ => series.samples.push((now_ns, bytes)),
            }
        }
        let window_ns = self.config.window_ns;
        self.series.retain(|_, series| {
            if !matches!(series.samples.last(), Some(&(time_ns, _)) if time_ns == now_ns) {
                series.samples.push((now_ns, 0));
            }
            // The newest sample stays even with a 0 window.
            series
                .samples
                .retain(|&(time_ns, _)| now_ns - time_ns < window_ns || time_ns == now_ns);
            series.zero_since_ns = match series.samples.last() {
                Some(&(_, 0)) => series.zero_since_ns.or(Some(now_ns)),
                _ => None,
            };
            series
                .zero_since_ns
                .is_none_or(|since_ns| now_ns - since_ns < window_ns)
        });
    }

    /// Growth of one key (`InsufficientData` with zero rates when unknown).
    pub fn growth(&self, key: &K) -> Growth {
        self.series.get(key).map_or_else(Growth::default, |series| {
            classify(&series.samples, &self.config)
        })
    }

    /// The newest sample less the oldest one in the window (0 for an unknown key, and when
    /// the value went down): for a count that only grows, what was added within the window.
    pub fn change(&self, key: &K) -> u64 {
        self.series.get(key).map_or(0, |series| {
            match (series.samples.first(), series.samples.last()) {
                (Some(&(_, oldest)), Some(&(_, newest))) => newest.saturating_sub(oldest),
                _ => 0,
            }
        })
    }

    /// The newest sample of a key (0 when unknown).
    pub fn newest(&self, key: &K) -> u64 {
        self.series
            .get(key)
            .and_then(|series| series.samples.last())
            .map_or(0, |&(_, value)| value)
    }

    /// Forgets every key for which `f` is true (e.g. all stacks of an ended process).
    pub fn forget(&mut self, mut f: impl FnMut(&K) -> bool) {
        self.series.retain(|key, _| !f(key));
    }

    /// The keys currently tracked.
    /// Whether `key` has a window (it is one of the tracked stacks).
    pub fn contains(&self, key: &K) -> bool {
        self.series.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.series.keys()
    }

    /// Number of keys tracked (for bounded-memory checks).
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

/// Least-squares slope of `(t_ns, bytes)` points in bytes per second (0 for fewer than 2 points
/// or zero time spread). Pure function, pub for tests.
pub fn slope_bytes_per_second(points: &[(u64, u64)]) -> f64 {
    Fit::of(points.iter().copied()).slope_per_ns * NANOS_PER_SECOND
}

/// Classifies `points` (any order; the tracker keeps them oldest first) against `config`.
///
/// Let `span` be the time from the oldest to the newest point and `recent` the points at most
/// `span / 2` older than the newest (the newest half by time), spread over `recent_span`.
/// Growths are least-squares slopes times the time they cover: `whole = slope(all) * span`,
/// `recent = slope(recent) * recent_span`. The noise allowance of a growth over a time `d` is
/// `max(floor * d, 3 * rms(recent residuals))`, where `floor = max(min_growth_bytes,
/// min_growth_fraction * newest bytes) / window_ns` (a rate, so half the window gets half the
/// bytes) and the residuals are the points' distances from their least-squares line. A trend
/// also needs `|whole| > 2.5 * rms(whole residuals)`. Then, in order:
/// - fewer than `min_samples` points or `span < window_ns / 2`: `InsufficientData`;
/// - `recent` and `whole` both below minus their allowance, with a trend: `Shrinking`;
/// - `recent` and `whole` both above their allowance, with a trend: `Growing`;
/// - `whole` above its allowance and `recent` within its own: `LevellingOff`;
/// - otherwise `Stable`: flat, churning, or moves the window does not confirm (a rise right
///   after a fall, or a fall right after a rise).
///
/// Why residuals: churn around a constant level tilts a least-squares line by up to ~1.9
/// residual RMS (sawtooth and square waves with periods up to half the span, at every phase),
/// whereas a linear leak leaves no residual, a staircase leak with a step every quarter window
/// tilts its lines by 5 RMS or more, and a cache that went flat has no recent residual at all.
pub fn classify(points: &[(u64, u64)], config: &GrowthConfig) -> Growth {
    let (Some(&(newest_ns, newest_bytes)), Some(oldest_ns)) = (
        points.iter().max_by_key(|&&(time_ns, _)| time_ns),
        points.iter().map(|&(time_ns, _)| time_ns).min(),
    ) else {
        return Growth::default();
    };
    let span_ns = newest_ns - oldest_ns;
    let recent_from_ns = newest_ns - span_ns / 2;
    let recent_points = points
        .iter()
        .copied()
        .filter(|&(time_ns, _)| time_ns >= recent_from_ns);
    let recent_oldest_ns = recent_points.clone().map(|(time_ns, _)| time_ns).min();
    let recent_span_ns = recent_oldest_ns.map_or(0, |oldest_ns| newest_ns - oldest_ns);
    let whole = Fit::of(points.iter().copied());
    let recent = Fit::of(recent_points);
    let class = if points.len() < config.min_samples || span_ns.saturating_mul(2) < config.window_ns
    {
        GrowthClass::InsufficientData
    } else {
        let floor_per_ns = (config.min_growth_bytes as f64)
            .max(config.min_growth_fraction * newest_bytes as f64)
            / config.window_ns.max(1) as f64;
        let noise_bytes = RECENT_NOISE_SIGMAS * recent.residual_rms;
        // -1, 0 or 1: whether a growth over `duration_ns` is beyond its noise allowance.
        let direction = |fit: &Fit, duration_ns: u64| {
            let growth_bytes = fit.slope_per_ns * duration_ns as f64;
            let allowance_bytes = (floor_per_ns * duration_ns as f64).max(noise_bytes);
            i8::from(growth_bytes > allowance_bytes) - i8::from(growth_bytes < -allowance_bytes)
        };
        let whole_growth_bytes = whole.slope_per_ns * span_ns as f64;
        let trend = whole_growth_bytes.abs() > TREND_SIGMAS * whole.residual_rms;
        match (
            direction(&whole, span_ns),
            direction(&recent, recent_span_ns),
        ) {
            (-1, -1) if trend => GrowthClass::Shrinking,
            (1, 1) if trend => GrowthClass::Growing,
            (1, 0) => GrowthClass::LevellingOff,
            _ => GrowthClass::Stable,
        }
    };
    let classed_in_ns = if class == GrowthClass::InsufficientData {
        // Half the window must be covered, and min_samples taken at the pace seen so far.
        let span_missing_ns = (config.window_ns / 2).saturating_sub(span_ns);
        let samples_missing = config.min_samples.saturating_sub(points.len()) as u64;
        let pace_ns = span_ns / (points.len().max(2) as u64 - 1);
        span_missing_ns.max(samples_missing.saturating_mul(pace_ns))
    } else {
        0
    };
    Growth {
        bytes_per_second: whole.slope_per_ns * NANOS_PER_SECOND,
        recent_bytes_per_second: recent.slope_per_ns * NANOS_PER_SECOND,
        class,
        samples: points.len(),
        span_ns,
        classed_in_ns,
    }
}

/// A least-squares line through `(t_ns, bytes)` points.
struct Fit {
    /// Bytes per ns; 0 for fewer than 2 points or no time spread.
    slope_per_ns: f64,
    /// Root mean square distance of the points from the line, bytes.
    residual_rms: f64,
}

impl Fit {
    fn of(points: impl Iterator<Item = (u64, u64)>) -> Self {
        // Offsets from the first point keep full precision for large clocks and byte counts.
        let mut origin = None;
        let offsets: Vec<(f64, f64)> = points
            .map(|(time_ns, bytes)| {
                let (time_origin, bytes_origin) = *origin.get_or_insert((time_ns, bytes));
                (offset(time_ns, time_origin), offset(bytes, bytes_origin))
            })
            .collect();
        let count = offsets.len().max(1) as f64;
        let time_mean = offsets.iter().map(|&(time, _)| time).sum::<f64>() / count;
        let bytes_mean = offsets.iter().map(|&(_, bytes)| bytes).sum::<f64>() / count;
        let (mut time_variance, mut covariance) = (0.0, 0.0);
        for &(time, bytes) in &offsets {
            time_variance += (time - time_mean).powi(2);
            covariance += (time - time_mean) * (bytes - bytes_mean);
        }
        let slope_per_ns = if time_variance > 0.0 {
            covariance / time_variance
        } else {
            0.0
        };
        let residual = |&(time, bytes): &(f64, f64)| {
            (bytes - bytes_mean - slope_per_ns * (time - time_mean)).powi(2)
        };
        Self {
            slope_per_ns,
            residual_rms: (offsets.iter().map(residual).sum::<f64>() / count).sqrt(),
        }
    }
}

/// `value - origin`, signed, as f64 (i128 holds any difference of two u64).
fn offset(value: u64, origin: u64) -> f64 {
    (i128::from(value) - i128::from(origin)) as f64
}

/// The growth of stacks merged into one call site: rates add up; the class is the most telling
/// of theirs (any growing member makes the call site growing, then levelling off, then
/// shrinking when all shrink, insufficient data when all lack it, else stable). `None` for no
/// members.
pub fn combine(members: &[Growth]) -> Option<Growth> {
    let (first, rest) = members.split_first()?;
    if rest.is_empty() {
        return Some(*first);
    }
    let any = |class: GrowthClass| members.iter().any(|g| g.class == class);
    let all = |class: GrowthClass| members.iter().all(|g| g.class == class);
    let class = if any(GrowthClass::Growing) {
        GrowthClass::Growing
    } else if any(GrowthClass::LevellingOff) {
        GrowthClass::LevellingOff
    } else if all(GrowthClass::Shrinking) {
        GrowthClass::Shrinking
    } else if all(GrowthClass::InsufficientData) {
        GrowthClass::InsufficientData
    } else {
        GrowthClass::Stable
    };
    Some(Growth {
        bytes_per_second: members.iter().map(|g| g.bytes_per_second).sum(),
        recent_bytes_per_second: members.iter().map(|g| g.recent_bytes_per_second).sum(),
        class,
        samples: members.iter().map(|g| g.samples).max().unwrap_or(0),
        span_ns: members.iter().map(|g| g.span_ns).max().unwrap_or(0),
        classed_in_ns: if class == GrowthClass::InsufficientData {
            members.iter().map(|g| g.classed_in_ns).min().unwrap_or(0)
        } else {
            0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND_NS: u64 = 1_000_000_000;
    const MIB: u64 = 1 << 20;
    /// A boot-time clock an hour after boot, so nothing relies on times starting at 0.
    const START_NS: u64 = 3_600 * SECOND_NS;
    /// 1 MiB per 10 s.
    const MIB_PER_10_S: f64 = 104_857.6;

    /// Feeds key 7 the bytes `bytes_at(second)` (absent when `None`) every 10 s up to
    /// `until_s` into a tracker with the default config; (second, growth) after each round.
    fn replay(until_s: u64, bytes_at: impl Fn(u64) -> Option<u64>) -> Vec<(u64, Growth)> {
        let mut tracker = GrowthTracker::new(GrowthConfig::default());
        (0..=until_s / 10)
            .map(|round| {
                let second = round * 10;
                let sample = bytes_at(second).map(|bytes| (7_u32, bytes));
                tracker.record(START_NS + second * SECOND_NS, sample);
                (second, tracker.growth(&7))
            })
            .collect()
    }

    /// The runs of one class from `from_s` on: (class, first second of the run).
    fn runs_from(growths: &[(u64, Growth)], from_s: u64) -> Vec<(GrowthClass, u64)> {
        let mut runs: Vec<(GrowthClass, u64)> = Vec::new();
        for &(second, growth) in growths.iter().filter(|(second, _)| *second >= from_s) {
            if runs.last().is_none_or(|&(class, _)| class != growth.class) {
                runs.push((growth.class, second));
            }
        }
        runs
    }

    fn assert_always(growths: &[(u64, Growth)], from_s: u64, class: GrowthClass) {
        let runs = runs_from(growths, 0);
        assert_eq!(runs_from(growths, from_s), [(class, from_s)], "{runs:?}");
    }

    fn assert_rate(bytes_per_second: f64, expected: f64) {
        let error = (bytes_per_second - expected).abs();
        assert!(error < 1e-6, "{bytes_per_second} instead of {expected}");
    }

    fn linear(rounds: u64, base_bytes: u64) -> Vec<(u64, u64)> {
        let point = |i| (START_NS + i * 10 * SECOND_NS, base_bytes + i * MIB);
        (0..rounds).map(point).collect()
    }

    #[test]
    fn slope_is_exact_bytes_per_second_on_linear_data_and_zero_without_time_spread() {
        let slope = slope_bytes_per_second(&linear(30, 5 * 1024 * MIB));
        assert_rate(slope, MIB_PER_10_S);
        assert_eq!(slope_bytes_per_second(&[]), 0.0);
        assert_eq!(slope_bytes_per_second(&[(START_NS, MIB)]), 0.0);
        let no_spread = [(START_NS, 0), (START_NS, MIB)];
        assert_eq!(slope_bytes_per_second(&no_spread), 0.0);
    }

    #[test]
    fn a_linear_leak_is_growing_at_its_rate() {
        let growths = replay(900, |s| Some(64 * MIB + s / 10 * MIB));
        assert_always(&growths, 150, GrowthClass::Growing);
        for (_, growth) in &growths[15..] {
            assert_rate(growth.bytes_per_second, MIB_PER_10_S);
            assert_rate(growth.recent_bytes_per_second, MIB_PER_10_S);
        }
    }

    #[test]
    fn a_leak_in_bursts_with_a_step_every_quarter_window_is_growing_at_every_phase() {
        // From 160 s: at 150 s the recent half is only 75 s, with 75 s steps on both edges.
        for step_s in [30, 60, 75] {
            let growths = replay(1200, |s| Some(100 * MIB + s / step_s * MIB));
            assert_always(&growths, 160, GrowthClass::Growing);
        }
    }

    #[test]
    fn a_leak_under_churn_is_growing_once_it_outgrows_the_churn() {
        // 1 MiB per 10 s under buffers that ramp by 10 MiB and are freed every minute.
        let churn = |s: u64| s % 60 * 10 * MIB / 60;
        let growths = replay(1200, |s| Some(20 * MIB + s / 10 * MIB + churn(s)));
        assert_always(&growths, 210, GrowthClass::Growing);
    }

    #[test]
    fn a_cache_that_fills_then_plateaus_is_levelling_off_not_growing() {
        // 64 MiB filled during the first minute, then flat; Stable once the fill left the window.
        let growths = replay(900, |s| Some(s.min(60) * 64 * MIB / 60));
        let runs = [(GrowthClass::LevellingOff, 160), (GrowthClass::Stable, 350)];
        assert_eq!(runs_from(&growths, 160), runs);
        // Filling ever slower (time constant 30 s): Growing while it adds over 0.5% per 150 s.
        let fill = |s: u64| 64.0 * MIB as f64 * (1.0 - (-(s as f64) / 30.0).exp());
        let growths = replay(900, |s| Some(fill(s) as u64));
        let runs = [(GrowthClass::LevellingOff, 300), (GrowthClass::Stable, 420)];
        assert_eq!(runs_from(&growths, 300), runs);
    }

    #[test]
    fn a_constant_stack_is_stable() {
        assert_always(&replay(900, |_| Some(42 * MIB)), 150, GrowthClass::Stable);
    }

    #[test]
    fn sawtooth_and_square_churn_around_a_constant_mean_is_stable_not_growing() {
        for period_s in [20, 30, 40, 60, 80, 100, 120, 140] {
            // Buffers ramp from 10 to 20 MiB and are all freed, every period.
            let ramp = |s: u64| s % period_s * 10 * MIB / period_s;
            let saw = replay(1200, |s| Some(10 * MIB + ramp(s)));
            assert_always(&saw, 150, GrowthClass::Stable);
            // A batch holds 10 MiB for half of every period.
            let batch = |s: u64| u64::from(s % period_s < period_s / 2) * 10 * MIB;
            let square = replay(1200, |s| Some(10 * MIB + batch(s)));
            assert_always(&square, 150, GrowthClass::Stable);
        }
    }

    #[test]
    fn memory_being_freed_is_shrinking() {
        // 60 MiB freed steadily over five minutes from 300 s on.
        let growths = replay(600, |s| Some((600 - s.clamp(300, 600)) * 60 * MIB / 300));
        assert_always(&growths, 360, GrowthClass::Shrinking);
        assert_rate(growths[60].1.bytes_per_second, -0.2 * MIB as f64);
    }

    #[test]
    fn a_stack_freed_at_once_is_zero_filled_shrinks_then_is_forgotten_after_a_window() {
        // The stack is absent from every round from 300 s on.
        let growths = replay(600, |s| (s < 300).then_some(64 * MIB));
        let runs = [
            (GrowthClass::Stable, 150),
            (GrowthClass::Shrinking, 350),
            (GrowthClass::Stable, 420),
            (GrowthClass::InsufficientData, 600),
        ];
        assert_eq!(runs_from(&growths, 150), runs);
        assert_eq!(growths[59].1.samples, 30, "zeros keep filling the window");
        // Forgotten after a whole window of zeros.
        assert_eq!(growths[60].1, Growth::default());
    }

    #[test]
    fn too_few_samples_or_less_than_half_a_window_is_insufficient_data_with_rates() {
        let config = GrowthConfig::default();
        let short = classify(&linear(15, MIB), &config);
        assert_eq!(short.class, GrowthClass::InsufficientData);
        assert_eq!(short.span_ns, 140 * SECOND_NS);
        assert_rate(short.bytes_per_second, MIB_PER_10_S);
        let half_window = classify(&linear(16, MIB), &config);
        assert_eq!(half_window.class, GrowthClass::Growing);
        let demanding = GrowthConfig {
            min_samples: 31,
            ..config
        };
        let growth = classify(&linear(30, MIB), &demanding);
        assert_eq!(growth.class, GrowthClass::InsufficientData);
        assert_eq!(classify(&[], &config), Growth::default());
    }

    #[test]
    fn huge_byte_counts_and_clock_values_do_not_overflow() {
        let config = GrowthConfig {
            min_growth_fraction: 0.0,
            ..GrowthConfig::default()
        };
        let start_ns = u64::MAX - 300 * SECOND_NS;
        let near_max: Vec<(u64, u64)> = (0..30)
            .map(|i| (start_ns + i * 10 * SECOND_NS, u64::MAX - 64 * MIB + i * MIB))
            .collect();
        let growth = classify(&near_max, &config);
        assert_eq!(growth.class, GrowthClass::Growing);
        assert_rate(growth.bytes_per_second, MIB_PER_10_S);
        let wild = [(0, 0), (1, u64::MAX), (2, 0), (u64::MAX, u64::MAX)];
        let growth = classify(&wild, &config);
        assert!(growth.bytes_per_second.is_finite() && growth.recent_bytes_per_second.is_finite());
    }

    #[test]
    fn a_round_sums_repeated_keys_skips_new_zero_keys_and_must_be_newer_than_the_last() {
        let mut tracker = GrowthTracker::new(GrowthConfig::default());
        tracker.record(START_NS, [(1_u32, MIB), (1, 2 * MIB), (2, 0)]);
        tracker.record(START_NS - SECOND_NS, [(1, 5 * MIB)]);
        tracker.record(START_NS, [(1, 7 * MIB), (3, MIB)]);
        tracker.record(START_NS + 10 * SECOND_NS, [(1, 3 * MIB)]);
        let growth = tracker.growth(&1);
        let summary = (growth.samples, growth.bytes_per_second, tracker.len());
        assert_eq!(summary, (2, 0.0, 1));
    }

    #[test]
    fn point_order_does_not_matter_to_classify() {
        let points = linear(30, MIB);
        let reversed: Vec<(u64, u64)> = points.iter().rev().copied().collect();
        let config = GrowthConfig::default();
        assert_eq!(classify(&reversed, &config), classify(&points, &config));
    }

    #[test]
    fn the_window_keeps_at_most_window_over_interval_samples() {
        let newest = replay(1000, |s| Some(MIB + s))[100].1;
        assert_eq!((newest.samples, newest.span_ns), (30, 290 * SECOND_NS));
    }

    #[test]
    fn forget_drops_the_keys_it_matches() {
        let mut tracker = GrowthTracker::new(GrowthConfig::default());
        let stacks = [((1_u32, 10_u32), MIB), ((1, 11), MIB), ((2, 10), MIB)];
        tracker.record(START_NS, stacks);
        tracker.forget(|&(pid, _)| pid == 1);
        assert_eq!(tracker.len(), 1);
        assert_eq!(tracker.growth(&(1, 10)), Growth::default());
        assert_eq!(tracker.growth(&(2, 10)).samples, 1);
    }

    #[test]
    fn growth_classes_serialize_in_snake_case() {
        let classes = [GrowthClass::LevellingOff, GrowthClass::InsufficientData];
        let expected = r#"["levelling_off","insufficient_data"]"#;
        assert_eq!(
            serde_json::to_string(&classes).ok().as_deref(),
            Some(expected)
        );
    }

    #[test]
    fn a_new_stack_has_its_measured_rate_and_says_when_it_will_be_classed() {
        let config = GrowthConfig::default();
        // 2 MiB/s for 40 s, sampled every 10 s: the rate is known, the class is not yet.
        let points: Vec<(u64, u64)> = (0..=4)
            .map(|i| (i * 10 * SECOND_NS, i * 20 * MIB))
            .collect();
        let growth = classify(&points, &config);
        assert_eq!(growth.class, GrowthClass::InsufficientData);
        assert!(
            (growth.bytes_per_second - 2.0 * MIB as f64).abs() < 1.0,
            "{growth:?}"
        );
        assert_eq!((growth.samples, growth.span_ns), (5, 40 * SECOND_NS));
        // Half of the 5-minute window is 150 s: 110 s to go.
        assert_eq!(growth.classed_in_ns, 110 * SECOND_NS);
        let classed: Vec<(u64, u64)> = (0..=15)
            .map(|i| (i * 10 * SECOND_NS, i * 20 * MIB))
            .collect();
        let growth = classify(&classed, &config);
        assert_eq!(
            (growth.class, growth.classed_in_ns),
            (GrowthClass::Growing, 0)
        );
    }

    #[test]
    fn merged_call_sites_add_their_rates_and_take_the_most_telling_class() {
        let growth = |rate: f64, class: GrowthClass| Growth {
            bytes_per_second: rate,
            recent_bytes_per_second: rate,
            class,
            samples: 5,
            span_ns: 10,
            classed_in_ns: 0,
        };
        assert_eq!(combine(&[]), None);
        let merged = combine(&[
            growth(10.0, GrowthClass::Stable),
            growth(5.0, GrowthClass::Growing),
        ])
        .expect("two");
        assert_eq!(
            (merged.bytes_per_second, merged.class),
            (15.0, GrowthClass::Growing)
        );
        let merged = combine(&[
            growth(-1.0, GrowthClass::Shrinking),
            growth(-2.0, GrowthClass::Shrinking),
        ])
        .expect("two");
        assert_eq!(merged.class, GrowthClass::Shrinking);
        let merged = combine(&[
            growth(0.0, GrowthClass::Stable),
            growth(-2.0, GrowthClass::Shrinking),
        ])
        .expect("two");
        assert_eq!(merged.class, GrowthClass::Stable);
    }
}
