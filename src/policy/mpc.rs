//! Model-predictive control over the LSTM forecast (DESIGN §4).
//!
//! Each control period the planner scores a batch of candidate stimulation
//! plans over the model's horizon and publishes the best:
//!
//! 1. **Candidates**: the previous best plan shifted to now (warm start),
//!    zero, a library of shapes (constant levels and short pulses of either
//!    sign at several offsets), and random perturbations of the warm start.
//! 2. **Feasible first**: every candidate is passed, sample by sample,
//!    through a copy of the loop's safety limiter in the state it had at
//!    the snapshot, so the forecaster sees the current the limiter would
//!    actually let through, and the published plan rarely needs clamping.
//! 3. **One batched forecast per iteration**; cost = objective term
//!    ([`super::Objective::forecast_cost`]) + λ·charge + smoothness.
//! 4. **Delay compensation**: a plan takes effect a fixed planning delay
//!    after its snapshot (`control.compute_delay`), and until then the loop
//!    keeps executing the previous plan. Every candidate therefore starts
//!    with those already-committed samples, so the forecast sees what will
//!    really be applied and only the rest is optimised.
//! 5. **Cross-entropy refinement**: further iterations sample around the
//!    elites' per-step mean and spread, keeping the best so far, while the
//!    iteration count (free clock) or time budget (paced clock) allows.
//!
//! [`Mpc::new`] allocates every buffer; [`Mpc::plan`] allocates nothing
//! itself (the native forecaster does not either).

use super::{effort_cost, CostWeights, Objective, PlanContext};
use crate::forecast::{ForecastError, Forecaster};
use crate::safety::SafetyLimiter;
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;
use std::time::Instant;

/// A forecast spike further than this from the real one is not the same
/// spike, ms.
const SPIKE_MATCH_MS: f64 = 8.0;
/// Plans this long before a spike are the ones whose forecast decided the
/// stimulation toward it, ms.
const LEAD_MIN_MS: f64 = 3.0;
const LEAD_MAX_MS: f64 = 8.0;
/// Weight of each new squared error in the forecast-error figure (about
/// the last 50 measurements, a tenth of a second of plans).
const ERROR_WEIGHT: f64 = 0.02;
/// Plans remembered for the lag estimate (at most one per model step).
const PREDICTIONS: usize = 32;

/// MPC settings (validated `[mpc]`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MpcConfig {
    /// Candidates per forecast batch.
    pub candidates: usize,
    /// Largest |I| a plan may ask for, µA/cm²: the range the model was
    /// trained on. Outside it the forecast is an extrapolation the
    /// optimiser would exploit (a +10 µA/cm² pulse a ±6-trained model
    /// thinks harmless). The safety limit applies on top.
    pub max_amplitude: f64,
    /// Forecast batches per plan (the first scores the library).
    pub iterations: usize,
    /// Best candidates the cross-entropy step refits to.
    pub elites: usize,
    pub weights: CostWeights,
    /// Paced clock: stop refining once this much time has gone, ms.
    pub time_budget_ms: f64,
    /// Spikes in a forecast are upward crossings of this, mV.
    pub spike_threshold_mv: f64,
    /// Read forecast spikes at the model card's `output.spike_threshold_mv`
    /// (chosen by calibration) when it has one.
    pub model_spike_threshold: bool,
    /// Spread of the first random perturbations, as a fraction of the
    /// amplitude limit.
    pub spread: f64,
    /// Offset-free correction: the weight (0 ..= 1) with which each new
    /// subthreshold error of the previous plan's forecast updates the bias
    /// added to every forecast; 0 turns it off.
    pub bias_gain: f64,
    pub seed: u64,
    /// Delay between writing a command and the cell receiving it, ms: the
    /// forecast sees each candidate this much later (rounded to model
    /// steps), after the commands already on their way.
    pub actuation_delay_ms: f64,
    /// Forecast each candidate with the spike reflex's pulse
    /// (`control.feedback.spike_pulse`) where the loop will apply it, after
    /// the last detected spike: the loop replaces the plan's current
    /// there, so a forecast that does not see the pulse foresees the burst
    /// the pulse prevents, and the plan spends charge against it.
    pub plan_reflex: bool,
    /// `silence`: the plans aim this far below the objective's ceiling, mV
    /// (negative: above). The objective's own ceiling still scores the
    /// run; this only moves where the plans aim, because where they land
    /// relative to that aim depends on the model and the noise.
    pub silence_margin_mv: f64,
    /// Time constant of a low-pass on the measured V the loop fills the
    /// model's window (and the plan's starting state) with, ms (0: the raw
    /// samples).
    pub window_filter_ms: f64,
    /// `burst`: a forecast spike outside a burst (none within `max_isi`
    /// before it) takes this times the run's burst fraction off a plan's
    /// cost (0: such spikes are free, as before).
    pub burst_single_credit: f64,
}

/// `objective` as MPC's plans pursue it: the silence ceiling moved down by
/// `mpc.silence_margin`, and the burst cost's credit for spikes outside
/// bursts (`mpc.burst_single_credit`).
fn aimed(mut objective: Objective, cfg: &MpcConfig) -> Objective {
    objective.ceiling_mv -= cfg.silence_margin_mv;
    objective.burst_single_credit = cfg.burst_single_credit;
    objective
}

/// Who drives when the guard takes control from MPC (`control.guard.fallback`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardFallback {
    /// The objective's classical baseline (`[pid]`, as `--policy pid`).
    Baseline,
    /// No stimulation: the one policy MPC must never be worse than.
    Off,
}

impl GuardFallback {
    pub fn name(self) -> &'static str {
        match self {
            GuardFallback::Baseline => "baseline",
            GuardFallback::Off => "off",
        }
    }
}

