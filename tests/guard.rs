//! The MPC guard through the library's public API: on a cell the shipped
//! model is wrong for (the bursting cell with more and earlier persistent
//! Na, more M current gone, a larger capacitance and more drive), with the
//! burst objective where MPC alone does worse than no stimulation, the
//! guard hands over to its fallback (event, counters, status), takes
//! control back when a model is swapped in, and the guarded MPC is not
//! worse than no stimulation on evaluation seeds.

use neurostimd::config::Config;
use neurostimd::control::{self, controls::LoopControls, RunOutcome, RunSetup};
use neurostimd::forecast::{Engine, Forecaster, ModelSwap};
use neurostimd::plant::SimPlant;
use neurostimd::policy::ObjectiveKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

/// The cell of issue 17 the shipped model is wrong for, burst objective.
/// A TOML layer: `seed` sets the plant noise and MPC's sampling.
fn bad_cell(policy: &str, seed: u64) -> String {
    format!(
        "[plant.sim]\npreset = \"bursting\"\nnoise_sd = \"0.2 mV\"\nseed = {seed}\n\
         [plant.sim.overrides]\ng_nap = 0.5\ntheta_p = -46.0\ng_m = 0.8\ncm = 1.15\ni_app = 0.7\n\
         [control]\nobjective = \"burst\"\npolicy = \"{policy}\"\n[mpc]\nseed = {seed}\n"
    )
}

fn config(policy: &str, seed: u64) -> Config {
    common::free_clock_config(&bad_cell(policy, seed))
}

fn shipped(cfg: &Config) -> Forecaster {
    Forecaster::load_source(
        &cfg.control.model,
        cfg.control.mpc.candidates,
        Engine::Native,
    )
    .unwrap()
}

fn recording(cfg: &Config, dir: &std::path::Path, t_out: usize) -> neurostimd::record::Recorder {
    neurostimd::record::Recorder::create(neurostimd::record::RecordingSetup {
        dir: dir.to_path_buf(),
        sample_rate_hz: 10_000.0,
        current_units: "uA/cm2".into(),
        t_out,
        forecast_dt_ms: 0.5,
        flush_interval: Duration::from_millis(200),
        fsync: false,
        v_range_mv: cfg.record.v_range_mv,
        i_range: cfg.record.i_range,
        sidecar: serde_json::json!({}),
    })
    .unwrap()
}

fn events(dir: &std::path::Path) -> String {
    fn find(d: &std::path::Path) -> Option<std::path::PathBuf> {
        for e in std::fs::read_dir(d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                if let Some(f) = find(&p) {
                    return Some(f);
                }
            } else if p.file_name().is_some_and(|n| n == "events.jsonl") {
                return Some(p);
            }
        }
        None
    }
    std::fs::read_to_string(find(dir).expect("events.jsonl in the recording")).unwrap()
}

#[test]
fn the_guard_hands_over_on_a_wrong_model_and_takes_back_after_a_swap() {
    let cfg = config("mpc", 1);
    assert_eq!(cfg.control.objective.kind, ObjectiveKind::Burst);
    assert!(cfg.control.guard.enabled, "the guard is on by default");
    let dir = tempfile::tempdir().unwrap();
    let f = shipped(&cfg);
    let t_out = f.card().t_out;
    let controls = Arc::new(LoopControls::new(true, cfg.control.objective));
    let (swap_tx, swap_rx) = crossbeam_channel::bounded(1);
    let done = Arc::new(AtomicBool::new(false));
    // The operator: once the guard has handed over, swap a model in (the
    // shipped one again: the planner's swap is what the guard waits for).
    let operator = {
        let (controls, done, cfg) = (controls.clone(), done.clone(), cfg.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if controls.status().guard_to_fallback >= 1 {
                    let swap = ModelSwap {
                        forecaster: shipped(&cfg),
                        label: "v2 test".into(),
                    };
                    swap_tx.send(swap).unwrap();
                    return true;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            false
        })
    };
    let mut plant = SimPlant::new(&cfg.sim);
    let setup = RunSetup {
        controls: Some(controls.clone()),
        swaps: Some(swap_rx),
        recorder: Some(recording(&cfg, dir.path(), t_out)),
        ..RunSetup::new(&cfg, Some(12.0), Some(f))
    };
    let out = control::run(&mut plant, setup, &AtomicBool::new(false), None).unwrap();
    done.store(true, Ordering::Relaxed);
    assert!(operator.join().unwrap(), "the guard never handed over");
    let g = out
        .summary
        .guard
        .clone()
        .expect("MPC runs report the guard");
    let judged = g.judged.clone().unwrap();
    assert!(g.handovers_to_fallback >= 1, "{g:?}");
    assert!(
        g.handovers_to_mpc >= 1,
        "no hand-back after the swap: {g:?}"
    );
    assert!(g.fallback_samples > 0);
    assert_eq!(out.summary.models_swapped, 1);
    assert_eq!(judged.decisions[0].direction, "to_fallback");
    assert!(judged.decisions[1].reason.contains("v2 test"), "{judged:?}");
    // The status the service serves agrees with the summary.
    let live = controls.status();
    assert_eq!(live.guard_to_fallback, g.handovers_to_fallback);
    assert_eq!(live.guard_to_mpc, g.handovers_to_mpc);
    // Both directions are events in the recording.
    let ev = events(dir.path());
    assert!(ev.contains("guard to_fallback"), "{ev}");
    assert!(ev.contains("guard to_mpc"), "{ev}");
    // While the fallback (off) drove, the command was zero.
    assert_eq!(g.fallback, "off");
    let json = serde_json::to_value(&out.summary).unwrap();
    assert_eq!(
        json["guard"]["handovers_to_fallback"],
        g.handovers_to_fallback
    );
}

