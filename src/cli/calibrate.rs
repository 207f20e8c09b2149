//! `neurostimd calibrate`: fit a forecaster to a new cell, live (an
//! excitation through the safety limiter, recorded) or from a trace CSV or
//! a recording; print the held-out table and the gate's verdict (exit 1
//! when the gate refuses). `docs/calibration.md` is the guide.

use super::{dotted_overlay, stop_on_signal, UsageError, LOG_TARGET};
use clap::Args;
use neurostimd::calibrate::{
    self, live, CalibrateError, CalibrationData, GateRule, Options, Start,
};
use neurostimd::config::{overlay_at as table_at, Clock, Config};
use neurostimd::forecast::ModelSource;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// Configuration file laid over the built-in defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override any configuration key (repeatable), e.g. `--set plant.sim.preset=bursting`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Plant to excite (live calibration).
    #[arg(long, value_enum, default_value_t = PlantArg::Sim)]
    plant: PlantArg,
    /// Serial device of the rig (--plant serial).
    #[arg(long, value_name = "PATH")]
    port: Option<PathBuf>,
    /// Neuron preset of the simulator plant.
    #[arg(long)]
    preset: Option<String>,
    /// paced: real time; free: as fast as possible (simulator only).
    #[arg(long, value_enum)]
    clock: Option<Clock>,
    /// Length of the live excitation, e.g. `60s` (a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    duration: String,
    /// Excitation bound, e.g. `4uA/cm2` (default: train.data.max_amplitude,
    /// at most safety.max_amplitude; above the safety limit is refused).
    #[arg(long, value_name = "CURRENT")]
    amplitude: Option<String>,
    /// Seed of the excitation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Record the live excitation here (default: NAME-calibration beside --out).
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// Calibrate offline from a trace CSV (t_ms, V_mV, I_stim_uA_cm2[, sweep]).
    #[arg(long, value_name = "TRACE.csv", conflicts_with = "recording")]
    data: Option<PathBuf>,
    /// Calibrate offline from a recording made with --record.
    #[arg(long, value_name = "DIR")]
    recording: Option<PathBuf>,
    /// Where to write the model (card NAME.json and NAME.evaluation.json beside it).
    #[arg(long, value_name = "MODEL.onnx")]
    out: PathBuf,
    /// Wall-clock training time for both starts together, e.g. `120s`.
    #[arg(long, value_name = "DURATION", default_value = "120s")]
    budget: String,
    /// Which starts to train: both (keep what validation favours), warm or scratch.
    #[arg(long, value_enum, default_value_t = Start::Auto)]
    start: Start,
    /// Base model of the warm start (default: control.model if set, else the embedded family base model `embedded:ca1_lstm_family`; `embedded:ca1_lstm` is the shipped one).
    #[arg(long, value_name = "FILE.onnx")]
    base: Option<String>,
    /// What the model must beat on the held-out data.
    #[arg(long, value_enum, default_value_t = GateRule::EveryStep)]
    gate: GateRule,
    /// Fraction of the data, the newest, held out for evaluation.
    #[arg(long, default_value_t = 0.3)]
    holdout: f64,
    /// Fraction before the held-out part for early stopping and the choice of start.
    #[arg(long, default_value_t = 0.1)]
    validation: f64,
    /// Do not add a passing model to the registry (retrain.state_dir).
    #[arg(long)]
    no_registry: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PlantArg {
    /// The embedded neuron simulator.
    Sim,
    /// A bench rig on a serial port (--port).
    Serial,
}

/// `60s`, `500 ms`, or a bare number of seconds.
pub fn seconds(flag: &str, s: &str) -> Result<f64, UsageError> {
    let v = match s.trim().parse::<f64>() {
        Ok(x) => x,
        Err(_) => {
            neurostimd::units::parse::<neurostimd::units::Time>(s)
                .map_err(|e| UsageError(format!("{flag} {s}: {e}")))?
                / 1000.0
        }
    };
    if !(v.is_finite() && v > 0.0) {
        return Err(UsageError(format!("{flag} {s} must be > 0 seconds")));
    }
    Ok(v)
}

/// `4uA/cm2`, or a bare number in µA/cm².
pub fn current(flag: &str, s: &str) -> Result<f64, UsageError> {
    neurostimd::units::parse::<neurostimd::units::Current>(s)
        .map_err(|e| UsageError(format!("{flag} {s}: {e}")))
}

fn overlay(a: &CalibrateArgs) -> anyhow::Result<toml::Table> {
    let mut cli = dotted_overlay(&a.set)?;
    let kind = match a.plant {
        PlantArg::Sim => "sim",
        PlantArg::Serial => "serial",
    };
    table_at(&mut cli, &["plant"]).insert("kind".into(), kind.into());
    if let Some(p) = &a.port {
        table_at(&mut cli, &["plant", "serial"])
            .insert("port".into(), p.display().to_string().into());
    }
    if let Some(p) = &a.preset {
        table_at(&mut cli, &["plant", "sim"]).insert("preset".into(), p.clone().into());
    }
    if let Some(c) = a.clock {
        let name = match c {
            Clock::Paced => "paced",
            Clock::Free => "free",
        };
        table_at(&mut cli, &["run"]).insert("clock".into(), name.into());
    }
    Ok(cli)
}

