//! The embedded CA1 neuron as a plant (software in the loop).
//!
//! Holds the neuron state, advances it one sample period per `read` with the
//! stimulation last written, applies scheduled parameter changes at sample
//! boundaries, and adds seeded Gaussian measurement noise to the reported V.
//! Spikes are timed at integrator resolution (every accepted step), which is
//! more accurate than any detector that only sees the samples; the loop and
//! the reports can use them as ground truth.
//!
//! [`SimPlant::new`] allocates (rate tables for every parameter set in the
//! schedule); `read` and `write` never do.

use super::{Plant, PlantError, Sample};
use crate::neuron::integrate::{Dopri5, Method, Rk4};
use crate::neuron::spikes::{SpikeDetector, DEFAULT_THRESHOLD_MV};
use crate::neuron::table::RateTable;
use crate::neuron::{derivatives_with, ExactRates, Params, RateSource, State, INITIAL_STATE, V};
use rand_distr::{Distribution, Normal};
use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

/// A parameter change at a point in simulated time.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ScheduledChange {
    pub at_ms: f64,
    /// What changed, for logs and recordings (e.g. `preset bursting`).
    pub label: String,
    pub params: Params,
}

/// The embedded simulator plant, validated.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SimConfig {
    pub preset: String,
    pub params: Params,
    pub sample_period_ms: f64,
    pub method: Method,
    pub noise_sd_mv: f64,
    pub seed: u64,
    pub schedule: Vec<ScheduledChange>,
}

enum Integrator {
    Rk4(Rk4),
    Dopri5(Dopri5),
}

/// One stretch of constant parameters: from `at_ms` on.
struct Segment {
    at_ms: f64,
    params: Params,
    table: RateTable,
}

/// The simulator plant.
pub struct SimPlant {
    sample_period_ms: f64,
    segments: Vec<Segment>,
    seg: usize,
    y: State,
    /// Index of the next sample `read` returns.
    next: u64,
    /// Command written for the next interval, and the one applied over the
    /// interval that ended at the last sample.
    command: f64,
    integrator: Integrator,
    noise: Option<(Xoshiro256PlusPlus, Normal<f64>)>,
    detector: SpikeDetector,
    /// Spike time (ms) found while producing the last sample, if any.
    last_spike: Option<f64>,
    spike_count: u64,
}

impl SimPlant {
    pub fn new(cfg: &SimConfig) -> SimPlant {
        let mut segments = vec![Segment {
            at_ms: 0.0,
            params: cfg.params,
            table: RateTable::new(cfg.params.theta_p),
        }];
        for c in &cfg.schedule {
            segments.push(Segment {
                at_ms: c.at_ms,
                params: c.params,
                table: RateTable::new(c.params.theta_p),
            });
        }
        let integrator = match cfg.method {
            Method::Rk4 { dt_ms } => Integrator::Rk4(Rk4 { dt_ms }),
            Method::Dopri5 { tol, max_dt_ms } => Integrator::Dopri5(Dopri5::new(tol, max_dt_ms)),
        };
        let noise = (cfg.noise_sd_mv > 0.0).then(|| {
            (
                Xoshiro256PlusPlus::seed_from_u64(cfg.seed),
                Normal::new(0.0, cfg.noise_sd_mv).expect("validated non-negative noise"),
            )
        });
        let mut detector = SpikeDetector::new(DEFAULT_THRESHOLD_MV);
        detector.push(0.0, INITIAL_STATE[V]);
        SimPlant {
            sample_period_ms: cfg.sample_period_ms,
            segments,
            seg: 0,
            y: INITIAL_STATE,
            next: 0,
            command: 0.0,
            integrator,
            noise,
            detector,
            last_spike: None,
            spike_count: 0,
        }
    }

    /// True state at the last sample (no measurement noise).
    pub fn state(&self) -> &State {
        &self.y
    }

    /// Parameters in force now.
    pub fn params(&self) -> &Params {
        &self.segments[self.seg].params
    }

    /// Spike (ms) detected while producing the last sample.
    pub fn last_spike(&self) -> Option<f64> {
        self.last_spike
    }

    /// Spikes since start.
    pub fn spike_count(&self) -> u64 {
        self.spike_count
    }

    /// Accepted integrator steps (dopri5; 0 for rk4), for benchmarks.
    pub fn accepted_steps(&self) -> u64 {
        match &self.integrator {
            Integrator::Dopri5(d) => d.accepted,
            Integrator::Rk4(_) => 0,
        }
    }

    /// Index of the scheduled segment in force (0 before the first change).
    pub fn segment(&self) -> usize {
        self.seg
    }

