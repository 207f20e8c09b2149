//! Training the forecaster from the simulator (and, with the recorder, from
//! recordings): datasets, the network and its gradients, the optimiser, the
//! ONNX export, and the evaluation against baselines.
//!
//! - [`dataset`]: excitation, simulated series, windows, time splits.
//! - [`net`]: the LSTM + linear head, forward and backward passes.
//! - [`trainer`]: Adam, mini-batches, clipping, early stopping.
//! - [`export`]: the ONNX file written by our code.
//! - [`baselines`], [`metrics`]: persistence and AR; RMSE per horizon step
//!   and spike-prediction F1.
//! - [`study`]: the seed paper's claims tested with this trainer.

pub mod baselines;
pub mod dataset;
pub mod export;
pub mod metrics;
pub mod net;
pub mod segments;
pub mod settings;
pub mod study;
pub mod trainer;

use crate::forecast::card::{
    Architecture, InputSpec, ModelCard, Normalization, OutputSpec, CARD_FORMAT, CARD_VERSION,
    FEATURES,
};
use crate::forecast::{
    card_path, sha256_hex, Engine, ForecastError, Forecaster, ModelSource, OutputOrder,
};
use crate::npy::{NpyError, NpyF32};
use crate::plant::sim::SimConfig;
use crate::plant::PlantError;
use dataset::{Series, Windows};
use metrics::{Accumulator, HorizonMetrics};
use serde::Serialize;
use settings::TrainConfig;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("simulating training data: {0}")]
    Plant(#[from] PlantError),
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error(transparent)]
    Npy(#[from] NpyError),
    #[error("the exported model does not reload: {0}")]
    Reload(#[from] ForecastError),
    /// The model to evaluate (a file or an embedded name) cannot be loaded.
    #[error("cannot load the model to evaluate: {0}")]
    Load(ForecastError),
    #[error("the exported model differs from the trained network by {0:e} (normalised units) on the test windows")]
    Mismatch(f32),
    #[error("not enough data: {0}")]
    NotEnoughData(String),
    #[error("train.init: {0}")]
    Init(#[from] WarmStartError),
}

/// Why a model cannot start a training run.
#[derive(Debug, thiserror::Error)]
pub enum WarmStartError {
    #[error(transparent)]
    Load(#[from] ForecastError),
    /// Not the contract's plain LSTM + linear head (nothing to fine-tune).
    #[error("{model} cannot be fine-tuned: {reason}")]
    NotTrainable { model: String, reason: String },
    /// The model's shape differs from the configuration's: the weights
    /// would not fit the network the rest of `[train]` describes.
    #[error("{model} has {field} = {model_value}, the configuration {field} = {config_value}; the architecture must match")]
    Mismatch {
        model: String,
        field: &'static str,
        model_value: String,
        config_value: String,
    },
}

/// A model's weights as a trainable network, with its card (whose
/// normalisation the weights were learnt in) and the provenance line its
/// descendants' cards carry as `parent`.
pub struct WarmStart {
    pub net: net::Net,
    pub card: ModelCard,
    pub parent: String,
}

/// Load `source` as a warm start (calibration's warm start and
/// `train.init` share this, so both read a base model the same way).
pub fn load_warm_start(source: &crate::forecast::ModelSource) -> Result<WarmStart, WarmStartError> {
    let f = Forecaster::load_source(source, 32, Engine::Native)?;
    let net = net::Net::from_forecaster(&f).map_err(|reason| WarmStartError::NotTrainable {
        model: source.name(),
        reason,
    })?;
    let card = f.card().clone();
    let parent = format!(
        "{} (sha256 {})",
        source.name(),
        &card.onnx_sha256[..12.min(card.onnx_sha256.len())]
    );
    Ok(WarmStart { net, card, parent })
}

/// `train.init`'s model, checked against the configured architecture
/// (`None`: no warm start, a fresh initialisation).
pub fn warm_start_for(cfg: &TrainConfig) -> Result<Option<WarmStart>, WarmStartError> {
    let Some(source) = &cfg.init else {
        return Ok(None);
    };
    let w = load_warm_start(source)?;
    let c = &w.card;
    let checks: [(&'static str, String, String); 8] = [
        (
            "train.layers",
            c.architecture.layers.to_string(),
            cfg.layers.to_string(),
        ),
        (
            "train.hidden",
            c.architecture.hidden.to_string(),
            cfg.hidden.to_string(),
        ),
        (
            "train.head",
            c.architecture.head.clone(),
            cfg.head.name().to_string(),
        ),
        ("train.t_in", c.t_in.to_string(), cfg.t_in.to_string()),
        ("train.t_out", c.t_out.to_string(), cfg.t_out.to_string()),
        (
            "train.dt",
            format!("{} ms", c.dt_ms),
            format!("{} ms", cfg.dt_ms),
        ),
        (
            "train.order",
            format!("{:?}", c.output.order),
            format!("{:?}", cfg.order),
        ),
        (
            "train.residual",
            c.output.residual.to_string(),
            cfg.residual.to_string(),
        ),
    ];
    for (field, model_value, config_value) in checks {
        if model_value != config_value {
            return Err(WarmStartError::Mismatch {
                model: source.name(),
                field,
                model_value,
                config_value,
            });
        }
    }
    Ok(Some(w))
}

/// Metrics of the model and both baselines on one set of windows.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub data: String,
    pub dt_ms: f64,
    /// Where the model's forecast spikes were read, mV (the baselines'
    /// always at the membrane's −20 mV): a calibrated card's
    /// `output.spike_threshold_mv` or `model eval --forecast-threshold`.
    pub model_spike_threshold_mv: f64,
    pub model: HorizonMetrics,
    pub persistence: HorizonMetrics,
    pub ar: HorizonMetrics,
}

impl Comparison {
    /// True when the model's RMSE is below both baselines' at every step.
    pub fn beats_baselines(&self) -> bool {
        self.model
            .rmse_mv
            .iter()
            .zip(&self.persistence.rmse_mv)
            .zip(&self.ar.rmse_mv)
            .all(|((m, p), a)| m < p && m < a)
    }

    /// A table: one row per horizon step.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{} ({} windows)\n step  t_ms   RMSE mV: model  persistence       AR\n",
            self.data, self.model.windows
        );
        for j in 0..self.model.rmse_mv.len() {
            s.push_str(&format!(
                "{:>5} {:>5.1} {:>15.3} {:>12.3} {:>8.3}\n",
                j + 1,
                (j + 1) as f64 * self.dt_ms,
                self.model.rmse_mv[j],
                self.persistence.rmse_mv[j],
                self.ar.rmse_mv[j]
            ));
        }
        let f = |m: &HorizonMetrics| {
            format!(
                "P {:.3} R {:.3} F1 {:.3}",
                m.spikes.precision, m.spikes.recall, m.spikes.f1
            )
        };
        s.push_str(&format!(
            "spikes (±1 ms): model {} (forecast read at {} mV); persistence {}; AR {}\n",
            f(&self.model),
            self.model_spike_threshold_mv,
            f(&self.persistence),
            f(&self.ar)
        ));
        s
    }
}

/// Compare a forecaster (a function from normalised contract rows to
/// normalised forward-order forecasts) and both baselines on `test`; the AR
/// baseline is fitted on `fit_on`. The model's forecast spikes are read at
/// `model_threshold_mv` (default: the membrane's −20 mV).
pub fn compare(
    label: &str,
    dt_ms: f64,
    norm: &Normalization,
    (test, fit_on): (&Windows, &Windows),
    model_threshold_mv: Option<f64>,
    mut model: impl FnMut(&[f32], usize, &mut [f32]),
) -> Comparison {
    let (t_in, t_out) = (test.t_in, test.t_out);
    let ar = baselines::LinearAr::fit(fit_on, 10, 1e-6);
    let (vm, vs) = (norm.v_mean as f32, norm.v_std as f32);
    let model_threshold_mv =
        model_threshold_mv.unwrap_or(crate::neuron::spikes::DEFAULT_THRESHOLD_MV);
    let mut acc = [
        Accumulator::new(t_out, dt_ms, 1.0).with_forecast_threshold(model_threshold_mv),
        Accumulator::new(t_out, dt_ms, 1.0),
        Accumulator::new(t_out, dt_ms, 1.0),
    ];
    let steps = t_in + t_out;
    let chunk = 256;
    let mut preds = vec![0.0f32; chunk * t_out];
    let (mut p, mut truth) = (vec![0.0f32; t_out], vec![0.0f32; t_out]);
    let mut start = 0;
    while start < test.len() {
        let b = chunk.min(test.len() - start);
        model(
            &test.x[start * steps * 3..(start + b) * steps * 3],
            b,
            &mut preds[..b * t_out],
        );
        for k in 0..b {
            let (x, y) = test.example(start + k);
            let last = x[(t_in - 1) * 3] * vs + vm;
            for j in 0..t_out {
                truth[j] = y[j] * vs + vm;
            }
            for (which, a) in acc.iter_mut().enumerate() {
                match which {
                    0 => p.copy_from_slice(&preds[k * t_out..(k + 1) * t_out]),
                    1 => baselines::persistence(x, t_in, t_out, &mut p),
                    _ => ar.predict(x, &mut p),
                }
                for v in p.iter_mut() {
                    *v = *v * vs + vm;
                }
                a.add(last, &p, &truth);
            }
        }
        start += b;
    }
    Comparison {
        data: label.to_string(),
        dt_ms,
        model_spike_threshold_mv: model_threshold_mv,
        model: acc[0].finish(),
        persistence: acc[1].finish(),
        ar: acc[2].finish(),
    }
}

/// A forecaster's predictions through tract on the ONNX file, in forward
/// order (normalised), for `compare`.
pub fn forecaster_fn(f: &mut Forecaster) -> impl FnMut(&[f32], usize, &mut [f32]) + '_ {
    move |x: &[f32], b: usize, out: &mut [f32]| {
        let t_out = f.card().t_out;
        let reversed = f.card().output.order == OutputOrder::Reversed;
        let y = f
            .run_raw(b, x)
            .expect("the model ran on its own contract tensors at load");
        for k in 0..b {
            for j in 0..t_out {
                out[k * t_out + j] = if reversed {
                    y[k * t_out + t_out - 1 - j]
                } else {
                    y[k * t_out + j]
                };
            }
        }
    }
}

