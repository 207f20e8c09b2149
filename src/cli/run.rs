//! Running the daemon (no subcommand): the closed loop with its service
//! (control API, metrics, systemd notifications), until the duration ends
//! or a signal or `ctl shutdown` stops it.

use super::{stop_on_signal, UsageError, LOG_TARGET};
use clap::Args;
use neurostimd::config::{overlay_at as table_at, Clock, Config};
use neurostimd::control;
use neurostimd::control::controls::LoopControls;
use neurostimd::policy::{ObjectiveKind, PolicyKind};
use neurostimd::retrain::RetrainOps;
use neurostimd::service::latency::LiveLatency;
use neurostimd::service::notify::Notifier;
use neurostimd::service::{self, RunInfo, Service, ServiceSetup};
use neurostimd::session::{self, ServiceHooks, SessionError, SessionOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

// Flattened into the top-level parser: the daemon is the command-less call.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Configuration file laid over the built-in defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Plant to drive.
    #[arg(long, value_enum, default_value_t = PlantArg::Sim)]
    plant: PlantArg,
    /// Serial device of the rig (--plant serial; overrides plant.serial.port).
    #[arg(long, value_name = "PATH")]
    port: Option<PathBuf>,
    /// Baud rate (overrides plant.serial.baud).
    #[arg(long)]
    baud: Option<u32>,
    /// Seconds of plant time to run (default: until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true)]
    duration: Option<f64>,
    /// paced: real time; free: as fast as possible.
    #[arg(long, value_enum)]
    clock: Option<Clock>,
    /// Neuron preset of the simulator plant (overrides the config).
    #[arg(long)]
    preset: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Write latency reports here: .hgrm percentile distributions, a
    /// per-second interval log (latency.hlog) and summary.json. Default: a
    /// new directory under run.reports (config).
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// Who picks the stimulation (overrides control.policy).
    #[arg(long, value_enum)]
    policy: Option<PolicyKind>,
    /// What the stimulation is for (overrides control.objective).
    #[arg(long, value_enum)]
    objective: Option<ObjectiveKind>,
    /// Forecaster for the mpc policy (overrides control.model).
    #[arg(long, value_name = "FILE.onnx")]
    model: Option<PathBuf>,
    /// Write every sample (t, V, applied, requested and commanded current,
    /// safety cause) to this CSV file; with the mpc policy, each plan's
    /// forecast goes to FILE.forecasts.csv beside it (for `neurostimd plot`).
    #[arg(long, value_name = "FILE.csv")]
    trace_out: Option<PathBuf>,
    /// Record the run here in the Open Ephys binary layout (V, controller
    /// outputs, events, forecasts; a new directory). Default: a new
    /// directory under record.dir (config), if set.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// The recording to play back (--plant replay).
    #[arg(long, value_name = "DIR")]
    recording: Option<PathBuf>,
    /// Retrain the forecaster onboard ([retrain] in the config; sets
    /// retrain.enabled).
    #[arg(long)]
    retrain: bool,
    /// Calibrate first, e.g. `60s`: excite the cell through the safety
    /// limiter, train and gate a model on it, then run the policy with it
    /// (if it passed) on the same plant; --duration is the run after it
    /// (docs/calibration.md).
    #[arg(long, value_name = "DURATION")]
    calibrate: Option<String>,
    /// Excitation bound of --calibrate (default: train.data.max_amplitude).
    #[arg(long, value_name = "CURRENT", requires = "calibrate")]
    calibrate_amplitude: Option<String>,
    /// Training time of --calibrate (default 120s).
    #[arg(long, value_name = "DURATION", requires = "calibrate")]
    calibrate_budget: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PlantArg {
    /// The embedded CA1 neuron simulator.
    Sim,
    /// A bench rig on a serial port (--port), e.g. `neurostimd rig`.
    Serial,
    /// A recording played back open loop (--recording DIR).
    Replay,
}

impl PlantArg {
    fn kind(self) -> &'static str {
        match self {
            PlantArg::Sim => "sim",
            PlantArg::Serial => "serial",
            PlantArg::Replay => "replay",
        }
    }
}

