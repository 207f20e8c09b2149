//! The forecaster against PyTorch's own numbers, the native engine against
//! tract's plain windowed computation, and the refusals a bad model earns.

use neurostimd::forecast::{card_path, sha256_hex, Engine, ForecastError, Forecaster, OutputOrder};
use neurostimd::npy::NpyF32;
use prost::Message;
use std::path::{Path, PathBuf};

const FIXTURES: [&str; 2] = ["pytorch_lstm1_h16", "pytorch_lstm2_h8"];

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
