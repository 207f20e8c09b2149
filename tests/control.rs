//! The closed loop through the library's public API: determinism in the
//! free clock, the fault table (plan miss, plant fault, shutdown → zero,
//! counted and explained), every command within the safety limits, and MPC
//! doing its job.

use neurostimd::config::Config;
use neurostimd::control::{self, handoff::Record, RunOutcome, RunSetup, StopReason};
use neurostimd::forecast::{Engine, Forecaster};
use neurostimd::plant::{Plant, PlantError, Sample, SimPlant};
use neurostimd::safety::{Cause, Fault};
use std::path::Path;
use std::sync::atomic::AtomicBool;

mod common;

fn config(extra: &str) -> Config {
    common::free_clock_config(extra)
}

fn run_on(plant: &mut dyn Plant, cfg: &Config, seconds: f64) -> RunOutcome {
    run_on_with(plant, cfg, seconds, None)
}

/// A run with the shipped model (for mpc), every record kept, and operator
/// controls if given.
fn run_on_with(
    plant: &mut dyn Plant,
    cfg: &Config,
    seconds: f64,
    controls: Option<std::sync::Arc<neurostimd::control::controls::LoopControls>>,
) -> RunOutcome {
    let forecaster = (cfg.control.policy == neurostimd::policy::PolicyKind::Mpc).then(|| {
        Forecaster::load_source(
            &cfg.control.model,
            cfg.control.mpc.candidates,
            Engine::Native,
        )
        .unwrap()
    });
    let setup = RunSetup {
        keep_records: true,
        controls,
        ..RunSetup::new(cfg, Some(seconds), forecaster)
    };
    control::run(plant, setup, &AtomicBool::new(false), None).unwrap()
}

fn run(cfg: &Config, seconds: f64) -> RunOutcome {
    let mut plant = SimPlant::new(&cfg.sim);
    run_on(&mut plant, cfg, seconds)
}

fn commands(r: &RunOutcome) -> Vec<u64> {
    r.records
        .as_ref()
        .unwrap()
        .iter()
        .map(|x| x.command.to_bits())
        .collect()
}

#[test]
fn free_clock_runs_are_deterministic() {
    let noisy = "[plant.sim]\nnoise_sd = \"0.3 mV\"\n";
    let a = run(&config(noisy), 1.5);
    let b = run(&config(noisy), 1.5);
    let (ra, rb) = (a.records.as_ref().unwrap(), b.records.as_ref().unwrap());
    assert_eq!(ra.len(), 15_001);
    assert!(a.summary.plans_adopted > 500, "{}", a.summary.plans_adopted);
    assert!(
        ra.iter().any(|r| r.command != 0.0),
        "the MPC stimulated at all"
    );
    // Bit for bit: V, applied and requested current, command, cause.
    assert!(ra == rb, "same seed and config, different recordings");
    assert_eq!(
        a.summary.charge_delivered_nc_cm2.to_bits(),
        b.summary.charge_delivered_nc_cm2.to_bits()
    );
    // A different MPC seed samples other candidates: a different run.
    let c = run(&config(&format!("{noisy}[mpc]\nseed = 7\n")), 1.5);
    assert_ne!(commands(&a), commands(&c));
    // A modelled planner delay is deterministic too, and shifts the plans.
    let d1 = run(
        &config(&format!("{noisy}[control]\ncompute_delay = \"1 ms\"\n")),
        1.5,
    );
    let d2 = run(
        &config(&format!("{noisy}[control]\ncompute_delay = \"1 ms\"\n")),
        1.5,
    );
    assert!(d1.records == d2.records);
    assert_ne!(commands(&a), commands(&d1));
}

#[test]
fn a_plan_that_runs_out_is_a_counted_plan_miss_at_zero() {
    // The model's horizon is 10 ms; a 12 ms compute delay leaves 2 ms of
    // every control period with no plan left.
    let cfg = config("[control]\ncompute_delay = \"12 ms\"\nperiod = \"4 ms\"\n");
    let r = run(&cfg, 1.0);
    let s = &r.summary;
    assert!(s.plan_misses > 10, "{} misses", s.plan_misses);
    assert!(s.plan_miss_samples >= s.plan_misses);
    let misses: Vec<&Record> = r
        .records
        .as_ref()
        .unwrap()
        .iter()
        .filter(|x| x.cause == Some(Cause::Fault(Fault::PlanMiss)))
        .collect();
    assert_eq!(misses.len() as u64, s.plan_miss_samples);
    assert!(misses.iter().all(|x| x.command == 0.0));
    assert_eq!(s.interventions["plan_miss"], s.plan_miss_samples);
}

/// The simulator, until it breaks after `n` samples.
struct Breaks {
    inner: SimPlant,
    left: u64,
    commands: Vec<f64>,
}

