//! The per-sample decision, apart from threads, clocks and plants.
//!
//! [`Decider::tick`] takes one sample and returns the command to write and
//! the record to keep: spike detection, the window, the plan step (or the
//! baseline's request), the operator's arming, the safety limiter. The
//! loop ([`super::run`]) only moves data around it: it reads the plant,
//! hands plans in, writes the command, records timing and sends snapshots.
//! Keeping the decision here means it can be unit-tested by feeding samples
//! (see the tests below), and the real-time rules are easy to check: `tick`
//! takes plans from a preallocated queue and never allocates, locks or logs.

pub use super::controls::Counters;
use super::controls::Published;
use super::handoff::{Plan, PlanStatus, Snapshot};
use crate::config::ControlConfig;
use crate::forecast::WindowRing;
use crate::neuron::spikes::{SpikeDetector, DEFAULT_THRESHOLD_MV};
use crate::plant::Sample;
use crate::policy::filter::LowPass;
use crate::policy::mpc::{FeedbackConfig, FeedbackTarget, GuardFallback};
use crate::policy::pid::Baseline;
use crate::policy::{Objective, ObjectiveKind, PolicyKind};
use crate::record::Record;
use crate::safety::{Fault, SafetyLimiter};
use std::collections::VecDeque;
use std::time::Instant;

/// The MPC policy's timing, from the model's geometry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlanTiming {
    /// Samples per model step.
    pub decimation: u64,
    /// Model steps per control period.
    pub steps_per_period: u64,
    /// The planning delay in samples: a plan takes effect this long after
    /// its snapshot's sample.
    pub delay_samples: u64,
    /// Plans in the pool (the pending queue's capacity).
    pub pool: usize,
}

/// The decision for one sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// What the loop keeps; `record.command` is what to write.
    pub record: Record,
    /// The window completed a model step with this sample.
    pub step_done: bool,
}

/// The loop's decision state for one run.
pub struct Decider {
    policy: PolicyKind,
    pid: crate::policy::pid::PidGains,
    period_ms: f64,
    max_amplitude: f64,
    /// `Some` for the MPC policy.
    timing: Option<PlanTiming>,
    /// Real-time rules: plans arrive on their own and take effect at
    /// `delay_samples` after their snapshot, or on arrival if later.
    rt_rules: bool,
    limiter: SafetyLimiter,
    baseline: Baseline,
    detector: SpikeDetector,
    window: WindowRing,
    last_spike_ms: f64,
    /// Detected spikes within the objective's `max_isi` of the previous
    /// one, the score's B: MPC's burst cost weighs a spike outside B by
    /// the run's burst fraction B/N.
    burst_spikes: u64,
    /// Index of the last spike's sample: plans computed before it are
    /// stale.
    spike_index: u64,
    /// This sample's request is the loop's own, not the plan's (the spike
    /// reflex): the record says so, for the forecast monitors.
    off_plan: bool,
    replan: bool,
    model_steps: u64,
    expected_index: Option<u64>,
    active: Option<Box<Plan>>,
    /// Plans received but not yet due (capacity: the plan pool, so pushing
    /// never allocates).
    pending: VecDeque<(u64, Box<Plan>)>,
    in_miss: bool,
    planner_gone: bool,
    objective: Objective,
    objective_seq: u64,
    armed: bool,
    forecast_error_mv: f64,
    last_t_ms: f64,
    /// Samples the plant holds a command for when no newer one comes
    /// ([`crate::plant::Plant::command_hold_samples`]).
    hold_samples: u64,
    /// The feedback between plans, and the amplitude a corrected plan is
    /// clipped to (MPC's own, within the safety limit).
    feedback: FeedbackConfig,
    mpc_amplitude: f64,
    /// The feedback's integral of the deviation from the plans, mV·ms. It
    /// carries over from plan to plan (it stands for what the model gets
    /// wrong about the cell's response, which a new plan does not change)
    /// and restarts after a spike, an interruption or a spell of the
    /// guard's fallback, when the deviation it summed no longer describes
    /// the plans to come.
    feedback_integral: f64,
    /// The measured V the feedback's deviation is taken from, low-passed
    /// (`control.feedback.filter`); updated on every sample.
    feedback_filter: LowPass,
    /// What that V is compared with (the plan's expectation or the
    /// reference), through the same low-pass: the filter's lag then delays
    /// both sides alike instead of becoming a tracking error (1 ms on the
    /// 2 Hz, 3 mV reference is 0.04 mV of phase error). Updated while the
    /// deviation is trusted, restarted where it is not.
    target_filter: LowPass,
    /// The plan's current as applied, low-passed
    /// (`control.feedback.plan_filter`); restarts wherever the plan stops
    /// driving (a fault, a miss, the fallback).
    plan_filter: LowPass,
    /// The measured V as the planner's window and state get it, low-passed
    /// (`mpc.window_filter`), and its newest value.
    window_filter: LowPass,
    v_state: f64,
    /// The anticipating reflex (`control.feedback.spike_pulse_lead`): when
    /// it last fired, and for which forecast spike, plant ms.
    reflex_fired_ms: f64,
    reflex_spike_ms: f64,
    /// The guard's fallback policy (MPC with the guard on), and whether it
    /// drives now.
    fallback: Option<GuardFallback>,
    fallback_policy: Baseline,
    in_fallback: bool,
    /// The guard suspended the spike reflex.
    reflex_suspended: bool,
    /// The guard sent the planner back to the replaced model.
    revert_model: bool,
    pub counters: Counters,
}

