//! The four cortical cell classes of Pospischil et al. (2008), "Minimal
//! Hodgkin–Huxley type models for different classes of cortical and thalamic
//! neurons" (Biol Cybern 99:427–441): regular spiking (RS), fast spiking (FS),
//! intrinsically bursting (IB) and low-threshold spiking (LTS), as specified
//! in `docs/pospischil.md`.
//!
//! One single-compartment model with eight states covers all four classes;
//! a class is a parameter set, the currents it lacks have zero conductance.
//! That keeps a single right-hand side to verify (and to compare with Brian2)
//! and lets a randomised cell move continuously between classes.
//!
//! The module is deliberately self-contained (std only, no `crate::` or
//! `super::` paths) so that it can be tested on its own with
//! `rustc --edition 2021 -O --test src/neuron/pospischil.rs`.
//!
//! Units as in the CA1 model: t in ms, V in mV, conductances in mS/cm²,
//! currents in µA/cm², Cm in µF/cm². Currents given in nA in the paper are
//! converted with the membrane area of the class ([`Params::na_to_density`]).

/// Number of state variables.
pub const N_STATES: usize = 8;

/// State vector: V, m, h (I_Na), n (I_Kd), p (I_M), q, r (I_L), u (I_T).
pub type State = [f64; N_STATES];

/// Names of the states, in order (used for trace headers).
pub const STATE_NAMES: [&str; N_STATES] = ["V_mV", "m", "h", "n", "p", "q", "r", "u"];

/// Index of the membrane potential in [`State`].
pub const V: usize = 0;

/// Spike threshold used by [`simulate`]: the 0 mV of the ModelDB/Open Source
/// Brain versions. Every action potential of the four classes overshoots it
/// and even the IB burst spikes repolarise far below it.
pub const SPIKE_THRESHOLD_MV: f64 = 0.0;

/// Dead time after a detected spike, ms. Shorter than any interval the
/// models produce (the fastest, FS at 1 nA, is about 4.4 ms), it only guards
/// against a noisy trace re-crossing the threshold on one upstroke.
pub const SPIKE_REFRACTORY_MS: f64 = 1.0;

/// The four published cell classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// Regular spiking pyramidal cell: I_Na, I_Kd and the slow I_M that makes
    /// it adapt.
    Rs,
    /// Fast-spiking interneuron: I_Na, I_Kd and, in the fitted cell, an I_M
    /// with a shorter τ_max that adapts it only near threshold.
    Fs,
    /// Intrinsically bursting pyramidal cell: adds the high-threshold Ca²⁺
    /// current I_L.
    Ib,
    /// Low-threshold spiking cell: adds the T-type Ca²⁺ current I_T.
    Lts,
}

impl Class {
    pub const ALL: [Class; 4] = [Class::Rs, Class::Fs, Class::Ib, Class::Lts];

    pub fn name(self) -> &'static str {
        match self {
            Class::Rs => "RS",
            Class::Fs => "FS",
            Class::Ib => "IB",
            Class::Lts => "LTS",
        }
    }
}

/// Model parameters: a plain struct with public fields so that a caller can
/// perturb or randomise any of them. [`Params::for_class`] gives the
/// published sets; the table of sources is in `docs/pospischil.md`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    /// Membrane capacitance, µF/cm² (paper: 1 µF/cm² for every class).
    pub cm: f64,
    /// Membrane area, µm², of the paper's cylinder soma with L = d
    /// (area π d²). Only used to convert currents given in nA.
    pub area_um2: f64,
    /// Leak conductance (mS/cm²) and reversal (mV).
    pub g_leak: f64,
    pub e_leak: f64,
    /// Transient Na⁺ current (Traub & Miles kinetics), mS/cm², and E_Na, mV.
    pub g_na: f64,
    pub e_na: f64,
    /// Delayed-rectifier K⁺ current, mS/cm²; `e_k` (mV) is shared with I_M.
    pub g_kd: f64,
    pub e_k: f64,
    /// Spike-threshold shift V_T of the Traub–Miles rates, mV: it moves the
    /// whole I_Na/I_Kd kinetics along the voltage axis, and is how the paper
    /// fits each cell's threshold.
    pub v_t: f64,
    /// Slow non-inactivating K⁺ current I_M, mS/cm², and the peak of its
    /// time constant τ_max, ms.
    pub g_m: f64,
    pub tau_max: f64,
    /// High-threshold (L-type) Ca²⁺ current I_L, mS/cm² (IB only).
    pub g_l: f64,
    /// Low-threshold (T-type) Ca²⁺ current I_T, mS/cm² (LTS only), and its
    /// voltage shift V_x, mV.
    pub g_t: f64,
    pub v_x: f64,
    /// Ca²⁺ reversal for I_L and I_T, mV. Fixed: the minimal models carry no
    /// intracellular calcium.
    pub e_ca: f64,
    /// Constant background current, µA/cm²; the stimulation is added to it.
    pub i_app: f64,
}

