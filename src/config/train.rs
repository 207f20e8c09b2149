//! `[train]`: what `neurostimd train` builds and from which data, raw as
//! written and validated.

use super::{non_negative, positive, ConfigError, Cx, ScheduledChange, SimConfig};
use super::{TrainConfig, TrainSource};
use crate::units::{Current, Quantity, Time};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrain {
    pub(super) layers: usize,
    pub(super) hidden: usize,
    pub(super) t_in: usize,
    pub(super) t_out: usize,
    pub(super) dt: Quantity<Time>,
    pub(super) order: crate::forecast::OutputOrder,
    #[serde(default)]
    pub(super) head: crate::train::net::Head,
    pub(super) epochs: usize,
    pub(super) batch: usize,
    pub(super) learning_rate: f64,
    pub(super) clip_norm: f64,
    pub(super) patience: usize,
    pub(super) seed: u64,
    /// Extra loss weight near spikes (0: plain squared error).
    #[serde(default)]
    pub(super) spike_weight: f64,
    /// The residual output (card version 2): forecast = last V + network.
    #[serde(default)]
    pub(super) residual: bool,
    /// Measurement-noise augmentation of the observed V, mV (0: off).
    #[serde(default)]
    pub(super) input_noise_mv: f64,
    /// Calibration's scratch start carries the AR baseline's fit as a
    /// fixed linear skip and learns the rest.
    #[serde(default)]
    pub(super) ar_skip: bool,
    /// Calibration blends each start with the AR baseline per horizon step,
    /// the gains fitted on validation windows.
    #[serde(default)]
    pub(super) ar_blend: bool,
    /// Start from this model's weights (a path or `embedded:NAME`) instead
    /// of a fresh initialisation.
    #[serde(default)]
    pub(super) init: Option<String>,
    /// Calibration's warm start also carries the AR skip.
    #[serde(default)]
    pub(super) ar_skip_warm: bool,
    /// The AR blend's validation gains are multiplied by this, in (0, 1].
    #[serde(default = "one")]
    pub(super) ar_blend_shrink: f64,
    /// `--start auto` also tries the warm AR-skip start (blended with AR)
    /// and chooses by the gate on validation first.
    #[serde(default = "yes")]
    pub(super) auto_ar_skip_warm: bool,
    pub(super) data: RawTrainData,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrainData {
    pub(super) presets: Vec<String>,
    /// Randomised cells: every CA1 preset once per seed (ranges from
    /// `[plant.sim.randomize]`); empty: the plant's own cell.
    #[serde(default)]
    pub(super) cell_seeds: Vec<u64>,
    #[serde(default)]
    pub(super) traces: Vec<std::path::PathBuf>,
    pub(super) regime_change: bool,
    pub(super) duration: Quantity<Time>,
    pub(super) stride: usize,
    pub(super) max_amplitude: Quantity<Current>,
    pub(super) train_fraction: f64,
    pub(super) val_fraction: f64,
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

/// `train.ar_blend_shrink` must lie in (0, 1]: 1 is the validation gains
/// as fitted, smaller trusts the network less than validation says.
fn blend_shrink(cx: &Cx, s: f64) -> Result<f64, ConfigError> {
    if s > 0.0 && s <= 1.0 {
        Ok(s)
    } else {
        Err(cx.err("train.ar_blend_shrink", format!("{s} must be in (0, 1]")))
    }
}

impl RawTrain {
    /// `[train]`; the training sources use the plant's simulator settings
    /// (`sim`) without its schedule.
    pub(super) fn validate(
        &self,
        cx: &Cx,
        sim: &SimConfig,
        ranges: crate::neuron::cell::Ranges,
    ) -> Result<TrainConfig, ConfigError> {
        let t = self;
        let sp = sim.sample_period_ms;
        let range = |key: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(cx.err(key, format!("{v} is outside {lo} ..= {hi}")))
            }
        };
        range("train.layers", t.layers, 1, 4)?;
        range("train.hidden", t.hidden, 1, 1024)?;
        range("train.t_in", t.t_in, 1, 10_000)?;
        range("train.t_out", t.t_out, 1, 1_000)?;
        range("train.epochs", t.epochs, 1, 100_000)?;
        range("train.batch", t.batch, 1, 65_536)?;
        range("train.patience", t.patience, 1, 100_000)?;
        range("train.data.stride", t.data.stride, 1, 100_000)?;
        let decimation =
            crate::forecast::WindowRing::decimation_for(t.dt.get(), sp).ok_or_else(|| {
                cx.err(
                    "train.dt",
                    format!(
                        "{} ms is not a whole number of sample periods ({sp} ms)",
                        t.dt.get()
                    ),
                )
            })?;
        if !(t.learning_rate > 0.0 && t.learning_rate < 1.0) {
            return Err(cx.err(
                "train.learning_rate",
                format!("{} is outside (0, 1)", t.learning_rate),
            ));
        }
        non_negative(t.clip_norm).map_err(|m| cx.err("train.clip_norm", m))?;
        non_negative(t.input_noise_mv).map_err(|m| cx.err("train.input_noise_mv", m))?;
        positive(t.data.duration.get()).map_err(|m| cx.err("train.data.duration", m))?;
        positive(t.data.max_amplitude.get()).map_err(|m| cx.err("train.data.max_amplitude", m))?;
        let tf = t.data.train_fraction;
        let vf = t.data.val_fraction;
        if !(tf > 0.0 && vf > 0.0 && tf + vf < 1.0) {
            return Err(cx.err(
                "train.data.train_fraction",
                format!("train_fraction {tf} and val_fraction {vf} must be > 0 and sum to < 1 (the rest is the test set)"),
            ));
        }
        let sources = self.sources(cx, sim, ranges)?;
        if sources.is_empty() && t.data.traces.is_empty() {
            return Err(cx.err(
                "train.data.presets",
                "no data: list presets, set regime_change or give traces".into(),
            ));
        }
        Ok(TrainConfig {
            layers: t.layers,
            hidden: t.hidden,
            t_in: t.t_in,
            t_out: t.t_out,
            dt_ms: t.dt.get(),
            decimation,
            order: t.order,
            head: t.head,
            schedule: crate::train::trainer::Schedule {
                epochs: t.epochs,
                batch: t.batch,
                learning_rate: t.learning_rate,
                clip_norm: t.clip_norm,
                patience: t.patience,
                seed: t.seed,
            },
            sources,
            traces: t.data.traces.clone(),
            duration_ms: t.data.duration.get(),
            stride: t.data.stride,
            max_amplitude: t.data.max_amplitude.get(),
            train_fraction: tf,
            val_fraction: vf,
            spike_weight: spike_weight(cx, t.spike_weight)?,
            residual: t.residual,
            input_noise_mv: t.input_noise_mv,
            ar_skip: t.ar_skip,
            ar_blend: t.ar_blend,
            init: t.init.as_deref().map(crate::forecast::ModelSource::parse),
            ar_skip_warm: t.ar_skip_warm,
            ar_blend_shrink: blend_shrink(cx, t.ar_blend_shrink)?,
            auto_ar_skip_warm: t.auto_ar_skip_warm,
        })
    }
}

