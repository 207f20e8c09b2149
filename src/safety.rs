//! The safety limiter: the last stage before every stimulation write.
//!
//! Rules (DESIGN §5), applied in this order to each requested command:
//!
//! 1. **Immediate zero** on a fault: stale sample, plan miss past the plan's
//!    end, non-finite value, model error, plant fault, shutdown. A request
//!    that is not a finite number is itself a `NonFinite` fault.
//! 2. **Charge budget**: the total |charge| delivered over the session never
//!    exceeds the budget; once spent, the output stays at zero.
//! 3. **Amplitude**: |I| ≤ `max_amplitude`.
//! 4. **Slew rate**: the magnitude may grow by at most `max_slew · dt` per
//!    sample. Moving toward zero is never limited: stopping is always safe.
//! 5. **Charge per phase**: a phase is a run of same-sign non-zero samples;
//!    its |charge| stays ≤ `max_phase_charge` (then the phase must end).
//! 6. **Net charge balance**: the signed charge, integrated with a leak of
//!    time constant `net_charge_tau` (charge that has had time to dissipate
//!    no longer counts), stays within ±`max_net_charge`. A leaky integral
//!    rather than a boxcar window because the bound then holds strictly
//!    without the limiter ever having to inject balancing current: with a
//!    boxcar, charge of one sign leaving the window can push the remaining
//!    sum past the bound while the output is zero.
//!
//! Every intervention is counted by cause. Limits are validated against hard
//! ceilings compiled into the binary: a configuration that allows more is
//! refused. The limiter is a handful of numbers: [`SafetyLimiter::limit`]
//! never allocates, so it runs on the real-time thread, and the planner can
//! copy it to test its candidates against the state the loop is in.

use serde::Serialize;

/// Limits, in the units of the CA1 model: µA/cm², ms, nC/cm² (µA·ms/cm²).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Limits {
    pub max_amplitude: f64,
    /// µA/cm² per ms.
    pub max_slew: f64,
    pub max_phase_charge: f64,
    /// Time constant of the net-charge integral, ms.
    pub net_charge_tau: f64,
    pub max_net_charge: f64,
    pub charge_budget: f64,
}

/// What no configuration may exceed. They bound what a misconfigured or
/// compromised controller can do to a cell; changing them means changing
/// the code, which is reviewed.
pub const HARD_CEILINGS: Limits = Limits {
    max_amplitude: 20.0,
    max_slew: 100.0,
    max_phase_charge: 500.0,
    net_charge_tau: 60_000.0,
    max_net_charge: 5_000.0,
    charge_budget: 10_000_000.0,
};

/// The shortest `net_charge_tau` any configuration may set, ms. The net
/// charge bound is a leaky integral: the shorter its memory, the more
/// one-signed charge passes it (with τ = 1 µs a steady 5 µA/cm² passes
/// 10,000 nC/cm² in 2 s against a 1,000 nC/cm² bound without one
/// intervention). At this floor, one-signed charge within any window of
/// `MIN_NET_CHARGE_TAU_MS` stays below (e + 1) × `max_net_charge` (see
/// `tests/safety_props.rs`). Larger τ remembers longer and is stricter.
pub const MIN_NET_CHARGE_TAU_MS: f64 = 1_000.0;

/// The longest sample period a limiter accepts, ms. The limiter counts a
/// command as held for one period; beyond this a plant is not sampled
/// often enough for the per-sample rules (slew, phase charge) to mean
/// what they say.
pub const MAX_PERIOD_MS: f64 = 10.0;

/// Why the limiter forced zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    StaleSample,
    PlanMiss,
    NonFinite,
    ModelError,
    PlantFault,
    Shutdown,
    /// The rig reported applying a current other than the one commanded
    /// (reconciliation in `plant::serial`): what it delivers is unknown.
    RigMisapplied,
}

/// Every reason the limiter changes a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    Fault(Fault),
    Budget,
    Amplitude,
    Slew,
    PhaseCharge,
    NetCharge,
}

#[cfg(test)]
const FAULTS: [Fault; 7] = [
    Fault::StaleSample,
    Fault::PlanMiss,
    Fault::NonFinite,
    Fault::ModelError,
    Fault::PlantFault,
    Fault::Shutdown,
    Fault::RigMisapplied,
];