    fn measured(&mut self, v: f64) -> f64 {
        match &mut self.noise {
            Some((rng, normal)) => v + normal.sample(rng),
            None => v,
        }
    }
}

impl Plant for SimPlant {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn sample_period_ms(&self) -> f64 {
        self.sample_period_ms
    }

    fn read(&mut self) -> Result<Sample, PlantError> {
        let k = self.next;
        self.last_spike = None;
        let t1 = k as f64 * self.sample_period_ms;
        let applied = if k == 0 {
            0.0
        } else {
            let t0 = (k - 1) as f64 * self.sample_period_ms;
            // Changes take effect at the first sample boundary at or after
            // their time, so a whole interval has one parameter set.
            while self.seg + 1 < self.segments.len() && self.segments[self.seg + 1].at_ms <= t0 {
                self.seg += 1;
            }
            let seg = &self.segments[self.seg];
            let (det, last, count) = (
                &mut self.detector,
                &mut self.last_spike,
                &mut self.spike_count,
            );
            let mut on_step = |t: f64, s: &State| {
                if let Some(ts) = det.push(t, s[V]) {
                    *last = Some(ts);
                    *count += 1;
                }
            };
            let i = self.command;
            let p = &seg.params;
            match &mut self.integrator {
                Integrator::Rk4(rk) => {
                    let exact = ExactRates { theta_p: p.theta_p };
                    let f = |y: &State| derivatives_with(p, &exact.rates(y[V]), y, i);
                    rk.advance(f, &mut self.y, t0, t1, &mut on_step)
                }
                Integrator::Dopri5(d) => {
                    let f = |y: &State| derivatives_with(p, &seg.table.rates(y[V]), y, i);
                    d.advance(f, &mut self.y, t0, t1, &mut on_step)
                }
            }
            i
        };
        if !self.y.iter().all(|x| x.is_finite()) {
            return Err(PlantError::Fault {
                t_ms: t1,
                what: "simulator state became non-finite",
            });
        }
        self.next += 1;
        let v = self.y[V];
        Ok(Sample {
            index: k,
            t_ms: t1,
            v_mv: self.measured(v),
            i_applied: applied,
        })
    }

    fn write(&mut self, command: f64) -> Result<(), PlantError> {
        if command.is_finite() {
            self.command = command;
            Ok(())
        } else {
            self.command = 0.0;
            Err(PlantError::BadCommand)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg(text: &str) -> SimConfig {
        Config::from_str_named("t.toml", text).unwrap().sim
    }

    #[test]
    fn first_sample_is_the_initial_state_and_commands_apply_to_the_next_interval() {
        let mut p = SimPlant::new(&cfg(""));
        let s0 = p.read().unwrap();
        assert_eq!(
            (s0.index, s0.t_ms, s0.v_mv, s0.i_applied),
            (0, 0.0, -71.962, 0.0)
        );
        p.write(2.0).unwrap();
        let s1 = p.read().unwrap();
        assert_eq!((s1.index, s1.i_applied), (1, 2.0));
        assert!((s1.t_ms - 0.1).abs() < 1e-12);
    }

    #[test]
    fn non_finite_command_is_refused_and_zero_applied() {
        let mut p = SimPlant::new(&cfg(""));
        p.read().unwrap();
        p.write(1.0).unwrap();
        assert_eq!(p.write(f64::NAN), Err(PlantError::BadCommand));
        assert_eq!(p.read().unwrap().i_applied, 0.0);
    }

    #[test]
    fn noise_is_seeded_and_only_on_the_measurement() {
        let c = cfg("[plant.sim]\nnoise_sd = \"0.5 mV\"\nseed = 7\n");
        let run = |c: &SimConfig| {
            let mut p = SimPlant::new(c);
            (0..100).map(|_| p.read().unwrap().v_mv).collect::<Vec<_>>()
        };
        assert_eq!(run(&c), run(&c));
        let clean = run(&cfg(""));
        let noisy = run(&c);
        let sd = (clean
            .iter()
            .zip(&noisy)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            / 100.0)
            .sqrt();
        assert!((0.3..0.7).contains(&sd), "measured noise sd {sd}");
    }

    #[test]
    fn schedule_switches_parameters_at_a_sample_boundary() {
        let c = cfg("[[plant.sim.schedule]]\nat = \"1 ms\"\npreset = \"bursting\"\n");
        let mut p = SimPlant::new(&c);
        for _ in 0..=10 {
            p.read().unwrap();
        }
        assert_eq!(
            p.segment(),
            0,
            "interval (0.9, 1.0] still runs the first preset"
        );
        p.read().unwrap();
        assert_eq!(p.segment(), 1);
        assert_eq!(p.params().g_nap, 0.41);
    }
}