impl Decider {
    /// A decider for `c`'s policy at `period_ms` per sample, limited by
    /// `limiter`; `timing` and `window` from the model (MPC) or `None` and
    /// a one-sample window.
    pub fn new(
        c: &ControlConfig,
        period_ms: f64,
        limiter: SafetyLimiter,
        timing: Option<PlanTiming>,
        window: WindowRing,
        rt_rules: bool,
        armed: bool,
    ) -> Decider {
        let max_amplitude = limiter.limits().max_amplitude;
        let probation = c.policy == PolicyKind::Mpc && c.guard.starts_on_fallback();
        let fallback_policy = match c.guard.fallback {
            GuardFallback::Baseline if probation => {
                Baseline::pid_for(&c.objective, &c.pid, period_ms, max_amplitude)
            }
            _ => Baseline::Off,
        };
        let baseline = match c.policy {
            PolicyKind::Off | PolicyKind::Mpc => Baseline::Off,
            PolicyKind::Open => Baseline::Open(c.open),
            PolicyKind::Pid => Baseline::pid_for(&c.objective, &c.pid, period_ms, max_amplitude),
        };
        Decider {
            policy: c.policy,
            pid: c.pid,
            period_ms,
            max_amplitude,
            pending: VecDeque::with_capacity(timing.map_or(0, |t| t.pool)),
            timing,
            rt_rules,
            limiter,
            baseline,
            detector: SpikeDetector::new(DEFAULT_THRESHOLD_MV),
            window,
            last_spike_ms: f64::NEG_INFINITY,
            burst_spikes: 0,
            spike_index: 0,
            off_plan: false,
            replan: false,
            model_steps: 0,
            expected_index: None,
            active: None,
            in_miss: false,
            planner_gone: false,
            objective: c.objective,
            objective_seq: 0,
            armed,
            forecast_error_mv: f64::NAN,
            last_t_ms: 0.0,
            hold_samples: 0,
            feedback: c.feedback,
            mpc_amplitude: c.mpc.max_amplitude.min(max_amplitude),
            feedback_integral: 0.0,
            feedback_filter: LowPass::new(c.feedback.filter_ms, period_ms),
            target_filter: LowPass::new(c.feedback.filter_ms, period_ms),
            plan_filter: LowPass::new(c.feedback.plan_filter_ms, period_ms),
            reflex_fired_ms: f64::NEG_INFINITY,
            reflex_spike_ms: f64::NEG_INFINITY,
            window_filter: LowPass::new(c.mpc.window_filter_ms, period_ms),
            v_state: f64::NAN,
            fallback: (c.policy == PolicyKind::Mpc && c.guard.enabled).then_some(c.guard.fallback),
            fallback_policy,
            // A probation start: the fallback drives from the first sample.
            in_fallback: probation,
            reflex_suspended: false,
            revert_model: false,
            counters: Counters::default(),
        }
    }

    /// After a spell in which MPC's plans did not drive (the guard's
    /// fallback, an interruption): what the feedback and its filters
    /// remember describes the plans of before, not those to come.
    fn restart_feedback(&mut self) {
        self.feedback_integral = 0.0;
        self.plan_filter.reset();
        self.target_filter.reset();
    }

    /// The guard's decision as the loop applies it: `true` hands control
    /// to the fallback, `false` gives it back to MPC. Either way the
    /// request still passes the limiter, whose slew limit smooths the
    /// change. A baseline fallback starts afresh (its state would describe
    /// a stretch it did not drive). Returns whether anything changed.
    pub fn set_fallback(&mut self, now: bool) -> bool {
        let Some(kind) = self.fallback else {
            return false;
        };
        if now == self.in_fallback {
            return false;
        }
        self.in_fallback = now;
        if now {
            self.counters.guard_to_fallback += 1;
            self.fallback_policy = match kind {
                GuardFallback::Off => Baseline::Off,
                GuardFallback::Baseline => self.fresh_pid(),
            };
        } else {
            self.counters.guard_to_mpc += 1;
            self.restart_feedback();
        }
        true
    }

    /// The guard suspended the spike reflex (its release fires the cell)
    /// or resumed it; the planner is told with the next snapshot.
    pub fn set_reflex_suspended(&mut self, suspended: bool) {
        self.reflex_suspended = suspended;
    }

    /// The guard sent the planner back to the model the running one
    /// replaced (`control.guard.revert`); the next snapshot tells it.
    pub fn set_revert_model(&mut self, revert: bool) {
        self.revert_model = revert;
    }

    /// Whether the guard's fallback drives now.
    pub fn in_fallback(&self) -> bool {
        self.in_fallback
    }

    /// The plant holds each command this many samples at most when no
    /// newer one reaches it (a rig's `valid_for`); lost samples within it
    /// are counted as delivered charge.
    pub fn hold_commands_for(&mut self, samples: u64) {
        self.hold_samples = samples;
    }

    pub fn limiter(&self) -> &SafetyLimiter {
        &self.limiter
    }

    pub fn planner_gone(&self) -> bool {
        self.planner_gone
    }

    /// The planner hung up: from now on MPC's request is a model error.
    pub fn lose_planner(&mut self) {
        self.planner_gone = true;
    }

    /// Plant time of the newest sample, ms.
    pub fn plant_time_ms(&self) -> f64 {
        self.last_t_ms
    }

    /// The counters as the service sees them.
    pub fn published(&self) -> Published {
        Published {
            counters: self.counters,
            plant_time_ms: self.last_t_ms,
            forecast_error_mv: self.forecast_error_mv,
            in_fallback: self.in_fallback,
        }
    }

    /// The operator changed the objective (at a control-period boundary):
    /// the baseline starts afresh for it, and MPC replans.
    pub fn set_objective(&mut self, seq: u64, o: Objective) {
        self.objective = o;
        self.objective_seq = seq;
        self.counters.objective_changes += 1;
        if self.policy == PolicyKind::Pid {
            self.baseline = self.fresh_pid();
        }
        self.replan = true;
    }

    /// Arming as the operator wants it now. Re-armed, the PID starts
    /// afresh: its integrator kept integrating an error nobody acted on.
    pub fn set_armed(&mut self, now: bool) {
        if now && !self.armed && self.policy == PolicyKind::Pid {
            self.baseline = self.fresh_pid();
        }
        self.armed = now;
    }

    pub fn armed(&self) -> bool {
        self.armed
    }

