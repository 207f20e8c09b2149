//! The forecaster against PyTorch's own numbers, the native engine against
//! tract's plain windowed computation for every head it runs, the graphs it
//! declines, and the refusals a bad model earns.

use neurostimd::forecast::{card_path, sha256_hex, Engine, ForecastError, Forecaster, OutputOrder};
use neurostimd::npy::NpyF32;
use prost::Message;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

/// PyTorch exports the native engine runs: the contract's linear head,
/// per-step MLPs (ReLU, Tanh) and dense heads over the last state
/// (`out[:, -1, :]` with Linear or Linear-Sigmoid-Linear, `h_n[-1]` with
/// Linear), for 1 and 2 layers (tests/fixtures/README.md).
const FIXTURES: [&str; 7] = [
    "pytorch_lstm1_h16",
    "pytorch_lstm2_h8",
    "pytorch_mlp_lstm1_h16",
    "pytorch_mlp_lstm2_h8",
    "pytorch_last_lstm1_h16",
    "pytorch_last_lstm2_h8",
    "pytorch_lastmlp_lstm2_h12",
];

/// Counts this thread's allocations, so the native engine's forecast can
/// be shown not to allocate for every head (the planner calls it the same
/// way, through `Forecaster::forecast`).
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.onnx"))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Our output equals PyTorch's (exported with torch.onnx, legacy exporter)
/// within 1e-4 on the bundled input, for a 1- and a 2-layer model.
#[test]
fn pytorch_bundles_reproduce_within_1e4() {
    for name in FIXTURES {
        let path = fixture(name);
        let x = NpyF32::read(&path.with_extension("input.npy")).unwrap();
        let want = NpyF32::read(&path.with_extension("expected.npy")).unwrap();
        let mut f = Forecaster::load(&path, 32, Engine::Native).unwrap();
        assert_eq!(
            f.engine(),
            Engine::Native,
            "{name}: {:?}",
            f.native_unavailable()
        );
        let got = f.run_raw(x.shape[0], &x.data).unwrap();
        let d = max_diff(&got, &want.data);
        assert!(d < 1e-4, "{name}: tract vs PyTorch max |diff| {d}");

        // The native engine, one row at a time through the public forecast
        // API (de-normalised, forward order), must give the same numbers.
        let c = f.card().clone();
        let (t_in, t_out, n) = (c.t_in, c.t_out, c.normalization);
        let steps = t_in + t_out;
        for row in 0..x.shape[0] {
            let r = &x.data[row * steps * 3..(row + 1) * steps * 3];
            let v: Vec<f32> = (0..t_in)
                .map(|t| r[3 * t] * n.v_std as f32 + n.v_mean as f32)
                .collect();
            let i: Vec<f32> = (0..t_in)
                .map(|t| r[3 * t + 1] * n.i_std as f32 + n.i_mean as f32)
                .collect();
            let plan: Vec<f32> = (t_in..steps)
                .map(|t| r[3 * t + 1] * n.i_std as f32 + n.i_mean as f32)
                .collect();
            let mut out = vec![0.0; t_out];
            f.forecast(&v, &i, &plan, 1, &mut out).unwrap();
            let expected_row = &want.data[row * t_out..(row + 1) * t_out];
            for (j, got_mv) in out.iter().enumerate() {
                let model_col = match c.output.order {
                    OutputOrder::Forward => j,
                    OutputOrder::Reversed => t_out - 1 - j,
                };
                let want_mv = expected_row[model_col] * n.v_std as f32 + n.v_mean as f32;
                // 1e-4 in normalised units, expressed in mV.
                assert!(
                    (got_mv - want_mv).abs() < 1e-4 * n.v_std as f32,
                    "{name} row {row} step {j}: {got_mv} vs {want_mv}"
                );
            }
        }
    }
}