impl Cause {
    /// All causes, in counter order. New causes go at the end: the order
    /// numbers the recordings' event lines.
    pub const ALL: [Cause; 12] = [
        Cause::Fault(Fault::StaleSample),
        Cause::Fault(Fault::PlanMiss),
        Cause::Fault(Fault::NonFinite),
        Cause::Fault(Fault::ModelError),
        Cause::Fault(Fault::PlantFault),
        Cause::Fault(Fault::Shutdown),
        Cause::Budget,
        Cause::Amplitude,
        Cause::Slew,
        Cause::PhaseCharge,
        Cause::NetCharge,
        Cause::Fault(Fault::RigMisapplied),
    ];

    fn index(self) -> usize {
        Cause::ALL.iter().position(|&c| c == self).unwrap_or(0)
    }

    /// A stable name for metrics and recordings.
    pub fn name(self) -> &'static str {
        match self {
            Cause::Fault(Fault::StaleSample) => "stale_sample",
            Cause::Fault(Fault::PlanMiss) => "plan_miss",
            Cause::Fault(Fault::NonFinite) => "non_finite",
            Cause::Fault(Fault::ModelError) => "model_error",
            Cause::Fault(Fault::PlantFault) => "plant_fault",
            Cause::Fault(Fault::Shutdown) => "shutdown",
            Cause::Fault(Fault::RigMisapplied) => "rig_misapplied",
            Cause::Budget => "charge_budget",
            Cause::Amplitude => "amplitude",
            Cause::Slew => "slew",
            Cause::PhaseCharge => "phase_charge",
            Cause::NetCharge => "net_charge",
        }
    }
}

/// Limits that cannot be used, naming the limit.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SafetyError {
    #[error("safety.{name} = {value} must be a finite number > 0")]
    NotPositive { name: &'static str, value: f64 },
    #[error(
        "safety.{name} = {value} exceeds the hard ceiling {ceiling} compiled into this binary"
    )]
    AboveCeiling {
        name: &'static str,
        value: f64,
        ceiling: f64,
    },
    #[error(
        "safety.{name} = {value} is below the floor {floor} compiled into this binary (a smaller value weakens the bound)"
    )]
    BelowFloor {
        name: &'static str,
        value: f64,
        floor: f64,
    },
    #[error("sample period {0} ms must be > 0 and at most {MAX_PERIOD_MS} ms")]
    BadPeriod(f64),
}

impl SafetyError {
    /// The `[safety]` key at fault, if the error is about one.
    pub fn key(&self) -> Option<&'static str> {
        match self {
            SafetyError::NotPositive { name, .. }
            | SafetyError::AboveCeiling { name, .. }
            | SafetyError::BelowFloor { name, .. } => Some(name),
            SafetyError::BadPeriod(_) => None,
        }
    }
}

impl Limits {
    fn fields(&self) -> [(&'static str, f64); 6] {
        [
            ("max_amplitude", self.max_amplitude),
            ("max_slew", self.max_slew),
            ("max_phase_charge", self.max_phase_charge),
            ("net_charge_tau", self.net_charge_tau),
            ("max_net_charge", self.max_net_charge),
            ("charge_budget", self.charge_budget),
        ]
    }

    /// Every limit finite, positive, within [`HARD_CEILINGS`] and, for
    /// `net_charge_tau` (the one limit where larger is safer), at least
    /// [`MIN_NET_CHARGE_TAU_MS`].
    pub fn validate(&self) -> Result<(), SafetyError> {
        for ((name, value), (_, ceiling)) in self.fields().into_iter().zip(HARD_CEILINGS.fields()) {
            if !(value.is_finite() && value > 0.0) {
                return Err(SafetyError::NotPositive { name, value });
            }
            if name == "net_charge_tau" && value < MIN_NET_CHARGE_TAU_MS {
                return Err(SafetyError::BelowFloor {
                    name,
                    value,
                    floor: MIN_NET_CHARGE_TAU_MS,
                });
            }
            if value > ceiling {
                return Err(SafetyError::AboveCeiling {
                    name,
                    value,
                    ceiling,
                });
            }
        }
        Ok(())
    }
}

/// Slack on charge comparisons (nC/cm²) so that floating-point rounding of
/// a running sum does not count as an intervention. Far below any limit.
const CHARGE_EPS: f64 = 1e-9;

/// The limiter's decision for one sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// What to write to the plant, µA/cm².
    pub command: f64,
    /// The first rule that changed the request, if any.
    pub cause: Option<Cause>,
}

