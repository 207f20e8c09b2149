//! Scoring what the cell did against the objective: the run's *objective
//! error*, the number the scenario table compares. It runs off the real-time
//! thread (on the record consumer) and may allocate.
//!
//! Errors, 0 is perfect:
//! - `voltage`: RMS of V − reference, mV.
//! - `rate`: RMS over time of (instantaneous rate − target rate), Hz,
//!   on a 1 ms grid. The instantaneous rate at t is 1/ISI of the two spikes
//!   around t; in an interval still open at either end of the scored span
//!   (no spike yet, or none since) of length L, it is the rate closest to
//!   the target that the interval allows, min(target, 1/L). This scores
//!   how fast and how evenly the rate follows each step, which a coarse
//!   count cannot: with 1 s bins, a controller that reaches the new rate
//!   within one ISI and one that takes a second both count right in most
//!   bins. The binned error (RMS over bins of count/width − mean target) is
//!   reported too, as `rate_bin_error_hz`.
//! - `burst`: fraction of spikes that follow the previous one within
//!   `max_isi` (spikes inside bursts, the first of each burst excluded), plus
//!   the shortfall below `min_rate` as a fraction (a silenced cell scores 1,
//!   not 0).
//! - `silence`: mean of max(0, V − ceiling), mV.
//! - `timing`: spike-time error per target spike. Each target in the
//!   scored span is matched to the nearest unmatched spike within
//!   `objective.timing.window` (W) of it, targets in time order; the error
//!   is (Σ |jitter| / W + misses + extras) / targets: 0 when every target
//!   gets one spike exactly on time, 1 for a silent cell, a matched spike
//!   off by W counts as much as a miss, and every spike that matched no
//!   target counts as one extra. Jitter, misses and extras are reported
//!   apart in `timing`. Matched-spike scoring rather than a van Rossum
//!   distance because its parts (how late, how many missed, how many
//!   spurious) are what an experimenter checks, and it has no kernel
//!   width to argue about beyond the window.

use super::{Objective, ObjectiveKind};
use crate::neuron::spikes::{FiringSummary, SpikeDetector, DEFAULT_THRESHOLD_MV};
use serde::Serialize;

/// The scored outcome of a run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Quality {
    pub objective: &'static str,
    /// See the module docs for the unit per objective.
    pub objective_error: f64,
    pub objective_error_unit: &'static str,
    /// Scored span, s.
    pub scored_s: f64,
    pub spikes: usize,
    pub rate_hz: f64,
    pub bursts: usize,
    pub spikes_in_bursts: usize,
    /// |charge| of the commands written over the scored span, nC/cm².
    pub charge_nc_cm2: f64,
    /// `rate` only: the binned error, Hz (see the module docs).
    pub rate_bin_error_hz: Option<f64>,
    /// `timing` only: the parts of the spike-time error.
    pub timing: Option<TimingScore>,
}

/// The parts of the `timing` error.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TimingScore {
    pub targets: usize,
    pub hits: usize,
    pub misses: usize,
    pub extras: usize,
    /// Mean |spike − target| over the hits, ms.
    pub mean_abs_jitter_ms: f64,
}

/// Match `spikes` to the `targets` (both sorted, ms) within `window_ms`:
/// each target in time order takes the nearest spike not yet taken.
pub fn match_spikes(targets: &[f64], spikes: &[f64], window_ms: f64) -> TimingScore {
    let mut taken = vec![false; spikes.len()];
    let (mut hits, mut jitter) = (0usize, 0.0);
    let mut from = 0;
    for &t in targets {
        while from < spikes.len() && spikes[from] < t - window_ms {
            from += 1;
        }
        let best = (from..spikes.len())
            .take_while(|&k| spikes[k] <= t + window_ms)
            .filter(|&k| !taken[k])
            .min_by(|&a, &b| (spikes[a] - t).abs().total_cmp(&(spikes[b] - t).abs()));
        if let Some(k) = best {
            taken[k] = true;
            hits += 1;
            jitter += (spikes[k] - t).abs();
        }
    }
    TimingScore {
        targets: targets.len(),
        hits,
        misses: targets.len() - hits,
        extras: spikes.len() - hits,
        mean_abs_jitter_ms: if hits > 0 { jitter / hits as f64 } else { 0.0 },
    }
}

