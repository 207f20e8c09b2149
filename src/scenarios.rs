//! Control-quality scenarios: each task the field runs, on its cell, with
//! MPC, every baseline the scenario names and no stimulation, on the same
//! seeds in the free clock, side by side (`neurostimd scenarios`).
//!
//! The scenario files live in `config/scenarios/` and are compiled in, so
//! the table can be reproduced from the binary alone; a user's `--config`
//! and `--set` are laid over them (e.g. to try other gains). A scenario
//! file is an ordinary configuration plus a `[scenario]` table that this
//! module takes out first: `[[scenario.baseline]]` entries (a name, a
//! policy and a `set` table laid over the configuration for that baseline
//! only; without any, the one baseline is `pid`), `[scenario.mpc.set]`
//! (laid over MPC's runs only) and `cell_seed_base` (each seed draws its
//! own randomised cell: evaluation seeds 1-99 the held-out cells
//! base + seed, tuning seeds from 101 the tuning cells base + 1000 + seed
//! − 100), and `[scenario.calibrate]` (MPC calibrates on its cell first:
//! see [`CalibrateSpec`]).
//!
//! MPC is judged against the best baseline (the least mean error; at equal
//! error, the least charge), never a fixed one. Seeds are
//! `seed_base ..= seed_base + seeds − 1`: the baselines' gains are tuned on
//! seeds from 101 (`scripts/tune_baselines.py`), the table reports seeds
//! from 1, so no figure is judged on the runs it was tuned on.

use crate::config::{Clock, Config, ConfigError};
use crate::control::guard::Direction;
use crate::control::GuardSummary;
use crate::plant::sim::{SimConfig, SimPlant};
use crate::plant::{Plant, PlantError};
use crate::policy::quality::TimingScore;
use crate::policy::{ObjectiveKind, PolicyKind};
use crate::record::Record;
use crate::session::{self, SessionError, SessionOptions};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// A scenario: a name and its configuration layer.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub file: &'static str,
    pub text: &'static str,
}

macro_rules! scenario {
    ($name:literal) => {
        Scenario {
            name: $name,
            file: concat!("config/scenarios/", $name, ".toml"),
            text: include_str!(concat!("../config/scenarios/", $name, ".toml")),
        }
    };
}

/// Every scenario, in table order.
pub const SCENARIOS: [Scenario; 11] = [
    scenario!("rate"),
    scenario!("rate_fast"),
    scenario!("burst"),
    scenario!("voltage"),
    scenario!("silence"),
    scenario!("timing"),
    scenario!("delay"),
    scenario!("rate_unseen"),
    scenario!("burst_unseen"),
    scenario!("rate_unseen_cal"),
    scenario!("burst_unseen_cal"),
];

fn names() -> String {
    SCENARIOS.map(|s| s.name).join(", ")
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("no scenario named `{0}`; scenarios: {names}", names = names())]
    Unknown(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{file}: [scenario]: {message}")]
    Table { file: &'static str, message: String },
    /// The request's seeds do not fit: the noise seeds are `seed +
    /// noise_offset`, and the config takes them as i64.
    #[error(
        "noise offset {noise_offset} with seed base {seed_base} and seed count {seeds} leaves no room for the noise seeds (seed + offset at most {max})",
        max = i64::MAX
    )]
    Seeds {
        seed_base: u64,
        seeds: u64,
        noise_offset: u64,
    },
    #[error("scenario {scenario}, policy {policy}, seed {seed}: {error}")]
    Run {
        scenario: &'static str,
        policy: String,
        seed: u64,
        error: SessionError,
    },
    #[error("scenario {scenario}, seed {seed}: calibrating MPC's model on the cell: {error}")]
    Calibrate {
        scenario: &'static str,
        seed: u64,
        error: crate::calibrate::CalibrateError,
    },
    #[error("scenario {scenario}, policy {policy}, seed {seed}: replaying the commands for the true membrane: {error}")]
    Replay {
        scenario: &'static str,
        policy: String,
        seed: u64,
        error: PlantError,
    },
}

