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
//! - The rate PI may add a feed-forward term (`pid.rate_ff`): a static
//!   map from target rate to the current that holds it, identified on
//!   tuning seeds, so that the PI only corrects around it; with a target
//!   that steps every second or two, waiting for an integrator to find the
//!   new level is most of the PI's error.
//! - `timing`: what labs do to place spikes, open-loop pulses: one
//!   rectangular pulse per target spike, starting `pulse_lead` before it,
//!   on top of a constant holding current (negative: keeps a spontaneously
//!   firing cell quiet between targets).
//! - Spike-triggered pulses for `burst` (`pid.burst_pulse` non-zero, in
//!   place of the rate PI): what a lab tries against a burst, one pulse of
//!   `burst_pulse` (negative: hyperpolarising) for `burst_pulse_width`,
//!   starting `burst_pulse_delay` after each detected spike, over a holding
//!   current `burst_hold`. It aims at the depolarising after-potential that
//!   carries a burst's first spike into its second.
//!
//! Outputs are requests: the safety limiter still applies. The integrators
//! stop integrating while the output is saturated at the amplitude limit
//! (conditional anti-windup), so a long saturation does not leave a large
//! stored error to unwind. Nothing here allocates.

use super::filter::LowPass;
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
    /// Time constant of the low-pass on the measured V the voltage and
    /// silence clamps act on, ms (0: the raw sample).
    pub voltage_filter_ms: f64,
    /// `silence`: the PID holds V this far below the ceiling, mV.
    pub silence_margin_mv: f64,
    /// `burst`: the PI's target rate, Hz (the single spikes to keep).
    pub burst_target_hz: f64,
    /// Rate PI feed-forward: target rate → current; empty: none.
    pub rate_ff: FeedForward,
    /// Time constant the feed-forward term follows a target step with, ms
    /// (0: at once). A cell with spike-frequency adaptation answers a
    /// current step with an onset burst; easing the step in avoids it.
    pub rate_ff_tau_ms: f64,
    /// `timing`: pulse amplitude, µA/cm².
    pub pulse_amplitude: f64,
    /// `timing`: the pulse starts this long before the target, ms.
    pub pulse_lead_ms: f64,
    /// `timing`: pulse width, ms.
    pub pulse_width_ms: f64,
    /// `timing`: current between pulses, µA/cm².
    pub pulse_hold: f64,
    /// `burst`: the spike-triggered pulse, µA/cm² (signed); 0: no pulses,
    /// the rate PI instead.
    pub burst_pulse: f64,
    /// `burst`: the pulse starts this long after the detected spike, ms.
    pub burst_pulse_delay_ms: f64,
    /// `burst`: pulse width, ms.
    pub burst_pulse_width_ms: f64,
    /// `burst`: current between pulses, µA/cm².
    pub burst_hold: f64,
}

/// A static map from target rate (Hz) to current (µA/cm²): piecewise
/// linear through its points, held flat beyond the first and the last.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct FeedForward {
    #[serde(skip)]
    points: [(f64, f64); FeedForward::MAX],
    len: usize,
}

impl FeedForward {
    pub const MAX: usize = 16;

    /// No feed-forward (the plain PI).
    pub const NONE: FeedForward = FeedForward {
        points: [(0.0, 0.0); FeedForward::MAX],
        len: 0,
    };

    /// `points`: `(hz, current)` with strictly increasing, finite rates.
    pub fn new(points: &[(f64, f64)]) -> Result<FeedForward, String> {
        if points.len() > Self::MAX {
            return Err(format!(
                "at most {} points, got {}",
                Self::MAX,
                points.len()
            ));
        }
        if let Some(p) = points
            .iter()
            .find(|p| !(p.0.is_finite() && p.1.is_finite()))
        {
            return Err(format!("point [{}, {}] is not finite", p.0, p.1));
        }
        if let Some(w) = points.windows(2).find(|w| w[1].0 <= w[0].0) {
            return Err(format!(
                "rate {} Hz is not above the previous point's {} Hz",
                w[1].0, w[0].0
            ));
        }
        let mut f = FeedForward::NONE;
        f.points[..points.len()].copy_from_slice(points);
        f.len = points.len();
        Ok(f)
    }

    pub fn points(&self) -> &[(f64, f64)] {
        &self.points[..self.len]
    }

    /// The current for `hz` (0 without points).
    #[inline]
    pub fn at(&self, hz: f64) -> f64 {
        let p = self.points();
        match p {
            [] => 0.0,
            [only] => only.1,
            _ if hz <= p[0].0 => p[0].1,
            _ if hz >= p[p.len() - 1].0 => p[p.len() - 1].1,
            _ => {
                let k = p.partition_point(|q| q.0 <= hz).clamp(1, p.len() - 1);
                let (a, b) = (p[k - 1], p[k]);
                a.1 + (b.1 - a.1) * (hz - a.0) / (b.0 - a.0)
            }
        }
    }
}

