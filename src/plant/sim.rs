//! The embedded neuron as a plant (software in the loop).
//!
//! Holds the neuron state, advances it one sample period per `read` with the
//! stimulation last written, applies scheduled parameter changes at sample
//! boundaries, and adds seeded Gaussian measurement noise to the reported V.
//! Spikes are timed at integrator resolution (every accepted step), which is
//! more accurate than any detector that only sees the samples; the loop and
//! the reports can use them as ground truth.
//!
//! Two families of cells share one plant and one pair of integrators
//! ([`Family`]): the CA1 cell of Golomb et al. (2006), with its rate tables
//! and schedule, and the cortical classes of Pospischil et al. (2008), whose
//! eight states ride in the same nine-slot state vector (the ninth stays 0)
//! so that the integrators, their error control and the spike timing are the
//! same code. A cell may be a seeded draw around its preset
//! ([`crate::neuron::cell`]); configuration applies the draw, so
//! [`SimConfig`] holds the parameters the cell really has.
//!
//! An actuation delay holds each command in a ring for a whole number of
//! samples before it reaches the membrane, as an optogenetic actuator or a
//! slow bench amplifier would; `Sample::i_applied` stays the command as the
//! actuator was given it, which is what a rig can report.
//!
//! [`SimPlant::new`] allocates (rate tables for every parameter set in the
//! schedule, the delay ring); `read` and `write` never do.

use super::{Plant, PlantError, Sample};
use crate::neuron::cell::CellDraw;
use crate::neuron::integrate::{Dopri5, Method, Rk4};
use crate::neuron::pospischil;
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

/// Which equations the simulator integrates.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum Family {
    /// Golomb et al.'s CA1 cell: [`SimConfig::params`] and the schedule.
    Ca1,
    /// A Pospischil et al. (2008) class with its parameters (drawn, for a
    /// randomised cell). [`SimConfig::params`] is not used.
    Pospischil {
        class: pospischil::Class,
        params: pospischil::Params,
    },
}

/// The embedded simulator plant, validated.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SimConfig {
    pub preset: String,
    /// The CA1 parameters at t = 0, with the cell's draw applied.
    pub params: Params,
    pub family: Family,
    /// The randomised cell (`plant.sim.randomize.cell_seed`), `None` for
    /// the nominal cell (seed 0).
    pub cell: Option<CellDraw>,
    pub sample_period_ms: f64,
    pub method: Method,
    pub noise_sd_mv: f64,
    pub seed: u64,
    /// Scheduled changes (CA1 only), the cell's draw applied to each.
    pub schedule: Vec<ScheduledChange>,
    /// Samples between a command's write and its arrival at the membrane
    /// (`plant.sim.actuation_delay`); 0: the next interval, as a rig.
    pub actuation_delay_samples: usize,
}

/// The cell as run, for reports, summaries and recordings: which family and
/// preset, which seed, and every parameter it ended up with.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CellInfo {
    pub family: &'static str,
    pub preset: String,
    /// 0: the nominal cell.
    pub cell_seed: u64,
    pub actuation_delay_ms: f64,
    pub params: CellParams,
    /// What the seed drew, in draw order (empty for seed 0).
    pub draws: Vec<crate::neuron::cell::Draw>,
}

/// A family's parameters, serialised as a flat table of the family's keys.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum CellParams {
    Ca1(Params),
    Pospischil(pospischil::Params),
}

impl SimConfig {
    /// The nominal CA1 parameter set `nominal` as this config's cell: the
    /// cell's draw laid over it when the cell is randomised.
    pub fn cell_params(&self, mut nominal: Params) -> Params {
        if let Some(c) = &self.cell {
            c.apply_ca1(&mut nominal);
        }
        nominal
    }

    /// This simulator (sample period, integrator, noise, delay and cell
    /// seed) running the CA1 preset `name` (parameters `nominal`) without
    /// a schedule: how training sources and evaluations name a preset while
    /// keeping the configured cell.
    pub fn with_ca1_preset(&self, name: &str, nominal: Params) -> SimConfig {
        let cell = self.cell.as_ref().map(CellDraw::for_ca1);
        let mut out = SimConfig {
            preset: name.to_string(),
            family: Family::Ca1,
            schedule: Vec::new(),
            cell,
            ..self.clone()
        };
        out.params = out.cell_params(nominal);
        out
    }

    /// The actuation delay, ms.
    pub fn actuation_delay_ms(&self) -> f64 {
        self.actuation_delay_samples as f64 * self.sample_period_ms
    }

