//! `neurostimd model info|run|bench`: inspecting, running and timing a
//! forecaster model from the command line.

use crate::config::Config;
use crate::control::Percentiles;
use crate::forecast::{Engine, ForecastError, Forecaster, WindowRing};
use crate::npy::{NpyError, NpyF32};
use crate::plant::{Plant, SimPlant};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ModelToolError {
    #[error(transparent)]
    Forecast(#[from] ForecastError),
    #[error(transparent)]
    Npy(#[from] NpyError),
    #[error("{path}: {message}")]
    BadInput { path: String, message: String },
}

/// What `model info` reports.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    pub path: String,
    /// Compiled into the binary, or the file's absolute path.
    pub origin: String,
    pub card: crate::forecast::ModelCard,
    pub input_shape: String,
    pub output_shape: String,
    pub parameters: usize,
    /// FLOPs (2 per multiply–accumulate) of one forecast for K = 1 and 32:
    /// the engine's and the plain windowed computation's.
    pub flops_native_k1: Option<usize>,
    pub flops_native_k32: Option<usize>,
    pub flops_plain_k1: Option<usize>,
    pub flops_plain_k32: Option<usize>,
    pub engine: Engine,
    pub native_unavailable: Option<String>,
    /// |native − tract| on the load probe (normalised units).
    pub probe_difference: Option<f32>,
}

pub fn info(source: &crate::forecast::ModelSource) -> Result<ModelInfo, ModelToolError> {
    let f = Forecaster::load_source(source, 32, Engine::Native)?;
    let c = f.card().clone();
    let n = f.native();
    Ok(ModelInfo {
        path: source.name(),
        origin: source.origin(),
        input_shape: format!(
            "[batch, {}, 3] float32 `{}`",
            c.t_in + c.t_out,
            c.input.name
        ),
        output_shape: format!("[batch, {}] float32 `{}`", c.t_out, c.output.name),
        parameters: f.parameters(),
        flops_native_k1: n.map(|n| 2 * n.macs(1)),
        flops_native_k32: n.map(|n| 2 * n.macs(32)),
        flops_plain_k1: n.map(|n| 2 * n.plain_macs(1)),
        flops_plain_k32: n.map(|n| 2 * n.plain_macs(32)),
        engine: f.engine(),
        native_unavailable: f.native_unavailable().map(str::to_string),
        probe_difference: f.probe_difference(),
        card: c,
    })
}

impl std::fmt::Display for ModelInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.card;
        let a = &c.architecture;
        writeln!(f, "model        {} ({})", c.name, self.path)?;
        writeln!(f, "origin       {}", self.origin)?;
        writeln!(
            f,
            "architecture {} x {} hidden {}, head {}, output order {:?}",
            a.layers, a.cell, a.hidden, a.head, c.output.order
        )?;
        writeln!(
            f,
            "time         dt {} ms, window t_in {} ({} ms), horizon t_out {} ({} ms)",
            c.dt_ms,
            c.t_in,
            c.t_in as f64 * c.dt_ms,
            c.t_out,
            c.t_out as f64 * c.dt_ms
        )?;
        writeln!(f, "input        {}", self.input_shape)?;
        writeln!(f, "output       {}", self.output_shape)?;
        let n = &c.normalization;
        writeln!(
            f,
            "normalise    V: mean {} std {} mV; I: mean {} std {} uA/cm2",
            n.v_mean, n.v_std, n.i_mean, n.i_std
        )?;
        writeln!(f, "parameters   {}", self.parameters)?;
        let mf = |x: Option<usize>| {
            x.map(|x| format!("{:.3} MFLOP", x as f64 / 1e6))
                .unwrap_or("n/a".into())
        };
        writeln!(
            f,
            "forecast     K=1: {} (plain windowed {}); K=32: {} (plain {})",
            mf(self.flops_native_k1),
            mf(self.flops_plain_k1),
            mf(self.flops_native_k32),
            mf(self.flops_plain_k32)
        )?;
        match (&self.native_unavailable, self.probe_difference) {
            (None, Some(d)) => writeln!(f, "engine       native (encode once, roll out K); equals tract within {d:.1e} on the load probe")?,
            (Some(why), _) => writeln!(f, "engine       tract (native unavailable: {why})")?,
            (None, None) => writeln!(f, "engine       {:?}", self.engine)?,
        }
        writeln!(f, "sha256       {}", c.onnx_sha256)?;
        writeln!(f, "parent       {}", c.parent.as_deref().unwrap_or("none"))?;
        writeln!(f, "provenance   {}", c.provenance)?;
        write!(
            f,
            "validation   {}",
            c.validation
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or("none".into())
        )
    }
}