/// Encode-once + roll-out equals tract's whole-window computation for
/// K = 1, 8, 32 on windows and plans it has never seen.
#[test]
fn native_engine_equals_plain_windowed_tract() {
    let mut seed = 7u64;
    let mut rnd = move |scale: f32| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0 * scale
    };
    for name in FIXTURES {
        let path = fixture(name);
        let mut native = Forecaster::load(&path, 32, Engine::Native).unwrap();
        let mut plain = Forecaster::load(&path, 32, Engine::Tract).unwrap();
        assert_eq!(
            (native.engine(), plain.engine()),
            (Engine::Native, Engine::Tract)
        );
        let (t_in, t_out) = (native.card().t_in, native.card().t_out);
        for k in [1usize, 8, 32] {
            let v: Vec<f32> = (0..t_in).map(|_| -65.0 + rnd(15.0)).collect();
            let i: Vec<f32> = (0..t_in).map(|_| rnd(2.0)).collect();
            let plans: Vec<f32> = (0..k * t_out).map(|_| rnd(3.0)).collect();
            let (mut a, mut b) = (vec![0.0; k * t_out], vec![0.0; k * t_out]);
            native.forecast(&v, &i, &plans, k, &mut a).unwrap();
            plain.forecast(&v, &i, &plans, k, &mut b).unwrap();
            let v_std = native.card().normalization.v_std as f32;
            let d = max_diff(&a, &b) / v_std;
            assert!(
                d < 1e-4,
                "{name} K={k}: max |native - tract| = {d} (normalised)"
            );
            // The plans matter: different candidates, different forecasts.
            if k > 1 {
                assert!(max_diff(&a[..t_out], &a[t_out..2 * t_out]) > 0.0);
            }
        }
    }
}

/// Copy a fixture into a temp dir, let `edit` change the ONNX bytes and the
/// card, and return the new model path.
fn doctored(
    name: &str,
    edit: impl FnOnce(&mut Vec<u8>, &mut serde_json::Value),
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture(name);
    let mut bytes = std::fs::read(&src).unwrap();
    let mut card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(card_path(&src)).unwrap()).unwrap();
    edit(&mut bytes, &mut card);
    let dst = dir.path().join(format!("{name}.onnx"));
    std::fs::write(&dst, &bytes).unwrap();
    std::fs::write(
        card_path(&dst),
        serde_json::to_string_pretty(&card).unwrap(),
    )
    .unwrap();
    (dir, dst)
}

fn load_err(path: &Path) -> ForecastError {
    Forecaster::load(path, 8, Engine::Native).unwrap_err()
}

