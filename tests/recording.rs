//! Recordings: what the loop produced is what is on disk, in the Open
//! Ephys layout; a `kill -9` loses at most the flush interval and `recover`
//! makes the rest readable; neo and SpikeInterface read a recording and
//! agree with the run; replay plays it back.

use neurostimd::config::Config;
use neurostimd::plant::{Plant, SimPlant};
use neurostimd::record::{recover, Recording};
use neurostimd::session::{self, SessionOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_neurostimd")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

mod common;

fn config(extra: &str) -> Config {
    common::free_clock_config(extra)
}

fn record_run(cfg: &Config, dir: &Path) -> session::SessionOutcome {
    let opts = SessionOptions {
        keep_records: true,
        record: Some(dir.to_path_buf()),
        command: "test".into(),
        ..SessionOptions::default()
    };
    session::run(cfg, &opts, Arc::new(AtomicBool::new(false))).unwrap()
}

fn write_npy_f64(path: &Path, xs: &[f64]) {
    let mut b = neurostimd::npy::fixed_header("<f8", &[xs.len()]).to_vec();
    for x in xs {
        b.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

fn write_npy_i64(path: &Path, xs: &[i64]) {
    let mut b = neurostimd::npy::fixed_header("<i8", &[xs.len()]).to_vec();
    for x in xs {
        b.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

#[test]
fn every_sample_command_and_forecast_is_recorded_and_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    let cfg = config("[run]\nduration = \"2 s\"\n[control]\nobjective = \"rate\"\n");
    let out = record_run(&cfg, &dir);
    let recs = out.records.unwrap();
    let s = &out.summary;
    assert_eq!(recs.len() as u64, s.samples);
    assert_eq!(s.records_dropped, 0);
    let r = Recording::open(&dir).unwrap();
    assert_eq!(r.len(), recs.len(), "one frame per sample");
    assert_eq!(r.controller.sample_numbers, r.acquired.sample_numbers);
    let vbit = r.acquired.bit[0];
    let ibit = r.controller.bit[0];
    let mut with_forecast = 0;
    for (k, rec) in recs.iter().enumerate() {
        assert_eq!(r.acquired.sample_numbers[k], rec.index as i64);
        assert!((r.acquired.timestamps[k] - rec.t_ms / 1000.0).abs() < 1e-12);
        assert!(
            (r.v_mv()[k] - rec.v_mv).abs() <= vbit / 2.0 + 1e-9,
            "V at {k}"
        );
        assert!((r.command()[k] - rec.command).abs() <= ibit / 2.0 + 1e-9);
        assert!((r.applied()[k] - rec.applied).abs() <= ibit / 2.0 + 1e-9);
        if rec.forecast.is_finite() {
            with_forecast += 1;
            assert!((r.forecast()[k] - rec.forecast as f64).abs() <= vbit / 2.0 + 1e-6);
        } else {
            assert!(
                r.forecast()[k].is_nan(),
                "no forecast is stored as the marker"
            );
        }
    }
    assert!(
        with_forecast > recs.len() / 2,
        "{with_forecast} samples with a forecast"
    );
    // Per-tick forecasts: one row per plan, t_out wide.
    let fc =
        neurostimd::npy::NpyF32::read(&Recording::folder(&dir).join("forecasts/forecasts.npy"))
            .unwrap();
    let t_out = fc.shape[1];
    assert_eq!(t_out, 20);
    assert!(
        fc.shape[0] as u64 >= s.plans_adopted,
        "{:?} vs {}",
        fc.shape,
        s.plans_adopted
    );
    // Stimulation events pair with the command's on/off changes.
    let log = std::fs::read_to_string(Recording::folder(&dir).join("events.jsonl")).unwrap();
    let on_edges = log
        .lines()
        .filter(|l| l.contains("\"event\":\"stimulation\"") && l.contains("\"state\":true"))
        .count();
    let mut expected = 0;
    let mut prev = 0.0;
    for rec in &recs {
        if rec.command != 0.0 && prev == 0.0 {
            expected += 1;
        }
        prev = rec.command;
    }
    assert_eq!(on_edges, expected);
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("neurostimd.json")).unwrap()).unwrap();
    assert_eq!(side["status"], "complete");
    assert_eq!(side["complete"], true);
    assert_eq!(side["counts"]["samples"], s.samples);
    assert_eq!(side["model"]["card"]["t_out"], 20);
    assert_eq!(side["config"]["control"]["policy"], "mpc");
    // A second run refuses to overwrite it.
    let opts = SessionOptions {
        record: Some(dir.clone()),
        ..SessionOptions::default()
    };
    let e = session::run(&cfg, &opts, Arc::new(AtomicBool::new(false)))
        .err()
        .expect("refused");
    assert!(e.to_string().contains("already holds a recording"), "{e}");
}

#[test]
fn replay_plays_the_recording_back_open_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    let cfg =
        config("[run]\nduration = \"0.5 s\"\n[control]\npolicy = \"pid\"\nobjective = \"rate\"\n");
    let out = record_run(&cfg, &dir);
    let recs = out.records.unwrap();
    let mut plant = neurostimd::plant::replay::ReplayPlant::open(&dir).unwrap();
    assert_eq!(plant.len(), recs.len());
    for rec in &recs {
        let s = plant.read().unwrap();
        assert_eq!(s.index, rec.index);
        let vbit = 200.0 / 32767.0;
        assert!((s.v_mv - rec.v_mv).abs() <= vbit / 2.0 + 1e-9);
        // Commands do not change what was recorded.
        plant.write(5.0).unwrap();
    }
    assert!(matches!(
        plant.read(),
        Err(neurostimd::plant::PlantError::Ended)
    ));
    // The daemon on the replay plant: runs to the recording's end.
    let rep = tmp.path().join("replayed");
    let o = Command::new(bin())
        .args(["--plant", "replay", "--recording"])
        .arg(&dir)
        .args(["--policy", "pid", "--clock", "free", "--json", "--record"])
        .arg(&rep)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["plant"], "replay");
    assert_eq!(summary["samples"], recs.len() as u64);
    assert_eq!(summary["stop"], "plant_ended");
    let again = Recording::open(&rep).unwrap();
    assert_eq!(again.v_mv().len(), recs.len());
    assert_eq!(
        again.acquired.raw[0],
        Recording::open(&dir).unwrap().acquired.raw[0]
    );
    // model eval reads recordings.
    let o = Command::new(bin())
        .args(["model", "eval"])
        .arg(root().join("models/ca1_lstm.onnx"))
        .arg("--recording")
        .arg(&dir)
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(c["model"]["rmse_mv"].as_array().unwrap().len(), 20);
}

