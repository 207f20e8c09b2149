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
//! − 100).
//!
//! MPC is judged against the best baseline (the least mean error; at equal
//! error, the least charge), never a fixed one. Seeds are
//! `seed_base ..= seed_base + seeds − 1`: the baselines' gains are tuned on
//! seeds from 101 (`scripts/tune_baselines.py`), the table reports seeds
//! from 1, so no figure is judged on the runs it was tuned on.

use crate::config::{Clock, Config, ConfigError};
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
pub const SCENARIOS: [Scenario; 9] = [
    scenario!("rate"),
    scenario!("rate_fast"),
    scenario!("burst"),
    scenario!("voltage"),
    scenario!("silence"),
    scenario!("timing"),
    scenario!("delay"),
    scenario!("rate_unseen"),
    scenario!("burst_unseen"),
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
    #[error("scenario {scenario}, policy {policy}, seed {seed}: {error}")]
    Run {
        scenario: &'static str,
        policy: String,
        seed: u64,
        error: SessionError,
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
}

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
    /// The first decision's reason, if any.
    pub first_reason: Option<String>,
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
    pub policies: Vec<PolicyResult>,
    /// The baseline MPC is judged against (see the module docs).
    pub best_baseline: Option<String>,
    /// 1 − MPC error / best baseline's error (`None`: both at zero).
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
    set(&mut cli, &["plant", "sim"], "seed", (seed as i64).into());
    set(&mut cli, &["mpc"], "seed", (seed as i64).into());
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
    let config = Config::load_stack(&layers, req.config.as_deref(), &cli)?;
    debug_assert_eq!(config.run.clock, Clock::Free);
    let voltage = config.control.objective.kind == ObjectiveKind::Voltage;
    let options = SessionOptions {
        keep_records: voltage,
        ..SessionOptions::default()
    };
    let run_err = |error| ScenarioError::Run {
        scenario: sc.name,
        policy: v.label.clone(),
        seed,
        error,
    };
    let outcome =
        session::run(&config, &options, Arc::new(AtomicBool::new(false))).map_err(run_err)?;
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
            guard: s.guard.as_ref().filter(|g| g.enabled).map(|g| GuardSeed {
                handovers_to_fallback: g.handovers_to_fallback,
                handovers_to_mpc: g.handovers_to_mpc,
                fallback_samples: g.fallback_samples,
                max_model_to_persistence: g
                    .judged
                    .as_ref()
                    .and_then(|j| j.max_model_to_persistence),
                first_reason: g
                    .judged
                    .as_ref()
                    .and_then(|j| j.decisions.first().map(|d| d.reason.clone())),
            }),
        },
        RunInfo {
            preset: config.sim.preset.clone(),
            unit: s.quality.objective_error_unit,
            duration_s: s.plant_time_s,
        },
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
        result.mpc_error_reduction = (!both_zero).then(|| 1.0 - m.mean_error / b.mean_error);
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