impl TimingScore {
    /// (Σ |jitter| / W + misses + extras) / targets; with no target, the
    /// extras alone.
    pub fn error(&self, window_ms: f64) -> f64 {
        let sum = self.mean_abs_jitter_ms * self.hits as f64 / window_ms
            + self.misses as f64
            + self.extras as f64;
        sum / self.targets.max(1) as f64
    }
}

/// Accumulates samples and scores them.
pub struct QualityMeter {
    objective: Objective,
    dt_ms: f64,
    detector: SpikeDetector,
    spikes: Vec<f64>,
    /// The last spike before the scored span.
    before: Option<f64>,
    sq: f64,
    over: f64,
    n: u64,
    charge: f64,
    first_t: Option<f64>,
    last_t: f64,
}

impl QualityMeter {
    pub fn new(objective: Objective, sample_period_ms: f64) -> QualityMeter {
        QualityMeter {
            objective,
            dt_ms: sample_period_ms,
            detector: SpikeDetector::new(DEFAULT_THRESHOLD_MV),
            spikes: Vec::new(),
            before: None,
            sq: 0.0,
            over: 0.0,
            n: 0,
            charge: 0.0,
            first_t: None,
            last_t: 0.0,
        }
    }

    /// One sample: its time, the membrane potential and the command that
    /// was written in response to it.
    pub fn push(&mut self, t_ms: f64, v_mv: f64, command: f64) {
        let spike = self.detector.push(t_ms, v_mv);
        if t_ms < self.objective.settle_ms {
            if spike.is_some() {
                self.before = spike;
            }
            return;
        }
        if let Some(s) = spike {
            self.spikes.push(s);
        }
        self.first_t.get_or_insert(t_ms);
        self.last_t = t_ms;
        self.n += 1;
        self.charge += command.abs() * self.dt_ms;
        match self.objective.kind {
            ObjectiveKind::Voltage => {
                let e = v_mv - self.objective.reference.at(t_ms);
                self.sq += e * e;
            }
            ObjectiveKind::Silence => self.over += (v_mv - self.objective.ceiling_mv).max(0.0),
            _ => {}
        }
    }

    /// Spike times scored so far, ms.
    pub fn spikes(&self) -> &[f64] {
        &self.spikes
    }

    pub fn finish(&self) -> Quality {
        let o = &self.objective;
        let start = self.first_t.unwrap_or(o.settle_ms);
        let span_ms = (self.last_t - start + self.dt_ms).max(0.0);
        let firing = FiringSummary::new(&self.spikes, span_ms.max(1e-9), o.max_isi_ms);
        let rate_hz = self.spikes.len() as f64 / (span_ms / 1000.0).max(1e-9);
        let spikes_in_bursts = self
            .spikes
            .windows(2)
            .filter(|w| w[1] - w[0] < o.max_isi_ms)
            .count();
        let n = self.n.max(1) as f64;
        let (error, unit) = match o.kind {
            ObjectiveKind::Voltage => ((self.sq / n).sqrt(), "mV RMS"),
            ObjectiveKind::Silence => (self.over / n, "mV mean above ceiling"),
            ObjectiveKind::Burst => {
                let frac = spikes_in_bursts as f64 / self.spikes.len().max(1) as f64;
                let shortfall = (1.0 - rate_hz / o.min_rate_hz).max(0.0);
                (
                    frac + shortfall,
                    "fraction of spikes in bursts + rate shortfall",
                )
            }
            ObjectiveKind::Rate => (
                self.rate_error(start, start + span_ms),
                "Hz RMS of instantaneous rate",
            ),
            ObjectiveKind::Timing => (
                self.timing_score(start, span_ms).error(o.timing_window_ms),
                "spike-time error per target",
            ),
        };
        Quality {
            objective: o.kind.name(),
            objective_error: error,
            objective_error_unit: unit,
            scored_s: span_ms / 1000.0,
            spikes: self.spikes.len(),
            rate_hz,
            bursts: firing.bursts,
            spikes_in_bursts,
            charge_nc_cm2: self.charge,
            rate_bin_error_hz: (o.kind == ObjectiveKind::Rate)
                .then(|| self.rate_bin_error(start, span_ms)),
            timing: (o.kind == ObjectiveKind::Timing).then(|| self.timing_score(start, span_ms)),
        }
    }

