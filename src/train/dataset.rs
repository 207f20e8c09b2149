//! Training data for the forecaster: stimulation that covers what a
//! controller will do, the simulator's response at the model's time step,
//! and (window, plan, future) examples cut from it, split by time.
//!
//! Everything is deterministic given a seed. Splits are contiguous stretches
//! of time (train, then validation, then test) so no test window shares
//! samples with a training window.

use crate::forecast::card::Normalization;
use crate::plant::sim::SimConfig;
use crate::plant::{Plant, PlantError, SimPlant};
use rand_distr::{Distribution, Normal, Uniform};
use rand_xoshiro::rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// A recorded stretch at the model's step: V at each step's end (mV) and
/// the mean current applied over the step (µA/cm²).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    pub dt_ms: f64,
    pub v: Vec<f32>,
    pub i: Vec<f32>,
}

impl Series {
    pub fn len(&self) -> usize {
        self.v.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v.is_empty()
    }

    /// Contiguous sub-stretch `[from, to)`.
    pub fn slice(&self, from: usize, to: usize) -> Series {
        Series {
            dt_ms: self.dt_ms,
            v: self.v[from..to].to_vec(),
            i: self.i[from..to].to_vec(),
        }
    }

    /// Decimate samples (V, applied I at the sample rate) into model steps of
    /// `decimation` samples, with the forecaster's convention (V at the
    /// step's end, I averaged over the step).
    pub fn from_samples(v: &[f64], i: &[f64], decimation: usize, dt_ms: f64) -> Series {
        let steps = v.len() / decimation;
        let mut out = Series {
            dt_ms,
            v: Vec::with_capacity(steps),
            i: Vec::with_capacity(steps),
        };
        for s in 0..steps {
            let range = s * decimation..(s + 1) * decimation;
            out.v.push(v[range.end - 1] as f32);
            out.i
                .push((i[range].iter().sum::<f64>() / decimation as f64) as f32);
        }
        out
    }
}

/// Stimulation that covers what a controller will do: Ornstein–Uhlenbeck
/// noise, steps, pulse trains, ramps and rest, in random segments, clamped
/// to ±`max_amplitude` (µA/cm²).
#[derive(Clone, Debug)]
pub struct Excitation {
    rng: Xoshiro256PlusPlus,
    sample_period_ms: f64,
    max_amplitude: f64,
    kind: Segment,
    left_ms: f64,
    t_in_segment: f64,
    ou: f64,
}

#[derive(Clone, Copy, Debug)]
enum Segment {
    Rest,
    Step(f64),
    Ou { mean: f64, sd: f64, tau: f64 },
    Pulses { amp: f64, width: f64, period: f64 },
    Ramp { from: f64, to: f64, duration: f64 },
}

