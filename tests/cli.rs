//! The real binary, driven as a user would: `neurostimd simulate`, the daemon
//! on the simulator, and configuration errors (exit code 2, key named, no
//! panic).

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::neurostimd;

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn read_spikes(path: &Path) -> Vec<f64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

fn reference_spikes(name: &str) -> Vec<f64> {
    read_spikes(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/reference")
            .join(name),
    )
}

#[test]
fn simulate_regular_reproduces_the_reference_spike_train() {
    let dir = tempfile::tempdir().unwrap();
    let o = neurostimd(
        &[
            "simulate",
            "--preset",
            "regular",
            "--duration-ms",
            "2000",
            "--spikes-out",
            "s.txt",
        ],
        dir.path(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("21 spikes"), "{out}");
    assert!(out.contains("pattern regular"), "{out}");
    let got = read_spikes(&dir.path().join("s.txt"));
    let want = reference_spikes("ca1_default_spikes.txt");
    assert_eq!(got.len(), 21);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 0.1, "spike at {g} vs reference {w}");
    }
    // Six decimals, one per line.
    let raw = std::fs::read_to_string(dir.path().join("s.txt")).unwrap();
    assert!(
        raw.lines()
            .all(|l| l.split('.').nth(1).map(str::len) == Some(6)),
        "{raw}"
    );
}

#[test]
fn simulate_bursting_gives_eleven_bursts_of_four() {
    let dir = tempfile::tempdir().unwrap();
    let o = neurostimd(
        &["simulate", "--preset", "bursting", "--duration-ms", "2000"],
        dir.path(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("44 spikes, 11 bursts, 4.00 spikes/burst"),
        "{out}"
    );
    assert!(out.contains("pattern bursting"), "{out}");
}

#[test]
fn simulate_json_and_trace_have_every_sample_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let o = neurostimd(
        &[
            "simulate",
            "--duration-ms",
            "50",
            "--trace-out",
            "t.csv",
            "--json",
            "--dt-ms",
            "0.01",
        ],
        dir.path(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["integrator"], "rk4");
    assert_eq!(j["samples"], 501);
    assert!(j["wall_seconds"].as_f64().unwrap() > 0.0);
    let trace = std::fs::read_to_string(dir.path().join("t.csv")).unwrap();
    let mut lines = trace.lines();
    assert_eq!(
        lines.next().unwrap(),
        "t_ms,V_mV,h,n,b,z,r,c,q,Ca_uM,I_stim_uA_cm2"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 501);
    assert!(rows[0].starts_with("0,-7.1962"), "{}", rows[0]);
    assert!(rows[500].starts_with("50,"), "{}", rows[500]);
}

#[test]
fn stimulation_waveform_changes_firing() {
    let dir = tempfile::tempdir().unwrap();
    // Hyperpolarising from 0 to 300 ms silences the cell; then a strong step
    // makes it fire faster than the unstimulated 10 Hz.
    std::fs::write(dir.path().join("stim.csv"), "t_ms,current\n0,-2\n300,3\n").unwrap();
    let o = neurostimd(
        &[
            "simulate",
            "--duration-ms",
            "600",
            "--stim",
            "stim.csv",
            "--spikes-out",
            "s.txt",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let spikes = read_spikes(&dir.path().join("s.txt"));
    assert!(
        spikes.iter().all(|&t| t > 300.0),
        "silenced before 300 ms: {spikes:?}"
    );
    assert!(
        spikes.len() >= 6,
        "a 3 µA/cm² step drives > 20 Hz: {spikes:?}"
    );
}

#[test]
fn bad_stimulation_file_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stim.csv"), "0,1\n10,x\n").unwrap();
    let o = neurostimd(&["simulate", "--stim", "stim.csv"], dir.path());
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("stim.csv:2: column current (`x`) is not a number"),
        "{err}"
    );
}

/// Each bad configuration exits with code 2 and a message naming the key,
/// without a panic or a backtrace.
#[test]
fn bad_configs_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("unknown key", "[plant.sim]\nsampel_period = 0.1\n", "bad.toml:2: plant.sim.sampel_period: unknown field"),
        ("wrong unit", "[plant.sim]\nsample_period = \"0.1 mV\"\n", "bad.toml:2: plant.sim.sample_period: unit `mV` is not a time"),
        ("negative conductance", "[presets.bursting]\ng_nap = -0.4\n", "bad.toml:2: presets.bursting.g_nap: -0.4 is negative"),
        ("dt above sample period", "[plant.sim]\nintegrator = \"rk4\"\n\ndt = \"1 ms\"\n", "bad.toml:4: plant.sim.dt: integration step 1 ms is larger than plant.sim.sample_period"),
        ("unknown preset", "[plant.sim]\npreset = \"fast\"\n", "bad.toml:2: plant.sim.preset: no preset named `fast`"),
        (
            "safety above the hard ceiling",
            "[safety]\nmax_amplitude = 50\n",
            "bad.toml:2: safety.max_amplitude: 50 exceeds the hard ceiling 20",
        ),
    ];
    for (what, toml, expected) in cases {
        std::fs::write(dir.path().join("bad.toml"), toml).unwrap();
        for args in [
            &[
                "--config",
                "bad.toml",
                "--duration",
                "0.01",
                "--clock",
                "free",
            ][..],
            &["simulate", "--config", "bad.toml", "--duration-ms", "1"][..],
        ] {
            let o = neurostimd(args, dir.path());
            let (_, err) = text(&o);
            assert_eq!(o.status.code(), Some(2), "{what} ({args:?}): {err}");
            assert!(
                err.contains(expected),
                "{what}: expected `{expected}` in:\n{err}"
            );
            assert!(
                !err.contains("panicked") && !err.contains("stack backtrace"),
                "{err}"
            );
        }
    }
}