/// What to run.
#[derive(Clone, Debug)]
pub struct ScenarioRequest {
    /// Scenario names; empty: all.
    pub only: Vec<String>,
    /// How many seeds (plant noise, MPC sampling, randomised cell).
    pub seeds: u64,
    /// The first seed: evaluation from 1, tuning from 101.
    pub seed_base: u64,
    /// Plant time per run, s; `None`: the scenario's own.
    pub duration_s: Option<f64>,
    /// `pid` runs every baseline the scenario names.
    pub policies: Vec<PolicyKind>,
    /// A configuration file laid over each scenario.
    pub config: Option<PathBuf>,
    /// Command-line overrides laid over everything.
    pub cli: toml::Table,
    /// Added to each seed's plant-noise and MPC-sampling seeds (and so to
    /// a calibration's excitation noise), the randomised cell staying the
    /// seed's: replicates of one cell, to tell a policy's effect on that
    /// cell from the run-to-run spread of its noise. 0: the table's runs.
    pub noise_offset: u64,
}

/// One policy on one seed.
#[derive(Clone, Debug, Serialize)]
pub struct SeedResult {
    pub seed: u64,
    pub objective_error: f64,
    /// `voltage`: the RMS error of the simulator's true membrane (no
    /// measurement noise), mV.
    pub true_error: Option<f64>,
    pub charge_nc_cm2: f64,
    pub interventions: u64,
    pub spikes: usize,
    pub bursts: usize,
    pub plan_misses: u64,
    pub timing: Option<TimingScore>,
    /// MPC only: what its guard did on this seed.
    pub guard: Option<GuardSeed>,
    /// MPC in a `[scenario.calibrate]` scenario: the calibration before
    /// the run.
    pub calibration: Option<CalibrationSeed>,
}

/// What the calibration before an MPC run found on its cell (held-out
/// part of the calibration data: the newest 30%).
#[derive(Clone, Debug, Serialize)]
pub struct CalibrationSeed {
    /// The gate passed and MPC ran with the calibrated model; otherwise
    /// with the configured one (and its guard).
    pub adopted: bool,
    pub chosen: String,
    pub epochs: usize,
    pub training_s: f64,
    /// Held-out RMSE at horizon step 1 and at the last step, mV: model,
    /// persistence, AR.
    pub step1_mv: [f64; 3],
    pub last_step_mv: [f64; 3],
    /// Held-out spike F1 (±1 ms) of the model, forecast spikes read at
    /// −20 mV.
    pub spike_f1: f64,
    /// Where MPC read the model's forecast spikes (the card's threshold,
    /// chosen on validation data), and the held-out spike F1 there.
    pub spike_threshold_mv: Option<f64>,
    pub spike_f1_at_threshold: Option<f64>,
    pub verdict: String,
    /// The chosen start on the validation windows: RMS over steps of the
    /// RMSE (mV) and spike F1 at −20 mV.
    pub validation: [f64; 2],
    /// The configured model, untrained, on the same windows: validation
    /// [RMSE, spike F1], held-out step 1 and last step RMSE (mV) and spike
    /// F1.
    pub configured: Option<ConfiguredSeed>,
}

/// [`CalibrationSeed::configured`].
#[derive(Clone, Debug, Serialize)]
pub struct ConfiguredSeed {
    pub validation: [f64; 2],
    pub step1_mv: f64,
    pub last_step_mv: f64,
    pub spike_f1: f64,
}

/// `[scenario.calibrate]`: before each MPC run the cell is calibrated as a
/// user would (`neurostimd calibrate`: the excitation through the limiter,
/// both starts, the gate), on its own plant-noise seed, and MPC runs with
/// the model if it passed the gate. The baselines are not calibrated (they
/// have no model); their gains are the tuning cells'. Training is limited
/// by epochs, not time, so the row is a deterministic function of the
/// binary and the seeds, like every other row.
#[derive(Clone, Debug)]
pub struct CalibrateSpec {
    pub duration_s: f64,
    pub amplitude: f64,
    /// The excitation's seed.
    pub seed: u64,
    pub epochs: usize,
    pub start: crate::calibrate::Start,
}

impl Default for CalibrateSpec {
    fn default() -> Self {
        CalibrateSpec {
            duration_s: 60.0,
            amplitude: 4.0,
            seed: 11,
            epochs: 16,
            start: crate::calibrate::Start::Auto,
        }
    }
}

/// The calibration's plant-noise seed is the run's plus this, so the
/// calibration never sees the noise the run is scored on.
const CALIBRATION_NOISE_SEED: u64 = 1_000_000;