    /// The targets inside the scored span against the scored spikes.
    fn timing_score(&self, start: f64, span_ms: f64) -> TimingScore {
        let o = &self.objective;
        let t = o.timing.times();
        let targets = &t[o.timing.first_from(start)..o.timing.first_from(start + span_ms)];
        match_spikes(targets, &self.spikes, o.timing_window_ms)
    }

    /// RMS of instantaneous − target rate over `[start, end)`, 1 ms grid.
    fn rate_error(&self, start: f64, end: f64) -> f64 {
        let sched = &self.objective.rate;
        let n = (end - start).floor() as usize;
        if n == 0 {
            return f64::NAN;
        }
        let s = &self.spikes;
        let mut next = 0; // index of the first spike after t
        let mut acc = 0.0;
        for k in 0..n {
            let t = start + k as f64 + 0.5;
            while next < s.len() && s[next] <= t {
                next += 1;
            }
            let prev = if next > 0 {
                Some(s[next - 1])
            } else {
                self.before
            };
            let target = sched.at(t);
            let r = match (prev, s.get(next)) {
                (Some(p), Some(&q)) => 1000.0 / (q - p),
                (Some(p), None) => target.min(1000.0 / (end - p)),
                (None, Some(&q)) => target.min(1000.0 / (q - start)),
                (None, None) => target.min(1000.0 / (end - start)),
            };
            acc += (r - target) * (r - target);
        }
        (acc / n as f64).sqrt()
    }

