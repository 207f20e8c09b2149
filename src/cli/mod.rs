//! The commands of the `neurostimd` binary, one module each. They live in
//! the binary, not the library, so the library stays free of anyhow, clap
//! and printing: the commands turn arguments into library requests and
//! library results into text and exit codes.

pub mod adapt;
pub mod calibrate;
pub mod ctl;
pub mod model;
pub mod plot;
pub mod recover;
pub mod report;
pub mod rig;
pub mod run;
pub mod scenarios;
pub mod simulate;
pub mod train;

use neurostimd::config::ConfigError;
use neurostimd::modeltool::ModelToolError;
use neurostimd::simulate::SimulateError;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The target the commands log under: the binary's name, as when they
/// lived in main.rs, so log lines and `RUST_LOG` filters stay the same.
pub const LOG_TARGET: &str = "neurostimd";

/// Errors that mean "you asked for something invalid" (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Prints a command's error with its whole context and picks the exit
/// code: scripts tell a bad request (2: fix the arguments or the
/// configuration) from a failure at run time (1: retrying may help).
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("neurostimd: {e:#}");
            ExitCode::from(if is_usage(&e) { 2 } else { 1 })
        }
    }
}

fn is_usage(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ConfigError>().is_some()
        || e.downcast_ref::<UsageError>().is_some()
        || matches!(
            e.downcast_ref::<SimulateError>(),
            Some(SimulateError::BadStim { .. })
        )
        || matches!(
            e.downcast_ref::<ModelToolError>(),
            Some(ModelToolError::BadInput { .. })
        )
        || e.downcast_ref::<ctl::CtlRefused>()
            .is_some_and(|r| (400..500).contains(&r.status))
        || e.chain().any(names_no_embedded_model)
}

/// A model name this binary cannot carry (`embedded:NAME`) is a bad
/// request, wherever it was wrapped: `calibrate` keeps exit 1 for "the
/// gate refused". The wrappers hold the model error as a field, not as a
/// source, so each is looked into.
fn names_no_embedded_model(c: &(dyn std::error::Error + 'static)) -> bool {
    use neurostimd::calibrate::CalibrateError;
    use neurostimd::forecast::ForecastError;
    use neurostimd::train::TrainError;
    let f = c
        .downcast_ref::<ForecastError>()
        .or(match c.downcast_ref::<ModelToolError>() {
            Some(ModelToolError::Forecast(f)) => Some(f),
            _ => None,
        })
        .or(match c.downcast_ref::<CalibrateError>() {
            Some(CalibrateError::Base(f) | CalibrateError::Reload(f)) => Some(f),
            Some(CalibrateError::Train(TrainError::Load(f))) => Some(f),
            _ => None,
        })
        .or(match c.downcast_ref::<TrainError>() {
            Some(TrainError::Load(f)) => Some(f),
            _ => None,
        });
    matches!(f, Some(ForecastError::UnknownEmbedded { .. }))
}

/// A flag the commands poll, so SIGINT/SIGTERM end a long run cleanly
/// (stimulation to zero, reports written) instead of killing it mid-write.
pub fn stop_on_signal() -> anyhow::Result<Arc<AtomicBool>> {
    use anyhow::Context as _;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("cannot install the SIGINT/SIGTERM handler")?;
    }
    Ok(stop)
}

/// `--set a.b.c=VALUE` into an overlay table: VALUE is read as TOML (a
/// number, boolean, string or array), or else taken as a string.
pub fn dotted_overlay(sets: &[String]) -> anyhow::Result<toml::Table> {
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
