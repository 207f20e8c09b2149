//! The baselines MPC must beat, run per sample inside the control loop.
//!
//! - `open`: a fixed waveform.
//! - PI on the firing rate: the classic closed-loop optogenetic rate
//!   controller (Newman et al. 2015): the rate is estimated by filtering the
//!   spike train with an exponential kernel and a PI law drives it to the
//!   target. Used for `rate` and, with the target set to the rate of single
//!   spikes to keep, for `burst`.
//! - PID on the membrane potential: a software voltage clamp toward the
//!   reference (`voltage`) or below the ceiling (`silence`).
//!
//! Outputs are requests: the safety limiter still applies. The integrators
//! stop integrating while the output is saturated at the amplitude limit
//! (conditional anti-windup), so a long saturation does not leave a large
//! stored error to unwind. Nothing here allocates.

use super::{Objective, ObjectiveKind, Waveform};
use serde::Serialize;

/// Gains of the baselines (validated `[pid]`), with the defaults tuned on
/// the scenarios of `neurostimd scenarios` (see `docs/control.md`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PidGains {
    /// Rate PI: µA/cm² per Hz of error.
    pub rate_kp: f64,
    /// Rate PI: µA/cm² per Hz·s of integrated error.
    pub rate_ki: f64,
    /// Time constant of the exponential rate estimate, ms.
    pub rate_tau_ms: f64,
    /// Voltage PID: µA/cm² per mV.
    pub voltage_kp: f64,
    /// µA/cm² per mV·ms.
    pub voltage_ki: f64,
    /// µA/cm² per mV/ms.
    pub voltage_kd: f64,
    /// `silence`: the PID holds V this far below the ceiling, mV.
    pub silence_margin_mv: f64,
    /// `burst`: the PI's target rate, Hz (the single spikes to keep).
    pub burst_target_hz: f64,
}

/// A per-sample baseline controller.
#[derive(Clone, Debug)]
pub enum Baseline {
    Off,
    Open(Waveform),
    RatePi(RatePi),
    VoltagePid(VoltagePid),
    /// A precomputed request sequence (calibration's excitation).
    Script(Script),
}

/// Requests computed before the run and played one per sample (the
/// calibration excitation): the loop only indexes them, so an excitation of
/// any shape costs it nothing and allocates nothing. Zero after the end.
#[derive(Clone, Debug)]
pub struct Script {
    values: std::sync::Arc<[f32]>,
    period_ms: f64,
}

impl Script {
    /// `values[k]` is requested over the sample at `k * period_ms`.
    pub fn new(values: std::sync::Arc<[f32]>, period_ms: f64) -> Script {
        Script { values, period_ms }
    }

    #[inline]
    pub fn at(&self, t_ms: f64) -> f64 {
        let k = (t_ms / self.period_ms).round();
        if k < 0.0 {
            return 0.0;
        }
        self.values.get(k as usize).map_or(0.0, |&x| f64::from(x))
    }
}

impl Baseline {
    /// The baseline `pid` means for `objective`.
    pub fn pid_for(objective: &Objective, gains: &PidGains, dt_ms: f64, limit: f64) -> Baseline {
        match objective.kind {
            ObjectiveKind::Rate | ObjectiveKind::Burst => {
                Baseline::RatePi(RatePi::new(*gains, *objective, dt_ms, limit))
            }
            ObjectiveKind::Voltage | ObjectiveKind::Silence => {
                Baseline::VoltagePid(VoltagePid::new(*gains, *objective, dt_ms, limit))
            }
        }
    }

    /// The request for the sample at `t_ms` with membrane `v_mv`; `spiked`
    /// if a spike was detected on this sample.
    #[inline]
    pub fn step(&mut self, t_ms: f64, v_mv: f64, spiked: bool) -> f64 {
        match self {
            Baseline::Off => 0.0,
            Baseline::Open(w) => w.at(t_ms),
            Baseline::RatePi(c) => c.step(t_ms, spiked),
            Baseline::VoltagePid(c) => c.step(t_ms, v_mv),
            Baseline::Script(s) => s.at(t_ms),
        }
    }
}

/// PI on an exponentially filtered spike train.
#[derive(Clone, Debug)]
pub struct RatePi {
    gains: PidGains,
    objective: Objective,
    dt_ms: f64,
    limit: f64,
    decay: f64,
    rate_hz: f64,
    integral: f64,
}

impl RatePi {
    pub fn new(gains: PidGains, objective: Objective, dt_ms: f64, limit: f64) -> RatePi {
        RatePi {
            gains,
            objective,
            dt_ms,
            limit,
            decay: (-dt_ms / gains.rate_tau_ms).exp(),
            rate_hz: 0.0,
            integral: 0.0,
        }
    }

    /// The current rate estimate, Hz.
    pub fn rate_hz(&self) -> f64 {
        self.rate_hz
    }

