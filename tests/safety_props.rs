//! Property test: no sequence of requests and faults makes the safety
//! limiter emit a command outside its limits.

use neurostimd::safety::{Fault, Limits, SafetyLimiter};
use proptest::prelude::*;

const DT: f64 = 0.1;

fn limits() -> Limits {
    Limits {
        max_amplitude: 5.0,
        max_slew: 20.0,
        max_phase_charge: 3.0,
        net_charge_tau: 5.0,
        max_net_charge: 2.0,
        charge_budget: 40.0,
    }
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

    #[test]
    fn output_always_within_limits(steps in prop::collection::vec((request(), fault()), 1..400)) {
        let l = limits();
        let mut s = SafetyLimiter::new(l, DT).unwrap();
        let decay = (-DT / l.net_charge_tau).exp();
        let mut net = 0.0f64;
        let mut phase = 0.0f64;
        let mut total = 0.0f64;
        let mut last = 0.0f64;
        for (req, f) in steps {
            let i = s.limit(req, f).command;
            prop_assert!(i.is_finite());
            if f.is_some() || !req.is_finite() {
                prop_assert_eq!(i, 0.0);
            }
            prop_assert!(i.abs() <= l.max_amplitude + 1e-9, "amplitude {}", i);
            // Slew: growth of magnitude in the same sign is bounded; from
            // zero or across a sign change the start is zero.
            let from = if last != 0.0 && i.signum() == last.signum() { last.abs() } else { 0.0 };
            prop_assert!(i.abs() <= from + l.max_slew * DT + 1e-9, "slew {} -> {}", last, i);
            // Phase charge.
            phase = if i != 0.0 && last != 0.0 && i.signum() == last.signum() { phase + i.abs() * DT } else { i.abs() * DT };
            prop_assert!(phase <= l.max_phase_charge + 1e-9, "phase charge {}", phase);
            // Net charge (leaky integral).
            net = net * decay + i * DT;
            prop_assert!(net.abs() <= l.max_net_charge + 1e-9, "net charge {}", net);
            // Budget.
            total += i.abs() * DT;
            prop_assert!(total <= l.charge_budget + 1e-9, "total {}", total);
            last = i;
        }
        prop_assert!((s.charge_delivered() - total).abs() < 1e-6);
    }
}