#[test]
fn a_modified_file_is_refused_by_its_hash() {
    let (_d, p) = doctored(FIXTURES[0], |bytes, _| {
        let n = bytes.len();
        bytes[n - 10] ^= 0x55;
    });
    let e = load_err(&p);
    assert!(matches!(e, ForecastError::Hash { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("pytorch_lstm1_h16.onnx") && msg.contains("does not match the card"),
        "{msg}"
    );
}

#[test]
fn shape_and_name_mismatches_with_the_card_are_refused() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: [(&str, Edit, &str); 4] = [
        (
            "t_out",
            Box::new(|c| {
                c["t_in"] = 41.into();
                c["t_out"] = 19.into();
            }),
            "output `y` dimension 1 is 20, the card implies 19",
        ),
        (
            "t_in",
            Box::new(|c| c["t_in"] = 41.into()),
            "input `x` dimension 1 is 60, the card implies 61",
        ),
        (
            "input name",
            Box::new(|c| c["input"]["name"] = "input".into()),
            "input is named `x`, card says `input`",
        ),
        (
            "hidden",
            Box::new(|c| c["architecture"]["hidden"] = 32.into()),
            "card says 1 x 32",
        ),
    ];
    for (what, edit, expected) in cases {
        let (_d, p) = doctored(FIXTURES[0], |_, card| edit(card));
        let e = load_err(&p);
        let msg = e.to_string();
        assert!(matches!(e, ForecastError::Contract { .. }), "{what}: {msg}");
        assert!(
            msg.contains(expected) && msg.contains("pytorch_lstm1_h16.onnx"),
            "{what}: {msg}"
        );
    }
}

#[test]
fn card_problems_name_the_field() {
    let (_d, p) = doctored(FIXTURES[0], |_, card| {
        card["normalization"]["v_std"] = 0.0.into();
        card["output"]["order"] = "sideways".into();
    });
    let msg = load_err(&p).to_string();
    assert!(
        msg.contains("pytorch_lstm1_h16.json: model card:") && msg.contains("sideways"),
        "{msg}"
    );
    let (_d, p) = doctored(FIXTURES[0], |_, card| {
        card["normalization"]["v_std"] = 0.0.into()
    });
    let msg = load_err(&p).to_string();
    assert!(msg.contains("normalization.v_std 0 must be > 0"), "{msg}");
}

/// A model whose weights hold a NaN produces NaN forecasts: refused at load.
#[test]
fn a_model_with_non_finite_output_is_refused() {
    let (_d, p) = doctored(FIXTURES[1], |bytes, card| {
        let mut m = tract_onnx::pb::ModelProto::decode(&bytes[..]).unwrap();
        let g = m.graph.as_mut().unwrap();
        let bias = g
            .initializer
            .iter_mut()
            .find(|t| t.name == "head.bias")
            .unwrap();
        if bias.raw_data.is_empty() {
            bias.float_data = vec![f32::NAN];
        } else {
            bias.raw_data = f32::NAN.to_le_bytes().to_vec();
        }
        *bytes = m.encode_to_vec();
        card["onnx_sha256"] = sha256_hex(bytes).into();
    });
    let e = load_err(&p);
    assert!(matches!(e, ForecastError::NonFiniteProbe { .. }), "{e}");
    assert!(e.to_string().contains("not finite on a probe input"), "{e}");
}

#[test]
fn garbage_instead_of_onnx_is_a_clear_error() {
    let (_d, p) = doctored(FIXTURES[0], |bytes, card| {
        *bytes = b"definitely not a protobuf model".to_vec();
        card["onnx_sha256"] = sha256_hex(bytes).into();
    });
    let e = load_err(&p);
    assert!(matches!(e, ForecastError::Onnx { .. }), "{e}");
}

#[test]
fn forecast_rejects_wrong_sizes_without_panicking() {
    let mut f = Forecaster::load(&fixture(FIXTURES[0]), 4, Engine::Native).unwrap();
    let (t_in, t_out) = (f.card().t_in, f.card().t_out);
    let mut out = vec![0.0; 5 * t_out];
    let e = f.forecast(
        &vec![0.0; t_in],
        &vec![0.0; t_in],
        &vec![0.0; 5 * t_out],
        5,
        &mut out,
    );
    assert!(matches!(e, Err(ForecastError::Input(_))));
    let e = f.forecast(
        &vec![0.0; t_in - 1],
        &vec![0.0; t_in],
        &vec![0.0; t_out],
        1,
        &mut out[..t_out],
    );
    assert!(matches!(e, Err(ForecastError::Input(_))));
}

/// The shipped default model loads with both engines, reproduces its bundle,
/// and its card describes a controller-ready forecaster (horizon ≥ 10 ms).
#[test]
fn the_shipped_model_loads_and_reproduces_its_bundle() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ca1_lstm.onnx");
    let mut f = Forecaster::load(&path, 32, Engine::Native).unwrap();
    assert_eq!(f.engine(), Engine::Native, "{:?}", f.native_unavailable());
    let c = f.card().clone();
    assert!(
        c.t_out as f64 * c.dt_ms >= 10.0,
        "horizon {} ms",
        c.t_out as f64 * c.dt_ms
    );
    assert!(c.validation.is_some());
    let x = NpyF32::read(&path.with_extension("input.npy")).unwrap();
    let want = NpyF32::read(&path.with_extension("expected.npy")).unwrap();
    let got = f.run_raw(x.shape[0], &x.data).unwrap();
    assert!(max_diff(&got, &want.data) < 1e-4);
}

/// A GELU head (at opset 17 PyTorch writes it as Div, Erf, Add, Mul, Mul)
/// is not one the native engine runs: it says which node stopped it, and
/// tract still reproduces PyTorch.
#[test]
fn an_unrecognised_head_runs_on_tract_and_says_why() {
    let path = fixture("pytorch_gelu_lstm1_h8");
    let mut f = Forecaster::load(&path, 8, Engine::Native).unwrap();
    assert_eq!(f.engine(), Engine::Tract);
    let why = f.native_unavailable().unwrap();
    assert!(
        why.contains("/head/head.1/Div") && why.contains("(Div)"),
        "{why}"
    );
    let x = NpyF32::read(&path.with_extension("input.npy")).unwrap();
    let want = NpyF32::read(&path.with_extension("expected.npy")).unwrap();
    let got = f.run_raw(x.shape[0], &x.data).unwrap();
    assert!(max_diff(&got, &want.data) < 1e-4);
}