fn objective_error(out: &RunOutcome) -> f64 {
    out.summary.quality.objective_error
}

fn run(cfg: &Config) -> RunOutcome {
    let f = (cfg.control.policy == neurostimd::policy::PolicyKind::Mpc).then(|| shipped(cfg));
    let mut plant = SimPlant::new(&cfg.sim);
    control::run(
        &mut plant,
        RunSetup::new(cfg, Some(12.0), f),
        &AtomicBool::new(false),
        None,
    )
    .unwrap()
}

#[test]
fn guarded_mpc_is_not_worse_than_no_stimulation_on_the_wrong_cell() {
    // Evaluation seeds (the guard's defaults were set on seeds 101-103).
    for seed in [1, 2] {
        let off = objective_error(&run(&config("off", seed)));
        let guarded = run(&config("mpc", seed));
        let mut unguarded_cfg = config("mpc", seed);
        unguarded_cfg.control.guard.enabled = false;
        let unguarded = objective_error(&run(&unguarded_cfg));
        let e = objective_error(&guarded);
        let g = guarded.summary.guard.unwrap();
        assert!(g.handovers_to_fallback >= 1, "seed {seed}: {g:?}");
        assert!(
            unguarded > off,
            "seed {seed}: the cell no longer shows the harm ({unguarded} vs off {off})"
        );
        // The guard judges a model after one window of its own (1 s of the
        // 12 s), so MPC's harm in that first window stays in the score.
        assert!(
            e < unguarded && e <= off * 1.05,
            "seed {seed}: guarded MPC {e:.3} vs no stimulation {off:.3} (unguarded {unguarded:.3})"
        );
    }
}

/// `neurostimd scenarios` on one seed of `burst_unseen`, MPC and no
/// stimulation, with `extra` arguments; (MPC's seed result, off's error).
///
/// These tests are about what the guard does with MPC's own plans: MPC's
/// spike reflex (the scenario's `control.feedback.spike_pulse`) is off,
/// since it changes what those plans do to the cell, and the probation
/// start is one window, as the scenario had it before the reflex (with the
/// reflex the scenario starts MPC at once; docs/control.md). MPC's credit
/// for forecast spikes outside bursts (`mpc.burst_single_credit`, set by
/// the scenario since) is off for the same reason, and MPC plans within
/// ±6 µA/cm², the scenario's bound when these cells were measured (10
/// since, with its reflex). A later `--set` of the same key in `extra` wins.
fn burst_unseen(seed: u64, extra: &[&str]) -> (serde_json::Value, f64) {
    let mut args = vec![
        "--set",
        "control.feedback.spike_pulse=\"0 uA/cm2\"",
        "--set",
        "mpc.max_amplitude=\"6 uA/cm2\"",
        "--set",
        "control.guard.probation=\"1 s\"",
        "--set",
        "mpc.burst_single_credit=0",
    ];
    args.extend(extra);
    scenario("burst_unseen", seed, &args)
}

