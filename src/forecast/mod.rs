//! The forecaster: an ONNX LSTM that predicts the membrane potential over a
//! horizon for a batch of candidate stimulation plans.
//!
//! Contract (DESIGN §3, `docs/model-contract.md`): `NAME.onnx` + card
//! `NAME.json`; input float32 `[batch, t_in + t_out, 3]` with features
//! (V, I, is_future), normalised by the card; output float32
//! `[batch, t_out]`, normalised V, in the card's order.
//!
//! Loading checks everything it can before the model is trusted: the card's
//! fields, the ONNX file's sha256 against the card, the graph's input and
//! output names and sizes against the card, and a probe forecast that must be
//! finite. The fast native evaluator ([`lstm`]) is used only if it equals
//! tract's plain windowed computation on the probe within 1e-4; otherwise the
//! forecaster runs tract and says why.
//!
//! Loading allocates and compiles, and must never happen on the real-time
//! thread. `forecast` with the native engine does not allocate.

pub mod card;
pub mod heads;
pub mod lstm;
pub mod onnx;
pub mod source;
pub mod window;

pub use card::{ModelCard, OutputOrder};
pub use source::{ModelSource, EMBEDDED_NAME, FAMILY_NAME};
pub use window::WindowRing;

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tract_onnx::pb;
use tract_onnx::prelude::Framework;

/// Largest |native − tract| accepted on the probe, in normalised units.
pub const EQUALITY_TOLERANCE: f32 = 1e-4;

#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    /// `embedded:NAME` with a NAME this binary does not carry: said as such,
    /// with the names it does carry, rather than as a missing file.
    #[error("{name}: no such model compiled into this binary (it carries {known})")]
    UnknownEmbedded { name: String, known: String },
    #[error("{path}: model card: {message}")]
    Card { path: String, message: String },
    #[error("{path}: sha256 {actual} does not match the card's onnx_sha256 {expected} (wrong or modified file)")]
    Hash {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("{path}: not a loadable ONNX model: {message}")]
    Onnx { path: String, message: String },
    #[error("{path}: does not match its card: {message}")]
    Contract { path: String, message: String },
    #[error("{path}: refused: the model's output is not finite on a probe input")]
    NonFiniteProbe { path: String },
    #[error("forecast is not finite (model output NaN or infinite)")]
    NonFinite,
    #[error("{0}")]
    Input(String),
    #[error("inference failed: {0}")]
    Inference(String),
}

/// Which computation produces forecasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Encode once, roll out K (proved equal to tract at load).
    Native,
    /// tract on the ONNX file, whole window per candidate.
    Tract,
}

/// A model to plan with from the next tick on (retraining or rollback).
pub struct ModelSwap {
    pub forecaster: Forecaster,
    /// Version and name, for the recording and the logs.
    pub label: String,
}

/// A loaded, checked model.
pub struct Forecaster {
    path: PathBuf,
    card: ModelCard,
    proto: pb::ModelProto,
    native: Option<lstm::NativeLstm>,
    native_unavailable: Option<String>,
    plans: HashMap<usize, onnx::Plan>,
    engine: Engine,
    max_batch: usize,
    probe_difference: Option<f32>,
    // Preallocated buffers (max_batch sized).
    observed: Vec<f32>,
    future: Vec<f32>,
    raw: Vec<f32>,
}

impl std::fmt::Debug for Forecaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forecaster")
            .field("path", &self.path)
            .field("engine", &self.engine)
            .finish()
    }
}

/// The card that belongs to `model.onnx`: `model.json` beside it.
pub fn card_path(model: &Path) -> PathBuf {
    model.with_extension("json")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Read and check a model card.
pub fn read_card(path: &Path) -> Result<ModelCard, ForecastError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ForecastError::Io {
        path: name.clone(),
        error: source,
    })?;
    parse_card(&name, &text)
}

/// Parse and check a model card's text (`name` for errors).
pub fn parse_card(name: &str, text: &str) -> Result<ModelCard, ForecastError> {
    let card: ModelCard = serde_json::from_str(text).map_err(|e| ForecastError::Card {
        path: name.to_string(),
        message: e.to_string(),
    })?;
    let problems = card.problems();
    if !problems.is_empty() {
        return Err(ForecastError::Card {
            path: name.to_string(),
            message: problems.join("; "),
        });
    }
    Ok(card)
}

