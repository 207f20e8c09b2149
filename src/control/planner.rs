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
    links: PlannerLinks,
) -> PlannerTotals {
    let mut totals = PlannerTotals::default();
    let mut objective_seq = 0;
    mpc.adopt_card(forecaster.card());
    crate::poll::tight_timers();
    while let Ok(mut snap) = crate::poll::recv(&ends.snapshots, NAP) {
        take_swaps(&links, &mut forecaster, &mut mpc, &mut totals, snap.index);
        while let Ok(newer) = ends.snapshots.try_recv() {
            let _ = ends
                .empty_snapshots
                .try_send(std::mem::replace(&mut snap, newer));
            totals.superseded += 1;
        }
        let Ok(mut plan) = crate::poll::recv(&ends.empty_plans, NAP) else {
            break;
        };
        if let Some((seq, o)) = snap.objective {
            if seq != objective_seq {
                mpc.set_objective(o);
                objective_seq = seq;
            }
        }
        let deadline = budget.map(|b| snap.taken + b);
        let input = PlanInput {
            window_v: &snap.v,
            window_i: &snap.i,
            base_index: snap.index,
            t_ms: snap.t_ms,
            v_now: snap.v_now,
            last_spike_ms: snap.last_spike_ms,
            burst_fraction: snap.burst_fraction,
            limiter: snap.limiter.clone(),
        };
        plan.base_index = snap.index;
        plan.snapshot_taken = snap.taken;
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

/// Take the models waiting to be swapped in. A swap happens between ticks
/// only, and only to a model of the same geometry (the loop's window and
/// plans are sized for it).
fn take_swaps(
    links: &PlannerLinks,
    forecaster: &mut Forecaster,
    mpc: &mut Mpc,
    totals: &mut PlannerTotals,
    index: u64,
) {
    let Some(rx) = &links.swaps else {
        return;
    };
    while let Ok(swap) = rx.try_recv() {
        let (a, b) = (forecaster.card(), swap.forecaster.card());
        let text = if (a.t_in, a.t_out, a.dt_ms) != (b.t_in, b.t_out, b.dt_ms)
            || swap.forecaster.max_batch() < forecaster.max_batch()
        {
            tracing::warn!(model = %swap.label, "model swap refused: its window, horizon, step or batch differ from the running model's");
            None
        } else {
            *forecaster = swap.forecaster;
            mpc.reset();
            mpc.adopt_card(forecaster.card());
            totals.models_swapped += 1;
            tracing::info!(model = %swap.label, sample = index, "model swapped in");
            Some(swap.label)
        };
        if let (Some(label), Some((tx, _))) = (text, &links.notes) {
            if tx
                .try_send(Note::ModelSwapped {
                    base_index: index,
                    label,
                })
                .is_err()
            {
                totals.notes_dropped += 1;
            }
        }
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