impl Excitation {
    pub fn new(seed: u64, sample_period_ms: f64, max_amplitude: f64) -> Excitation {
        Excitation {
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            sample_period_ms,
            max_amplitude,
            kind: Segment::Rest,
            left_ms: 0.0,
            t_in_segment: 0.0,
            ou: 0.0,
        }
    }

    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        Uniform::new(lo, hi).expect("lo < hi").sample(&mut self.rng)
    }

    fn next_segment(&mut self) {
        let a = self.max_amplitude;
        let duration = self.uniform(20.0, 200.0);
        self.kind = match self.rng.next_u32() % 5 {
            0 => Segment::Rest,
            1 => Segment::Step(self.uniform(-0.4 * a, 0.6 * a)),
            2 => Segment::Ou {
                mean: self.uniform(-0.2 * a, 0.3 * a),
                sd: self.uniform(0.05 * a, 0.3 * a),
                tau: self.uniform(1.0, 10.0),
            },
            3 => Segment::Pulses {
                amp: self.uniform(-0.5 * a, a),
                width: self.uniform(0.5, 3.0),
                period: self.uniform(5.0, 40.0),
            },
            _ => Segment::Ramp {
                from: self.uniform(-0.3 * a, 0.5 * a),
                to: self.uniform(-0.3 * a, 0.5 * a),
                duration,
            },
        };
        self.left_ms = duration;
        self.t_in_segment = 0.0;
    }

    /// The current for the next sample period.
    pub fn next_value(&mut self) -> f64 {
        if self.left_ms <= 0.0 {
            self.next_segment();
        }
        let dt = self.sample_period_ms;
        let t = self.t_in_segment;
        self.t_in_segment += dt;
        self.left_ms -= dt;
        let x = match self.kind {
            Segment::Rest => 0.0,
            Segment::Step(level) => level,
            Segment::Ou { mean, sd, tau } => {
                // Exact OU update over dt.
                let decay = (-dt / tau).exp();
                let noise = Normal::new(0.0, sd * (1.0 - decay * decay).sqrt())
                    .expect("finite sd")
                    .sample(&mut self.rng);
                self.ou = mean + (self.ou - mean) * decay + noise;
                self.ou
            }
            Segment::Pulses { amp, width, period } => {
                if t % period < width {
                    amp
                } else {
                    0.0
                }
            }
            Segment::Ramp { from, to, duration } => from + (to - from) * (t / duration).min(1.0),
        };
        x.clamp(-self.max_amplitude, self.max_amplitude)
    }
}

/// Run the simulator plant under random excitation for `duration_ms` and
/// record it at the model step `decimation × sample period`.
pub fn simulate_series(
    sim: &SimConfig,
    duration_ms: f64,
    decimation: usize,
    max_amplitude: f64,
    seed: u64,
) -> Result<Series, PlantError> {
    let mut plant = SimPlant::new(sim);
    let mut exc = Excitation::new(seed, sim.sample_period_ms, max_amplitude);
    let n = (duration_ms / sim.sample_period_ms).round() as usize;
    let (mut v, mut i) = (Vec::with_capacity(n), Vec::with_capacity(n));
    // Sample 0 is the initial state; skip it so every step has an interval.
    plant.read()?;
    for _ in 0..n {
        plant.write(exc.next_value())?;
        let s = plant.read()?;
        v.push(s.v_mv);
        i.push(s.i_applied);
    }
    Ok(Series::from_samples(
        &v,
        &i,
        decimation,
        sim.sample_period_ms * decimation as f64,
    ))
}

/// Examples in the contract's layout, normalised.
#[derive(Clone, Debug, Default)]
pub struct Windows {
    pub t_in: usize,
    pub t_out: usize,
    /// `[n][t_in + t_out][3]`: (V, I, is_future), normalised.
    pub x: Vec<f32>,
    /// `[n][t_out]`: normalised future V, horizon step 1 first.
    pub y: Vec<f32>,
}

/// The spike-aware loss: targets within `radius_ms` of a sample above
/// `threshold_mv` (a spike's upstroke, peak and downstroke) weigh
/// `1 + extra`. The plain squared error is minimised by a forecast that
/// averages over spike timing, which stays below the threshold; weighting
/// the spikes makes missing one cost what it costs the objectives.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct SpikeWeight {
    pub extra: f32,
    pub threshold_mv: f32,
    pub radius_ms: f64,
}

impl SpikeWeight {
    /// The loss weight of every target of the windows
    /// [`Windows::cut`] cuts from `series` with the same arguments,
    /// `[n][t_out]` in the same order.
    pub fn for_windows(
        &self,
        series: &[Series],
        t_in: usize,
        t_out: usize,
        stride: usize,
    ) -> Vec<f32> {
        let mut out = Vec::new();
        for s in series {
            if s.len() < t_in + t_out {
                continue;
            }
            let w = self.weights(s);
            let mut end = t_in - 1;
            while end + t_out < s.len() {
                out.extend_from_slice(&w[end + 1..=end + t_out]);
                end += stride.max(1);
            }
        }
        out
    }