/// Where the graph the native engine recognised disagrees with the card:
/// its LSTM's shape, or the residual output.
fn disagreement(native: &lstm::NativeLstm, card: &ModelCard) -> Option<String> {
    let arch = &card.architecture;
    let hidden = native.layers.last().map(|l| l.hidden).unwrap_or(0);
    if native.layers.len() != arch.layers || hidden != arch.hidden {
        return Some(format!(
            "graph has {} LSTM layers of hidden size {hidden}; card says {} x {}",
            native.layers.len(),
            arch.layers,
            arch.hidden
        ));
    }
    if native.head.residual != card.output.residual {
        return Some(format!(
            "the graph {} the last observed V to its output; the card says output.residual = {}",
            if native.head.residual {
                "adds"
            } else {
                "does not add"
            },
            card.output.residual
        ));
    }
    None
}

/// A deterministic, spike-like probe: normalised V swinging over several
/// units and a varying current, the kind of input a broken model fails on.
fn probe(t_in: usize, t_out: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
    let observed = (0..t_in)
        .flat_map(|t| {
            let x = t as f32 / t_in.max(1) as f32;
            let v = (x * 17.0).sin() * 0.8 + if t % 23 == 7 { 4.0 } else { 0.0 };
            [v, (x * 5.0).cos()]
        })
        .collect();
    let plans = (0..k * t_out)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3)
        .collect();
    (observed, plans)
}

impl Forecaster {
    /// Load `path` (+ its card) for batches up to `max_batch`, preferring
    /// `engine`. Fails with an error naming the file and the mismatch.
    pub fn load(
        path: &Path,
        max_batch: usize,
        engine: Engine,
    ) -> Result<Forecaster, ForecastError> {
        Self::load_source(&ModelSource::File(path.to_path_buf()), max_batch, engine)
    }

    /// [`Forecaster::load`] from a file or the embedded model.
    pub fn load_source(
        source: &ModelSource,
        max_batch: usize,
        engine: Engine,
    ) -> Result<Forecaster, ForecastError> {
        let name = source.name();
        let path = PathBuf::from(&name);
        let max_batch = max_batch.max(1);
        let files = source.read()?;
        let (bytes, card) = (files.onnx, files.card);
        let actual = sha256_hex(&bytes);
        if actual != card.onnx_sha256.to_ascii_lowercase() {
            return Err(ForecastError::Hash {
                path: name,
                expected: card.onnx_sha256.clone(),
                actual,
            });
        }
        let onnx_err = |e: &dyn std::fmt::Display| ForecastError::Onnx {
            path: name.clone(),
            message: format!("{e:#}"),
        };
        let proto = tract_onnx::onnx()
            .proto_model_for_read(&mut &bytes[..])
            .map_err(|e| onnx_err(&e))?;
        check_io(&proto, &card).map_err(|message| ForecastError::Contract {
            path: name.clone(),
            message,
        })?;

        let steps = card.t_in + card.t_out;
        let plan1 = onnx::plain_plan(&proto, 1, steps).map_err(|e| onnx_err(&e))?;
        let mut f = Forecaster {
            path,
            observed: vec![0.0; 2 * card.t_in],
            future: vec![0.0; max_batch * card.t_out],
            raw: vec![0.0; max_batch * card.t_out],
            card,
            proto,
            native: None,
            native_unavailable: None,
            plans: HashMap::from([(1, plan1)]),
            engine: Engine::Tract,
            max_batch,
            probe_difference: None,
        };

        // The probe: tract must give finite output; native must equal it.
        let k = 3.min(max_batch);
        let (t_in, t_out) = (f.card.t_in, f.card.t_out);
        let (observed, plans) = probe(t_in, t_out, k);
        let mut plain = vec![0.0; k * t_out];
        for kk in 0..k {
            let input =
                contract_input(&observed, &plans[kk * t_out..(kk + 1) * t_out], t_in, t_out);
            let y = onnx::run_plan(&f.plans[&1], 1, steps, &input).map_err(|e| onnx_err(&e))?;
            if y.len() != t_out {
                return Err(ForecastError::Contract {
                    path: name,
                    message: format!(
                        "output has {} values per row, card says t_out = {t_out}",
                        y.len()
                    ),
                });
            }
            plain[kk * t_out..(kk + 1) * t_out].copy_from_slice(&y);
        }
        if !plain.iter().all(|x| x.is_finite()) {
            return Err(ForecastError::NonFiniteProbe { path: name });
        }
        match heads::native_engine(&f.proto, &f.card, max_batch) {
            Ok(mut native) => {
                if let Some(message) = disagreement(&native, &f.card) {
                    return Err(ForecastError::Contract {
                        path: name,
                        message,
                    });
                }
                let mut out = vec![0.0; k * t_out];
                native.forecast(&observed, &plans, k, &mut out);
                let diff = out
                    .iter()
                    .zip(&plain)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                f.probe_difference = Some(diff);
                if diff <= EQUALITY_TOLERANCE {
                    f.native = Some(native);
                } else {
                    f.native_unavailable = Some(format!(
                        "native result differs from tract by {diff:e} on the probe (> {EQUALITY_TOLERANCE:e})"
                    ));
                }
            }
            Err(why) => f.native_unavailable = Some(why),
        }
        if engine == Engine::Native {
            match &f.native_unavailable {
                None => f.engine = Engine::Native,
                Some(why) => tracing::info!(
                    target: "neurostimd::forecast",
                    "{name}: native engine unavailable ({why}); forecasting with tract"
                ),
            }
        }
        Ok(f)
    }

    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Why the native engine is not available, if it is not.
    pub fn native_unavailable(&self) -> Option<&str> {
        self.native_unavailable.as_deref()
    }