/// A per-sample baseline controller.
#[derive(Clone, Debug)]
pub enum Baseline {
    Off,
    Open(Waveform),
    RatePi(RatePi),
    VoltagePid(VoltagePid),
    Pulses(Pulses),
    SpikePulse(SpikePulse),
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
            ObjectiveKind::Burst if gains.burst_pulse != 0.0 => {
                Baseline::SpikePulse(SpikePulse::new(*gains, limit))
            }
            ObjectiveKind::Rate | ObjectiveKind::Burst => {
                Baseline::RatePi(RatePi::new(*gains, *objective, dt_ms, limit))
            }
            ObjectiveKind::Voltage | ObjectiveKind::Silence => {
                Baseline::VoltagePid(VoltagePid::new(*gains, *objective, dt_ms, limit))
            }
            ObjectiveKind::Timing => Baseline::Pulses(Pulses::new(*gains, *objective, limit)),
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
            Baseline::Pulses(c) => c.step(t_ms),
            Baseline::SpikePulse(c) => c.step(t_ms, spiked),
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
    /// The feed-forward term as it follows its target, µA/cm²; `None`
    /// before the first sample (it starts at its target).
    ff: Option<f64>,
    ff_decay: f64,
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
            ff: None,
            ff_decay: if gains.rate_ff_tau_ms > 0.0 {
                (-dt_ms / gains.rate_ff_tau_ms).exp()
            } else {
                0.0
            },
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
        let ff_target = match self.objective.kind {
            ObjectiveKind::Rate => g.rate_ff.at(target),
            _ => 0.0,
        };
        let ff = match self.ff {
            Some(f) => ff_target + (f - ff_target) * self.ff_decay,
            None => ff_target,
        };
        self.ff = Some(ff);
        let trial = self.integral + e * self.dt_ms / 1000.0;
        let u = ff + g.rate_kp * e + g.rate_ki * trial;
        if u.abs() <= self.limit || u.signum() != e.signum() {
            self.integral = trial;
        }
        (ff + g.rate_kp * e + g.rate_ki * self.integral).clamp(-self.limit, self.limit)
    }
}

/// Open-loop pulses before each target spike over a holding current.
#[derive(Clone, Debug)]
pub struct Pulses {
    gains: PidGains,
    objective: Objective,
    limit: f64,
    /// The first target whose pulse has not ended yet.
    next: usize,
}

impl Pulses {
    pub fn new(gains: PidGains, objective: Objective, limit: f64) -> Pulses {
        Pulses {
            gains,
            objective,
            limit,
            next: 0,
        }
    }

    #[inline]
    pub fn step(&mut self, t_ms: f64) -> f64 {
        let g = &self.gains;
        let targets = self.objective.timing.times();
        while self.next < targets.len()
            && targets[self.next] - g.pulse_lead_ms + g.pulse_width_ms <= t_ms
        {
            self.next += 1;
        }
        let on = targets
            .get(self.next)
            .is_some_and(|&t| t_ms >= t - g.pulse_lead_ms);
        let u = if on { g.pulse_amplitude } else { g.pulse_hold };
        u.clamp(-self.limit, self.limit)
    }
}

/// One pulse after each detected spike, over a holding current. A spike
/// during a pending or running pulse re-arms it from that spike: a burst
/// that got through is met again after its latest spike.
#[derive(Clone, Debug)]
pub struct SpikePulse {
    gains: PidGains,
    limit: f64,
    /// The latest detected spike, ms.
    last_spike: Option<f64>,
}

impl SpikePulse {
    pub fn new(gains: PidGains, limit: f64) -> SpikePulse {
        SpikePulse {
            gains,
            limit,
            last_spike: None,
        }
    }