/// `model run`: raw contract tensors in, raw outputs out (tract, any batch).
pub fn run(model: &Path, input: &Path, output: &Path) -> Result<Vec<usize>, ModelToolError> {
    let mut f = Forecaster::load(model, 1, Engine::Tract)?;
    let x = NpyF32::read(input)?;
    let steps = f.card().t_in + f.card().t_out;
    if x.shape.len() != 3 || x.shape[1] != steps || x.shape[2] != 3 || x.shape[0] == 0 {
        return Err(ModelToolError::BadInput {
            path: input.display().to_string(),
            message: format!(
                "shape {:?} is not [batch, {steps}, 3] (the model's contract)",
                x.shape
            ),
        });
    }
    let y = f.run_raw(x.shape[0], &x.data)?;
    let shape = vec![x.shape[0], f.card().t_out];
    NpyF32::new(shape.clone(), y).write(output)?;
    Ok(shape)
}

/// What `model bench` reports.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub engine: Engine,
    pub batch: usize,
    pub runs: u64,
    #[serde(flatten)]
    pub latency: Percentiles,
    pub mean_us: f64,
}

/// `model bench`: time one forecast of one window + `batch` plans, `runs`
/// times after `warmup` untimed runs. The window comes from the simulator
/// (regular preset) so the model sees realistic input.
pub fn bench(
    model: &Path,
    batch: usize,
    runs: u64,
    warmup: u64,
    engine: Engine,
) -> Result<BenchReport, ModelToolError> {
    let mut f = Forecaster::load(model, batch, engine)?;
    let (t_in, t_out, dt) = (f.card().t_in, f.card().t_out, f.card().dt_ms);
    let sim = Config::defaults().sim;
    let decimation = WindowRing::decimation_for(dt, sim.sample_period_ms).unwrap_or(1);
    let mut plant = SimPlant::new(&sim);
    let mut ring = WindowRing::new(t_in, decimation);
    while !ring.is_full() {
        let s = plant
            .read()
            .map_err(|e| ForecastError::Input(e.to_string()))?;
        ring.push(s.v_mv, s.i_applied);
    }
    let (mut v, mut i) = (vec![0.0; t_in], vec![0.0; t_in]);
    ring.snapshot(&mut v, &mut i);
    let plans: Vec<f32> = (0..batch * t_out)
        .map(|n| ((n * 7919 % 41) as f32 / 20.0) - 1.0)
        .collect();
    let mut out = vec![0.0; batch * t_out];
    for _ in 0..warmup {
        f.forecast(&v, &i, &plans, batch, &mut out)?;
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
    let mut total = 0u128;
    for _ in 0..runs {
        let t0 = Instant::now();
        f.forecast(&v, &i, &plans, batch, &mut out)?;
        let ns = t0.elapsed().as_nanos();
        total += ns;
        h.saturating_record(ns.max(1) as u64);
    }
    Ok(BenchReport {
        model: model.display().to_string(),
        engine: f.engine(),
        batch,
        runs,
        latency: Percentiles::from_ns(&h),
        mean_us: total as f64 / runs.max(1) as f64 / 1000.0,
    })
}