    fn fresh_pid(&self) -> Baseline {
        Baseline::pid_for(
            &self.objective,
            &self.pid,
            self.period_ms,
            self.max_amplitude,
        )
    }

    /// Request `script` sample by sample in place of the configured
    /// baseline (calibration's excitation; plans take precedence under
    /// MPC). The limiter still has the last word on every sample.
    pub fn play(&mut self, script: crate::policy::pid::Script) {
        self.baseline = Baseline::Script(script);
    }

    /// Stimulation to zero for `fault` (through the limiter, counted).
    pub fn zero(&mut self, fault: Fault) -> f64 {
        self.limiter.limit(0.0, Some(fault)).command
    }

    /// The plant stopped delivering (it recovers on later reads): zero now,
    /// and forget the window and every plan, which no longer match the
    /// cell. `recycle` takes the plans back to their pool.
    ///
    /// A rig that went quiet may have gone on applying the last command
    /// until its validity ran out, and the samples it did not send will
    /// never be counted as lost (the zero written here replaces that
    /// command, and a rig that restarts numbers its samples afresh): that
    /// charge is counted now, the whole hold, the safe side.
    pub fn interrupted(&mut self, mut recycle: impl FnMut(Box<Plan>)) -> f64 {
        self.limiter.account_held(self.hold_samples);
        let command = self.zero(Fault::PlantFault);
        self.counters.plant_interruptions += 1;
        self.window.clear();
        self.window_filter.reset();
        self.restart_feedback();
        if self.timing.is_some() {
            if let Some(old) = self.active.take() {
                recycle(old);
            }
            while let Some((_, old)) = self.pending.pop_front() {
                recycle(old);
            }
        }
        command
    }

    /// A plan arrived on its own (real-time rules): due `delay_samples`
    /// after its snapshot, or now if that has passed (counted late).
    pub fn receive(&mut self, p: Box<Plan>, index_now: u64) {
        let delay = self.timing.map_or(0, |t| t.delay_samples);
        let due = p.base_index + 1 + delay;
        if index_now > due {
            self.counters.late_plans += 1;
        }
        self.pending.push_back((due, p));
    }

    /// A plan awaited in lockstep (free clock): due `delay_samples` after
    /// the sample at `index`.
    pub fn queue(&mut self, index: u64, p: Box<Plan>) {
        let delay = self.timing.map_or(0, |t| t.delay_samples);
        self.pending.push_back((index + 1 + delay, p));
    }

    /// Decide for sample `s`. `on_adopt` sees each plan as it is adopted
    /// (for its timing); `recycle` takes superseded plans back.
    pub fn tick(
        &mut self,
        s: &Sample,
        mut on_adopt: impl FnMut(&Plan),
        mut recycle: impl FnMut(Box<Plan>),
    ) -> Decision {
        let mut fault = None;
        match self.expected_index {
            Some(e) if s.index < e => fault = Some(Fault::StaleSample),
            Some(e) => {
                let lost = s.index - e;
                self.counters.lost_samples += lost;
                // The plant kept applying the last command meanwhile (up
                // to its validity): the limiter counts that charge.
                self.limiter.account_held(lost.min(self.hold_samples));
            }
            None => {}
        }
        self.expected_index = Some(s.index.max(self.expected_index.unwrap_or(0)) + 1);
        let spiked = match self.detector.push(s.t_ms, s.v_mv) {
            Some(t) => {
                // The burst score's B: a spike within max_isi of the
                // previous one (a burst's first spike is not in B).
                if t - self.last_spike_ms < self.objective.max_isi_ms {
                    self.burst_spikes += 1;
                }
                self.last_spike_ms = t;
                self.counters.spikes += 1;
                self.replan = true;
                self.spike_index = s.index;
                self.feedback_integral = 0.0;
                true
            }
            None => false,
        };
        self.last_t_ms = s.t_ms;
        let v_filtered = self.feedback_filter.push(s.v_mv);
        self.v_state = self.window_filter.push(s.v_mv);
        let step_done = self.window.push(self.v_state, s.i_applied);

        let requested = if self.timing.is_some() {
            self.adopt_due(s.index, &mut on_adopt, &mut recycle);
            if self.in_fallback {
                // Plans keep coming (the planner's model is still judged
                // and swapped) but the fallback drives.
                self.counters.guard_fallback_samples += 1;
                self.fallback_policy.step(s.t_ms, s.v_mv, spiked)
            } else {
                self.plan_step(s.index, v_filtered, &mut fault)
            }
        } else {
            self.baseline.step(s.t_ms, s.v_mv, spiked)
        };
        // Disarmed: the request is zero (still through the limiter).
        let requested = if self.armed {
            requested
        } else {
            self.counters.disarmed_samples += 1;
            0.0
        };
        let forecast = self.forecast_for(s.index);
        let d = self.limiter.limit(requested, fault);
        Decision {
            record: Record {
                index: s.index,
                t_ms: s.t_ms,
                v_mv: s.v_mv,
                applied: s.i_applied,
                requested,
                command: d.command,
                cause: d.cause,
                forecast,
                off_plan: std::mem::take(&mut self.off_plan),
            },
            step_done,
        }
    }

    /// Adopt every pending plan that is due by sample `index`.
    fn adopt_due(
        &mut self,
        index: u64,
        on_adopt: &mut impl FnMut(&Plan),
        recycle: &mut impl FnMut(Box<Plan>),
    ) {
        while self.pending.front().is_some_and(|(at, _)| index >= *at) {
            let Some((_, p)) = self.pending.pop_front() else {
                break;
            };
            on_adopt(&p);
            if p.forecast_error_mv.is_finite() {
                self.forecast_error_mv = p.forecast_error_mv;
            }
            if let Some(old) = self.active.replace(p) {
                recycle(old);
            }
            self.counters.plans_adopted += 1;
            self.in_miss = false;
        }
    }

