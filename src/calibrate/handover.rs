//! `neurostimd --calibrate DURATION`: calibrate on the cell, then run the
//! configured policy on the same plant, in one session.
//!
//! 1. The excitation run (policy `off`, the script through the limiter)
//!    records into `RUN-calibration` beside the run's recording (or keeps
//!    the samples in memory when the run does not record).
//! 2. Training and the gate (the plant waits: a simulator pauses, a rig
//!    holds the zero command it was last sent).
//! 3. The run proper on the same plant: with the calibrated model if it
//!    passed the gate, else with the configured model (MPC's guard and
//!    fallback apply as usual), and the run's recording starts with the
//!    events `calibration finished`, `gate verdict` and `model adopted` (or
//!    `model not adopted`).

use super::live::{self, LiveRequest};
use super::{calibrate, CalibrateError, Options};
use crate::config::Config;
use crate::forecast::ModelSource;
use crate::record::EventLine;
use crate::session::{self, SessionOptions, SessionOutcome};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A calibration before a run.
#[derive(Clone, Debug)]
pub struct InRun {
    pub duration_s: f64,
    pub amplitude: f64,
    pub seed: u64,
    pub options: Options,
}

/// What the calibration decided, for the run's summary.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HandOver {
    pub calibration_recording: Option<PathBuf>,
    pub model: Option<PathBuf>,
    pub adopted: bool,
    pub note: String,
    pub calibration: Option<super::Calibration>,
}

/// Calibrate, then run; the run's outcome and what the calibration
/// decided.
pub fn run(
    config: &Config,
    opts: &SessionOptions,
    c: &InRun,
    stop: Arc<AtomicBool>,
) -> Result<(SessionOutcome, HandOver), CalibrateError> {
    live::check_amplitude(c.amplitude, &config.safety)?;
    let main_dir = opts.record.clone().or_else(|| {
        config
            .record
            .dir
            .as_ref()
            .map(|p| session::new_report_dir(p))
    });
    let calib_dir = main_dir
        .as_ref()
        .map(|d| PathBuf::from(format!("{}-calibration", d.display())));
    let req = LiveRequest {
        duration_s: c.duration_s,
        amplitude: c.amplitude,
        seed: c.seed,
        record: calib_dir.clone(),
        command: opts.command.clone(),
    };
    let plant = session::open_plant(config)?;
    let mut first = live::session_options(config, &req);
    first.service = opts.service.clone();
    let (excited, plant) = session::run_on(
        plant,
        &live::session_config(config, c.duration_s),
        &first,
        stop.clone(),
    )?;
    if stop.load(Ordering::Relaxed) {
        return Err(CalibrateError::NotEnoughData(
            "stopped during the calibration; the run did not start".into(),
        ));
    }
    let model_out = match &calib_dir {
        Some(d) => d.join("calibrated.onnx"),
        None => session::state_dir(config)
            .join("calibration")
            .join(format!("calibrated-{}.onnx", unix_s())),
    };
    let (hand, events) = decide(config, c, &req, &excited, model_out)?;
    let mut cfg = config.clone();
    if hand.adopted {
        if let Some(m) = &hand.model {
            cfg.control.model = ModelSource::File(m.clone());
        }
    }
    let mut second = opts.clone();
    second.record = main_dir;
    second.events = events;
    // `control.guard.revert`: the configured model is the one to go back to.
    second.base_model =
        (hand.adopted && hand.model.is_some()).then(|| config.control.model.clone());
    let (outcome, _plant) = session::run_on(plant, &cfg, &second, stop)?;
    Ok((outcome, hand))
}

fn unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Train and gate on what the excitation recorded; the hand-over and the
/// events that open the run's recording.
fn decide(
    config: &Config,
    c: &InRun,
    req: &LiveRequest,
    excited: &SessionOutcome,
    model_out: PathBuf,
) -> Result<(HandOver, Vec<(EventLine, String)>), CalibrateError> {
    let data = live::data_of(config, req, excited)?;
    let mut events = vec![(
        EventLine::Retraining,
        format!(
            "calibration finished: {} samples ({}), {} safety interventions",
            data.trace.samples(),
            excited
                .recording
                .as_ref()
                .map_or("kept in memory".into(), |d| format!(
                    "recorded in {}",
                    d.display()
                )),
            excited.summary.interventions_total
        ),
    )];
    // With retraining on, the run adopts the calibrated model into the
    // registry itself (as its configured model); registering it here too
    // would make two versions of one file.
    let registry = (!config.retrain.enabled).then(|| session::state_dir(config));
    let previous = match config.control.policy {
        crate::policy::PolicyKind::Mpc => {
            format!("the configured model {}", config.control.model.name())
        }
        p => format!("the {} policy (no model)", p.name()),
    };
    let hand = match calibrate(&data, &c.options, &model_out, registry.as_deref()) {
        Ok(cal) => {
            events.push((
                EventLine::Retraining,
                format!(
                    "gate verdict: {} ({}): {}",
                    if cal.verdict.passed {
                        "passed"
                    } else {
                        "refused"
                    },
                    cal.verdict.rule,
                    cal.verdict.reason
                ),
            ));
            let note = if cal.verdict.passed {
                format!("model adopted: {} ({})", model_out.display(), cal.chosen)
            } else {
                format!("model not adopted: the run continues with {previous}")
            };
            events.push((EventLine::ModelSwap, note.clone()));
            HandOver {
                calibration_recording: excited.recording.clone(),
                model: Some(model_out),
                adopted: cal.verdict.passed,
                note,
                calibration: Some(cal),
            }
        }
        Err(e @ (CalibrateError::NotEnoughData(_) | CalibrateError::Train(_))) => {
            let note = format!(
                "calibration failed ({e}); model not adopted: the run continues with {previous}"
            );
            events.push((EventLine::ModelSwap, note.clone()));
            HandOver {
                calibration_recording: excited.recording.clone(),
                model: None,
                adopted: false,
                note,
                calibration: None,
            }
        }
        Err(e) => return Err(e),
    };
    for (_, text) in &events {
        tracing::info!(target: "neurostimd::calibrate", "{text}");
    }
    Ok((hand, events))
}
