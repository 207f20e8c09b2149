//! Receiving from a hand-off without ever being woken by its sender.
//!
//! crossbeam's bounded channels wake a parked receiver from inside the
//! sender's `try_send`: a mutex and a futex system call. When the sender is
//! the real-time control thread, that is a lock and a system call on the hot
//! path every time the other side was waiting. So the threads that receive
//! from the loop (the planner, the record consumer, the interval-log writer)
//! never park on those channels: they poll with short naps, and the loop's
//! `try_send` only ever finds nobody waiting. `tests/rt_syscalls.rs` checks
//! the result: between its first and last sleep the control thread makes no
//! system call but its clock sleep.

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

/// The sender is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnected;

/// The next item, napping `nap` between looks; `Err` once the sender is
/// gone and the channel is empty.
pub fn recv<T>(rx: &Receiver<T>, nap: Duration) -> Result<T, Disconnected> {
    loop {
        match rx.try_recv() {
            Ok(v) => return Ok(v),
            Err(TryRecvError::Disconnected) => return Err(Disconnected),
            Err(TryRecvError::Empty) => std::thread::sleep(nap),
        }
    }
}

/// [`recv`], giving up after `timeout`.
pub fn recv_timeout<T>(
    rx: &Receiver<T>,
    nap: Duration,
    timeout: Duration,
) -> Result<T, RecvTimeoutError> {
    let t0 = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(v) => return Ok(v),
            Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) if t0.elapsed() >= timeout => {
                return Err(RecvTimeoutError::Timeout)
            }
            Err(TryRecvError::Empty) => std::thread::sleep(nap),
        }
    }
}

/// Let this thread's timers fire on time (Linux batches a thread's
/// wake-ups up to its timer slack, 50 µs by default): a poller's naps
/// then last what they ask for.
pub fn tight_timers() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only the
    // calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_arrive_and_a_gone_sender_ends_the_wait() {
        let (tx, rx) = crossbeam_channel::bounded(2);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            tx.try_send(7).unwrap();
        });
        assert_eq!(recv(&rx, Duration::from_micros(50)), Ok(7));
        t.join().unwrap();
        assert_eq!(recv(&rx, Duration::from_micros(50)), Err(Disconnected));
        let (_tx, rx) = crossbeam_channel::bounded::<u8>(1);
        assert_eq!(
            recv_timeout(&rx, Duration::from_micros(50), Duration::from_millis(2)),
            Err(RecvTimeoutError::Timeout)
        );
    }
}