/// Which forecasts the guard judges the model by (`control.guard.forecasts`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardForecasts {
    /// The plan's forecast, as the planner optimised against it: the
    /// currents it assumed, which the loop's own currents (the spike
    /// reflex and its anticipation, the feedback, the limiter) may replace.
    Planned,
    /// The model's forecast of the currents the loop actually applied over
    /// the horizon, made once they are known (one more forecast per plan,
    /// on the planner): a test of the model alone, not of the plan.
    Applied,
}

impl GuardForecasts {
    pub fn name(self) -> &'static str {
        match self {
            GuardForecasts::Planned => "planned",
            GuardForecasts::Applied => "applied",
        }
    }
}

/// The MPC guard (validated `[control.guard]`): when MPC hands control to
/// the fallback and when it takes it back (see `control::guard`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct GuardConfig {
    pub enabled: bool,
    pub fallback: GuardFallback,
    /// Span the forecast and the objective are judged over, ms of plant
    /// time: the rolling window of the forecast errors, and the length of
    /// each objective window.
    pub window_ms: f64,
    /// Hand over when the forecast's RMS error over MPC's whole time in
    /// control exceeds this factor times persistence's on the same targets.
    /// Judged over the tenure, not the last window: persistence is nearly
    /// exact over a quiet second, so a rolling ratio spikes on a model with
    /// a long good record (timing, evaluation seeds 2 and 4: 0.81, 0.84
    /// after seconds near 0.55), while a wrong model is wrong from its
    /// first window on, where the tenure and the window are the same.
    pub model_ratio: f64,
    /// ... or when the error over the last window alone exceeds this factor
    /// times persistence's (a model gone wrong after a good start; 1: worse
    /// than persistence, the rule).
    pub model_ratio_window: f64,
    /// Forecast errors below this never hand over, mV: the model is then
    /// as good as the measurement allows, and persistence doing better only
    /// means the controller holds V still.
    pub min_error_mv: f64,
    /// Hand over when MPC's objective error over a window exceeds the
    /// fallback's measured one by this fraction.
    pub objective_margin: f64,
    /// Length of MPC's first objective window after it takes control, ms
    /// (≤ `window_ms`): a cell where MPC does harm shows it within a
    /// fraction of a window, and every sample of harm stays in the score
    /// (and in the trajectory after it).
    pub first_window_ms: f64,
    /// Score each forecast on every target of its horizon (true), or only
    /// up to the first sample where the loop applied a current of its own
    /// in place of the plan's (MPC's spike reflex; false): a forecast is
    /// then judged only on the currents it was asked about. The guard's
    /// `model_ratio` was chosen scoring every target.
    pub score_off_plan: bool,
    /// Judge the planned forecasts or the forecasts of what was applied.
    pub forecasts: GuardForecasts,
    /// Probation start, ms after the objective's settle span (0: none):
    /// the fallback drives first so that its objective error on this cell
    /// is measured before MPC may act, and MPC is judged against it.
    pub probation_ms: f64,
    /// Put MPC's spike reflex (`control.feedback.spike_pulse`) on trial
    /// once this many spikes have come within [`REBOUND_MS`] of the end of
    /// its pulse (0: never): a hyperpolarising pulse whose release fires
    /// the cell (anode-break excitation) makes spikes of its own. Whether
    /// that outweighs the bursts it stops differs from cell to cell, so
    /// the trial measures it: one whole window with the reflex, one
    /// without, and the better stays.
    pub reflex_rebounds: u32,
    /// The first time the model fails the model count, go back to the
    /// model it replaced (the base model a calibration in the same session
    /// or scenario started from) with MPC keeping control, instead of
    /// handing over; a second failure hands over as usual. A calibrated
    /// model forecasts its calibration data better than the base model
    /// (on every calibrated tuning cell), yet in closed loop it can lose
    /// to persistence where the base model does not.
    pub revert: bool,
}

/// How soon after the spike reflex's pulse ends a spike counts as evoked
/// by its release, ms. In recorded MPC runs on calibrated tuning cells
/// 2001-2024 (`burst_unseen_cal`, a 4 ms pulse), every such spike on the
/// two cells with any (2011: 8, 2014: 45) came within 1 ms of the pulse's
/// end, none 1-3 ms after it; on the 21 others none came within 3 ms.
pub const REBOUND_MS: f64 = 1.0;

impl GuardConfig {
    /// Whether the run starts on the fallback (see `probation_ms`).
    pub fn starts_on_fallback(&self) -> bool {
        self.enabled && self.probation_ms > 0.0
    }

    /// Whether the model is judged by its forecasts of what was applied
    /// (the planner then makes them, the guard takes them).
    pub fn judges_applied(&self) -> bool {
        self.forecasts == GuardForecasts::Applied
    }
}

