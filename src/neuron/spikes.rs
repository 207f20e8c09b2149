//! Spike and burst detection, shared by the simulator, the objectives and the
//! reports so that all of them count the same events.
//!
//! A spike is an upward crossing of a threshold (−20 mV by default), timed by
//! linear interpolation between the two points that bracket it. A burst is a
//! run of at least two spikes whose consecutive intervals are below a maximum
//! (10 ms by default). The streaming detectors never allocate.

use serde::Serialize;

/// Spike threshold of the specification, mV.
pub const DEFAULT_THRESHOLD_MV: f64 = -20.0;
/// Longest inter-spike interval inside a burst, ms.
pub const DEFAULT_BURST_ISI_MS: f64 = 10.0;

/// Streaming upward-crossing detector. Feed it (t, V) in time order.
#[derive(Clone, Debug)]
pub struct SpikeDetector {
    threshold: f64,
    prev: Option<(f64, f64)>,
}

impl SpikeDetector {
    pub fn new(threshold_mv: f64) -> SpikeDetector {
        SpikeDetector {
            threshold: threshold_mv,
            prev: None,
        }
    }

    /// Returns the interpolated crossing time when (t, v) completes an upward
    /// crossing. Non-finite points reset the detector rather than produce a
    /// spike.
    #[inline]
    pub fn push(&mut self, t: f64, v: f64) -> Option<f64> {
        if !v.is_finite() || !t.is_finite() {
            self.prev = None;
            return None;
        }
        let out = match self.prev {
            Some((t0, v0)) if v0 < self.threshold && v >= self.threshold => {
                Some(t0 + (self.threshold - v0) / (v - v0) * (t - t0))
            }
            _ => None,
        };
        self.prev = Some((t, v));
        out
    }

    pub fn reset(&mut self) {
        self.prev = None;
    }
}

impl Default for SpikeDetector {
    fn default() -> Self {
        SpikeDetector::new(DEFAULT_THRESHOLD_MV)
    }
}

/// Spike times (ms) of a sampled trace.
pub fn detect_spikes(t_ms: &[f64], v_mv: &[f64], threshold_mv: f64) -> Vec<f64> {
    let mut d = SpikeDetector::new(threshold_mv);
    t_ms.iter()
        .zip(v_mv)
        .filter_map(|(&t, &v)| d.push(t, v))
        .collect()
}

/// One burst: index of its first spike in the spike train, number of spikes,
/// start and end times (ms).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Burst {
    pub first: usize,
    pub spikes: usize,
    pub start_ms: f64,
    pub end_ms: f64,
}

/// Group a spike train into bursts (runs of ≥ 2 spikes with ISIs < `max_isi_ms`).
pub fn detect_bursts(spikes_ms: &[f64], max_isi_ms: f64) -> Vec<Burst> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < spikes_ms.len() {
        let mut j = i;
        while j + 1 < spikes_ms.len() && spikes_ms[j + 1] - spikes_ms[j] < max_isi_ms {
            j += 1;
        }
        if j > i {
            out.push(Burst {
                first: i,
                spikes: j - i + 1,
                start_ms: spikes_ms[i],
                end_ms: spikes_ms[j],
            });
        }
        i = j + 1;
    }
    out
}

/// The firing pattern in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    Silent,
    Regular,
    Bursting,
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pattern::Silent => "silent",
            Pattern::Regular => "regular",
            Pattern::Bursting => "bursting",
        })
    }
}

/// Summary statistics of a spike train.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FiringSummary {
    pub spikes: usize,
    pub bursts: usize,
    /// Mean spikes per burst (0 when there are no bursts).
    pub spikes_per_burst: f64,
    /// Mean inter-spike interval, ms (NaN-free: 0 with fewer than 2 spikes).
    pub mean_isi_ms: f64,
    /// Mean rate over the analysed duration, Hz.
    pub rate_hz: f64,
    pub pattern: Pattern,
}

impl FiringSummary {
    /// Summarise `spikes_ms` observed over `duration_ms`. The pattern is
    /// `bursting` when at least half of the spikes fall inside bursts, so an
    /// onset doublet in a regular train does not count.
    pub fn new(spikes_ms: &[f64], duration_ms: f64, max_isi_ms: f64) -> FiringSummary {
        let bursts = detect_bursts(spikes_ms, max_isi_ms);
        let in_bursts: usize = bursts.iter().map(|b| b.spikes).sum();
        let n = spikes_ms.len();
        let pattern = if n == 0 {
            Pattern::Silent
        } else if 2 * in_bursts >= n {
            Pattern::Bursting
        } else {
            Pattern::Regular
        };
        FiringSummary {
            spikes: n,
            bursts: bursts.len(),
            spikes_per_burst: if bursts.is_empty() {
                0.0
            } else {
                in_bursts as f64 / bursts.len() as f64
            },
            mean_isi_ms: if n >= 2 {
                (spikes_ms[n - 1] - spikes_ms[0]) / (n - 1) as f64
            } else {
                0.0
            },
            rate_hz: if duration_ms > 0.0 {
                n as f64 / duration_ms * 1000.0
            } else {
                0.0
            },
            pattern,
        }
    }
}

impl std::fmt::Display for FiringSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} spikes, {} bursts, {:.2} spikes/burst, mean ISI {:.3} ms, {:.2} Hz, pattern {}",
            self.spikes,
            self.bursts,
            self.spikes_per_burst,
            self.mean_isi_ms,
            self.rate_hz,
            self.pattern
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossing_is_linearly_interpolated_and_only_upward() {
        let mut d = SpikeDetector::new(-20.0);
        assert_eq!(d.push(0.0, -30.0), None);
        assert_eq!(d.push(1.0, -10.0), Some(0.5));
        assert_eq!(d.push(2.0, 10.0), None);
        assert_eq!(d.push(3.0, -40.0), None, "downward crossing is not a spike");
        assert_eq!(
            d.push(4.0, -20.0),
            Some(4.0),
            "touching the threshold counts"
        );
    }

    #[test]
    fn nan_resets_instead_of_spiking() {
        let mut d = SpikeDetector::new(-20.0);
        d.push(0.0, -30.0);
        assert_eq!(d.push(1.0, f64::NAN), None);
        assert_eq!(d.push(2.0, 0.0), None);
    }

    #[test]
    fn bursts_are_runs_with_short_isis() {
        let s = [10.0, 15.0, 19.0, 50.0, 100.0, 105.0, 200.0];
        let b = detect_bursts(&s, 10.0);
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].first, b[0].spikes), (0, 3));
        assert_eq!((b[1].first, b[1].spikes), (4, 2));
        let sum = FiringSummary::new(&s, 1000.0, 10.0);
        assert_eq!(sum.pattern, Pattern::Bursting);
        assert_eq!(sum.spikes_per_burst, 2.5);
    }

    #[test]
    fn onset_doublet_does_not_make_a_regular_train_bursting() {
        let s = [32.0, 38.0, 130.0, 230.0, 330.0, 430.0];
        let sum = FiringSummary::new(&s, 500.0, 10.0);
        assert_eq!(sum.pattern, Pattern::Regular);
        assert_eq!(sum.bursts, 1);
        assert_eq!(
            FiringSummary::new(&[], 500.0, 10.0).pattern,
            Pattern::Silent
        );
    }
}
