//! The planner thread: forecasting and MPC off the real-time thread (tract
//! and the planner may take longer than a sample; DESIGN §1).
//!
//! It always plans from the newest snapshot (older ones still queued are
//! returned unused) and publishes the plan with the sample index it was
//! computed from. It ends when the loop drops its ends of the channels.

use super::handoff::{Note, Plan, PlanStatus, PlannerEnds};
use crate::forecast::{ForecastError, Forecaster};
use crate::policy::mpc::{Mpc, PlanInput};
use std::time::{Duration, Instant};

/// What the planner did over a run.
#[derive(Clone, Debug, Default)]
pub struct PlannerTotals {
    pub plans: u64,
    /// Snapshots superseded before the planner got to them.
    pub superseded: u64,
    pub model_errors: u64,
    /// The first model error, to say why stimulation stopped.
    pub first_error: Option<String>,
    pub models_swapped: u64,
    /// Forecast notes the record consumer had no room for.
    pub notes_dropped: u64,
}

/// A model to plan with from the next tick on (retraining or rollback);
/// the forecaster layer owns the type.
pub use crate::forecast::ModelSwap;

/// The planner's optional connections besides the loop.
#[derive(Default)]
pub struct PlannerLinks {
    /// Forecasts and model swaps for the recorder and the drift monitor.
    /// `wait`: block for room (free clock, reproducible) instead of
    /// dropping and counting.
    pub notes: Option<(crossbeam_channel::Sender<Note>, bool)>,
    /// New models, taken between planning ticks.
    pub swaps: Option<crossbeam_channel::Receiver<ModelSwap>>,
    /// Forecast what the loop applied, for the guard
    /// (`control.guard.forecasts = "applied"`; needs `notes`).
    pub hindcasts: bool,
    /// The model the running one replaced, swapped in when a snapshot says
    /// the guard went back to it (`control.guard.revert`): the snapshot
    /// carries the decision so that it lands at the same sample in every
    /// run under the free clock.
    pub revert: Option<ModelSwap>,
    /// A swap whose model reads more steps than the loop has seen since
    /// its window was last cleared: it waits for them (starts `None`).
    pub waiting: Option<ModelSwap>,
}

impl PlannerLinks {
    /// Send a note if anyone listens (built only then); one that finds no
    /// room is counted, never waited for, unless the clock is free.
    fn note(&self, totals: &mut PlannerTotals, note: impl FnOnce() -> Note) {
        if let Some((tx, wait)) = &self.notes {
            let note = note();
            let sent = if *wait {
                tx.send(note).is_ok()
            } else {
                tx.try_send(note).is_ok()
            };
            if !sent {
                totals.notes_dropped += 1;
            }
        }
    }
}

/// How long the planner naps between looks for a snapshot: it never
/// parks, so the loop's `try_send` never has to wake it (see [`crate::poll`]);
/// a nap adds at most this to a plan's latency.
const NAP: std::time::Duration = std::time::Duration::from_micros(250);