/// Ancillary feedback around the plan (validated `[control.feedback]`):
/// per sample, `u = u_plan + gain · e + integral_gain · ∫e dt` with
/// `e = v_pred − v_meas`, clipped, applied only where the plan's prediction
/// is trustworthy (see `control::decide`). The integral is what removes a
/// steady error the model makes about the cell's response to current,
/// which a proportional term only shrinks.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct FeedbackConfig {
    /// µA/cm² per mV of deviation; 0 (with `integral_gain` 0) turns the
    /// feedback off.
    pub gain: f64,
    /// µA/cm² per mV·ms of summed deviation.
    pub integral_gain: f64,
    /// What the deviation is measured from.
    pub target: FeedbackTarget,
    /// Largest |correction|, µA/cm².
    pub max_correction: f64,
    /// No correction when |v_pred − v_meas| exceeds this, mV (the plan no
    /// longer describes the cell: a spike it did not foresee, or one
    /// early or late).
    pub max_deviation_mv: f64,
    /// No correction when the prediction or the measurement is above this,
    /// mV (within a spike the deviation is one of timing).
    pub ceiling_mv: f64,
    /// Time constant of the low-pass on the measured V the deviation is
    /// taken from, and on the target it is compared with (so that the lag
    /// does not become a tracking error), ms (0: the raw sample; see
    /// [`super::filter`]).
    pub filter_ms: f64,
    /// Time constant of a low-pass on the plan's current as the loop
    /// applies it, ms (0: the plan as it came). Each plan is re-optimised
    /// from a window whose newest sample carries the measurement noise, so
    /// successive plans jitter; on a subthreshold task that jitter moves
    /// the true membrane.
    pub plan_filter_ms: f64,
    /// The spike reflex: the current that replaces the plan's from
    /// `spike_pulse_delay_ms` after each detected spike for
    /// `spike_pulse_width_ms`, µA/cm² (0: off). A plan acts a compute delay
    /// after its snapshot, too late to meet a burst's after-potential.
    pub spike_pulse: f64,
    pub spike_pulse_delay_ms: f64,
    pub spike_pulse_width_ms: f64,
    /// Anticipation: the reflex also fires this long before the spike the
    /// active plan forecasts, ms (0: off), for a command that reaches the
    /// cell late.
    pub spike_pulse_lead_ms: f64,
}

/// What the feedback between plans holds V to (`control.feedback.target`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedbackTarget {
    /// The plan's own expected trajectory (tube MPC's ancillary law).
    Plan,
    /// The voltage objective's reference, where there is one (elsewhere:
    /// the plan): the plan is then the feed-forward of a clamp, and the
    /// correction does not hold V to the optimiser's imprecision.
    Reference,
}

/// The state the plan starts from, taken at a snapshot.
pub struct PlanInput<'a> {
    /// The last `t_in` model steps, oldest first.
    pub window_v: &'a [f32],
    pub window_i: &'a [f32],
    /// Index of the snapshot's last sample: the plan starts at the next.
    pub base_index: u64,
    pub t_ms: f64,
    pub v_now: f64,
    pub last_spike_ms: f64,
    /// Fraction of the run's detected spikes so far that were in bursts
    /// (within `max_isi` of the previous spike, as the score counts).
    pub burst_fraction: f64,
    /// The loop's limiter as it was at the snapshot.
    pub limiter: SafetyLimiter,
}

/// What one planning step did.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlanStats {
    pub cost: f64,
    pub iterations: u32,
    /// Time spent in the forecaster, ns.
    pub forecast_ns: u64,
}

/// The MPC planner's state and buffers.
pub struct Mpc {
    /// Where forecast spikes are read, mV: the configured threshold, or
    /// the model's own (see [`Mpc::adopt_card`]).
    spike_threshold_mv: f64,
    cfg: MpcConfig,
    objective: Objective,
    t_out: usize,
    decimation: usize,
    dt_model: f64,
    amplitude: f64,
    /// K × t_out requested levels (one per model step).
    raw: Vec<f32>,
    /// K × t_out feasible step means (the forecaster's plans).
    steps: Vec<f32>,
    /// K × (t_out · decimation) feasible per-sample currents.
    samples: Vec<f32>,
    out: Vec<f32>,
    costs: Vec<f64>,
    order: Vec<usize>,
    /// The best plan so far: requested levels and per-sample currents.
    best_raw: Vec<f32>,
    best_samples: Vec<f32>,
    best_cost: f64,
    /// Samples at the start of each plan already committed (the planning
    /// delay), their currents for this plan, and the previous plan's
    /// per-sample currents.
    committed: usize,
    head: Vec<f32>,
    prev_samples: Vec<f32>,
    /// The best candidate's forecast, and the previous plan's.
    best_v: Vec<f32>,
    prev_v: Vec<f32>,
    /// Output-disturbance estimate added to forecasts, mV.
    bias: f64,
    /// Exponentially weighted mean square of the subthreshold forecast
    /// errors `update_bias` sees, mV² (NaN: none yet); read by the service.
    error_sq: f64,
    /// Spike-timing bias: real spike − forecast crossing, ms; the last
    /// plan's forecast crossing (absolute ms) and the last spike seen.
    spike_lag: f64,
    /// The last plan's first forecast spike, lag-corrected, plant ms.
    best_spike: f64,
    /// Recent plans' (plan time, first forecast spike) ring.
    predictions: [(f64, f64); PREDICTIONS],
    next_prediction: usize,
    seen_spike: f64,
    /// The previous plan's requested levels and where it started.
    prev_raw: Vec<f32>,
    prev_base: Option<u64>,
    /// The actuation delay in model steps; the window's currents and each
    /// candidate's steps as the cell feels them, that many steps later.
    lag_steps: usize,
    felt_window: Vec<f32>,
    felt_steps: Vec<f32>,
    /// The spike reflex the loop applies (pulse µA/cm², from ms, to ms
    /// after the last spike), when the plan is to see it.
    reflex: Option<(f64, f64, f64)>,
    /// The reflex as configured, while the guard has it suspended.
    reflex_configured: Option<(f64, f64, f64)>,
    mean: Vec<f64>,
    spread: Vec<f64>,
    rng: Xoshiro256PlusPlus,
}

