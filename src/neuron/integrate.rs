//! Integrators for the CA1 model.
//!
//! - [`Rk4`]: classical fixed-step Runge–Kutta with the exact rate functions,
//!   the scheme of the reference data (RK4 at 0.01 ms reproduces the
//!   reference spike times to about 1e-6 ms). It is the yardstick.
//! - [`Dopri5`]: Dormand–Prince 5(4) with error control and tabulated rates,
//!   the default. A CA1 cell spends >95 % of its time between spikes, where
//!   the dynamics are slow; an adaptive step takes the whole sample period
//!   there and shrinks only on the upstroke, which is where a fixed step
//!   wastes its work.
//!
//! Both advance the state over one interval with a right-hand side that is
//! fixed for the interval (the plant holds the command for one sample
//! period and builds the closure with it) and report
//! every accepted step to a callback, so spikes can be timed at integrator
//! resolution. Neither allocates.

use super::{State, N_STATES};

/// Which integrator to run, with its parameters (validated by the config).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Method {
    /// Fixed step `dt_ms`.
    Rk4 { dt_ms: f64 },
    /// Adaptive step: relative tolerance `tol`, step never above `max_dt_ms`.
    Dopri5 { tol: f64, max_dt_ms: f64 },
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Rk4 { .. } => "rk4",
            Method::Dopri5 { .. } => "dopri5",
        }
    }
}

#[inline(always)]
fn axpy(y: &State, h: f64, terms: &[(f64, &State)]) -> State {
    let mut out = *y;
    for (c, k) in terms {
        let hc = h * c;
        for i in 0..N_STATES {
            out[i] += hc * k[i];
        }
    }
    out
}

/// Classical RK4 with a fixed step. An interval that is not a whole number
/// of steps is split into equal steps no longer than `dt_ms`.
#[derive(Clone, Debug)]
pub struct Rk4 {
    pub dt_ms: f64,
}

impl Rk4 {
    /// Advance `y` from `t0` to `t1` (ms) with right-hand side `f`.
    #[inline]
    pub fn advance(
        &mut self,
        f: impl Fn(&State) -> State,
        y: &mut State,
        t0: f64,
        t1: f64,
        mut on_step: impl FnMut(f64, &State),
    ) {
        let span = t1 - t0;
        let n = ((span / self.dt_ms) - 1e-9).ceil().max(1.0) as usize;
        let h = span / n as f64;
        for s in 0..n {
            let k1 = f(y);
            let k2 = f(&axpy(y, 0.5 * h, &[(1.0, &k1)]));
            let k3 = f(&axpy(y, 0.5 * h, &[(1.0, &k2)]));
            let k4 = f(&axpy(y, h, &[(1.0, &k3)]));
            for i in 0..N_STATES {
                y[i] += h / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]);
            }
            let t = if s + 1 == n {
                t1
            } else {
                t0 + (s + 1) as f64 * h
            };
            on_step(t, y);
        }
    }
}

// Dormand–Prince 5(4) tableau.
const A21: f64 = 1.0 / 5.0;
const A31: f64 = 3.0 / 40.0;
const A32: f64 = 9.0 / 40.0;
const A41: f64 = 44.0 / 45.0;
const A42: f64 = -56.0 / 15.0;
const A43: f64 = 32.0 / 9.0;
const A51: f64 = 19372.0 / 6561.0;
const A52: f64 = -25360.0 / 2187.0;
const A53: f64 = 64448.0 / 6561.0;
const A54: f64 = -212.0 / 729.0;
const A61: f64 = 9017.0 / 3168.0;
const A62: f64 = -355.0 / 33.0;
const A63: f64 = 46732.0 / 5247.0;
const A64: f64 = 49.0 / 176.0;
const A65: f64 = -5103.0 / 18656.0;
const B1: f64 = 35.0 / 384.0;
const B3: f64 = 500.0 / 1113.0;
const B4: f64 = 125.0 / 192.0;
const B5: f64 = -2187.0 / 6784.0;
const B6: f64 = 11.0 / 84.0;
const E1: f64 = 71.0 / 57600.0;
const E3: f64 = -71.0 / 16695.0;
const E4: f64 = 71.0 / 1920.0;
const E5: f64 = -17253.0 / 339200.0;
const E6: f64 = 22.0 / 525.0;
const E7: f64 = -1.0 / 40.0;

/// Typical magnitude of each state, for the absolute part of the error
/// tolerance: V in tens of mV, gates in [0, 1], q and Ca small.
const SCALE: State = [10.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1e-3, 1e-2];

/// Adaptive Dormand–Prince 5(4) with first-same-as-last reuse.
#[derive(Clone, Debug)]
pub struct Dopri5 {
    pub tol: f64,
    pub max_dt_ms: f64,
    /// Step the controller proposes next; carried across calls so a quiet
    /// stretch does not restart from a tiny step every sample.
    h: f64,
    /// Accepted and rejected steps since construction (for benchmarks).
    pub accepted: u64,
    pub rejected: u64,
}

impl Dopri5 {
    pub fn new(tol: f64, max_dt_ms: f64) -> Dopri5 {
        Dopri5 {
            tol,
            max_dt_ms,
            h: max_dt_ms.min(0.01),
            accepted: 0,
            rejected: 0,
        }
    }

