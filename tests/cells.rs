//! Cell families through the real binary (issue 16 point 1): randomised CA1
//! cells, the Pospischil classes as a plant, the held-out cell layers in
//! `config/cells/`, and the actuation delay.

use std::path::{Path, PathBuf};

mod common;
use common::neurostimd;

/// `simulate --json` with `args`; the report.
fn simulate(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec!["simulate", "--json"];
    all.extend_from_slice(args);
    let o = neurostimd(&all, dir.path());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{args:?}: {err}");
    serde_json::from_slice(&o.stdout).unwrap()
}

fn spikes(report: &serde_json::Value) -> Vec<f64> {
    report["spike_times_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn isis(s: &[f64]) -> Vec<f64> {
    s.windows(2).map(|w| w[1] - w[0]).collect()
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A stimulation file: `amp` µA/cm² from `on` to `off` ms.
fn step_file(dir: &Path, amp: f64, on: f64, off: f64) -> String {
    let p = dir.join("step.csv");
    std::fs::write(&p, format!("t_ms,current\n{on},{amp}\n{off},0\n")).unwrap();
    p.display().to_string()
}

/// µA/cm² of `na` nA on the soma of a Pospischil class (diameter `d_um`).
fn density(na: f64, d_um: f64) -> f64 {
    na * 1e5 / (std::f64::consts::PI * d_um * d_um)
}

#[test]
fn a_cell_seed_is_a_cell_whatever_the_noise_seed() {
    let a = simulate(&["--preset", "bursting", "--cell-seed", "1001"]);
    let again = simulate(&["--preset", "bursting", "--cell-seed", "1001"]);
    let other_noise = simulate(&[
        "--preset",
        "bursting",
        "--cell-seed",
        "1001",
        "--noise-sd-mv",
        "0.5",
        "--seed",
        "77",
    ]);
    let nominal = simulate(&["--preset", "bursting"]);
    let other_cell = simulate(&["--preset", "bursting", "--cell-seed", "1002"]);
    assert_eq!(spikes(&a), spikes(&again));
    // Spikes are timed on the true membrane: the noise seed changes the
    // measurement, never the cell.
    assert_eq!(spikes(&a), spikes(&other_noise));
    assert_eq!(a["cell"]["params"], other_noise["cell"]["params"]);
    assert_ne!(spikes(&a), spikes(&nominal));
    assert_ne!(spikes(&a), spikes(&other_cell));
    // The report names the cell and every drawn parameter.
    assert_eq!(a["cell"]["cell_seed"], 1001);
    assert_eq!(nominal["cell"]["cell_seed"], 0);
    assert_eq!(nominal["cell"]["params"]["g_nap"], 0.41);
    let g_nap = a["cell"]["params"]["g_nap"].as_f64().unwrap();
    assert!(g_nap != 0.41 && (0.41 * 0.8..=0.41 * 1.2).contains(&g_nap));
    assert_eq!(a["cell"]["draws"].as_array().unwrap().len(), 11);
}

/// The published protocols of `src/neuron/pospischil.rs`'s tests, run
/// through the simulator plant (dopri5, 10 kHz samples) by `simulate`.
#[test]
fn pospischil_classes_fire_as_published_through_the_sim_plant() {
    let dir = tempfile::tempdir().unwrap();
    let run = |class: &str, amp: f64, on: f64, off: f64, dur: f64| {
        let stim = step_file(dir.path(), amp, on, off);
        let d = dur.to_string();
        let r = simulate(&[
            "--family",
            "pospischil",
            "--preset",
            class,
            "--stim",
            &stim,
            "--duration-ms",
            &d,
        ]);
        assert_eq!(r["cell"]["family"], "pospischil");
        spikes(&r)
    };
    // RS, 0.2 nA for 1 s: adapting (ISIs lengthen monotonically).
    let s = run("rs", density(0.2, 61.4), 100.0, 1100.0, 1100.0);
    let i = isis(&s);
    assert!(s.len() >= 20 && i[i.len() - 1] > 1.5 * i[0], "RS {i:?}");
    assert!(i.windows(2).all(|w| w[1] >= w[0] - 0.1), "RS {i:?}");
    // FS, 1 nA for 1 s: fast and hardly adapting.
    let s = run("fs", density(1.0, 56.9), 100.0, 1100.0, 1100.0);
    let i = isis(&s);
    assert!(s.len() >= 150 && i[i.len() - 1] < 1.15 * i[0], "FS {i:?}");
    // IB, 0.15 nA for 2 s: an initial burst, then slow firing.
    let s = run("ib", density(0.15, 96.0), 100.0, 2100.0, 2200.0);
    let i = isis(&s);
    let burst = i.iter().take_while(|&&x| x < 10.0).count() + 1;
    assert!(burst >= 3 && s[0] < 200.0, "IB {i:?}");
    assert!(i[i.len() - 5..].iter().all(|&x| x > 50.0), "IB {i:?}");
    // LTS, -0.2 nA from 100 to 600 ms: silent, then a rebound burst.
    let s = run("lts", density(-0.2, 89.2), 100.0, 600.0, 1100.0);
    assert!(
        s.iter().all(|&t| t > 600.0) && s.len() >= 3 && s[0] < 700.0,
        "LTS {s:?}"
    );
    assert!(isis(&s[..3]).iter().all(|&x| x < 10.0), "LTS {s:?}");
}

#[test]
fn the_delay_shifts_the_response_by_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let stim = step_file(dir.path(), 2.0, 100.0, 300.0);
    let run = |delay: &str| {
        spikes(&simulate(&[
            "--family",
            "pospischil",
            "--preset",
            "rs",
            "--stim",
            &stim,
            "--duration-ms",
            "400",
            "--actuation-delay-ms",
            delay,
        ]))
    };
    let (now, late) = (run("0"), run("2"));
    assert!(now.len() >= 3, "{now:?}");
    assert_eq!(now.len(), late.len(), "{now:?} vs {late:?}");
    for (a, b) in now.iter().zip(&late) {
        assert!((b - a - 2.0).abs() < 1e-3, "{a} -> {b}");
    }
}

#[test]
fn held_out_cell_layers_fire_as_documented() {
    for (name, want) in [
        ("heldout-burst-1", "bursting"),
        ("heldout-burst-2", "bursting"),
        ("heldout-burst-3", "bursting"),
        ("heldout-regular-1", "regular"),
        ("heldout-regular-2", "regular"),
        ("heldout-regular-3", "regular"),
    ] {
        let cfg = repo(&format!("config/cells/{name}.toml"));
        let r = simulate(&["--config", cfg.to_str().unwrap(), "--duration-ms", "4000"]);
        let seed = r["cell"]["cell_seed"].as_u64().unwrap();
        assert!((1001..=1999).contains(&seed), "{name}: seed {seed}");
        assert_eq!(r["pattern"], want, "{name}: {r}");
        assert!(r["rate_hz"].as_f64().unwrap() > 3.0, "{name}: {r}");
    }
    for class in ["rs", "fs", "ib", "lts"] {
        let cfg = repo(&format!("config/cells/heldout-{class}.toml"));
        let r = simulate(&["--config", cfg.to_str().unwrap(), "--duration-ms", "2000"]);
        assert_eq!(r["cell"]["preset"], class);
        assert!(r["spikes"].as_u64().unwrap() >= 5, "{class}: {r}");
    }
}

/// The daemon runs a held-out Pospischil cell and records which cell it
/// was in the recording's sidecar.
#[test]
fn the_daemon_runs_a_pospischil_cell_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = repo("config/cells/heldout-rs.toml");
    let rec = dir.path().join("rec");
    let o = neurostimd(
        &[
            "--plant",
            "sim",
            "--config",
            cfg.to_str().unwrap(),
            "--duration",
            "1",
            "--clock",
            "free",
            "--policy",
            "off",
            "--record",
            rec.to_str().unwrap(),
            "--json",
        ],
        dir.path(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let standalone = simulate(&["--config", cfg.to_str().unwrap(), "--duration-ms", "1000"]);
    assert_eq!(j["spikes"], standalone["spikes"], "{j}");
    let side: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rec.join("neurostimd.json")).unwrap())
            .unwrap();
    let sim = &side["config"]["sim"];
    assert_eq!(sim["family"]["name"], "pospischil");
    assert_eq!(sim["cell"]["cell_seed"], 1001);
    assert_eq!(sim["family"]["params"], standalone["cell"]["params"]);
}