/// What a training run produced.
#[derive(Clone, Debug, Serialize)]
pub struct TrainOutcome {
    pub onnx: PathBuf,
    pub card: PathBuf,
    pub parameters: usize,
    pub epochs: Vec<trainer::EpochReport>,
    pub train_windows: usize,
    pub comparisons: Vec<Comparison>,
    /// |exported ONNX (tract) − trained network| on test windows.
    pub export_difference: f32,
}

fn generate(cfg: &TrainConfig, seed_offset: u64) -> Result<Vec<(String, Series)>, TrainError> {
    let mut out = Vec::new();
    for (k, src) in cfg.sources.iter().enumerate() {
        let s = dataset::simulate_series(
            &src.sim,
            cfg.duration_ms,
            cfg.decimation,
            cfg.max_amplitude,
            cfg.schedule
                .seed
                .wrapping_add(seed_offset)
                .wrapping_add(1000 * k as u64),
        )?;
        out.push((src.label.clone(), s));
    }
    for path in &cfg.traces {
        // One source per contiguous segment (sweep): no window straddles a
        // gap between sweeps.
        let segs = segments::read_trace_csv(path)?.series(cfg.dt_ms)?;
        let many = segs.len() > 1;
        for (k, s) in segs.into_iter().enumerate() {
            let label = match many {
                true => format!("{} segment {}", path.display(), k + 1),
                false => path.display().to_string(),
            };
            out.push((label, s));
        }
    }
    Ok(out)
}

