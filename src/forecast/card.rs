//! The model card: everything the daemon must know about a model that the
//! ONNX graph does not say (time step, normalisation, output order), plus
//! provenance and validation metrics so a model can be audited. It sits
//! beside the model as `NAME.json`; `docs/model-contract.md` specifies it.

use serde::{Deserialize, Serialize};

/// The `format` value every card carries.
pub const CARD_FORMAT: &str = "neurostimd-model-card";
/// The plain contract's card version: what every card without an
/// extension carries, so builds that read only version 1 keep reading them.
pub const CARD_VERSION: u32 = 1;
/// The newest card version this build reads: version 2 adds the residual
/// output (`output.residual`), version 3 the forecast-spike threshold
/// (`output.spike_threshold_mv`); a card uses them only when the model does.
pub const CARD_VERSION_MAX: u32 = 3;
/// Input features, in tensor order.
pub const FEATURES: [&str; 3] = ["V", "I", "is_future"];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    pub format: String,
    pub format_version: u32,
    pub name: String,
    /// Model time step, ms (a whole multiple of the plant's sample period).
    pub dt_ms: f64,
    /// Observed steps in the input window.
    pub t_in: usize,
    /// Forecast horizon, steps.
    pub t_out: usize,
    pub input: InputSpec,
    pub output: OutputSpec,
    pub normalization: Normalization,
    pub architecture: Architecture,
    /// Free-form: tool, command, data, seed, versions.
    pub provenance: serde_json::Value,
    /// Per-horizon validation metrics, or null for an unvalidated model.
    pub validation: Option<serde_json::Value>,
    /// sha256 of the ONNX file's bytes, lowercase hex.
    pub onnx_sha256: String,
    /// Name (or sha256) of the model this one was trained from.
    pub parent: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub features: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub name: String,
    pub order: OutputOrder,
    /// Version 2: the graph adds the last observed V (normalised, input
    /// step t_in − 1) to every output, so the network predicts the change
    /// from it. At step 1 the plain contract must carry the last sample
    /// through the LSTM's state, which loses to AR on fast swings
    /// (spikes); the skip makes "no change" the zero output. Absent or
    /// false: the version-1 output.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub residual: bool,
    /// Version 3: where this model's forecast spikes are read, mV (an
    /// upward crossing), chosen by calibration on its validation data. A
    /// model trained by squared error on a few minutes of a cell smears its
    /// upstrokes and often peaks below the membrane's −20 mV; MPC counts
    /// forecast crossings, so it reads them here (`mpc.model_spike_threshold`).
    /// Absent: MPC's configured `mpc.spike_threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spike_threshold_mv: Option<f64>,
}

impl OutputSpec {
    /// The card version the output needs: 1 unless it uses an extension.
    pub fn format_version(&self) -> u32 {
        if self.spike_threshold_mv.is_some() {
            3
        } else if self.residual {
            2
        } else {
            CARD_VERSION
        }
    }
}

/// Time order of the output vector. `Reversed` (the seed paper's choice):
/// element j is the forecast for horizon step t_out − j.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputOrder {
    Forward,
    Reversed,
}

/// Feature scaling: x_n = (x − mean) / std.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    pub v_mean: f64,
    pub v_std: f64,
    pub i_mean: f64,
    pub i_std: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// "lstm".
    pub cell: String,
    pub layers: usize,
    pub hidden: usize,
    /// "linear" (one fully connected layer) or "mlp".
    pub head: String,
}

impl ModelCard {
    /// Structural checks that need no ONNX file: a list of problems, each
    /// naming the field.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.format != CARD_FORMAT {
            p.push(format!(
                "format is `{}`, expected `{CARD_FORMAT}`",
                self.format
            ));
        }
        if !(CARD_VERSION..=CARD_VERSION_MAX).contains(&self.format_version) {
            p.push(format!(
                "format_version {} is not supported (this build reads {CARD_VERSION} to {CARD_VERSION_MAX})",
                self.format_version
            ));
        } else if self.format_version < self.output.format_version() {
            p.push(format!(
                "output.{} needs format_version {}, the card says {}",
                if self.output.spike_threshold_mv.is_some() {
                    "spike_threshold_mv"
                } else {
                    "residual"
                },
                self.output.format_version(),
                self.format_version
            ));
        }
        if let Some(th) = self.output.spike_threshold_mv {
            if !(th.is_finite() && (-100.0..=50.0).contains(&th)) {
                p.push(format!(
                    "output.spike_threshold_mv {th} must be a membrane potential in [-100, 50] mV"
                ));
            }
        }
        if !(self.dt_ms.is_finite() && self.dt_ms > 0.0) {
            p.push(format!("dt_ms {} must be > 0", self.dt_ms));
        }
        if self.t_in == 0 || self.t_out == 0 {
            p.push(format!(
                "t_in ({}) and t_out ({}) must be >= 1",
                self.t_in, self.t_out
            ));
        }
        if self.input.features != FEATURES {
            p.push(format!(
                "input.features is {:?}, expected {:?}",
                self.input.features, FEATURES
            ));
        }
        let n = &self.normalization;
        for (name, v) in [("v_mean", n.v_mean), ("i_mean", n.i_mean)] {
            if !v.is_finite() {
                p.push(format!("normalization.{name} is not finite"));
            }
        }
        for (name, v) in [("v_std", n.v_std), ("i_std", n.i_std)] {
            if !(v.is_finite() && v > 0.0) {
                p.push(format!("normalization.{name} {v} must be > 0"));
            }
        }
        if self.architecture.cell != "lstm" {
            p.push(format!(
                "architecture.cell `{}` is not `lstm`",
                self.architecture.cell
            ));
        }
        if self.onnx_sha256.len() != 64 || !self.onnx_sha256.chars().all(|c| c.is_ascii_hexdigit())
        {
            p.push("onnx_sha256 is not a 64-digit hex sha256".into());
        }
        p
    }
}
