//! Real-time discipline, measured: the paths the control loop will call per
//! sample or per control period must not allocate. A counting global
//! allocator wraps the system one for this test binary only.

use neurostimd::config::Config;
use neurostimd::control::controls::LoopControls;
use neurostimd::forecast::{Engine, Forecaster, WindowRing};
use neurostimd::plant::{Plant, SimPlant};
use neurostimd::policy::RateSchedule;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

struct Counting;

thread_local! {
    /// Allocations made by this thread (other threads, such as a report
    /// writer, may allocate freely: only the hot thread is under test).
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn bump() {
    ALLOCATIONS.with(|c| c.set(c.get() + 1));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn hot_paths_do_not_allocate() {
    // The counter sees allocations (so a zero below means something).
    assert!(allocations_during(|| drop(std::hint::black_box(vec![1u8; 64]))) >= 1);

    // The simulator plant, its window ring, with a schedule change and
    // measurement noise: 100,000 samples (10 s of plant time).
    let cfg = Config::from_str_named(
        "t.toml",
        "[plant.sim]\nnoise_sd = \"0.3 mV\"\n[[plant.sim.schedule]]\nat = \"5 s\"\npreset = \"bursting\"\n",
    )
    .unwrap();
    let mut plant = SimPlant::new(&cfg.sim);
    let mut ring = WindowRing::new(40, 5);
    let (mut v, mut i) = (vec![0.0f32; 40], vec![0.0f32; 40]);
    let n = allocations_during(|| {
        for k in 0..100_000u32 {
            let s = plant.read().unwrap();
            if ring.push(s.v_mv, s.i_applied) {
                ring.snapshot(&mut v, &mut i);
            }
            plant.write(if k % 1000 < 10 { 1.0 } else { 0.0 }).unwrap();
        }
    });
    assert_eq!(
        n, 0,
        "the sample path allocated {n} times in 100,000 samples"
    );
    assert_eq!(plant.segment(), 1, "the scheduled change was applied");

    // The native forecaster: one window + 32 candidates, 1,000 times.
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch_lstm1_h16.onnx");
    let mut f = Forecaster::load(&model, 32, Engine::Native).unwrap();
    assert_eq!(f.engine(), Engine::Native);
    let (t_in, t_out) = (f.card().t_in, f.card().t_out);
    let v: Vec<f32> = (0..t_in).map(|t| -65.0 + (t as f32).sin()).collect();
    let i = vec![0.1f32; t_in];
    let plans = vec![0.5f32; 32 * t_out];
    let mut out = vec![0.0f32; 32 * t_out];
    let n = allocations_during(|| {
        for k in [1usize, 8, 32].iter().cycle().take(1000) {
            f.forecast(&v, &i, &plans[..k * t_out], *k, &mut out[..k * t_out])
                .unwrap();
        }
    });
    assert_eq!(
        n, 0,
        "the native forecast allocated {n} times in 1,000 calls"
    );
}

/// The whole control loop, as the daemon runs it: MPC with the shipped
/// model on the planner thread (lockstep, free clock), the safety limiter,
/// the record hand-off to the consumer thread, its latency histograms and
/// the interval-log hand-off. Setup allocates a fixed amount; the loop must
/// add nothing, so a 1 s run and an 11 s run (100,000 more ticks) allocate
/// exactly the same on the control thread. The planner, consumer and
/// writer threads may allocate: they are not real-time. An operator thread
/// arms, disarms and changes the objective through the loop's controls all
/// along (what the control API does), so those hand-offs are measured too.
#[test]
fn the_control_loop_does_not_allocate_in_steady_state() {
    use neurostimd::control::{self, RunSetup, LATENCY_TAGS};
    use neurostimd::report::IntervalLogThread;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The rate PI, and the spike-triggered pulses of `burst` (a spike
    // re-arms the pulse every few ms on the bursting cell).
    let pulses = "objective = \"burst\"\n";
    let pulses_more = "[pid]\nburst_pulse = \"-6 uA/cm2\"\n[plant.sim]\npreset = \"bursting\"\n";
    for (policy, control_more, more) in [
        // MPC with the spike reflex replacing its plans after each spike,
        // also fired ahead of each forecast spike (`spike_pulse_lead`), and
        // its plans low-passed (`plan_filter`).
        (
            "mpc",
            "",
            "[control.feedback]\nspike_pulse = \"-6 uA/cm2\"\nspike_pulse_lead = \"2 ms\"\n\
             plan_filter = \"5 ms\"\n[plant.sim]\n",
        ),
        ("pid", "", "[plant.sim]\n"),
        ("pid", pulses, pulses_more),
    ] {
        let count = |seconds: f64| {
            let text = format!(
                "[run]\nclock = \"free\"\n[control]\npolicy = \"{policy}\"\nmodel = \"{}\"\n\
                 {control_more}\
                 [control.realtime]\nmlockall = false\npriority = 0\ncpu = \"none\"\n\
                 {more}noise_sd = \"0.2 mV\"\n",
                root.join("models/ca1_lstm.onnx").display()
            );
            let cfg = Config::from_str_named("t.toml", &text).unwrap();
            let forecaster = (policy == "mpc").then(|| {
                Forecaster::load_source(
                    &cfg.control.model,
                    cfg.control.mpc.candidates,
                    Engine::Native,
                )
                .unwrap()
            });
            let dir = tempfile::tempdir().unwrap();
            let (writer, mut handoff) =
                IntervalLogThread::start(&dir.path().join("l.hlog"), LATENCY_TAGS, 4).unwrap();
            let mut plant = SimPlant::new(&cfg.sim);
            let stop = AtomicBool::new(false);
            // An operator steering the loop throughout (the control API's
            // path): disarm/arm and objective changes every 2 ms.
            let controls = Arc::new(LoopControls::new(true, cfg.control.objective));
            // One change is pending from the start: a fast free-clock run
            // can end before the operator thread is first scheduled.
            controls.post_objective(cfg.control.objective);
            let done = Arc::new(AtomicBool::new(false));
            let operator = {
                let (c, d, base) = (controls.clone(), done.clone(), cfg.control.objective);
                std::thread::spawn(move || {
                    let mut k = 0u64;
                    while !d.load(Ordering::Relaxed) {
                        k += 1;
                        c.set_armed(!k.is_multiple_of(4));
                        let mut o = base;
                        o.rate = RateSchedule::new(&[(0.0, 10.0 + (k % 10) as f64)]).unwrap();
                        c.post_objective(o);
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                })
            };
            let setup = RunSetup {
                controls: Some(controls.clone()),
                ..RunSetup::new(&cfg, Some(seconds), forecaster)
            };
            let mut result = None;
            let n = allocations_during(|| {
                result = Some(control::run(&mut plant, setup, &stop, Some(&mut handoff)).unwrap());
            });
            done.store(true, Ordering::Relaxed);
            operator.join().unwrap();
            let outcome = result.unwrap();
            let live = controls.status();
            assert!(live.finished && live.samples == outcome.summary.samples);
            assert!(live.objective_seq > 0, "no objective change was applied");
            handoff.finish(std::time::Duration::from_secs(seconds as u64 + 1));
            let intervals = writer.join().unwrap();
            (n, outcome.summary, intervals)
        };
        // A first run pays one-time per-thread lazy set-up (the channel
        // library's thread-local wait context) that later runs reuse.
        let _ = count(0.2);
        let (n1, s1, _) = count(1.0);
        let (n11, s11, i11) = count(11.0);
        assert_eq!((s1.samples, s11.samples), (10_001, 110_001));
        assert!(s11.disarmed_samples > 0 && s11.disarmed_samples < s11.samples);
        assert!(i11 >= 5, "{i11} intervals written");
        if policy == "mpc" {
            // The planner really ran: a plan every control period or spike.
            assert!(s11.plans_adopted > 5_000, "{} plans", s11.plans_adopted);
            assert_eq!(s11.plan_misses, 0);
            assert!(s11.charge_delivered_nc_cm2 > 0.0);
            // The reflex really replaced plans (the regular cell fires).
            let fed = s11.guard.as_ref().map_or(0, |g| g.feedback_samples);
            assert!(fed > 0, "the spike reflex never ran");
        }
        assert_eq!(
            n1,
            n11,
            "policy {policy}: the control thread allocated {} times in 100,000 extra ticks",
            n11 as i64 - n1 as i64
        );
    }
}

/// The serial plant's read/decode/command path against the emulated rig,
/// garbage and corrupted frames included: the control thread allocates the
/// same in a 0.5 s and a 2 s run (15,000 more samples through the link).
#[test]
fn the_serial_link_does_not_allocate_per_sample() {
    use neurostimd::control::{self, RunSetup};
    use neurostimd::plant::serial::SerialPlant;
    use neurostimd::rig::{self, Faults, RigOptions};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("rig");
    let mut opts = RigOptions::new(Config::defaults().sim);
    opts.link = Some(link.clone());
    opts.faults = Faults {
        corrupt: 0.01,
        garbage: 0.05,
        ..Faults::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let s = stop.clone();
    let rig =
        std::thread::spawn(move || rig::run(&opts, &s, |p| tx.send(p.to_path_buf()).unwrap()));
    rx.recv().unwrap();
    let text = format!(
        "[plant]\nkind = \"serial\"\n[plant.serial]\nport = \"{}\"\n[control]\npolicy = \"pid\"\n\
         [control.realtime]\nmlockall = false\npriority = 0\ncpu = \"none\"\n",
        link.display()
    );
    let cfg = Config::from_str_named("t.toml", &text).unwrap();
    let count = |seconds: f64| {
        let mut plant = SerialPlant::open(cfg.serial.clone()).unwrap();
        let setup = RunSetup::new(&cfg, Some(seconds), None);
        let stop = AtomicBool::new(false);
        let mut out = None;
        let n = allocations_during(|| {
            out = Some(control::run(&mut plant, setup, &stop, None).unwrap());
        });
        (n, out.unwrap().summary)
    };
    let _ = count(0.2);
    let (n1, s1) = count(0.5);
    let (n2, s2) = count(2.0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rig.join().unwrap().unwrap();
    assert_eq!((s1.samples, s2.samples), (5_001, 20_001));
    let errors = |s: &neurostimd::control::LoopSummary| {
        s.plant_report.as_ref().unwrap()["link"]["frames"]["bad_crc"]
            .as_u64()
            .unwrap()
    };
    assert!(errors(&s2) > 0, "the faults were exercised");
    assert_eq!(
        n1,
        n2,
        "the serial path allocated {} times in 15,000 extra samples",
        n2 as i64 - n1 as i64
    );
}