    /// Advance `y` from `t0` to `t1` (ms) with right-hand side `f`; lands
    /// exactly on `t1`.
    #[inline]
    pub fn advance(
        &mut self,
        f: impl Fn(&State) -> State,
        y: &mut State,
        t0: f64,
        t1: f64,
        mut on_step: impl FnMut(f64, &State),
    ) {
        let mut t = t0;
        let mut k1 = f(y);
        let min_h = 1e-9;
        while t < t1 {
            let remaining = t1 - t;
            let mut last = false;
            let mut h = self.h.min(self.max_dt_ms);
            if h >= remaining * (1.0 - 1e-12) {
                h = remaining;
                last = true;
            }
            loop {
                let k2 = f(&axpy(y, h, &[(A21, &k1)]));
                let k3 = f(&axpy(y, h, &[(A31, &k1), (A32, &k2)]));
                let k4 = f(&axpy(y, h, &[(A41, &k1), (A42, &k2), (A43, &k3)]));
                let k5 = f(&axpy(
                    y,
                    h,
                    &[(A51, &k1), (A52, &k2), (A53, &k3), (A54, &k4)],
                ));
                let k6 = f(&axpy(
                    y,
                    h,
                    &[(A61, &k1), (A62, &k2), (A63, &k3), (A64, &k4), (A65, &k5)],
                ));
                let y_new = axpy(
                    y,
                    h,
                    &[(B1, &k1), (B3, &k3), (B4, &k4), (B5, &k5), (B6, &k6)],
                );
                let k7 = f(&y_new);
                let mut err2 = 0.0;
                for i in 0..N_STATES {
                    let e = h
                        * (E1 * k1[i]
                            + E3 * k3[i]
                            + E4 * k4[i]
                            + E5 * k5[i]
                            + E6 * k6[i]
                            + E7 * k7[i]);
                    let sc = self.tol * (SCALE[i] + y[i].abs().max(y_new[i].abs()));
                    err2 += (e / sc) * (e / sc);
                }
                let err = (err2 / N_STATES as f64).sqrt();
                if err <= 1.0 || h <= min_h || !err.is_finite() {
                    // Accept. A non-finite error (NaN state) is accepted so
                    // the NaN reaches the caller, who treats it as a fault,
                    // instead of shrinking the step forever.
                    let fac = if err > 0.0 && err.is_finite() {
                        (0.9 * err.powf(-0.2)).clamp(0.2, 5.0)
                    } else {
                        5.0
                    };
                    // A step cut short to land on t1 says nothing about
                    // how large the next one may be: keep the proposal.
                    if !last || h >= self.h {
                        self.h = (h * fac).min(self.max_dt_ms);
                    }
                    t = if last { t1 } else { t + h };
                    *y = y_new;
                    k1 = k7;
                    self.accepted += 1;
                    on_step(t, y);
                    break;
                }
                self.rejected += 1;
                h *= (0.9 * err.powf(-0.2)).clamp(0.2, 1.0);
                last = false;
                self.h = h;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        derivatives_with, table::RateTable, ExactRates, Params, RateSource, INITIAL_STATE, V,
    };
    use super::*;

    fn run_rk4(dt: f64, until: f64) -> State {
        let p = Params::default();
        let mut y = INITIAL_STATE;
        let mut rk = Rk4 { dt_ms: dt };
        let r = ExactRates { theta_p: p.theta_p };
        let mut t = 0.0;
        while t < until - 1e-9 {
            rk.advance(
                |y| derivatives_with(&p, &r.rates(y[V]), y, 0.0),
                &mut y,
                t,
                t + 0.1,
                |_, _| {},
            );
            t += 0.1;
        }
        y
    }

    #[test]
    fn rk4_converges_at_fourth_order_through_a_spike() {
        // The first spike peaks near 32.5 ms; at 33 ms V falls steeply, so
        // timing errors show: they should fall ~16x per halving of dt.
        let fine = run_rk4(0.003125, 33.0);
        let e1 = (run_rk4(0.05, 33.0)[V] - fine[V]).abs();
        let e2 = (run_rk4(0.025, 33.0)[V] - fine[V]).abs();
        assert!(
            e1 / e2 > 10.0,
            "error ratio {} (e1 {e1:e}, e2 {e2:e})",
            e1 / e2
        );
    }

    #[test]
    fn dopri5_lands_exactly_on_interval_ends_and_is_deterministic() {
        let p = Params::default();
        let table = RateTable::new(p.theta_p);
        let run = || {
            let mut d = Dopri5::new(1e-6, 0.1);
            let mut y = INITIAL_STATE;
            let mut last_t = 0.0;
            for k in 0..500 {
                let (t0, t1) = (k as f64 * 0.1, (k + 1) as f64 * 0.1);
                d.advance(
                    |y| derivatives_with(&p, &table.rates(y[V]), y, 0.0),
                    &mut y,
                    t0,
                    t1,
                    |t, _| last_t = t,
                );
                assert_eq!(last_t, t1);
            }
            y
        };
        assert_eq!(run(), run());
    }
}
