//! What `neurostimd train` builds and from which data (validated
//! `[train]`; the configuration builds it, the trainer reads it).

use crate::plant::sim::SimConfig;

/// One stretch of training data: a label and the simulator that makes it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TrainSource {
    pub label: String,
    pub sim: SimConfig,
}

/// What `neurostimd train` builds and how (validated `[train]`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TrainConfig {
    pub layers: usize,
    pub hidden: usize,
    pub t_in: usize,
    pub t_out: usize,
    pub dt_ms: f64,
    /// Samples per model step.
    pub decimation: usize,
    pub order: crate::forecast::OutputOrder,
    /// Output head: one linear unit (default, the paper's) or a 2-layer MLP.
    pub head: crate::train::net::Head,
    pub schedule: crate::train::trainer::Schedule,
    pub sources: Vec<TrainSource>,
    /// Recorded or simulated traces (CSV, as `simulate --trace-out` writes)
    /// used as further sources.
    pub traces: Vec<std::path::PathBuf>,
    pub duration_ms: f64,
    pub stride: usize,
    pub max_amplitude: f64,
    pub train_fraction: f64,
    pub val_fraction: f64,
    /// The spike-aware loss (`train.spike_weight`); `None`: plain squared
    /// error.
    pub spike_weight: Option<crate::train::dataset::SpikeWeight>,
    /// The residual output (`train.residual`, card version 2): the network
    /// predicts the change from the last observed V.
    pub residual: bool,
    /// Measurement-noise augmentation (`train.input_noise_mv`): the sd, mV,
    /// of Gaussian noise added to the observed V of training windows.
    pub input_noise_mv: f64,
    /// `train.ar_skip`: calibration's scratch start carries the AR
    /// baseline's least-squares fit on its training windows as a fixed
    /// linear skip (`net::Skip`), so it starts at AR and the LSTM learns
    /// what AR misses.
    pub ar_skip: bool,
    /// `train.ar_blend`: after training, calibration replaces each start's
    /// forecast by `AR_j + g_j·(model_j − AR_j)` per horizon step j, with
    /// `g_j` in [0, 1] fitted by least squares on the validation windows
    /// (never the held-out ones), so a step where the network does not help
    /// falls back towards the AR baseline (`net::Skip::gain`).
    pub ar_blend: bool,
    /// `train.init`: a warm start. Training begins from this model's
    /// weights and keeps its normalisation (the weights were learnt in its
    /// units), so a base model can be specialised rather than relearnt.
    /// Its architecture must match the configuration's (checked by
    /// [`crate::train::warm_start_for`]).
    pub init: Option<crate::forecast::ModelSource>,
    /// `train.ar_skip_warm`: calibration's warm start carries the same AR
    /// skip as `ar_skip` gives the scratch one: the base model's LSTM is
    /// kept, its head starts at zero, so the warm start too starts at AR
    /// (a warm start without it cannot beat AR one step ahead on a real
    /// cell: docs/calibration.md, "Step 1, reliably").
    pub ar_skip_warm: bool,
    /// `train.ar_blend_shrink`, in (0, 1]: the AR blend's gains are the
    /// validation least-squares gains times this. On the real cell the
    /// gains that are best on the stronger held-out sweeps were about half
    /// of the validation ones in every training seed, and an inner split of
    /// the calibration sweeps alone shows the same (docs/calibration.md,
    /// "Step 1, reliably"); 1 (the default) keeps the gains as fitted.
    pub ar_blend_shrink: f64,
    /// `train.auto_ar_skip_warm` (default on): calibration's `--start auto`
    /// tries three starts, the plain warm one, the warm one with the AR
    /// skip (as `ar_skip_warm` gives it) blended with AR (as `ar_blend`
    /// does), and scratch, and chooses the one that beats persistence and
    /// AR at every step *on the validation windows* (the gate's own
    /// criterion, never the held-out ones), with the widest margin (the
    /// worst step's RMSE over the better baseline's) among those, or among
    /// all when none does. Off: the two starts by
    /// validation RMSE alone, as before. On the real-cell fixture the warm
    /// AR-skip start is the only one that wins step 1; on simulated cells
    /// the plain warm one is better (docs/calibration.md, "Step 1 with the
    /// defaults").
    pub auto_ar_skip_warm: bool,
}