impl RawTrain {
    /// The simulated training stretches: each preset (on the nominal cell
    /// or on each randomised cell), the plant's own cell, the regime change.
    fn sources(
        &self,
        cx: &Cx,
        sim: &SimConfig,
        ranges: crate::neuron::cell::Ranges,
    ) -> Result<Vec<TrainSource>, ConfigError> {
        let t = self;
        // Training stretches use the plant's settings without its schedule.
        let base = SimConfig {
            schedule: Vec::new(),
            ..sim.clone()
        };
        let mut sources = Vec::new();
        // A CA1 preset keeps the plant's cell seed (the draw is laid over
        // it); "plant" is the plant's own cell, whatever its family.
        for (k, name) in t.data.presets.iter().enumerate() {
            if name == "plant" {
                sources.push(TrainSource {
                    label: format!("plant ({})", base.cell_label()),
                    sim: base.clone(),
                });
                continue;
            }
            let p = cx.preset(name, &format!("train.data.presets[{k}]"))?;
            if t.data.cell_seeds.is_empty() {
                sources.push(TrainSource {
                    label: name.clone(),
                    sim: base.with_ca1_preset(name, p),
                });
            }
            for &seed in &t.data.cell_seeds {
                if seed == 0 {
                    return Err(cx.err(
                        "train.data.cell_seeds",
                        "0 is the nominal cell, not a randomised one".into(),
                    ));
                }
                let cell = crate::neuron::cell::CellDraw::new(
                    seed,
                    ranges.clone(),
                    &crate::neuron::cell::CA1_KEYS,
                );
                let drawn = SimConfig {
                    cell: Some(cell),
                    ..base.clone()
                };
                sources.push(TrainSource {
                    label: format!("{name}, cell {seed}"),
                    sim: drawn.with_ca1_preset(name, p),
                });
            }
        }
        if t.data.regime_change {
            let regular = cx.preset("regular", "train.data.regime_change")?;
            let bursting = cx.preset("bursting", "train.data.regime_change")?;
            let mut sim = base.with_ca1_preset("regular", regular);
            sim.schedule = vec![ScheduledChange {
                at_ms: t.data.duration.get() / 2.0,
                label: "preset bursting".into(),
                params: sim.cell_params(bursting),
            }];
            sources.push(TrainSource {
                label: "regular->bursting".into(),
                sim,
            });
        }
        Ok(sources)
    }
}

/// `train.spike_weight`: the extra weight of targets within 1 ms of a
/// sample above −20 mV (the spike metric's threshold and tolerance).
fn spike_weight(
    cx: &Cx,
    extra: f64,
) -> Result<Option<crate::train::dataset::SpikeWeight>, ConfigError> {
    if !(0.0..=1000.0).contains(&extra) {
        return Err(cx.err(
            "train.spike_weight",
            format!("{extra} is outside 0 ..= 1000"),
        ));
    }
    Ok((extra > 0.0).then_some(crate::train::dataset::SpikeWeight {
        extra: extra as f32,
        threshold_mv: -20.0,
        radius_ms: 1.0,
    }))
}