/// `neurostimd scenarios` on one seed of scenario `name`, MPC and no
/// stimulation, with `extra` arguments; (MPC's seed result, off's error).
fn scenario(name: &str, seed: u64, extra: &[&str]) -> (serde_json::Value, f64) {
    let seed = seed.to_string();
    let mut args = vec!["scenarios", "--only", name, "--seeds", "1"];
    args.extend([
        "--seed-base",
        &seed,
        "--policy",
        "mpc",
        "--policy",
        "off",
        "--json",
    ]);
    args.extend(extra);
    let out = common::neurostimd(&args, &std::env::temp_dir());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let policies = v[0]["policies"].as_array().unwrap();
    let of = |name: &str| {
        policies
            .iter()
            .find(|p| p["policy"] == name)
            .unwrap_or_else(|| panic!("no {name} row: {v}"))["seeds"][0]
            .clone()
    };
    (of("mpc"), of("off")["objective_error"].as_f64().unwrap())
}

/// Held-out cell 1001 (evaluation seed 1), where the shipped model is
/// wrong: without a probation start the guard judges the model only after
/// MPC's first window of its own, and the harm done in it (the cell's later
/// bursts go differently) leaves guarded MPC worse than no stimulation.
/// With it (the scenario's `control.guard.probation`, one window) the
/// fallback drives first, the model is judged on its forecasts of what the
/// fallback applies, fails, and MPC never acts: exactly no stimulation.
#[test]
fn on_a_held_out_cell_the_probation_start_keeps_guarded_mpc_no_worse_than_off() {
    let (before, off) = burst_unseen(1, &["--set", "control.guard.probation=\"0 s\""]);
    let harm = before["objective_error"].as_f64().unwrap();
    assert!(
        harm > off,
        "the held-out cell no longer shows the harm: MPC {harm} vs off {off}"
    );
    assert_eq!(before["guard"]["handovers_to_fallback"], 1, "{before}");
    let (mpc, off_again) = burst_unseen(1, &[]);
    assert_eq!(off, off_again, "no stimulation is deterministic");
    let e = mpc["objective_error"].as_f64().unwrap();
    let g = &mpc["guard"];
    let first = g["first_reason"].as_str().unwrap_or_default();
    assert!(
        first.contains("probation start") && first.contains("persistence"),
        "{g}"
    );
    assert_eq!(g["handovers_to_mpc"], 0, "{g}");
    assert_eq!(mpc["charge_nc_cm2"], 0.0, "MPC never acted: {mpc}");
    assert!(
        e <= off,
        "guarded MPC {e} vs no stimulation {off} (without the probation start {harm}): {g}"
    );
}

/// Timing, evaluation seed 2: the model forecasts at about 0.55 of
/// persistence's error for seconds, then over a quiet second (persistence
/// nearly exact) its rolling ratio peaks at 0.81. Judged by that window
/// alone against 0.8 (the rule before the tenure count) the guard handed
/// over to no stimulation and the cell fired on its own; judged by the
/// model's tenure, MPC keeps control and its error stays far below off's.
/// Measured with `ca1_lstm`, so both runs pin it: the scenario's own
/// model since (`ca1_lstm_spike`) never peaks above 0.6 there.
#[test]
fn on_timing_a_good_models_brief_peak_is_no_hand_over() {
    const MODEL: &str = "control.model=\"embedded:ca1_lstm\"";
    let (old, off) = scenario(
        "timing",
        2,
        &[
            "--set",
            "control.guard.model_ratio_window=0.8",
            "--set",
            MODEL,
        ],
    );
    assert_eq!(old["guard"]["handovers_to_fallback"], 1, "{old}");
    let (mpc, _) = scenario("timing", 2, &["--set", MODEL]);
    let g = &mpc["guard"];
    assert_eq!(g["handovers_to_fallback"], 0, "{g}");
    let peak = g["max_model_to_persistence"].as_f64().unwrap();
    assert!(peak > 0.8 && peak < 1.0, "{g}");
    let (e, e_old) = (
        mpc["objective_error"].as_f64().unwrap(),
        old["objective_error"].as_f64().unwrap(),
    );
    assert!(
        e < e_old && e < off,
        "MPC {e} vs handed over {e_old}, off {off}"
    );
}

