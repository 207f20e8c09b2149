//! `neurostimd adapt`: the adaptation scenario end to end (drift, onboard
//! retraining, guarded swap), paced, as the demonstration that the loop
//! recovers when the cell changes under it.

use super::stop_on_signal;
use clap::Args;
use neurostimd::config::Config;
use neurostimd::session;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct AdaptArgs {
    /// The shortened version (CI): switch at 15 s, 90 s in all.
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
}

pub fn cmd_adapt(a: AdaptArgs) -> anyhow::Result<()> {
    let AdaptArgs {
        quick,
        config,
        out,
        json,
    } = a;
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
    let stop = stop_on_signal()?;
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
