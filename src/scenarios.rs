//! Control-quality scenarios: each objective on its natural preset, run
//! with MPC and with the matching baseline on the same seeds in the free
//! clock, side by side (`neurostimd scenarios`).
//!
//! The scenario files live in `config/scenarios/` and are compiled in, so
//! the table can be reproduced from the binary alone; a user's `--config`
//! and `--set` are laid over them (e.g. to try other gains).

use crate::config::{Clock, Config, ConfigError};
use crate::policy::PolicyKind;
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

/// Every scenario, in table order.
pub const SCENARIOS: [Scenario; 4] = [
    Scenario {
        name: "rate",
        file: "config/scenarios/rate.toml",
        text: include_str!("../config/scenarios/rate.toml"),
    },
    Scenario {
        name: "burst",
        file: "config/scenarios/burst.toml",
        text: include_str!("../config/scenarios/burst.toml"),
    },
    Scenario {
        name: "voltage",
        file: "config/scenarios/voltage.toml",
        text: include_str!("../config/scenarios/voltage.toml"),
    },
    Scenario {
        name: "silence",
        file: "config/scenarios/silence.toml",
        text: include_str!("../config/scenarios/silence.toml"),
    },
];

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("no scenario named `{0}`; scenarios: rate, burst, voltage, silence")]
    Unknown(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("scenario {scenario}, policy {policy}, seed {seed}: {error}")]
    Run {
        scenario: &'static str,
        policy: &'static str,
        seed: u64,
        error: SessionError,
    },
}

/// What to run.
#[derive(Clone, Debug)]
pub struct ScenarioRequest {
    /// Scenario names; empty: all.
    pub only: Vec<String>,
    /// Seeds 1 ..= seeds (plant noise and MPC sampling).
    pub seeds: u64,
    /// Plant time per run, s; `None`: the scenario's own.
    pub duration_s: Option<f64>,
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
    pub charge_nc_cm2: f64,
    pub interventions: u64,
    pub spikes: usize,
    pub bursts: usize,
    pub plan_misses: u64,
}

/// One policy on one scenario, over the seeds.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyResult {
    pub policy: &'static str,
    pub mean_error: f64,
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
    pub policies: Vec<PolicyResult>,
    /// 1 − MPC error / PID error, if both ran.
    pub mpc_error_reduction: Option<f64>,
    /// MPC charge / PID charge, if both ran.
    pub mpc_charge_ratio: Option<f64>,
}

impl ScenarioResult {
    /// MPC at least 30% lower error than PID at no more charge.
    pub fn meets_target(&self) -> Option<bool> {
        Some(self.mpc_error_reduction? >= 0.30 && self.mpc_charge_ratio? <= 1.0)
    }
}

fn set(t: &mut toml::Table, path: &[&str], key: &str, v: toml::Value) {
    crate::config::overlay_at(t, path).insert(key.into(), v);
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
        let mut result = ScenarioResult {
            scenario: sc.name,
            preset: String::new(),
            error_unit: "",
            duration_s: 0.0,
            policies: Vec::new(),
            mpc_error_reduction: None,
            mpc_charge_ratio: None,
        };
        for &policy in &req.policies {
            let mut seeds = Vec::new();
            for seed in 1..=req.seeds.max(1) {
                let mut cli = req.cli.clone();
                set(&mut cli, &["run"], "clock", "free".into());
                if let Some(d) = req.duration_s {
                    set(&mut cli, &["run"], "duration", format!("{d} s").into());
                }
                set(&mut cli, &["control"], "policy", policy.name().into());
                set(&mut cli, &["plant", "sim"], "seed", (seed as i64).into());
                set(&mut cli, &["mpc"], "seed", (seed as i64).into());
                let config =
                    Config::load_stack(&[(sc.file, sc.text)], req.config.as_deref(), &cli)?;
                debug_assert_eq!(config.run.clock, Clock::Free);
                let outcome = session::run(
                    &config,
                    &SessionOptions::default(),
                    Arc::new(AtomicBool::new(false)),
                )
                .map_err(|error| ScenarioError::Run {
                    scenario: sc.name,
                    policy: policy.name(),
                    seed,
                    error,
                })?;
                let s = outcome.summary;
                result.preset = config.sim.preset.clone();
                result.error_unit = s.quality.objective_error_unit;
                result.duration_s = s.plant_time_s;
                seeds.push(SeedResult {
                    seed,
                    objective_error: s.quality.objective_error,
                    charge_nc_cm2: s.charge_delivered_nc_cm2,
                    interventions: s.interventions_total,
                    spikes: s.quality.spikes,
                    bursts: s.quality.bursts,
                    plan_misses: s.plan_misses,
                });
            }
            let n = seeds.len() as f64;
            result.policies.push(PolicyResult {
                policy: policy.name(),
                mean_error: seeds.iter().map(|s| s.objective_error).sum::<f64>() / n,
                mean_charge_nc_cm2: seeds.iter().map(|s| s.charge_nc_cm2).sum::<f64>() / n,
                mean_interventions: seeds.iter().map(|s| s.interventions as f64).sum::<f64>() / n,
                seeds,
            });
        }
        let get = |p: &str| result.policies.iter().find(|r| r.policy == p);
        if let (Some(m), Some(b)) = (get("mpc"), get("pid")) {
            // Both perfect (to 0.001 of the error's unit): there is no
            // ratio to take, and the charge decides.
            let both_zero = m.mean_error < 1e-3 && b.mean_error < 1e-3;
            result.mpc_error_reduction = (!both_zero).then(|| 1.0 - m.mean_error / b.mean_error);
            result.mpc_charge_ratio = Some(if b.mean_charge_nc_cm2 > 0.0 {
                m.mean_charge_nc_cm2 / b.mean_charge_nc_cm2
            } else {
                f64::INFINITY
            });
        }
        out.push(result);
    }
    Ok(out)
}

/// The results as a Markdown table.
pub fn table(results: &[ScenarioResult], seeds: u64) -> String {
    let mut s = format!(
        "| scenario | preset | policy | objective error (mean of {seeds} seed{}) | charge nC/cm2 | interventions | spikes | MPC vs PID |\n|---|---|---|---|---|---|---|---|\n",
        if seeds == 1 { "" } else { "s" }
    );
    for r in results {
        for p in &r.policies {
            let verdict = if p.policy == "mpc" {
                match (r.mpc_error_reduction, r.mpc_charge_ratio, r.meets_target()) {
                    (Some(e), Some(c), Some(ok)) => format!(
                        "{:+.0}% error, {:.2}x charge: {}",
                        -100.0 * e,
                        c,
                        if ok { "meets target" } else { "misses target" }
                    ),
                    (None, Some(c), _) => format!("both at zero error, {c:.2}x charge"),
                    _ => String::new(),
                }
            } else {
                String::new()
            };
            let spikes =
                p.seeds.iter().map(|x| x.spikes as f64).sum::<f64>() / p.seeds.len() as f64;
            s.push_str(&format!(
                "| {} | {} | {} | {:.4} {} | {:.0} | {:.1} | {:.1} | {} |\n",
                r.scenario,
                r.preset,
                p.policy,
                p.mean_error,
                r.error_unit,
                p.mean_charge_nc_cm2,
                p.mean_interventions,
                spikes,
                verdict
            ));
        }
    }
    s
}