/// The stateful limiter for one stimulation channel.
#[derive(Clone, Debug)]
pub struct SafetyLimiter {
    limits: Limits,
    dt_ms: f64,
    last: f64,
    phase_charge: f64,
    /// Leaky integral of signed charge and its per-sample decay.
    net: f64,
    decay: f64,
    total: f64,
    counts: [u64; Cause::ALL.len()],
}

impl SafetyLimiter {
    /// A limiter for samples `dt_ms` apart.
    pub fn new(limits: Limits, dt_ms: f64) -> Result<SafetyLimiter, SafetyError> {
        limits.validate()?;
        if !(dt_ms.is_finite() && dt_ms > 0.0 && dt_ms <= MAX_PERIOD_MS) {
            return Err(SafetyError::BadPeriod(dt_ms));
        }
        Ok(SafetyLimiter {
            limits,
            dt_ms,
            last: 0.0,
            phase_charge: 0.0,
            net: 0.0,
            decay: (-dt_ms / limits.net_charge_tau).exp(),
            total: 0.0,
            counts: [0; Cause::ALL.len()],
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The leaky net-charge integral now, nC/cm².
    pub fn net_charge(&self) -> f64 {
        self.net
    }

    /// The last command let through, µA/cm².
    pub fn last_command(&self) -> f64 {
        self.last
    }

    /// Total |charge| delivered so far, nC/cm².
    pub fn charge_delivered(&self) -> f64 {
        self.total
    }

    /// Interventions so far, by cause.
    pub fn counts(&self) -> impl Iterator<Item = (Cause, u64)> + '_ {
        Cause::ALL.iter().map(|&c| (c, self.counts[c.index()]))
    }

    pub fn count(&self, cause: Cause) -> u64 {
        self.counts[cause.index()]
    }

    /// The plant held the last command for `samples` more sample periods
    /// that nobody answered (lost samples on a rig, which keeps a command
    /// until its validity expires): count that charge as delivered, as it
    /// was. Nothing is changed, so nothing is an intervention; the charge
    /// only makes later commands more constrained (budget, net charge,
    /// phase). Closed form, so the cost does not grow with the gap.
    pub fn account_held(&mut self, samples: u64) {
        if samples == 0 || self.last == 0.0 {
            return;
        }
        let k = samples.min(i32::MAX as u64) as i32;
        let q = self.last * self.dt_ms;
        let dk = self.decay.powi(k);
        let sum = if self.decay < 1.0 {
            (1.0 - dk) / (1.0 - self.decay)
        } else {
            k as f64
        };
        self.net = self.net * dk + q * sum;
        self.total += q.abs() * k as f64;
        self.phase_charge += q.abs() * k as f64;
    }

    /// The command to write for `requested` (µA/cm²), given any fault.
    /// Never allocates.
    #[inline]
    pub fn limit(&mut self, requested: f64, fault: Option<Fault>) -> Decision {
        let mut cause = None;
        let note = |c: Cause, cause: &mut Option<Cause>| {
            if cause.is_none() {
                *cause = Some(c);
            }
        };
        let fault = fault.or((!requested.is_finite()).then_some(Fault::NonFinite));
        let mut i = if fault.is_some() { 0.0 } else { requested };
        if let Some(f) = fault {
            note(Cause::Fault(f), &mut cause);
        }
        let dt = self.dt_ms;
        let l = self.limits;

        // Budget.
        let remaining = (l.charge_budget - self.total).max(0.0);
        if i.abs() * dt > remaining + CHARGE_EPS {
            i = i.signum() * remaining / dt;
            note(Cause::Budget, &mut cause);
        }
        // Amplitude.
        if i.abs() > l.max_amplitude {
            i = i.signum() * l.max_amplitude;
            note(Cause::Amplitude, &mut cause);
        }
        // Slew: limit growth of magnitude only (same sign), and a sign change
        // goes through zero.
        let step = l.max_slew * dt;
        if i != 0.0 {
            let same_sign = self.last != 0.0 && i.signum() == self.last.signum();
            let from = if same_sign { self.last.abs() } else { 0.0 };
            if i.abs() > from + step {
                i = i.signum() * (from + step);
                note(Cause::Slew, &mut cause);
            }
        }
        // Charge per phase.
        let continuing = i != 0.0 && self.last != 0.0 && i.signum() == self.last.signum();
        let phase_before = if continuing { self.phase_charge } else { 0.0 };
        let room = (l.max_phase_charge - phase_before).max(0.0);
        if i.abs() * dt > room + CHARGE_EPS {
            i = i.signum() * room / dt;
            note(Cause::PhaseCharge, &mut cause);
        }
        // Net charge balance: |base| ≤ max, so zero is always allowed.
        let base = self.net * self.decay;
        let hi = ((l.max_net_charge - base) / dt).max(0.0);
        let lo = ((-l.max_net_charge - base) / dt).min(0.0);
        if i > hi + CHARGE_EPS / dt || i < lo - CHARGE_EPS / dt {
            i = i.clamp(lo, hi);
            note(Cause::NetCharge, &mut cause);
        }
        if i.abs() < 1e-12 {
            i = 0.0;
        }

        // Commit.
        let q = i * dt;
        self.net = base + q;
        self.total += q.abs();
        self.phase_charge = if i == 0.0 {
            0.0
        } else {
            phase_before + q.abs()
        };
        self.last = i;
        if let Some(c) = cause {
            self.counts[c.index()] += 1;
        }
        Decision { command: i, cause }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_amplitude: 5.0,
            max_slew: 10.0,
            max_phase_charge: 2.0,
            net_charge_tau: 1_000.0,
            max_net_charge: 3.0,
            charge_budget: 100.0,
        }
    }

    #[test]
    fn faults_and_non_finite_requests_force_zero_and_are_counted() {
        let mut s = SafetyLimiter::new(limits(), 0.1).unwrap();
        for f in FAULTS {
            let d = s.limit(1.0, Some(f));
            assert_eq!(
                d,
                Decision {
                    command: 0.0,
                    cause: Some(Cause::Fault(f))
                }
            );
            assert_eq!(s.count(Cause::Fault(f)), 1);
        }
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(s.limit(bad, None).command, 0.0);
        }
        assert_eq!(s.count(Cause::Fault(Fault::NonFinite)), 4);
    }