    /// The weight of every step of `s`.
    pub fn weights(&self, s: &Series) -> Vec<f32> {
        let r = (self.radius_ms / s.dt_ms).round() as usize;
        let n = s.len();
        let mut w = vec![1.0f32; n];
        for (p, &v) in s.v.iter().enumerate() {
            if v > self.threshold_mv {
                for x in &mut w[p.saturating_sub(r)..(p + r + 1).min(n)] {
                    *x = 1.0 + self.extra;
                }
            }
        }
        w
    }
}

impl Windows {
    pub fn len(&self) -> usize {
        self.y.len() / self.t_out.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Cut windows every `stride` steps from each series.
    pub fn cut(
        series: &[Series],
        t_in: usize,
        t_out: usize,
        stride: usize,
        norm: &Normalization,
    ) -> Windows {
        let mut w = Windows {
            t_in,
            t_out,
            ..Windows::default()
        };
        let (vm, vs, im, is) = (
            norm.v_mean as f32,
            norm.v_std as f32,
            norm.i_mean as f32,
            norm.i_std as f32,
        );
        for s in series {
            if s.len() < t_in + t_out {
                continue;
            }
            let mut end = t_in - 1;
            while end + t_out < s.len() {
                for p in end + 1 - t_in..=end {
                    w.x.extend_from_slice(&[(s.v[p] - vm) / vs, (s.i[p] - im) / is, 0.0]);
                }
                for p in end + 1..=end + t_out {
                    w.x.extend_from_slice(&[0.0, (s.i[p] - im) / is, 1.0]);
                    w.y.push((s.v[p] - vm) / vs);
                }
                end += stride.max(1);
            }
        }
        w
    }

    /// Measurement-noise augmentation: Gaussian noise of `sd` (normalised
    /// units) added to every observed V of the inputs, never to the targets
    /// or to the forecast rows. Deterministic per seed. A model fitted to
    /// clean inputs trusts the last sample's wiggles; one fitted to noisy
    /// inputs learns to read the trend instead, as it must on a rig.
    pub fn add_input_noise(&mut self, sd: f32, seed: u64) {
        if sd <= 0.0 {
            return;
        }
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f64 + 0.5) / (1u64 << 24) as f64
        };
        let steps = self.t_in + self.t_out;
        for window in self.x.chunks_exact_mut(steps * 3) {
            for row in window[..self.t_in * 3].chunks_exact_mut(3) {
                // Box–Muller.
                let (u1, u2) = (uniform(), uniform());
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                row[0] += sd * z as f32;
            }
        }
    }

    /// Example `k`: its input rows and its target.
    pub fn example(&self, k: usize) -> (&[f32], &[f32]) {
        let steps = self.t_in + self.t_out;
        (
            &self.x[k * steps * 3..(k + 1) * steps * 3],
            &self.y[k * self.t_out..(k + 1) * self.t_out],
        )
    }
}

/// Mean and standard deviation of V and I over the series (for the card).
pub fn normalization(series: &[Series]) -> Normalization {
    let stats = |xs: &mut dyn Iterator<Item = f32>| {
        let (mut n, mut sum, mut sum2) = (0.0f64, 0.0f64, 0.0f64);
        for x in xs {
            n += 1.0;
            sum += x as f64;
            sum2 += (x as f64) * (x as f64);
        }
        let mean = sum / n.max(1.0);
        let var = (sum2 / n.max(1.0) - mean * mean).max(0.0);
        (mean, var.sqrt().max(1e-3))
    };
    let (v_mean, v_std) = stats(&mut series.iter().flat_map(|s| s.v.iter().copied()));
    let (i_mean, i_std) = stats(&mut series.iter().flat_map(|s| s.i.iter().copied()));
    Normalization {
        v_mean,
        v_std,
        i_mean,
        i_std,
    }
}

