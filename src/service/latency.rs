//! Live latency figures for the service: the interval histograms the loop
//! already hands to the interval-log writer are folded, on that writer's
//! thread, into whole-run histograms here, so the metrics and the API's
//! latency snapshot cost the real-time thread nothing extra.

use crate::control::{Percentiles, LATENCY_TAGS};
use crate::report::{new_histogram, IntervalSet, IntervalTap};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::{Arc, Mutex};

/// Whole-run and newest-interval histograms per latency tag (ns).
pub struct LiveLatency {
    inner: Mutex<Inner>,
}

struct Inner {
    total: Vec<Histogram<u64>>,
    last: Vec<Histogram<u64>>,
    intervals: u64,
}

impl std::fmt::Debug for LiveLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveLatency").finish_non_exhaustive()
    }
}

/// One tag's figures.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TagLatency {
    pub tag: &'static str,
    /// Since the run began.
    pub total: Option<Percentiles>,
    /// The newest closed interval (about one second).
    pub last_interval: Option<Percentiles>,
    /// Sum of all recorded values, ns (for a Prometheus summary's `_sum`).
    #[serde(skip)]
    pub sum_ns: f64,
}

/// The service's latency snapshot.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LatencySnapshot {
    /// Intervals folded in so far.
    pub intervals: u64,
    pub tags: Vec<TagLatency>,
}

impl Default for LiveLatency {
    fn default() -> Self {
        LiveLatency::new()
    }
}

impl LiveLatency {
    pub fn new() -> LiveLatency {
        let make = || LATENCY_TAGS.iter().map(|_| new_histogram()).collect();
        LiveLatency {
            inner: Mutex::new(Inner {
                total: make(),
                last: make(),
                intervals: 0,
            }),
        }
    }

    /// Fold one interval in.
    pub fn add(&self, set: &IntervalSet) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *g;
        for (k, h) in set.histograms.iter().enumerate().take(LATENCY_TAGS.len()) {
            // Same bounds on both sides: adding cannot fail.
            let _ = inner.total[k].add(h);
            inner.last[k].reset();
            let _ = inner.last[k].add(h);
        }
        inner.intervals += 1;
    }

    /// A tap for [`crate::report::IntervalLogThread::start_tapped`].
    pub fn tap(self: &Arc<Self>) -> IntervalTap {
        let me = self.clone();
        Box::new(move |set| me.add(set))
    }

    /// The whole-run value at quantile `q` of `tag`, ns.
    pub fn quantile_ns(&self, tag: &str, q: f64) -> Option<f64> {
        let k = LATENCY_TAGS.iter().position(|t| *t == tag)?;
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let h = &g.total[k];
        (!h.is_empty()).then(|| h.value_at_quantile(q) as f64)
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let pct = |h: &Histogram<u64>| (!h.is_empty()).then(|| Percentiles::from_ns(h));
        LatencySnapshot {
            intervals: g.intervals,
            tags: LATENCY_TAGS
                .iter()
                .enumerate()
                .map(|(k, tag)| TagLatency {
                    tag,
                    total: pct(&g.total[k]),
                    last_interval: pct(&g.last[k]),
                    sum_ns: g.total[k].mean() * g.total[k].len() as f64,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn intervals_accumulate_and_the_last_is_kept() {
        let live = LiveLatency::new();
        let mut set = IntervalSet {
            tags: LATENCY_TAGS,
            histograms: LATENCY_TAGS.iter().map(|_| new_histogram()).collect(),
            start: Duration::ZERO,
            length: Duration::from_secs(1),
        };
        set.histograms[1].record(10_000).unwrap();
        live.add(&set);
        set.histograms[1].reset();
        set.histograms[1].record(30_000).unwrap();
        live.add(&set);
        let s = live.snapshot();
        assert_eq!(s.intervals, 2);
        let t = &s.tags[1];
        assert_eq!(t.tag, "sample_to_command");
        assert_eq!(t.total.as_ref().unwrap().count, 2);
        assert_eq!(t.last_interval.as_ref().unwrap().count, 1);
        assert!((t.last_interval.as_ref().unwrap().max_us - 30.0).abs() < 0.1);
        assert!((t.sum_ns - 40_000.0).abs() < 100.0);
        assert!(s.tags[0].total.is_none());
    }
}
