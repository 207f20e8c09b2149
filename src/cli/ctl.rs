//! `neurostimd ctl`: the control API from the shell, so an operator can
//! steer a running daemon (arm, objective, retrain) without a client of
//! their own.

use super::UsageError;
use clap::{Args, Subcommand};
use hyper::Method;
use neurostimd::policy::ObjectiveKind;
use neurostimd::service;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CtlArgs {
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

/// A refusal by the daemon keeps its HTTP status, so a 4xx (the request
/// was wrong: exit 2) is told from a failure (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CtlRefused {
    pub status: u16,
    message: String,
}

pub fn cmd_ctl(a: CtlArgs) -> anyhow::Result<()> {
    let CtlArgs {
        socket,
        timeout,
        call,
    } = a;
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