/// Plan until the loop hangs up. `budget`: stop refining after this much
/// time per plan (paced clock); `None` runs every iteration (free clock,
/// deterministic).
pub fn run(
    ends: PlannerEnds,
    mut forecaster: Forecaster,
    mut mpc: Mpc,
    budget: Option<Duration>,
    mut links: PlannerLinks,
) -> PlannerTotals {
    let mut totals = PlannerTotals::default();
    let mut objective_seq = 0;
    mpc.adopt_card(forecaster.card());
    let mut hindcasts = (links.hindcasts && links.notes.is_some()).then(|| {
        let card = forecaster.card();
        Hindcasts::new(card.t_in, card.t_out, mpc.decimation())
    });
    crate::poll::tight_timers();
    while let Ok(mut snap) = crate::poll::recv(&ends.snapshots, NAP) {
        take_models(
            &mut links,
            &snap,
            &mut forecaster,
            &mut mpc,
            &mut totals,
            &mut hindcasts,
        );
        while let Ok(newer) = ends.snapshots.try_recv() {
            let _ = ends
                .empty_snapshots
                .try_send(std::mem::replace(&mut snap, newer));
            totals.superseded += 1;
        }
        let Ok(mut plan) = crate::poll::recv(&ends.empty_plans, NAP) else {
            break;
        };
        mpc.set_reflex(!snap.reflex_suspended);
        if let Some((seq, o)) = snap.objective {
            if seq != objective_seq {
                mpc.set_objective(o);
                objective_seq = seq;
            }
        }
        let deadline = budget.map(|b| snap.taken + b);
        // The loop's window may be longer than this model's (sized for the
        // model `control.guard.revert` goes back to as well).
        let from = snap.v.len() - forecaster.card().t_in;
        let input = PlanInput {
            window_v: &snap.v[from..],
            window_i: &snap.i[from..],
            base_index: snap.index,
            t_ms: snap.t_ms,
            v_now: snap.v_now,
            last_spike_ms: snap.last_spike_ms,
            burst_fraction: snap.burst_fraction,
            limiter: snap.limiter.clone(),
        };
        plan.base_index = snap.index;
        plan.snapshot_taken = snap.taken;
        if let Some(h) = &mut hindcasts {
            h.complete(&input, &mut forecaster, &mut mpc, &mut totals, &links);
        }
        if snap.in_fallback {
            forecast_for_guard(
                &mut plan,
                &input,
                &mut forecaster,
                &mut mpc,
                &mut totals,
                &links,
            );
            plan.forecast_error_mv = f64::NAN;
            if let (Some(h), PlanStatus::Ok) = (&mut hindcasts, plan.status) {
                h.push(&input, 0.0);
            }
            let _ = ends.empty_snapshots.try_send(snap);
            plan.published = Instant::now();
            totals.plans += 1;
            if ends.plans.try_send(plan).is_err() {
                break;
            }
            continue;
        }
        let result = mpc.plan(&input, &mut forecaster, deadline);
        match result {
            Ok(stats) => {
                plan.status = PlanStatus::Ok;
                plan.currents.copy_from_slice(mpc.best());
                plan.forecast_ns = stats.forecast_ns;
                plan.iterations = stats.iterations;
                plan.cost = stats.cost;
                plan.forecast.copy_from_slice(mpc.model_forecast());
                plan.expected.copy_from_slice(mpc.best_forecast());
                plan.v_base = snap.v_now as f32;
                plan.spike_at_ms = mpc.best_spike_ms();
                links.note(&mut totals, || Note::Forecast {
                    base_index: snap.index,
                    t_ms: snap.t_ms,
                    dt_ms: mpc.dt_model(),
                    model: plan.forecast.clone().into_boxed_slice(),
                    corrected: mpc.best_forecast().into(),
                });
                if let Some(h) = &mut hindcasts {
                    h.push(&input, mpc.bias_mv());
                }
            }
            Err(e) => fail_plan(&mut plan, &mut mpc, &mut totals, &e),
        }
        plan.forecast_error_mv = mpc.forecast_error_mv().unwrap_or(f64::NAN);
        let _ = ends.empty_snapshots.try_send(snap);
        plan.published = Instant::now();
        totals.plans += 1;
        if ends.plans.try_send(plan).is_err() {
            break;
        }
    }
    totals
}

/// The plans' windows waiting for the currents the loop applied after
/// them; each becomes one forecast of those currents (a hindcast) as soon
/// as a later snapshot's window holds its whole horizon. Preallocated: a
/// plan's horizon spans a bounded number of later plans.
struct Hindcasts {
    t_in: usize,
    t_out: usize,
    decimation: u64,
    /// (base index, the plan's bias, window V, window I), oldest first.
    pending: std::collections::VecDeque<(u64, f32, Vec<f32>, Vec<f32>)>,
    spare: Vec<(u64, f32, Vec<f32>, Vec<f32>)>,
    applied: Vec<f32>,
}

/// Windows held at most: a horizon of 20 steps replanned every step.
const HINDCASTS_PENDING: usize = 64;

impl Hindcasts {
    fn new(t_in: usize, t_out: usize, decimation: usize) -> Hindcasts {
        Hindcasts {
            t_in,
            t_out,
            decimation: decimation.max(1) as u64,
            pending: std::collections::VecDeque::with_capacity(HINDCASTS_PENDING),
            spare: (0..HINDCASTS_PENDING)
                .map(|_| (0, 0.0, vec![0.0; t_in], vec![0.0; t_in]))
                .collect(),
            applied: vec![0.0; t_out],
        }
    }