/// What the MPC guard did on one seed: the table's claim that guarded MPC
/// is never worse than no stimulation is read against this.
#[derive(Clone, Debug, Serialize)]
pub struct GuardSeed {
    pub handovers_to_fallback: u64,
    pub handovers_to_mpc: u64,
    /// Samples the fallback drove.
    pub fallback_samples: u64,
    /// The highest model/persistence forecast error ratio while MPC drove.
    pub max_model_to_persistence: Option<f64>,
    /// The first hand-over's reason, if any.
    pub first_reason: Option<String>,
    /// Which forecasts the model was judged by (`planned` or `applied`).
    pub forecasts: &'static str,
    /// Spikes the spike reflex's release fired, the sample the guard
    /// suspended the reflex at for its trial (`control.guard.reflex_rebounds`),
    /// the trial's errors (with, without) and the sample it was resumed at.
    pub reflex_rebounds: u64,
    pub reflex_suspended_at: Option<u64>,
    pub reflex_trial: Option<[f64; 2]>,
    pub reflex_resumed_at: Option<u64>,
    /// The sample the guard went back to the calibration's base model at
    /// (`control.guard.revert`).
    pub model_reverted_at: Option<u64>,
}

impl GuardSeed {
    fn of(g: &GuardSummary) -> GuardSeed {
        let j = g.judged.as_ref();
        GuardSeed {
            handovers_to_fallback: g.handovers_to_fallback,
            handovers_to_mpc: g.handovers_to_mpc,
            fallback_samples: g.fallback_samples,
            max_model_to_persistence: j.and_then(|j| j.max_model_to_persistence),
            first_reason: j.and_then(|j| {
                let handover = [Direction::ToFallback, Direction::ToMpc].map(Direction::name);
                j.decisions
                    .iter()
                    .find(|d| handover.contains(&d.direction))
                    .map(|d| d.reason.clone())
            }),
            forecasts: j.map_or("", |j| j.forecasts),
            reflex_rebounds: j.map_or(0, |j| j.reflex_rebounds),
            reflex_suspended_at: j.and_then(|j| j.reflex_suspended_at),
            reflex_trial: j.and_then(|j| j.reflex_trial),
            reflex_resumed_at: j.and_then(|j| j.reflex_resumed_at),
            model_reverted_at: j.and_then(|j| j.model_reverted_at),
        }
    }
}

/// One policy on one scenario, over the seeds.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyResult {
    /// `mpc`, `off`, `open`, or the baseline's name.
    pub policy: String,
    /// `pid` for every baseline.
    pub kind: &'static str,
    pub mean_error: f64,
    pub mean_true_error: Option<f64>,
    pub mean_charge_nc_cm2: f64,
    pub mean_interventions: f64,
    pub seeds: Vec<SeedResult>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    pub scenario: &'static str,
    pub preset: String,
    pub error_unit: &'static str,
    pub duration_s: f64,
    pub seed_base: u64,
    /// See [`ScenarioRequest::noise_offset`]; absent when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub noise_offset: u64,
    pub policies: Vec<PolicyResult>,
    /// The baseline MPC is judged against (see the module docs).
    pub best_baseline: Option<String>,
    /// 1 − MPC error / best baseline's error, that error floored at
    /// `ZERO_ERROR` (`None`: both at zero).
    pub mpc_error_reduction: Option<f64>,
    /// MPC charge / best baseline's charge.
    pub mpc_charge_ratio: Option<f64>,
}

impl ScenarioResult {
    /// MPC at least 30% lower error than the best baseline at no more
    /// charge; where both errors are at zero, less charge.
    pub fn meets_target(&self) -> Option<bool> {
        let ratio = self.mpc_charge_ratio?;
        Some(match self.mpc_error_reduction {
            Some(e) => e >= 0.30 && ratio <= 1.0,
            None => ratio < 1.0,
        })
    }
}

/// One way to run a scenario: its label in the table, the policy, and the
/// layer laid over the configuration for it.
#[derive(Clone, Debug)]
struct Variant {
    label: String,
    kind: PolicyKind,
    set: toml::Table,
}

/// A scenario file split into its configuration and its `[scenario]` table.
struct Parsed {
    config_text: String,
    baselines: Vec<Variant>,
    mpc_set: toml::Table,
    cell_seed_base: Option<u64>,
    calibrate: Option<CalibrateSpec>,
}