/// The network training starts from: the warm start's weights (and its
/// provenance line), else a fresh initialisation from the training seed.
fn initial_net(cfg: &TrainConfig, warm: Option<WarmStart>) -> (net::Net, Option<String>) {
    match warm {
        Some(w) => (w.net, Some(w.parent)),
        None => (
            net::Net::with_head(
                cfg.layers,
                cfg.hidden,
                cfg.t_in,
                cfg.t_out,
                cfg.order,
                cfg.head,
                cfg.schedule.seed,
            )
            .with_residual(cfg.residual),
            None,
        ),
    }
}

/// Train a model as `cfg` (`[train]`) says, export it to `out` (+ card
/// and bundle), reload it with tract and check it equals the trained
/// network.
pub fn run(
    cfg: &TrainConfig,
    out: &Path,
    command: &str,
    mut progress: impl FnMut(&trainer::EpochReport),
) -> Result<TrainOutcome, TrainError> {
    // Checked before the (long) simulation so a mismatch fails at once.
    let warm = warm_start_for(cfg)?;
    let labelled = generate(cfg, 0)?;
    let series: Vec<Series> = labelled.iter().map(|(_, s)| s.clone()).collect();
    let (train_s, val_s, test_s) =
        dataset::split_by_time(&series, cfg.train_fraction, cfg.val_fraction);
    // A warm start keeps the units its weights were learnt in.
    let norm = match &warm {
        Some(w) => w.card.normalization,
        None => dataset::normalization(&train_s),
    };
    let mut train_w = Windows::cut(&train_s, cfg.t_in, cfg.t_out, cfg.stride, &norm);
    train_w.add_input_noise((cfg.input_noise_mv / norm.v_std) as f32, cfg.schedule.seed);
    let val_w = Windows::cut(&val_s, cfg.t_in, cfg.t_out, cfg.stride, &norm);
    let weights = |s: &[Series]| {
        cfg.spike_weight
            .map(|sw| sw.for_windows(s, cfg.t_in, cfg.t_out, cfg.stride))
    };
    let (train_wt, val_wt) = (weights(&train_s), weights(&val_s));
    if train_w.is_empty() || val_w.is_empty() {
        return Err(TrainError::NotEnoughData(format!(
            "{} training and {} validation windows; lengthen train.data.duration",
            train_w.len(),
            val_w.len()
        )));
    }
    let (mut net, parent) = initial_net(cfg, warm);
    let epochs = trainer::fit_weighted(
        &mut net,
        (&train_w, train_wt.as_deref()),
        (&val_w, val_wt.as_deref()),
        &cfg.schedule,
        &mut progress,
        &std::sync::atomic::AtomicBool::new(false),
    );

    let mut ws = net::Workspace::default();
    let comparisons = test_comparisons(cfg, &labelled, &train_s, &test_s, &norm, &net, &mut ws);

    // Export, card, bundle; then reload through the contract loader.
    let bytes = export::to_onnx(&net, env!("CARGO_PKG_VERSION"));
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| TrainError::Io {
            path,
            error: source,
        }
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::write(out, &bytes).map_err(io(out))?;
    let name = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let card = ModelCard {
        format: CARD_FORMAT.into(),
        format_version: if cfg.residual { 2 } else { CARD_VERSION },
        name: name.clone(),
        dt_ms: cfg.dt_ms,
        t_in: cfg.t_in,
        t_out: cfg.t_out,
        input: InputSpec {
            name: "x".into(),
            features: FEATURES.iter().map(|s| s.to_string()).collect(),
        },
        output: OutputSpec {
            name: "y".into(),
            order: cfg.order,
            residual: cfg.residual,
            spike_threshold_mv: None,
        },
        normalization: norm,
        architecture: Architecture {
            cell: "lstm".into(),
            layers: cfg.layers,
            hidden: cfg.hidden,
            head: cfg.head.name().into(),
        },
        provenance: provenance(cfg, command, &labelled, &epochs, train_w.len()),
        validation: Some(validation(cfg, &comparisons, &epochs)),
        onnx_sha256: sha256_hex(&bytes),
        parent,
    };
    let card_file = card_path(out);
    let text = serde_json::to_string_pretty(&card).expect("a card serialises");
    std::fs::write(&card_file, text + "\n").map_err(io(&card_file))?;

    let diff = write_bundle(out, cfg, &test_s, &norm, &net, &mut ws)?;

    Ok(TrainOutcome {
        onnx: out.to_path_buf(),
        card: card_file,
        parameters: net.param_count(),
        epochs,
        train_windows: train_w.len(),
        comparisons,
        export_difference: diff,
    })
}