/// π d² for a cylinder with L = d, in µm².
fn soma_area_um2(d_um: f64) -> f64 {
    std::f64::consts::PI * d_um * d_um
}

impl Params {
    /// The published parameter set of a class (sources per field in
    /// `docs/pospischil.md`, "Parameters").
    pub fn for_class(class: Class) -> Params {
        // Shared by all classes (paper, "Methods"): Cm, reversals.
        let base = Params {
            cm: 1.0,
            area_um2: 0.0,
            g_leak: 0.0,
            e_leak: -70.0,
            g_na: 0.0,
            e_na: 50.0,
            g_kd: 0.0,
            e_k: -90.0,
            v_t: 0.0,
            g_m: 0.0,
            tau_max: 1000.0,
            g_l: 0.0,
            g_t: 0.0,
            v_x: 2.0,
            e_ca: 120.0,
            i_app: 0.0,
        };
        match class {
            // Fit to an in-vitro RS cell (paper Fig. 2b).
            Class::Rs => Params {
                area_um2: soma_area_um2(61.4),
                g_leak: 0.0205,
                e_leak: -70.3,
                g_na: 56.0,
                g_kd: 6.0,
                v_t: -56.2,
                g_m: 0.075,
                tau_max: 608.0,
                ..base
            },
            // Fit to an in-vitro FS cell (paper Fig. 4).
            Class::Fs => Params {
                area_um2: soma_area_um2(56.9),
                g_leak: 0.038,
                e_leak: -70.4,
                g_na: 58.0,
                g_kd: 3.9,
                v_t: -57.9,
                g_m: 0.0787,
                tau_max: 502.0,
                ..base
            },
            // Generic IB cell of paper Fig. 5b (left), as in the published
            // NEURON code (ModelDB 123623, `sPYb_template` with the I_L
            // density of Fig. 5b), including that code's E_K = -100 mV, V_T =
            // -55 mV and τ_max = 1000 ms: with the -90 mV of the fitted
            // cells this I_L density fires long high-frequency runs instead
            // of one initial burst (docs/pospischil.md, "IB").
            Class::Ib => Params {
                area_um2: soma_area_um2(96.0),
                g_leak: 0.01,
                e_leak: -70.0,
                g_na: 50.0,
                g_kd: 5.0,
                e_k: -100.0,
                v_t: -55.0,
                g_m: 0.03,
                tau_max: 1000.0,
                g_l: 0.2,
                ..base
            },
            // Fit to an LTS cell (paper Fig. 9).
            Class::Lts => Params {
                area_um2: soma_area_um2(89.2),
                g_leak: 0.019,
                e_leak: -50.0,
                g_na: 50.0,
                g_kd: 4.0,
                v_t: -50.0,
                g_m: 0.028,
                tau_max: 4000.0,
                g_t: 0.4,
                v_x: -7.0,
                ..base
            },
        }
    }

    /// Current density (µA/cm²) of a current `i_na` (nA) injected into this
    /// cell: 1 nA over A µm² is 1e-3 µA / (A·1e-8 cm²) = 1e5/A µA/cm².
    pub fn na_to_density(&self, i_na: f64) -> f64 {
        i_na * 1e5 / self.area_um2
    }
}