/// Read a fixed header's row count.
fn header_rows(path: &Path) -> u64 {
    let Ok(b) = std::fs::read(path) else { return 0 };
    neurostimd::npy::parse_header(&b)
        .map(|h| h.shape[0] as u64)
        .unwrap_or(0)
}

#[test]
fn kill_9_loses_at_most_the_flush_interval_and_recover_makes_the_rest_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    // No stimulation: the simulator's trace is then a pure function of the
    // seed, so every recovered sample can be checked against it.
    let cfg_text = "[plant.sim]\nnoise_sd = \"0.2 mV\"\nseed = 11\n[control]\npolicy = \"off\"\n\
                    [control.realtime]\nmlockall = false\npriority = 0\ncpu = \"none\"\n\
                    [record]\nflush_interval = \"100 ms\"\n";
    let cfg_path = tmp.path().join("c.toml");
    std::fs::write(&cfg_path, cfg_text).unwrap();
    let mut child = Command::new(bin())
        .arg("--config")
        .arg(&cfg_path)
        .args(["--clock", "paced", "--duration", "60", "--record"])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sn = Recording::folder(&dir).join("continuous/neurostimd-100.acquired/sample_numbers.npy");
    let t0 = Instant::now();
    let mut flushed_before_kill = 0;
    let mut seen_at = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        flushed_before_kill = header_rows(&sn);
        seen_at = Instant::now();
        if flushed_before_kill >= 15_000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(flushed_before_kill >= 15_000, "the run never flushed 1.5 s");
    // Kill mid-flush-interval.
    std::thread::sleep(Duration::from_millis(50));
    let killed_at = Instant::now();
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("neurostimd.json")).unwrap()).unwrap();
    assert_eq!(sidecar["status"], "recording", "the run never closed it");
    let o = Command::new(bin())
        .args(["recover", "--json"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let kept = report["samples"].as_u64().unwrap();
    assert!(
        kept >= flushed_before_kill,
        "recover kept {kept} < {flushed_before_kill} flushed"
    );
    let r = Recording::open(&dir).unwrap();
    assert_eq!(r.len() as u64, kept);
    assert_eq!(r.controller.sample_numbers.len() as u64, kept);
    // Contiguous from 0 and equal to the simulator's own trace.
    let cfg = Config::load_layered(Some(&cfg_path), &toml::Table::new()).unwrap();
    let mut plant = SimPlant::new(&cfg.sim);
    let vbit = r.acquired.bit[0];
    for k in 0..r.len() {
        let s = plant.read().unwrap();
        plant.write(0.0).unwrap();
        assert_eq!(r.acquired.sample_numbers[k], s.index as i64, "sample {k}");
        assert!(
            (r.v_mv()[k] - s.v_mv).abs() <= vbit / 2.0 + 1e-9,
            "V at sample {k}"
        );
    }
    // What was lost: the flush seen had happened at most one interval
    // before it was seen, so the loop had produced at most (kill − seen +
    // 100 ms) × 10 kHz samples more than that flush held; all of the flush
    // was recovered.
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("neurostimd.json")).unwrap()).unwrap();
    assert_eq!(side["status"], "recovered");
    let bound = (killed_at.duration_since(seen_at).as_secs_f64() + 0.1) * 10_000.0;
    eprintln!(
        "kill -9: {flushed_before_kill} samples flushed when last seen, {kept} recovered and equal to the simulator's trace; at most {bound:.0} samples (the flush interval and the kill's delay) were not yet on disk"
    );
    // Recovery is idempotent.
    let again = recover(&dir).unwrap();
    assert_eq!(again.samples, kept);
    assert_eq!(again.bytes_cut, 0);
}