    /// What cell this is, with every parameter it runs with.
    pub fn cell_info(&self) -> CellInfo {
        let (family, params) = match &self.family {
            Family::Ca1 => ("ca1", CellParams::Ca1(self.params)),
            Family::Pospischil { params, .. } => ("pospischil", CellParams::Pospischil(*params)),
        };
        CellInfo {
            family,
            preset: self.preset.clone(),
            cell_seed: self.cell.as_ref().map_or(0, |c| c.cell_seed),
            actuation_delay_ms: self.actuation_delay_ms(),
            params,
            draws: self
                .cell
                .as_ref()
                .map_or_else(Vec::new, |c| c.draws.clone()),
        }
    }

    /// One line for logs and the `simulate` summary: family, preset, seed
    /// and the drawn parameters' values.
    pub fn cell_label(&self) -> String {
        let info = self.cell_info();
        let mut s = format!("{} {}", info.family, info.preset);
        if info.cell_seed == 0 {
            s.push_str(", nominal cell");
        } else {
            s.push_str(&format!(", cell {}:", info.cell_seed));
            let table = serde_json::to_value(&info.params).unwrap_or_default();
            let value = |key: &str| table.get(key).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
            for d in &info.draws {
                if d.range > 0.0 {
                    s.push_str(&format!(" {}={:.4}", d.key, value(d.key)));
                }
            }
        }
        if self.actuation_delay_samples > 0 {
            s.push_str(&format!(
                ", actuation delay {} ms",
                self.actuation_delay_ms()
            ));
        }
        s
    }
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

/// The equations in force.
enum Cell {
    Ca1 { segments: Vec<Segment>, seg: usize },
    Pospischil(pospischil::Params),
}

/// The Pospischil right-hand side on the nine-slot state (slot 8 unused).
#[inline(always)]
fn pospischil_rhs(p: &pospischil::Params, y: &State, i_stim: f64) -> State {
    let s = [y[0], y[1], y[2], y[3], y[4], y[5], y[6], y[7]];
    let d = pospischil::derivatives(p, &s, i_stim);
    [d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], 0.0]
}

/// Where a Pospischil cell starts: its rest without the background drive
/// (every published class has one), so a drive switched on at t = 0 shows
/// its onset response; a drawn cell without such a rest starts with its
/// gates at steady state at the leak reversal.
fn pospischil_start(p: &pospischil::Params) -> State {
    let quiet = pospischil::Params { i_app: 0.0, ..*p };
    let s = pospischil::rest_state(&quiet)
        .unwrap_or_else(|| pospischil::steady_state_at(&quiet, quiet.e_leak));
    [s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], 0.0]
}

/// The simulator plant.
pub struct SimPlant {
    sample_period_ms: f64,
    cell: Cell,
    /// Names of the states in `y` that the family uses.
    state_names: &'static [&'static str],
    y: State,
    /// Index of the next sample `read` returns.
    next: u64,
    /// Command written for the next interval, and the one applied over the
    /// interval that ended at the last sample.
    command: f64,
    /// Commands on their way to the membrane (actuation delay), oldest at
    /// `delay_at`; empty without a delay.
    delay: Vec<f64>,
    delay_at: usize,
    integrator: Integrator,
    noise: Option<(Xoshiro256PlusPlus, Normal<f64>)>,
    detector: SpikeDetector,
    /// Spike time (ms) found while producing the last sample, if any.
    last_spike: Option<f64>,
    spike_count: u64,
}

