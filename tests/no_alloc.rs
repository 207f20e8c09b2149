//! Real-time discipline, measured: the paths the control loop will call per
//! sample or per control period must not allocate. A counting global
//! allocator wraps the system one for this test binary only.

use neurostimd::config::Config;
use neurostimd::forecast::{Engine, Forecaster, WindowRing};
use neurostimd::plant::{Plant, SimPlant};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    f();
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

/// One test function: the counter is global, and tests in one binary run
/// on parallel threads.
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
