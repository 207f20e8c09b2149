//! `neurostimd scenarios`: every objective with MPC and its baseline on the
//! same seeds, the evidence that the forecaster earns its cost.

use super::{dotted_overlay, UsageError};
use clap::Args;
use neurostimd::policy::PolicyKind;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ScenariosArgs {
    /// Only these scenarios (repeatable): rate, rate_fast, burst, voltage,
    /// silence, timing, delay, rate_unseen, burst_unseen, rate_unseen_cal, burst_unseen_cal.
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// Plant time per run, seconds (default: each scenario's own, 12 s).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Run N seeds of the plant noise, the MPC's sampling and the
    /// randomised cells, from --seed-base.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    seeds: u64,
    /// The first seed: 1 for evaluation (the table), 101 for tuning
    /// (scripts/tune_baselines.py), so tuning never sees evaluation runs.
    #[arg(long, default_value_t = 1)]
    seed_base: u64,
    /// Added to every seed's plant-noise and MPC-sampling seeds, each seed
    /// keeping its cell: replicates of the same cells with other noise, to
    /// see how far a score moves with the noise alone.
    #[arg(long, default_value_t = 0, value_name = "N")]
    noise_offset: u64,
    /// Policies to run (repeatable; default mpc, pid, off); pid runs every
    /// baseline the scenario names.
    #[arg(long, value_enum)]
    policy: Vec<PolicyKind>,
    /// Configuration laid over every scenario (e.g. other gains).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Any configuration key, dotted: --set mpc.candidates=48 --set pid.rate_ki=0.3.
    #[arg(long, value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn cmd_scenarios(a: ScenariosArgs) -> anyhow::Result<()> {
    use neurostimd::scenarios::{self, ScenarioError, ScenarioRequest};
    let ScenariosArgs {
        only,
        duration,
        seeds,
        seed_base,
        noise_offset,
        policy,
        config,
        set,
        json,
    } = a;
    if let Some(d) = duration {
        if !(d.is_finite() && d > 0.0) {
            return Err(UsageError(format!("--duration {d} must be > 0 seconds")).into());
        }
    }
    if seeds == 0 {
        return Err(UsageError("--seeds must be at least 1".into()).into());
    }
    if seed_base == 0 || seed_base.checked_add(seeds).is_none() {
        return Err(UsageError(format!(
            "--seed-base {seed_base} must be at least 1 (and leave room for --seeds {seeds})"
        ))
        .into());
    }
    let req = ScenarioRequest {
        only,
        seeds,
        seed_base,
        duration_s: duration,
        policies: if policy.is_empty() {
            vec![PolicyKind::Mpc, PolicyKind::Pid, PolicyKind::Off]
        } else {
            policy
        },
        config,
        cli: dotted_overlay(&set)?,
        noise_offset,
    };
    let results = scenarios::run(&req).map_err(|e| match e {
        ScenarioError::Unknown(_) => anyhow::Error::new(UsageError(e.to_string())),
        ScenarioError::Config(c) => anyhow::Error::new(c),
        e @ ScenarioError::Table { .. } => anyhow::Error::new(UsageError(e.to_string())),
        e @ ScenarioError::Seeds { .. } => {
            anyhow::Error::new(UsageError(format!("--noise-offset: {e}")))
        }
        other => anyhow::Error::new(other),
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", scenarios::table(&results, seeds, seed_base));
    }
    Ok(())
}
