//! The sample loop.
//!
//! Today this runs a plant with stimulation held at zero (the `off` policy),
//! paced by absolute-time sleeps or free-running, and measures wake-up jitter
//! the way cyclictest does (actual wake − intended wake). The forecaster,
//! planner, safety limiter and recorder plug into this loop as they land
//! (DESIGN §1); the loop already keeps to the real-time rules they need: no
//! allocation, no locks and no I/O per sample.

use crate::config::Clock;
use crate::neuron::spikes::{SpikeDetector, DEFAULT_THRESHOLD_MV};
use crate::plant::{Plant, PlantError};
use crate::report::{new_histogram, IntervalHandoff};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How to run the loop.
#[derive(Clone, Copy, Debug)]
pub struct LoopOptions {
    pub clock: Clock,
    /// Plant time to run, s; `None` runs until `stop` is set.
    pub duration_s: Option<f64>,
}

/// Percentiles of one latency distribution, µs.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    /// From a histogram recorded in nanoseconds.
    pub fn from_ns(h: &Histogram<u64>) -> Percentiles {
        let us = |v: u64| v as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// Why the loop ended.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    DurationReached,
    Signal,
    PlantEnded,
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct LoopSummary {
    pub plant: &'static str,
    pub samples: u64,
    pub plant_time_s: f64,
    pub wall_time_s: f64,
    pub spikes: u64,
    /// Wake-up jitter (paced clock only).
    pub wakeup_jitter: Option<Percentiles>,
    /// Sample arrival to command written.
    pub sample_to_command: Percentiles,
    /// Samples whose wake-up came more than one sample period late.
    pub overruns: u64,
    pub stop: StopReason,
}

/// Linux lets a thread's timers fire up to its "timer slack" late (50 µs by
/// default) so wake-ups can be batched; a 10 kHz loop cannot afford that.
fn reduce_timer_slack() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only the
    // calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// CLOCK_MONOTONIC now, ns (the clock `Instant` uses on Linux).
fn monotonic_ns() -> u64 {
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
fn sleep_until(mono_ns: u64, deadline: Instant) {
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

/// Tags of the loop's latency histograms, in [`LoopHistograms`] order (and
/// in the interval log).
pub const LATENCY_TAGS: &[&str] = &["wakeup_jitter", "sample_to_command"];

/// Whole-run latency histograms (ns), for `.hgrm` reports.
pub struct LoopHistograms {
    /// Actual − intended wake-up (paced clock only).
    pub wakeup_jitter: Histogram<u64>,
    /// From the sample's arrival (read returned) to the command written.
    pub sample_to_command: Histogram<u64>,
}

/// Run `plant` with zero stimulation until the duration is reached, `stop`
/// is set, or the plant ends. Plant faults end the run with an error after
/// a final zero command. With `intervals`, per-second histograms are handed
/// to its writer thread (never blocking, never allocating).
pub fn run_off(
    plant: &mut dyn Plant,
    opts: LoopOptions,
    stop: &AtomicBool,
    mut intervals: Option<&mut IntervalHandoff>,
) -> Result<(LoopSummary, LoopHistograms), PlantError> {
    let period_ms = plant.sample_period_ms();
    let period = Duration::from_secs_f64(period_ms / 1000.0);
    let period_ns = period.as_nanos() as u64;
    let max_samples = opts
        .duration_s
        .map(|d| (d * 1000.0 / period_ms).round() as u64 + 1);
    let per_interval = ((1000.0 / period_ms).round() as u64).max(1);
    let mut hist = LoopHistograms {
        wakeup_jitter: new_histogram(),
        sample_to_command: new_histogram(),
    };
    let mut detector = SpikeDetector::new(DEFAULT_THRESHOLD_MV);
    let mut spikes = 0u64;
    let mut overruns = 0u64;
    let mut samples = 0u64;
    let mut last_t = 0.0;
    let paced = opts.clock == Clock::Paced;
    if paced {
        reduce_timer_slack();
    }
    let start = Instant::now();
    let start_mono = monotonic_ns();
    let mut reason = StopReason::Signal;
    loop {
        if max_samples.is_some_and(|m| samples >= m) {
            reason = StopReason::DurationReached;
            break;
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut jitter_ns = None;
        if paced {
            let deadline = start + Duration::from_nanos(period_ns * samples);
            sleep_until(start_mono + period_ns * samples, deadline);
            let late = Instant::now().saturating_duration_since(deadline);
            jitter_ns = Some(late.as_nanos().max(1) as u64);
            if late > period {
                overruns += 1;
            }
        }
        let s = match plant.read() {
            Ok(s) => s,
            Err(PlantError::Ended) => {
                reason = StopReason::PlantEnded;
                break;
            }
            Err(e) => {
                let _ = plant.write(0.0);
                return Err(e);
            }
        };
        let arrived = Instant::now();
        if detector.push(s.t_ms, s.v_mv).is_some() {
            spikes += 1;
        }
        last_t = s.t_ms;
        plant.write(0.0)?;
        let latency = arrived.elapsed().as_nanos().max(1) as u64;
        hist.sample_to_command.saturating_record(latency);
        if let Some(j) = jitter_ns {
            hist.wakeup_jitter.saturating_record(j);
        }
        if let Some(iv) = intervals.as_deref_mut() {
            let set = iv.current();
            if let Some(j) = jitter_ns {
                set.histograms[0].saturating_record(j);
            }
            set.histograms[1].saturating_record(latency);
            if (samples + 1).is_multiple_of(per_interval) {
                iv.rotate(start.elapsed());
            }
        }
        samples += 1;
    }
    let _ = plant.write(0.0);
    let summary = LoopSummary {
        plant: plant.kind(),
        samples,
        plant_time_s: last_t / 1000.0,
        wall_time_s: start.elapsed().as_secs_f64(),
        spikes,
        wakeup_jitter: paced.then(|| Percentiles::from_ns(&hist.wakeup_jitter)),
        sample_to_command: Percentiles::from_ns(&hist.sample_to_command),
        overruns,
        stop: reason,
    };
    Ok((summary, hist))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::plant::SimPlant;

    #[test]
    fn free_run_stops_at_duration_and_counts_spikes() {
        let mut p = SimPlant::new(&Config::defaults().sim);
        let stop = AtomicBool::new(false);
        let (s, h) = run_off(
            &mut p,
            LoopOptions {
                clock: Clock::Free,
                duration_s: Some(0.2),
            },
            &stop,
            None,
        )
        .unwrap();
        assert_eq!(h.sample_to_command.len(), 2001);
        assert!(h.wakeup_jitter.is_empty(), "free clock: no wake-ups");
        assert_eq!(s.samples, 2001);
        assert_eq!(s.stop, StopReason::DurationReached);
        // Reference train: spikes at 32.2, 60.4 and 156.6 ms.
        assert_eq!(s.spikes, 3);
    }

    #[test]
    fn stop_flag_ends_the_run() {
        let mut p = SimPlant::new(&Config::defaults().sim);
        let stop = AtomicBool::new(true);
        let (s, _) = run_off(
            &mut p,
            LoopOptions {
                clock: Clock::Paced,
                duration_s: None,
            },
            &stop,
            None,
        )
        .unwrap();
        assert_eq!((s.samples, s.stop), (0, StopReason::Signal));
    }
}
