//! The `neurostimd` binary: parses the command line, builds the validated
//! configuration and hands over to the library. Errors are printed with
//! their whole context; exit codes are 0 ok, 1 runtime failure, 2 usage or
//! configuration error.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use neurostimd::config::{Clock, Config, ConfigError};
use neurostimd::control::{self, LoopOptions};
use neurostimd::forecast::Engine;
use neurostimd::modeltool::{self, ModelToolError};
use neurostimd::plant::SimPlant;
use neurostimd::report::{self, IntervalLogThread};
use neurostimd::simulate::{self, SimulateError, SimulateRequest, Waveform};
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
    /// per-second interval log (latency.hlog) and summary.json.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PlantArg {
    /// The embedded CA1 neuron simulator.
    Sim,
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
    /// Inspect, run and time forecaster models (ONNX + model card).
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ModelCommand {
    /// Print the model card, shapes, parameters and FLOPs per forecast.
    Info {
        /// The model's .onnx file (its card NAME.json sits beside it).
        model: PathBuf,
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
            required_unless_present = "data",
            conflicts_with = "data"
        )]
        sim: Option<String>,
        /// A trace CSV (`neurostimd simulate --trace-out`: t_ms, V_mV or
        /// V_measured_mV, I_stim_uA_cm2). Recordings arrive with the recorder.
        #[arg(long, value_name = "FILE.csv")]
        data: Option<PathBuf>,
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

/// Errors that mean "you asked for something invalid" (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn table_at<'a>(root: &'a mut toml::Table, path: &[&str]) -> &'a mut toml::Table {
    let mut t = root;
    for k in path {
        t = t
            .entry(k.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("overlay tables are tables");
    }
    t
}

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

fn cmd_run(a: RunArgs) -> anyhow::Result<()> {
    let mut cli = toml::Table::new();
    table_at(&mut cli, &["plant"]).insert("kind".into(), "sim".into());
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
    let config = Config::load_layered(a.config.as_deref(), &cli)?;
    let _ = a.plant;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("cannot install the SIGINT/SIGTERM handler")?;
    }
    let mut plant = SimPlant::new(&config.sim);
    tracing::info!(
        plant = "sim",
        preset = %config.sim.preset,
        integrator = config.sim.method.name(),
        sample_period_ms = config.sim.sample_period_ms,
        clock = ?config.run.clock,
        duration_s = ?config.run.duration_s,
        "running with stimulation off (policy `off`)"
    );
    let mut writer = None;
    if let Some(dir) = &a.report {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the report directory {}", dir.display()))?;
        let (thread, handoff) =
            IntervalLogThread::start(&dir.join("latency.hlog"), control::LATENCY_TAGS, 4)
                .with_context(|| format!("cannot write {}", dir.join("latency.hlog").display()))?;
        writer = Some((thread, handoff));
    }
    let (summary, histograms) = control::run_off(
        &mut plant,
        LoopOptions {
            clock: config.run.clock,
            duration_s: config.run.duration_s,
        },
        &stop,
        writer.as_mut().map(|(_, h)| h),
    )
    .context("the loop stopped on a plant fault (stimulation set to zero)")?;
    if let (Some((thread, handoff)), Some(dir)) = (writer, &a.report) {
        handoff.finish(std::time::Duration::from_secs_f64(summary.wall_time_s));
        let intervals = thread.join().context("writing the interval log")?;
        if summary.wakeup_jitter.is_some() {
            report::write_hgrm(dir, "wakeup_jitter", &histograms.wakeup_jitter)?;
        }
        report::write_hgrm(dir, "sample_to_command", &histograms.sample_to_command)?;
        report::write_summary(dir, &summary)?;
        eprintln!(
            "report written to {} (summary.json, .hgrm percentile distributions, latency.hlog with {intervals} intervals)",
            dir.display()
        );
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!(
            "{} samples ({:.3} s of plant time in {:.3} s), {} spikes, stop: {:?}",
            summary.samples,
            summary.plant_time_s,
            summary.wall_time_s,
            summary.spikes,
            summary.stop
        );
        if let Some(j) = &summary.wakeup_jitter {
            print!(
                "; wake-up jitter p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs; {} overruns",
                j.p50_us, j.p99_us, j.p999_us, j.max_us, summary.overruns
            );
        }
        println!();
    }
    Ok(())
}

fn cmd_model(c: ModelCommand) -> anyhow::Result<()> {
    match c {
        ModelCommand::Info { model, json } => {
            let info = modeltool::info(&model)?;
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
                    return Err(UsageError("give --sim PRESET or --data FILE.csv".into()).into())
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

fn main() -> ExitCode {
    // Like any Unix filter: a closed stdout (`| head`) ends the process
    // quietly instead of panicking on the failed write.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread
    // starts; no handler code is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .compact()
        .init();
    let result = match cli.command {
        Some(Command::Simulate(a)) => cmd_simulate(*a),
        Some(Command::Model { command }) => cmd_model(command),
        Some(Command::Report { dirs }) => neurostimd::report::render(&dirs)
            .map(|t| print!("{t}"))
            .map_err(|e| anyhow::anyhow!(e)),
        Some(Command::Train {
            config,
            out,
            epochs,
            json,
        }) => cmd_train(config, out, epochs, json),
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
                );
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