/// Test metrics per source, with the AR baseline fitted on that source's
/// training part.
fn test_comparisons(
    cfg: &TrainConfig,
    labelled: &[(String, Series)],
    train_s: &[Series],
    test_s: &[Series],
    norm: &Normalization,
    net: &net::Net,
    ws: &mut net::Workspace,
) -> Vec<Comparison> {
    let mut comparisons = Vec::new();
    for (k, (label, _)) in labelled.iter().enumerate() {
        let test_w = Windows::cut(&test_s[k..=k], cfg.t_in, cfg.t_out, 1, norm);
        let fit_w = Windows::cut(&train_s[k..=k], cfg.t_in, cfg.t_out, cfg.stride, norm);
        if test_w.is_empty() {
            continue;
        }
        let c = compare(
            label,
            cfg.dt_ms,
            norm,
            (&test_w, &fit_w),
            None,
            |x, b, o| {
                let y = ws.forward(net, x, b).to_vec();
                for kk in 0..b {
                    for j in 0..cfg.t_out {
                        o[kk * cfg.t_out + j] = y[kk * cfg.t_out + net.target_index(j)];
                    }
                }
            },
        );
        comparisons.push(c);
    }
    comparisons
}

/// The card's `validation` section: how the test figures were made, and
/// the figures.
fn validation(
    cfg: &TrainConfig,
    comparisons: &[Comparison],
    epochs: &[trainer::EpochReport],
) -> serde_json::Value {
    serde_json::json!({
        "split": format!("by time per source: train {}, validation {}, test the rest", cfg.train_fraction, cfg.val_fraction),
        "metric": "test windows, stride 1; RMSE in mV per horizon step; spikes: upward -20 mV crossings matched within ±1 ms",
        "per_source": comparisons.iter().map(|c| serde_json::json!({
            "data": c.data,
            "windows": c.model.windows,
            "rmse_mv_per_step": c.model.rmse_mv,
            "persistence_rmse_mv_per_step": c.persistence.rmse_mv,
            "ar_rmse_mv_per_step": c.ar.rmse_mv,
            "spike_f1": c.model.spikes.f1,
            "persistence_spike_f1": c.persistence.spikes.f1,
            "ar_spike_f1": c.ar.spikes.f1,
        })).collect::<Vec<_>>(),
        "final_val_loss": epochs.last().map(|e| e.val_loss),
    })
}

