//! The CA1 pyramidal neuron of Golomb, Yue & Yaari (2006), as specified in
//! `shared/reference/ca1-model.md`: nine states, no I/O, no threads.
//!
//! Everything here is pure computation so that it can be checked against the
//! reference derivatives and traces to the last digit, and reused by the plant,
//! the dataset generator and the benchmarks alike.
//!
//! Units: t in ms, V in mV, conductances in mS/cm², currents in µA/cm²,
//! Cm in µF/cm².

pub mod cell;
pub mod integrate;
pub mod pospischil;
pub mod spikes;
pub mod table;

use serde::Serialize;

/// Number of state variables.
pub const N_STATES: usize = 9;

/// State vector in the order of the specification: V, h, n, b, z, r, c, q, Ca.
pub type State = [f64; N_STATES];

/// Names of the states, in order (used for trace headers).
pub const STATE_NAMES: [&str; N_STATES] = ["V_mV", "h", "n", "b", "z", "r", "c", "q", "Ca_uM"];

/// Index of the membrane potential in [`State`].
pub const V: usize = 0;

/// The published initial state (specification table "State and initial values").
pub const INITIAL_STATE: State = [
    -71.962, 0.979199, 0.0242166, 0.207565, 0.0013689, 0.005507, 0.002486, 0.0, 0.000787,
];

/// Model parameters. `Default` is the published model (the `regular` preset);
/// named presets and overrides come from configuration, not from here.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Params {
    /// Membrane capacitance, µF/cm².
    pub cm: f64,
    /// Leak conductance and reversal.
    pub g_l: f64,
    pub e_l: f64,
    /// Transient sodium.
    pub g_na: f64,
    pub e_na: f64,
    /// Persistent sodium and its half-activation θ_p (mV).
    pub g_nap: f64,
    pub theta_p: f64,
    /// Delayed rectifier potassium; `e_k` is shared by all K currents.
    pub g_kdr: f64,
    pub e_k: f64,
    /// A-type potassium.
    pub g_a: f64,
    /// M-type potassium.
    pub g_m: f64,
    /// High-threshold calcium.
    pub g_ca: f64,
    pub e_ca: f64,
    /// C-type (Ca- and voltage-gated) potassium and its Ca half-activation a_c.
    pub g_kca: f64,
    pub a_c: f64,
    /// AHP potassium and its Ca half-activation a_q.
    pub g_kahp: f64,
    pub a_q: f64,
    /// Calcium influx factor ν and removal time constant τ_Ca (ms).
    pub nu: f64,
    pub tau_ca: f64,
    /// Gate time constants (ms) that do not depend on V.
    pub tau_b: f64,
    pub tau_z: f64,
    pub tau_r: f64,
    pub tau_c: f64,
    pub tau_q: f64,
    /// Constant background drive, µA/cm²; the stimulation is added to it.
    pub i_app: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            cm: 1.0,
            g_l: 0.05,
            e_l: -70.0,
            g_na: 35.0,
            e_na: 55.0,
            g_nap: 0.2,
            theta_p: -41.0,
            g_kdr: 6.0,
            e_k: -90.0,
            g_a: 1.4,
            g_m: 1.0,
            g_ca: 0.08,
            e_ca: 120.0,
            g_kca: 10.0,
            a_c: 6.0,
            g_kahp: 5.0,
            a_q: 2.0,
            nu: 0.13,
            tau_ca: 13.0,
            tau_b: 15.0,
            tau_z: 75.0,
            tau_r: 1.0,
            tau_c: 2.0,
            tau_q: 450.0,
            i_app: 1.0,
        }
    }
}

/// The voltage-only functions of the model at one V. Exact evaluation costs
/// eleven `exp` calls; [`table::RateTable`] replaces it with one interpolated
/// lookup, which is what makes the default integrator fast.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub minf3: f64,
    pub hinf: f64,
    pub inv_tau_h: f64,
    pub ninf: f64,
    pub inv_tau_n: f64,
    pub pinf: f64,
    pub ainf3: f64,
    pub binf: f64,
    pub zinf: f64,
    pub rinf: f64,
    pub cinf: f64,
}

/// Γ(V; θ, σ) = 1 / (1 + exp(−(V − θ)/σ)).
#[inline(always)]
pub fn gamma(v: f64, theta: f64, sigma: f64) -> f64 {
    1.0 / (1.0 + (-(v - theta) / sigma).exp())
}

impl Rates {
    /// Exact evaluation from the specification's formulas.
    #[inline]
    pub fn exact(theta_p: f64, v: f64) -> Rates {
        let m = gamma(v, -30.0, 9.5);
        let a = gamma(v, -50.0, 20.0);
        let tau_h = 0.1 + 0.75 / (1.0 + ((v + 40.5) / 6.0).exp());
        let tau_n = 0.1 + 0.5 / (1.0 + ((v + 27.0) / 15.0).exp());
        Rates {
            minf3: m * m * m,
            hinf: gamma(v, -45.0, -7.0),
            inv_tau_h: 1.0 / tau_h,
            ninf: gamma(v, -35.0, 10.0),
            inv_tau_n: 1.0 / tau_n,
            pinf: gamma(v, theta_p, 3.0),
            ainf3: a * a * a,
            binf: gamma(v, -80.0, -6.0),
            zinf: gamma(v, -39.0, 5.0),
            rinf: gamma(v, -20.0, 10.0),
            cinf: gamma(v, -30.0, 7.0),
        }
    }
}