fn parse_calibrate(m: &toml::Table) -> Result<CalibrateSpec, String> {
    let mut c = CalibrateSpec::default();
    for (key, v) in m {
        match (key.as_str(), v) {
            ("duration", toml::Value::String(d)) => {
                c.duration_s = crate::units::parse::<crate::units::Time>(d)? / 1000.0
            }
            ("amplitude", toml::Value::String(a)) => {
                c.amplitude = crate::units::parse::<crate::units::Current>(a)?
            }
            ("seed", toml::Value::Integer(x)) if *x >= 0 => c.seed = *x as u64,
            ("epochs", toml::Value::Integer(x)) if *x >= 1 => c.epochs = *x as usize,
            ("start", toml::Value::String(st)) => {
                c.start = match st.as_str() {
                    "auto" => crate::calibrate::Start::Auto,
                    "warm" => crate::calibrate::Start::Warm,
                    "scratch" => crate::calibrate::Start::Scratch,
                    _ => return Err(format!("calibrate.start = {st:?}: auto, warm or scratch")),
                }
            }
            _ => return Err(format!("unexpected calibrate.{key} = {v}")),
        }
    }
    if c.duration_s.is_nan() || c.duration_s <= 0.0 {
        return Err("calibrate.duration must be > 0".into());
    }
    Ok(c)
}

fn parse(sc: &Scenario) -> Result<Parsed, ScenarioError> {
    let err = |message: String| ScenarioError::Table {
        file: sc.file,
        message,
    };
    let mut t: toml::Table = sc.text.parse().map_err(|e| err(format!("{e}")))?;
    let meta = match t.remove("scenario") {
        None => toml::Table::new(),
        Some(toml::Value::Table(m)) => m,
        Some(_) => return Err(err("must be a table".into())),
    };
    let set_of = |v: Option<&toml::Value>, at: &str| match v {
        None => Ok(toml::Table::new()),
        Some(toml::Value::Table(s)) => Ok(s.clone()),
        Some(_) => Err(err(format!("{at}.set must be a table"))),
    };
    let mut p = Parsed {
        config_text: String::new(),
        baselines: Vec::new(),
        mpc_set: toml::Table::new(),
        cell_seed_base: None,
        calibrate: None,
    };
    for (key, v) in &meta {
        match (key.as_str(), v) {
            ("baseline", toml::Value::Array(list)) => {
                for b in list {
                    let b = b
                        .as_table()
                        .ok_or_else(|| err("baseline entries must be tables".into()))?;
                    let label = b
                        .get("name")
                        .and_then(|n| n.as_str())
                        .ok_or_else(|| err("every [[scenario.baseline]] needs a name".into()))?;
                    let kind: PolicyKind = b
                        .get("policy")
                        .cloned()
                        .unwrap_or_else(|| "pid".into())
                        .try_into()
                        .map_err(|e| err(format!("baseline {label}: policy: {e}")))?;
                    let set = set_of(b.get("set"), &format!("baseline {label}"))?;
                    p.baselines.push(Variant {
                        label: label.into(),
                        kind,
                        set,
                    });
                }
            }
            ("mpc", toml::Value::Table(m)) => p.mpc_set = set_of(m.get("set"), "mpc")?,
            ("cell_seed_base", toml::Value::Integer(b)) if *b >= 0 => {
                p.cell_seed_base = Some(*b as u64)
            }
            ("calibrate", toml::Value::Table(c)) => {
                p.calibrate = Some(parse_calibrate(c).map_err(err)?)
            }
            _ => return Err(err(format!("unexpected `{key}` = {v}"))),
        }
    }
    if p.baselines.is_empty() {
        p.baselines.push(Variant {
            label: "pid".into(),
            kind: PolicyKind::Pid,
            set: toml::Table::new(),
        });
    }
    p.config_text = toml::to_string(&t).expect("a TOML table serialises");
    Ok(p)
}

fn set(t: &mut toml::Table, path: &[&str], key: &str, v: toml::Value) {
    crate::config::overlay_at(t, path).insert(key.into(), v);
}

fn is_zero(x: &u64) -> bool {
    *x == 0
}

/// The randomised cell a seed runs on (see the module docs).
pub fn cell_seed(base: u64, seed: u64) -> u64 {
    if seed < 100 {
        base + seed
    } else {
        base + 1000 + seed - 100
    }
}

/// The V a simulator reports for `records`' commands, replayed open loop
/// from the start: the simulator is deterministic and its noise is on the
/// measurement only, so with `sim` as run this repeats the recorded V, and
/// with `noise_sd_mv = 0` it is the true membrane the cell had.
pub fn replay(sim: &SimConfig, records: &[Record]) -> Result<Vec<f64>, PlantError> {
    let mut plant = SimPlant::new(sim);
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let s = plant.read()?;
        if s.index != r.index {
            return Err(PlantError::Fault {
                t_ms: r.t_ms,
                what: "the records skip samples; they cannot be replayed",
            });
        }
        out.push(s.v_mv);
        plant.write(r.command)?;
    }
    Ok(out)
}