/// The card's `provenance` section: enough to train the same model again.
fn provenance(
    cfg: &TrainConfig,
    command: &str,
    labelled: &[(String, Series)],
    epochs: &[trainer::EpochReport],
    train_windows: usize,
) -> serde_json::Value {
    serde_json::json!({
        "tool": format!("neurostimd {} train", env!("CARGO_PKG_VERSION")),
        "command": command,
        "data": labelled.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>(),
        "duration_ms_per_source": cfg.duration_ms,
        "excitation": format!("OU noise, steps, pulse trains, ramps and rest within ±{} uA/cm2", cfg.max_amplitude),
        "seed": cfg.schedule.seed,
        "schedule": cfg.schedule,
        "spike_weight": cfg.spike_weight,
        "measurement_noise_sd_mv": cfg.sources.first().map(|s| s.sim.noise_sd_mv),
        "cells": cfg.sources.iter().map(|s| s.sim.cell_label()).collect::<Vec<_>>(),
        "epochs_run": epochs.len(),
        "train_windows": train_windows,
    })
}

/// Bundle: a few test windows and tract's output on them, after checking
/// tract's output equals the trained network's. Returns the largest
/// difference.
fn write_bundle(
    out: &Path,
    cfg: &TrainConfig,
    test_s: &[Series],
    norm: &Normalization,
    net: &net::Net,
    ws: &mut net::Workspace,
) -> Result<f32, TrainError> {
    let mut f = Forecaster::load(out, 32, Engine::Native)?;
    let all_test = Windows::cut(test_s, cfg.t_in, cfg.t_out, 97, norm);
    let b = all_test.len().min(8);
    if b == 0 {
        return Err(TrainError::NotEnoughData(
            "no test windows for the bundle".into(),
        ));
    }
    let steps = cfg.t_in + cfg.t_out;
    let x = all_test.x[..b * steps * 3].to_vec();
    let y_tract = f.run_raw(b, &x)?;
    let y_net = ws.forward(net, &x, b).to_vec();
    let diff = y_tract
        .iter()
        .zip(&y_net)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    if diff > 1e-4 {
        return Err(TrainError::Mismatch(diff));
    }
    NpyF32::new(vec![b, steps, 3], x).write(&out.with_extension("input.npy"))?;
    NpyF32::new(vec![b, cfg.t_out], y_tract).write(&out.with_extension("expected.npy"))?;
    Ok(diff)
}