/// Change one node of a fixture's graph (and re-sign the card).
fn edited_graph(
    name: &str,
    edit: impl FnOnce(&mut tract_onnx::pb::GraphProto),
) -> (tempfile::TempDir, PathBuf) {
    doctored(name, |bytes, card| {
        let mut m = tract_onnx::pb::ModelProto::decode(&bytes[..]).unwrap();
        edit(m.graph.as_mut().unwrap());
        *bytes = m.encode_to_vec();
        card["onnx_sha256"] = sha256_hex(bytes).into();
    })
}

/// The int64 scalar or one-element constant a node reads as input `i`.
fn constant_input<'a>(
    g: &'a mut tract_onnx::pb::GraphProto,
    op: &str,
    i: usize,
) -> &'a mut tract_onnx::pb::TensorProto {
    let name = g.node.iter().rev().find(|n| n.op_type == op).unwrap().input[i].clone();
    g.node
        .iter_mut()
        .find(|n| n.op_type == "Constant" && n.output[0] == name)
        .and_then(|n| n.attribute[0].t.as_mut())
        .unwrap()
}

fn set_i64(t: &mut tract_onnx::pb::TensorProto, v: i64) {
    if t.raw_data.is_empty() {
        t.int64_data = vec![v];
    } else {
        t.raw_data = v.to_le_bytes().to_vec();
    }
}

/// Near misses of the accepted heads are declined (the model still loads
/// and runs on tract), each with a reason that names what did not match.
#[test]
fn near_misses_of_the_accepted_heads_decline_with_a_reason() {
    type Edit = Box<dyn FnOnce(&mut tract_onnx::pb::GraphProto)>;
    let cases: [(&str, Edit, &str); 5] = [
        (
            // out[:, -2, :]: the step before the last.
            "pytorch_last_lstm1_h16",
            Box::new(|g| set_i64(constant_input(g, "Gather", 1), -2)),
            "keeps step 58 of the sequence, not the last one (59)",
        ),
        (
            // out[:, t_in - 1:-1, :]: t_out steps, one step early.
            "pytorch_mlp_lstm1_h16",
            Box::new(|g| {
                set_i64(constant_input(g, "Slice", 1), 39);
                set_i64(constant_input(g, "Slice", 2), -1);
            }),
            "covers steps 39..59 of the sequence",
        ),
        (
            // An activation the engine does not have.
            "pytorch_mlp_lstm2_h8",
            Box::new(|g| {
                g.node
                    .iter_mut()
                    .find(|n| n.op_type == "Tanh")
                    .unwrap()
                    .op_type = "Softsign".into()
            }),
            "(Softsign) is not an operator the native engine runs",
        ),
        (
            // A scaled Gemm is not a Linear layer.
            "pytorch_last_lstm2_h8",
            Box::new(|g| {
                let gemm = g.node.iter_mut().find(|n| n.op_type == "Gemm").unwrap();
                gemm.attribute
                    .iter_mut()
                    .find(|a| a.name == "alpha")
                    .unwrap()
                    .f = 0.5;
            }),
            "with alpha, beta or transA other than 1, 1, 0",
        ),
        (
            // The head reads the first of two layers.
            "pytorch_last_lstm2_h8",
            Box::new(|g| {
                let concat = g
                    .node
                    .iter_mut()
                    .find(|n| n.op_type == "Concat" && n.input.len() == 2)
                    .unwrap();
                concat.input[1] = concat.input[0].clone();
            }),
            "reads LSTM layer 1 of 2, not the top one",
        ),
    ];
    for (name, edit, expected) in cases {
        let (_d, p) = edited_graph(name, edit);
        let f = Forecaster::load(&p, 4, Engine::Native).unwrap();
        assert_eq!(f.engine(), Engine::Tract, "{name}: {expected}");
        let why = f.native_unavailable().unwrap();
        assert!(why.contains(expected), "{name}: {why}");
    }
}