    #[inline]
    pub fn step(&mut self, t_ms: f64, spiked: bool) -> f64 {
        self.rate_hz *= self.decay;
        if spiked {
            // Unit-area kernel: each spike adds 1/τ (per ms → Hz).
            self.rate_hz += 1000.0 / self.gains.rate_tau_ms;
        }
        let target = match self.objective.kind {
            ObjectiveKind::Burst => self.gains.burst_target_hz,
            _ => self.objective.rate.at(t_ms),
        };
        let e = target - self.rate_hz;
        let g = &self.gains;
        let trial = self.integral + e * self.dt_ms / 1000.0;
        let u = g.rate_kp * e + g.rate_ki * trial;
        if u.abs() <= self.limit || u.signum() != e.signum() {
            self.integral = trial;
        }
        (g.rate_kp * e + g.rate_ki * self.integral).clamp(-self.limit, self.limit)
    }
}

/// PID on the membrane potential, derivative on the measurement (no kick
/// when the reference steps).
#[derive(Clone, Debug)]
pub struct VoltagePid {
    gains: PidGains,
    objective: Objective,
    dt_ms: f64,
    limit: f64,
    integral: f64,
    last_v: Option<f64>,
}

impl VoltagePid {
    pub fn new(gains: PidGains, objective: Objective, dt_ms: f64, limit: f64) -> VoltagePid {
        VoltagePid {
            gains,
            objective,
            dt_ms,
            limit,
            integral: 0.0,
            last_v: None,
        }
    }

    #[inline]
    pub fn step(&mut self, t_ms: f64, v_mv: f64) -> f64 {
        let g = &self.gains;
        let (reference, one_sided) = match self.objective.kind {
            ObjectiveKind::Silence => (self.objective.ceiling_mv - g.silence_margin_mv, true),
            _ => (self.objective.reference.at(t_ms), false),
        };
        let e = reference - v_mv;
        let dv = self.last_v.map_or(0.0, |l| (v_mv - l) / self.dt_ms);
        self.last_v = Some(v_mv);
        let trial = self.integral + e * self.dt_ms;
        let raw = g.voltage_kp * e + g.voltage_ki * trial - g.voltage_kd * dv;
        if raw.abs() <= self.limit || raw.signum() != e.signum() {
            self.integral = trial;
        }
        if one_sided {
            // Silence only ever needs hyperpolarising current.
            self.integral = self.integral.min(0.0);
        }
        let u = g.voltage_kp * e + g.voltage_ki * self.integral - g.voltage_kd * dv;
        let u = u.clamp(-self.limit, self.limit);
        if one_sided {
            u.min(0.0)
        } else {
            u
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::objective;

    fn gains() -> PidGains {
        PidGains {
            rate_kp: 0.05,
            rate_ki: 0.1,
            rate_tau_ms: 500.0,
            voltage_kp: 1.0,
            voltage_ki: 0.01,
            voltage_kd: 0.0,
            silence_margin_mv: 2.0,
            burst_target_hz: 5.0,
        }
    }

    #[test]
    fn rate_estimate_converges_to_the_spike_rate() {
        let mut pi = RatePi::new(gains(), objective(ObjectiveKind::Rate), 0.1, 10.0);
        // 10 Hz for 5 s: the estimate hovers around 10 Hz.
        for k in 0..50_000u32 {
            pi.step(k as f64 * 0.1, k % 1000 == 0);
        }
        assert!((pi.rate_hz() - 10.0).abs() < 2.5, "{}", pi.rate_hz());
    }

    #[test]
    fn rate_pi_pushes_toward_the_target_and_respects_the_limit() {
        let mut pi = RatePi::new(gains(), objective(ObjectiveKind::Rate), 0.1, 3.0);
        // No spikes at all: the output rises (depolarise) and saturates.
        let mut u = 0.0;
        for k in 0..200_000u32 {
            u = pi.step(k as f64 * 0.1, false);
        }
        assert!((u - 3.0).abs() < 1e-3, "{u}");
        // Anti-windup: the integral stops at what saturation needs.
        let stored = pi.integral;
        assert!(stored * 0.1 <= 3.0 + 1e-9, "integral {stored} wound up");
    }

    #[test]
    fn voltage_pid_drives_v_toward_the_reference() {
        let mut pid = VoltagePid::new(gains(), objective(ObjectiveKind::Voltage), 0.1, 10.0);
        assert!(pid.step(0.0, -70.0) > 0.0);
        assert!(pid.step(0.1, -60.0) < 0.0);
        let mut s = VoltagePid::new(gains(), objective(ObjectiveKind::Silence), 0.1, 10.0);
        // Silence never depolarises.
        assert_eq!(s.step(0.0, -80.0), 0.0);
        assert!(s.step(0.1, -55.0) < 0.0);
    }
}