fn options(a: &CalibrateArgs, config: &Config, command: String) -> anyhow::Result<Options> {
    let ok = |x: f64, lo: f64, hi: f64| x.is_finite() && x >= lo && x <= hi;
    if !ok(a.holdout, 0.05, 0.6) {
        return Err(UsageError(format!(
            "--holdout {} must be within 0.05 ..= 0.6",
            a.holdout
        ))
        .into());
    }
    if !ok(a.validation, 0.02, 0.4) || a.holdout + a.validation > 0.8 {
        return Err(UsageError(format!(
            "--validation {} must be within 0.02 ..= 0.4 and leave at least 20% for training with --holdout {}",
            a.validation, a.holdout
        ))
        .into());
    }
    let mut o = Options::from_config(config, seconds("--budget", &a.budget)?, command);
    o.start = a.start;
    o.gate = a.gate;
    o.holdout = a.holdout;
    o.validation = a.validation;
    if let Some(b) = &a.base {
        o.base = ModelSource::parse(b);
    }
    Ok(o)
}

/// The live recording's directory: `--record`, or `NAME-calibration`
/// beside the model.
fn record_dir(a: &CalibrateArgs) -> PathBuf {
    a.record.clone().unwrap_or_else(|| {
        let stem = a
            .out
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned());
        a.out.with_file_name(format!("{stem}-calibration"))
    })
}

fn live_data(a: &CalibrateArgs, config: &Config, command: &str) -> anyhow::Result<CalibrationData> {
    let amplitude = match &a.amplitude {
        Some(s) => current("--amplitude", s)?,
        None => config.train.max_amplitude.min(config.safety.max_amplitude),
    };
    let req = live::LiveRequest {
        duration_s: seconds("--duration", &a.duration)?,
        amplitude,
        seed: a.seed,
        record: Some(record_dir(a)),
        command: command.to_string(),
    };
    tracing::info!(
        target: LOG_TARGET,
        plant = ?a.plant,
        duration_s = req.duration_s,
        amplitude_ua_cm2 = amplitude,
        seed = a.seed,
        record = %record_dir(a).display(),
        "calibration: exciting the cell through the safety limiter"
    );
    let (outcome, data) = live::record(config, &req, stop_on_signal()?).map_err(usage)?;
    let s = &outcome.summary;
    eprintln!(
        "recorded {} samples ({:.1} s of plant time) in {}; {} safety interventions; stop: {:?}",
        s.samples,
        s.plant_time_s,
        record_dir(a).display(),
        s.interventions_total,
        s.stop
    );
    if s.stop != neurostimd::control::StopReason::DurationReached {
        anyhow::bail!(
            "the calibration run ended early ({:?}): no model trained",
            s.stop
        );
    }
    Ok(data)
}

/// A calibration error as the exit code wants it (2 for a bad request).
pub fn usage(e: CalibrateError) -> anyhow::Error {
    match e {
        CalibrateError::Usage(m) => UsageError(m).into(),
        CalibrateError::Session(neurostimd::session::SessionError::Budget(m)) => {
            UsageError(m).into()
        }
        other => other.into(),
    }
}

pub fn cmd_calibrate(a: CalibrateArgs) -> anyhow::Result<()> {
    let config = Config::load_layered(a.config.as_deref(), &overlay(&a)?)?;
    let command: String = std::env::args().collect::<Vec<_>>().join(" ");
    let opts = options(&a, &config, command.clone())?;
    let data = match (&a.data, &a.recording) {
        (Some(csv), _) => CalibrationData::from_csv(csv).map_err(usage)?,
        (None, Some(dir)) => CalibrationData::from_recording(dir).map_err(usage)?,
        (None, None) => live_data(&a, &config, &command)?,
    };
    tracing::info!(
        target: LOG_TARGET,
        data = %data.label,
        samples = data.trace.samples(),
        segments = data.trace.segments.len(),
        budget_s = opts.budget_s,
        "calibration: training"
    );
    let state = neurostimd::session::state_dir(&config);
    let registry = (!a.no_registry).then_some(state.as_path());
    let cal = calibrate::calibrate(&data, &opts, &a.out, registry).map_err(usage)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&cal)?);
    } else {
        print!("{}", cal.text());
        println!(
            "wrote {}, {} and {}{}",
            cal.onnx.display(),
            cal.card.display(),
            cal.evaluation.display(),
            registered(cal.version, registry)
        );
    }
    if !cal.verdict.passed {
        anyhow::bail!(
            "the gate refused the calibrated model ({}): {}",
            cal.verdict.rule,
            cal.verdict.reason
        );
    }
    Ok(())
}

fn registered(version: Option<u32>, registry: Option<&Path>) -> String {
    match (version, registry) {
        (Some(v), Some(dir)) => format!("; registered as v{v} in {}/models", dir.display()),
        _ => String::new(),
    }
}
