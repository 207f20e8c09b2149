//! A process that runs its control loop more than once (`neurostimd
//! scenarios`, one loop per seed and policy; the service, one per session)
//! must pin every loop where it pinned the first. The first loop moves the
//! process's other threads off its CPU, so later threads start with one CPU
//! fewer; a second loop that asked its own thread for "the last CPU" found
//! CPU 0 and pinned its SCHED_FIFO loop onto the CPU its planner and every
//! other thread had been moved to (scenario runs took ~40x longer, idle on
//! the other core). Its own test binary: the process-wide affinity it
//! changes must not leak into other tests.

use neurostimd::config::{CpuChoice, RealtimeConfig};
use neurostimd::rt;

fn loop_settings() -> RealtimeConfig {
    RealtimeConfig {
        mlockall: false,
        priority: 0,
        cpu: CpuChoice::Last,
        prefault_kib: 64,
        cpu_dma_latency_us: None,
    }
}

/// What a loop thread obtains: apply the settings on a fresh thread spawned
/// from the test's thread, as the control module spawns its loop.
fn run_a_loop() -> Option<usize> {
    std::thread::spawn(|| rt::apply(&loop_settings()).0.pinned_cpu)
        .join()
        .unwrap()
}

#[test]
fn every_loop_in_the_process_pins_the_same_last_cpu() {
    let allowed = rt::allowed_cpus().to_vec();
    let last = *allowed.last().unwrap();
    let first = run_a_loop();
    assert_eq!(first, Some(last), "the first loop pins the last CPU");
    // The test's thread was moved off `last` by the first loop (if it had
    // another CPU); threads it spawns now inherit that narrower set.
    let second = run_a_loop();
    assert_eq!(second, first, "the second loop pins where the first did");
    assert_eq!(rt::allowed_cpus(), allowed.as_slice());
    // The planner's rule for keeping off the loop's CPU still finds the
    // other CPUs (none on a one-CPU machine).
    let off = std::thread::spawn(move || rt::exclude_cpu(last))
        .join()
        .unwrap();
    assert_eq!(off, allowed.len() > 1);
}