impl SimPlant {
    pub fn new(cfg: &SimConfig) -> SimPlant {
        let (cell, y, state_names): (Cell, State, &'static [&'static str]) = match &cfg.family {
            Family::Ca1 => {
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
                (
                    Cell::Ca1 { segments, seg: 0 },
                    INITIAL_STATE,
                    &crate::neuron::STATE_NAMES,
                )
            }
            Family::Pospischil { params, .. } => (
                Cell::Pospischil(*params),
                pospischil_start(params),
                &pospischil::STATE_NAMES,
            ),
        };
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
        detector.push(0.0, y[V]);
        SimPlant {
            sample_period_ms: cfg.sample_period_ms,
            cell,
            state_names,
            y,
            next: 0,
            command: 0.0,
            delay: vec![0.0; cfg.actuation_delay_samples],
            delay_at: 0,
            integrator,
            noise,
            detector,
            last_spike: None,
            spike_count: 0,
        }
    }

    /// True state at the last sample (no measurement noise). The family's
    /// states are the first [`Self::state_names`]`.len()` entries.
    pub fn state(&self) -> &State {
        &self.y
    }

    /// Names of the family's states, in the order of [`Self::state`].
    pub fn state_names(&self) -> &'static [&'static str] {
        self.state_names
    }

    /// CA1 parameters in force now (`None` for a Pospischil cell).
    pub fn params(&self) -> Option<&Params> {
        match &self.cell {
            Cell::Ca1 { segments, seg } => Some(&segments[*seg].params),
            Cell::Pospischil(_) => None,
        }
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

    /// Index of the scheduled segment in force (0 before the first change,
    /// and always for a Pospischil cell).
    pub fn segment(&self) -> usize {
        match &self.cell {
            Cell::Ca1 { seg, .. } => *seg,
            Cell::Pospischil(_) => 0,
        }
    }

    fn measured(&mut self, v: f64) -> f64 {
        match &mut self.noise {
            Some((rng, normal)) => v + normal.sample(rng),
            None => v,
        }
    }

    /// The command that reaches the membrane over this interval: `command`
    /// itself, or the one written `delay.len()` samples earlier (zero at
    /// first). No allocation: the ring was sized in `new`.
    #[inline]
    fn through_actuator(&mut self, command: f64) -> f64 {
        if self.delay.is_empty() {
            return command;
        }
        let out = std::mem::replace(&mut self.delay[self.delay_at], command);
        self.delay_at = (self.delay_at + 1) % self.delay.len();
        out
    }

    /// Integrate from `t0` to `t1` with `i` on the membrane, timing spikes
    /// at every accepted step.
    fn advance(&mut self, t0: f64, t1: f64, i: f64) {
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
        match &mut self.cell {
            Cell::Ca1 { segments, seg } => {
                // Changes take effect at the first sample boundary at or
                // after their time, so a whole interval has one parameter set.
                while *seg + 1 < segments.len() && segments[*seg + 1].at_ms <= t0 {
                    *seg += 1;
                }
                let segment = &segments[*seg];
                let p = &segment.params;
                match &mut self.integrator {
                    Integrator::Rk4(rk) => {
                        let exact = ExactRates { theta_p: p.theta_p };
                        let f = |y: &State| derivatives_with(p, &exact.rates(y[V]), y, i);
                        rk.advance(f, &mut self.y, t0, t1, &mut on_step)
                    }
                    Integrator::Dopri5(d) => {
                        let f = |y: &State| derivatives_with(p, &segment.table.rates(y[V]), y, i);
                        d.advance(f, &mut self.y, t0, t1, &mut on_step)
                    }
                }
            }
            Cell::Pospischil(p) => {
                let f = |y: &State| pospischil_rhs(p, y, i);
                match &mut self.integrator {
                    Integrator::Rk4(rk) => rk.advance(f, &mut self.y, t0, t1, &mut on_step),
                    Integrator::Dopri5(d) => d.advance(f, &mut self.y, t0, t1, &mut on_step),
                }
            }
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
            let i = self.command;
            let on_membrane = self.through_actuator(i);
            self.advance(t0, t1, on_membrane);
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
        assert_eq!(p.params().unwrap().g_nap, 0.41);
    }

    /// Samples of V under `commands` (written after each read).
    fn run_with(c: &SimConfig, commands: impl Fn(usize) -> f64, n: usize) -> Vec<Sample> {
        let mut p = SimPlant::new(c);
        (0..n)
            .map(|k| {
                let s = p.read().unwrap();
                p.write(commands(k)).unwrap();
                s
            })
            .collect()
    }

    #[test]
    fn actuation_delay_is_the_same_commands_later_on_the_membrane() {
        let delayed = cfg("[plant.sim]\nactuation_delay = \"2 ms\"\n");
        assert_eq!(delayed.actuation_delay_samples, 20);
        let pulse = |k: usize| if (50..80).contains(&k) { 8.0 } else { 0.0 };
        let late = run_with(&delayed, pulse, 400);
        let shifted = run_with(&cfg(""), |k| if k >= 20 { pulse(k - 20) } else { 0.0 }, 400);
        for (a, b) in late.iter().zip(&shifted) {
            assert_eq!(a.v_mv, b.v_mv, "sample {}", a.index);
        }
        // The applied current reported is the command as issued.
        assert_eq!(late[51].i_applied, 8.0);
        assert_eq!(shifted[51].i_applied, 0.0);
        // And the pulse moved the membrane: the undelayed run differs.
        let now = run_with(&cfg(""), pulse, 400);
        assert_ne!(now[60].v_mv, late[60].v_mv);
    }

    #[test]
    fn a_randomised_cell_differs_and_its_seed_alone_decides_it() {
        let nominal = cfg("");
        let a = cfg("[plant.sim.randomize]\ncell_seed = 1001\n");
        let b = cfg("[plant.sim]\nseed = 9\n[plant.sim.randomize]\ncell_seed = 1001\n");
        let c = cfg("[plant.sim.randomize]\ncell_seed = 1002\n");
        assert_ne!(a.params, nominal.params);
        assert_eq!(
            a.params, b.params,
            "the noise seed does not change the cell"
        );
        assert_ne!(a.params, c.params);
        // Reversals, time constants and the drive are not drawn.
        assert_eq!(
            (a.params.e_na, a.params.tau_q, a.params.i_app),
            (
                nominal.params.e_na,
                nominal.params.tau_q,
                nominal.params.i_app
            )
        );
        let v = |c: &SimConfig| run_with(c, |_| 0.0, 3000).last().unwrap().v_mv;
        assert_ne!(v(&a), v(&nominal));
        assert!(
            a.cell_label().contains("cell 1001: cm="),
            "{}",
            a.cell_label()
        );
    }

    #[test]
    fn the_draw_scales_every_scheduled_parameter_set() {
        let c = cfg("[plant.sim.randomize]\ncell_seed = 5\n\
             [[plant.sim.schedule]]\nat = \"1 s\"\npreset = \"bursting\"\n");
        let bursting = Config::defaults().preset("bursting").unwrap();
        assert_eq!(c.schedule[0].params, c.cell_params(bursting));
        assert_ne!(c.schedule[0].params, bursting);
        let train = c.with_ca1_preset("bursting", bursting);
        assert_eq!(train.params, c.schedule[0].params);
        assert!(train.schedule.is_empty());
    }

    fn pospischil_cfg(class: &str, extra: &str) -> SimConfig {
        cfg(&format!(
            "[plant.sim]\nfamily = \"pospischil\"\npreset = \"{class}\"\n{extra}"
        ))
    }

    #[test]
    fn a_pospischil_cell_without_drive_stays_at_its_published_rest() {
        let c = pospischil_cfg("rs", "");
        let run = run_with(&c, |_| 0.0, 5000);
        let rest = pospischil::rest_state(&pospischil::Params::for_class(pospischil::Class::Rs))
            .unwrap()[0];
        assert!(run.iter().all(|s| (s.v_mv - rest).abs() < 1e-6));
        assert!((rest - -71.9).abs() < 0.05);
    }

    /// The plant (dopri5, 0.1 ms samples) against the module's own RK4 at
    /// 0.01 ms on each class's published protocol: same spikes to 0.01 ms.
    #[test]
    fn pospischil_plant_reproduces_the_module_spike_times() {
        for (name, class, amp_na) in [
            ("rs", pospischil::Class::Rs, 0.2),
            ("fs", pospischil::Class::Fs, 1.0),
            ("ib", pospischil::Class::Ib, 0.15),
            ("lts", pospischil::Class::Lts, -0.2),
        ] {
            let p = pospischil::Params::for_class(class);
            let amp = p.na_to_density(amp_na);
            let step = |k: usize| if (1000..6000).contains(&k) { amp } else { 0.0 };
            let c = pospischil_cfg(name, "");
            let mut plant = SimPlant::new(&c);
            let mut spikes = Vec::new();
            for k in 0..8000 {
                plant.read().unwrap();
                spikes.extend(plant.last_spike());
                plant.write(step(k)).unwrap();
            }
            // The plant applies the command written after sample k over
            // (k, k + 1]: a step from 100.0 to 600.0 ms.
            let y0 = pospischil::rest_state(&p).unwrap();
            let stim = pospischil::step_current(0.0, amp, 100.0, 600.0);
            let (trace, _) = pospischil::simulate_params(&p, y0, stim, 800.0, 0.01);
            let t: Vec<f64> = trace.iter().map(|x| x.0).collect();
            let v: Vec<f64> = trace.iter().map(|x| x.1).collect();
            let want = crate::neuron::spikes::detect_spikes(&t, &v, DEFAULT_THRESHOLD_MV);
            assert!(!want.is_empty(), "{name}");
            assert_eq!(spikes.len(), want.len(), "{name}: {spikes:?} vs {want:?}");
            let worst = spikes
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(worst < 0.01, "{name}: {worst} ms");
        }
    }
}
