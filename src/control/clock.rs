//! Time on the control thread: absolute-deadline sleeps (cyclictest's
//! method), the monotonic clock they are measured against, and the free
//! clock's wait for the planner that never parks the thread.

use std::time::{Duration, Instant};

/// Linux lets a thread's timers fire up to its "timer slack" late (50 µs by
/// default) so wake-ups can be batched; a 10 kHz loop cannot afford that.
pub(crate) fn reduce_timer_slack() {
    crate::poll::tight_timers();
}

/// CLOCK_MONOTONIC now, ns (the clock `Instant` uses on Linux).
pub(crate) fn monotonic_ns() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid out-pointer to a timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// Sleep until an absolute CLOCK_MONOTONIC time (cyclictest's method: no
/// drift from computing relative sleeps); `deadline` is the same moment as
/// an `Instant`, for other platforms.
pub(crate) fn sleep_until(mono_ns: u64, deadline: Instant) {
    #[cfg(target_os = "linux")]
    {
        let _ = deadline;
        let ts = libc::timespec {
            tv_sec: (mono_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (mono_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: valid timespec; a null remainder is allowed with
        // TIMER_ABSTIME. EINTR just ends the sleep early (measured as
        // negative lateness, recorded as 1 ns).
        unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = mono_ns;
        let now = Instant::now();
        if deadline > now {
            std::thread::sleep(deadline - now);
        }
    }
}

/// Free clock: wait for the next item (a plan, an empty record block)
/// without the channel's blocking machinery (which parks the thread and may
/// allocate its wait context lazily): spin briefly, then yield, then nap.
/// `None` if the other side is gone.
pub(crate) fn await_item<T>(rx: &crossbeam_channel::Receiver<T>) -> Option<T> {
    let mut tries = 0u32;
    loop {
        match rx.try_recv() {
            Ok(p) => return Some(p),
            Err(crossbeam_channel::TryRecvError::Disconnected) => return None,
            Err(crossbeam_channel::TryRecvError::Empty) => {}
        }
        tries += 1;
        if tries < 64 {
            std::hint::spin_loop();
        } else if tries < 1024 {
            std::thread::yield_now();
        } else {
            // A SCHED_FIFO loop sharing a CPU with the other thread must
            // let it run: yielding only yields to equal priority.
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}

/// Free clock: wait (spin, yield, then naps) until `ready`, or give up
/// after about ten seconds (a consumer that died must not hang the run).
pub(crate) fn await_condition(ready: impl Fn() -> bool) {
    let mut tries = 0u32;
    let t0 = std::time::Instant::now();
    while !ready() {
        tries += 1;
        if tries < 64 {
            std::hint::spin_loop();
        } else if tries < 1024 {
            std::thread::yield_now();
        } else {
            if t0.elapsed() > Duration::from_secs(10) {
                return;
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}