/// The native engine's forecast allocates nothing for any head it runs,
/// whatever the batch (the planner's hot path; tests/no_alloc.rs covers
/// the planner with the shipped model).
#[test]
fn the_native_forecast_does_not_allocate_for_any_head() {
    // The counter sees allocations (so the zeros below mean something).
    let before = ALLOCATIONS.with(Cell::get);
    drop(std::hint::black_box(vec![1u8; 64]));
    assert!(ALLOCATIONS.with(Cell::get) > before);
    for name in FIXTURES {
        let mut f = Forecaster::load(&fixture(name), 32, Engine::Native).unwrap();
        assert_eq!(f.engine(), Engine::Native, "{name}");
        let (t_in, t_out) = (f.card().t_in, f.card().t_out);
        let v: Vec<f32> = (0..t_in).map(|t| -65.0 + (t % 7) as f32).collect();
        let i: Vec<f32> = (0..t_in).map(|t| (t % 3) as f32 * 0.5).collect();
        let plans: Vec<f32> = (0..32 * t_out)
            .map(|n| (n % 11) as f32 * 0.3 - 1.0)
            .collect();
        let mut out = vec![0.0; 32 * t_out];
        let before = ALLOCATIONS.with(Cell::get);
        for k in [1usize, 7, 32].into_iter().cycle().take(60) {
            f.forecast(&v, &i, &plans[..k * t_out], k, &mut out[..k * t_out])
                .unwrap();
        }
        let n = ALLOCATIONS.with(Cell::get) - before;
        assert_eq!(n, 0, "{name}: 60 native forecasts allocated {n} times");
        assert!(out.iter().all(|x| x.is_finite()));
    }
}