/// `model eval --data FILE.csv`: a recorded or simulated trace, split in
/// time; AR fitted on the first half, everything scored on the second.
pub fn eval_trace(
    model: &ModelSource,
    trace: &Path,
    threshold_mv: Option<f64>,
) -> Result<Comparison, TrainError> {
    let mut f = Forecaster::load_source(model, 32, Engine::Tract).map_err(TrainError::Load)?;
    let segs = segments::read_trace_csv(trace)?.series(f.card().dt_ms)?;
    let label = format!("{}, second half", trace.display());
    score_second_half(&mut f, &segs, label, threshold_mv)
}

/// `model eval --recording DIR`: a recording made with `--record`, V and
/// the applied current decimated to the model's step; AR fitted on the
/// first half, everything scored on the second.
pub fn eval_recording(
    model: &ModelSource,
    dir: &Path,
    threshold_mv: Option<f64>,
) -> Result<Comparison, TrainError> {
    let mut f = Forecaster::load_source(model, 32, Engine::Tract).map_err(TrainError::Load)?;
    let r = crate::record::Recording::open(dir)
        .map_err(|e| TrainError::NotEnoughData(e.to_string()))?;
    let dec = crate::forecast::WindowRing::decimation_for(f.card().dt_ms, r.sample_period_ms())
        .ok_or_else(|| {
            TrainError::NotEnoughData(format!(
                "the model's dt_ms {} is not a whole number of the recording's sample periods ({} ms)",
                f.card().dt_ms,
                r.sample_period_ms()
            ))
        })?;
    let s = Series::from_samples(r.v_mv(), r.applied(), dec, f.card().dt_ms);
    let label = format!("{}, second half", dir.display());
    score_second_half(&mut f, &[s], label, threshold_mv)
}

