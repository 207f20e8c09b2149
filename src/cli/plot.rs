//! `neurostimd plot`: a run's figure from its report directory and trace,
//! so a run can be judged at a glance without a plotting stack of one's own.

use super::UsageError;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PlotArgs {
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
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 250.0,
        allow_negative_numbers = true
    )]
    zoom_ms: f64,
}

pub fn cmd_plot(a: PlotArgs) -> anyhow::Result<()> {
    use neurostimd::plot::{self, PlotError, RunLoader};
    let PlotArgs {
        dir,
        trace,
        out,
        zoom_start,
        zoom_ms,
    } = a;
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