impl Mpc {
    /// A planner for `forecaster`'s horizon, `decimation` samples per
    /// model step; `amplitude`: the safety limit on |I|.
    pub fn new(
        cfg: MpcConfig,
        objective: Objective,
        t_out: usize,
        decimation: usize,
        dt_model: f64,
        amplitude: f64,
        committed: usize,
    ) -> Mpc {
        let k = cfg.candidates;
        let n = t_out * decimation;
        let objective = aimed(objective, &cfg);
        let lag_steps = ((cfg.actuation_delay_ms / dt_model).round().max(0.0) as usize).min(t_out);
        Mpc {
            spike_threshold_mv: cfg.spike_threshold_mv,
            lag_steps,
            felt_window: Vec::new(),
            felt_steps: vec![0.0; if lag_steps > 0 { k * t_out } else { 0 }],
            reflex: None,
            reflex_configured: None,
            committed: committed.min(n),
            head: vec![0.0; n],
            prev_samples: vec![0.0; n],
            cfg,
            objective,
            t_out,
            decimation,
            dt_model,
            amplitude,
            raw: vec![0.0; k * t_out],
            steps: vec![0.0; k * t_out],
            samples: vec![0.0; k * n],
            out: vec![0.0; k * t_out],
            costs: vec![0.0; k],
            order: (0..k).collect(),
            best_raw: vec![0.0; t_out],
            best_samples: vec![0.0; n],
            best_cost: f64::INFINITY,
            best_v: vec![0.0; t_out],
            prev_v: vec![0.0; t_out],
            bias: 0.0,
            error_sq: f64::NAN,
            spike_lag: 0.0,
            best_spike: f64::NAN,
            predictions: [(f64::NEG_INFINITY, f64::NAN); PREDICTIONS],
            next_prediction: 0,
            seen_spike: f64::NEG_INFINITY,
            prev_raw: vec![0.0; t_out],
            prev_base: None,
            mean: vec![0.0; t_out],
            spread: vec![0.0; t_out],
            rng: Xoshiro256PlusPlus::seed_from_u64(cfg.seed),
        }
    }

    /// While the guard's fallback drives: the model's forecast with the
    /// last applied current held over the horizon (exactly what the `off`
    /// fallback applies; nearly what a slow baseline does), so the guard
    /// can judge the model on this cell before MPC acts. The warm start
    /// is forgotten: the plans MPC would have made were not applied.
    pub fn forecast_held(
        &mut self,
        input: &PlanInput,
        forecaster: &mut Forecaster,
    ) -> Result<&[f32], ForecastError> {
        self.reset();
        let held = input.window_i.last().copied().unwrap_or(0.0);
        self.steps.fill(held);
        self.forecast_one(input.window_v, input.window_i, forecaster)
    }

    /// The model's forecast (mV, before the bias) of `applied`, the
    /// currents the loop applied over a horizon (one per model step), from
    /// the window of the plan it followed: what the guard judges the model
    /// by with `control.guard.forecasts = "applied"`. The plan's state
    /// (warm start, bias, lags) is untouched.
    pub fn hindcast(
        &mut self,
        window_v: &[f32],
        window_i: &[f32],
        applied: &[f32],
        forecaster: &mut Forecaster,
    ) -> Result<&[f32], ForecastError> {
        let t_out = self.t_out;
        self.steps[..t_out].copy_from_slice(&applied[..t_out]);
        self.forecast_one(window_v, window_i, forecaster)
    }

    /// One forecast of the first candidate's steps (`steps[..t_out]`), as
    /// the cell feels them (the actuation delay).
    fn forecast_one(
        &mut self,
        window_v: &[f32],
        window_i: &[f32],
        forecaster: &mut Forecaster,
    ) -> Result<&[f32], ForecastError> {
        let t_out = self.t_out;
        self.fill_felt(window_i);
        let (window_i, steps): (&[f32], &[f32]) = if self.lag_steps > 0 {
            (&self.felt_window, &self.felt_steps[..t_out])
        } else {
            (window_i, &self.steps[..t_out])
        };
        forecaster.forecast(window_v, window_i, steps, 1, &mut self.out[..t_out])?;
        Ok(&self.out[..t_out])
    }

    /// The output-disturbance estimate the last plan's forecasts carry, mV.
    pub fn bias_mv(&self) -> f32 {
        self.bias as f32
    }

    /// Samples per model step.
    pub fn decimation(&self) -> usize {
        self.decimation
    }

    /// The loop's spike reflex (`control.feedback`), which candidates are
    /// forecast with if `mpc.plan_reflex` is set.
    pub fn with_reflex(mut self, f: &FeedbackConfig) -> Mpc {
        self.reflex = (self.cfg.plan_reflex && f.spike_pulse != 0.0).then(|| {
            (
                f.spike_pulse.clamp(-self.amplitude, self.amplitude),
                f.spike_pulse_delay_ms,
                f.spike_pulse_delay_ms + f.spike_pulse_width_ms,
            )
        });
        self.reflex_configured = self.reflex;
        self
    }

    /// The guard suspended the loop's reflex (its release fires the cell)
    /// or resumed it: candidates are forecast as the loop will act.
    pub fn set_reflex(&mut self, on: bool) {
        self.reflex = if on { self.reflex_configured } else { None };
    }

    /// Size the actuation-delay buffer for a model window of `t_in` steps,
    /// so that [`Mpc::plan`] allocates nothing.
    pub fn with_window(mut self, t_in: usize) -> Mpc {
        if self.lag_steps > 0 {
            self.felt_window = vec![0.0; t_in];
        }
        self
    }

    /// Read forecast spikes where `card` says this model puts them, if
    /// configured to and the card says (a calibrated model), else at
    /// `mpc.spike_threshold`. Called for the first model and at every swap.
    pub fn adopt_card(&mut self, card: &crate::forecast::card::ModelCard) {
        self.spike_threshold_mv = match (
            self.cfg.model_spike_threshold,
            card.output.spike_threshold_mv,
        ) {
            (true, Some(th)) => th,
            _ => self.cfg.spike_threshold_mv,
        };
    }

