//! A first-order low-pass on the measured membrane potential, for the
//! clamps that act on every sample (the PID voltage clamp and MPC's
//! feedback between plans), and on MPC's plan current as the loop applies
//! it (`control.feedback.plan_filter`).
//!
//! Why: a proportional term on a raw sample turns the amplifier's
//! measurement noise (0.2 mV SD in the scenarios) straight into injected
//! current, and that current moves the true membrane. A time constant of
//! a millisecond or less removes most of that noise while adding a lag
//! far below the time scale of a subthreshold reference (the voltage
//! scenario's clamp was tuned to 1 ms; longer ones lag, docs/control.md).
//! Both clamps get the same filter so that neither is compared against a
//! handicapped other.

/// Exponential smoothing with time constant `tau_ms` at a sample period
/// `dt_ms`: `y += a·(x − y)`, `a = 1 − exp(−dt/τ)`. A time constant of 0
/// passes samples through unchanged. The first sample (or the first after
/// a non-finite one) primes the state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LowPass {
    a: f64,
    /// NaN until primed.
    y: f64,
}

impl LowPass {
    pub fn new(tau_ms: f64, dt_ms: f64) -> LowPass {
        let a = if tau_ms > 0.0 {
            1.0 - (-dt_ms / tau_ms).exp()
        } else {
            1.0
        };
        LowPass { a, y: f64::NAN }
    }

    /// Forget the state: the next sample primes it again.
    pub fn reset(&mut self) {
        self.y = f64::NAN;
    }

    /// Feed one sample; the filtered value.
    #[inline]
    pub fn push(&mut self, x: f64) -> f64 {
        // Exactly the sample (not y + (x − y), which rounds): with no
        // filter the clamps act on the raw sample bit for bit.
        if self.a >= 1.0 || !self.y.is_finite() {
            self.y = x;
        } else {
            self.y += self.a * (x - self.y);
        }
        self.y
    }
}

#[cfg(test)]
mod tests {
    use super::LowPass;

    #[test]
    fn zero_time_constant_passes_samples_through() {
        let mut f = LowPass::new(0.0, 0.1);
        for x in [1.0, -3.0, 7.5] {
            assert_eq!(f.push(x), x);
        }
    }

    #[test]
    fn a_step_reaches_63_percent_after_one_time_constant_and_noise_shrinks() {
        let mut f = LowPass::new(0.5, 0.1);
        f.push(0.0);
        let mut y = 0.0;
        for _ in 0..5 {
            y = f.push(1.0);
        }
        assert!((y - (1.0 - (-1.0f64).exp())).abs() < 1e-12, "{y}");
        // Alternating ±1 (the worst case of white noise): the output's
        // amplitude is a small fraction of the input's.
        let mut f = LowPass::new(0.5, 0.1);
        let mut top: f64 = 0.0;
        for k in 0..1000 {
            let y = f.push(if k % 2 == 0 { 1.0 } else { -1.0 });
            if k > 100 {
                top = top.max(y.abs());
            }
        }
        assert!(top < 0.12, "{top}");
    }
}