    /// MPC's request for sample `index`: the active plan's current, or
    /// zero with the fault that says why not. `v_mv` is the measured V as
    /// the feedback between plans sees it (low-passed if so configured).
    fn plan_step(&mut self, index: u64, v_mv: f64, fault: &mut Option<Fault>) -> f64 {
        if self.planner_gone {
            *fault = fault.or(Some(Fault::ModelError));
            return 0.0;
        }
        let Some(p) = &self.active else {
            return 0.0;
        };
        let mut deviation = None;
        let mut planned = false;
        let mut spike_at = f64::NAN;
        let u = match p.status {
            PlanStatus::ModelError => {
                *fault = fault.or(Some(Fault::ModelError));
                0.0
            }
            PlanStatus::NonFinite => {
                *fault = fault.or(Some(Fault::NonFinite));
                0.0
            }
            PlanStatus::Ok => {
                let off = index.saturating_sub(p.base_index + 1) as usize;
                if index > p.base_index && off < p.currents.len() {
                    planned = true;
                    let u = p.currents[off] as f64;
                    // A plan made before the last spike did not know of it:
                    // its depolarising current (meant to bring that spike
                    // about) would only evoke another. Hyperpolarising
                    // current stays.
                    spike_at = p.spike_at_ms;
                    if p.base_index < self.spike_index {
                        u.min(0.0)
                    } else {
                        deviation = self.deviation(p, off, v_mv);
                        u
                    }
                } else if index <= p.base_index {
                    0.0
                } else {
                    if !self.in_miss {
                        self.counters.plan_misses += 1;
                        self.in_miss = true;
                    }
                    self.counters.plan_miss_samples += 1;
                    *fault = fault.or(Some(Fault::PlanMiss));
                    0.0
                }
            }
        };
        self.anticipate(spike_at);
        let u = if planned {
            self.plan_filter.push(u)
        } else {
            self.plan_filter.reset();
            u
        };
        let u = match deviation {
            Some(target) => {
                let dev = self.target_filter.push(target) - v_mv;
                self.correct(u, dev)
            }
            None => {
                self.target_filter.reset();
                u
            }
        };
        if fault.is_none() {
            self.spike_reflex(u)
        } else {
            u
        }
    }

    /// The plan's current `u`, or the spike reflex's pulse while it runs
    /// (`control.feedback.spike_pulse`): from its delay after the latest
    /// detected spike, for its width, clipped to MPC's amplitude.
    fn spike_reflex(&mut self, u: f64) -> f64 {
        let f = &self.feedback;
        if f.spike_pulse == 0.0 || self.reflex_suspended {
            return u;
        }
        let since = self.last_t_ms - self.last_spike_ms.max(self.reflex_fired_ms);
        // A little slack: sample times are sums of floats.
        let on = since >= f.spike_pulse_delay_ms - 1e-9
            && since < f.spike_pulse_delay_ms + f.spike_pulse_width_ms - 1e-9;
        if !on {
            return u;
        }
        let out = f.spike_pulse.clamp(-self.mpc_amplitude, self.mpc_amplitude);
        if out != u {
            self.counters.feedback_samples += 1;
            self.off_plan = true;
        }
        out
    }

    /// The anticipating reflex: fire `spike_pulse_lead` before the spike
    /// the active plan forecasts at `spike_at_ms` (not yet due), once per
    /// forecast spike (successive plans move it by a model step or two, so
    /// a forecast spike within one reflex span of the last one fired for
    /// is the same spike).
    fn anticipate(&mut self, spike_at_ms: f64) {
        let f = &self.feedback;
        if f.spike_pulse == 0.0
            || self.reflex_suspended
            || f.spike_pulse_lead_ms == 0.0
            || !spike_at_ms.is_finite()
        {
            return;
        }
        let now = self.last_t_ms;
        let span = f.spike_pulse_lead_ms + f.spike_pulse_delay_ms + f.spike_pulse_width_ms;
        if spike_at_ms >= now
            && now >= spike_at_ms - f.spike_pulse_lead_ms - 1e-9
            && spike_at_ms > self.reflex_spike_ms + span
        {
            self.reflex_fired_ms = now;
            self.reflex_spike_ms = spike_at_ms;
        }
    }

    /// The plan's current `u` corrected for the deviation `dev` (mV, what
    /// the plan expected − what came): `gain · dev + integral_gain · ∫dev`,
    /// clipped to `max_correction`, the sum clipped to MPC's amplitude.
    /// The integral stops while the output saturates in the direction it
    /// pushes (anti-windup).
    fn correct(&mut self, u: f64, dev: f64) -> f64 {
        let f = self.feedback;
        let trial = self.feedback_integral + dev * self.period_ms;
        let raw = f.gain * dev + f.integral_gain * trial;
        let fb = raw.clamp(-f.max_correction, f.max_correction);
        let out = (u + fb).clamp(-self.mpc_amplitude, self.mpc_amplitude);
        let saturated = fb != raw || out != u + fb;
        if !saturated || dev.signum() != raw.signum() {
            self.feedback_integral = trial;
        }
        if out != u {
            self.counters.feedback_samples += 1;
        }
        out
    }

    /// What the feedback between plans holds V to at the plan's sample
    /// `off` (0: the one after its snapshot), given the measured `v_mv`:
    /// the plan's expected V (or the reference), mV; `None` with the
    /// feedback off or where the expectation is not to be trusted (within
    /// a spike, or a deviation too large to be the plan's own error). The
    /// expectation between model steps is interpolated linearly from V at
    /// the snapshot.
    fn deviation(&self, p: &Plan, off: usize, v_mv: f64) -> Option<f64> {
        let f = &self.feedback;
        let t = self.timing?;
        if f.gain <= 0.0 && f.integral_gain <= 0.0 {
            return None;
        }
        let pos = (off + 1) as f64 / t.decimation as f64;
        let lo = pos.floor() as usize;
        let at = |j: usize| -> f64 {
            if j == 0 {
                p.v_base as f64
            } else {
                p.expected.get(j - 1).map_or(f64::NAN, |&x| x as f64)
            }
        };
        let a = at(lo);
        let frac = pos - lo as f64;
        let v_pred = if frac > 0.0 {
            a + (at(lo + 1) - a) * frac
        } else {
            a
        };
        let v_pred = match (f.target, self.objective.kind) {
            (FeedbackTarget::Reference, ObjectiveKind::Voltage) => {
                self.objective.reference.at(self.last_t_ms)
            }
            _ => v_pred,
        };
        let dev = v_pred - v_mv;
        let trusted = dev.is_finite()
            && v_pred <= f.ceiling_mv
            && v_mv <= f.ceiling_mv
            && dev.abs() <= f.max_deviation_mv;
        trusted.then_some(v_pred)
    }