/// `model eval --sim PRESET`: fresh simulated data (a seed the trainer does
/// not use), split in time; AR fitted on the first half, everything scored
/// on the second.
///
/// `sim` is the simulator to draw from (the caller has set its preset);
/// `max_amplitude` bounds the excitation (`train.data.max_amplitude`).
pub fn eval_sim(
    model: &ModelSource,
    sim: &SimConfig,
    max_amplitude: f64,
    (duration_ms, seed): (f64, u64),
    threshold_mv: Option<f64>,
) -> Result<Comparison, TrainError> {
    let mut f = Forecaster::load_source(model, 32, Engine::Tract).map_err(TrainError::Load)?;
    let card = f.card().clone();
    let mut sim = sim.clone();
    sim.schedule.clear();
    let decimation = crate::forecast::WindowRing::decimation_for(card.dt_ms, sim.sample_period_ms)
        .ok_or_else(|| {
            TrainError::NotEnoughData(format!(
                "the model's dt_ms {} is not a whole number of sample periods ({} ms)",
                card.dt_ms, sim.sample_period_ms
            ))
        })?;
    let s = dataset::simulate_series(&sim, duration_ms, decimation, max_amplitude, seed)?;
    let label = format!(
        "sim {}, {:.0} s, seed {seed}, second half",
        sim.preset,
        duration_ms / 1000.0
    );
    score_second_half(&mut f, &[s], label, threshold_mv)
}

/// A forecaster as `compare` calls it: windows in, horizons out.
type ForecastFn<'a> = dyn FnMut(&[f32], usize, &mut [f32]) + 'a;

/// Fit the AR baseline on the first half of `segs` (contiguous segments in
/// time order), score the model and both baselines on the second half.
/// The model's spikes are read at `threshold_mv`, else where its card says
/// (a calibrated model), else at −20 mV.
fn score_second_half(
    f: &mut Forecaster,
    segs: &[Series],
    label: String,
    threshold_mv: Option<f64>,
) -> Result<Comparison, TrainError> {
    let card = f.card().clone();
    let threshold_mv = threshold_mv.or(card.output.spike_threshold_mv);
    let (a, _, c) = segments::split_segments(segs, 0.5, 0.0, false);
    let norm = card.normalization;
    let fit_w = Windows::cut(&a, card.t_in, card.t_out, 2, &norm);
    let test_w = Windows::cut(&c, card.t_in, card.t_out, 1, &norm);
    if test_w.is_empty() || fit_w.is_empty() {
        return Err(TrainError::NotEnoughData(format!(
            "{label}: too short for the model's window"
        )));
    }
    let run = |model: &mut ForecastFn| {
        compare(
            &label,
            card.dt_ms,
            &norm,
            (&test_w, &fit_w),
            threshold_mv,
            model,
        )
    };
    Ok(match batched_net(f, &test_w) {
        Some(net) => {
            let mut ws = net::Workspace::default();
            run(&mut |x: &[f32], b: usize, o: &mut [f32]| {
                let y = ws.forward(&net, x, b);
                for k in 0..b {
                    for j in 0..net.t_out {
                        o[k * net.t_out + j] = y[k * net.t_out + net.target_index(j)];
                    }
                }
            })
        }
        None => run(&mut forecaster_fn(f)),
    })
}

/// The model as the trainer's network, if it is one (a plain LSTM with the
/// per-step linear head) and computes what tract computes on the first
/// test windows: scoring 60,000 windows takes seconds this way, against a
/// minute or more through tract at batch 32. Anything else is scored by
/// tract.
fn batched_net(f: &mut Forecaster, w: &Windows) -> Option<net::Net> {
    let net = net::Net::from_forecaster(f).ok()?;
    let b = w.len().min(8);
    let x = &w.x[..b * (w.t_in + w.t_out) * 3];
    let tract = f.run_raw(b, x).ok()?;
    let ours = net::Workspace::default().forward(&net, x, b).to_vec();
    let diff = tract
        .iter()
        .zip(&ours)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    (diff <= 1e-4).then_some(net)
}
