//! `neurostimd scenarios`: the scenario machinery (baselines per scenario,
//! seed ranges, the true-membrane column, the timing objective end to end)
//! through the public API and the real binary. The control figures
//! themselves are checked by scripts/check_scenarios.py against committed
//! runs.

mod common;

use neurostimd::session::{self, SessionOptions};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn scenarios(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_neurostimd"))
        .arg("scenarios")
        .args(args)
        .output()
        .unwrap()
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = scenarios(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The true membrane is the recorded V without its measurement noise:
/// replaying a closed-loop run's commands through the same simulator
/// repeats every recorded V to the bit, so the noiseless replay is the
/// membrane the cell really had.
#[test]
fn replaying_the_commands_repeats_the_run_exactly() {
    let cfg = common::free_clock_config(
        "[control]\npolicy = \"pid\"\nobjective = \"voltage\"\n\
         [plant.sim]\nnoise_sd = \"0.2 mV\"\nseed = 3\n[plant.sim.overrides]\ni_app = 0.0\n\
         [run]\nduration = \"1 s\"\n",
    );
    let options = SessionOptions {
        keep_records: true,
        ..SessionOptions::default()
    };
    let out = session::run(&cfg, &options, Arc::new(AtomicBool::new(false))).unwrap();
    let records = out.records.unwrap();
    assert!(records.len() > 9_000);
    let again = neurostimd::scenarios::replay(&cfg.sim, &records).unwrap();
    assert!(records
        .iter()
        .zip(&again)
        .all(|(r, v)| r.v_mv.to_bits() == v.to_bits()));
    // Without noise the replay differs from the record by the noise alone.
    let mut quiet = cfg.sim.clone();
    quiet.noise_sd_mv = 0.0;
    let truth = neurostimd::scenarios::replay(&quiet, &records).unwrap();
    let n = records.len() as f64;
    let sd = (records
        .iter()
        .zip(&truth)
        .map(|(r, v)| (r.v_mv - v).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    assert!((sd - 0.2).abs() < 0.01, "noise sd {sd}");
}

/// Each scenario runs its own baselines, on the seeds asked for; voltage
/// reports the true-membrane error, timing its matched-spike parts.
#[test]
fn baselines_seeds_and_extra_columns() {
    let v = json(&[
        "--only",
        "rate_fast",
        "--only",
        "voltage",
        "--only",
        "timing",
        "--policy",
        "pid",
        "--policy",
        "off",
        "--seed-base",
        "101",
        "--seeds",
        "2",
        "--duration",
        "1.5",
        "--json",
    ]);
    let names = |s: &serde_json::Value| -> Vec<String> {
        s["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["policy"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&v[0]), ["pi", "pi+ff", "off"]);
    assert_eq!(names(&v[1]), ["pid", "off"]);
    assert_eq!(names(&v[2]), ["pulses", "off"]);
    let seeds: Vec<u64> = v[0]["policies"][0]["seeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["seed"].as_u64().unwrap())
        .collect();
    assert_eq!(seeds, [101, 102]);
    // Without MPC there is nothing to judge.
    assert!(v[0]["best_baseline"].is_null());
    // Voltage: the clamp's true error is far below the 0.2 mV noise floor
    // of the measured one; unstimulated, both are the reference's swing.
    let pid = &v[1]["policies"][0];
    let (measured, truth) = (
        pid["mean_error"].as_f64().unwrap(),
        pid["mean_true_error"].as_f64().unwrap(),
    );
    assert!(measured > 0.19 && truth < 0.1, "{measured} {truth}");
    let off = &v[1]["policies"][1];
    assert!(off["mean_true_error"].as_f64().unwrap() > 1.0);
    // Timing: every target of the 1.5 s run is scored, and the parts add
    // up to the error.
    let t = &v[2]["policies"][0]["seeds"][0];
    let parts = &t["timing"];
    let targets = parts["targets"].as_u64().unwrap();
    assert_eq!(targets, 4, "{parts}");
    assert_eq!(
        parts["hits"].as_u64().unwrap() + parts["misses"].as_u64().unwrap(),
        targets
    );
    let sum = parts["mean_abs_jitter_ms"].as_f64().unwrap() * parts["hits"].as_f64().unwrap() / 5.0
        + parts["misses"].as_f64().unwrap()
        + parts["extras"].as_f64().unwrap();
    let err = t["objective_error"].as_f64().unwrap();
    assert!((sum / targets as f64 - err).abs() < 1e-9, "{t}");
}

/// MPC is judged against the best baseline the scenario has, by error,
/// and the table says which one.
#[test]
fn mpc_is_judged_against_the_best_baseline() {
    let v = json(&[
        "--only",
        "silence",
        "--seeds",
        "1",
        "--duration",
        "0.6",
        "--json",
    ]);
    let s = &v[0];
    let pols = s["policies"].as_array().unwrap();
    let best = s["best_baseline"].as_str().unwrap();
    // The rule: the least error; both at zero (< 0.001), the least charge.
    let key = |p: &serde_json::Value| {
        let e = p["mean_error"].as_f64().unwrap();
        let c = p["mean_charge_nc_cm2"].as_f64().unwrap();
        if e < 1e-3 {
            (0.0, c)
        } else {
            (e, 0.0)
        }
    };
    let expected = pols
        .iter()
        .filter(|p| p["kind"] == "pid" || p["kind"] == "open")
        .min_by(|a, b| key(a).partial_cmp(&key(b)).unwrap())
        .unwrap();
    assert_eq!(best, expected["policy"].as_str().unwrap());
    let mpc = pols.iter().find(|p| p["policy"] == "mpc").unwrap();
    let ratio = mpc["mean_charge_nc_cm2"].as_f64().unwrap()
        / expected["mean_charge_nc_cm2"].as_f64().unwrap();
    assert!((s["mpc_charge_ratio"].as_f64().unwrap() - ratio).abs() < 1e-9);
    let table =
        String::from_utf8(scenarios(&["--only", "silence", "--duration", "0.6"]).stdout).unwrap();
    assert!(table.contains(&format!("vs {best}:")), "{table}");
    assert!(table.contains("evaluation seeds 1-1"), "{table}");
}

#[test]
fn bad_scenario_arguments_are_usage_errors() {
    for (args, says) in [
        (&["--seed-base", "0"][..], "--seed-base"),
        (&["--only", "nope"][..], "timing"),
        (&["--seeds", "0"][..], "--seeds"),
    ] {
        let out = scenarios(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