    /// What the plan in use forecast for sample `index`'s model step.
    fn forecast_for(&self, index: u64) -> f32 {
        match (&self.active, self.timing) {
            (Some(p), Some(t)) if p.status == PlanStatus::Ok && index > p.base_index => {
                let j = ((index - p.base_index - 1) / t.decimation) as usize;
                p.forecast.get(j).copied().unwrap_or(f32::NAN)
            }
            _ => f32::NAN,
        }
    }

    /// After a sample whose window completed a model step: is a snapshot
    /// for the planner due? Each control period, and at once after a spike
    /// or an objective change (a plan made before it is stale).
    pub fn snapshot_due(&mut self, step_done: bool) -> bool {
        let Some(t) = self.timing else {
            return false;
        };
        if !step_done || self.planner_gone {
            return false;
        }
        self.model_steps += 1;
        if self.window.is_full()
            && (self.replan || self.model_steps.is_multiple_of(t.steps_per_period))
        {
            self.replan = false;
            return true;
        }
        false
    }

    /// Fill `snap` with the state at sample `s` (arrived at `arrived`).
    pub fn fill_snapshot(&self, snap: &mut Snapshot, s: &Sample, arrived: Instant) {
        self.window.snapshot(&mut snap.v, &mut snap.i);
        snap.steps_seen = self.window.seen();
        snap.index = s.index;
        snap.t_ms = s.t_ms;
        // The sample's V as the window got it (`mpc.window_filter`; the
        // raw sample bit for bit when off).
        snap.v_now = self.v_state;
        snap.last_spike_ms = self.last_spike_ms;
        snap.burst_fraction = if self.counters.spikes == 0 {
            0.0
        } else {
            self.burst_spikes as f64 / self.counters.spikes as f64
        };
        snap.limiter = self.limiter.clone();
        snap.taken = arrived;
        snap.objective = (self.objective_seq > 0).then_some((self.objective_seq, self.objective));
        snap.in_fallback = self.in_fallback;
        snap.reflex_suspended = self.reflex_suspended;
        snap.revert_model = self.revert_model;
    }

