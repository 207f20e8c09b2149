//! The `neurostimd` binary: parses the command line, builds the validated
//! configuration and hands over to the library. Errors are printed with
//! their whole context; exit codes are 0 ok, 1 runtime failure, 2 usage or
//! configuration error.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use neurostimd::config::{overlay_at as table_at, Clock, Config, ConfigError};
use neurostimd::control;
use neurostimd::control::controls::LoopControls;
use neurostimd::forecast::Engine;
use neurostimd::modeltool::{self, ModelToolError};
use neurostimd::policy::{ObjectiveKind, PolicyKind};
use neurostimd::service::latency::LiveLatency;
use neurostimd::service::notify::Notifier;
use neurostimd::service::{self, RunInfo, Service, ServiceSetup};
use neurostimd::session::{self, ServiceHooks, SessionError, SessionOptions};
use neurostimd::simulate::{self, SimulateError, SimulateRequest, Waveform};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "neurostimd",
    version,
    about = "Closed-loop neurostimulation controller daemon",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

/// Running the daemon (no subcommand).
#[derive(Args, Debug)]
struct RunArgs {
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

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the CA1 simulator alone (open loop) and write traces and spike times.
    Simulate(Box<SimulateArgs>),
    /// Summarise runs' reports (directories written with --report) side by side.
    Report {
        #[arg(required = true, value_name = "DIR")]
        dirs: Vec<PathBuf>,
    },
    /// Train a forecaster on simulated data ([train] in the config) and export it.
    Train {
        /// Configuration file laid over the built-in defaults (its [train] section).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where to write the model (its card NAME.json and bundle go beside it).
        #[arg(long, value_name = "MODEL.onnx")]
        out: PathBuf,
        /// Override train.epochs.
        #[arg(long)]
        epochs: Option<usize>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reproduce the seed paper's claims with our trainer: train every variant
    /// (output head and order, training horizon, 1 vs 2 layers) on the same data
    /// and seeds, score all on the same fresh windows, write the tables and plot
    /// data (docs/paper-reproduction.md).
    PaperStudy {
        /// The small CI run (same cells and tables, tiny data and networks).
        #[arg(long)]
        quick: bool,
        /// Directory for results.json, tables.md, rmse_per_step.csv, traces.csv.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Worker threads (our trainer is single-threaded; cells run in parallel).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Configuration file laid over the built-in defaults (plant and data settings).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Emulate a bench rig on a pseudo-terminal (the CA1 simulator behind the wire
    /// protocol, paced in real time) and print the path to give `--port`.
    Rig(Box<RigArgs>),
    /// Run the control-quality scenarios (rate, burst, voltage, silence) with MPC and
    /// the matching baseline on the same seeds, free clock, and print the table.
    Scenarios {
        /// Only these scenarios (repeatable): rate, burst, voltage, silence.
        #[arg(long, value_name = "NAME")]
        only: Vec<String>,
        /// Plant time per run, seconds (default: each scenario's own, 12 s).
        #[arg(long, value_name = "SECONDS")]
        duration: Option<f64>,
        /// Run seeds 1..=N of the plant noise and the MPC's sampling.
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        /// Policies to run (repeatable; default mpc, pid, off).
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
    },
    /// Inspect, run and time forecaster models (ONNX + model card).
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Make a recording readable after a crash: cut every stream to the
    /// samples all of them hold and rewrite the .npy headers.
    Recover {
        /// The recording's root directory (as given to --record).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The adaptation scenario: regular spiking, a switch to bursting, drift
    /// detection, onboard retraining and the guarded model swap (paced).
    Adapt {
        /// The shortened version (CI): switch at 15 s, 75 s in all.
        #[arg(long)]
        quick: bool,
        /// Configuration laid over the scenario.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where the report (summary.json, adaptation.json, .hgrm, forecast
        /// error CSV) and the recording go (default: a new directory under
        /// run.reports).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Draw a run: rate vs target, membrane with forecasts, stimulation, spikes and
    /// latency histograms, from a report directory (and its trace) to SVG or PNG.
    Plot {
        /// The run's report directory (--report).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// The run's --trace-out CSV (default DIR/trace.csv); its .forecasts.csv beside it.
        #[arg(long, value_name = "FILE.csv")]
        trace: Option<PathBuf>,
        /// The figure: .svg or .png.
        #[arg(long, value_name = "FILE.svg|FILE.png")]
        out: PathBuf,
        /// Start of the zoomed window, s (default: the middle of the run).
        #[arg(long, value_name = "SECONDS")]
        zoom_start: Option<f64>,
        /// Length of the zoomed window, ms.
        #[arg(long, value_name = "MS", default_value_t = 250.0)]
        zoom_ms: f64,
    },
    /// Steer a running daemon through its control API (Unix socket).
    Ctl {
        /// The daemon's control socket (default: $NEUROSTIMD_SOCKET, else
        /// /run/neurostimd/control.sock if present, else the newest
        /// reports/*/control.sock here; a run prints its own at start).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        #[command(subcommand)]
        call: CtlCall,
    },
}

#[derive(Subcommand, Debug)]
enum CtlCall {
    /// Plant, policy, objective, model, rates and counters (JSON).
    Status,
    /// Arm stimulation (from the next control-period boundary).
    Arm,
    /// Disarm: stimulation to zero from the next sample; the loop keeps running.
    Disarm,
    /// Change the objective and its target (rate, burst: Hz; voltage, silence: mV).
    Objective {
        #[arg(value_enum)]
        kind: ObjectiveKind,
        /// The target in the objective's unit (default: keep its parameters).
        #[arg(long, allow_hyphen_values = true)]
        target: Option<f64>,
    },
    /// Retrain the forecaster from the recorded data (needs retraining enabled).
    Retrain,
    /// Return to the previous model version (needs retraining enabled).
    Rollback,
    /// Latency percentiles: whole run and the newest interval.
    Latency,
    /// The Prometheus metrics text.
    Metrics,
    /// Stop the daemon as SIGTERM does (stimulation to zero first).
    Shutdown,
}

#[derive(Subcommand, Debug)]
enum ModelCommand {
    /// Print the model card, shapes, parameters and FLOPs per forecast.
    Info {
        /// The model's .onnx file (its card NAME.json sits beside it), or
        /// `embedded` for the model compiled into this binary (default).
        #[arg(default_value = neurostimd::forecast::EMBEDDED_NAME)]
        model: String,
        #[arg(long)]
        json: bool,
    },
    /// Run raw contract tensors: [batch, t_in+t_out, 3] in, [batch, t_out] out (.npy, float32).
    Run {
        model: PathBuf,
        #[arg(long, value_name = "X.npy")]
        input: PathBuf,
        #[arg(long, value_name = "Y.npy")]
        output: PathBuf,
    },
    /// Evaluate against persistence and AR baselines: RMSE per horizon step, spike F1.
    Eval {
        model: PathBuf,
        /// Fresh simulator data of this preset, under random excitation.
        #[arg(
            long,
            value_name = "PRESET",
            required_unless_present_any = ["data", "recording"],
            conflicts_with = "data"
        )]
        sim: Option<String>,
        /// A trace CSV (`neurostimd simulate --trace-out`: t_ms, V_mV or
        /// V_measured_mV, I_stim_uA_cm2).
        #[arg(long, value_name = "FILE.csv", conflicts_with = "recording")]
        data: Option<PathBuf>,
        /// A recording made with --record (V and applied current).
        #[arg(long, value_name = "DIR", conflicts_with = "sim")]
        recording: Option<PathBuf>,
        /// Simulated seconds (the second half is scored).
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
        /// Seed of the excitation (the trainer uses the config's seed).
        #[arg(long, default_value_t = 12345)]
        seed: u64,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Make the previous model version current again (onboard retraining's
    /// state directory; a running daemon is rolled back with `ctl`).
    Rollback {
        /// Configuration whose retrain.state_dir to use.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The state directory (overrides retrain.state_dir).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Time one forecast (one window + K candidate plans); p50/p99/p99.9/max.
    Bench {
        model: PathBuf,
        /// Number of candidate plans K.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Timed runs.
        #[arg(long, default_value_t = 2000)]
        runs: u64,
        /// Untimed runs first.
        #[arg(long, default_value_t = 200)]
        warmup: u64,
        /// native (encode once, roll out K) or tract (whole window per candidate).
        #[arg(long, value_enum, default_value_t = Engine::Native)]
        engine: Engine,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct SimulateArgs {
    /// Configuration file laid over the built-in defaults (presets, plant settings).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Parameter preset (a [presets.NAME] table: regular, bursting, or your own).
    #[arg(long)]
    preset: Option<String>,
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
    /// e.g. --set g_kdr=5 --set tau_q="400 ms".
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

/// `neurostimd rig`.
#[derive(Args, Debug)]
struct RigArgs {
    /// Configuration laid over the defaults (its [plant.sim] is the cell).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Neuron preset of the emulated cell.
    #[arg(long)]
    preset: Option<String>,
    /// Keep a symlink here to the current pty (it changes on reconnect).
    #[arg(long, value_name = "PATH")]
    link: Option<PathBuf>,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Probability that a sample frame is dropped.
    #[arg(long, default_value_t = 0.0)]
    drop: f64,
    /// Probability that a sample frame has a byte flipped.
    #[arg(long, default_value_t = 0.0)]
    corrupt: f64,
    /// Probability that a sample frame is sent twice.
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    /// Probability that a sample frame swaps with the next.
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Added latency of sample frames, µs.
    #[arg(long, default_value_t = 0)]
    latency_us: u64,
    /// Uniform jitter on top of the latency, µs.
    #[arg(long, default_value_t = 0)]
    jitter_us: u64,
    /// Stop talking at this time (s) for --stall-ms.
    #[arg(long, value_name = "SECONDS")]
    stall_at: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    stall_ms: f64,
    /// Drop the link at this time (s) and come back after --reconnect-ms.
    #[arg(long, value_name = "SECONDS")]
    disconnect_at: Option<f64>,
    #[arg(long, default_value_t = 500.0)]
    reconnect_ms: f64,
    /// Probability per sample of a burst of random bytes.
    #[arg(long, default_value_t = 0.0)]
    garbage: f64,
    /// Protocol version to announce (a wrong one tests refusal).
    #[arg(long, default_value_t = neurostimd::protocol::VERSION)]
    version: u16,
    /// Seed of the fault injection.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn cmd_rig(a: RigArgs) -> anyhow::Result<()> {
    let mut cli = toml::Table::new();
    if let Some(p) = &a.preset {
        table_at(&mut cli, &["plant", "sim"]).insert("preset".into(), p.clone().into());
    }
    let config = Config::load_layered(a.config.as_deref(), &cli)?;
    for (name, p) in [
        ("--drop", a.drop),
        ("--corrupt", a.corrupt),
        ("--duplicate", a.duplicate),
        ("--reorder", a.reorder),
        ("--garbage", a.garbage),
    ] {
        if !(0.0..=1.0).contains(&p) {
            return Err(UsageError(format!("{name} {p} must be a probability in 0..=1")).into());
        }
    }
    let mut opts = neurostimd::rig::RigOptions::new(config.sim.clone());
    opts.link = a.link.clone();
    opts.duration_s = a.duration;
    opts.version = a.version;
    opts.seed = a.seed;
    opts.faults = neurostimd::rig::Faults {
        drop: a.drop,
        corrupt: a.corrupt,
        duplicate: a.duplicate,
        reorder: a.reorder,
        latency_us: a.latency_us,
        jitter_us: a.jitter_us,
        stall_at_s: a.stall_at,
        stall_ms: a.stall_ms,
        disconnect_at_s: a.disconnect_at,
        reconnect_ms: a.reconnect_ms,
        garbage: a.garbage,
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("cannot install the SIGINT/SIGTERM handler")?;
    }
    let stats = neurostimd::rig::run(&opts, &stop, |path| {
        println!("{}", path.display());
        eprintln!(
            "rig ready: run `neurostimd --plant serial --port {}` (Ctrl-C stops the rig)",
            path.display()
        );
    })?;
    eprintln!("rig stopped: {}", serde_json::to_string(&stats)?);
    Ok(())
}

/// Errors that mean "you asked for something invalid" (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn simulate_overlay(a: &SimulateArgs) -> anyhow::Result<toml::Table> {
    let mut cli = toml::Table::new();
    let sim = table_at(&mut cli, &["plant", "sim"]);
    if let Some(p) = &a.preset {
        sim.insert("preset".into(), p.clone().into());
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
    let overrides = table_at(sim, &["overrides"]);
    for (key, v) in [
        ("g_m", a.gm),
        ("g_nap", a.gnap),
        ("theta_p", a.thetap),
        ("i_app", a.iapp),
    ] {
        if let Some(v) = v {
            overrides.insert(key.into(), v.into());
        }
    }
    for kv in &a.set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--set `{kv}`: expected KEY=VALUE")))?;
        let v = v.trim().trim_matches('"');
        let value = match v.parse::<f64>() {
            Ok(x) => toml::Value::Float(x),
            Err(_) => toml::Value::String(v.to_string()),
        };
        overrides.insert(k.trim().to_string(), value);
    }
    if overrides.is_empty() {
        sim.remove("overrides");
    }
    Ok(cli)
}

fn cmd_simulate(a: SimulateArgs) -> anyhow::Result<()> {
    if !(a.duration_ms.is_finite() && a.duration_ms > 0.0) {
        return Err(UsageError(format!("--duration-ms {} must be > 0", a.duration_ms)).into());
    }
    let config = Config::load_layered(a.config.as_deref(), &simulate_overlay(&a)?)?;
    let stim = match &a.stim {
        Some(p) => Waveform::load(p)?,
        None => Waveform::default(),
    };
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
            "{} ({} preset, {}, {} ms simulated in {:.3} s, {:.0}x real time)",
            report.firing,
            report.preset,
            report.integrator,
            report.duration_ms,
            report.wall_seconds,
            report.realtime_factor
        );
    }
    Ok(())
}

fn cmd_recover(dir: PathBuf, json: bool) -> anyhow::Result<()> {
    let r = neurostimd::record::recover(&dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{}: {} samples kept in every stream (the headers counted {} before), {} events, {} forecast rows; {} bytes of partial rows cut",
            dir.display(),
            r.samples,
            r.samples_counted_before,
            r.events,
            r.forecasts,
            r.bytes_cut
        );
    }
    Ok(())
}

fn cmd_adapt(
    quick: bool,
    config: Option<PathBuf>,
    out: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let defaults = Config::load_layered(None, &toml::Table::new())?;
    let out = match out {
        Some(d) => d,
        None => session::new_report_dir(
            &defaults
                .run
                .reports
                .clone()
                .unwrap_or_else(|| PathBuf::from("reports")),
        ),
    };
    let cfg = neurostimd::adaptation::config(quick, config.as_deref(), &out)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("cannot install the SIGINT/SIGTERM handler")?;
    }
    eprintln!(
        "adaptation scenario ({} s, paced): report, recording and model versions go to {}",
        cfg.run.duration_s.unwrap_or(0.0),
        out.display()
    );
    let r = neurostimd::adaptation::run(&cfg, &out, stop)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", r.text());
    }
    Ok(())
}

fn cmd_run(a: RunArgs) -> anyhow::Result<()> {
    let mut cli = toml::Table::new();
    let kind = match a.plant {
        PlantArg::Sim => "sim",
        PlantArg::Serial => "serial",
        PlantArg::Replay => "replay",
    };
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
    table_at(&mut cli, &["plant"]).insert("kind".into(), kind.into());
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
    let config = Config::load_layered(a.config.as_deref(), &cli)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("cannot install the SIGINT/SIGTERM handler")?;
    }
    let report_dir = match (&a.report, &config.run.reports) {
        (Some(d), _) => Some(d.clone()),
        (None, Some(parent)) => Some(session::new_report_dir(parent)),
        (None, None) => None,
    };
    tracing::info!(
        plant = kind,
        preset = %config.sim.preset,
        policy = config.control.policy.name(),
        objective = config.control.objective.kind.name(),
        clock = ?config.run.clock,
        duration_s = ?config.run.duration_s,
        "starting the closed loop"
    );
    // The service: control API, metrics, systemd notifications.
    let controls = Arc::new(LoopControls::new(
        config.service.start_armed,
        config.control.objective,
    ));
    let latency = Arc::new(LiveLatency::new());
    let model = (config.control.policy == PolicyKind::Mpc)
        .then(|| model_info(&config.control.model))
        .flatten();
    let socket = service::socket_path(&config.service.socket, report_dir.as_deref());
    // Retraining's calls, bound once the session starts its thread.
    let retrain_ops = (config.retrain.enabled && config.control.policy == PolicyKind::Mpc)
        .then(|| Arc::new(neurostimd::retrain::RetrainOps::new()));
    let svc = Service::start(
        ServiceSetup {
            config: config.service.clone(),
            info: RunInfo::new(&config, model, report_dir.clone()),
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
        tracing::warn!("stimulation starts disarmed (service.start_armed = false): `neurostimd ctl arm` arms it");
    }
    let opts = SessionOptions {
        report: report_dir.clone(),
        trace_out: a.trace_out.clone(),
        keep_records: false,
        record: a.record.clone(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        service: Some(ServiceHooks { controls, latency }),
        retrain_slot: retrain_ops.as_ref().map(|o| o.slot()),
    };
    let outcome = session::run(&config, &opts, stop);
    svc.finish();
    let outcome = outcome.map_err(|e| match e {
        SessionError::Model(m) => anyhow::Error::new(UsageError(format!(
            "control.model: {m} (set control.model or --model, or run with --policy pid|open|off)"
        ))),
        SessionError::Budget(m) => anyhow::Error::new(UsageError(m)),
        other => anyhow::Error::new(other),
    })?;
    let s = &outcome.summary;
    tracing::info!("control thread real-time measures: {}", s.realtime.line());
    // stdout may be a closed pipe by now (SIGPIPE is ignored here): the
    // report and recording are already written, so a failed print is no
    // reason to fail the run.
    let text = if a.json {
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
    if let Some(dir) = &report_dir {
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

fn cmd_plot(
    dir: PathBuf,
    trace: Option<PathBuf>,
    out: PathBuf,
    zoom_start: Option<f64>,
    zoom_ms: f64,
) -> anyhow::Result<()> {
    use neurostimd::plot::{self, PlotError, RunLoader};
    if !(zoom_ms.is_finite() && zoom_ms > 0.0) {
        return Err(UsageError(format!("--zoom-ms {zoom_ms} must be > 0")).into());
    }
    if let Some(z) = zoom_start.filter(|z| !z.is_finite()) {
        return Err(
            UsageError(format!("--zoom-start {z} must be a finite time in seconds")).into(),
        );
    }
    let data = plot::ReportDir { dir, trace }.load()?;
    let opts = plot::PlotOptions {
        zoom_start_s: zoom_start,
        zoom_ms,
    };
    plot::plot(&data, &out, &opts).map_err(|e| match e {
        PlotError::Format(_) => anyhow::Error::new(UsageError(e.to_string())),
        other => anyhow::Error::new(other),
    })?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// A control-API refusal (4xx: exit 2) or failure (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct CtlRefused {
    status: u16,
    message: String,
}

fn cmd_ctl(socket: Option<PathBuf>, timeout: f64, call: CtlCall) -> anyhow::Result<()> {
    use hyper::Method;
    if !(timeout.is_finite() && timeout > 0.0) {
        return Err(UsageError(format!("--timeout {timeout} must be > 0 seconds")).into());
    }
    let socket = socket.unwrap_or_else(service::client::default_socket);
    let (method, path, body) = match call {
        CtlCall::Status => (Method::GET, "/status", None),
        CtlCall::Arm => (Method::POST, "/arm", None),
        CtlCall::Disarm => (Method::POST, "/disarm", None),
        CtlCall::Objective { kind, target } => {
            let mut b = serde_json::json!({ "kind": kind.name() });
            if let Some(t) = target {
                b["target"] = t.into();
            }
            (Method::POST, "/objective", Some(b.to_string()))
        }
        CtlCall::Retrain => (Method::POST, "/model/retrain", None),
        CtlCall::Rollback => (Method::POST, "/model/rollback", None),
        CtlCall::Latency => (Method::GET, "/latency", None),
        CtlCall::Metrics => (Method::GET, "/metrics", None),
        CtlCall::Shutdown => (Method::POST, "/shutdown", None),
    };
    let answer = service::client::call(
        &socket,
        method,
        path,
        body,
        std::time::Duration::from_secs_f64(timeout),
    )?;
    if (200..300).contains(&answer.status) {
        print!("{}", answer.body);
        return Ok(());
    }
    let message = serde_json::from_str::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| answer.body.trim().to_string());
    Err(CtlRefused {
        status: answer.status,
        message: format!("{} {path}: {message}", answer.status),
    }
    .into())
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

/// `--set a.b.c=VALUE` into an overlay table: VALUE is read as TOML (a
/// number, boolean, string or array), or else taken as a string.
fn dotted_overlay(sets: &[String]) -> anyhow::Result<toml::Table> {
    let mut t = toml::Table::new();
    for kv in sets {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--set `{kv}`: expected KEY=VALUE")))?;
        let path: Vec<&str> = k.trim().split('.').collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(UsageError(format!("--set `{kv}`: empty key segment")).into());
        }
        let value = toml::from_str::<toml::Table>(&format!("x = {}", v.trim()))
            .ok()
            .and_then(|mut t| t.remove("x"))
            .unwrap_or_else(|| toml::Value::String(v.trim().to_string()));
        let (last, parents) = path.split_last().expect("non-empty");
        let parent = neurostimd::config::try_overlay_at(&mut t, parents)
            .map_err(|m| UsageError(format!("--set `{kv}`: {m}")))?;
        if parent.get(*last).is_some_and(toml::Value::is_table) && !value.is_table() {
            return Err(UsageError(format!(
                "--set `{kv}`: `{}` already holds keys, so it cannot be set to a value",
                path.join(".")
            ))
            .into());
        }
        parent.insert(last.to_string(), value);
    }
    Ok(t)
}

fn cmd_scenarios(
    only: Vec<String>,
    duration: Option<f64>,
    seeds: u64,
    policy: Vec<PolicyKind>,
    config: Option<PathBuf>,
    set: Vec<String>,
    json: bool,
) -> anyhow::Result<()> {
    use neurostimd::scenarios::{self, ScenarioError, ScenarioRequest};
    if let Some(d) = duration {
        if !(d.is_finite() && d > 0.0) {
            return Err(UsageError(format!("--duration {d} must be > 0 seconds")).into());
        }
    }
    if seeds == 0 {
        return Err(UsageError("--seeds must be at least 1".into()).into());
    }
    let req = ScenarioRequest {
        only,
        seeds,
        duration_s: duration,
        policies: if policy.is_empty() {
            vec![PolicyKind::Mpc, PolicyKind::Pid, PolicyKind::Off]
        } else {
            policy
        },
        config,
        cli: dotted_overlay(&set)?,
    };
    let results = scenarios::run(&req).map_err(|e| match e {
        ScenarioError::Unknown(_) => anyhow::Error::new(UsageError(e.to_string())),
        ScenarioError::Config(c) => anyhow::Error::new(c),
        other => anyhow::Error::new(other),
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", scenarios::table(&results, seeds));
    }
    Ok(())
}

fn cmd_model(c: ModelCommand) -> anyhow::Result<()> {
    match c {
        ModelCommand::Info { model, json } => {
            let info = modeltool::info(&neurostimd::forecast::ModelSource::parse(&model))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("{info}");
            }
        }
        ModelCommand::Run {
            model,
            input,
            output,
        } => {
            let shape = modeltool::run(&model, &input, &output)?;
            println!("wrote {} ({shape:?} float32)", output.display());
        }
        ModelCommand::Eval {
            model,
            sim,
            data,
            recording,
            duration,
            seed,
            config,
            json,
        } => {
            if !(duration.is_finite() && duration > 0.0) {
                return Err(
                    UsageError(format!("--duration {duration} must be > 0 seconds")).into(),
                );
            }
            let c = match (sim, data) {
                _ if recording.is_some() => neurostimd::train::eval_recording(
                    &model,
                    recording.as_deref().expect("checked"),
                )?,
                (Some(sim), _) => {
                    let config = Config::load_layered(config.as_deref(), &toml::Table::new())?;
                    if config.preset(&sim).is_none() {
                        let known: Vec<&str> = config.presets.keys().map(String::as_str).collect();
                        return Err(UsageError(format!(
                            "--sim {sim}: no such preset; defined presets: {}",
                            known.join(", ")
                        ))
                        .into());
                    }
                    neurostimd::train::eval_sim(&model, &config, &sim, duration * 1000.0, seed)?
                }
                (None, Some(data)) => neurostimd::train::eval_trace(&model, &data)?,
                (None, None) => {
                    return Err(UsageError(
                        "give --sim PRESET, --data FILE.csv or --recording DIR".into(),
                    )
                    .into())
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print!("{}", c.table());
                println!(
                    "beats persistence and AR at every step: {}",
                    if c.beats_baselines() { "yes" } else { "no" }
                );
            }
        }
        ModelCommand::Rollback { config, state_dir } => {
            let dir = match state_dir {
                Some(d) => d,
                None => {
                    let config = Config::load_layered(config.as_deref(), &toml::Table::new())?;
                    session::state_dir(&config)
                }
            };
            let mut store = neurostimd::retrain::store::ModelStore::open(&dir)?;
            let (from, to) = store.rollback()?;
            println!(
                "model v{} ({}) is current again in {} (was v{}, {}); a running daemon keeps its model until restarted or rolled back with `neurostimd ctl rollback`",
                to.version,
                to.origin,
                store.dir().display(),
                from.version,
                from.origin
            );
        }
        ModelCommand::Bench {
            model,
            batch,
            runs,
            warmup,
            engine,
            json,
        } => {
            if batch == 0 || runs == 0 {
                return Err(UsageError("--batch and --runs must be >= 1".into()).into());
            }
            let r = modeltool::bench(&model, batch, runs, warmup, engine)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let l = &r.latency;
                println!(
                    "{}: engine {:?}, K = {}, {} runs: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us, mean {:.1} us",
                    r.model, r.engine, r.batch, r.runs, l.p50_us, l.p99_us, l.p999_us, l.max_us, r.mean_us
                );
            }
        }
    }
    Ok(())
}

fn cmd_train(
    config: Option<PathBuf>,
    out: PathBuf,
    epochs: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    let mut cli = toml::Table::new();
    if let Some(e) = epochs {
        table_at(&mut cli, &["train"]).insert("epochs".into(), (e as i64).into());
    }
    let config = Config::load_layered(config.as_deref(), &cli)?;
    let command: String = std::env::args().collect::<Vec<_>>().join(" ");
    let t = &config.train;
    tracing::info!(
        layers = t.layers,
        hidden = t.hidden,
        t_in = t.t_in,
        t_out = t.t_out,
        dt_ms = t.dt_ms,
        sources = t.sources.len(),
        duration_s = t.duration_ms / 1000.0,
        "training"
    );
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let max_epochs = t.schedule.epochs;
    let outcome = neurostimd::train::run(&config, &out, &command, |e| {
        if tty {
            eprint!(
                "\repoch {:>3}/{max_epochs}  train {:.5}  val {:.5}  {:.0} windows/s   ",
                e.epoch, e.train_loss, e.val_loss, e.windows_per_second
            );
        } else {
            tracing::info!(
                epoch = e.epoch,
                train_loss = e.train_loss,
                val_loss = e.val_loss,
                windows_per_s = e.windows_per_second as u64,
                "epoch"
            );
        }
    })?;
    if tty {
        eprintln!();
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        println!(
            "wrote {} ({} parameters, {} epochs, {} training windows; tract reload matches within {:.1e})",
            outcome.onnx.display(),
            outcome.parameters,
            outcome.epochs.len(),
            outcome.train_windows,
            outcome.export_difference
        );
        for c in &outcome.comparisons {
            print!("{}", c.table());
        }
    }
    Ok(())
}

fn cmd_paper_study(
    quick: bool,
    out: PathBuf,
    threads: usize,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
    use neurostimd::train::study;
    let config = Config::load_layered(config.as_deref(), &toml::Table::new())?;
    let plan = if quick {
        study::StudyPlan::quick()
    } else {
        study::StudyPlan::full()
    };
    let cells = study::variants(&plan).len() * plan.seeds.len();
    tracing::info!(plan = %plan.name, cells, threads, "paper study");
    let report = study::run(&config, &plan, threads, |line| {
        tracing::info!("{line}");
    })?;
    report.write(&out)?;
    print!("{}", report.tables());
    let problems = report.problems();
    if !problems.is_empty() {
        anyhow::bail!("the study's tables are incomplete: {}", problems.join("; "));
    }
    println!(
        "wrote {} ({} models, {:.0} s wall time)",
        out.display(),
        report.runs.len(),
        report.wall_seconds
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The printing commands behave like any Unix filter: a closed stdout
    // (`| head`) ends the process quietly instead of panicking on the
    // failed write. The daemon and the rig keep Rust's default (SIGPIPE
    // ignored): they write to sockets and pseudo-terminals whose peers may
    // leave at any time, and a departed client must end its own
    // connection, never the experiment.
    let long_running = matches!(cli.command, None | Some(Command::Rig(_)));
    #[cfg(unix)]
    if !long_running {
        // SAFETY: restoring the default disposition of SIGPIPE before any
        // thread starts; no handler code is involved.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if service::logging::stderr_is_journal() {
        // Under systemd: priority-prefixed lines, the journal adds the time.
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_env_filter(filter)
            .event_format(service::logging::JournalFormat)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_env_filter(filter)
            .compact()
            .init();
    }
    let result = match cli.command {
        Some(Command::Simulate(a)) => cmd_simulate(*a),
        Some(Command::Model { command }) => cmd_model(command),
        Some(Command::Rig(a)) => cmd_rig(*a),
        Some(Command::Scenarios {
            only,
            duration,
            seeds,
            policy,
            config,
            set,
            json,
        }) => cmd_scenarios(only, duration, seeds, policy, config, set, json),
        Some(Command::Report { dirs }) => neurostimd::report::render(&dirs)
            .map(|t| print!("{t}"))
            .map_err(|e| anyhow::anyhow!(e)),
        Some(Command::Train {
            config,
            out,
            epochs,
            json,
        }) => cmd_train(config, out, epochs, json),
        Some(Command::Recover { dir, json }) => cmd_recover(dir, json),
        Some(Command::Adapt {
            quick,
            config,
            out,
            json,
        }) => cmd_adapt(quick, config, out, json),
        Some(Command::Plot {
            dir,
            trace,
            out,
            zoom_start,
            zoom_ms,
        }) => cmd_plot(dir, trace, out, zoom_start, zoom_ms),
        Some(Command::Ctl {
            socket,
            timeout,
            call,
        }) => cmd_ctl(socket, timeout, call),
        Some(Command::PaperStudy {
            quick,
            out,
            threads,
            config,
        }) => cmd_paper_study(quick, out, threads, config),
        None => cmd_run(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("neurostimd: {e:#}");
            let usage = e.downcast_ref::<ConfigError>().is_some()
                || e.downcast_ref::<UsageError>().is_some()
                || matches!(
                    e.downcast_ref::<SimulateError>(),
                    Some(SimulateError::BadStim { .. })
                )
                || matches!(
                    e.downcast_ref::<ModelToolError>(),
                    Some(ModelToolError::BadInput { .. })
                )
                || e.downcast_ref::<CtlRefused>()
                    .is_some_and(|r| (400..500).contains(&r.status));
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