/// x / (exp(x) − 1) written so that it is exact at and near x = 0, where the
/// Traub–Miles rates have a removable singularity.
#[inline(always)]
fn x_over_expm1(x: f64) -> f64 {
    if x.abs() < 1e-6 {
        1.0 - 0.5 * x
    } else {
        x / x.exp_m1()
    }
}

/// a / (exp(a/k) − 1), the linear-exponential rate form.
#[inline(always)]
fn linexp(a: f64, k: f64) -> f64 {
    k * x_over_expm1(a / k)
}

/// The voltage-only functions of the model at one V: for each gate its
/// steady state and 1/τ (so the right-hand side is (x∞ − x)·(1/τ)), and the
/// instantaneous T-type activation s∞².
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub m_inf: f64,
    pub m_rate: f64,
    pub h_inf: f64,
    pub h_rate: f64,
    pub n_inf: f64,
    pub n_rate: f64,
    pub p_inf: f64,
    pub p_rate: f64,
    pub q_inf: f64,
    pub q_rate: f64,
    pub r_inf: f64,
    pub r_rate: f64,
    pub u_inf: f64,
    pub u_rate: f64,
    pub s_inf2: f64,
}

impl Rates {
    /// Exact evaluation of the published rate functions.
    #[inline]
    pub fn exact(p: &Params, v: f64) -> Rates {
        // Traub–Miles I_Na and I_Kd, in the shifted variable V − V_T.
        let x = v - p.v_t;
        let a_m = 0.32 * linexp(13.0 - x, 4.0);
        let b_m = 0.28 * linexp(x - 40.0, 5.0);
        let a_h = 0.128 * (-(x - 17.0) / 18.0).exp();
        let b_h = 4.0 / (1.0 + (-(x - 40.0) / 5.0).exp());
        let a_n = 0.032 * linexp(15.0 - x, 5.0);
        let b_n = 0.5 * (-(x - 10.0) / 40.0).exp();
        // I_M (Yamada, Koch & Adams 1989).
        let e = ((v + 35.0) / 20.0).exp();
        let p_inf = 1.0 / (1.0 + (-(v + 35.0) / 10.0).exp());
        let p_rate = (3.3 * e + 1.0 / e) / p.tau_max;
        // I_L (Reuveni et al. 1993).
        let a_q = 0.055 * linexp(-27.0 - v, 3.8);
        let b_q = 0.94 * ((-75.0 - v) / 17.0).exp();
        let a_r = 0.000457 * ((-13.0 - v) / 50.0).exp();
        let b_r = 0.0065 / (((-15.0 - v) / 28.0).exp() + 1.0);
        // I_T (Destexhe et al. 1996, Huguenard & McCormick 1992 data),
        // shifted by V_x; τ_u divided by 3.7, the Q10 = 3 factor from 24 to
        // 36 °C.
        let w = v + p.v_x;
        let s_inf = 1.0 / (1.0 + (-(w + 57.0) / 6.2).exp());
        let u_inf = 1.0 / (1.0 + ((w + 81.0) / 4.0).exp());
        let tau_u =
            (30.8 + (211.4 + ((w + 113.2) / 5.0).exp()) / (1.0 + ((w + 84.0) / 3.2).exp())) / 3.7;
        Rates {
            m_inf: a_m / (a_m + b_m),
            m_rate: a_m + b_m,
            h_inf: a_h / (a_h + b_h),
            h_rate: a_h + b_h,
            n_inf: a_n / (a_n + b_n),
            n_rate: a_n + b_n,
            p_inf,
            p_rate,
            q_inf: a_q / (a_q + b_q),
            q_rate: a_q + b_q,
            r_inf: a_r / (a_r + b_r),
            r_rate: a_r + b_r,
            u_inf,
            u_rate: 1.0 / tau_u,
            s_inf2: s_inf * s_inf,
        }
    }
}