#[test]
fn bad_cell_settings_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (args, key) in [
        (
            vec!["--set", "plant.sim.randomize.conductances=1.5"],
            "plant.sim.randomize.conductances",
        ),
        (
            vec!["--set", "plant.sim.randomize.cm=-0.1"],
            "plant.sim.randomize.cm",
        ),
        (
            vec!["--set", "plant.sim.randomize.cm=nan"],
            "plant.sim.randomize.cm",
        ),
        (
            vec!["--actuation-delay-ms", "2.05"],
            "plant.sim.actuation_delay",
        ),
        (vec!["--family", "pospischil"], "plant.sim.preset"),
        (vec!["--family", "nope"], "plant.sim.family"),
    ] {
        let mut all = vec!["simulate", "--duration-ms", "10"];
        all.extend_from_slice(&args);
        let o = neurostimd(&all, dir.path());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(key), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Training data comes from the same SimConfig: a Pospischil cell and a
/// randomised CA1 cell both produce usable series.
#[test]
fn training_series_come_from_any_cell() {
    for layer in [
        "config/cells/heldout-lts.toml",
        "config/cells/heldout-burst-1.toml",
    ] {
        let c = neurostimd::config::Config::load(&repo(layer)).unwrap();
        let s = neurostimd::train::dataset::simulate_series(&c.sim, 2000.0, 5, 2.0, 1).unwrap();
        let v = &s.v;
        assert!(v.len() >= 3900, "{layer}: {}", v.len());
        let max = v.iter().cloned().fold(f32::MIN, f32::max);
        assert!(max > 0.0, "{layer}: no spike in the series (max {max} mV)");
    }
}