    #[inline]
    pub fn step(&mut self, t_ms: f64, spiked: bool) -> f64 {
        if spiked {
            self.last_spike = Some(t_ms);
        }
        let g = &self.gains;
        // Half a sample of slack: sample times are sums of floats.
        let on = self.last_spike.is_some_and(|s| {
            let since = t_ms - s;
            since >= g.burst_pulse_delay_ms - 1e-9
                && since < g.burst_pulse_delay_ms + g.burst_pulse_width_ms - 1e-9
        });
        let u = if on { g.burst_pulse } else { g.burst_hold };
        u.clamp(-self.limit, self.limit)
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
    filter: LowPass,
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
            filter: LowPass::new(gains.voltage_filter_ms, dt_ms),
        }
    }

    #[inline]
    pub fn step(&mut self, t_ms: f64, v_mv: f64) -> f64 {
        let v_mv = self.filter.push(v_mv);
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
            voltage_filter_ms: 0.0,
            silence_margin_mv: 2.0,
            burst_target_hz: 5.0,
            rate_ff: FeedForward::NONE,
            rate_ff_tau_ms: 0.0,
            pulse_amplitude: 4.0,
            pulse_lead_ms: 2.0,
            pulse_width_ms: 1.0,
            pulse_hold: -0.5,
            burst_pulse: 0.0,
            burst_pulse_delay_ms: 1.0,
            burst_pulse_width_ms: 2.0,
            burst_hold: 0.5,
        }
    }

    #[test]
    fn feed_forward_interpolates_and_holds_at_the_ends() {
        let f = FeedForward::new(&[(5.0, -1.0), (10.0, 0.0), (20.0, 2.0)]).unwrap();
        assert_eq!(
            (f.at(0.0), f.at(7.5), f.at(15.0), f.at(99.0)),
            (-1.0, -0.5, 1.0, 2.0)
        );
        assert_eq!(FeedForward::NONE.at(12.0), 0.0);
        assert!(FeedForward::new(&[(5.0, 0.0), (5.0, 1.0)]).is_err());
        // With no error and no integral, the PI's output is the map's.
        let mut g = gains();
        g.rate_ff = f;
        g.rate_kp = 0.0;
        g.rate_ki = 0.0;
        let mut pi = RatePi::new(g, objective(ObjectiveKind::Rate), 0.1, 10.0);
        assert_eq!(pi.step(0.0, false), f.at(10.0));
        assert_eq!(pi.step(1500.0, false), f.at(20.0));
        // Eased in: a tenth of a time constant after the step it has moved
        // about a tenth of the way.
        g.rate_ff_tau_ms = 10.0;
        let mut pi = RatePi::new(g, objective(ObjectiveKind::Rate), 0.1, 10.0);
        assert_eq!(pi.step(999.9, false), f.at(10.0));
        let u = pi.step(1000.0, false);
        let frac = (u - f.at(10.0)) / (f.at(20.0) - f.at(10.0));
        assert!((frac - (1.0 - (-0.01f64).exp())).abs() < 1e-9, "{frac}");
    }

    #[test]
    fn pulses_precede_each_target_over_the_holding_current() {
        // Targets 5, 100, 300 ms; lead 2 ms, width 1 ms: on over [3, 4).
        let mut p = Pulses::new(gains(), objective(ObjectiveKind::Timing), 10.0);
        let u: Vec<f64> = (0..3100).map(|k| p.step(k as f64 * 0.1)).collect();
        let on: Vec<usize> = (0..u.len()).filter(|&k| u[k] == 4.0).collect();
        assert_eq!(on.len(), 3 * 10, "{on:?}");
        assert_eq!((on[0], on[10], on[29]), (30, 980, 2989));
        assert!(u.iter().all(|&x| x == 4.0 || x == -0.5));
    }

    #[test]
    fn spike_pulses_follow_each_spike_over_the_holding_current() {
        let mut g = gains();
        g.burst_pulse = -6.0;
        let b = Baseline::pid_for(&objective(ObjectiveKind::Burst), &g, 0.1, 5.0);
        let Baseline::SpikePulse(mut p) = b else {
            panic!("burst with a pulse is not the spike pulse: {b:?}");
        };
        // Spikes at 10 ms and 50 ms; delay 1 ms, width 2 ms: on over
        // [11, 13) and [51, 53), clamped to the 5 µA/cm² limit.
        let u: Vec<f64> = (0..1000)
            .map(|k| p.step(k as f64 * 0.1, k == 100 || k == 500))
            .collect();
        let on: Vec<usize> = (0..u.len()).filter(|&k| u[k] == -5.0).collect();
        assert_eq!(on.len(), 2 * 20, "{on:?}");
        assert_eq!((on[0], on[19], on[20], on[39]), (110, 129, 510, 529));
        assert!(u.iter().all(|&x| x == -5.0 || x == 0.5));
        // Without a pulse, burst still means the rate PI.
        let b = Baseline::pid_for(&objective(ObjectiveKind::Burst), &gains(), 0.1, 5.0);
        assert!(matches!(b, Baseline::RatePi(_)));
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

    #[test]
    fn the_voltage_filter_keeps_measurement_noise_out_of_the_current() {
        // V sits on the reference's mean with ±0.2 mV of alternating
        // "noise"; proportional action only.
        let sd_of_current = |filter_ms: f64| {
            let mut g = gains();
            g.voltage_ki = 0.0;
            g.voltage_kp = 0.2;
            g.voltage_filter_ms = filter_ms;
            let o = objective(ObjectiveKind::Voltage);
            let mut pid = VoltagePid::new(g, o, 0.1, 10.0);
            let u: Vec<f64> = (0..2000)
                .map(|k| {
                    let t = k as f64 * 0.1;
                    let noise = if k % 2 == 0 { 0.2 } else { -0.2 };
                    pid.step(t, o.reference.at(t) + noise)
                })
                .skip(200)
                .collect();
            let mean = u.iter().sum::<f64>() / u.len() as f64;
            (u.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / u.len() as f64).sqrt()
        };
        let raw = sd_of_current(0.0);
        let filtered = sd_of_current(1.0);
        assert!((raw - 0.04).abs() < 0.005, "{raw}");
        assert!(filtered < 0.2 * raw, "{filtered} against {raw}");
    }
}