impl Plant for Breaks {
    fn kind(&self) -> &'static str {
        "breaks"
    }
    fn sample_period_ms(&self) -> f64 {
        self.inner.sample_period_ms()
    }
    fn read(&mut self) -> Result<Sample, PlantError> {
        if self.left == 0 {
            return Err(PlantError::Fault {
                t_ms: 0.0,
                what: "test rig unplugged",
            });
        }
        self.left -= 1;
        self.inner.read()
    }
    fn write(&mut self, command: f64) -> Result<(), PlantError> {
        self.commands.push(command);
        self.inner.write(command)
    }
}

#[test]
fn a_plant_fault_ends_the_run_at_zero_and_says_why() {
    let cfg = config("[control]\npolicy = \"open\"\n[open]\nshape = \"constant\"\noffset = \"1 uA/cm2\"\namplitude = \"0 uA/cm2\"\n");
    let mut plant = Breaks {
        inner: SimPlant::new(&cfg.sim),
        left: 3000,
        commands: Vec::new(),
    };
    let r = run_on(&mut plant, &cfg, 10.0);
    let s = &r.summary;
    assert_eq!(s.stop, StopReason::PlantFault);
    assert!(
        s.fault.as_deref().unwrap().contains("test rig unplugged"),
        "{:?}",
        s.fault
    );
    assert_eq!(s.samples, 3000);
    assert_eq!(
        *plant.commands.last().unwrap(),
        0.0,
        "last command not zero"
    );
    assert!(plant.commands[..3000].iter().any(|&c| c > 0.0));
    assert_eq!(s.interventions["plant_fault"], 1);
    // Nothing recorded was lost: every sample the loop saw is in the record.
    assert_eq!(r.records.as_ref().unwrap().len(), 3000);
}

#[test]
fn every_command_is_within_the_safety_limits_and_shutdown_zeroes() {
    // Tight limits so they bind: 2 µA/cm², 5 µA/cm²/ms, 20 nC/cm² per phase.
    let cfg = config(
        "[safety]\nmax_amplitude = \"2 uA/cm2\"\nmax_slew = 5.0\nmax_phase_charge = \"20 nC/cm2\"\n\
         [mpc]\nmax_amplitude = \"6 uA/cm2\"\n",
    );
    let mut plant = Breaks {
        inner: SimPlant::new(&cfg.sim),
        left: u64::MAX,
        commands: Vec::new(),
    };
    let r = run_on(&mut plant, &cfg, 2.0);
    let recs = r.records.as_ref().unwrap();
    let mut prev = 0.0f64;
    let mut phase = 0.0f64;
    for x in recs {
        assert!(x.command.abs() <= 2.0 + 1e-12, "{x:?}");
        if prev == 0.0 || x.command.signum() != prev.signum() {
            assert!(x.command.abs() <= 5.0 * 0.1 + 1e-9, "slew from zero: {x:?}");
            phase = 0.0;
        } else {
            assert!(
                x.command.abs() - prev.abs() <= 5.0 * 0.1 + 1e-9,
                "slew: {x:?}"
            );
        }
        if x.command != 0.0 {
            phase += x.command.abs() * 0.1;
            assert!(phase <= 20.0 + 1e-6, "phase charge {phase}: {x:?}");
        }
        prev = x.command;
    }
    assert!(
        recs.iter().any(|x| x.command.abs() > 1.0),
        "limits never approached"
    );
    // The last write is the shutdown zero, after the last sample's command.
    assert_eq!(plant.commands.len(), recs.len() + 1);
    assert_eq!(*plant.commands.last().unwrap(), 0.0);
    assert_eq!(r.summary.interventions["shutdown"], 1);
}

#[test]
fn mpc_tracks_the_rate_target_far_better_than_no_stimulation() {
    // 15 Hz on a cell that fires at 10 Hz by itself.
    let on = run(&config(""), 3.0);
    let off = run(&config("[control]\npolicy = \"off\"\n"), 3.0);
    let (e_on, e_off) = (
        on.summary.quality.objective_error,
        off.summary.quality.objective_error,
    );
    assert!(e_off > 4.0, "off: {e_off} Hz");
    assert!(e_on < 0.25 * e_off, "mpc {e_on} Hz vs off {e_off} Hz");
    assert!(
        (on.summary.quality.rate_hz - 15.0).abs() < 1.5,
        "{:?}",
        on.summary.quality
    );
}