/// RMS of the true membrane − reference over the scored span, mV.
fn true_voltage_error(config: &Config, records: &[Record]) -> Result<f64, PlantError> {
    let mut sim = config.sim.clone();
    sim.noise_sd_mv = 0.0;
    let v = replay(&sim, records)?;
    let o = &config.control.objective;
    let (mut sq, mut n) = (0.0, 0usize);
    for (r, v) in records.iter().zip(&v) {
        if r.t_ms >= o.settle_ms {
            let e = v - o.reference.at(r.t_ms);
            sq += e * e;
            n += 1;
        }
    }
    Ok((sq / n.max(1) as f64).sqrt())
}

/// What one run says about the scenario itself.
struct RunInfo {
    preset: String,
    unit: &'static str,
    duration_s: f64,
}

fn run_one(
    sc: &Scenario,
    parsed: &Parsed,
    v: &Variant,
    seed: u64,
    req: &ScenarioRequest,
) -> Result<(SeedResult, RunInfo), ScenarioError> {
    let mut cli = req.cli.clone();
    set(&mut cli, &["run"], "clock", "free".into());
    if let Some(d) = req.duration_s {
        set(&mut cli, &["run"], "duration", format!("{d} s").into());
    }
    set(&mut cli, &["control"], "policy", v.kind.name().into());
    // `run` checked that every seed's noise seed fits an i64.
    let noise_seed = (seed + req.noise_offset) as i64;
    set(&mut cli, &["plant", "sim"], "seed", noise_seed.into());
    set(&mut cli, &["mpc"], "seed", noise_seed.into());
    if let Some(base) = parsed.cell_seed_base {
        let cell = cell_seed(base, seed) as i64;
        set(
            &mut cli,
            &["plant", "sim", "randomize"],
            "cell_seed",
            cell.into(),
        );
    }
    let variant_text = toml::to_string(&v.set).expect("a TOML table serialises");
    let layers = [
        (sc.file, parsed.config_text.as_str()),
        ("[scenario] set", variant_text.as_str()),
    ];
    let mut config = Config::load_stack(&layers, req.config.as_deref(), &cli)?;
    debug_assert_eq!(config.run.clock, Clock::Free);
    let base_model = config.control.model.clone();
    let calibrated = match (&parsed.calibrate, v.kind) {
        (Some(spec), PolicyKind::Mpc) => {
            let (c, dir) =
                calibrate_on_cell(&mut config, spec, seed, sc.name).map_err(|error| {
                    ScenarioError::Calibrate {
                        scenario: sc.name,
                        seed,
                        error,
                    }
                })?;
            Some((c, dir))
        }
        _ => None,
    };
    let voltage = config.control.objective.kind == ObjectiveKind::Voltage;
    let options = SessionOptions {
        keep_records: voltage,
        base_model: calibrated
            .as_ref()
            .is_some_and(|(c, _)| c.adopted)
            .then_some(base_model),
        ..SessionOptions::default()
    };
    let run_err = |error| ScenarioError::Run {
        scenario: sc.name,
        policy: v.label.clone(),
        seed,
        error,
    };
    let outcome = session::run(&config, &options, Arc::new(AtomicBool::new(false)));
    if let Some((_, dir)) = &calibrated {
        let _ = std::fs::remove_dir_all(dir);
    }
    let outcome = outcome.map_err(run_err)?;
    let true_error = match (&outcome.records, voltage) {
        (Some(r), true) => {
            Some(
                true_voltage_error(&config, r).map_err(|error| ScenarioError::Replay {
                    scenario: sc.name,
                    policy: v.label.clone(),
                    seed,
                    error,
                })?,
            )
        }
        _ => None,
    };
    let s = outcome.summary;
    Ok((
        SeedResult {
            seed,
            objective_error: s.quality.objective_error,
            true_error,
            charge_nc_cm2: s.charge_delivered_nc_cm2,
            interventions: s.interventions_total,
            spikes: s.quality.spikes,
            bursts: s.quality.bursts,
            plan_misses: s.plan_misses,
            timing: s.quality.timing.clone(),
            guard: s.guard.as_ref().filter(|g| g.enabled).map(GuardSeed::of),
            calibration: calibrated.map(|(c, _)| c),
        },
        RunInfo {
            preset: config.sim.preset.clone(),
            unit: s.quality.objective_error_unit,
            duration_s: s.plant_time_s,
        },
    ))
}

