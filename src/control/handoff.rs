//! What crosses between the control thread and the others, and how.
//!
//! Every buffer is allocated before the loop starts and circulates in a
//! pool: the loop takes an empty one with `try_recv`, fills it and hands it
//! over with `try_send`; the receiver sends it back when done. Channels are
//! crossbeam's bounded (array) flavour, whose operations do not allocate or
//! lock. Capacities equal the pool size, so a `try_send` of a pooled buffer
//! can never find its channel full; a `try_recv` that finds no empty buffer
//! means the other side is behind, and the loop counts it instead of waiting.

use crate::safety::SafetyLimiter;
use crossbeam_channel::{bounded, Receiver, Sender};
use std::time::Instant;

/// The loop's view of the window at the end of a model step: what the
/// planner plans from.
pub struct Snapshot {
    /// Index of the last sample in the window.
    pub index: u64,
    pub t_ms: f64,
    pub v_now: f64,
    /// Last spike detected by the loop, ms (`-inf` if none).
    pub last_spike_ms: f64,
    /// Fraction of the run's detected spikes so far that were in bursts
    /// as the score counts them (within the `burst` objective's `max_isi`
    /// of the previous spike, so not a burst's first; 0 before any).
    pub burst_fraction: f64,
    /// The window, oldest first (model steps).
    pub v: Vec<f32>,
    pub i: Vec<f32>,
    /// Newest steps of `v` and `i` seen since the loop's window was last
    /// cleared (a plant interruption); the older ones are stale. A model
    /// whose window is longer waits for these (the ring may be sized for
    /// a longer model than the running one: `control.guard.revert`).
    pub steps_seen: usize,
    /// The limiter as it was, so plans are feasible from this state.
    pub limiter: SafetyLimiter,
    /// When the sample arrived.
    pub taken: Instant,
    /// An objective the operator changed to, with its change number
    /// (`None`: the configured one).
    pub objective: Option<(u64, crate::policy::Objective)>,
    /// The MPC guard's fallback drove at the snapshot: the planner then
    /// forecasts what the fallback applies, for the guard to judge the
    /// model before MPC acts, instead of planning.
    pub in_fallback: bool,
    /// The guard suspended the loop's spike reflex: the planner stops
    /// planning with it (`mpc.plan_reflex`).
    pub reflex_suspended: bool,
    /// The guard sent the planner back to the model the running one
    /// replaced (`control.guard.revert`).
    pub revert_model: bool,
}

/// How a planning step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanStatus {
    Ok,
    /// The forecaster failed (the run stops stimulating until a plan
    /// succeeds).
    ModelError,
    /// The forecast was not finite.
    NonFinite,
}

/// A plan: currents per sample from the one after `base_index`.
pub struct Plan {
    pub base_index: u64,
    pub status: PlanStatus,
    pub currents: Vec<f32>,
    /// The snapshot's sample arrival, and when the plan was published.
    pub snapshot_taken: Instant,
    pub published: Instant,
    pub forecast_ns: u64,
    pub iterations: u32,
    pub cost: f64,
    /// The model's forecast of V (mV) at the end of each model step of the
    /// horizon under this plan, step 1 first (NaN if none).
    pub forecast: Vec<f32>,
    /// What the plan expects V to be (mV) at the end of each model step
    /// under it: the bias-corrected forecast the planner optimised
    /// against, step 1 first; with `v_base`, V at the snapshot, the loop's
    /// reference for the feedback between plans.
    pub expected: Vec<f32>,
    pub v_base: f32,
    /// When the plan's forecast puts its first spike, plant ms, corrected
    /// by the learnt spike-timing lag (NaN: none in the horizon). What the
    /// anticipating spike reflex fires on (`control.feedback.spike_pulse_lead`).
    pub spike_at_ms: f64,
    /// The planner's running RMS forecast error, mV (NaN: not measured
    /// yet); for the service's metrics.
    pub forecast_error_mv: f64,
}

// The sample record and the notes belong to the recording (`record`),
// which everything else hands data to.
pub use crate::record::{Note, Record};

/// Notes in flight at most (the consumer drains them after every block).
pub const NOTES: usize = 4096;

/// Samples per record block.
pub const BLOCK: usize = 500;

/// The loop's end of all handoffs.
pub struct LoopEnds {
    pub snapshots: Option<SnapshotEnds>,
    pub records: RecordEnds,
}

pub struct SnapshotEnds {
    pub to_planner: Sender<Box<Snapshot>>,
    pub empty: Receiver<Box<Snapshot>>,
    pub plans: Receiver<Box<Plan>>,
    pub used_plans: Sender<Box<Plan>>,
}

/// The planner's end.
pub struct PlannerEnds {
    pub snapshots: Receiver<Box<Snapshot>>,
    pub empty_snapshots: Sender<Box<Snapshot>>,
    pub plans: Sender<Box<Plan>>,
    pub empty_plans: Receiver<Box<Plan>>,
}