    /// Largest |native − tract| seen on the load probe (normalised units).
    pub fn probe_difference(&self) -> Option<f32> {
        self.probe_difference
    }

    /// The native evaluator, if the model has one (layer sizes, MACs).
    pub fn native(&self) -> Option<&lstm::NativeLstm> {
        self.native.as_ref()
    }

    pub fn onnx_proto(&self) -> &pb::ModelProto {
        &self.proto
    }

    /// Forecast V (mV) over the horizon for `k` candidate plans.
    ///
    /// `window_v`, `window_i`: the last `t_in` model steps of V (mV) and
    /// applied current (µA/cm²), oldest first. `plans`: `k × t_out`
    /// currents (µA/cm²), row per candidate, horizon step 1 first. `out`:
    /// `k × t_out` forecasts, horizon step 1 first. With the native engine
    /// this does not allocate.
    pub fn forecast(
        &mut self,
        window_v: &[f32],
        window_i: &[f32],
        plans: &[f32],
        k: usize,
        out: &mut [f32],
    ) -> Result<(), ForecastError> {
        let (t_in, t_out) = (self.card.t_in, self.card.t_out);
        if k == 0 || k > self.max_batch {
            return Err(ForecastError::Input(format!(
                "batch {k} is outside 1..={}",
                self.max_batch
            )));
        }
        if window_v.len() != t_in
            || window_i.len() != t_in
            || plans.len() != k * t_out
            || out.len() != k * t_out
        {
            return Err(ForecastError::Input(format!(
                "expected window of {t_in} V and I values and {k} x {t_out} plans and outputs, got {} V, {} I, {} plan and {} output values",
                window_v.len(),
                window_i.len(),
                plans.len(),
                out.len()
            )));
        }
        let n = self.card.normalization;
        let (vm, vs, im, is) = (
            n.v_mean as f32,
            n.v_std as f32,
            n.i_mean as f32,
            n.i_std as f32,
        );
        for t in 0..t_in {
            self.observed[2 * t] = (window_v[t] - vm) / vs;
            self.observed[2 * t + 1] = (window_i[t] - im) / is;
        }
        for (dst, &p) in self.future.iter_mut().zip(plans) {
            *dst = (p - im) / is;
        }
        let raw = &mut self.raw[..k * t_out];
        match (&mut self.native, self.engine) {
            (Some(native), Engine::Native) => {
                native.forecast(&self.observed, &self.future[..k * t_out], k, raw);
            }
            _ => {
                let steps = t_in + t_out;
                let mut input = Vec::with_capacity(k * steps * 3);
                for kk in 0..k {
                    input.extend(contract_input(
                        &self.observed,
                        &self.future[kk * t_out..(kk + 1) * t_out],
                        t_in,
                        t_out,
                    ));
                }
                if !self.plans.contains_key(&k) {
                    let plan = onnx::plain_plan(&self.proto, k, steps)
                        .map_err(|e| ForecastError::Inference(format!("{e:#}")))?;
                    self.plans.insert(k, plan);
                }
                let y = onnx::run_plan(&self.plans[&k], k, steps, &input)
                    .map_err(|e| ForecastError::Inference(format!("{e:#}")))?;
                raw.copy_from_slice(&y);
            }
        }
        let reversed = self.card.output.order == OutputOrder::Reversed;
        for kk in 0..k {
            let src = &raw[kk * t_out..(kk + 1) * t_out];
            let dst = &mut out[kk * t_out..(kk + 1) * t_out];
            for j in 0..t_out {
                let y = if reversed { src[t_out - 1 - j] } else { src[j] };
                dst[j] = y * vs + vm;
            }
        }
        if out.iter().all(|x| x.is_finite()) {
            Ok(())
        } else {
            Err(ForecastError::NonFinite)
        }
    }