    #[test]
    fn amplitude_is_clamped() {
        let mut s = SafetyLimiter::new(
            Limits {
                max_slew: 100.0,
                ..limits()
            },
            0.1,
        )
        .unwrap();
        let d = s.limit(-9.0, None);
        assert_eq!((d.command, d.cause), (-5.0, Some(Cause::Amplitude)));
    }

    #[test]
    fn slew_limits_growth_but_not_stopping() {
        let mut s = SafetyLimiter::new(limits(), 0.1).unwrap();
        // 10 uA/cm2/ms over 0.1 ms: at most +1 per sample.
        assert_eq!(
            s.limit(3.0, None),
            Decision {
                command: 1.0,
                cause: Some(Cause::Slew)
            }
        );
        assert_eq!(s.limit(3.0, None).command, 2.0);
        assert_eq!(
            s.limit(0.0, None),
            Decision {
                command: 0.0,
                cause: None
            }
        );
        // A sign change starts from zero.
        assert_eq!(s.limit(-3.0, None).command, -1.0);
    }

    #[test]
    fn phase_charge_ends_a_long_pulse() {
        let mut s = SafetyLimiter::new(
            Limits {
                max_slew: 100.0,
                max_net_charge: 50.0,
                ..limits()
            },
            0.1,
        )
        .unwrap();
        // 4 uA/cm2 x 0.1 ms = 0.4 nC/cm2 per sample; 2 nC/cm2 per phase = 5 samples.
        let out: Vec<f64> = (0..7).map(|_| s.limit(4.0, None).command).collect();
        assert_eq!(&out[..5], &[4.0; 5]);
        assert_eq!(
            &out[5..],
            &[0.0, 4.0],
            "phase ended, then a new phase may start"
        );
        assert_eq!(s.count(Cause::PhaseCharge), 1);
    }