    /// Where forecast spikes are read now, mV.
    pub fn spike_threshold_mv(&self) -> f64 {
        self.spike_threshold_mv
    }

    /// Samples a plan covers.
    pub fn plan_len(&self) -> usize {
        self.t_out * self.decimation
    }

    /// The best plan of the last [`Mpc::plan`], per sample from the one
    /// after the snapshot.
    pub fn best(&self) -> &[f32] {
        &self.best_samples
    }

    /// The model's forecast (mV) for the best plan of the last
    /// [`Mpc::plan`], without the online bias correction: what the model
    /// itself predicted, for the recording and the drift monitor.
    pub fn model_forecast(&self) -> &[f32] {
        &self.prev_v
    }

    /// Forget the warm start and the bias (after a fault or a model swap).
    pub fn reset(&mut self) {
        self.prev_base = None;
        self.prev_raw.fill(0.0);
        self.prev_samples.fill(0.0);
        self.bias = 0.0;
        self.spike_lag = 0.0;
        self.predictions = [(f64::NEG_INFINITY, f64::NAN); PREDICTIONS];
    }

    /// Pursue `objective` from the next plan on (an operator's change).
    pub fn set_objective(&mut self, objective: Objective) {
        self.objective = aimed(objective, &self.cfg);
    }

    /// RMS of recent subthreshold forecast errors (what the previous plan
    /// forecast for now against what came), mV; `None` before the first.
    /// It is the innovation of the offset-free correction, before that
    /// correction is applied, so it shows how well the model tracks the
    /// cell (a regime change raises it).
    pub fn forecast_error_mv(&self) -> Option<f64> {
        self.error_sq.is_finite().then(|| self.error_sq.sqrt())
    }

    /// The best plan's forecast of the last [`Mpc::plan`], mV, one per
    /// model step after the snapshot (what `neurostimd plot` overlays).
    pub fn best_forecast(&self) -> &[f32] {
        &self.best_v
    }

    /// Model step, ms.
    pub fn dt_model(&self) -> f64 {
        self.dt_model
    }

    /// When the last plan's forecast puts its first spike, plant ms,
    /// corrected by the learnt spike-timing lag (NaN: none forecast).
    pub fn best_spike_ms(&self) -> f64 {
        self.best_spike
    }

    /// The learnt spike-timing bias, ms.
    pub fn spike_lag(&self) -> f64 {
        self.spike_lag
    }

    /// A new spike: compare it with what the plans made a few milliseconds
    /// before it forecast (those that decided how to stimulate toward it,
    /// not the last one, which saw it coming), and fold the timing error
    /// into the lag estimate: the forecast's spikes may be systematically
    /// early or late (a smeared upstroke).
    fn update_spike_lag(&mut self, input: &PlanInput) {
        let spike = input.last_spike_ms;
        if spike <= self.seen_spike {
            return;
        }
        self.seen_spike = spike;
        let g = self.cfg.bias_gain;
        // The oldest plan made within the lead window that forecast a
        // spike near this one.
        let mut best: Option<(f64, f64)> = None;
        for &(at, predicted) in &self.predictions {
            let lead = spike - at;
            if (LEAD_MIN_MS..=LEAD_MAX_MS).contains(&lead)
                && (spike - predicted).abs() < SPIKE_MATCH_MS
                && best.is_none_or(|(b, _)| at < b)
            {
                best = Some((at, predicted));
            }
        }
        if let (Some((_, p)), true) = (best, g > 0.0) {
            self.spike_lag = (1.0 - g) * self.spike_lag + g * (spike - p);
        }
    }

    /// Offset-free MPC: compare what the previous plan's forecast said V
    /// would be now with what it is, and fold the difference into the bias.
    /// Only subthreshold: around a spike the error is one of timing, not
    /// offset, and would swamp the estimate.
    fn update_bias(&mut self, input: &PlanInput) {
        let g = self.cfg.bias_gain;
        let Some(b) = self.prev_base else { return };
        if input.base_index <= b {
            return;
        }
        let m = (input.base_index - b) as usize;
        if !m.is_multiple_of(self.decimation) || m / self.decimation == 0 {
            return;
        }
        let j = m / self.decimation - 1;
        if j >= self.t_out {
            return;
        }
        let th = self.spike_threshold_mv;
        let predicted = self.prev_v[j] as f64;
        let recent_spike = input.t_ms - input.last_spike_ms < 20.0;
        if predicted < th && input.v_now < th && !recent_spike {
            let raw = input.v_now - predicted;
            self.error_sq = if self.error_sq.is_finite() {
                (1.0 - ERROR_WEIGHT) * self.error_sq + ERROR_WEIGHT * raw * raw
            } else {
                raw * raw
            };
            if g > 0.0 {
                let e = raw.clamp(-10.0, 10.0);
                self.bias = (1.0 - g) * self.bias + g * e;
            }
        }
    }