    /// Whether real-time rules apply (plans arrive on their own).
    pub fn rt_rules(&self) -> bool {
        self.rt_rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::safety::Cause;

    fn sample(k: u64, v: f64) -> Sample {
        Sample {
            index: k,
            t_ms: k as f64 * 0.1,
            v_mv: v,
            i_applied: 0.0,
        }
    }

    fn decider(policy: PolicyKind, timing: Option<PlanTiming>) -> Decider {
        let mut c = Config::defaults().control;
        c.policy = policy;
        let limiter = SafetyLimiter::new(Config::defaults().safety, 0.1).unwrap();
        Decider::new(&c, 0.1, limiter, timing, WindowRing::new(4, 5), true, true)
    }

    fn plan(base_index: u64, currents: &[f32]) -> Box<Plan> {
        let now = Instant::now();
        Box::new(Plan {
            base_index,
            status: PlanStatus::Ok,
            currents: currents.to_vec(),
            snapshot_taken: now,
            published: now,
            forecast_ns: 0,
            iterations: 1,
            cost: 0.0,
            forecast: vec![-60.0; 2],
            expected: vec![-60.0; 2],
            v_base: -60.0,
            spike_at_ms: f64::NAN,
            forecast_error_mv: 1.5,
        })
    }

    #[test]
    fn lost_and_stale_samples_are_counted_and_a_stale_one_is_zeroed() {
        let mut d = decider(PolicyKind::Off, None);
        d.tick(&sample(0, -65.0), |_| {}, |_| {});
        d.tick(&sample(3, -65.0), |_| {}, |_| {});
        assert_eq!(d.counters.lost_samples, 2);
        let r = d.tick(&sample(2, -65.0), |_| {}, |_| {}).record;
        assert_eq!(r.command, 0.0);
        assert_eq!(r.cause, Some(Cause::Fault(Fault::StaleSample)));
    }

    /// A steady 2 uA/cm2 open-loop command for 100 samples (0.1 ms) on a
    /// plant that holds commands for 20 samples.
    fn holding_rig_decider() -> Decider {
        let mut c = Config::defaults().control;
        c.policy = PolicyKind::Open;
        c.open.offset = 2.0;
        c.open.amplitude = 0.0;
        let limiter = SafetyLimiter::new(Config::defaults().safety, 0.1).unwrap();
        let mut d = Decider::new(&c, 0.1, limiter, None, WindowRing::new(1, 1), true, true);
        d.hold_commands_for(20);
        for k in 0..100 {
            d.tick(&sample(k, -65.0), |_| {}, |_| {});
        }
        d
    }

    #[test]
    fn charge_held_over_lost_samples_is_counted_up_to_the_hold() {
        let mut d = holding_rig_decider();
        let before = d.limiter().charge_delivered();
        let command = d.limiter().last_command();
        assert!(command > 0.0);
        // 50 samples lost; the rig held the command for 20 of them.
        let r = d.tick(&sample(150, -65.0), |_| {}, |_| {}).record;
        let held = command * 0.1 * 20.0;
        let after = d.limiter().charge_delivered();
        assert!(
            (after - before - held - r.command.abs() * 0.1).abs() < 1e-9,
            "{before} + {held} + this sample != {after}"
        );
        assert_eq!(d.counters.lost_samples, 50);
    }

    #[test]
    fn an_interruption_counts_the_held_command_until_its_expiry() {
        let mut d = holding_rig_decider();
        let before = d.limiter().charge_delivered();
        let command = d.limiter().last_command();
        assert!(command > 0.0);
        // The rig stalls: it may hold the command for 20 samples.
        assert_eq!(d.interrupted(|_| {}), 0.0);
        let after = d.limiter().charge_delivered();
        assert!(
            (after - before - command * 0.1 * 20.0).abs() < 1e-9,
            "{before} + 20 samples of {command} != {after}"
        );
        // And it is not counted twice when the rig's numbering shows the
        // gap: the zero replaced the held command.
        d.tick(&sample(200, -65.0), |_| {}, |_| {});
        assert_eq!(d.counters.lost_samples, 100);
    }

    #[test]
    fn a_plan_is_applied_from_its_due_sample_then_misses_when_it_runs_out() {
        let t = PlanTiming {
            decimation: 5,
            steps_per_period: 4,
            delay_samples: 2,
            pool: 4,
        };
        let mut d = decider(PolicyKind::Mpc, Some(t));
        // Snapshot at sample 10: the plan is due at 10 + 1 + 2 = 13.
        d.receive(plan(10, &[1.0, 2.0, 3.0, 4.0, 5.0]), 11);
        let mut adopted = 0;
        let mut out = Vec::new();
        for k in 11..18 {
            let r = d.tick(&sample(k, -65.0), |_| adopted += 1, |_| {}).record;
            out.push((r.requested, r.cause));
        }
        assert_eq!(adopted, 1);
        // 11, 12: nothing yet; 13..15 the plan's samples 2..4 (the first
        // two were committed during the delay); 16 its last; 17 a miss.
        assert_eq!(out[0].0, 0.0);
        assert_eq!(out[1].0, 0.0);
        assert_eq!(out[2].0, 3.0);
        assert_eq!(out[5].0, 0.0);
        assert_eq!(out[6], (0.0, Some(Cause::Fault(Fault::PlanMiss))));
        assert_eq!(d.counters.plan_misses, 1);
        assert_eq!(d.counters.plans_adopted, 1);
        assert_eq!(d.published().forecast_error_mv, 1.5);
    }

    #[test]
    fn a_late_plan_is_counted_and_applied_on_arrival() {
        let t = PlanTiming {
            decimation: 1,
            steps_per_period: 1,
            delay_samples: 1,
            pool: 4,
        };
        let mut d = decider(PolicyKind::Mpc, Some(t));
        d.receive(plan(0, &[0.5; 10]), 5);
        assert_eq!(d.counters.late_plans, 1);
        let r = d.tick(&sample(5, -65.0), |_| {}, |_| {}).record;
        assert_eq!(r.requested, 0.5);
    }

    #[test]
    fn disarmed_requests_are_zero_and_counted_and_interruptions_drop_plans() {
        let t = PlanTiming {
            decimation: 1,
            steps_per_period: 1,
            delay_samples: 0,
            pool: 4,
        };
        let mut d = decider(PolicyKind::Mpc, Some(t));
        d.receive(plan(0, &[0.5; 10]), 0);
        d.set_armed(false);
        let r = d.tick(&sample(1, -65.0), |_| {}, |_| {}).record;
        assert_eq!((r.requested, r.command), (0.0, 0.0));
        assert_eq!(d.counters.disarmed_samples, 1);
        d.set_armed(true);
        let mut recycled = 0;
        assert_eq!(d.interrupted(|_| recycled += 1), 0.0);
        assert_eq!(recycled, 1);
        assert_eq!(d.counters.plant_interruptions, 1);
        let r = d.tick(&sample(2, -65.0), |_| {}, |_| {}).record;
        assert_eq!(r.requested, 0.0, "no plan after an interruption");
    }

    /// A plan expecting −60 mV throughout on a cell held 1 mV below it:
    /// the integral's correction grows with the summed deviation, stops at
    /// `max_correction` without winding up, and restarts after a spike.
    #[test]
    fn the_integral_feedback_ramps_clips_without_windup_and_restarts_on_a_spike() {
        let t = PlanTiming {
            decimation: 5,
            steps_per_period: 4,
            delay_samples: 0,
            pool: 4,
        };
        let mut d = decider(PolicyKind::Mpc, Some(t));
        d.feedback = FeedbackConfig {
            gain: 0.0,
            integral_gain: 0.1,
            target: FeedbackTarget::Plan,
            max_correction: 2.0,
            max_deviation_mv: 3.0,
            ceiling_mv: -50.0,
            filter_ms: 0.0,
            plan_filter_ms: 0.0,
            spike_pulse: 0.0,
            spike_pulse_delay_ms: 0.5,
            spike_pulse_width_ms: 1.0,
            spike_pulse_lead_ms: 0.0,
        };
        let mut p = plan(0, &[0.0; 2000]);
        p.expected = vec![-60.0; 400];
        d.receive(p, 0);
        let at = |d: &mut Decider, k: u64, v: f64| {
            d.tick(&sample(k, v), |_| {}, |_| {}).record.requested
        };
        // 1 mV × 0.1 ms per sample × 0.1 uA/cm2 per mV·ms: 0.01 a sample.
        let u100 = at(&mut d, 1, -61.0);
        assert!((u100 - 0.01).abs() < 1e-9, "{u100}");
        for k in 2..=100 {
            at(&mut d, k, -61.0);
        }
        let u = at(&mut d, 101, -61.0);
        assert!((u - 1.01).abs() < 1e-9, "{u}");
        for k in 102..=1000 {
            at(&mut d, k, -61.0);
        }
        assert_eq!(at(&mut d, 1001, -61.0), 2.0, "clipped to max_correction");
        assert!(
            d.feedback_integral * 0.1 <= 2.0 + 0.01 + 1e-9,
            "wound up: {}",
            d.feedback_integral
        );
        // Back on the plan: the correction is what the integral holds (not
        // a wound-up excess), and falls as soon as V overshoots.
        let held = at(&mut d, 1002, -60.0);
        assert!(held <= 2.0 && held > 1.9, "{held}");
        assert!(at(&mut d, 1003, -59.0) < held);
        // A spike: the plan no longer describes the cell, the sum restarts.
        at(&mut d, 1004, 20.0);
        assert_eq!(d.feedback_integral, 0.0);
    }

    /// The plan filter smooths a jittering plan and restarts where the plan
    /// stops driving; at 0 ms the plan's current passes bit for bit.
    #[test]
    fn the_plan_filter_smooths_the_plan_and_restarts_after_a_miss() {
        let t = PlanTiming {
            decimation: 5,
            steps_per_period: 4,
            delay_samples: 0,
            pool: 4,
        };
        let jitter: Vec<f32> = (0..200)
            .map(|k| if k % 2 == 0 { 1.5 } else { 0.5 })
            .collect();
        let run = |plan_filter_ms: f64| {
            let mut d = decider(PolicyKind::Mpc, Some(t));
            d.plan_filter = LowPass::new(plan_filter_ms, 0.1);
            d.receive(plan(0, &jitter), 0);
            (1..=240)
                .map(|k| d.tick(&sample(k, -65.0), |_| {}, |_| {}).record.requested)
                .collect::<Vec<f64>>()
        };
        let raw = run(0.0);
        assert!(raw[..200].iter().zip(&jitter).all(|(&u, &c)| u == c as f64));
        let smooth = run(1.0);
        // Primed on the first sample, then near the plan's mean (1.0) with
        // a ripple far below the plan's ±0.5.
        assert_eq!(smooth[0], 1.5);
        let tail = &smooth[100..200];
        let (lo, hi) = tail
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &u| (l.min(u), h.max(u)));
        assert!(lo > 0.9 && hi < 1.1, "{lo} {hi}");
        // The plan ran out: zero, not the filter's memory of it.
        assert_eq!(smooth[200], 0.0);
        // A new plan after the miss starts from its own current, not from
        // a blend with the old plan's.
        let mut d = decider(PolicyKind::Mpc, Some(t));
        d.plan_filter = LowPass::new(1.0, 0.1);
        d.receive(plan(0, &jitter), 0);
        for k in 1..=210 {
            d.tick(&sample(k, -65.0), |_| {}, |_| {});
        }
        d.receive(plan(210, &[3.0; 50]), 210);
        let u = d.tick(&sample(211, -65.0), |_| {}, |_| {}).record.requested;
        assert_eq!(u, 3.0);
    }

