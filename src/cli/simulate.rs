//! `neurostimd simulate`: the simulator alone, open loop, so a cell's
//! parameters can be explored and traces made without any controller.

use super::UsageError;
use anyhow::Context as _;
use clap::Args;
use neurostimd::config::{try_overlay_at, Config};
use neurostimd::simulate::{self, SimulateRequest, Waveform};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Configuration file laid over the built-in defaults (presets, plant settings).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Cell family: ca1 (default) or pospischil.
    #[arg(long)]
    family: Option<String>,
    /// Parameter preset: for ca1 a [presets.NAME] table (regular, bursting,
    /// or your own); for pospischil the class (rs, fs, ib, lts).
    #[arg(long)]
    preset: Option<String>,
    /// Randomised cell: the seed that draws it (0: the preset itself).
    #[arg(long)]
    cell_seed: Option<u64>,
    /// Actuation delay, ms (a whole number of sample periods, <= 50).
    #[arg(long)]
    actuation_delay_ms: Option<f64>,
    /// M-type K conductance g_M, mS/cm².
    #[arg(long, allow_hyphen_values = true)]
    gm: Option<f64>,
    /// Persistent Na conductance g_NaP, mS/cm².
    #[arg(long, allow_hyphen_values = true)]
    gnap: Option<f64>,
    /// Persistent Na half-activation θ_p, mV.
    #[arg(long, allow_hyphen_values = true)]
    thetap: Option<f64>,
    /// Background drive I_app, µA/cm².
    #[arg(long, allow_hyphen_values = true)]
    iapp: Option<f64>,
    /// Any model parameter, KEY=VALUE with the config's keys and units (repeatable),
    /// e.g. --set g_kdr=5 --set tau_q="400 ms" (plant.sim.overrides, or
    /// plant.sim.pospischil with --family pospischil); a dotted key is a
    /// full configuration key, e.g. --set plant.sim.randomize.conductances=0.3.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Simulated duration, ms.
    #[arg(long, default_value_t = 1000.0, allow_hyphen_values = true)]
    duration_ms: f64,
    /// Integrator: dopri5 (adaptive, default) or rk4 (fixed step).
    #[arg(long)]
    integrator: Option<String>,
    /// Fixed integration step, ms (implies --integrator rk4 unless given).
    #[arg(long)]
    dt_ms: Option<f64>,
    /// Relative tolerance of dopri5.
    #[arg(long)]
    tolerance: Option<f64>,
    /// Sample period of the trace, ms.
    #[arg(long)]
    sample_period_ms: Option<f64>,
    /// Gaussian measurement noise on V, mV.
    #[arg(long)]
    noise_sd_mv: Option<f64>,
    /// Seed of the measurement noise.
    #[arg(long)]
    seed: Option<u64>,
    /// Stimulation waveform: CSV of t_ms,current (µA/cm²), held between rows.
    #[arg(long, value_name = "FILE.csv")]
    stim: Option<PathBuf>,
    /// Write t_ms and all nine states at every sample.
    #[arg(long, value_name = "FILE.csv")]
    trace_out: Option<PathBuf>,
    /// Write spike times, one per line in ms with 6 decimals.
    #[arg(long, value_name = "FILE")]
    spikes_out: Option<PathBuf>,
    /// Print the summary as JSON (includes wall_seconds of integration).
    #[arg(long)]
    json: bool,
}

/// The flags as a configuration overlay: dotted `--set` keys first, the
/// named flags over them.
fn simulate_overlay(a: &SimulateArgs) -> anyhow::Result<toml::Table> {
    let mut params = Vec::new();
    let mut dotted = Vec::new();
    for kv in &a.set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--set `{kv}`: expected KEY=VALUE")))?;
        if k.contains('.') {
            dotted.push(kv.clone());
        } else {
            params.push((k.trim().to_string(), v.trim().trim_matches('"').to_string()));
        }
    }
    let mut cli = super::dotted_overlay(&dotted)?;
    let sim = try_overlay_at(&mut cli, &["plant", "sim"]).map_err(UsageError)?;
    if let Some(f) = &a.family {
        sim.insert("family".into(), f.clone().into());
    }
    if let Some(p) = &a.preset {
        sim.insert("preset".into(), p.clone().into());
    }
    if let Some(s) = a.cell_seed {
        let s =
            i64::try_from(s).map_err(|_| UsageError(format!("--cell-seed {s} is too large")))?;
        try_overlay_at(sim, &["randomize"])
            .map_err(UsageError)?
            .insert("cell_seed".into(), s.into());
    }
    if let Some(d) = a.actuation_delay_ms {
        sim.insert("actuation_delay".into(), d.into());
    }
    let integrator = a
        .integrator
        .clone()
        .or_else(|| a.dt_ms.map(|_| "rk4".to_string()));
    if let Some(i) = integrator {
        sim.insert("integrator".into(), i.into());
    }
    if let Some(dt) = a.dt_ms {
        sim.insert("dt".into(), dt.into());
    }
    if let Some(t) = a.tolerance {
        sim.insert("tolerance".into(), t.into());
    }
    if let Some(t) = a.sample_period_ms {
        sim.insert("sample_period".into(), t.into());
    }
    if let Some(n) = a.noise_sd_mv {
        sim.insert("noise_sd".into(), n.into());
    }
    if let Some(s) = a.seed {
        let s = i64::try_from(s).map_err(|_| UsageError(format!("--seed {s} is too large")))?;
        sim.insert("seed".into(), s.into());
    }
    // Parameter flags go to the family's own override table.
    let table = if a.family.as_deref() == Some("pospischil") {
        "pospischil"
    } else {
        "overrides"
    };
    let named = [
        ("g_m", a.gm),
        ("g_nap", a.gnap),
        ("theta_p", a.thetap),
        ("i_app", a.iapp),
    ];
    let any = named.iter().any(|(_, v)| v.is_some()) || !params.is_empty();
    if any {
        let overrides = try_overlay_at(sim, &[table]).map_err(UsageError)?;
        for (key, v) in named {
            if let Some(v) = v {
                overrides.insert(key.into(), v.into());
            }
        }
        for (k, v) in params {
            let value = match v.parse::<f64>() {
                Ok(x) => toml::Value::Float(x),
                Err(_) => toml::Value::String(v),
            };
            overrides.insert(k, value);
        }
    }
    Ok(cli)
}

pub fn cmd_simulate(a: SimulateArgs) -> anyhow::Result<()> {
    if !(a.duration_ms.is_finite() && a.duration_ms > 0.0) {
        return Err(UsageError(format!("--duration-ms {} must be > 0", a.duration_ms)).into());
    }
    let config = Config::load_layered(a.config.as_deref(), &simulate_overlay(&a)?)?;
    let stim = match &a.stim {
        Some(p) => Waveform::load(p)?,
        None => Waveform::default(),
    };
    let req_label = config.sim.cell_label();
    let req = SimulateRequest {
        sim: config.sim,
        duration_ms: a.duration_ms,
        stim,
        trace_out: a.trace_out,
        spikes_out: a.spikes_out,
    };
    let report = simulate::run(&req).context("simulation failed")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} ({}, {}, {} ms simulated in {:.3} s, {:.0}x real time)",
            report.firing,
            req_label,
            report.integrator,
            report.duration_ms,
            report.wall_seconds,
            report.realtime_factor
        );
    }
    Ok(())
}