/// Total ionic current (µA/cm², outward positive) at state `y`.
#[inline(always)]
fn ionic_current(p: &Params, r: &Rates, y: &State) -> f64 {
    let [v, m, h, n, pm, q, rr, u] = *y;
    let n2 = n * n;
    let g_k = p.g_kd * n2 * n2 + p.g_m * pm;
    let g_ca = p.g_l * q * q * rr + p.g_t * r.s_inf2 * u;
    p.g_leak * (v - p.e_leak)
        + p.g_na * m * m * m * h * (v - p.e_na)
        + g_k * (v - p.e_k)
        + g_ca * (v - p.e_ca)
}

/// Right-hand side of the eight ODEs (mV/ms and 1/ms). `i_stim` (µA/cm²) is
/// added to the background `p.i_app`.
#[inline]
pub fn derivatives(p: &Params, y: &State, i_stim: f64) -> State {
    let r = Rates::exact(p, y[V]);
    let [_, m, h, n, pm, q, rr, u] = *y;
    [
        (p.i_app + i_stim - ionic_current(p, &r, y)) / p.cm,
        (r.m_inf - m) * r.m_rate,
        (r.h_inf - h) * r.h_rate,
        (r.n_inf - n) * r.n_rate,
        (r.p_inf - pm) * r.p_rate,
        (r.q_inf - q) * r.q_rate,
        (r.r_inf - rr) * r.r_rate,
        (r.u_inf - u) * r.u_rate,
    ]
}

/// The state with every gate at its steady state for membrane potential `v`.
pub fn steady_state_at(p: &Params, v: f64) -> State {
    let r = Rates::exact(p, v);
    [
        v, r.m_inf, r.h_inf, r.n_inf, r.p_inf, r.q_inf, r.r_inf, r.u_inf,
    ]
}

/// The resting state with the background current `p.i_app` alone: the lowest
/// V in [−120, 0] mV where the steady-state current–voltage curve crosses zero
/// upwards (a stable rest along V), found by bisection to 1e-10 mV. Starting
/// there avoids the seconds-long I_M and I_T transients a guessed initial V
/// would cause. `None` if the cell has no such rest (it fires tonically).
pub fn rest_state(p: &Params) -> Option<State> {
    let net = |v: f64| {
        let y = steady_state_at(p, v);
        ionic_current(p, &Rates::exact(p, v), &y) - p.i_app
    };
    let mut lo = -120.0;
    let mut f_lo = net(lo);
    while lo < 0.0 {
        let hi = lo + 0.25;
        let f_hi = net(hi);
        if f_lo < 0.0 && f_hi >= 0.0 {
            let (mut a, mut b) = (lo, hi);
            while b - a > 1e-10 {
                let c = 0.5 * (a + b);
                if net(c) < 0.0 {
                    a = c;
                } else {
                    b = c;
                }
            }
            return Some(steady_state_at(p, 0.5 * (a + b)));
        }
        lo = hi;
        f_lo = f_hi;
    }
    None
}

/// One classical RK4 step of length `h` (ms) with the stimulation held at
/// `i_stim` over the step. In place, no allocation.
#[inline]
pub fn rk4_step(p: &Params, y: &mut State, i_stim: f64, h: f64) {
    let stage = |base: &State, k: &State, c: f64| {
        let mut out = *base;
        for i in 0..N_STATES {
            out[i] += c * k[i];
        }
        out
    };
    let k1 = derivatives(p, y, i_stim);
    let k2 = derivatives(p, &stage(y, &k1, 0.5 * h), i_stim);
    let k3 = derivatives(p, &stage(y, &k2, 0.5 * h), i_stim);
    let k4 = derivatives(p, &stage(y, &k3, h), i_stim);
    for i in 0..N_STATES {
        y[i] += h / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]);
    }
}

/// Fixed-step RK4 over sample periods: the plant holds a command for one
/// sample period and the neuron takes equal substeps no longer than `dt_ms`
/// inside it.
#[derive(Clone, Copy, Debug)]
pub struct Rk4 {
    pub dt_ms: f64,
}