    /// The spike reflex replaces the plan's current from its delay after a
    /// detected spike for its width (at 0.1 ms samples: 0.5 ms = samples
    /// 5-14 after the spike's), then the plan drives again; a fault still
    /// zeroes the request.
    #[test]
    fn the_spike_reflex_pulses_after_each_spike_then_hands_back_to_the_plan() {
        let t = PlanTiming {
            decimation: 5,
            steps_per_period: 4,
            delay_samples: 0,
            pool: 4,
        };
        let mut d = decider(PolicyKind::Mpc, Some(t));
        d.feedback.spike_pulse = -6.0;
        d.feedback.spike_pulse_delay_ms = 0.5;
        d.feedback.spike_pulse_width_ms = 1.0;
        d.receive(plan(0, &[1.0; 400]), 0);
        let mut at = |k: u64, v: f64| d.tick(&sample(k, v), |_| {}, |_| {}).record.requested;
        for k in 1..10 {
            assert_eq!(at(k, -65.0), 1.0, "no spike yet: the plan drives");
        }
        // The spike is detected on its upward crossing at sample 10.
        let mut out = Vec::new();
        let mut off_plan = Vec::new();
        for k in 10..40 {
            let r = d
                .tick(
                    &sample(k, if k < 12 { 10.0 } else { -65.0 }),
                    |_| {},
                    |_| {},
                )
                .record;
            out.push(r.requested);
            off_plan.push(r.off_plan);
        }
        let pulsed: Vec<usize> = (0..out.len()).filter(|&i| out[i] == -6.0).collect();
        assert_eq!(pulsed, (5..15).collect::<Vec<_>>(), "{out:?}");
        // The records say which samples carried the loop's own current.
        let flagged: Vec<usize> = (0..off_plan.len()).filter(|&i| off_plan[i]).collect();
        assert_eq!(flagged, pulsed);
        assert!(out[..5].iter().all(|&u| u <= 0.0), "{out:?}");
        // After it, the plan made before the spike: its depolarising
        // current is withheld (it knew nothing of the spike).
        assert!(out[15..].iter().all(|&u| u == 0.0), "{out:?}");
        // A plan made after the spike drives again.
        d.receive(plan(40, &[1.0; 400]), 40);
        let mut at = |k: u64, v: f64| d.tick(&sample(k, v), |_| {}, |_| {}).record.requested;
        for k in 40..45 {
            at(k, -65.0);
        }
        assert_eq!(at(45, -65.0), 1.0);
        // Off (0), or suspended by the guard: no pulse after a spike.
        for suspended in [false, true] {
            let mut d = decider(PolicyKind::Mpc, Some(t));
            d.feedback.spike_pulse = if suspended { -6.0 } else { 0.0 };
            if suspended {
                d.set_reflex_suspended(true);
            }
            d.receive(plan(60, &[1.0; 400]), 60);
            let mut at = |k: u64, v: f64| d.tick(&sample(k, v), |_| {}, |_| {}).record;
            at(60, -65.0);
            at(61, 10.0);
            for k in 62..80 {
                let r = at(k, -65.0);
                assert_ne!(r.requested, -6.0);
                assert!(!r.off_plan);
            }
        }
    }

