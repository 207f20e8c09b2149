//! One simulated second of the CA1 plant, per integrator and preset. The
//! real-time factor is 1 s divided by the reported time per iteration.
//! Plant construction (rate tables) happens outside the timed closure.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use neurostimd::config::Config;
use neurostimd::plant::{Plant, SimPlant};
use std::hint::black_box;

fn one_second(c: &mut Criterion) {
    let mut group = c.benchmark_group("simulate_1s");
    group.sample_size(20);
    for (name, toml) in [
        ("dopri5_regular", ""),
        ("dopri5_bursting", "[plant.sim]\npreset = \"bursting\"\n"),
        (
            "rk4_0.01ms_regular",
            "[plant.sim]\nintegrator = \"rk4\"\ndt = 0.01\n",
        ),
        (
            "rk4_0.01ms_bursting",
            "[plant.sim]\nintegrator = \"rk4\"\ndt = 0.01\npreset = \"bursting\"\n",
        ),
    ] {
        let cfg = Config::from_str_named("bench.toml", toml).unwrap().sim;
        let samples = (1000.0 / cfg.sample_period_ms) as usize;
        group.bench_function(name, |b| {
            b.iter_batched(
                || SimPlant::new(&cfg),
                |mut plant| {
                    let mut v = 0.0;
                    for _ in 0..samples {
                        v += plant.read().unwrap().v_mv;
                        plant.write(0.0).unwrap();
                    }
                    black_box(v)
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, one_second);
criterion_main!(benches);