#[test]
fn mpc_suppresses_bursts_better_than_the_pi_baseline_with_less_charge() {
    use neurostimd::policy::PolicyKind;
    use neurostimd::scenarios::{self, ScenarioRequest};
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ca1_lstm.onnx");
    let mut cli = toml::Table::new();
    let mut control = toml::Table::new();
    control.insert("model".into(), model.display().to_string().into());
    cli.insert("control".into(), control.into());
    let r = scenarios::run(&ScenarioRequest {
        only: vec!["burst".into()],
        seeds: 1,
        seed_base: 1,
        duration_s: Some(4.0),
        policies: vec![PolicyKind::Mpc, PolicyKind::Pid, PolicyKind::Off],
        config: None,
        cli,
        noise_offset: 0,
    })
    .unwrap();
    let get = |p: &str| r[0].policies.iter().find(|x| x.policy == p).unwrap();
    let (mpc, pid, off) = (get("mpc"), get("pi"), get("off"));
    // Unstimulated: 3 of every 4 spikes are inside a burst.
    assert!((off.mean_error - 0.75).abs() < 0.01, "{off:?}");
    assert!(
        mpc.mean_error < 0.8 * pid.mean_error,
        "mpc {mpc:?} vs pid {pid:?}"
    );
    assert!(
        mpc.mean_charge_nc_cm2 <= pid.mean_charge_nc_cm2,
        "mpc {mpc:?} vs pid {pid:?}"
    );
}

/// Regression: the free clock with a per-sample policy runs millions of
/// samples a second, faster than the record consumer; it must wait for the
/// consumer rather than drop records (a paced loop drops and counts).
#[test]
fn a_fast_free_run_loses_no_records() {
    let cfg = config("[control]\npolicy = \"pid\"\n[plant.sim]\npreset = \"bursting\"\n");
    let r = run(&cfg, 5.0);
    assert_eq!(r.summary.records_dropped, 0);
    assert_eq!(r.records.as_ref().unwrap().len() as u64, r.summary.samples);
    // Every spike the loop counted is in what the consumer scored.
    let scored_from = cfg.control.objective.settle_ms;
    let loop_spikes_after = r.summary.spikes;
    assert!(r.summary.quality.spikes as u64 <= loop_spikes_after);
    assert!(scored_from > 0.0 && r.summary.quality.spikes > 0);
}

/// Run with operator controls set up before the start (what the control
/// API posts while the loop runs).
fn run_with_controls(
    cfg: &Config,
    seconds: f64,
    controls: std::sync::Arc<neurostimd::control::controls::LoopControls>,
) -> RunOutcome {
    let mut plant = SimPlant::new(&cfg.sim);
    run_on_with(&mut plant, cfg, seconds, Some(controls))
}

/// An objective change through the loop's controls reaches the policy: the
/// MPC (on the planner thread) and the PI baseline both move the cell from
/// the configured 15 Hz to the new 5 Hz; disarmed, nothing is delivered.
#[test]
fn operator_controls_change_the_objective_and_disarm_through_the_limiter() {
    use neurostimd::control::controls::LoopControls;
    use neurostimd::policy::RateSchedule;
    use std::sync::Arc;
    for policy in ["mpc", "pid"] {
        let cfg = config(&format!("[control]\npolicy = \"{policy}\"\n"));
        let controls = Arc::new(LoopControls::new(true, cfg.control.objective));
        let mut slow = cfg.control.objective;
        slow.rate = RateSchedule::new(&[(0.0, 5.0)]).unwrap();
        let seq = controls.post_objective(slow);
        let r = run_with_controls(&cfg, 4.0, controls.clone());
        assert_eq!(controls.status().objective_seq, seq);
        assert_eq!(r.summary.objective_changes, 1);
        // Spikes after the first second (settled), in 3 s.
        let spikes = {
            let recs = r.records.as_ref().unwrap();
            let mut det = neurostimd::neuron::spikes::SpikeDetector::new(-20.0);
            recs.iter()
                .filter_map(|x| det.push(x.t_ms, x.v_mv))
                .filter(|&t| t >= 1000.0)
                .count()
        };
        let hz = spikes as f64 / 3.0;
        assert!(
            (3.5..=6.5).contains(&hz),
            "{policy}: {hz} Hz after asking for 5 Hz (configured 15 Hz)"
        );
    }
    // Disarmed from the start: every request is zero, so is every command,
    // and it is a state, not a safety intervention.
    let cfg = config("[control]\npolicy = \"pid\"\n");
    let controls = Arc::new(LoopControls::new(false, cfg.control.objective));
    let r = run_with_controls(&cfg, 1.0, controls);
    let recs = r.records.as_ref().unwrap();
    assert!(recs.iter().all(|x| x.requested == 0.0 && x.command == 0.0));
    assert_eq!(r.summary.disarmed_samples, r.summary.samples);
    assert_eq!(r.summary.charge_delivered_nc_cm2, 0.0);
    assert_eq!(
        r.summary.interventions_total,
        r.summary.interventions["shutdown"]
    );
}
