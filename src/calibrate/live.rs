//! Live calibration data: the normal control loop, policy `off`, playing a
//! seeded excitation as its request. Going through the loop (not a side
//! channel to the plant) is the point: every command passes the safety
//! limiter, is counted if limited, and is recorded like any run's.

use super::{CalibrateError, CalibrationData};
use crate::config::{Config, PlantKind};
use crate::policy::pid::Script;
use crate::policy::PolicyKind;
use crate::session::{SessionOptions, SessionOutcome};
use crate::train::dataset::Excitation;
use crate::train::segments::{RawSegment, RawTrace};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// A live calibration's recording: how long, how strong, which seed.
#[derive(Clone, Debug)]
pub struct LiveRequest {
    pub duration_s: f64,
    /// Excitation bound, µA/cm² (never above `safety.max_amplitude`).
    pub amplitude: f64,
    pub seed: u64,
    /// Record here (Open Ephys layout); `None`: keep the samples in memory.
    pub record: Option<PathBuf>,
    pub command: String,
}

/// Refuse an amplitude the limiter would cut (the user asked for something
/// the rig is not allowed to deliver), naming both figures.
pub fn check_amplitude(
    amplitude: f64,
    limits: &crate::safety::Limits,
) -> Result<(), CalibrateError> {
    if !(amplitude.is_finite() && amplitude > 0.0) {
        return Err(CalibrateError::Usage(format!(
            "--amplitude {amplitude} uA/cm2 must be > 0"
        )));
    }
    if amplitude > limits.max_amplitude {
        return Err(CalibrateError::Usage(format!(
            "--amplitude {amplitude} uA/cm2 is above the safety limit safety.max_amplitude = {} uA/cm2; calibration never asks for more than the limiter allows",
            limits.max_amplitude
        )));
    }
    Ok(())
}

/// The trainer's excitation mix (rest, steps, pulse trains, OU noise,
/// ramps) within ±`amplitude`, one value per `period_ms` for
/// `duration_s`, then zero.
pub fn excitation(seed: u64, period_ms: f64, amplitude: f64, duration_s: f64) -> Script {
    let n = (duration_s * 1000.0 / period_ms).ceil() as usize + 1;
    let mut e = Excitation::new(seed, period_ms, amplitude);
    let values: Vec<f32> = (0..n).map(|_| e.next_value() as f32).collect();
    Script::new(values.into(), period_ms)
}

/// The excitation's time step: the simulator's sample period; for other
/// plants (whose rate is known only once they speak) a 0.1 ms grid the
/// loop samples at its own rate.
fn script_period_ms(config: &Config) -> f64 {
    match config.plant_kind {
        PlantKind::Sim => config.sim.sample_period_ms,
        _ => 0.1,
    }
}

/// The configuration of the excitation run: policy `off` (the script
/// drives), no retraining, the requested duration.
pub fn session_config(config: &Config, duration_s: f64) -> Config {
    let mut c = config.clone();
    c.control.policy = PolicyKind::Off;
    c.run.duration_s = Some(duration_s);
    c.retrain.enabled = false;
    c
}

/// The session options of the excitation run.
pub fn session_options(config: &Config, req: &LiveRequest) -> SessionOptions {
    let script = excitation(
        req.seed,
        script_period_ms(config),
        req.amplitude,
        req.duration_s,
    );
    SessionOptions {
        record: req.record.clone(),
        keep_records: req.record.is_none(),
        command: req.command.clone(),
        script: Some(script),
        events: vec![(
            crate::record::EventLine::PolicyChange,
            format!(
                "calibration started: excitation seed {}, within ±{} uA/cm2, {} s",
                req.seed, req.amplitude, req.duration_s
            ),
        )],
        ..SessionOptions::default()
    }
}

/// What the run recorded, as calibration data (read back from the
/// recording when there is one: the file is what the model is trained on).
pub fn data_of(
    config: &Config,
    req: &LiveRequest,
    outcome: &SessionOutcome,
) -> Result<CalibrationData, CalibrateError> {
    let mut data = match (&outcome.recording, &outcome.records) {
        (Some(dir), _) => CalibrationData::from_recording(dir)?,
        (None, Some(records)) => CalibrationData {
            trace: RawTrace {
                period_ms: records
                    .get(1)
                    .map_or(config.sim.sample_period_ms, |r| r.t_ms - records[0].t_ms),
                segments: vec![RawSegment {
                    v: records.iter().map(|r| r.v_mv).collect(),
                    i: records.iter().map(|r| r.applied).collect(),
                }],
            },
            label: "live calibration (in memory)".into(),
            cell: serde_json::Value::Null,
            seeds: serde_json::Value::Null,
        },
        (None, None) => {
            return Err(CalibrateError::NotEnoughData(
                "the calibration run kept no samples".into(),
            ))
        }
    };
    data.label = format!("live {} s, {}", req.duration_s, data.label);
    data.cell = serde_json::json!({
        "plant": match config.plant_kind {
            PlantKind::Sim => "sim",
            PlantKind::Serial => "serial",
            PlantKind::Replay => "replay",
        },
        "sim": (config.plant_kind == PlantKind::Sim).then_some(&config.sim),
    });
    data.seeds = serde_json::json!({
        "excitation": req.seed,
        "amplitude_uA_cm2": req.amplitude,
        "duration_s": req.duration_s,
        "interventions": outcome.summary.interventions_total,
    });
    Ok(data)
}

/// Run the excitation on the configured plant and return what it recorded.
pub fn record(
    config: &Config,
    req: &LiveRequest,
    stop: Arc<AtomicBool>,
) -> Result<(SessionOutcome, CalibrationData), CalibrateError> {
    check_amplitude(req.amplitude, &config.safety)?;
    let cfg = session_config(config, req.duration_s);
    let outcome = crate::session::run(&cfg, &session_options(config, req), stop)?;
    let data = data_of(config, req, &outcome)?;
    Ok((outcome, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_excitation_is_seeded_bounded_and_the_amplitude_is_checked() {
        let a = excitation(5, 0.1, 4.0, 2.0);
        let b = excitation(5, 0.1, 4.0, 2.0);
        let vals: Vec<f64> = (0..20_001).map(|k| a.at(k as f64 * 0.1)).collect();
        assert_eq!(
            vals,
            (0..20_001)
                .map(|k| b.at(k as f64 * 0.1))
                .collect::<Vec<_>>()
        );
        assert!(vals.iter().all(|x| x.abs() <= 4.0));
        assert!(vals.iter().any(|&x| x > 1.0) && vals.iter().any(|&x| x < -0.5));
        assert_eq!(a.at(2100.0), 0.0, "zero after the end");
        let limits = Config::defaults().safety;
        assert!(check_amplitude(limits.max_amplitude, &limits).is_ok());
        let e = check_amplitude(limits.max_amplitude + 1.0, &limits).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("safety.max_amplitude")
                && text.contains(&format!("{}", limits.max_amplitude + 1.0)),
            "{text}"
        );
    }
}