impl Rk4 {
    /// Advance `y` from `t0` to `t1` (ms) with the stimulation `i_stim`
    /// (µA/cm²) held constant; `on_step(t, y)` sees every substep so spikes
    /// can be timed at integrator resolution.
    #[inline]
    pub fn advance(
        &self,
        p: &Params,
        y: &mut State,
        t0: f64,
        t1: f64,
        i_stim: f64,
        mut on_step: impl FnMut(f64, &State),
    ) {
        let span = t1 - t0;
        let n = ((span / self.dt_ms) - 1e-9).ceil().max(1.0) as usize;
        let h = span / n as f64;
        for s in 0..n {
            rk4_step(p, y, i_stim, h);
            let t = if s + 1 == n {
                t1
            } else {
                t0 + (s + 1) as f64 * h
            };
            on_step(t, y);
        }
    }
}

/// Streaming spike detector: upward crossings of a threshold, timed by linear
/// interpolation between the two points that bracket them, ignoring crossings
/// within a refractory time of the previous spike. Never allocates.
#[derive(Clone, Debug)]
pub struct SpikeDetector {
    pub threshold_mv: f64,
    pub refractory_ms: f64,
    prev: Option<(f64, f64)>,
    last_spike: f64,
}

impl SpikeDetector {
    pub fn new(threshold_mv: f64, refractory_ms: f64) -> SpikeDetector {
        SpikeDetector {
            threshold_mv,
            refractory_ms,
            prev: None,
            last_spike: f64::NEG_INFINITY,
        }
    }

    /// Feed (t, V) in time order; returns the crossing time when this point
    /// completes a spike. Non-finite points reset the detector.
    #[inline]
    pub fn push(&mut self, t: f64, v: f64) -> Option<f64> {
        if !t.is_finite() || !v.is_finite() {
            self.prev = None;
            return None;
        }
        let th = self.threshold_mv;
        let out = match self.prev {
            Some((t0, v0)) if v0 < th && v >= th => {
                let tc = t0 + (th - v0) / (v - v0) * (t - t0);
                if tc - self.last_spike >= self.refractory_ms {
                    self.last_spike = tc;
                    Some(tc)
                } else {
                    None
                }
            }
            _ => None,
        };
        self.prev = Some((t, v));
        out
    }
}

/// Spike times (ms) of a sampled trace.
pub fn detect_spikes(trace: &[(f64, f64)], threshold_mv: f64, refractory_ms: f64) -> Vec<f64> {
    let mut d = SpikeDetector::new(threshold_mv, refractory_ms);
    trace.iter().filter_map(|&(t, v)| d.push(t, v)).collect()
}

/// Simulate `params` from `y0` for `duration_ms` with RK4 at `dt_ms`. The
/// stimulation `i_stim(t)` (µA/cm²) is sampled at the start of every step and
/// held over it, as the plant holds its command over a sample period (put
/// step edges on multiples of `dt_ms` and this is exact). Returns the trace
/// (t, V) at every step including t = 0, and the spike times (0 mV upward
/// crossings, 1 ms refractory).
pub fn simulate_params(
    params: &Params,
    y0: State,
    i_stim: impl Fn(f64) -> f64,
    duration_ms: f64,
    dt_ms: f64,
) -> (Vec<(f64, f64)>, Vec<f64>) {
    let steps = (duration_ms / dt_ms).round() as usize;
    let mut trace = Vec::with_capacity(steps + 1);
    let mut spikes = Vec::new();
    let mut det = SpikeDetector::new(SPIKE_THRESHOLD_MV, SPIKE_REFRACTORY_MS);
    let mut y = y0;
    trace.push((0.0, y[V]));
    det.push(0.0, y[V]);
    for k in 0..steps {
        let t0 = k as f64 * dt_ms;
        rk4_step(params, &mut y, i_stim(t0), dt_ms);
        let t1 = (k + 1) as f64 * dt_ms;
        trace.push((t1, y[V]));
        if let Some(ts) = det.push(t1, y[V]) {
            spikes.push(ts);
        }
    }
    (trace, spikes)
}

/// Simulate a published class from its rest ([`rest_state`]; all four
/// classes have one) with RK4 at `dt_ms`; see [`simulate_params`].
pub fn simulate(
    class: Class,
    i_stim: impl Fn(f64) -> f64,
    duration_ms: f64,
    dt_ms: f64,
) -> (Vec<(f64, f64)>, Vec<f64>) {
    let p = Params::for_class(class);
    let y0 = rest_state(&p).expect("published classes are quiescent without input");
    simulate_params(&p, y0, i_stim, duration_ms, dt_ms)
}