#[test]
fn bad_flags_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (
            &["simulate", "--gm", "-1"][..],
            "plant.sim.overrides.g_m: -1 is negative",
        ),
        (&["simulate", "--dt-ms", "0.5"][..], "plant.sim.dt"),
        (
            &["simulate", "--set", "g_kdr=-3"][..],
            "plant.sim.overrides.g_kdr",
        ),
        (
            &["simulate", "--set", "g_xyz=3"][..],
            "unknown field `g_xyz`",
        ),
        (
            &["simulate", "--duration-ms", "-5"][..],
            "--duration-ms -5 must be > 0",
        ),
        (&["--plant", "teleport"][..], "invalid value 'teleport'"),
    ] {
        let o = neurostimd(args, dir.path());
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(expected),
            "{args:?}: expected `{expected}` in:\n{err}"
        );
    }
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = neurostimd(&["--config", "nope.toml", "--duration", "1"], dir.path());
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("nope.toml: cannot read"), "{err}");
}

#[test]
fn daemon_runs_on_the_simulator_for_a_duration() {
    let dir = tempfile::tempdir().unwrap();
    let o = neurostimd(
        &[
            "--plant",
            "sim",
            "--duration",
            "0.5",
            "--clock",
            "free",
            "--policy",
            "off",
            "--json",
        ],
        dir.path(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["samples"], 5001);
    assert_eq!(j["charge_delivered_nc_cm2"], 0.0);
    assert_eq!(
        j["spikes"], 6,
        "reference spikes before 500 ms: 32, 60, 157, 256, 356, 456"
    );
    assert_eq!(j["stop"], "duration_reached");
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn model_run_reproduces_the_pytorch_bundle() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["pytorch_lstm1_h16", "pytorch_lstm2_h8"] {
        let o = neurostimd(
            &[
                "model",
                "run",
                &fixture(&format!("{name}.onnx")),
                "--input",
                &fixture(&format!("{name}.input.npy")),
                "--output",
                "y.npy",
            ],
            dir.path(),
        );
        assert!(o.status.success(), "{}", text(&o).1);
        let got = neurostimd::npy::NpyF32::read(&dir.path().join("y.npy")).unwrap();
        let want =
            neurostimd::npy::NpyF32::read(Path::new(&fixture(&format!("{name}.expected.npy"))))
                .unwrap();
        assert_eq!(got.shape, want.shape);
        let d = got
            .data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(d < 1e-4, "{name}: max |diff| {d}");
    }
}

#[test]
fn model_run_names_a_wrong_input_shape() {
    let dir = tempfile::tempdir().unwrap();
    // The 2-layer fixture's input has 40 steps; the 1-layer model wants 60.
    let o = neurostimd(
        &[
            "model",
            "run",
            &fixture("pytorch_lstm1_h16.onnx"),
            "--input",
            &fixture("pytorch_lstm2_h8.input.npy"),
            "--output",
            "y.npy",
        ],
        dir.path(),
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("shape [4, 40, 3] is not [batch, 60, 3]"),
        "{err}"
    );
}

#[test]
fn model_info_and_bench_describe_and_time_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("pytorch_lstm2_h8.onnx");
    let o = neurostimd(&["model", "info", &model], dir.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    for needle in [
        "2 x lstm hidden 8",
        "[batch, 40, 3]",
        "parameters   1001",
        "engine       native",
    ] {
        assert!(out.contains(needle), "`{needle}` missing in:\n{out}");
    }
    let o = neurostimd(
        &[
            "model", "bench", &model, "--batch", "8", "--runs", "50", "--json",
        ],
        dir.path(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (j["batch"].as_u64(), j["runs"].as_u64(), j["count"].as_u64()),
        (Some(8), Some(50), Some(50))
    );
    let (p50, p99, max) = (
        j["p50_us"].as_f64().unwrap(),
        j["p99_us"].as_f64().unwrap(),
        j["max_us"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{out}");
}

#[test]
fn model_with_missing_card_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("pytorch_lstm1_h16.onnx"), dir.path().join("m.onnx")).unwrap();
    let o = neurostimd(&["model", "info", "m.onnx"], dir.path());
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("m.json: No such file"), "{err}");
}

/// A misspelt embedded model is a bad request (exit 2, as `calibrate`
/// keeps 1 for "the gate refused"), and the error lists what the binary
/// carries instead of saying "No such file".
#[test]
fn an_unknown_embedded_model_is_a_bad_request_naming_the_embedded_ones() {
    let dir = tempfile::tempdir().unwrap();
    let o = neurostimd(&["model", "info", "embedded:ca1_lstm_spikes"], dir.path());
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("embedded:ca1_lstm_spikes: no such model compiled into this binary")
            && err.contains("embedded:ca1_lstm_spike)"),
        "{err}"
    );
    let trace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/real/ic_steps_17o05028.csv")
        .display()
        .to_string();
    let o = neurostimd(
        &[
            "calibrate",
            "--data",
            &trace,
            "--base",
            "embedded:nope",
            "--out",
            "m.onnx",
            "--no-registry",
        ],
        dir.path(),
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("embedded:nope: no such model"), "{err}");
    assert!(!dir.path().join("m.onnx").exists());
}