/// Held-out cell 1002 (evaluation seed 2): the model passes the probation
/// but MPC does harm (its first window: 0.500 against no stimulation's
/// 0.333). Judged after a whole window, the harm stays in the score and the
/// trajectory: guarded MPC worse than no stimulation; judged after the
/// scenario's shorter first window (`control.guard.first_window`), not.
#[test]
fn on_held_out_cell_1002_a_short_first_window_keeps_guarded_mpc_no_worse_than_off() {
    let (whole, off) = burst_unseen(2, &["--set", "control.guard.first_window=\"1 s\""]);
    let harm = whole["objective_error"].as_f64().unwrap();
    assert!(
        harm > off,
        "the cell no longer shows the harm: {harm} vs off {off}"
    );
    let (mpc, _) = burst_unseen(2, &[]);
    let e = mpc["objective_error"].as_f64().unwrap();
    assert_eq!(mpc["guard"]["handovers_to_fallback"], 1, "{mpc}");
    assert!(
        e <= off,
        "guarded MPC {e} vs no stimulation {off} (whole first window: {harm})"
    );
}

/// `delay` (tuning seed 101): the anticipating reflex replaces the plan's
/// current wherever the forecast puts a spike, and the scenario's charge
/// weight leaves the plans nearly empty. Judged by the plans' forecasts
/// (answers about currents the loop never applied) the model looked worse
/// than persistence and the guard handed over to no stimulation; judged by
/// its forecasts of what was applied (the scenario's
/// `control.guard.forecasts`), it is well under persistence's error and
/// MPC keeps control, far below no stimulation, run after run alike.
#[test]
fn on_delay_the_guard_judges_the_model_by_what_was_applied() {
    let (planned, off) = scenario(
        "delay",
        101,
        &["--set", "control.guard.forecasts=\"planned\""],
    );
    assert_eq!(planned["guard"]["handovers_to_fallback"], 1, "{planned}");
    assert_eq!(planned["guard"]["forecasts"], "planned", "{planned}");
    let (applied, _) = scenario("delay", 101, &[]);
    let g = &applied["guard"];
    assert_eq!(g["forecasts"], "applied", "{g}");
    // Those forecasts reach the guard a plan after their horizon, from
    // another thread; the run is still a function of its seeds alone.
    let (again, _) = scenario("delay", 101, &[]);
    assert_eq!(applied, again, "the same seed, another run");
    assert_eq!(g["handovers_to_fallback"], 0, "{g}");
    let peak = g["max_model_to_persistence"].as_f64().unwrap();
    assert!(peak < 0.8, "{g}");
    let (e, e_planned) = (
        applied["objective_error"].as_f64().unwrap(),
        planned["objective_error"].as_f64().unwrap(),
    );
    assert!(
        e < e_planned && e < 0.5 * off,
        "judged by what was applied {e}, by the plans {e_planned}, off {off}"
    );
}

/// Held-out cell 1046 (evaluation seed 46), calibrated: MPC's spike reflex
/// (a -10 uA/cm2 pulse for 4 ms after each spike) fires the cell on its
/// release, and MPC with it ends above no stimulation (0.612 against
/// 0.500, git 0d69159) with no hand-over. With the reflex on trial
/// (`control.guard.reflex_rebounds`, the scenario's 3) the guard scores a
/// window with it and one without, keeps it off, and MPC ends below no
/// stimulation. Off (0) the reflex is never judged.
#[test]
fn on_held_out_cell_1046_the_reflex_trial_keeps_calibrated_mpc_below_no_stimulation() {
    let (trial, off) = scenario("burst_unseen_cal", 46, &[]);
    let g = &trial["guard"];
    assert!(g["reflex_rebounds"].as_u64().unwrap() >= 3, "{g}");
    assert!(g["reflex_suspended_at"].as_u64().is_some(), "{g}");
    let t = g["reflex_trial"].as_array().expect("the trial ran");
    let (with, without) = (t[0].as_f64().unwrap(), t[1].as_f64().unwrap());
    assert!(without < with, "kept off because it did better: {g}");
    assert!(g["reflex_resumed_at"].is_null(), "{g}");
    let e = trial["objective_error"].as_f64().unwrap();
    assert!(e < off, "guarded MPC {e} against no stimulation's {off}");

    let (never, _) = scenario(
        "burst_unseen_cal",
        46,
        &["--set", "control.guard.reflex_rebounds=0"],
    );
    let g = &never["guard"];
    assert!(g["reflex_suspended_at"].is_null() && g["reflex_trial"].is_null());
    let harm = never["objective_error"].as_f64().unwrap();
    assert!(
        harm > off,
        "the reflex's harm on this cell: {harm} against {off}"
    );
}