    /// Hold a planned snapshot's window (the oldest is dropped when full).
    fn push(&mut self, input: &PlanInput, bias: f32) {
        let mut slot = match self.spare.pop() {
            Some(s) => s,
            None => self.pending.pop_front().expect("a full queue holds one"),
        };
        slot.0 = input.base_index;
        slot.1 = bias;
        slot.2.copy_from_slice(input.window_v);
        slot.3.copy_from_slice(input.window_i);
        self.pending.push_back(slot);
    }

    /// Forecast, and send, every held window whose horizon the newest
    /// snapshot's window covers; drop those it never will (a gap, or a
    /// window restarted on another step phase).
    fn complete(
        &mut self,
        input: &PlanInput,
        forecaster: &mut Forecaster,
        mpc: &mut Mpc,
        totals: &mut PlannerTotals,
        links: &PlannerLinks,
    ) {
        let (d, t_in, t_out) = (self.decimation, self.t_in, self.t_out);
        let now = input.base_index;
        while let Some(&(base, ..)) = self.pending.front() {
            let span = t_out as u64 * d;
            if base + span > now && base <= now {
                break;
            }
            let slot = self.pending.pop_front().expect("checked");
            let ago = now.wrapping_sub(base);
            if base < now && ago % d == 0 && ago / d <= t_in as u64 {
                // Model step j + 1 of the horizon ended `ago - (j + 1) d`
                // samples before the newest window's last step.
                let last = t_in as u64 - 1;
                for j in 0..t_out {
                    let back = (ago - (j as u64 + 1) * d) / d;
                    self.applied[j] = input.window_i[(last - back) as usize];
                }
                if let Ok(v) = mpc.hindcast(&slot.2, &slot.3, &self.applied, forecaster) {
                    let bias = slot.1;
                    links.note(totals, || Note::Hindcast {
                        base_index: base,
                        corrected: v.iter().map(|x| x + bias).collect(),
                    });
                }
            }
            self.spare.push(slot);
        }
    }
}

/// While the guard's fallback drives: no plan (its currents are zero and
/// unused), only the model's forecast of what the fallback applies, for the
/// guard's judgement of the model before MPC acts.
fn forecast_for_guard(
    plan: &mut Plan,
    input: &PlanInput,
    forecaster: &mut Forecaster,
    mpc: &mut Mpc,
    totals: &mut PlannerTotals,
    links: &PlannerLinks,
) {
    let dt_ms = mpc.dt_model();
    let v = match mpc.forecast_held(input, forecaster) {
        Ok(v) => v,
        Err(e) => return fail_plan(plan, mpc, totals, &e),
    };
    plan.status = PlanStatus::Ok;
    plan.currents.fill(0.0);
    plan.forecast_ns = 0;
    plan.iterations = 0;
    plan.cost = f64::NAN;
    plan.forecast.copy_from_slice(v);
    plan.expected.copy_from_slice(v);
    plan.v_base = input.v_now as f32;
    plan.spike_at_ms = f64::NAN;
    links.note(totals, || Note::Forecast {
        base_index: input.base_index,
        t_ms: input.t_ms,
        dt_ms,
        model: v.into(),
        corrected: v.into(),
    });
}

/// Take the models waiting to be swapped in, and the one the guard went
/// back to if `snap` says so (`control.guard.revert`). A swap happens
/// between ticks only; the hindcasts start afresh (the old model's plans
/// are not the new model's to answer for).
fn take_models(
    links: &mut PlannerLinks,
    snap: &super::handoff::Snapshot,
    forecaster: &mut Forecaster,
    mpc: &mut Mpc,
    totals: &mut PlannerTotals,
    hindcasts: &mut Option<Hindcasts>,
) {
    let (swapped, index, window) = (totals.models_swapped, snap.index, snap.v.len());
    // After an interruption cleared the loop's window, a model reading
    // more steps than seen since would read the time before it: it waits
    // (at most its window's length; one that can never fit is refused).
    let seen = |s: &ModelSwap| s.forecaster.card().t_in <= snap.steps_seen;
    if let Some(rx) = &links.swaps {
        while let Ok(swap) = rx.try_recv() {
            // A newer swap that fits supersedes one still waiting; one
            // that does not is refused and leaves it be.
            let fits = fits(forecaster, &swap, window);
            if fits && !seen(&swap) {
                links.waiting = Some(swap);
                continue;
            }
            if fits {
                links.waiting = None;
            }
            swap_in(links, swap, forecaster, mpc, totals, index, window);
        }
    }
    if let Some(swap) = links.waiting.take_if(|s| seen(s)) {
        swap_in(links, swap, forecaster, mpc, totals, index, window);
    }
    if let Some(swap) = links.revert.take_if(|s| snap.revert_model && seen(s)) {
        swap_in(links, swap, forecaster, mpc, totals, index, window);
    }
    if let (Some(h), true) = (hindcasts, totals.models_swapped != swapped) {
        let card = forecaster.card();
        *h = Hindcasts::new(card.t_in, card.t_out, mpc.decimation());
    }
}