    #[test]
    fn net_charge_is_bounded_and_leaks_away() {
        let mut s = SafetyLimiter::new(
            Limits {
                max_slew: 100.0,
                max_phase_charge: 100.0,
                ..limits()
            },
            0.1,
        )
        .unwrap();
        // 5 uA/cm2 adds 0.5 nC/cm2 per sample: the 3 nC/cm2 bound is reached
        // after about 6 samples, then only what leaks away may be added.
        let out: Vec<f64> = (0..40).map(|_| s.limit(5.0, None).command).collect();
        assert_eq!(&out[..6], &[5.0; 6]);
        assert!(out[7] < 1.0, "{out:?}");
        assert!(s.net_charge() <= 3.0 + 1e-9);
        assert!(s.count(Cause::NetCharge) > 0);
        // The opposite sign is allowed and restores balance.
        assert_eq!(s.limit(-5.0, None).command, -5.0);
        // Left alone, the imbalance decays with the time constant (1 s:
        // ten time constants are 100,000 samples).
        for _ in 0..100_000 {
            s.limit(0.0, None);
        }
        assert!(s.net_charge().abs() < 3.0 * (-10.0f64).exp() * 1.01);
    }

    #[test]
    fn held_commands_over_lost_samples_count_as_delivered() {
        let mut s = SafetyLimiter::new(
            Limits {
                max_slew: 100.0,
                max_phase_charge: 100.0,
                max_net_charge: 100.0,
                ..limits()
            },
            0.1,
        )
        .unwrap();
        assert_eq!(s.limit(2.0, None).command, 2.0);
        let before = s.charge_delivered();
        // Ten samples lost: the rig kept applying 2 uA/cm2 for 1 ms.
        s.account_held(10);
        assert!((s.charge_delivered() - before - 2.0).abs() < 1e-12);
        // The closed form equals ten steps of the leaky integral.
        let mut t = s.clone();
        let mut u = SafetyLimiter::new(*s.limits(), 0.1).unwrap();
        u.limit(2.0, None);
        for _ in 0..10 {
            u.limit(2.0, None);
        }
        assert!((s.net_charge() - u.net_charge()).abs() < 1e-9);
        // The budget sees it: with the charge of the held samples spent,
        // less is left.
        t.account_held(0);
        assert_eq!(t.charge_delivered(), s.charge_delivered());
    }

    #[test]
    fn budget_latches_at_zero() {
        let mut s = SafetyLimiter::new(
            Limits {
                charge_budget: 1.0,
                max_slew: 100.0,
                max_net_charge: 50.0,
                ..limits()
            },
            0.1,
        )
        .unwrap();
        let total: f64 = (0..10)
            .map(|k| {
                s.limit(if k % 2 == 0 { 4.0 } else { -4.0 }, None)
                    .command
                    .abs()
                    * 0.1
            })
            .sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        assert_eq!(
            s.limit(4.0, None),
            Decision {
                command: 0.0,
                cause: Some(Cause::Budget)
            }
        );
        assert!((s.charge_delivered() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn limits_above_the_hard_ceilings_or_not_positive_are_refused() {
        let e = SafetyLimiter::new(
            Limits {
                max_amplitude: 50.0,
                ..limits()
            },
            0.1,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "safety.max_amplitude = 50 exceeds the hard ceiling 20 compiled into this binary"
        );
        let e = SafetyLimiter::new(
            Limits {
                max_slew: f64::NAN,
                ..limits()
            },
            0.1,
        )
        .unwrap_err();
        assert!(matches!(
            e,
            SafetyError::NotPositive {
                name: "max_slew",
                ..
            }
        ));
        assert!(SafetyLimiter::new(limits(), 0.0).is_err());
    }
}