/// `control.guard.revert` through the library: MPC plans with the family
/// base model (an 80-step window) and may go back to the shipped model
/// (160 steps; the loop's window is sized for both, each model reading the
/// newest steps it takes).
fn revert_run(model_ratio: f64, revert: bool) -> RunOutcome {
    let mut cfg = config("mpc", 1);
    cfg.control.guard.revert = revert;
    cfg.control.guard.model_ratio = model_ratio;
    cfg.control.guard.model_ratio_window = model_ratio;
    cfg.control.guard.objective_margin = 1e9;
    let family = neurostimd::forecast::ModelSource::parse("embedded:ca1_lstm_family");
    let f = Forecaster::load_source(&family, cfg.control.mpc.candidates, Engine::Native).unwrap();
    let base = shipped(&cfg);
    let mut plant = SimPlant::new(&cfg.sim);
    control::run(
        &mut plant,
        RunSetup {
            keep_records: true,
            revert: Some(ModelSwap {
                forecaster: base,
                label: "shipped".into(),
            }),
            ..RunSetup::new(&cfg, Some(4.0), Some(f))
        },
        &AtomicBool::new(false),
        None,
    )
    .unwrap()
}

/// The first failure of the model count sends the planner back to the
/// model the running one replaced and MPC keeps control; the model gone
/// back to gets a whole window of its own before its verdict, and its own
/// failure hands over. With a model count that never fails, a run with the
/// rule on is the run with it off, sample for sample (the longer window
/// changes nothing for the model that plans).
#[test]
fn a_failing_model_goes_back_to_the_one_it_replaced_then_hands_over() {
    // Every forecast fails a count at 1e-3 x persistence's error.
    let out = revert_run(1e-3, true);
    assert_eq!(out.summary.models_swapped, 1);
    let g = out.summary.guard.as_ref().unwrap();
    let j = g.judged.as_ref().unwrap();
    let d: Vec<_> = j.decisions.iter().map(|d| d.direction).collect();
    assert_eq!(d, ["model_reverted", "to_fallback"], "{j:?}");
    assert!(j.decisions[0].reason.contains("shipped"), "{j:?}");
    let reverted = j.model_reverted_at.unwrap();
    assert_eq!(reverted, j.decisions[0].sample);
    // A window is 1 s, 10,000 samples.
    assert!(j.decisions[1].sample >= reverted + 10_000, "{j:?}");
    assert_eq!(g.handovers_to_fallback, 1);
    // Off: the first failure hands over.
    let out = revert_run(1e-3, false);
    assert_eq!(out.summary.models_swapped, 0);
    let j = out.summary.guard.unwrap().judged.unwrap();
    assert_eq!(j.decisions[0].direction, "to_fallback", "{j:?}");
    assert!(j.model_reverted_at.is_none());

    let never = |revert| revert_run(1e9, revert).records.unwrap();
    let (on, off) = (never(true), never(false));
    assert_eq!(on.len(), off.len());
    assert!(on == off, "the rule changed a run where it never fired");
}

/// Held-out cell 1045 (evaluation seed 45), calibrated: the calibrated
/// model fails the guard's window check 4 s in, and handed over to no
/// stimulation MPC scored 0.584 against no stimulation's 0.667 (git
/// 13aad94), while the shipped model the calibration replaced scores 0
/// there with the same settings. Going back to it
/// (`control.guard.revert`, on in `burst_unseen_cal`) MPC keeps control
/// and ends far below no stimulation.
#[test]
fn on_held_out_cell_1045_calibrated_mpc_goes_back_to_the_shipped_model() {
    let (mpc, off) = scenario("burst_unseen_cal", 45, &[]);
    let g = &mpc["guard"];
    assert!(g["model_reverted_at"].as_u64().is_some(), "{g}");
    assert_eq!(g["handovers_to_fallback"], 0, "{g}");
    assert_eq!(mpc["calibration"]["adopted"], true, "{mpc}");
    let e = mpc["objective_error"].as_f64().unwrap();
    assert!(e < 0.3 * off, "MPC {e} against no stimulation's {off}");
}