/// Whether `new` plans as `running` does: the same horizon and step, and
/// at least its batch (the loop's plans and the planner's batch are sized
/// for `running`; the window is checked where its length is known).
pub(super) fn plans_alike(running: &Forecaster, new: &Forecaster) -> bool {
    let (a, b) = (running.card(), new.card());
    (a.t_out, a.dt_ms) == (b.t_out, b.dt_ms) && new.max_batch() >= running.max_batch()
}

/// Whether `swap`'s model can take over from `running` in a loop window
/// of `window` steps.
fn fits(running: &Forecaster, swap: &ModelSwap, window: usize) -> bool {
    plans_alike(running, &swap.forecaster) && swap.forecaster.card().t_in <= window
}

/// Plan with `swap`'s model from `index` on, if it fits the loop as the
/// running model does; the recorder and the guard are told.
fn swap_in(
    links: &PlannerLinks,
    swap: ModelSwap,
    forecaster: &mut Forecaster,
    mpc: &mut Mpc,
    totals: &mut PlannerTotals,
    index: u64,
    window: usize,
) {
    let text = if !fits(forecaster, &swap, window) {
        tracing::warn!(model = %swap.label, "model swap refused: its horizon, step or batch differ from the running model's, or its window is longer than the loop's");
        None
    } else {
        *forecaster = swap.forecaster;
        mpc.reset();
        mpc.adopt_card(forecaster.card());
        totals.models_swapped += 1;
        tracing::info!(model = %swap.label, sample = index, "model swapped in");
        Some(swap.label)
    };
    if let Some(label) = text {
        links.note(totals, || Note::ModelSwapped {
            base_index: index,
            label,
        });
    }
}