    fn rate_bin_error(&self, start: f64, span_ms: f64) -> f64 {
        let bin = self.objective.rate_bin_ms;
        let bins = (span_ms / bin).floor() as usize;
        if bins == 0 {
            return f64::NAN;
        }
        let mut acc = 0.0;
        for b in 0..bins {
            let (a, z) = (start + b as f64 * bin, start + (b + 1) as f64 * bin);
            let count = self.spikes.iter().filter(|&&s| s >= a && s < z).count();
            let e = count as f64 / (bin / 1000.0) - self.objective.rate.mean(a, z);
            acc += e * e;
        }
        (acc / bins as f64).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::objective;

    /// Feed a V trace at 0.1 ms with spikes (0 mV for one sample) at `at`.
    fn feed(m: &mut QualityMeter, dur_ms: f64, at: &[f64], base: f64) {
        let n = (dur_ms / 0.1) as usize;
        for k in 0..n {
            let t = k as f64 * 0.1;
            let v = if at.iter().any(|&s| (t - s).abs() < 0.05) {
                0.0
            } else {
                base
            };
            m.push(t, v, 1.0);
        }
    }

    #[test]
    fn rate_error_is_zero_when_the_train_follows_the_schedule() {
        // 10 Hz, then 20 Hz from 1 s: ISIs switch exactly at the step.
        let mut m = QualityMeter::new(objective(ObjectiveKind::Rate), 0.1);
        let mut at: Vec<f64> = (1..=10).map(|k| 100.0 * k as f64).collect();
        at.extend((1..20).map(|k| 1000.0 + 50.0 * k as f64));
        feed(&mut m, 2000.0, &at, -70.0);
        let q = m.finish();
        assert_eq!(q.spikes, 29, "{q:?}");
        assert!(q.objective_error < 0.01, "{q:?}");
        assert!((q.charge_nc_cm2 - 2000.0).abs() < 1e-6);
        // Staying at 10 Hz after the step: 10 Hz off for the second half,
        // by either measure.
        let mut m = QualityMeter::new(objective(ObjectiveKind::Rate), 0.1);
        let slow: Vec<f64> = (0..20).map(|k| 50.0 + 100.0 * k as f64).collect();
        feed(&mut m, 2000.0, &slow, -70.0);
        let q = m.finish();
        assert!((q.objective_error - 50f64.sqrt()).abs() < 0.2, "{q:?}");
        assert!((q.rate_bin_error_hz.unwrap() - 50f64.sqrt()).abs() < 1e-9);
        // A silent cell is as far off as the target.
        let mut m = QualityMeter::new(objective(ObjectiveKind::Rate), 0.1);
        feed(&mut m, 2000.0, &[], -70.0);
        assert!(m.finish().objective_error > 14.0);
    }

    #[test]
    fn burst_error_counts_spikes_inside_bursts_and_silence() {
        let mut m = QualityMeter::new(objective(ObjectiveKind::Burst), 0.1);
        // Two bursts of 3 (ISI 5 ms) in 1 s: 4 of 6 spikes inside bursts.
        feed(
            &mut m,
            1000.0,
            &[100.0, 105.0, 110.0, 600.0, 605.0, 610.0],
            -70.0,
        );
        let q = m.finish();
        assert!((q.objective_error - 4.0 / 6.0).abs() < 1e-9, "{q:?}");
        let mut quiet = QualityMeter::new(objective(ObjectiveKind::Burst), 0.1);
        feed(&mut quiet, 1000.0, &[], -70.0);
        assert!((quiet.finish().objective_error - 1.0).abs() < 1e-9);
    }

    #[test]
    fn timing_error_counts_jitter_misses_and_extras() {
        // Targets 5, 100, 300 ms; window 3 ms.
        let mut m = QualityMeter::new(objective(ObjectiveKind::Timing), 0.1);
        feed(&mut m, 400.0, &[5.0, 101.5, 200.0], -70.0);
        let q = m.finish();
        let t = q.timing.clone().unwrap();
        assert_eq!(
            (t.targets, t.hits, t.misses, t.extras),
            (3, 2, 1, 1),
            "{q:?}"
        );
        // Detection times are within a sample of the fed spikes.
        assert!((t.mean_abs_jitter_ms - 0.75).abs() < 0.15, "{t:?}");
        assert!(
            (q.objective_error - (1.5 / 3.0 + 2.0) / 3.0).abs() < 0.1,
            "{q:?}"
        );
        // A spike just outside the window is a miss and an extra.
        let s = match_spikes(&[100.0], &[96.9], 3.0);
        assert_eq!((s.hits, s.misses, s.extras), (0, 1, 1));
        // Two spikes near one target: the closer hits, the other is extra.
        let s = match_spikes(&[100.0], &[99.0, 100.5], 3.0);
        assert_eq!((s.hits, s.extras), (1, 1));
        assert!((s.mean_abs_jitter_ms - 0.5).abs() < 1e-12);
        assert_eq!(match_spikes(&[], &[], 3.0).error(3.0), 0.0);
    }

    #[test]
    fn voltage_and_silence_errors() {
        let mut m = QualityMeter::new(objective(ObjectiveKind::Voltage), 0.1);
        feed(&mut m, 100.0, &[], -62.0);
        assert!((m.finish().objective_error - 3.0).abs() < 1e-9);
        let mut s = QualityMeter::new(objective(ObjectiveKind::Silence), 0.1);
        feed(&mut s, 100.0, &[], -58.0);
        assert!((s.finish().objective_error - 2.0).abs() < 1e-9);
    }
}