/// Split each series in time: the first `train` fraction, the next `val`
/// fraction, the rest.
pub fn split_by_time(
    series: &[Series],
    train: f64,
    val: f64,
) -> (Vec<Series>, Vec<Series>, Vec<Series>) {
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for s in series {
        let n = s.len();
        let t1 = (n as f64 * train) as usize;
        let t2 = (n as f64 * (train + val)) as usize;
        a.push(s.slice(0, t1));
        b.push(s.slice(t1, t2.max(t1)));
        c.push(s.slice(t2.max(t1), n));
    }
    (a, b, c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn excitation_is_deterministic_bounded_and_varied() {
        let run = |seed| {
            let mut e = Excitation::new(seed, 0.1, 5.0);
            (0..50_000).map(|_| e.next_value()).collect::<Vec<_>>()
        };
        let a = run(3);
        assert_eq!(a, run(3));
        assert_ne!(a, run(4));
        assert!(a.iter().all(|x| x.abs() <= 5.0 && x.is_finite()));
        let distinct = a.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(distinct > 1000, "not varied: {distinct} changes");
        assert!(a.iter().any(|&x| x < -0.5) && a.iter().any(|&x| x > 1.0));
    }

    #[test]
    fn series_decimate_like_the_window_ring_and_windows_line_up() {
        let s = Series::from_samples(
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            &[1.0, 3.0, 0.0, 0.0, 2.0, 2.0],
            2,
            0.2,
        );
        assert_eq!(s.v, [2.0, 4.0, 6.0]);
        assert_eq!(s.i, [2.0, 0.0, 2.0]);
        let series = Series {
            dt_ms: 0.5,
            v: (0..10).map(|x| x as f32).collect(),
            i: (0..10).map(|x| 10.0 + x as f32).collect(),
        };
        let norm = Normalization {
            v_mean: 0.0,
            v_std: 1.0,
            i_mean: 0.0,
            i_std: 1.0,
        };
        let w = Windows::cut(&[series], 3, 2, 2, &norm);
        // Ends at 2, 4, 6 (8 + 2 would run past the end).
        assert_eq!(w.len(), 3);
        let (x, y) = w.example(1);
        assert_eq!(y, [5.0, 6.0]);
        assert_eq!(&x[..3], [2.0, 12.0, 0.0]);
        assert_eq!(&x[9..], [0.0, 15.0, 1.0, 0.0, 16.0, 1.0]);
    }

    #[test]
    fn spike_weights_cover_a_millisecond_around_spikes_and_align_with_windows() {
        let mut v = vec![-65.0f32; 20];
        v[10] = 10.0;
        let s = Series {
            dt_ms: 0.5,
            v,
            i: vec![0.0; 20],
        };
        let sw = SpikeWeight {
            extra: 4.0,
            threshold_mv: -20.0,
            radius_ms: 1.0,
        };
        let w = sw.weights(&s);
        let heavy: Vec<usize> = (0..20).filter(|&k| w[k] == 5.0).collect();
        assert_eq!(heavy, [8, 9, 10, 11, 12]);
        assert!(w.iter().all(|&x| x == 1.0 || x == 5.0));
        let norm = normalization(std::slice::from_ref(&s));
        let win = Windows::cut(std::slice::from_ref(&s), 4, 3, 2, &norm);
        let per = sw.for_windows(std::slice::from_ref(&s), 4, 3, 2);
        assert_eq!(per.len(), win.y.len());
        // Window k's targets are steps 4 + 2k ..= 6 + 2k.
        for k in 0..win.len() {
            assert_eq!(&per[k * 3..k * 3 + 3], &w[4 + 2 * k..=6 + 2 * k]);
        }
    }

    #[test]
    fn simulated_series_respond_to_stimulation() {
        let sim = Config::defaults().sim;
        let s = simulate_series(&sim, 500.0, 5, 4.0, 1).unwrap();
        assert_eq!(s.len(), 1000);
        assert!(s.v.iter().any(|&v| v > 0.0), "some spikes");
        assert!(s.i.iter().any(|&i| i != 0.0));
        let (a, b, c) = split_by_time(&[s], 0.7, 0.15);
        assert_eq!((a[0].len(), b[0].len(), c[0].len()), (700, 150, 150));
    }
}