    /// With a lead, the reflex fires that long before the spike the active
    /// plan forecasts (a command that reaches the cell late then lands
    /// where the reflex on the detected spike would have, had it been on
    /// time); the same forecast spike, moved a little by the next plan,
    /// does not fire it again; without a lead nothing is anticipated.
    #[test]
    fn with_a_lead_the_reflex_fires_before_the_forecast_spike_once() {
        let t = PlanTiming {
            decimation: 5,
            steps_per_period: 4,
            delay_samples: 0,
            pool: 4,
        };
        let run = |lead_ms: f64| {
            let mut d = decider(PolicyKind::Mpc, Some(t));
            d.feedback.spike_pulse = -6.0;
            d.feedback.spike_pulse_delay_ms = 0.5;
            d.feedback.spike_pulse_width_ms = 1.0;
            d.feedback.spike_pulse_lead_ms = lead_ms;
            let mut p = plan(0, &[1.0; 400]);
            // A spike forecast at 3 ms (sample 30).
            p.spike_at_ms = 3.0;
            d.receive(p, 0);
            let mut out = Vec::new();
            for k in 1..60 {
                if k == 20 {
                    // The next plan puts the same spike at 3.2 ms.
                    let mut p = plan(19, &[1.0; 400]);
                    p.spike_at_ms = 3.2;
                    d.receive(p, 19);
                }
                out.push(d.tick(&sample(k, -65.0), |_| {}, |_| {}).record.requested);
            }
            (1..60u64)
                .zip(out)
                .filter(|&(_, u)| u == -6.0)
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        };
        // Fired at 1 ms (sample 10): the pulse from 1.5 ms for 1 ms.
        assert_eq!(run(2.0), (15..25).collect::<Vec<_>>());
        assert_eq!(run(0.0), Vec::<u64>::new());
    }

    /// With `mpc.window_filter` the planner's window and starting V are the
    /// low-passed measurement (a 1 mV step is still on its way after one
    /// time constant); without it, the raw samples bit for bit.
    #[test]
    fn the_window_filter_gives_the_planner_a_de_noised_state() {
        let run = |tau_ms: f64| {
            let mut c = Config::defaults().control;
            c.policy = PolicyKind::Mpc;
            c.mpc.window_filter_ms = tau_ms;
            let limiter = SafetyLimiter::new(Config::defaults().safety, 0.1).unwrap();
            let t = PlanTiming {
                decimation: 5,
                steps_per_period: 4,
                delay_samples: 0,
                pool: 4,
            };
            let mut d = Decider::new(
                &c,
                0.1,
                limiter.clone(),
                Some(t),
                WindowRing::new(4, 5),
                true,
                true,
            );
            let mut last = sample(0, -65.0);
            for k in 0..40 {
                last = sample(k, if k < 30 { -65.0 } else { -64.0 });
                d.tick(&last, |_| {}, |_| {});
            }
            let mut snap = Snapshot {
                index: 0,
                t_ms: 0.0,
                v_now: 0.0,
                last_spike_ms: f64::NEG_INFINITY,
                burst_fraction: 0.0,
                v: vec![0.0; 4],
                i: vec![0.0; 4],
                steps_seen: 0,
                limiter,
                taken: Instant::now(),
                objective: None,
                in_fallback: false,
                reflex_suspended: false,
                revert_model: false,
            };
            d.fill_snapshot(&mut snap, &last, Instant::now());
            (snap.v_now, snap.v[3])
        };
        assert_eq!(run(0.0), (-64.0, -64.0));
        // 10 samples of 0.1 ms after the step, tau 1 ms: 1 − e^−1 of it.
        let (v_now, newest) = run(1.0);
        let expected = -65.0 + (1.0 - (-1.0f64).exp());
        assert!((v_now - expected).abs() < 1e-9, "{v_now} vs {expected}");
        assert!((f64::from(newest) - v_now).abs() < 1e-5);
    }

    /// The snapshot carries the run's burst fraction as the score counts
    /// it: the spikes within `max_isi` (10 ms) of the previous one, over
    /// all spikes (a burst's first spike is not in a burst). A pair, an
    /// isolated spike, a triplet.
    #[test]
    fn the_snapshot_carries_the_runs_burst_fraction() {
        let mut d = decider(PolicyKind::Off, None);
        let spikes_ms = [1.0, 4.0, 104.0, 200.0, 203.0, 206.0];
        let mut snap = Snapshot {
            index: 0,
            t_ms: 0.0,
            v_now: 0.0,
            last_spike_ms: f64::NEG_INFINITY,
            burst_fraction: -1.0,
            v: vec![0.0; 4],
            i: vec![0.0; 4],
            steps_seen: 0,
            limiter: SafetyLimiter::new(Config::defaults().safety, 0.1).unwrap(),
            taken: Instant::now(),
            objective: None,
            in_fallback: false,
            reflex_suspended: false,
            revert_model: false,
        };
        let mut last = sample(0, -65.0);
        d.fill_snapshot(&mut snap, &last, Instant::now());
        assert_eq!(snap.burst_fraction, 0.0);
        for k in 0..2_500u64 {
            let t = k as f64 * 0.1;
            let v = if spikes_ms.iter().any(|&s| (t - s).abs() < 0.05) {
                20.0
            } else {
                -65.0
            };
            last = sample(k, v);
            d.tick(&last, |_| {}, |_| {});
            if k == 1_500 {
                // The pair and the isolated spike: the pair's second.
                d.fill_snapshot(&mut snap, &last, Instant::now());
                assert_eq!(d.counters.spikes, 3);
                assert!((snap.burst_fraction - 1.0 / 3.0).abs() < 1e-12);
            }
        }
        d.fill_snapshot(&mut snap, &last, Instant::now());
        assert_eq!(d.counters.spikes, 6);
        assert!((snap.burst_fraction - 3.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn the_pid_baseline_stimulates_a_silent_cell_toward_its_rate() {
        let mut d = decider(PolicyKind::Pid, None);
        let mut last = 0.0;
        for k in 0..20_000 {
            last = d.tick(&sample(k, -70.0), |_| {}, |_| {}).record.command;
        }
        assert!(
            last > 0.0,
            "a cell below its target rate gets depolarising current"
        );
        assert!(last <= d.limiter().limits().max_amplitude);
    }
}
