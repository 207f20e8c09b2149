//! The planning budget: can this forecaster, on this machine, produce a
//! plan in time? Checked before a paced loop starts, because a planner that
//! cannot keep up does not fail loudly: every plan arrives late, the limiter
//! zeroes each miss, and the run delivers no stimulation while looking
//! healthy (a 2-layer H48 PyTorch export on tract: 8.7 ms per forecast
//! against a 1.5 ms planning delay, 510 plans and 510 misses in 4 s).

use crate::forecast::{ForecastError, Forecaster};

/// This thread's CPU time, ms. The budget asks what the engine costs, not
/// how busy the machine is right now: CPU time leaves out the time other
/// processes held the core (a loaded build machine measured 4.4 ms of wall
/// time for a 0.3 ms forecast). The planner's real latency under load is
/// watched during the run (plan misses, `plan_latency`).
fn thread_cpu_ms() -> f64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid out-pointer to a timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
    }
    #[cfg(not(target_os = "linux"))]
    {
        use std::sync::OnceLock;
        static T0: OnceLock<std::time::Instant> = OnceLock::new();
        T0.get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs_f64()
            * 1e3
    }
}

/// Fraction of the planning deadline one forecast batch may take.
pub const MARGIN: f64 = 0.8;
/// Timed repetitions per batch size.
const REPS: usize = 25;

/// What the check measured (CPU time of the calling thread).
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    /// Candidates per forecast batch (`control.mpc.candidates`).
    pub candidates: usize,
    /// Fastest and median time of one batch of `candidates`, ms.
    pub fastest_ms: f64,
    pub median_ms: f64,
    /// Fastest time of a batch of one, ms.
    pub single_ms: f64,
    /// A plan must be ready this soon after its snapshot, ms:
    /// min(`control.compute_delay`, `control.period`).
    pub deadline_ms: f64,
    /// The engine timed ("native" or "tract").
    pub engine: &'static str,
}

impl Budget {
    /// Whether one batch fits the deadline with the margin. The fastest
    /// time is the engine's capability; machine load shows up later as
    /// plan misses, which the service watches.
    pub fn fits(&self) -> bool {
        self.fastest_ms <= MARGIN * self.deadline_ms
    }

    /// The most candidates that would fit (per-candidate cost from the
    /// batch of one and the full batch), if any.
    pub fn candidates_that_fit(&self) -> Option<usize> {
        let room = MARGIN * self.deadline_ms;
        if self.single_ms > room {
            return None;
        }
        let per = if self.candidates > 1 {
            ((self.fastest_ms - self.single_ms) / (self.candidates - 1) as f64).max(1e-6)
        } else {
            self.single_ms
        };
        Some(1 + ((room - self.single_ms) / per).floor() as usize)
    }

    /// Why the run cannot start, and what would fit.
    pub fn refusal(&self) -> String {
        let fit = match self.candidates_that_fit() {
            Some(k) => format!(
                "control.mpc.candidates = {k} would fit; so would a longer control.compute_delay (>= {:.2} ms) with control.period to match",
                self.fastest_ms / MARGIN
            ),
            None => format!(
                "even one candidate takes {:.2} ms: use a faster model (the native engine takes the per-step linear head), a control.compute_delay of at least {:.2} ms with control.period to match, or --policy pid",
                self.single_ms,
                self.single_ms / MARGIN
            ),
        };
        format!(
            "planning budget: one forecast of {} candidates takes {:.2} ms of CPU on the {} engine (fastest of {REPS}; median {:.2} ms), but a plan must be ready within {:.2} ms (min of control.compute_delay and control.period), with {:.0}% margin; {fit}",
            self.candidates,
            self.fastest_ms,
            self.engine,
            self.median_ms,
            self.deadline_ms,
            MARGIN * 100.0
        )
    }
}

/// Time `forecaster` on batches of 1 and `candidates` on a neutral window
/// (resting membrane, no stimulation). Allocates: call before the loop.
pub fn measure(
    forecaster: &mut Forecaster,
    candidates: usize,
    deadline_ms: f64,
) -> Result<Budget, ForecastError> {
    let card = forecaster.card().clone();
    let (t_in, t_out) = (card.t_in, card.t_out);
    let window_v = vec![-65.0f32; t_in];
    let window_i = vec![0.0f32; t_in];
    let k = candidates.max(1);
    let plans: Vec<f32> = (0..k * t_out)
        .map(|i| ((i % 7) as f32 - 3.0) * 0.5)
        .collect();
    let mut out = vec![0.0f32; k * t_out];
    let mut time = |k: usize| -> Result<Vec<f64>, ForecastError> {
        let mut ms = Vec::with_capacity(REPS);
        // One untimed call: first-use costs are not the steady state.
        forecaster.forecast(
            &window_v,
            &window_i,
            &plans[..k * t_out],
            k,
            &mut out[..k * t_out],
        )?;
        for _ in 0..REPS {
            let t0 = thread_cpu_ms();
            forecaster.forecast(
                &window_v,
                &window_i,
                &plans[..k * t_out],
                k,
                &mut out[..k * t_out],
            )?;
            ms.push(thread_cpu_ms() - t0);
        }
        ms.sort_by(f64::total_cmp);
        Ok(ms)
    };
    let single = time(1)?;
    let full = time(k)?;
    Ok(Budget {
        candidates: k,
        fastest_ms: full[0],
        median_ms: full[full.len() / 2],
        single_ms: single[0],
        deadline_ms,
        engine: match forecaster.engine() {
            crate::forecast::Engine::Native => "native",
            crate::forecast::Engine::Tract => "tract",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(single: f64, full: f64) -> Budget {
        Budget {
            candidates: 32,
            fastest_ms: full,
            median_ms: full,
            single_ms: single,
            deadline_ms: 1.5,
            engine: "tract",
        }
    }

    #[test]
    fn a_slow_model_is_refused_with_what_would_fit() {
        let b = budget(0.3, 8.7);
        assert!(!b.fits());
        // (1.2 - 0.3) / ((8.7 - 0.3) / 31) = 3.3: 4 candidates fit.
        assert_eq!(b.candidates_that_fit(), Some(4));
        let m = b.refusal();
        assert!(m.contains("8.70 ms") && m.contains("1.50 ms"), "{m}");
        assert!(m.contains("control.mpc.candidates = 4"), "{m}");
        let b = budget(2.0, 9.0);
        assert_eq!(b.candidates_that_fit(), None);
        assert!(b.refusal().contains("--policy pid"));
    }

    #[test]
    fn a_fast_model_fits() {
        assert!(budget(0.02, 0.3).fits());
    }
}
