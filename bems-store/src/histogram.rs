//! Latency histograms over fixed bucket bounds: how the PostgreSQL rollup
//! keeps latencies per minute, and how a percentile is read back.
//!
//! A histogram is one count per bucket; bucket `i` holds values in
//! `[LATENCY_BOUNDS_MS[i], LATENCY_BOUNDS_MS[i + 1])`, the last one
//! everything from its bound up. Bounds grow by at most a third from
//! 100 ms to 2 minutes (finer below, coarser above), and the SLA (2
//! minutes) is a bound, so:
//!
//! - the share of values within the SLA is exact;
//! - a percentile is reported as its bucket's upper bound (the lower bound
//!   of the next one): never below the true value, and above it by less
//!   than the bucket's width, at most a third of the value between 100 ms
//!   and 2 minutes, at most 25 ms below 100 ms, and a factor of up to
//!   two beyond 2 minutes (where the answer is "over the SLA" anyway).
//!
//! Changing the bounds changes the meaning of every stored histogram: it
//! needs a migration that rebuilds the rollup from the raw rows.

use serde::Serialize;

/// The lower bound of each bucket, milliseconds.
pub const LATENCY_BOUNDS_MS: [i64; 41] = [
    0, 25, 50, 75, 100, 125, 150, 200, 250, 300, 400, 500, 650, 800, 1_000, 1_300, 1_600, 2_000, 2_500, 3_000, 4_000,
    5_000, 6_500, 8_000, 10_000, 13_000, 16_000, 20_000, 25_000, 30_000, 40_000, 50_000, 65_000, 80_000, 100_000,
    120_000, 150_000, 240_000, 480_000, 900_000, 1_800_000,
];

/// Buckets per histogram.
pub const BUCKETS: usize = LATENCY_BOUNDS_MS.len();

/// The SLA: every event visible within 2 minutes.
pub const SLA_MS: i64 = 120_000;

/// The bucket of `ms` (negative values, from clocks apart, count as 0).
pub fn bucket(ms: i64) -> usize {
    LATENCY_BOUNDS_MS.partition_point(|bound| *bound <= ms.max(0)).saturating_sub(1)
}

/// Counts per bucket; signed, because a rollup's change subtracts the
/// replaced row's values.
pub type Counts = [i64; BUCKETS];

/// What a histogram says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct LatencySummary {
    /// Values counted.
    pub count: u64,
    /// Median, milliseconds (the upper bound of its bucket).
    pub p50: Option<i64>,
    /// 90th percentile, milliseconds.
    pub p90: Option<i64>,
    /// 99th percentile, milliseconds.
    pub p99: Option<i64>,
    /// The share of values within the SLA, 0–1 (exact: the SLA is a bound).
    pub within_sla: Option<f64>,
}

impl LatencySummary {
    /// A summary from exact percentiles (an engine that computes them
    /// itself, such as Timestream's `approx_percentile`).
    pub fn exact(count: u64, p50: Option<i64>, p90: Option<i64>, p99: Option<i64>) -> LatencySummary {
        LatencySummary { count, p50, p90, p99, within_sla: None }
    }
}

/// Reads a histogram: the percentiles and the share within the SLA.
pub fn summarize(counts: &[i64]) -> LatencySummary {
    let total: i64 = counts.iter().map(|c| (*c).max(0)).sum();
    let Ok(count) = u64::try_from(total) else { return LatencySummary::default() };
    if count == 0 {
        return LatencySummary::default();
    }
    let percentile = |p: f64| -> Option<i64> {
        // The smallest value with at least p of the values at or below it.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let rank = ((count as f64) * p).ceil().max(1.0) as i64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += (*c).max(0);
            if seen >= rank {
                return Some(upper_bound(i));
            }
        }
        None
    };
    let sla_bucket = bucket(SLA_MS);
    let within: i64 = counts.iter().take(sla_bucket).map(|c| (*c).max(0)).sum();
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let within_sla = Some(within as f64 / total as f64);
    LatencySummary { count, p50: percentile(0.5), p90: percentile(0.9), p99: percentile(0.99), within_sla }
}

/// The upper bound of bucket `i`: the next bucket's lower bound; for the
/// last bucket, twice its lower bound.
pub fn upper_bound(i: usize) -> i64 {
    LATENCY_BOUNDS_MS.get(i + 1).copied().unwrap_or(LATENCY_BOUNDS_MS[BUCKETS - 1] * 2)
}

/// Adds `other` into `into`, element by element (a shorter one counts as
/// zeros beyond its end).
pub fn add(into: &mut Counts, other: &[i64]) {
    for (a, b) in into.iter_mut().zip(other) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounds_grow_and_the_sla_is_one_of_them() {
        assert!(LATENCY_BOUNDS_MS.windows(2).all(|w| w[0] < w[1]));
        assert!(LATENCY_BOUNDS_MS.contains(&SLA_MS));
        // At most a third wider than the bound, from 100 ms to the SLA.
        for w in LATENCY_BOUNDS_MS.windows(2).filter(|w| w[0] >= 100 && w[1] <= SLA_MS) {
            assert!(w[1] * 3 <= w[0] * 4, "{w:?}");
        }
    }

    #[test]
    fn values_fall_in_the_bucket_whose_bounds_hold_them() {
        assert_eq!(bucket(-5), 0);
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(24), 0);
        assert_eq!(bucket(25), 1);
        assert_eq!(bucket(119_999), bucket(SLA_MS) - 1);
        assert_eq!(LATENCY_BOUNDS_MS[bucket(SLA_MS)], SLA_MS);
        assert_eq!(bucket(i64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_are_the_upper_bound_of_their_bucket_and_never_below_the_truth() {
        // 1..=1000 ms, one each.
        let mut counts = [0; BUCKETS];
        let values: Vec<i64> = (1..=1000).collect();
        for v in &values {
            counts[bucket(*v)] += 1;
        }
        let s = summarize(&counts);
        assert_eq!(s.count, 1000);
        for (p, got) in [(0.5, s.p50), (0.9, s.p90), (0.99, s.p99)] {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let truth = values[((1000.0 * p) as usize) - 1];
            let got = got.expect("a value");
            assert!(got >= truth, "p{p}: {got} < {truth}");
            let width = got - LATENCY_BOUNDS_MS[bucket(truth)];
            assert!(got - truth <= width, "p{p}: {got} vs {truth}");
        }
        assert_eq!(s.p50, Some(650), "500 lies in [500, 650)");
        assert_eq!(s.within_sla, Some(1.0));
    }

    #[test]
    fn the_share_within_the_sla_is_exact() {
        let mut counts = [0; BUCKETS];
        counts[bucket(119_999)] += 3;
        counts[bucket(120_000)] += 1;
        let s = summarize(&counts);
        assert_eq!(s.within_sla, Some(0.75));
        assert_eq!(summarize(&[0; BUCKETS]), LatencySummary::default());
    }
}
