//! `[retrain]`: onboard retraining, raw and validated.

use super::{non_negative, positive, ConfigError, Cx, RetrainConfig};
use crate::units::{Quantity, Time};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetrain {
    pub(super) enabled: bool,
    pub(super) state_dir: std::path::PathBuf,
    pub(super) on_drift: bool,
    pub(super) drift_reference: String,
    pub(super) drift_multiple: f64,
    pub(super) drift_window: Quantity<Time>,
    pub(super) periodic: Quantity<Time>,
    pub(super) data: Quantity<Time>,
    pub(super) buffer: Quantity<Time>,
    pub(super) validation: f64,
    pub(super) holdout: f64,
    pub(super) margin: f64,
    pub(super) epochs: usize,
    pub(super) learning_rate: f64,
    pub(super) batch: usize,
    pub(super) stride: usize,
    pub(super) patience: usize,
    pub(super) seed: u64,
    pub(super) cooldown: Quantity<Time>,
}

impl RawRetrain {
    pub(super) fn validate(&self, cx: &Cx) -> Result<RetrainConfig, ConfigError> {
        let rt = self;
        if !(rt.drift_multiple.is_finite() && rt.drift_multiple > 1.0) {
            return Err(cx.err(
                "retrain.drift_multiple",
                format!("{} must be a number > 1", rt.drift_multiple),
            ));
        }
        for (key, q) in [
            ("retrain.drift_window", rt.drift_window.get()),
            ("retrain.data", rt.data.get()),
            ("retrain.buffer", rt.buffer.get()),
        ] {
            positive(q).map_err(|m| cx.err(key, m))?;
        }
        non_negative(rt.periodic.get()).map_err(|m| cx.err("retrain.periodic", m))?;
        non_negative(rt.cooldown.get()).map_err(|m| cx.err("retrain.cooldown", m))?;
        if rt.buffer.get() < rt.data.get() {
            return Err(cx.err(
                "retrain.buffer",
                format!(
                    "{} ms keeps less than retrain.data ({} ms)",
                    rt.buffer.get(),
                    rt.data.get()
                ),
            ));
        }
        for (key, x) in [
            ("retrain.validation", rt.validation),
            ("retrain.holdout", rt.holdout),
        ] {
            if !(0.05..=0.5).contains(&x) {
                return Err(cx.err(key, format!("{x} is outside 0.05 ..= 0.5")));
            }
        }
        if !(0.0..0.9).contains(&rt.margin) {
            return Err(cx.err(
                "retrain.margin",
                format!("{} is outside 0 ..< 0.9", rt.margin),
            ));
        }
        if rt.epochs == 0 || rt.batch == 0 || rt.stride == 0 || rt.patience == 0 {
            return Err(cx.err(
                "retrain",
                "epochs, batch, stride and patience must be >= 1".into(),
            ));
        }
        positive(rt.learning_rate).map_err(|m| cx.err("retrain.learning_rate", m))?;
        let drift_reference_online = match rt.drift_reference.as_str() {
            "online" => true,
            "card" => false,
            other => {
                return Err(cx.err(
                    "retrain.drift_reference",
                    format!("`{other}` is not one of: online, card"),
                ))
            }
        };
        Ok(RetrainConfig {
            enabled: rt.enabled,
            drift_reference_online,
            state_dir: rt.state_dir.clone(),
            on_drift: rt.on_drift,
            drift_multiple: rt.drift_multiple,
            drift_window_ms: rt.drift_window.get(),
            periodic_ms: (rt.periodic.get() > 0.0).then(|| rt.periodic.get()),
            data_ms: rt.data.get(),
            buffer_ms: rt.buffer.get(),
            validation: rt.validation,
            holdout: rt.holdout,
            margin: rt.margin,
            schedule: crate::train::trainer::Schedule {
                epochs: rt.epochs,
                batch: rt.batch,
                learning_rate: rt.learning_rate,
                clip_norm: 1.0,
                patience: rt.patience,
                seed: rt.seed,
            },
            stride: rt.stride,
            cooldown_ms: rt.cooldown.get(),
        })
    }
}