pub fn cmd_run(a: RunArgs) -> anyhow::Result<()> {
    let config = Config::load_layered(a.config.as_deref(), &run_overlay(&a)?)?;
    let stop = stop_on_signal()?;
    let report_dir = match (&a.report, &config.run.reports) {
        (Some(d), _) => Some(d.clone()),
        (None, Some(parent)) => Some(session::new_report_dir(parent)),
        (None, None) => None,
    };
    tracing::info!(
        target: LOG_TARGET,
        plant = a.plant.kind(),
        preset = %config.sim.preset,
        policy = config.control.policy.name(),
        objective = config.control.objective.kind.name(),
        clock = ?config.run.clock,
        duration_s = ?config.run.duration_s,
        "starting the closed loop"
    );
    let (svc, hooks, retrain_ops) = start_service(&config, report_dir.as_deref(), &stop)?;
    let opts = SessionOptions {
        report: report_dir.clone(),
        trace_out: a.trace_out.clone(),
        keep_records: false,
        record: a.record.clone(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        service: Some(hooks),
        retrain_slot: retrain_ops.as_ref().map(|o| o.slot()),
        ..SessionOptions::default()
    };
    let outcome = match &a.calibrate {
        Some(d) => calibrated_run(&a, d, &config, &opts, stop),
        None => session::run(&config, &opts, stop).map_err(session_error),
    };
    svc.finish();
    report_outcome(&outcome?, a.json, report_dir.as_deref())
}

fn session_error(e: SessionError) -> anyhow::Error {
    match e {
        SessionError::Model(m) => anyhow::Error::new(UsageError(format!(
            "control.model: {m} (set control.model or --model, or run with --policy pid|open|off)"
        ))),
        SessionError::Budget(m) => anyhow::Error::new(UsageError(m)),
        other => anyhow::Error::new(other),
    }
}

/// `--calibrate`: the calibration, then the run on the same plant.
fn calibrated_run(
    a: &RunArgs,
    duration: &str,
    config: &Config,
    opts: &SessionOptions,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<session::SessionOutcome> {
    use super::calibrate::{current, seconds, usage};
    let amplitude = match &a.calibrate_amplitude {
        Some(s) => current("--calibrate-amplitude", s)?,
        None => config.train.max_amplitude.min(config.safety.max_amplitude),
    };
    let budget = match &a.calibrate_budget {
        Some(s) => seconds("--calibrate-budget", s)?,
        None => 120.0,
    };
    let c = neurostimd::calibrate::handover::InRun {
        duration_s: seconds("--calibrate", duration)?,
        amplitude,
        seed: 1,
        options: neurostimd::calibrate::Options::from_config(config, budget, opts.command.clone()),
    };
    let (outcome, hand) =
        neurostimd::calibrate::handover::run(config, opts, &c, stop).map_err(usage)?;
    if let Some(cal) = &hand.calibration {
        eprint!("{}", cal.text());
    }
    eprintln!("{}", hand.note);
    Ok(outcome)
}

/// The flags as a configuration overlay, laid over the file, so a flag
/// wins over the file and both go through the same validation.
fn run_overlay(a: &RunArgs) -> anyhow::Result<toml::Table> {
    let mut cli = toml::Table::new();
    match (&a.recording, a.plant) {
        (Some(r), PlantArg::Replay) => {
            table_at(&mut cli, &["plant", "replay"])
                .insert("recording".into(), r.display().to_string().into());
        }
        (Some(_), _) => {
            return Err(UsageError("--recording is for --plant replay".into()).into());
        }
        (None, _) => {}
    }
    if a.retrain {
        table_at(&mut cli, &["retrain"]).insert("enabled".into(), true.into());
    }
    table_at(&mut cli, &["plant"]).insert("kind".into(), a.plant.kind().into());
    if let Some(p) = &a.port {
        table_at(&mut cli, &["plant", "serial"])
            .insert("port".into(), p.display().to_string().into());
    }
    if let Some(b) = a.baud {
        table_at(&mut cli, &["plant", "serial"]).insert("baud".into(), i64::from(b).into());
    }
    if let Some(p) = &a.preset {
        table_at(&mut cli, &["plant", "sim"]).insert("preset".into(), p.clone().into());
    }
    if let Some(d) = a.duration {
        if !(d.is_finite() && d > 0.0) {
            return Err(UsageError(format!("--duration {d} must be > 0 seconds")).into());
        }
        table_at(&mut cli, &["run"]).insert("duration".into(), format!("{d} s").into());
    }
    if let Some(c) = a.clock {
        let name = match c {
            Clock::Paced => "paced",
            Clock::Free => "free",
        };
        table_at(&mut cli, &["run"]).insert("clock".into(), name.into());
    }
    if let Some(p) = a.policy {
        table_at(&mut cli, &["control"]).insert("policy".into(), p.name().into());
    }
    if let Some(o) = a.objective {
        table_at(&mut cli, &["control"]).insert("objective".into(), o.name().into());
    }
    if let Some(m) = &a.model {
        table_at(&mut cli, &["control"]).insert("model".into(), m.display().to_string().into());
    }
    Ok(cli)
}

/// The service starts before the loop, so the control socket and the
/// metrics are up (and systemd told) by the first sample; it hands back the
/// hooks the loop shares with it and retraining's calls, which the session
/// binds once its retraining thread runs.
fn start_service(
    config: &Config,
    report_dir: Option<&Path>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<(Service, ServiceHooks, Option<Arc<RetrainOps>>)> {
    let controls = Arc::new(LoopControls::new(
        config.service.start_armed,
        config.control.objective,
    ));
    let latency = Arc::new(LiveLatency::new());
    let model = (config.control.policy == PolicyKind::Mpc)
        .then(|| model_info(&config.control.model))
        .flatten();
    let socket = service::socket_path(&config.service.socket, report_dir);
    let retrain_ops = (config.retrain.enabled && config.control.policy == PolicyKind::Mpc)
        .then(|| Arc::new(RetrainOps::new()));
    let svc = Service::start(
        ServiceSetup {
            config: config.service.clone(),
            info: RunInfo::new(config, model, report_dir.map(Path::to_path_buf)),
            objective: config.control.objective,
            controls: controls.clone(),
            latency: latency.clone(),
            stop: stop.clone(),
            model_ops: retrain_ops
                .clone()
                .map(|o| o as Arc<dyn neurostimd::service::ModelOps>),
            notifier: Notifier::from_env(),
        },
        socket,
    )?;
    if !config.service.start_armed {
        tracing::warn!(target: LOG_TARGET, "stimulation starts disarmed (service.start_armed = false): `neurostimd ctl arm` arms it");
    }
    Ok((svc, ServiceHooks { controls, latency }, retrain_ops))
}

/// The summary on stdout, where the reports went on stderr, and a plant
/// fault as the command's failure (exit 1) although the run ended cleanly.
fn report_outcome(
    outcome: &session::SessionOutcome,
    json: bool,
    report_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let s = &outcome.summary;
    tracing::info!(target: LOG_TARGET, "control thread real-time measures: {}", s.realtime.line());
    // stdout may be a closed pipe by now (SIGPIPE is ignored here): the
    // report and recording are already written, so a failed print is no
    // reason to fail the run.
    let text = if json {
        serde_json::to_string_pretty(s)?
    } else {
        control_summary_text(s)
    };
    let _ = writeln!(std::io::stdout(), "{text}");
    if let Some(dir) = &outcome.recording {
        eprintln!(
            "recording written to {} (Open Ephys binary; neo/SpikeInterface read it)",
            dir.display()
        );
    }
    if let Some(dir) = report_dir {
        eprintln!(
            "report written to {} (summary.json, .hgrm percentile distributions, latency.hlog with {} intervals); read it with `neurostimd report {}`",
            dir.display(),
            outcome.intervals,
            dir.display()
        );
    }
    if s.stop == control::StopReason::PlantFault {
        anyhow::bail!(
            "the plant faulted: {}; stimulation was set to zero",
            s.fault.as_deref().unwrap_or("unknown fault")
        );
    }
    Ok(())
}

/// The model's card, for status and metrics (`None` if unreadable:
/// loading the model then fails with the full reason).
fn model_info(source: &neurostimd::forecast::ModelSource) -> Option<service::ModelInfo> {
    let card = source.read().ok()?.card;
    Some(service::ModelInfo {
        path: source.name(),
        origin: source.origin(),
        name: card.name,
        sha256: card.onnx_sha256,
        dt_ms: card.dt_ms,
        t_in: card.t_in,
        t_out: card.t_out,
    })
}

/// A few lines a person reads after a run.
fn control_summary_text(s: &control::LoopSummary) -> String {
    let q = &s.quality;
    let mut t = format!(
        "{} samples ({:.3} s of plant time in {:.3} s, {} clock), policy {}, objective {}: error {:.4} ({}), {} spikes ({:.2} Hz, {} bursts), charge {:.1} nC/cm2",
        s.samples,
        s.plant_time_s,
        s.wall_time_s,
        s.clock,
        s.policy,
        s.objective,
        q.objective_error,
        q.objective_error_unit,
        q.spikes,
        q.rate_hz,
        q.bursts,
        s.charge_delivered_nc_cm2
    );
    t.push_str(&format!(
        "\nplans {} adopted, {} plan misses; safety interventions {}; lost samples {}, records dropped {}; stop: {:?}",
        s.plans_adopted, s.plan_misses, s.interventions_total, s.lost_samples, s.records_dropped, s.stop
    ));
    let line = |name: &str, p: &Option<control::Percentiles>| {
        p.as_ref().map(|p| {
            format!(
                "\n{name:<18} p50 {:>8.1} us  p99 {:>8.1} us  p99.9 {:>8.1} us  max {:>9.1} us  (n = {})",
                p.p50_us, p.p99_us, p.p999_us, p.max_us, p.count
            )
        })
    };
    let l = &s.latency;
    for (name, p) in [
        ("wake-up jitter", &l.wakeup_jitter),
        ("sample->command", &l.sample_to_command),
        ("plan latency", &l.plan_latency),
        ("decision age", &l.decision_age),
        ("forecast time", &l.forecast_time),
    ] {
        if let Some(x) = line(name, p) {
            t.push_str(&x);
        }
    }
    if s.clock == "paced" {
        t.push_str(&format!(
            "\noverruns (wake-ups > 1 period late): {}",
            s.overruns
        ));
    }
    t
}