/// A plan the model could not make: stimulation to zero for its span, and
/// the warm start forgotten.
fn fail_plan(plan: &mut Plan, mpc: &mut Mpc, totals: &mut PlannerTotals, e: &ForecastError) {
    totals.model_errors += 1;
    if totals.first_error.is_none() {
        totals.first_error = Some(e.to_string());
    }
    plan.status = if matches!(e, ForecastError::NonFinite) {
        PlanStatus::NonFinite
    } else {
        PlanStatus::ModelError
    };
    plan.currents.fill(0.0);
    plan.forecast_ns = 0;
    plan.iterations = 0;
    plan.cost = f64::NAN;
    plan.forecast.fill(f32::NAN);
    plan.expected.fill(f32::NAN);
    plan.spike_at_ms = f64::NAN;
    mpc.reset();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::forecast::Engine;
    use crate::safety::SafetyLimiter;

    /// A hindcast answers for the model alone: fed exactly the currents a
    /// plan assumed, read from the right steps of a later snapshot's
    /// window, it is that plan's forecast (same window, same model, the
    /// plan's bias added back); fed what the loop put in their place, it
    /// differs. Windows that can never be completed are dropped unsent.
    #[test]
    fn a_hindcast_of_the_planned_currents_is_the_plans_forecast() {
        let c = Config::defaults();
        let mut f =
            Forecaster::load_source(&c.control.model, c.control.mpc.candidates, Engine::Native)
                .unwrap();
        let card = f.card().clone();
        let (t_in, t_out, d) = (card.t_in, card.t_out, 5usize);
        let mut mpc = Mpc::new(
            c.control.mpc,
            c.control.objective,
            t_out,
            d,
            card.dt_ms,
            6.0,
            0,
        )
        .with_window(t_in);
        let limiter = SafetyLimiter::new(c.safety, card.dt_ms / d as f64).unwrap();
        let v: Vec<f32> = (0..t_in).map(|k| -65.0 + (k % 7) as f32 * 0.3).collect();
        let i = vec![0.0f32; t_in];
        let base = 10_000u64;
        let input = PlanInput {
            window_v: &v,
            window_i: &i,
            base_index: base,
            t_ms: base as f64 * 0.1,
            v_now: v[t_in - 1] as f64,
            last_spike_ms: f64::NEG_INFINITY,
            burst_fraction: 0.0,
            limiter: limiter.clone(),
        };
        mpc.plan(&input, &mut f, None).unwrap();
        let planned = mpc.model_forecast().to_vec();
        let bias = mpc.bias_mv();
        // The plan's per-step mean currents, as the window will hold them.
        let steps: Vec<f32> = mpc
            .best()
            .chunks(d)
            .map(|s| s.iter().sum::<f32>() / d as f32)
            .collect();
        assert!(steps.iter().any(|&x| x != 0.0), "a plan that stimulates");

        let (tx, rx) = crossbeam_channel::unbounded();
        let links = PlannerLinks {
            notes: Some((tx, true)),
            swaps: None,
            hindcasts: true,
            revert: None,
            waiting: None,
        };
        let mut totals = PlannerTotals::default();
        // A later snapshot, 3 model steps after the horizon's end: its
        // window's last t_out + 3 steps are the horizon, then 3 more.
        let later = |horizon: &[f32]| {
            let mut wi = vec![0.0f32; t_in];
            let start = t_in - t_out - 3;
            wi[start..start + t_out].copy_from_slice(horizon);
            wi
        };
        let wv = vec![-65.0f32; t_in];
        // `phase`: samples off the model-step grid of the plan's window.
        let mut hindcast =
            |h: &mut Hindcasts, mpc: &mut Mpc, f: &mut Forecaster, wi: &[f32], phase: u64| {
                let now = base + (t_out as u64 + 3) * d as u64 + phase;
                let input = PlanInput {
                    window_v: &wv,
                    window_i: wi,
                    base_index: now,
                    t_ms: now as f64 * 0.1,
                    v_now: -65.0,
                    last_spike_ms: f64::NEG_INFINITY,
                    burst_fraction: 0.0,
                    limiter: limiter.clone(),
                };
                h.complete(&input, f, mpc, &mut totals, &links);
            };
        let mut h = Hindcasts::new(t_in, t_out, d);
        h.push(&input, bias);
        hindcast(&mut h, &mut mpc, &mut f, &later(&steps), 0);
        let Ok(Note::Hindcast {
            base_index,
            corrected,
        }) = rx.try_recv()
        else {
            panic!("no hindcast sent");
        };
        assert_eq!(base_index, base);
        for (j, (&p, &h)) in planned.iter().zip(corrected.iter()).enumerate() {
            assert!(
                (p + bias - h).abs() < 1e-4,
                "step {j}: planned {p} + bias {bias} vs hindcast {h}"
            );
        }
        assert!(h.pending.is_empty());

        // The loop applied something else (a reflex's -6 over the first
        // steps): the hindcast is the model's answer to that instead.
        let mut other = steps.clone();
        other[..4].fill(-6.0);
        h.push(&input, bias);
        hindcast(&mut h, &mut mpc, &mut f, &later(&other), 0);
        let Ok(Note::Hindcast { corrected, .. }) = rx.try_recv() else {
            panic!("no hindcast sent");
        };
        let diff = planned
            .iter()
            .zip(corrected.iter())
            .map(|(&p, &h)| (p + bias - h).abs())
            .fold(0.0f32, f32::max);
        assert!(diff > 0.1, "the applied currents changed nothing: {diff}");

        // A snapshot on another step phase (the window restarted) can
        // never complete the plan's horizon: dropped, nothing sent.
        h.push(&input, bias);
        hindcast(&mut h, &mut mpc, &mut f, &later(&steps), 2);
        assert!(rx.try_recv().is_err());
        assert!(h.pending.is_empty());
    }

    /// After an interruption cleared the loop's window, a model reading
    /// more steps than seen since waits for them: the model the guard
    /// goes back to (160 steps, in a ring sized for it, behind a running
    /// 80-step model) and a swap from the retrainer alike. Nothing is
    /// lost: each lands once its window is the cell's own.
    #[test]
    fn a_longer_model_waits_for_its_window_after_a_clear() {
        use crate::forecast::ModelSource;
        let c = Config::defaults();
        let batch = c.control.mpc.candidates;
        let load = |name: &str| {
            Forecaster::load_source(&ModelSource::parse(name), batch, Engine::Native).unwrap()
        };
        let mut f = load("embedded:ca1_lstm_family");
        let card = f.card().clone();
        let long = load("embedded:ca1_lstm");
        let t_long = long.card().t_in;
        assert!(t_long > card.t_in, "{t_long} vs {}", card.t_in);
        let mut mpc = Mpc::new(
            c.control.mpc,
            c.control.objective,
            card.t_out,
            5,
            card.dt_ms,
            6.0,
            0,
        )
        .with_window(card.t_in);
        let mut links = PlannerLinks {
            revert: Some(ModelSwap {
                forecaster: long,
                label: "embedded:ca1_lstm".into(),
            }),
            ..PlannerLinks::default()
        };
        let mut totals = PlannerTotals::default();
        let mut snap = crate::control::handoff::Snapshot {
            index: 1_000,
            t_ms: 100.0,
            v_now: -65.0,
            last_spike_ms: f64::NEG_INFINITY,
            burst_fraction: 0.0,
            v: vec![-65.0; t_long],
            i: vec![0.0; t_long],
            steps_seen: card.t_in,
            limiter: SafetyLimiter::new(c.safety, card.dt_ms / 5.0).unwrap(),
            taken: std::time::Instant::now(),
            objective: None,
            in_fallback: false,
            reflex_suspended: false,
            revert_model: true,
        };
        let mut take = |links: &mut PlannerLinks, snap: &_, f: &mut Forecaster| {
            take_models(links, snap, f, &mut mpc, &mut totals, &mut None);
            totals.models_swapped
        };
        // Enough for the running model, not for the one gone back to.
        assert_eq!(take(&mut links, &snap, &mut f), 0);
        assert!(links.revert.is_some(), "the model to go back to is kept");
        assert_eq!(f.card().t_in, card.t_in);
        snap.steps_seen = t_long - 1;
        assert_eq!(take(&mut links, &snap, &mut f), 0);
        snap.steps_seen = t_long;
        assert_eq!(take(&mut links, &snap, &mut f), 1);
        assert_eq!(f.card().t_in, t_long);
        assert!(links.revert.is_none());

        // A swap from the retrainer waits alike, and a newer one that
        // fits supersedes it.
        let (tx, rx) = crossbeam_channel::unbounded();
        links.swaps = Some(rx);
        let mut f = load("embedded:ca1_lstm_family");
        snap.steps_seen = card.t_in;
        snap.revert_model = false;
        let swap = |name: &str| ModelSwap {
            forecaster: load(name),
            label: name.into(),
        };
        tx.send(swap("embedded:ca1_lstm")).unwrap();
        assert_eq!(take(&mut links, &snap, &mut f), 1, "counts only swaps made");
        assert!(links.waiting.is_some());
        snap.steps_seen = t_long;
        assert_eq!(take(&mut links, &snap, &mut f), 2);
        assert_eq!(f.card().t_in, t_long);
        snap.steps_seen = card.t_in;
        tx.send(swap("embedded:ca1_lstm")).unwrap();
        tx.send(swap("embedded:ca1_lstm_spike")).unwrap();
        assert_eq!(take(&mut links, &snap, &mut f), 3);
        assert!(links.waiting.is_none(), "the newer swap superseded it");
        assert_eq!(f.card().t_in, card.t_in);
        // A newer swap that cannot plan as the running model does (a
        // smaller batch) is refused and leaves the waiting one be.
        tx.send(swap("embedded:ca1_lstm")).unwrap();
        tx.send(ModelSwap {
            forecaster: Forecaster::load_source(
                &ModelSource::parse("embedded:ca1_lstm_spike"),
                1,
                Engine::Native,
            )
            .unwrap(),
            label: "batch 1".into(),
        })
        .unwrap();
        assert_eq!(take(&mut links, &snap, &mut f), 3);
        assert!(links.waiting.is_some(), "a refused swap supersedes nothing");
        snap.steps_seen = t_long;
        assert_eq!(take(&mut links, &snap, &mut f), 4);
        assert_eq!(f.card().t_in, t_long);
    }
}
