//! `neurostimd train` and `neurostimd paper-study`: the offline trainer,
//! for one model or for the grid of variants that checks the seed paper's
//! claims (both go through the same trainer, so their numbers compare).

use super::LOG_TARGET;
use clap::Args;
use neurostimd::config::{overlay_at as table_at, Config};
use neurostimd::train::study;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Configuration file laid over the built-in defaults (its [train] section).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where to write the model (its card NAME.json and bundle go beside it).
    #[arg(long, value_name = "MODEL.onnx")]
    out: PathBuf,
    /// Override train.epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Override train.init: start from this model's weights (a path or
    /// embedded:NAME; its architecture must match [train]).
    #[arg(long, value_name = "MODEL")]
    init: Option<String>,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct PaperStudyArgs {
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
}

pub fn cmd_train(a: TrainArgs) -> anyhow::Result<()> {
    let TrainArgs {
        config,
        out,
        epochs,
        init,
        json,
    } = a;
    let mut cli = toml::Table::new();
    if let Some(e) = epochs {
        table_at(&mut cli, &["train"]).insert("epochs".into(), (e as i64).into());
    }
    if let Some(m) = init {
        table_at(&mut cli, &["train"]).insert("init".into(), m.into());
    }
    let config = Config::load_layered(config.as_deref(), &cli)?;
    let command: String = std::env::args().collect::<Vec<_>>().join(" ");
    let t = &config.train;
    tracing::info!(
        target: LOG_TARGET,
        layers = t.layers,
        hidden = t.hidden,
        t_in = t.t_in,
        t_out = t.t_out,
        dt_ms = t.dt_ms,
        sources = t.sources.len(),
        init = t.init.as_ref().map(|m| m.name()),
        duration_s = t.duration_ms / 1000.0,
        "training"
    );
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let max_epochs = t.schedule.epochs;
    let outcome = neurostimd::train::run(&config.train, &out, &command, |e| {
        if tty {
            eprint!(
                "\repoch {:>3}/{max_epochs}  train {:.5}  val {:.5}  {:.0} windows/s   ",
                e.epoch, e.train_loss, e.val_loss, e.windows_per_second
            );
        } else {
            tracing::info!(
                target: LOG_TARGET,
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

pub fn cmd_paper_study(a: PaperStudyArgs) -> anyhow::Result<()> {
    let PaperStudyArgs {
        quick,
        out,
        threads,
        config,
    } = a;
    let config = Config::load_layered(config.as_deref(), &toml::Table::new())?;
    let plan = if quick {
        study::StudyPlan::quick()
    } else {
        study::StudyPlan::full()
    };
    let cells = study::variants(&plan).len() * plan.seeds.len();
    tracing::info!(target: LOG_TARGET, plan = %plan.name, cells, threads, "paper study");
    let report = study::run(&config.train, &plan, threads, |line| {
        tracing::info!(target: LOG_TARGET, "{line}");
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
