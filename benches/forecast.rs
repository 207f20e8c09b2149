//! The controller's forecast task: one observed window + K candidate plans
//! → K forecasts, for K = 1, 8, 32.
//!
//! - `fixture_h16/*`: the PyTorch-exported 1-layer fixture through the public
//!   `Forecaster` (normalisation and reordering included), native engine and
//!   tract's plain windowed computation side by side.
//! - `h64_w100/*`: the native evaluator on a 1-layer hidden-64 network with a
//!   100-step window and a 20-step horizon (the DESIGN's reference size), with
//!   random weights: speed does not depend on the values.
//! - `heads/*`: every PyTorch head fixture the native engine runs, native
//!   and tract, at K = 32.
//! - `dense_last_h48x2_w160/*`: the native evaluator on the issue's
//!   bring-your-own model, 2 layers of hidden 48, `Linear(48, 20)` on the
//!   last state, 160-step window (docs/model-contract.md compares it with
//!   tract, onnxruntime and PyTorch).
//!
//! Inputs are built outside the timed closures.

use criterion::{criterion_group, criterion_main, Criterion};
use neurostimd::forecast::lstm::{
    Activation, Aligned, Dense, Head, HeadInput, LstmLayer, NativeLstm,
};
use neurostimd::forecast::{Engine, Forecaster};
use std::hint::black_box;
use std::path::Path;

fn rnd_vec(n: usize, seed: &mut u64, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}

fn fixture(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch_lstm1_h16.onnx");
    let mut g = c.benchmark_group("fixture_h16");
    for engine in [Engine::Native, Engine::Tract] {
        let mut f = Forecaster::load(&path, 32, engine).unwrap();
        let (t_in, t_out) = (f.card().t_in, f.card().t_out);
        let mut seed = 1;
        let v: Vec<f32> = rnd_vec(t_in, &mut seed, 10.0)
            .iter()
            .map(|x| x - 65.0)
            .collect();
        let i = rnd_vec(t_in, &mut seed, 1.0);
        for k in [1usize, 8, 32] {
            let plans = rnd_vec(k * t_out, &mut seed, 2.0);
            let mut out = vec![0.0; k * t_out];
            g.bench_function(format!("{engine:?}/K{k}"), |b| {
                b.iter(|| {
                    f.forecast(&v, &i, &plans, k, &mut out).unwrap();
                    black_box(out[0])
                })
            });
        }
    }
    g.finish();
}

fn h64(c: &mut Criterion) {
    let (hidden, t_in, t_out) = (64, 100, 20);
    let mut seed = 3;
    let w = rnd_vec(4 * hidden * 3, &mut seed, 0.3);
    let r = rnd_vec(4 * hidden * hidden, &mut seed, 0.15);
    let bias = rnd_vec(8 * hidden, &mut seed, 0.1);
    let layer = LstmLayer::from_onnx(&w, &r, Some(&bias), 3, hidden);
    let head = rnd_vec(hidden, &mut seed, 0.3);
    let mut lstm = NativeLstm::new(vec![layer], head, 0.0, t_in, t_out, 32);
    let observed = rnd_vec(2 * t_in, &mut seed, 1.5);
    native_group(c, "h64_w100", &mut lstm, &observed, t_out, &mut seed);
}

/// The native engine on `observed` with K = 1, 8 and 32 random plans.
fn native_group(
    c: &mut Criterion,
    name: &str,
    lstm: &mut NativeLstm,
    observed: &[f32],
    t_out: usize,
    seed: &mut u64,
) {
    let mut g = c.benchmark_group(name);
    for k in [1usize, 8, 32] {
        let plans = rnd_vec(k * t_out, seed, 1.5);
        let mut out = vec![0.0; k * t_out];
        g.bench_function(format!("native/K{k}"), |b| {
            b.iter(|| {
                lstm.forecast(observed, &plans, k, &mut out);
                black_box(out[0])
            })
        });
    }
    g.finish();
}

fn heads(c: &mut Criterion) {
    let mut g = c.benchmark_group("heads");
    for name in [
        "pytorch_mlp_lstm1_h16",
        "pytorch_mlp_lstm2_h8",
        "pytorch_last_lstm1_h16",
        "pytorch_last_lstm2_h8",
        "pytorch_lastmlp_lstm2_h12",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(format!("{name}.onnx"));
        for engine in [Engine::Native, Engine::Tract] {
            let mut f = Forecaster::load(&path, 32, engine).unwrap();
            let (t_in, t_out) = (f.card().t_in, f.card().t_out);
            let mut seed = 5;
            let v: Vec<f32> = rnd_vec(t_in, &mut seed, 10.0)
                .iter()
                .map(|x| x - 65.0)
                .collect();
            let i = rnd_vec(t_in, &mut seed, 1.0);
            let plans = rnd_vec(32 * t_out, &mut seed, 2.0);
            let mut out = vec![0.0; 32 * t_out];
            g.bench_function(format!("{name}/{engine:?}/K32"), |b| {
                b.iter(|| {
                    f.forecast(&v, &i, &plans, 32, &mut out).unwrap();
                    black_box(out[0])
                })
            });
        }
    }
    g.finish();
}

fn dense_last(c: &mut Criterion) {
    let (hidden, t_in, t_out) = (48, 160, 20);
    let mut seed = 11;
    let layers = (0..2)
        .map(|l| {
            let input = if l == 0 { 3 } else { hidden };
            let w = rnd_vec(4 * hidden * input, &mut seed, 0.14);
            let r = rnd_vec(4 * hidden * hidden, &mut seed, 0.14);
            let b = rnd_vec(8 * hidden, &mut seed, 0.14);
            LstmLayer::from_onnx(&w, &r, Some(&b), input, hidden)
        })
        .collect();
    let head = Head {
        input: HeadInput::LastStep,
        layers: vec![Dense {
            input: hidden,
            output: t_out,
            wt: Aligned::from_slice(&rnd_vec(hidden * t_out, &mut seed, 0.14)),
            bias: rnd_vec(t_out, &mut seed, 0.14),
            act: Activation::Identity,
        }],
        residual: false,
        skip: None,
        gain: None,
    };
    let mut lstm = NativeLstm::with_head(layers, head, t_in, t_out, 32);
    let observed = rnd_vec(2 * t_in, &mut seed, 1.5);
    native_group(
        c,
        "dense_last_h48x2_w160",
        &mut lstm,
        &observed,
        t_out,
        &mut seed,
    );
}

criterion_group!(benches, fixture, h64, heads, dense_last);
criterion_main!(benches);
