//! Latency percentiles (nearest rank: every reported value is one that was measured).

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyStats {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// The nearest-rank percentile of `sorted` (ascending, not empty): the smallest value such that
/// at least `q` of all values are ≤ it. `q` in [0, 1].
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no values");
    let n = sorted.len();
    let rank = (q.clamp(0.0, 1.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// p50/p99/max of the values; `None` when there are none.
pub fn latency_stats(values: impl IntoIterator<Item = f64>) -> Option<LatencyStats> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(LatencyStats {
        n: v.len(),
        p50: percentile(&v, 0.50),
        p99: percentile(&v, 0.99),
        max: v[v.len() - 1],
    })
}

/// A latency for a table: 3 significant digits, at most 2 decimals.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

impl LatencyStats {
    /// "p50 / p99 / max" in ms.
    pub fn triple(&self) -> String {
        format!(
            "{} / {} / {}",
            fmt_ms(self.p50),
            fmt_ms(self.p99),
            fmt_ms(self.max)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        // Few values: p99 is the maximum, p50 the lower middle.
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
        assert_eq!(percentile(&[7.0], 0.5), 7.0);
    }

    #[test]
    fn stats_sort_and_ignore_non_finite_values() {
        let s = latency_stats([5.0, 1.0, f64::NAN, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!(
            s,
            LatencyStats {
                n: 5,
                p50: 3.0,
                p99: 5.0,
                max: 5.0
            }
        );
        assert_eq!(latency_stats(std::iter::empty()), None);
        // One slow outlier in 1000 shows in max, not in p99.
        let s = latency_stats((0..1000).map(|i| if i == 500 { 2000.0 } else { 1.0 })).unwrap();
        assert_eq!((s.p50, s.p99, s.max), (1.0, 1.0, 2000.0));
        // Eleven in 1000 do show in p99.
        let s = latency_stats((0..1000).map(|i| if i < 11 { 300.0 } else { 1.0 })).unwrap();
        assert_eq!(s.p99, 300.0);
    }

    #[test]
    fn formats_milliseconds_readably() {
        assert_eq!(fmt_ms(1.234), "1.23");
        assert_eq!(fmt_ms(12.34), "12.3");
        assert_eq!(fmt_ms(1234.5), "1234");
    }
}