/// `out[:, -1:, :].squeeze(1)` instead of `out[:, -1, :]`: `Slice` +
/// `Squeeze` where PyTorch wrote `Gather`. The same head, so the native
/// engine runs it, equal to tract on random windows.
#[test]
fn the_last_step_as_slice_and_squeeze_is_recognised() {
    use tract_onnx::pb::{AttributeProto, NodeProto, TensorProto};
    let ints = |name: &str, v: i64| NodeProto {
        op_type: "Constant".into(),
        output: vec![name.into()],
        attribute: vec![AttributeProto {
            name: "value".into(),
            r#type: 4, // TENSOR
            t: Some(TensorProto {
                dims: vec![1],
                data_type: 7, // INT64
                int64_data: vec![v],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let (_d, p) = edited_graph("pytorch_last_lstm1_h16", |g| {
        let at = g.node.iter().rposition(|n| n.op_type == "Gather").unwrap();
        let gather = g.node.remove(at);
        let (seq, picked) = (gather.input[0].clone(), gather.output[0].clone());
        let slice = NodeProto {
            op_type: "Slice".into(),
            name: "/SliceLast".into(),
            input: vec![seq, "s0".into(), "s1".into(), "s2".into()],
            output: vec!["last1".into()],
            ..Default::default()
        };
        let squeeze = NodeProto {
            op_type: "Squeeze".into(),
            name: "/SqueezeLast".into(),
            input: vec!["last1".into(), "s2".into()],
            output: vec![picked],
            ..Default::default()
        };
        let new = [
            ints("s0", -1),
            ints("s1", i64::MAX),
            ints("s2", 1),
            slice,
            squeeze,
        ];
        for (k, n) in new.into_iter().enumerate() {
            g.node.insert(at + k, n);
        }
    });
    let mut native = Forecaster::load(&p, 8, Engine::Native).unwrap();
    assert_eq!(
        native.engine(),
        Engine::Native,
        "{:?}",
        native.native_unavailable()
    );
    let mut plain = Forecaster::load(&p, 8, Engine::Tract).unwrap();
    let (t_in, t_out) = (native.card().t_in, native.card().t_out);
    let v: Vec<f32> = (0..t_in).map(|t| -70.0 + (t * 13 % 17) as f32).collect();
    let i: Vec<f32> = (0..t_in).map(|t| (t % 5) as f32 * 0.4 - 0.6).collect();
    let plans: Vec<f32> = (0..8 * t_out)
        .map(|n| (n * 7 % 9) as f32 * 0.5 - 2.0)
        .collect();
    let (mut a, mut b) = (vec![0.0; 8 * t_out], vec![0.0; 8 * t_out]);
    native.forecast(&v, &i, &plans, 8, &mut a).unwrap();
    plain.forecast(&v, &i, &plans, 8, &mut b).unwrap();
    let v_std = native.card().normalization.v_std as f32;
    assert!(max_diff(&a, &b) / v_std < 1e-4);
}

/// Export our trained-network type `net` to `path` with `card` (its sizes
/// and hash filled in) and load it on both engines: the native engine must
/// take it, its head naming `feature`. (native, tract).
fn on_both_engines(
    net: &neurostimd::train::net::Net,
    path: &Path,
    mut card: serde_json::Value,
    feature: &str,
) -> (Forecaster, Forecaster) {
    let bytes = neurostimd::train::export::to_onnx(net, "test");
    std::fs::write(path, &bytes).unwrap();
    card["t_in"] = net.t_in.into();
    card["t_out"] = net.t_out.into();
    card["architecture"]["hidden"] = net.hidden().into();
    card["onnx_sha256"] = sha256_hex(&bytes).into();
    std::fs::write(card_path(path), card.to_string()).unwrap();
    let native = Forecaster::load(path, 8, Engine::Native).unwrap();
    let plain = Forecaster::load(path, 8, Engine::Tract).unwrap();
    assert_eq!(
        native.engine(),
        Engine::Native,
        "{:?}",
        native.native_unavailable()
    );
    let describe = native.native().unwrap().head.describe();
    assert!(describe.contains(feature), "{describe}");
    (native, plain)
}

/// A residual model (card version 2) written by our exporter: the native
/// engine recognises the skip, equals tract and the trained network, and
/// the skip is the last observed V (the same network without it differs
/// by exactly that). A version-1 card claiming the skip is refused.
#[test]
fn residual_models_run_natively_and_add_the_last_observed_v() {
    use neurostimd::train::net::{Net, Workspace};
    let src = fixture(FIXTURES[0]);
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(card_path(&src)).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (layers, order) in [(1, OutputOrder::Forward), (2, OutputOrder::Reversed)] {
        let (t_in, t_out) = (12, 5);
        let net = Net::new(layers, 8, t_in, t_out, order, 3).with_residual(true);
        let path = dir.path().join(format!("res{layers}.onnx"));
        let mut card = base.clone();
        card["format_version"] = 2.into();
        card["output"]["order"] = serde_json::to_value(order).unwrap();
        card["output"]["residual"] = true.into();
        card["architecture"]["layers"] = layers.into();
        let (mut native, mut plain) = on_both_engines(&net, &path, card, "residual");
        // Contract rows: a spike-like observed V, random plans.
        let steps = t_in + t_out;
        let b = 4;
        let mut x = vec![0.0f32; b * steps * 3];
        for k in 0..b {
            for t in 0..steps {
                let r = &mut x[(k * steps + t) * 3..(k * steps + t) * 3 + 3];
                if t < t_in {
                    r[0] = ((t * 7 + k * 3) % 11) as f32 * 0.4 - 2.0;
                }
                r[1] = ((t + 2 * k) % 5) as f32 * 0.3 - 0.6;
                r[2] = if t < t_in { 0.0 } else { 1.0 };
            }
        }
        let y_native = native.run_raw(b, &x).unwrap();
        let y_tract = plain.run_raw(b, &x).unwrap();
        let y_net = Workspace::default().forward(&net, &x, b).to_vec();
        assert!(max_diff(&y_native, &y_tract) < 1e-4);
        assert!(max_diff(&y_net, &y_tract) < 1e-4);
        let without = net.clone().with_residual(false);
        let y0 = Workspace::default().forward(&without, &x, b).to_vec();
        for k in 0..b {
            let last = x[(k * steps + t_in - 1) * 3];
            assert!(last != 0.0);
            for j in 0..t_out {
                let d = y_tract[k * t_out + j] - y0[k * t_out + j];
                assert!(
                    (d - last).abs() < 1e-4,
                    "window {k} step {j}: {d} vs {last}"
                );
            }
        }
        // The planner's path: encode once, roll out, equal to tract.
        let v: Vec<f32> = (0..t_in).map(|t| -65.0 + (t % 4) as f32 * 9.0).collect();
        let i = vec![0.5f32; t_in];
        let plans: Vec<f32> = (0..3 * t_out).map(|j| (j % 3) as f32).collect();
        let (mut a, mut c) = (vec![0.0; 3 * t_out], vec![0.0; 3 * t_out]);
        native.forecast(&v, &i, &plans, 3, &mut a).unwrap();
        plain.forecast(&v, &i, &plans, 3, &mut c).unwrap();
        assert!(max_diff(&a, &c) < 1e-3, "{a:?} vs {c:?}");

        // The skip needs card version 2.
        let mut card: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(card_path(&path)).unwrap()).unwrap();
        card["format_version"] = 1.into();
        std::fs::write(card_path(&path), card.to_string()).unwrap();
        let msg = load_err(&path).to_string();
        assert!(
            msg.contains("output.residual needs format_version 2"),
            "{msg}"
        );
    }
}

/// A model carrying a fixed linear map of its input (calibration's AR
/// skip, `train.ar_skip`) runs natively and equals tract and the network.
#[test]
fn a_linear_skip_of_the_input_runs_natively() {
    use neurostimd::train::net::{Net, Skip, Workspace};
    let src = fixture(FIXTURES[0]);
    let mut card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(card_path(&src)).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (t_in, t_out) = (10, 4);
    let rows = (t_in + t_out) * 3;
    let w: Vec<f32> = (0..rows * t_out)
        .map(|k| ((k * 37) % 17) as f32 * 0.01 - 0.08)
        .collect();
    let b: Vec<f32> = (0..t_out).map(|j| j as f32 * 0.1).collect();
    let mut net = Net::new(1, 8, t_in, t_out, OutputOrder::Reversed, 5);
    net.skip = Some(Skip::from_forward(&w, &b, t_out, OutputOrder::Reversed));
    let path = dir.path().join("skip.onnx");
    card["output"]["order"] = "reversed".into();
    card["architecture"]["layers"] = 1.into();
    card["architecture"]["head"] = "linear+ar_skip".into();
    let (mut native, mut plain) = on_both_engines(&net, &path, card, "skip");
    let v: Vec<f32> = (0..t_in).map(|t| -65.0 + (t % 3) as f32 * 12.0).collect();
    let i: Vec<f32> = (0..t_in).map(|t| (t % 2) as f32).collect();
    let plans: Vec<f32> = (0..5 * t_out).map(|j| (j % 4) as f32 - 1.0).collect();
    let (mut a, mut c) = (vec![0.0; 5 * t_out], vec![0.0; 5 * t_out]);
    native.forecast(&v, &i, &plans, 5, &mut a).unwrap();
    plain.forecast(&v, &i, &plans, 5, &mut c).unwrap();
    assert!(max_diff(&a, &c) < 1e-3, "{a:?} vs {c:?}");
    // The skip is in the output: without it the network says otherwise.
    let steps = t_in + t_out;
    let x: Vec<f32> = (0..2 * steps * 3)
        .map(|k| ((k * 13) % 7) as f32 * 0.2 - 0.6)
        .collect();
    let y_tract = plain.run_raw(2, &x).unwrap();
    let y_net = Workspace::default().forward(&net, &x, 2).to_vec();
    assert!(max_diff(&y_net, &y_tract) < 1e-4);
    net.skip = None;
    let y_plain = Workspace::default().forward(&net, &x, 2).to_vec();
    assert!(max_diff(&y_plain, &y_tract) > 1e-2);
}

/// Calibration's AR blend (`train.ar_blend`): a constant per-step gain on
/// the head before the linear skip's `Add` runs natively and equals tract
/// and the network; without the gain the network says otherwise.
#[test]
fn a_per_step_gain_before_the_skip_runs_natively() {
    use neurostimd::train::net::{Net, Skip, Workspace};
    let src = fixture(FIXTURES[0]);
    let mut card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(card_path(&src)).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (t_in, t_out) = (10, 4);
    let rows = (t_in + t_out) * 3;
    let w: Vec<f32> = (0..rows * t_out)
        .map(|k| ((k * 29) % 13) as f32 * 0.01 - 0.06)
        .collect();
    let b: Vec<f32> = (0..t_out).map(|j| 0.2 - j as f32 * 0.05).collect();
    for order in [OutputOrder::Reversed, OutputOrder::Forward] {
        let mut net = Net::new(1, 8, t_in, t_out, order, 9);
        let mut skip = Skip::from_forward(&w, &b, t_out, order);
        // Gain 0 at one step: that step is the skip alone.
        skip.gain = Some(vec![0.0, 0.35, 1.0, 0.8]);
        net.skip = Some(skip);
        let path = dir.path().join(format!("blend-{order:?}.onnx"));
        card["output"]["order"] = serde_json::to_value(order).unwrap();
        card["architecture"]["layers"] = 1.into();
        card["architecture"]["head"] = "linear+ar_blend".into();
        let (mut native, mut plain) = on_both_engines(&net, &path, card.clone(), "gain");
        let v: Vec<f32> = (0..t_in).map(|t| -60.0 + (t % 4) as f32 * 10.0).collect();
        let i: Vec<f32> = (0..t_in).map(|t| (t % 3) as f32 - 1.0).collect();
        let plans: Vec<f32> = (0..5 * t_out).map(|j| (j % 5) as f32 - 2.0).collect();
        let (mut a, mut c) = (vec![0.0; 5 * t_out], vec![0.0; 5 * t_out]);
        native.forecast(&v, &i, &plans, 5, &mut a).unwrap();
        plain.forecast(&v, &i, &plans, 5, &mut c).unwrap();
        assert!(max_diff(&a, &c) < 1e-3, "{order:?}: {a:?} vs {c:?}");
        let steps = t_in + t_out;
        let x: Vec<f32> = (0..3 * steps * 3)
            .map(|k| ((k * 11) % 9) as f32 * 0.15 - 0.6)
            .collect();
        let y_tract = plain.run_raw(3, &x).unwrap();
        let y_native = native.run_raw(3, &x).unwrap();
        let y_net = Workspace::default().forward(&net, &x, 3).to_vec();
        assert!(max_diff(&y_net, &y_tract) < 1e-4, "{order:?}");
        assert!(max_diff(&y_native, &y_tract) < 1e-4, "{order:?}");
        // The gain-0 output (column 0: the gains are in the model's order)
        // is the skip's map alone.
        let mut skip_only = net.clone();
        skip_only.head_w.fill(0.0);
        skip_only.head_b = 0.0;
        let y_skip = Workspace::default().forward(&skip_only, &x, 3).to_vec();
        let col = 0;
        for k in 0..3 {
            let (p, q) = (y_tract[k * t_out + col], y_skip[k * t_out + col]);
            assert!((p - q).abs() < 1e-5, "{order:?} window {k}: {p} vs {q}");
        }
        net.skip.as_mut().unwrap().gain = None;
        let y_ungained = Workspace::default().forward(&net, &x, 3).to_vec();
        assert!(max_diff(&y_ungained, &y_tract) > 1e-3, "{order:?}");
    }
}

/// A calibrated model's forecast-spike threshold (card version 3) loads
/// and reaches the card; it needs version 3 and a membrane potential.
#[test]
fn a_forecast_spike_threshold_needs_card_version_3() {
    let src = fixture(FIXTURES[0]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("th.onnx");
    std::fs::copy(&src, &path).unwrap();
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(card_path(&src)).unwrap()).unwrap();
    let write = |version: u32, th: f64| {
        let mut card = base.clone();
        card["format_version"] = version.into();
        card["output"]["spike_threshold_mv"] = th.into();
        std::fs::write(card_path(&path), card.to_string()).unwrap();
    };
    write(3, -40.0);
    let f = Forecaster::load(&path, 4, Engine::Native).unwrap();
    assert_eq!(f.card().output.spike_threshold_mv, Some(-40.0));
    write(2, -40.0);
    let msg = load_err(&path).to_string();
    assert!(
        msg.contains("output.spike_threshold_mv needs format_version 3"),
        "{msg}"
    );
    write(3, -500.0);
    let msg = load_err(&path).to_string();
    assert!(msg.contains("output.spike_threshold_mv -500"), "{msg}");
}
