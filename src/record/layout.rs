//! Names and metadata of the Open Ephys layout: what `structure.oebin`
//! says, and which TTL line means what.

use super::RecordingSetup;
use crate::safety::Cause;
use serde_json::json;

/// The recording's folder under the root: neo and SpikeInterface expect a
/// record node, an experiment and a recording level.
pub const NODE_DIR: &str = "Record Node 100/experiment1/recording1";
pub(crate) const ACQUIRED: &str = "neurostimd-100.acquired";
pub(crate) const CONTROLLER: &str = "neurostimd-100.controller";
pub(crate) const EVENTS: &str = "neurostimd-100.events";

/// A TTL line of the event stream. Lines are 1-based as in Open Ephys;
/// `states.npy` holds +line on a rising edge and −line on a falling one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventLine {
    /// High while the command is not zero.
    Stimulation,
    /// A model was swapped in (one-sample pulse; text: version).
    ModelSwap,
    /// Policy, objective or target changed, or stimulation armed/disarmed.
    PolicyChange,
    /// Retraining steps (pulses: started, candidate accepted/rejected).
    Retraining,
    /// Forecast drift detected (pulse).
    Drift,
    /// High while the safety limiter changes the command for this cause.
    Intervention(Cause),
}

const FIRST_CAUSE_LINE: u32 = 8;

impl EventLine {
    pub fn number(self) -> u32 {
        match self {
            EventLine::Stimulation => 1,
            EventLine::ModelSwap => 2,
            EventLine::PolicyChange => 3,
            EventLine::Retraining => 4,
            EventLine::Drift => 5,
            EventLine::Intervention(c) => {
                FIRST_CAUSE_LINE
                    + Cause::ALL
                        .iter()
                        .position(|x| *x == c)
                        .expect("every cause is listed") as u32
            }
        }
    }

    pub fn from_number(n: u32) -> Option<EventLine> {
        Some(match n {
            1 => EventLine::Stimulation,
            2 => EventLine::ModelSwap,
            3 => EventLine::PolicyChange,
            4 => EventLine::Retraining,
            5 => EventLine::Drift,
            n if n >= FIRST_CAUSE_LINE => {
                EventLine::Intervention(*Cause::ALL.get((n - FIRST_CAUSE_LINE) as usize)?)
            }
            _ => return None,
        })
    }

    pub fn name(self) -> String {
        match self {
            EventLine::Stimulation => "stimulation".into(),
            EventLine::ModelSwap => "model_swap".into(),
            EventLine::PolicyChange => "policy_change".into(),
            EventLine::Retraining => "retraining".into(),
            EventLine::Drift => "drift".into(),
            EventLine::Intervention(c) => format!("safety_{}", c.name()),
        }
    }
}

/// Line number → name, for the sidecar.
pub fn event_line_names() -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for n in 1..=(FIRST_CAUSE_LINE + Cause::ALL.len() as u32) {
        if let Some(l) = EventLine::from_number(n) {
            m.insert(n.to_string(), l.name().into());
        }
    }
    serde_json::Value::Object(m)
}

fn channel(name: &str, description: &str, bit: f64, units: &str) -> serde_json::Value {
    json!({
        "channel_name": name,
        "description": description,
        "identifier": format!("neurostimd.{name}"),
        "history": "neurostimd",
        "bit_volts": bit,
        "units": units,
    })
}

fn stream(
    folder: &str,
    name: &str,
    rate: f64,
    channels: Vec<serde_json::Value>,
) -> serde_json::Value {
    json!({
        "folder_name": format!("{folder}/"),
        "sample_rate": rate,
        "source_processor_name": "neurostimd",
        "source_processor_id": 100,
        "source_processor_sub_idx": 0,
        "stream_name": name,
        "recorded_processor": "neurostimd",
        "recorded_processor_id": 100,
        "num_channels": channels.len(),
        "channels": channels,
    })
}

/// The `structure.oebin` of a recording. `bit_volts` is the size of one
/// int16 step in the channel's unit (Open Ephys calls it bit_volts whatever
/// the unit).
pub(crate) fn structure_oebin(setup: &RecordingSetup, v_bit: f64, i_bit: f64) -> serde_json::Value {
    let rate = setup.sample_rate_hz;
    let units = setup.current_units.as_str();
    json!({
        "GUI version": "0.6.7",
        "continuous": [
            stream(ACQUIRED, "acquired", rate, vec![
                channel("V", "membrane potential as acquired", v_bit, "mV"),
            ]),
            stream(CONTROLLER, "controller", rate, vec![
                channel("command", "stimulation command after the safety limiter, applied over the next sample", i_bit, units),
                channel("applied", "stimulation the plant reported as applied over this sample", i_bit, units),
                channel("forecast", "membrane potential the model in use predicted for this sample's model step (-32768: none)", v_bit, "mV"),
            ]),
        ],
        "events": [{
            "folder_name": format!("{EVENTS}/TTL/"),
            "channel_name": "neurostimd events",
            "description": "TTL lines: see neurostimd.json recording.event_lines",
            "identifier": "neurostimd.events",
            "sample_rate": rate,
            "type": "int16",
            "num_channels": 64,
            "source_processor": "neurostimd",
            "stream_name": "events",
        }],
        "spikes": [],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_are_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for n in 1..80 {
            if let Some(l) = EventLine::from_number(n) {
                assert_eq!(l.number(), n);
                assert!(seen.insert(l.name()), "{} twice", l.name());
            }
        }
        assert_eq!(seen.len(), 5 + Cause::ALL.len());
    }
}
