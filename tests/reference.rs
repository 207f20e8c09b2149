//! Accuracy of the embedded CA1 simulator against the reference data of the
//! model specification (tests/reference/, from shared/reference/).

use neurostimd::config::Config;
use neurostimd::neuron::spikes::{detect_bursts, DEFAULT_BURST_ISI_MS};
use neurostimd::neuron::State;
use neurostimd::plant::{Plant, SimPlant};

fn reference(name: &str) -> String {
    let path = format!("{}/tests/reference/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn spike_file(name: &str) -> Vec<f64> {
    reference(name)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

fn plant(toml: &str) -> SimPlant {
    SimPlant::new(&Config::from_str_named("test.toml", toml).unwrap().sim)
}

/// Run for `ms` and return (spike times, states at every sample).
fn run(toml: &str, ms: f64) -> (Vec<f64>, Vec<State>) {
    let mut p = plant(toml);
    let n = (ms / p.sample_period_ms()).round() as usize + 1;
    let mut spikes = Vec::new();
    let mut states = Vec::with_capacity(n);
    for _ in 0..n {
        p.read().unwrap();
        spikes.extend(p.last_spike());
        states.push(*p.state());
        p.write(0.0).unwrap();
    }
    (spikes, states)
}

const RK4: &str = "[plant.sim]\nintegrator = \"rk4\"\ndt = \"0.01 ms\"\n";
const BURSTING: &str = "preset = \"bursting\"\n";

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(
        a.len(),
        b.len(),
        "spike counts differ: {} vs {}",
        a.len(),
        b.len()
    );
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn rk4_at_reference_step_reproduces_both_spike_trains_to_1e4_ms() {
    for (extra, file) in [
        ("", "ca1_default_spikes.txt"),
        (BURSTING, "ca1_bursting_spikes.txt"),
    ] {
        let (spikes, _) = run(&format!("{RK4}{extra}"), 2000.0);
        let err = max_abs_diff(&spikes, &spike_file(file));
        assert!(err < 1e-4, "{file}: max spike-time error {err} ms");
    }
}

#[test]
fn default_integrator_keeps_spike_times_within_0_1_ms_and_counts_exact() {
    for (extra, file) in [
        ("", "ca1_default_spikes.txt"),
        (BURSTING, "ca1_bursting_spikes.txt"),
    ] {
        let (spikes, _) = run(&format!("[plant.sim]\n{extra}"), 2000.0);
        let err = max_abs_diff(&spikes, &spike_file(file));
        assert!(err < 0.1, "{file}: max spike-time error {err} ms");
        // Tighter than the requirement: a regression would show long before
        // the 0.1 ms bound is crossed.
        assert!(err < 0.01, "{file}: max spike-time error {err} ms");
    }
}

#[test]
fn presets_fire_as_specified() {
    let (regular, _) = run("", 2000.0);
    assert_eq!(regular.len(), 21);
    let (bursting, _) = run(&format!("[plant.sim]\n{BURSTING}"), 2000.0);
    let bursts = detect_bursts(&bursting, DEFAULT_BURST_ISI_MS);
    assert_eq!(bursts.len(), 11);
    assert!(bursts.iter().all(|b| b.spikes == 4), "{bursts:?}");
}

fn reference_trace() -> Vec<(f64, State)> {
    reference("ca1_default_trace.csv")
        .lines()
        .skip(1)
        .map(|l| {
            let v: Vec<f64> = l.split(',').map(|x| x.parse().unwrap()).collect();
            let mut s = [0.0; 9];
            s.copy_from_slice(&v[1..10]);
            (v[0], s)
        })
        .collect()
}

/// Scale of each state for relative comparisons (V in mV; q and Ca small).
const SCALE: State = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1e-6, 1e-3];

#[test]
fn rk4_matches_all_nine_states_of_the_reference_trace_along_the_whole_second() {
    let reference = reference_trace();
    assert_eq!(reference.len(), 10001);
    let (_, states) = run(RK4, 1000.0);
    let mut worst = (0.0, 0.0, 0);
    for (k, (t, want)) in reference.iter().enumerate() {
        for i in 0..9 {
            let e = (states[k][i] - want[i]).abs() / (SCALE[i] + want[i].abs());
            if e > worst.0 {
                worst = (e, *t, i);
            }
        }
    }
    // The file has 10 significant digits; RK4 at the same step agrees to
    // that precision up to the amplification of round-off at spikes.
    assert!(
        worst.0 < 1e-6,
        "worst scaled error {:e} at t = {} ms, state {}",
        worst.0,
        worst.1,
        worst.2
    );
}

#[test]
fn default_integrator_follows_the_reference_trace_away_from_spike_upstrokes() {
    let reference = reference_trace();
    let spikes = spike_file("ca1_default_spikes.txt");
    let (_, states) = run("", 1000.0);
    let mut worst = (0.0, 0.0, 0);
    for (k, (t, want)) in reference.iter().enumerate() {
        // Within 1.5 ms of a spike V moves hundreds of mV/ms, so a time shift
        // of microseconds is a large V difference; spike times are tested
        // separately.
        if spikes.iter().any(|s| (t - s).abs() < 1.5) {
            continue;
        }
        for i in 0..9 {
            let e = (states[k][i] - want[i]).abs() / (SCALE[i] + want[i].abs());
            if e > worst.0 {
                worst = (e, *t, i);
            }
        }
    }
    assert!(
        worst.0 < 1e-3,
        "worst scaled error {:e} at t = {} ms, state {}",
        worst.0,
        worst.1,
        worst.2
    );
}

#[test]
fn both_integrators_hit_the_high_accuracy_checkpoints() {
    let checkpoints: [(usize, State); 2] = [
        (
            1000,
            [
                -62.24915196,
                0.9220571939,
                0.06134156573,
                0.04842928772,
                0.02226077539,
                0.0143391529,
                0.009741639687,
                4.142129089e-07,
                0.01296842658,
            ],
        ),
        (
            10000,
            [
                -62.1651464,
                0.9212845005,
                0.0617921331,
                0.04993143657,
                0.02172399723,
                0.01444263372,
                0.009825960768,
                8.091344007e-07,
                0.009297858595,
            ],
        ),
    ];
    for (toml, tol) in [(RK4, 1e-4), ("", 1e-3)] {
        let (_, states) = run(toml, 1000.0);
        for (k, want) in &checkpoints {
            for i in 0..9 {
                let e = (states[*k][i] - want[i]).abs() / want[i].abs();
                assert!(
                    e < tol,
                    "{toml:?} t = {} ms state {i}: {} vs {} (rel {e:e})",
                    *k as f64 / 10.0,
                    states[*k][i],
                    want[i]
                );
            }
        }
    }
}