/// A current step: `amp` µA/cm² from `on_ms` (inclusive) to `off_ms`
/// (exclusive), on top of `base`.
pub fn step_current(base: f64, amp: f64, on_ms: f64, off_ms: f64) -> impl Fn(f64) -> f64 {
    // A hair of tolerance so that t = k·dt computed in floating point lands
    // on the intended side of an edge placed on a multiple of dt.
    move |t| {
        if t >= on_ms - 1e-9 && t < off_ms - 1e-9 {
            base + amp
        } else {
            base
        }
    }
}

#[cfg(test)]
mod tests {
    //! Firing behaviour of the four classes (docs/pospischil.md, "Firing
    //! behaviour checks"). Every protocol starts from [`rest_state`], steps
    //! the current at t = 100 ms, and is stated in nA (the paper's unit)
    //! converted to µA/cm² with the class's own area; RK4 at 0.01 ms.

    use super::*;

    const DT: f64 = 0.01;

    /// Spike times for a step of `amp_na` nA from `on` to `off` ms on top of
    /// a background `bg_na` nA, simulated for `dur` ms from rest.
    fn run_step(class: Class, bg_na: f64, amp_na: f64, on: f64, off: f64, dur: f64) -> Vec<f64> {
        let mut p = Params::for_class(class);
        p.i_app = p.na_to_density(bg_na);
        let y0 = rest_state(&p).unwrap();
        let amp = p.na_to_density(amp_na);
        simulate_params(&p, y0, step_current(0.0, amp, on, off), dur, DT).1
    }

    fn isis(s: &[f64]) -> Vec<f64> {
        s.windows(2).map(|w| w[1] - w[0]).collect()
    }

    #[test]
    fn nanoampere_conversion_uses_the_class_area() {
        // RS: d = 61.4 µm, area π·61.4² = 11,843.7 µm²; 0.1 nA -> 0.8443 µA/cm².
        let p = Params::for_class(Class::Rs);
        assert!((p.area_um2 - 11_843.7).abs() < 0.1, "{}", p.area_um2);
        assert!((p.na_to_density(0.1) - 0.844331).abs() < 1e-5);
    }

    #[test]
    fn linear_exponential_rates_are_continuous_through_their_singularity() {
        for &(a, k) in &[(0.0, 4.0), (1e-9, 5.0), (-1e-9, 3.8)] {
            let direct = |a: f64| a / ((a / k).exp() - 1.0);
            let near = 0.5 * (direct(a + 1e-4) + direct(a - 1e-4));
            assert!((linexp(a, k) - near).abs() < 1e-8, "a {a} k {k}");
        }
        // V exactly at the singular points of α_m, α_n (V − V_T = 13, 15)
        // and α_q (V = −27) gives finite rates.
        for c in Class::ALL {
            let p = Params::for_class(c);
            for v in [p.v_t + 13.0, p.v_t + 15.0, -27.0] {
                let d = derivatives(&p, &steady_state_at(&p, v), 0.0);
                assert!(d.iter().all(|x| x.is_finite()), "{} at {v}", c.name());
            }
        }
    }

    /// Resting potentials with no input: those of the fitted cells (RS, FS,
    /// LTS) as reported by the PySONIC implementation of the same sets
    /// (−71.9, −71.4, −54.0 mV), and the IB cell near its leak reversal.
    /// The rest is a true fixed point: 2 s from it, no spike and no drift.
    #[test]
    fn resting_potentials_match_published_values_and_are_stable() {
        for (class, want, tol) in [
            (Class::Rs, -71.9, 0.05),
            (Class::Fs, -71.4, 0.05),
            (Class::Ib, -72.0, 0.05),
            (Class::Lts, -54.0, 0.05),
        ] {
            let y0 = rest_state(&Params::for_class(class)).unwrap();
            assert!(
                (y0[V] - want).abs() < tol,
                "{} rest {}",
                class.name(),
                y0[V]
            );
            let d = derivatives(&Params::for_class(class), &y0, 0.0);
            assert!(
                d.iter().all(|x| x.abs() < 1e-9),
                "{} not at rest: {d:?}",
                class.name()
            );
            let (trace, spikes) = simulate(class, |_| 0.0, 2000.0, DT);
            assert!(spikes.is_empty(), "{} fired at rest", class.name());
            let drift = trace
                .iter()
                .map(|&(_, v)| (v - y0[V]).abs())
                .fold(0.0, f64::max);
            assert!(drift < 1e-6, "{} drifted {drift} mV", class.name());
        }
    }

