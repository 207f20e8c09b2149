//! Property tests: no configuration within validation, sample period or
//! sequence of requests and faults makes the safety limiter emit a command
//! outside its limits, and no configuration that would weaken a limit
//! validates.

use neurostimd::safety::{
    Fault, Limits, SafetyError, SafetyLimiter, HARD_CEILINGS, MAX_PERIOD_MS, MIN_NET_CHARGE_TAU_MS,
};
use proptest::prelude::*;

/// A value in (0, ceiling], drawn log-uniformly so that tiny and large
/// limits are both exercised.
fn upto(ceiling: f64) -> impl Strategy<Value = f64> {
    (-6.0f64..=0.0).prop_map(move |e| ceiling * 10f64.powf(e))
}

/// Whole configurations anywhere within validation.
fn limits() -> impl Strategy<Value = Limits> {
    (
        upto(HARD_CEILINGS.max_amplitude),
        upto(HARD_CEILINGS.max_slew),
        upto(HARD_CEILINGS.max_phase_charge),
        MIN_NET_CHARGE_TAU_MS..=HARD_CEILINGS.net_charge_tau,
        upto(HARD_CEILINGS.max_net_charge),
        upto(HARD_CEILINGS.charge_budget),
    )
        .prop_map(|(a, s, p, tau, n, b)| Limits {
            max_amplitude: a,
            max_slew: s,
            max_phase_charge: p,
            net_charge_tau: tau,
            max_net_charge: n,
            charge_budget: b,
        })
}

/// Sample periods from 10 µs (100 kHz) to the limiter's maximum.
fn period() -> impl Strategy<Value = f64> {
    (-2.0f64..=MAX_PERIOD_MS.log10()).prop_map(|e| 10f64.powf(e))
}

fn request() -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => -50.0f64..50.0,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(0.0),
        1 => Just(-1e300),
    ]
}

fn fault() -> impl Strategy<Value = Option<Fault>> {
    prop_oneof![
        12 => Just(None),
        1 => Just(Some(Fault::StaleSample)),
        1 => Just(Some(Fault::PlanMiss)),
        1 => Just(Some(Fault::ModelError)),
        1 => Just(Some(Fault::PlantFault)),
        1 => Just(Some(Fault::Shutdown)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Every configuration that validates, at every sample period, keeps
    /// every bound on every output. The net-charge check includes what the
    /// leaky integral alone would not show: one-signed charge within any
    /// window of `MIN_NET_CHARGE_TAU_MS` stays below (e + 1) × the bound,
    /// which a τ below the floor would break.
    #[test]
    fn output_always_within_limits(
        l in limits(),
        dt in period(),
        steps in prop::collection::vec((request(), fault(), 1usize..40), 1..200),
    ) {
        prop_assert!(l.validate().is_ok());
        let mut s = SafetyLimiter::new(l, dt).unwrap();
        let decay = (-dt / l.net_charge_tau).exp();
        let window = (MIN_NET_CHARGE_TAU_MS / dt).floor() as usize;
        let window_bound = (1f64.exp() + 1.0) * l.max_net_charge + 1e-6;
        let mut net = 0.0f64;
        let mut phase = 0.0f64;
        let mut total = 0.0f64;
        let mut last = 0.0f64;
        // Charges of the last `window` samples (one-signed runs checked).
        let mut recent: std::collections::VecDeque<f64> = Default::default();
        let (mut pos, mut neg) = (0.0f64, 0.0f64);
        for (req, f, repeat) in steps {
            for _ in 0..repeat {
                let i = s.limit(req, f).command;
                prop_assert!(i.is_finite());
                if f.is_some() || !req.is_finite() {
                    prop_assert_eq!(i, 0.0);
                }
                prop_assert!(i.abs() <= l.max_amplitude + 1e-9, "amplitude {}", i);
                // Slew: growth of magnitude in the same sign is bounded;
                // from zero or across a sign change the start is zero.
                let from = if last != 0.0 && i.signum() == last.signum() { last.abs() } else { 0.0 };
                prop_assert!(i.abs() <= from + l.max_slew * dt + 1e-9, "slew {} -> {}", last, i);
                // Phase charge.
                phase = if i != 0.0 && last != 0.0 && i.signum() == last.signum() { phase + i.abs() * dt } else { i.abs() * dt };
                prop_assert!(phase <= l.max_phase_charge + 1e-9, "phase charge {}", phase);
                // Net charge (leaky integral).
                net = net * decay + i * dt;
                prop_assert!(net.abs() <= l.max_net_charge + 1e-9, "net charge {}", net);
                // One-signed charge within the floor's window.
                let q = i * dt;
                recent.push_back(q);
                if q > 0.0 { pos += q } else { neg -= q }
                if recent.len() > window.max(1) {
                    let old = recent.pop_front().unwrap_or(0.0);
                    if old > 0.0 { pos -= old } else { neg += old }
                }
                if neg <= 1e-12 {
                    prop_assert!(pos <= window_bound, "{} nC/cm2 of one sign within {} ms", pos, MIN_NET_CHARGE_TAU_MS);
                }
                if pos <= 1e-12 {
                    prop_assert!(neg <= window_bound, "{} nC/cm2 of one sign within {} ms", neg, MIN_NET_CHARGE_TAU_MS);
                }
                // Budget.
                total += i.abs() * dt;
                prop_assert!(total <= l.charge_budget * (1.0 + 1e-9) + 1e-9, "total {}", total);
                last = i;
            }
        }
        prop_assert!((s.charge_delivered() - total).abs() <= 1e-6 * total.max(1.0));
    }

    /// A configuration that would weaken a bound is refused naming the key:
    /// above a ceiling, below the τ floor, or not a positive number.
    #[test]
    fn weakening_configurations_are_refused_naming_the_key(
        l in limits(),
        which in 0usize..6,
        factor in 1.0001f64..1e6,
        below in prop::bool::ANY,
    ) {
        let mut bad = l;
        let key = ["max_amplitude", "max_slew", "max_phase_charge", "net_charge_tau", "max_net_charge", "charge_budget"][which];
        let ceiling = [HARD_CEILINGS.max_amplitude, HARD_CEILINGS.max_slew, HARD_CEILINGS.max_phase_charge,
            HARD_CEILINGS.net_charge_tau, HARD_CEILINGS.max_net_charge, HARD_CEILINGS.charge_budget][which];
        let v = if key == "net_charge_tau" && below { MIN_NET_CHARGE_TAU_MS / factor } else if below { -ceiling / factor } else { ceiling * factor };
        match which {
            0 => bad.max_amplitude = v,
            1 => bad.max_slew = v,
            2 => bad.max_phase_charge = v,
            3 => bad.net_charge_tau = v,
            4 => bad.max_net_charge = v,
            _ => bad.charge_budget = v,
        }
        let e = bad.validate().unwrap_err();
        prop_assert_eq!(e.key(), Some(key));
        prop_assert!(SafetyLimiter::new(bad, 0.1).is_err());
    }
}

#[test]
fn sample_periods_outside_the_limiters_range_are_refused() {
    let l = HARD_CEILINGS;
    for dt in [0.0, -0.1, f64::NAN, f64::INFINITY, MAX_PERIOD_MS * 1.01] {
        assert!(
            matches!(SafetyLimiter::new(l, dt), Err(SafetyError::BadPeriod(_))),
            "{dt}"
        );
    }
}