    /// Plan from `input`. `deadline`: stop refining after it (paced clock).
    pub fn plan(
        &mut self,
        input: &PlanInput,
        forecaster: &mut Forecaster,
        deadline: Option<Instant>,
    ) -> Result<PlanStats, ForecastError> {
        let k = self.cfg.candidates;
        let mut stats = PlanStats::default();
        self.best_cost = f64::INFINITY;
        self.update_bias(input);
        self.update_spike_lag(input);
        let bias = self.bias as f32;
        self.warm_start(input);
        self.fill_candidates();
        let ctx = PlanContext {
            t_ms: input.t_ms,
            dt_ms: self.dt_model,
            v_now: input.v_now,
            last_spike_ms: input.last_spike_ms,
            spike_threshold_mv: self.spike_threshold_mv,
            spike_lag_ms: self.spike_lag,
            rate_due_ms: match self.objective.kind {
                super::ObjectiveKind::Rate => self.objective.rate.due(input.last_spike_ms),
                _ => f64::NAN,
            },
            reflex_after_ms: self.reflex.map(|(_, from, _)| from),
            burst_fraction: input.burst_fraction,
        };
        let iterations = self.cfg.iterations.max(1);
        for it in 0..iterations {
            if it > 0 {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                self.refit_and_sample();
            }
            self.project(input);
            let t0 = Instant::now();
            self.fill_felt(input.window_i);
            let (window_i, steps): (&[f32], &[f32]) = if self.lag_steps > 0 {
                (&self.felt_window, &self.felt_steps)
            } else {
                (input.window_i, &self.steps)
            };
            forecaster.forecast(input.window_v, window_i, steps, k, &mut self.out)?;
            stats.forecast_ns += t0.elapsed().as_nanos() as u64;
            stats.iterations += 1;
            if bias != 0.0 {
                for x in &mut self.out {
                    *x += bias;
                }
            }
            self.score_candidates(input, &ctx);
        }
        self.remember_best(input, bias);
        self.prev_base = Some(input.base_index);
        stats.cost = self.best_cost;
        Ok(stats)
    }

    /// The previous plan, shifted by the steps since it began, as the mean
    /// of this one; and what the loop will apply before this plan takes
    /// over.
    fn warm_start(&mut self, input: &PlanInput) {
        let t_out = self.t_out;
        // Samples since the previous plan began (all of it, if none).
        let n = self.plan_len();
        let shift_samples = match self.prev_base {
            Some(b) if input.base_index >= b => ((input.base_index - b) as usize).min(n),
            _ => n,
        };
        let shift = shift_samples / self.decimation;
        let last = if shift < t_out {
            self.prev_raw[t_out - 1]
        } else {
            0.0
        };
        for j in 0..t_out {
            self.mean[j] = self.prev_raw.get(j + shift).copied().unwrap_or(last) as f64;
        }
        // What the loop will apply before this plan takes over.
        for k in 0..self.committed {
            self.head[k] = self
                .prev_samples
                .get(shift_samples + k)
                .copied()
                .unwrap_or(0.0);
        }
    }

