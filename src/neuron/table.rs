//! Lookup table of the voltage functions, as NEURON does for its rate
//! functions: eleven `exp` calls per right-hand side become one linear
//! interpolation between two table rows.
//!
//! The grid spacing (1/64 mV) keeps the interpolation error of every function
//! below 1e-6 of its range, far under what moves a spike time by a
//! microsecond; the accuracy tests of the default integrator check the result,
//! not this estimate. Outside the grid the exact formulas are used, so an
//! unphysiological V never reads past the table.

use super::{RateSource, Rates};

const V_MIN: f64 = -150.0;
const V_MAX: f64 = 100.0;
const STEPS_PER_MV: f64 = 64.0;
const WIDTH: usize = 11;

/// Interpolated [`Rates`] for one θ_p. Building it allocates (≈1.4 MB) and
/// costs about a millisecond; build it before the real-time loop starts.
#[derive(Clone)]
pub struct RateTable {
    theta_p: f64,
    rows: Box<[[f64; WIDTH]]>,
}

impl std::fmt::Debug for RateTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateTable")
            .field("theta_p", &self.theta_p)
            .field("rows", &self.rows.len())
            .finish()
    }
}

fn to_row(r: Rates) -> [f64; WIDTH] {
    [
        r.minf3,
        r.hinf,
        r.inv_tau_h,
        r.ninf,
        r.inv_tau_n,
        r.pinf,
        r.ainf3,
        r.binf,
        r.zinf,
        r.rinf,
        r.cinf,
    ]
}

impl RateTable {
    pub fn new(theta_p: f64) -> RateTable {
        let n = ((V_MAX - V_MIN) * STEPS_PER_MV) as usize + 1;
        let rows = (0..n)
            .map(|i| to_row(Rates::exact(theta_p, V_MIN + i as f64 / STEPS_PER_MV)))
            .collect();
        RateTable { theta_p, rows }
    }

    pub fn theta_p(&self) -> f64 {
        self.theta_p
    }
}

impl RateSource for RateTable {
    #[inline(always)]
    fn rates(&self, v: f64) -> Rates {
        let x = (v - V_MIN) * STEPS_PER_MV;
        // The range check fails for NaN too, which then propagates through
        // the exact formulas instead of indexing the table.
        if !(0.0..((self.rows.len() - 1) as f64)).contains(&x) {
            return Rates::exact(self.theta_p, v);
        }
        let i = x as usize;
        let f = x - i as f64;
        let a = &self.rows[i];
        let b = &self.rows[i + 1];
        let l = |k: usize| a[k] + f * (b[k] - a[k]);
        Rates {
            minf3: l(0),
            hinf: l(1),
            inv_tau_h: l(2),
            ninf: l(3),
            inv_tau_n: l(4),
            pinf: l(5),
            ainf3: l(6),
            binf: l(7),
            zinf: l(8),
            rinf: l(9),
            cinf: l(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_exact_rates_within_1e6_of_range() {
        let t = RateTable::new(-41.0);
        let mut v = -149.9;
        let mut worst = 0.0f64;
        while v < 99.9 {
            let e = to_row(Rates::exact(-41.0, v));
            let g = to_row(t.rates(v));
            for k in 0..WIDTH {
                // inv_tau columns span up to 10/ms; the rest are in [0, 1].
                let scale = if k == 2 || k == 4 { 10.0 } else { 1.0 };
                worst = worst.max((e[k] - g[k]).abs() / scale);
            }
            v += 0.0123;
        }
        assert!(worst < 1e-6, "worst scaled interpolation error {worst:e}");
    }

    #[test]
    fn outside_the_grid_falls_back_to_exact() {
        let t = RateTable::new(-47.0);
        for v in [-400.0, 150.0] {
            assert_eq!(to_row(t.rates(v)), to_row(Rates::exact(-47.0, v)));
        }
        assert!(t.rates(f64::NAN).hinf.is_nan());
    }
}