pub struct RecordEnds {
    pub full: Sender<Vec<Record>>,
    pub empty: Receiver<Vec<Record>>,
    /// The block being filled.
    pub current: Vec<Record>,
}

/// The consumer's end of the record stream.
pub struct ConsumerEnds {
    pub full: Receiver<Vec<Record>>,
    pub empty: Sender<Vec<Record>>,
}

const SNAPSHOTS: usize = 3;

/// Build every pool. `planner`: window length, horizon (model steps),
/// samples per plan, plans in
/// the pool (one active, the rest queued or being written) and the limiter
/// snapshots start from; `blocks`: record blocks in flight (slack for a
/// slow consumer).
pub fn build(
    planner: Option<(usize, usize, usize, usize, SafetyLimiter)>,
    blocks: usize,
) -> (LoopEnds, Option<PlannerEnds>, ConsumerEnds) {
    let now = Instant::now();
    let (snap_ends, planner_ends) = match planner {
        Some((t_in, t_out, plan_len, plans_pool, limiter)) => {
            let (to_planner, snapshots) = bounded(SNAPSHOTS);
            let (empty_snapshots, empty) = bounded(SNAPSHOTS);
            for _ in 0..SNAPSHOTS {
                let s = Box::new(Snapshot {
                    index: 0,
                    t_ms: 0.0,
                    v_now: 0.0,
                    last_spike_ms: f64::NEG_INFINITY,
                    burst_fraction: 0.0,
                    v: vec![0.0; t_in],
                    i: vec![0.0; t_in],
                    steps_seen: 0,
                    limiter: limiter.clone(),
                    taken: now,
                    objective: None,
                    in_fallback: false,
                    reflex_suspended: false,
                    revert_model: false,
                });
                empty_snapshots.try_send(s).expect("pool fits its channel");
            }
            let plans_pool = plans_pool.max(3);
            let (plans_tx, plans) = bounded(plans_pool);
            let (used_plans, empty_plans) = bounded(plans_pool);
            for _ in 0..plans_pool {
                let p = Box::new(Plan {
                    base_index: 0,
                    status: PlanStatus::Ok,
                    currents: vec![0.0; plan_len],
                    snapshot_taken: now,
                    published: now,
                    forecast_ns: 0,
                    iterations: 0,
                    cost: 0.0,
                    forecast: vec![f32::NAN; t_out],
                    expected: vec![f32::NAN; t_out],
                    v_base: f32::NAN,
                    spike_at_ms: f64::NAN,
                    forecast_error_mv: f64::NAN,
                });
                used_plans.try_send(p).expect("pool fits its channel");
            }
            (
                Some(SnapshotEnds {
                    to_planner,
                    empty,
                    plans,
                    used_plans,
                }),
                Some(PlannerEnds {
                    snapshots,
                    empty_snapshots,
                    plans: plans_tx,
                    empty_plans,
                }),
            )
        }
        None => (None, None),
    };
    let blocks = blocks.max(2);
    let (full_tx, full_rx) = bounded(blocks);
    let (empty_tx, empty_rx) = bounded(blocks);
    for _ in 0..blocks - 1 {
        empty_tx
            .try_send(Vec::with_capacity(BLOCK))
            .expect("pool fits its channel");
    }
    (
        LoopEnds {
            snapshots: snap_ends,
            records: RecordEnds {
                full: full_tx,
                empty: empty_rx,
                current: Vec::with_capacity(BLOCK),
            },
        },
        planner_ends,
        ConsumerEnds {
            full: full_rx,
            empty: empty_tx,
        },
    )
}

impl RecordEnds {
    /// Append a record; hand the block over when full. Returns how many
    /// records were lost: with `wait` false (paced clock), a full block is
    /// dropped if no empty one is available (the consumer is behind, and
    /// the loop must not wait); with `wait` true (free clock, where the loop
    /// has no deadline and runs must be reproducible), it waits for one.
    #[inline]
    pub fn push(&mut self, r: Record, wait: bool) -> u64 {
        self.current.push(r);
        if self.current.len() < BLOCK {
            return 0;
        }
        let fresh = if wait {
            super::await_item(&self.empty)
        } else {
            self.empty.try_recv().ok()
        };
        match fresh {
            Some(fresh) => {
                let full = std::mem::replace(&mut self.current, fresh);
                // Capacity = pool size: never full. A gone consumer only
                // happens at shutdown; the block is then dropped here.
                let _ = self.full.try_send(full);
                0
            }
            None => {
                let lost = self.current.len() as u64;
                self.current.clear();
                lost
            }
        }
    }

    /// Hand over what is left (at the end of a run; may block briefly).
    pub fn flush(&mut self) {
        if !self.current.is_empty() {
            let block = std::mem::take(&mut self.current);
            let _ = self.full.send(block);
        }
    }
}