    /// The first candidates from a fixed library (the warm start, zero,
    /// constants, pulses); random perturbations of the warm start fill the
    /// rest.
    fn fill_candidates(&mut self) {
        let k = self.cfg.candidates;
        let t_out = self.t_out;
        let a = self.amplitude as f32;
        let mut c = 0;
        let row = |raw: &mut [f32], c: usize, f: &dyn Fn(usize) -> f32| {
            for j in 0..t_out {
                raw[c * t_out + j] = f(j);
            }
        };
        for j in 0..t_out {
            self.raw[j] = self.mean[j] as f32;
        }
        c += 1;
        row(&mut self.raw, c, &|_| 0.0);
        c += 1;
        'lib: for frac in [1.0 / 32.0, 1.0 / 16.0, 0.125f32, 0.25, 0.5, 1.0] {
            for sign in [1.0f32, -1.0] {
                if c >= k {
                    break 'lib;
                }
                row(&mut self.raw, c, &|_| sign * frac * a);
                c += 1;
            }
        }
        'pulses: for offset in [0usize, t_out / 5, 2 * t_out / 5, 3 * t_out / 5] {
            for (sign, frac) in [(1.0f32, 0.5f32), (-1.0, 0.5), (1.0, 1.0), (-1.0, 1.0)] {
                if c >= k {
                    break 'pulses;
                }
                let width = (t_out / 10).max(1);
                row(&mut self.raw, c, &|j| {
                    if j >= offset && j < offset + width {
                        sign * frac * a
                    } else {
                        0.0
                    }
                });
                c += 1;
            }
        }
        // Random perturbations of the warm start fill the batch.
        let sd = self.cfg.spread * self.amplitude;
        while c < k {
            for j in 0..t_out {
                let z: f64 = StandardNormal.sample(&mut self.rng);
                self.raw[c * t_out + j] = (self.mean[j] + sd * z).clamp(-a as f64, a as f64) as f32;
            }
            c += 1;
        }
    }

    /// Cost every forecast candidate, rank them, and keep the best so far
    /// across iterations.
    fn score_candidates(&mut self, input: &PlanInput, ctx: &PlanContext) {
        let (k, t_out) = (self.cfg.candidates, self.t_out);
        let u_before = input.limiter.last_command();
        for c in 0..k {
            let v = &self.out[c * t_out..(c + 1) * t_out];
            let u = &self.steps[c * t_out..(c + 1) * t_out];
            self.costs[c] = self.objective.forecast_cost(ctx, v)
                + effort_cost(&self.cfg.weights, u, self.dt_model, u_before);
        }
        for (i, o) in self.order.iter_mut().enumerate() {
            *o = i;
        }
        let costs = &self.costs;
        self.order
            .sort_unstable_by(|&x, &y| costs[x].total_cmp(&costs[y]).then(x.cmp(&y)));
        let b = self.order[0];
        if self.costs[b] < self.best_cost {
            self.best_cost = self.costs[b];
            let n = self.plan_len();
            self.best_raw
                .copy_from_slice(&self.raw[b * t_out..(b + 1) * t_out]);
            self.best_samples
                .copy_from_slice(&self.samples[b * n..(b + 1) * n]);
            self.best_v
                .copy_from_slice(&self.out[b * t_out..(b + 1) * t_out]);
        }
    }

    /// The chosen plan becomes the next warm start; its first forecast
    /// spike goes to the lag estimate, its forecast (without the bias) to
    /// the next bias update.
    fn remember_best(&mut self, input: &PlanInput, bias: f32) {
        self.prev_raw.copy_from_slice(&self.best_raw);
        self.prev_samples.copy_from_slice(&self.best_samples);
        // The chosen plan's first forecast spike, for the lag estimate.
        let th = self.spike_threshold_mv as f32;
        let mut prev_v = input.v_now as f32;
        let mut predicted = f64::NAN;
        for (j, &v) in self.best_v.iter().enumerate() {
            if prev_v < th && v >= th {
                predicted = input.t_ms + (j + 1) as f64 * self.dt_model;
                break;
            }
            prev_v = v;
        }
        self.best_spike = predicted + self.spike_lag;
        self.predictions[self.next_prediction] = (input.t_ms, predicted);
        self.next_prediction = (self.next_prediction + 1) % PREDICTIONS;
        // Store the forecast without the bias, which is re-added next time.
        for (p, &v) in self.prev_v.iter_mut().zip(&self.best_v) {
            *p = v - bias;
        }
    }

    /// Cross-entropy step: fit per-step mean and spread to the elites, then
    /// resample every candidate but the first (which keeps the best).
    fn refit_and_sample(&mut self) {
        let (k, t_out) = (self.cfg.candidates, self.t_out);
        let e = self.cfg.elites.clamp(1, k);
        let a = self.amplitude;
        let floor = 0.02 * a;
        for j in 0..t_out {
            let mut m = 0.0;
            for &c in &self.order[..e] {
                m += self.raw[c * t_out + j] as f64;
            }
            m /= e as f64;
            let mut s = 0.0;
            for &c in &self.order[..e] {
                let d = self.raw[c * t_out + j] as f64 - m;
                s += d * d;
            }
            self.mean[j] = m;
            self.spread[j] = (s / e as f64).sqrt().max(floor);
        }
        self.raw[..t_out].copy_from_slice(&self.best_raw);
        for c in 1..k {
            for j in 0..t_out {
                let z: f64 = StandardNormal.sample(&mut self.rng);
                self.raw[c * t_out + j] = (self.mean[j] + self.spread[j] * z).clamp(-a, a) as f32;
            }
        }
    }

    /// The window's currents and the candidates' steps as the cell feels
    /// them: with an actuation delay of `lag_steps`, the current on the
    /// membrane at a step is the one written `lag_steps` earlier, so the
    /// window's V went with its currents shifted that much, the horizon's
    /// first steps get the commands already on their way (the window's
    /// last), and each candidate takes effect `lag_steps` later (its tail
    /// falls beyond the horizon). Without a delay, nothing to do.
    fn fill_felt(&mut self, window_i: &[f32]) {
        let lag = self.lag_steps;
        if lag == 0 {
            return;
        }
        let (t_in, t_out) = (window_i.len(), self.t_out);
        let lag_in = lag.min(t_in);
        // No allocation once sized by `with_window` (the loop's planner).
        self.felt_window.resize(t_in, 0.0);
        for j in 0..t_in {
            self.felt_window[j] = window_i[j.saturating_sub(lag_in)];
        }
        for c in 0..self.cfg.candidates {
            let row = &mut self.felt_steps[c * t_out..(c + 1) * t_out];
            for (j, x) in row.iter_mut().enumerate() {
                *x = if j < lag {
                    window_i[(t_in + j).saturating_sub(lag_in).min(t_in - 1)]
                } else {
                    self.steps[c * t_out + j - lag]
                };
            }
        }
    }

    /// Pass every candidate through a copy of the limiter; record the
    /// per-sample currents and their per-step means.
    fn project(&mut self, input: &PlanInput) {
        let (k, t_out, d) = (self.cfg.candidates, self.t_out, self.decimation);
        let n = t_out * d;
        let dt_sample = self.dt_model / d as f64;
        // Samples (from, to) the reflex after the last spike will hold,
        // as the loop decides it (same slack).
        let reflex = self.reflex.and_then(|(pulse, from, to)| {
            let since0 = input.t_ms - input.last_spike_ms;
            if !since0.is_finite() {
                return None;
            }
            let at = |ms: f64| ((ms - since0 - 1e-9) / dt_sample - 1.0).ceil().max(0.0) as usize;
            let (a, b) = (at(from), at(to).min(n));
            (a < b).then_some((pulse as f32, a, b))
        });
        for c in 0..k {
            let mut lim = input.limiter.clone();
            for j in 0..t_out {
                let want = self.raw[c * t_out + j] as f64;
                let mut acc = 0.0;
                for s in 0..d {
                    let k = j * d + s;
                    let want = match reflex {
                        Some((pulse, a, b)) if (a..b).contains(&k) => pulse as f64,
                        _ if k < self.committed => self.head[k] as f64,
                        _ => want,
                    };
                    let got = lim.limit(want, None).command;
                    self.samples[c * n + j * d + s] = got as f32;
                    acc += got;
                }
                self.steps[c * t_out + j] = (acc / d as f64) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn with_an_actuation_delay_the_forecast_sees_the_currents_as_the_cell_feels_them() {
        let c = Config::defaults().control;
        let mut cfg = c.mpc;
        cfg.candidates = 2;
        // 1 ms at 0.5 ms steps: two steps late.
        cfg.actuation_delay_ms = 1.0;
        let (t_in, t_out) = (4, 4);
        let mut m = Mpc::new(cfg, c.objective, t_out, 5, 0.5, 6.0, 0).with_window(t_in);
        assert_eq!(m.lag_steps, 2);
        m.steps
            .copy_from_slice(&[10.0, 20.0, 30.0, 40.0, -1.0, -2.0, -3.0, -4.0]);
        m.fill_felt(&[1.0, 2.0, 3.0, 4.0]);
        // The window's V went with the currents written two steps earlier.
        assert_eq!(m.felt_window, [1.0, 1.0, 1.0, 2.0]);
        // The horizon starts with the two commands on their way, then each
        // candidate two steps late.
        assert_eq!(m.felt_steps, [3.0, 4.0, 10.0, 20.0, 3.0, 4.0, -1.0, -2.0]);
        // Without a delay nothing is shifted (the forecast takes the
        // candidates as written).
        cfg.actuation_delay_ms = 0.0;
        let m = Mpc::new(cfg, c.objective, t_out, 5, 0.5, 6.0, 0).with_window(t_in);
        assert_eq!((m.lag_steps, m.felt_steps.len()), (0, 0));
    }

    /// `mpc.silence_margin` moves only the ceiling MPC plans against, from
    /// the start and across an operator's change of objective; the
    /// objective the run is scored with keeps its own.
    #[test]
    fn the_silence_margin_moves_the_aim_not_the_objective() {
        let c = Config::defaults().control;
        let mut cfg = c.mpc;
        cfg.candidates = 2;
        let scored = c.objective;
        assert_eq!(scored.ceiling_mv, -60.0);
        let m = Mpc::new(cfg, scored, 4, 5, 0.5, 6.0, 0);
        assert_eq!(
            m.objective.ceiling_mv, -60.0,
            "default margin 0: bit for bit"
        );
        cfg.silence_margin_mv = -0.35;
        let mut m = Mpc::new(cfg, scored, 4, 5, 0.5, 6.0, 0);
        assert!((m.objective.ceiling_mv - -59.65).abs() < 1e-12);
        let mut changed = scored;
        changed.ceiling_mv = -65.0;
        m.set_objective(changed);
        assert!((m.objective.ceiling_mv - -64.65).abs() < 1e-12);
        assert_eq!(scored.ceiling_mv, -60.0);
    }

    /// With `mpc.plan_reflex`, the candidates are forecast with the reflex's
    /// pulse on exactly the samples where the loop's reflex will replace the
    /// plan (0.5 ms to 1.5 ms after the last spike, through the limiter),
    /// the committed head elsewhere; without it (or with the reflex off),
    /// as before.
    #[test]
    fn with_plan_reflex_the_candidates_carry_the_reflex_after_the_last_spike() {
        let c = Config::defaults();
        let mut fb = c.control.feedback;
        fb.spike_pulse = -6.0;
        fb.spike_pulse_delay_ms = 0.5;
        fb.spike_pulse_width_ms = 1.0;
        let mut cfg = c.control.mpc;
        cfg.candidates = 2;
        let limiter = SafetyLimiter::new(c.safety, 0.1).unwrap();
        // 0.5 ms model steps of 5 samples; 3 samples committed.
        let plan = |plan_reflex: bool, fb: &FeedbackConfig| {
            let mut cfg = cfg;
            cfg.plan_reflex = plan_reflex;
            let mut m = Mpc::new(cfg, c.control.objective, 4, 5, 0.5, 6.0, 3).with_reflex(fb);
            m.raw.fill(1.0);
            let input = PlanInput {
                window_v: &[],
                window_i: &[],
                base_index: 100,
                t_ms: 10.0,
                v_now: -65.0,
                // The plan's first sample is 0.3 ms after the spike.
                last_spike_ms: 9.8,
                burst_fraction: 0.0,
                limiter: limiter.clone(),
            };
            m.project(&input);
            m.samples[..20].to_vec()
        };
        let with = plan(true, &fb);
        // Samples 0.5 ms ..< 1.5 ms after the spike: indices 2 ..< 12.
        // (Through the limiter, as the loop applies it: its slew limit
        // shapes the pulse's edge.)
        let limited = |want: &dyn Fn(usize) -> f64| -> Vec<f32> {
            let mut lim = limiter.clone();
            (0..20)
                .map(|k| lim.limit(want(k), None).command as f32)
                .collect()
        };
        let want = limited(&|k| match k {
            2..=11 => -6.0,
            0 | 1 => 0.0,
            _ => 1.0,
        });
        assert_eq!(with, want);
        assert!(with[3..12].iter().all(|&x| x == -6.0));
        let without = limited(&|k| if k < 3 { 0.0 } else { 1.0 });
        assert_eq!(plan(false, &fb), without);
        fb.spike_pulse = 0.0;
        assert_eq!(plan(true, &fb), without);
    }

    #[test]
    fn forecast_spikes_are_read_where_the_model_card_says_if_configured() {
        let c = Config::defaults().control;
        let mut card: crate::forecast::card::ModelCard =
            serde_json::from_str(include_str!("../../models/ca1_lstm.json")).unwrap();
        let mut m = Mpc::new(c.mpc, c.objective, 4, 5, 0.5, 6.0, 0);
        // The shipped model has no threshold of its own: the configured one.
        m.adopt_card(&card);
        assert_eq!(m.spike_threshold_mv(), c.mpc.spike_threshold_mv);
        card.output.spike_threshold_mv = Some(-42.5);
        m.adopt_card(&card);
        assert_eq!(m.spike_threshold_mv(), -42.5);
        // Turned off: the configured one, whatever the card says.
        let mut cfg = c.mpc;
        cfg.model_spike_threshold = false;
        let mut m = Mpc::new(cfg, c.objective, 4, 5, 0.5, 6.0, 0);
        m.adopt_card(&card);
        assert_eq!(m.spike_threshold_mv(), c.mpc.spike_threshold_mv);
    }
}