    /// Run raw contract tensors through tract: `input` is `[batch, t_in +
    /// t_out, 3]` (normalised), the result `[batch, t_out]` in the model's
    /// own order. For `model run` and tests; allocates and may compile.
    pub fn run_raw(&mut self, batch: usize, input: &[f32]) -> Result<Vec<f32>, ForecastError> {
        let steps = self.card.t_in + self.card.t_out;
        if batch == 0 || input.len() != batch * steps * 3 {
            return Err(ForecastError::Input(format!(
                "input must be [batch, {steps}, 3] float32; got {} values for batch {batch}",
                input.len()
            )));
        }
        if !self.plans.contains_key(&batch) {
            let plan = onnx::plain_plan(&self.proto, batch, steps)
                .map_err(|e| ForecastError::Inference(format!("{e:#}")))?;
            self.plans.insert(batch, plan);
        }
        onnx::run_plan(&self.plans[&batch], batch, steps, input)
            .map_err(|e| ForecastError::Inference(format!("{e:#}")))
    }

    /// Parameters of the network (from the native evaluator, else counted
    /// from the graph's float initializers).
    pub fn parameters(&self) -> usize {
        match &self.native {
            Some(n) => n.parameters(),
            None => self
                .proto
                .graph
                .as_ref()
                .map(|g| {
                    g.initializer
                        .iter()
                        .filter(|t| t.data_type == 1)
                        .map(|t| t.dims.iter().product::<i64>() as usize)
                        .sum()
                })
                .unwrap_or(0),
        }
    }
}

/// One contract row `[t_in + t_out][3]` from a normalised window and plan.
fn contract_input(observed: &[f32], plan: &[f32], t_in: usize, t_out: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity((t_in + t_out) * 3);
    for t in 0..t_in {
        x.extend_from_slice(&[observed[2 * t], observed[2 * t + 1], 0.0]);
    }
    for &p in plan.iter().take(t_out) {
        x.extend_from_slice(&[0.0, p, 1.0]);
    }
    x
}

/// The graph's single input and output must carry the card's names and
/// sizes (`[batch, t_in + t_out, 3]` → `[batch, t_out]`).
fn check_io(proto: &pb::ModelProto, card: &ModelCard) -> Result<(), String> {
    let g = proto.graph.as_ref().ok_or("the file has no graph")?;
    let inits: std::collections::HashSet<&str> =
        g.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> = g
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .collect();
    if inputs.len() != 1 {
        return Err(format!(
            "graph has {} inputs, the contract has one",
            inputs.len()
        ));
    }
    if inputs[0].name != card.input.name {
        return Err(format!(
            "input is named `{}`, card says `{}`",
            inputs[0].name, card.input.name
        ));
    }
    if g.output.len() != 1 {
        return Err(format!(
            "graph has {} outputs, the contract has one",
            g.output.len()
        ));
    }
    if g.output[0].name != card.output.name {
        return Err(format!(
            "output is named `{}`, card says `{}`",
            g.output[0].name, card.output.name
        ));
    }
    let steps = (card.t_in + card.t_out) as i64;
    let check = |what: &str, v: &pb::ValueInfoProto, want: &[Option<i64>]| -> Result<(), String> {
        let Some(dims) = onnx::declared_dims(v) else {
            return Ok(()); // undeclared: the probe run checks it
        };
        if dims.len() != want.len() {
            return Err(format!(
                "{what} `{}` has rank {}, the contract says {}",
                v.name,
                dims.len(),
                want.len()
            ));
        }
        for (i, (d, w)) in dims.iter().zip(want).enumerate() {
            if let (Some(d), Some(w)) = (d, w) {
                if d != w {
                    return Err(format!(
                        "{what} `{}` dimension {i} is {d}, the card implies {w}",
                        v.name
                    ));
                }
            }
        }
        Ok(())
    };
    check("input", inputs[0], &[None, Some(steps), Some(3)])?;
    check("output", &g.output[0], &[None, Some(card.t_out as i64)])
}