    /// RS, 0.2 nA (1.689 µA/cm²) for 1 s: I_M builds up over hundreds of ms
    /// and the ISIs lengthen from ~20 to ~39 ms.
    #[test]
    fn rs_adapts_under_a_step() {
        let s = run_step(Class::Rs, 0.0, 0.2, 100.0, 1100.0, 1100.0);
        let i = isis(&s);
        assert!(s.len() >= 20, "{} spikes", s.len());
        let (first, last) = (i[0], *i.last().unwrap());
        assert!(last > 1.5 * first, "first ISI {first:.2}, last {last:.2}");
        // Monotone lengthening: each ISI at least the previous one (to 0.1 ms).
        assert!(i.windows(2).all(|w| w[1] >= w[0] - 0.1), "{i:?}");
    }

    /// FS, 1 nA (9.832 µA/cm²) for 1 s: tonic firing near 200 Hz whose ISIs
    /// change by less than 15 % from first to last.
    #[test]
    fn fs_fires_fast_with_little_adaptation() {
        let s = run_step(Class::Fs, 0.0, 1.0, 100.0, 1100.0, 1100.0);
        let i = isis(&s);
        assert!(s.len() >= 150, "{} spikes in 1 s", s.len());
        let (first, last) = (i[0], *i.last().unwrap());
        assert!(last < 1.15 * first, "first ISI {first:.2}, last {last:.2}");
        // At the same drive the RS cell fires slower.
        assert!(run_step(Class::Rs, 0.0, 1.0, 100.0, 1100.0, 1100.0).len() < s.len());
    }

    /// IB, 0.15 nA (0.518 µA/cm²) for 2 s (the Fig. 5b protocol): an initial
    /// burst (ISIs < 10 ms) on the I_L depolarisation, then a long pause and
    /// slow firing (ISIs > 50 ms).
    #[test]
    fn ib_bursts_then_fires_slowly() {
        let s = run_step(Class::Ib, 0.0, 0.15, 100.0, 2100.0, 2200.0);
        let i = isis(&s);
        let burst = i.iter().take_while(|&&x| x < 10.0).count() + 1;
        assert!(burst >= 3, "initial burst of {burst} spikes; ISIs {i:?}");
        assert!(s[0] < 200.0, "burst starts at {}", s[0]);
        let tail = &i[i.len() - 5..];
        assert!(tail.iter().all(|&x| x > 50.0), "late ISIs {tail:?}");
        // Without I_L the same cell fires no burst at all.
        let mut p = Params::for_class(Class::Ib);
        p.g_l = 0.0;
        let y0 = rest_state(&p).unwrap();
        let s0 = simulate_params(
            &p,
            y0,
            step_current(0.0, p.na_to_density(0.15), 100.0, 2100.0),
            2200.0,
            DT,
        )
        .1;
        assert!(isis(&s0).iter().all(|&x| x >= 10.0), "{:?}", isis(&s0));
    }

