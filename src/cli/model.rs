//! `neurostimd model`: forecaster models outside the loop, so a model can
//! be inspected, checked against baselines and timed before a run trusts
//! it, and an onboard-retrained one rolled back.

use super::UsageError;
use clap::{Args, Subcommand};
use neurostimd::config::Config;
use neurostimd::forecast::Engine;
use neurostimd::modeltool;
use neurostimd::session;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ModelArgs {
    #[command(subcommand)]
    command: ModelCommand,
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
    Eval(EvalArgs),
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
struct EvalArgs {
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
    #[arg(long, default_value_t = 60.0, allow_negative_numbers = true)]
    duration: f64,
    /// Seed of the excitation (the trainer uses the config's seed).
    #[arg(long, default_value_t = 12345)]
    seed: u64,
    /// Read the model's forecast spikes as upward crossings of this level
    /// (default: the card's `output.spike_threshold_mv`, else −20 mV, the
    /// membrane's; MPC reads them at `mpc.spike_threshold`).
    #[arg(long, value_name = "MV", allow_negative_numbers = true)]
    forecast_threshold: Option<f64>,
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn cmd_model(a: ModelArgs) -> anyhow::Result<()> {
    match a.command {
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
        ModelCommand::Eval(e) => eval(e)?,
        ModelCommand::Rollback { config, state_dir } => rollback(config, state_dir)?,
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

fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let EvalArgs {
        model,
        sim,
        data,
        recording,
        duration,
        seed,
        forecast_threshold,
        config,
        json,
    } = a;
    if forecast_threshold.is_some_and(|t| !(-100.0..=60.0).contains(&t)) {
        return Err(UsageError(format!(
            "--forecast-threshold {} mV is outside the membrane's range [-100, 60] mV",
            forecast_threshold.unwrap_or_default()
        ))
        .into());
    }
    // The ceiling (a day of simulated data) keeps 1e30 from overflowing
    // the sample count (it panicked).
    if !(duration.is_finite() && duration > 0.0 && duration <= 86_400.0) {
        return Err(UsageError(format!(
            "--duration {duration} must be in (0, 86400] seconds"
        ))
        .into());
    }
    // A file or an embedded name (`embedded:ca1_lstm_spike`), as
    // `control.model` takes it.
    let model = neurostimd::forecast::ModelSource::parse(&model.to_string_lossy());
    let c = match (sim, data) {
        _ if recording.is_some() => neurostimd::train::eval_recording(
            &model,
            recording.as_deref().expect("checked"),
            forecast_threshold,
        )?,
        (Some(sim), _) => {
            let config = Config::load_layered(config.as_deref(), &toml::Table::new())?;
            // `plant`: the configured cell as it is (any family, its draw).
            let plant_cell = (sim == "plant").then(|| config.sim.clone());
            let Some(params) = config
                .preset(&sim)
                .or(plant_cell.as_ref().map(|p| p.params))
            else {
                let known: Vec<&str> = config.presets.keys().map(String::as_str).collect();
                return Err(UsageError(format!(
                    "--sim {sim}: no such preset; defined presets: {}",
                    known.join(", ")
                ))
                .into());
            };
            // A CA1 preset keeps the configured cell's draw (seed).
            let plant = plant_cell.unwrap_or_else(|| config.sim.with_ca1_preset(&sim, params));
            neurostimd::train::eval_sim(
                &model,
                &plant,
                config.train.max_amplitude,
                (duration * 1000.0, seed),
                forecast_threshold,
            )?
        }
        (None, Some(data)) => neurostimd::train::eval_trace(&model, &data, forecast_threshold)?,
        (None, None) => {
            return Err(
                UsageError("give --sim PRESET, --data FILE.csv or --recording DIR".into()).into(),
            )
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
    Ok(())
}

fn rollback(config: Option<PathBuf>, state_dir: Option<PathBuf>) -> anyhow::Result<()> {
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
    Ok(())
}
