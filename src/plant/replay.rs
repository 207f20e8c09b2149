//! `--plant replay`: a recording played back as a plant, open loop. Each
//! `read` returns the next recorded sample (V and the current that was
//! applied then); commands are accepted and ignored, because the recorded
//! neuron cannot respond to them. For evaluating models and controllers
//! offline on what a rig really produced.

use super::{Plant, PlantError, Sample};
use crate::record::{Recording, RecordingError};
use std::path::Path;

pub struct ReplayPlant {
    v: Vec<f64>,
    applied: Vec<f64>,
    index: Vec<i64>,
    t_ms: Vec<f64>,
    period_ms: f64,
    next: usize,
    /// Commands written (and ignored).
    commands: u64,
}

impl ReplayPlant {
    pub fn open(root: &Path) -> Result<ReplayPlant, RecordingError> {
        let r = Recording::open(root)?;
        if r.is_empty() {
            return Err(RecordingError::Format {
                path: root.display().to_string(),
                what: "the recording holds no samples".into(),
            });
        }
        Ok(ReplayPlant {
            v: r.v_mv().to_vec(),
            applied: r.applied().to_vec(),
            index: r.acquired.sample_numbers.clone(),
            t_ms: r.acquired.timestamps.iter().map(|t| t * 1000.0).collect(),
            period_ms: r.sample_period_ms(),
            next: 0,
            commands: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.v.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v.is_empty()
    }
}

impl Plant for ReplayPlant {
    fn kind(&self) -> &'static str {
        "replay"
    }

    fn sample_period_ms(&self) -> f64 {
        self.period_ms
    }

    fn read(&mut self) -> Result<Sample, PlantError> {
        let k = self.next;
        if k >= self.v.len() {
            return Err(PlantError::Ended);
        }
        self.next += 1;
        Ok(Sample {
            index: self.index[k].max(0) as u64,
            t_ms: self.t_ms[k],
            v_mv: self.v[k],
            i_applied: self.applied.get(k).copied().unwrap_or(0.0),
        })
    }

    fn write(&mut self, command: f64) -> Result<(), PlantError> {
        if !command.is_finite() {
            return Err(PlantError::BadCommand);
        }
        self.commands += 1;
        Ok(())
    }

    fn report(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "recorded_samples": self.v.len(),
            "replayed_samples": self.next,
            "commands_ignored": self.commands,
        }))
    }
}