/// Something that yields [`Rates`] at a membrane potential: exact formulas or
/// an interpolated table. Integrators are generic over it so the choice costs
/// nothing at run time.
pub trait RateSource {
    fn rates(&self, v: f64) -> Rates;
}

/// Exact rates for a given θ_p (the only voltage-function parameter that
/// presets change).
#[derive(Clone, Copy, Debug)]
pub struct ExactRates {
    pub theta_p: f64,
}

impl RateSource for ExactRates {
    #[inline(always)]
    fn rates(&self, v: f64) -> Rates {
        Rates::exact(self.theta_p, v)
    }
}

// The Pospischil module stays std-only (it is tested on its own with
// rustc); its types are serialised from here, for configs and recordings.
impl Serialize for pospischil::Params {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Params", 16)?;
        st.serialize_field("cm", &self.cm)?;
        st.serialize_field("area_um2", &self.area_um2)?;
        st.serialize_field("g_leak", &self.g_leak)?;
        st.serialize_field("e_leak", &self.e_leak)?;
        st.serialize_field("g_na", &self.g_na)?;
        st.serialize_field("e_na", &self.e_na)?;
        st.serialize_field("g_kd", &self.g_kd)?;
        st.serialize_field("e_k", &self.e_k)?;
        st.serialize_field("v_t", &self.v_t)?;
        st.serialize_field("g_m", &self.g_m)?;
        st.serialize_field("tau_max", &self.tau_max)?;
        st.serialize_field("g_l", &self.g_l)?;
        st.serialize_field("g_t", &self.g_t)?;
        st.serialize_field("v_x", &self.v_x)?;
        st.serialize_field("e_ca", &self.e_ca)?;
        st.serialize_field("i_app", &self.i_app)?;
        st.end()
    }
}

impl Serialize for pospischil::Class {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name().to_lowercase())
    }
}

/// Right-hand side given precomputed voltage functions. `i_stim` is added to
/// the background drive `p.i_app` (both µA/cm²).
#[inline(always)]
pub fn derivatives_with(p: &Params, r: &Rates, y: &State, i_stim: f64) -> State {
    let [v, h, n, b, z, rr, c, q, ca] = *y;
    let ek = v - p.e_k;
    let ena = v - p.e_na;
    let n2 = n * n;
    let i_ca = p.g_ca * rr * rr * (v - p.e_ca);
    let i_l = p.g_l * (v - p.e_l);
    let i_na = p.g_na * r.minf3 * h * ena;
    let i_nap = p.g_nap * r.pinf * ena;
    let g_k_total = p.g_kdr * n2 * n2
        + p.g_a * r.ainf3 * b
        + p.g_m * z
        + p.g_kca * ca / (ca + p.a_c) * c
        + p.g_kahp * q;
    let dv = (-i_l - i_na - i_nap - g_k_total * ek - i_ca + p.i_app + i_stim) / p.cm;
    let ca2 = ca * ca;
    let ca4 = ca2 * ca2;
    let aq2 = p.a_q * p.a_q;
    let qinf = ca4 / (ca4 + aq2 * aq2);
    [
        dv,
        (r.hinf - h) * r.inv_tau_h,
        (r.ninf - n) * r.inv_tau_n,
        (r.binf - b) / p.tau_b,
        (r.zinf - z) / p.tau_z,
        (r.rinf - rr) / p.tau_r,
        (r.cinf - c) / p.tau_c,
        (qinf - q) / p.tau_q,
        -p.nu * i_ca - ca / p.tau_ca,
    ]
}

/// Exact right-hand side of the nine ODEs (mV/ms and 1/ms).
pub fn derivatives(p: &Params, y: &State, i_stim: f64) -> State {
    derivatives_with(p, &Rates::exact(p.theta_p, y[V]), y, i_stim)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference derivatives at the initial state, `regular` preset
    /// (specification, "Reference values for tests").
    #[test]
    fn derivatives_at_initial_state_match_reference_to_1e9_relative() {
        let reference = [
            9.999986459201e-01,
            -4.704725249557e-07,
            9.379142918843e-08,
            -7.970080188417e-09,
            -4.020185781321e-10,
            7.146707800120e-08,
            2.450345608081e-08,
            5.328027196680e-17,
            6.604654973646e-09,
        ];
        let d = derivatives(&Params::default(), &INITIAL_STATE, 0.0);
        for (i, (got, want)) in d.iter().zip(reference).enumerate() {
            let rel = ((got - want) / want).abs();
            assert!(
                rel < 1e-9,
                "d{}/dt = {got:e}, reference {want:e}, relative error {rel:e}",
                STATE_NAMES[i]
            );
        }
    }

    #[test]
    fn stimulation_adds_to_background_drive() {
        let p = Params::default();
        let d0 = derivatives(&p, &INITIAL_STATE, 0.0);
        let d1 = derivatives(&p, &INITIAL_STATE, 2.5);
        assert!((d1[V] - d0[V] - 2.5 / p.cm).abs() < 1e-12);
        assert_eq!(d0[1..], d1[1..]);
    }

    #[test]
    fn q_steady_state_is_defined_at_zero_calcium() {
        let mut y = INITIAL_STATE;
        y[8] = 0.0;
        let d = derivatives(&Params::default(), &y, 0.0);
        assert!(d.iter().all(|x| x.is_finite()));
    }
}