fn shipped_model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/ca1_lstm.onnx")
        .display()
        .to_string()
}

/// The README's command, shortened: the closed loop with MPC on the shipped
/// model, paced, reporting to a fresh directory under `reports/` that it
/// names, and `neurostimd report` reading it.
#[test]
fn daemon_runs_the_closed_loop_and_says_where_its_report_went() {
    let dir = tempfile::tempdir().unwrap();
    let model = shipped_model();
    let o = neurostimd(
        &["--plant", "sim", "--duration", "1", "--model", &model],
        dir.path(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("policy mpc, objective rate"), "{out}");
    let at = err
        .split("report written to ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("no report location in: {err}"));
    assert!(at.starts_with("reports/run-"), "{at}");
    let j: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(at).join("summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(j["samples"], 10_001);
    assert_eq!(j["policy"], "mpc");
    // MPC planned and its plans were used. How many depends on the CPU the
    // planner got (about 300 in this 1 s on a quiet 2-core machine, 40 with
    // the suite and a scenario run beside it), so the bound only says it
    // kept planning, not how fast.
    assert!(j["plans_adopted"].as_u64().unwrap() >= 10, "{j}");
    assert!(j["charge_delivered_nc_cm2"].as_f64().unwrap() > 0.0, "{j}");
    for key in [
        "plan_misses",
        "lost_samples",
        "records_dropped",
        "interventions_total",
    ] {
        assert!(j[key].is_u64(), "{key} missing: {j}");
    }
    for key in ["mlockall", "sched_fifo", "pinned"] {
        assert!(
            j["realtime"][key].is_string(),
            "realtime.{key} missing: {j}"
        );
    }
    assert!(j["quality"]["objective_error"].is_number(), "{j}");
    let o = neurostimd(&["report", at], dir.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("objective error") && out.contains("10001"),
        "{out}"
    );
}

#[test]
fn mpc_without_a_model_is_a_usage_error_that_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let o = neurostimd(
        &["--duration", "0.1", "--model", "missing.onnx"],
        dir.path(),
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("control.model") && err.contains("missing.onnx"),
        "{err}"
    );
    assert!(err.contains("--policy pid"), "{err}");
}

#[test]
fn daemon_writes_a_latency_report_that_report_reads() {
    let dir = tempfile::tempdir().unwrap();
    let model = shipped_model();
    let o = neurostimd(
        &["--duration", "0.3", "--report", "run1", "--model", &model],
        dir.path(),
    );
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("report written to run1"), "{err}");
    for f in [
        "summary.json",
        "wakeup_jitter.hgrm",
        "sample_to_command.hgrm",
        "plan_latency.hgrm",
        "decision_age.hgrm",
        "forecast_time.hgrm",
        "latency.hlog",
    ] {
        assert!(dir.path().join("run1").join(f).exists(), "{f} missing");
    }
    let hgrm = std::fs::read_to_string(dir.path().join("run1/sample_to_command.hgrm")).unwrap();
    assert!(
        hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"),
        "{hgrm}"
    );
    assert!(hgrm.contains("Total count    =         3001]"), "{hgrm}");
    let o = neurostimd(&["report", "run1", "run1"], dir.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("samples") && out.contains("3001"), "{out}");
    let o = neurostimd(&["report", "nowhere"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("nowhere/summary.json"));
}

#[test]
fn scenarios_print_the_comparison_table() {
    let dir = tempfile::tempdir().unwrap();
    let o = neurostimd(
        &[
            "scenarios",
            "--only",
            "silence",
            "--duration",
            "0.5",
            "--policy",
            "pid",
            "--policy",
            "off",
        ],
        dir.path(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.starts_with("| scenario | preset | policy |"), "{out}");
    assert!(
        out.contains("| silence | regular | pid |") && out.contains("| silence | regular | off |"),
        "{out}"
    );
    let o = neurostimd(&["scenarios", "--only", "nope"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("no scenario named `nope`"));
}

/// `--noise-offset` replicates a seed's cell with other plant noise and MPC
/// sampling: the unstimulated cell fires as before (its noise is on the
/// measurement only), MPC's run changes, and the JSON says which replicate
/// it is.
#[test]
fn scenarios_noise_offset_keeps_the_cell_and_changes_the_noise() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "scenarios",
            "--only",
            "burst_unseen",
            "--duration",
            "2",
            "--policy",
            "off",
            "--policy",
            "mpc",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = neurostimd(&args, dir.path());
        let (out, err) = text(&o);
        assert!(o.status.success(), "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0].clone()
    };
    let field = |r: &serde_json::Value, policy: &str, key: &str| {
        let p = r["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["policy"] == policy)
            .unwrap();
        p["seeds"][0][key].as_f64().unwrap()
    };
    let table = run(&["--seed-base", "6"]);
    let replicate = run(&["--seed-base", "6", "--noise-offset", "1000"]);
    let other_cell = run(&["--seed-base", "7"]);
    assert!(table.get("noise_offset").is_none(), "{table}");
    assert_eq!(replicate["noise_offset"], 1000);
    let spikes = |r| field(r, "off", "spikes");
    assert!(
        (spikes(&table) - spikes(&replicate)).abs() <= 2.0,
        "the same cell: {} against {} spikes",
        spikes(&table),
        spikes(&replicate)
    );
    assert!(
        (spikes(&table) - spikes(&other_cell)).abs() > 10.0,
        "another cell: {} against {} spikes",
        spikes(&table),
        spikes(&other_cell)
    );
    assert_ne!(
        field(&table, "mpc", "charge_nc_cm2"),
        field(&replicate, "mpc", "charge_nc_cm2")
    );
    let o = neurostimd(
        &[
            "scenarios",
            "--only",
            "burst",
            "--noise-offset",
            "18446744073709551615",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--noise-offset"), "{}", text(&o).1);
}

/// The README's hardware-in-the-loop commands: `neurostimd rig` prints the
/// path, `neurostimd --plant serial --port PATH` drives it.
#[test]
fn rig_and_serial_plant_run_the_loop_through_the_binary() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("rig");
    let mut rig = Command::new(env!("CARGO_BIN_EXE_neurostimd"))
        .args(["rig", "--duration", "6", "--link", link.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(rig.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), link.to_str().unwrap());
    let o = neurostimd(
        &[
            "--plant",
            "serial",
            "--port",
            line.trim(),
            "--duration",
            "1",
            "--policy",
            "pid",
            "--json",
        ],
        dir.path(),
    );
    let _ = rig.kill();
    let _ = rig.wait();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["plant"], "serial");
    assert_eq!(j["clock"], "plant");
    assert_eq!(j["samples"], 10_001);
    assert_eq!(j["plant_report"]["hello"]["sample_rate_hz"], 10_000);
    // No rig at all: a clear error, exit 1.
    let o = neurostimd(
        &[
            "--plant",
            "serial",
            "--port",
            "/nonexistent/tty",
            "--duration",
            "1",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains("/nonexistent/tty: cannot open"),
        "{}",
        text(&o).1
    );
}

/// The shipped model is compiled in: the daemon runs MPC from a directory
/// with no model files, `model info` names the embedded model and where it
/// came from, and `--model` still overrides it.
#[test]
fn the_embedded_model_runs_from_any_directory() {
    let dir = tempfile::tempdir().unwrap();
    let o = neurostimd(
        &[
            "--plant",
            "sim",
            "--duration",
            "0.3",
            "--clock",
            "free",
            "--json",
        ],
        dir.path(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["policy"], "mpc", "{out}");
    assert!(s["plans_adopted"].as_u64() > Some(10), "{out}");

    let o = neurostimd(&["model", "info"], dir.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("embedded:ca1_lstm"), "{out}");
    assert!(
        out.contains("origin       compiled into neurostimd"),
        "{out}"
    );

    let o = neurostimd(
        &[
            "--plant",
            "sim",
            "--duration",
            "0.1",
            "--clock",
            "free",
            "--model",
            "missing.onnx",
        ],
        dir.path(),
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("missing.onnx"), "{err}");
}

/// A planner that cannot produce a plan within the planning deadline is
/// refused before a paced run starts (exit 2), naming the measured time,
/// the deadline and what would fit; the free clock models the delay and
/// does not check.
#[test]
fn a_planner_that_cannot_keep_up_is_refused_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("slow.toml"),
        "[control]\ncompute_delay = \"0.001 ms\"\n[control.realtime]\nmlockall = false\npriority = 0\ncpu = \"none\"\n[service]\nmetrics = \"\"\nsocket = \"\"\n",
    )
    .unwrap();
    let o = neurostimd(
        &[
            "--plant",
            "sim",
            "--duration",
            "0.2",
            "--config",
            "slow.toml",
        ],
        dir.path(),
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("planning budget: one forecast of 32 candidates takes"),
        "{err}"
    );
    assert!(err.contains("must be ready within 0.00 ms"), "{err}");
    let o = neurostimd(
        &[
            "--plant",
            "sim",
            "--duration",
            "0.2",
            "--config",
            "slow.toml",
            "--clock",
            "free",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o).1);
}