    /// LTS, −0.2 nA (−0.800 µA/cm²) from 100 to 600 ms: silent during the
    /// hyperpolarisation, which de-inactivates I_T; on release a rebound
    /// burst of ≥ 3 spikes with ISIs < 10 ms. Without I_T: no rebound.
    #[test]
    fn lts_fires_a_rebound_burst_through_i_t() {
        let s = run_step(Class::Lts, 0.0, -0.2, 100.0, 600.0, 1100.0);
        assert!(s.iter().all(|&t| t > 600.0), "{s:?}");
        assert!(s.len() >= 3 && s[0] < 700.0, "{s:?}");
        assert!(isis(&s[..3]).iter().all(|&x| x < 10.0), "{s:?}");
        let mut p = Params::for_class(Class::Lts);
        p.g_t = 0.0;
        let y0 = rest_state(&p).unwrap();
        let s0 = simulate_params(
            &p,
            y0,
            step_current(0.0, p.na_to_density(-0.2), 100.0, 600.0),
            1100.0,
            DT,
        )
        .1;
        assert!(s0.is_empty(), "rebound without I_T: {s0:?}");
    }

    /// LTS held at −81.6 mV by −0.15 nA, then +0.2 nA: a burst at the step
    /// onset (first two ISIs < 10 ms), then slower, lengthening ISIs.
    #[test]
    fn lts_bursts_at_onset_from_hyperpolarised_rest() {
        let s = run_step(Class::Lts, -0.15, 0.2, 100.0, 1100.0, 1100.0);
        let i = isis(&s);
        assert!(i.len() >= 4 && i[0] < 10.0 && i[1] < 10.0, "{i:?}");
        assert!(i[3] > 2.0 * i[0], "{i:?}");
    }

    /// Spike count over a 1 s step is non-decreasing in the step amplitude,
    /// 0.05 to 1.0 nA in 0.05 nA steps, for every class; and every class
    /// fires at 1 nA.
    #[test]
    fn f_i_curves_are_monotonic() {
        for class in Class::ALL {
            let counts: Vec<usize> = (1..=20)
                .map(|k| run_step(class, 0.0, 0.05 * k as f64, 100.0, 1100.0, 1100.0).len())
                .collect();
            assert!(
                counts.windows(2).all(|w| w[1] >= w[0]),
                "{}: {counts:?}",
                class.name()
            );
            assert!(counts[19] > 100, "{}: {counts:?}", class.name());
        }
    }

    /// RK4 at 0.01 ms against 0.0025 ms: every spike time within 1e-3 ms,
    /// counts equal, for the two classes with the sharpest dynamics.
    #[test]
    fn rk4_at_the_default_step_is_converged() {
        for (class, amp) in [(Class::Fs, 1.0), (Class::Ib, 0.15)] {
            let p = Params::for_class(class);
            let y0 = rest_state(&p).unwrap();
            let stim = step_current(0.0, p.na_to_density(amp), 100.0, 600.0);
            let a = simulate_params(&p, y0, &stim, 700.0, 0.01).1;
            let b = simulate_params(&p, y0, &stim, 700.0, 0.0025).1;
            assert_eq!(a.len(), b.len(), "{}", class.name());
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-3, "{}: {worst} ms", class.name());
        }
    }

    #[test]
    fn advance_lands_on_interval_end_and_matches_plain_steps() {
        let p = Params::for_class(Class::Rs);
        let mut y = rest_state(&p).unwrap();
        let mut z = y;
        let rk = Rk4 { dt_ms: 0.01 };
        let mut last = 0.0;
        let mut n = 0;
        rk.advance(&p, &mut y, 0.0, 0.1, 5.0, |t, _| {
            last = t;
            n += 1;
        });
        assert_eq!((last, n), (0.1, 10));
        for _ in 0..10 {
            rk4_step(&p, &mut z, 5.0, 0.1 / 10.0);
        }
        assert_eq!(y, z);
    }

    #[test]
    fn detector_interpolates_and_honours_refractory() {
        let mut d = SpikeDetector::new(0.0, 1.0);
        assert_eq!(d.push(0.0, -10.0), None);
        assert_eq!(d.push(1.0, 10.0), Some(0.5));
        assert_eq!(d.push(1.2, -1.0), None);
        assert_eq!(d.push(1.4, 1.0), None); // 0.8 ms after the last spike
        assert_eq!(d.push(2.0, -5.0), None);
        assert_eq!(d.push(3.0, 5.0), Some(2.5));
        assert_eq!(d.push(f64::NAN, 5.0), None);
    }
}