/// Calibrate a model on `config`'s cell (a separate excitation run on its
/// own noise seed) and point `config` at it if it passed the gate; the
/// model lives in the returned directory until the run is over.
fn calibrate_on_cell(
    config: &mut Config,
    spec: &CalibrateSpec,
    seed: u64,
    scenario: &str,
) -> Result<(CalibrationSeed, PathBuf), crate::calibrate::CalibrateError> {
    use crate::calibrate::{self as cal, live};
    let dir = std::env::temp_dir().join(format!(
        "neurostimd-scenarios-{}-{scenario}-{seed}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).map_err(cal::io(&dir))?;
    let mut excite = config.clone();
    excite.sim.seed = config.sim.seed + CALIBRATION_NOISE_SEED;
    let req = live::LiveRequest {
        duration_s: spec.duration_s,
        amplitude: spec.amplitude,
        seed: spec.seed,
        record: None,
        command: format!("neurostimd scenarios ({scenario}, seed {seed})"),
    };
    let (_, data) = live::record(&excite, &req, Arc::new(AtomicBool::new(false)))?;
    let mut opts = cal::Options::from_config(config, 0.0, req.command.clone());
    opts.epochs = Some(spec.epochs);
    opts.start = spec.start;
    let out = dir.join("calibrated.onnx");
    let c = cal::calibrate(&data, &opts, &out, None)?;
    if c.verdict.passed {
        config.control.model = crate::forecast::ModelSource::File(out);
    }
    let report = c.candidates.iter().find(|r| r.start == c.chosen);
    let chosen = report.map_or((0, 0.0), |r| (r.epochs, r.training_s));
    let chosen_val = report.map_or([f64::NAN; 2], |r| {
        [r.validation_rmse_mv, r.validation_spike_f1]
    });
    let h = &c.heldout;
    let at = |j: usize| {
        let get = |v: &[f64]| v.get(j).copied().unwrap_or(f64::NAN);
        [
            get(&h.model.rmse_mv),
            get(&h.persistence.rmse_mv),
            get(&h.ar.rmse_mv),
        ]
    };
    let last = h.model.rmse_mv.len().saturating_sub(1);
    Ok((
        CalibrationSeed {
            adopted: c.verdict.passed,
            chosen: c.chosen.clone(),
            epochs: chosen.0,
            training_s: chosen.1,
            step1_mv: at(0),
            last_step_mv: at(last),
            spike_f1: h.model.spikes.f1,
            spike_threshold_mv: c.spike_threshold.map(|t| t.mv),
            spike_f1_at_threshold: c.spike_threshold.map(|t| t.heldout_f1),
            verdict: c.verdict.reason.clone(),
            validation: chosen_val,
            configured: c.configured.as_ref().map(|b| ConfiguredSeed {
                validation: [b.validation_rmse_mv, b.validation_spike_f1],
                step1_mv: b.heldout.model.rmse_mv.first().copied().unwrap_or(f64::NAN),
                last_step_mv: b.heldout.model.rmse_mv.last().copied().unwrap_or(f64::NAN),
                spike_f1: b.heldout.model.spikes.f1,
            }),
        },
        dir,
    ))
}

/// The variants `policies` ask for, in order: `pid` means every baseline.
fn variants(parsed: &Parsed, policies: &[PolicyKind]) -> Vec<Variant> {
    let mut out = Vec::new();
    for &kind in policies {
        match kind {
            PolicyKind::Pid => out.extend(parsed.baselines.iter().cloned()),
            PolicyKind::Mpc => out.push(Variant {
                label: "mpc".into(),
                kind,
                set: parsed.mpc_set.clone(),
            }),
            _ => out.push(Variant {
                label: kind.name().into(),
                kind,
                set: toml::Table::new(),
            }),
        }
    }
    out
}

fn mean(seeds: &[SeedResult], f: impl Fn(&SeedResult) -> f64) -> f64 {
    seeds.iter().map(f).sum::<f64>() / seeds.len().max(1) as f64
}

/// Run the request, scenario by scenario.
pub fn run(req: &ScenarioRequest) -> Result<Vec<ScenarioResult>, ScenarioError> {
    let last_noise_seed = req
        .seed_base
        .checked_add(req.seeds)
        .and_then(|last| last.checked_add(req.noise_offset))
        .filter(|last| *last <= i64::MAX as u64);
    if last_noise_seed.is_none() {
        return Err(ScenarioError::Seeds {
            seed_base: req.seed_base,
            seeds: req.seeds,
            noise_offset: req.noise_offset,
        });
    }
    let chosen: Vec<Scenario> = if req.only.is_empty() {
        SCENARIOS.to_vec()
    } else {
        req.only
            .iter()
            .map(|n| {
                SCENARIOS
                    .iter()
                    .find(|s| s.name == n)
                    .copied()
                    .ok_or_else(|| ScenarioError::Unknown(n.clone()))
            })
            .collect::<Result<_, _>>()?
    };
    let mut out = Vec::new();
    for sc in chosen {
        let parsed = parse(&sc)?;
        let mut result = ScenarioResult {
            scenario: sc.name,
            preset: String::new(),
            error_unit: "",
            duration_s: 0.0,
            seed_base: req.seed_base,
            noise_offset: req.noise_offset,
            policies: Vec::new(),
            best_baseline: None,
            mpc_error_reduction: None,
            mpc_charge_ratio: None,
        };
        for v in variants(&parsed, &req.policies) {
            let mut seeds = Vec::new();
            for seed in req.seed_base..req.seed_base + req.seeds.max(1) {
                let (r, info) = run_one(&sc, &parsed, &v, seed, req)?;
                result.preset = info.preset;
                result.error_unit = info.unit;
                result.duration_s = info.duration_s;
                seeds.push(r);
            }
            let true_errors: Option<Vec<f64>> = seeds.iter().map(|s| s.true_error).collect();
            result.policies.push(PolicyResult {
                policy: v.label.clone(),
                kind: v.kind.name(),
                mean_error: mean(&seeds, |s| s.objective_error),
                mean_true_error: true_errors.map(|t| t.iter().sum::<f64>() / t.len().max(1) as f64),
                mean_charge_nc_cm2: mean(&seeds, |s| s.charge_nc_cm2),
                mean_interventions: mean(&seeds, |s| s.interventions as f64),
                seeds,
            });
        }
        judge(&mut result);
        out.push(result);
    }
    Ok(out)
}

/// Errors this close (in the error's unit) are both "zero".
const ZERO_ERROR: f64 = 1e-3;

/// Pick the best baseline and compare MPC with it.
fn judge(result: &mut ScenarioResult) {
    let best = result
        .policies
        .iter()
        .filter(|p| p.kind == "pid" || p.kind == "open")
        .min_by(|a, b| {
            let both_zero = a.mean_error < ZERO_ERROR && b.mean_error < ZERO_ERROR;
            if both_zero {
                a.mean_charge_nc_cm2.total_cmp(&b.mean_charge_nc_cm2)
            } else {
                a.mean_error.total_cmp(&b.mean_error)
            }
        });
    let mpc = result.policies.iter().find(|p| p.kind == "mpc");
    if let (Some(m), Some(b)) = (mpc, best) {
        let both_zero = m.mean_error < ZERO_ERROR && b.mean_error < ZERO_ERROR;
        result.best_baseline = Some(b.policy.clone());
        // A best baseline at zero error counts as ZERO_ERROR, so that MPC
        // above it reads as a finite excess (+900% at 0.01), not −∞.
        result.mpc_error_reduction =
            (!both_zero).then(|| 1.0 - m.mean_error / b.mean_error.max(ZERO_ERROR));
        result.mpc_charge_ratio = Some(if b.mean_charge_nc_cm2 > 0.0 {
            m.mean_charge_nc_cm2 / b.mean_charge_nc_cm2
        } else if m.mean_charge_nc_cm2 > 0.0 {
            f64::INFINITY
        } else {
            1.0
        });
    }
}

/// The results as a Markdown table.
pub fn table(results: &[ScenarioResult], seeds: u64, seed_base: u64) -> String {
    let last = seed_base + seeds.max(1) - 1;
    let kind = if seed_base >= 101 {
        "tuning"
    } else {
        "evaluation"
    };
    let mut s = format!(
        "| scenario | preset | policy | objective error (mean of {kind} seeds {seed_base}-{last}) | true-membrane error | charge nC/cm2 | interventions | spikes | MPC vs best baseline |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        for p in &r.policies {
            let verdict = if p.kind == "mpc" {
                let base = r.best_baseline.as_deref().unwrap_or("?");
                match (r.mpc_error_reduction, r.mpc_charge_ratio, r.meets_target()) {
                    (Some(e), Some(c), Some(ok)) => format!(
                        "vs {base}: {:+.0}% error, {:.2}x charge: {}",
                        -100.0 * e,
                        c,
                        if ok { "meets target" } else { "misses target" }
                    ),
                    (None, Some(c), Some(ok)) => format!(
                        "vs {base}: both at zero error, {c:.2}x charge: {}",
                        if ok { "meets target" } else { "misses target" }
                    ),
                    _ => String::new(),
                }
            } else {
                String::new()
            };
            let spikes = mean(&p.seeds, |x| x.spikes as f64);
            let true_error = p
                .mean_true_error
                .map_or(String::new(), |t| format!("{t:.4} mV RMS"));
            s.push_str(&format!(
                "| {} | {} | {} | {:.4} {} | {} | {:.0} | {:.1} | {:.1} | {} |\n",
                r.scenario,
                r.preset,
                p.policy,
                p.mean_error,
                r.error_unit,
                true_error,
                p.mean_charge_nc_cm2,
                p.mean_interventions,
                spikes,
                verdict
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A library caller gets the same refusal the CLI gives: a noise seed
    /// past i64 would otherwise reach the config as a negative seed.
    #[test]
    fn a_noise_offset_past_the_seed_range_is_refused_before_any_run() {
        let req = |noise_offset: u64| ScenarioRequest {
            only: vec!["no such scenario".into()],
            seeds: 2,
            seed_base: 1,
            duration_s: None,
            policies: vec![PolicyKind::Off],
            config: None,
            cli: toml::Table::new(),
            noise_offset,
        };
        let e = run(&req(u64::MAX)).unwrap_err();
        assert!(matches!(e, ScenarioError::Seeds { .. }), "{e}");
        assert!(e.to_string().contains("noise offset"), "{e}");
        let edge = i64::MAX as u64 - 3;
        assert!(matches!(
            run(&req(edge + 1)),
            Err(ScenarioError::Seeds { .. })
        ));
        // At the edge the request passes the check and fails on the name.
        assert!(matches!(run(&req(edge)), Err(ScenarioError::Unknown(_))));
    }

    #[test]
    fn mpc_above_a_zero_error_baseline_reads_as_a_finite_excess() {
        let pol = |policy: &str, kind: &'static str, e: f64, c: f64| PolicyResult {
            policy: policy.into(),
            kind,
            mean_error: e,
            mean_true_error: None,
            mean_charge_nc_cm2: c,
            mean_interventions: 1.0,
            seeds: Vec::new(),
        };
        let mut r = ScenarioResult {
            scenario: "burst",
            preset: "bursting".into(),
            error_unit: "",
            duration_s: 12.0,
            seed_base: 1,
            noise_offset: 0,
            policies: vec![
                pol("mpc", "mpc", 0.01, 1645.0),
                pol("pi", "pid", 0.574, 1756.0),
                pol("pulse", "pid", 0.0, 848.0),
            ],
            best_baseline: None,
            mpc_error_reduction: None,
            mpc_charge_ratio: None,
        };
        judge(&mut r);
        assert_eq!(r.best_baseline.as_deref(), Some("pulse"));
        let red = r.mpc_error_reduction.unwrap();
        assert!((red - (1.0 - 0.01 / ZERO_ERROR)).abs() < 1e-9, "{red}");
        assert_eq!(r.meets_target(), Some(false));
        // Both at zero: no reduction, judged on charge.
        r.policies[0].mean_error = 0.0;
        judge(&mut r);
        assert_eq!(r.mpc_error_reduction, None);
        assert_eq!(r.meets_target(), Some(false));
    }

    #[test]
    fn every_scenario_parses_and_the_calibrated_ones_say_how() {
        for sc in SCENARIOS {
            let p = parse(&sc).unwrap_or_else(|e| panic!("{}: {e}", sc.name));
            assert_eq!(
                p.calibrate.is_some(),
                sc.name.ends_with("_cal"),
                "{}",
                sc.name
            );
        }
        let mut t = toml::Table::new();
        t.insert("epochs".into(), 0.into());
        assert!(parse_calibrate(&t)
            .unwrap_err()
            .contains("calibrate.epochs"));
        let mut t = toml::Table::new();
        t.insert("start".into(), "lukewarm".into());
        assert!(parse_calibrate(&t)
            .unwrap_err()
            .contains("auto, warm or scratch"));
        let mut t = toml::Table::new();
        t.insert("duration".into(), "30 s".into());
        t.insert("epochs".into(), 5.into());
        let c = parse_calibrate(&t).unwrap();
        assert_eq!((c.duration_s, c.epochs, c.seed), (30.0, 5, 11));
    }
}