/// The Python interpreter of a venv with neo and SpikeInterface: `.ci/run`
/// makes `target/ci-venv`; otherwise the test makes `target/oe-venv`.
fn python_with_neo() -> PathBuf {
    for venv in ["target/ci-venv", "target/oe-venv"] {
        let py = root().join(venv).join("bin/python");
        let ok = Command::new(&py)
            .args(["-c", "import neo, spikeinterface"])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return py;
        }
    }
    let venv = root().join("target/oe-venv");
    let st = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .unwrap();
    assert!(st.success(), "python3 -m venv failed");
    let st = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "neo",
            "spikeinterface",
            "numpy",
        ])
        .status()
        .unwrap();
    assert!(st.success(), "pip install neo spikeinterface failed");
    venv.join("bin/python")
}

#[test]
fn neo_and_spikeinterface_read_what_the_run_produced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    let cfg = config("[run]\nduration = \"1.5 s\"\n[control]\nobjective = \"burst\"\n[plant.sim]\npreset = \"bursting\"\n");
    let out = record_run(&cfg, &dir);
    let recs = out.records.unwrap();
    assert!(recs.iter().any(|r| r.command != 0.0), "the run stimulated");
    let exp = tmp.path().join("expected");
    std::fs::create_dir_all(&exp).unwrap();
    write_npy_f64(
        &exp.join("v_mv.npy"),
        &recs.iter().map(|r| r.v_mv).collect::<Vec<_>>(),
    );
    write_npy_f64(
        &exp.join("command.npy"),
        &recs.iter().map(|r| r.command).collect::<Vec<_>>(),
    );
    write_npy_f64(
        &exp.join("applied.npy"),
        &recs.iter().map(|r| r.applied).collect::<Vec<_>>(),
    );
    write_npy_i64(
        &exp.join("sample_numbers.npy"),
        &recs.iter().map(|r| r.index as i64).collect::<Vec<_>>(),
    );
    let py = python_with_neo();
    let o = Command::new(py)
        .arg(root().join("scripts/check_openephys.py"))
        .arg(&dir)
        .arg(&exp)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "check_openephys.py failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["neo"]["samples"], recs.len() as u64);
    assert_eq!(m["spikeinterface"]["samples"], recs.len() as u64);
    assert!(m["neo"]["event_epochs"].as_u64().unwrap() > 0);
    eprintln!("{m}");
}
