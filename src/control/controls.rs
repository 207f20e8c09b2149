//! Operator controls and live status of a running loop: what crosses
//! between the service (control API, metrics, systemd watchdog) and the
//! real-time thread while the loop runs.
//!
//! Everything here is lock-free and allocation-free on the loop's side, so
//! the rules of the control thread (no allocation, no lock, no I/O; see
//! tests/no_alloc.rs) still hold with a service attached:
//!
//! - **Arm/disarm** is one atomic flag. Disarming takes effect on the next
//!   sample (stopping is always safe, so it does not wait for a period
//!   boundary); arming takes effect at the next control-period boundary.
//!   While disarmed the loop's request is zero and still passes the safety
//!   limiter, which lets it through at once (moving toward zero is never
//!   limited). Disarmed is an operator *state*, not a safety intervention:
//!   it is counted as `disarmed_samples`, so the intervention counts keep
//!   meaning "the limiter overrode the policy".
//! - **Objective changes** go through a single-slot mailbox built from two
//!   preallocated boxes circulating in bounded channels: the service fills a
//!   spare box and posts it (a newer change replaces one not yet taken); the
//!   loop takes it with `try_recv` at a control-period boundary, copies the
//!   objective and returns the box. No allocation on either side after
//!   construction, no blocking.
//! - **Status** flows back as relaxed atomics the loop stores once per
//!   control period (and once at the end): counters, charge, the applied
//!   objective's sequence number, and a heartbeat the service compares over
//!   time to decide whether to feed the systemd watchdog.

use crate::policy::Objective;
use crate::safety::{Cause, SafetyLimiter};
use crossbeam_channel::{bounded, Receiver, Sender};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

/// An objective change, tagged with its sequence number.
type Change = Box<(u64, Objective)>;

/// Controls and status shared by the loop and the service (behind an
/// `Arc`).
pub struct LoopControls {
    armed: AtomicBool,
    post_tx: Sender<Change>,
    post_rx: Receiver<Change>,
    spare_tx: Sender<Change>,
    spare_rx: Receiver<Change>,
    next_seq: AtomicU64,
    /// Loop → service.
    started: AtomicBool,
    finished: AtomicU8,
    heartbeat: AtomicU64,
    applied_seq: AtomicU64,
    armed_now: AtomicBool,
    counters: [AtomicU64; COUNTERS],
    interventions: [AtomicU64; Cause::ALL.len()],
    charge_delivered: AtomicU64,
    net_charge: AtomicU64,
    last_command: AtomicU64,
    plant_time_ms: AtomicU64,
    forecast_error_mv: AtomicU64,
}

const COUNTERS: usize = 14;

/// What the loop counts (published to the service, and in `summary.json`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub samples: u64,
    pub lost_samples: u64,
    pub plant_interruptions: u64,
    pub records_dropped: u64,
    pub spikes: u64,
    pub plans_adopted: u64,
    pub late_plans: u64,
    pub plan_misses: u64,
    pub plan_miss_samples: u64,
    pub snapshots_skipped: u64,
    pub disarmed_samples: u64,
    pub objective_changes: u64,
    /// Paced clock: wake-ups more than one sample period late.
    pub overruns: u64,
    /// The MPC guard's hand-overs as the loop applied them: to the
    /// fallback, and back to MPC; samples the fallback drove.
    pub guard_to_fallback: u64,
    pub guard_to_mpc: u64,
    pub guard_fallback_samples: u64,
    /// Samples on which the feedback between plans corrected the plan.
    pub feedback_samples: u64,
}

/// The loop's counters as it publishes them (one control period's state).
#[derive(Clone, Copy, Debug, Default)]
pub struct Published {
    pub counters: Counters,
    pub plant_time_ms: f64,
    /// RMS forecast error of the newest plan's planner, mV (NaN: none yet).
    pub forecast_error_mv: f64,
    /// The guard's fallback drives now.
    pub in_fallback: bool,
}

/// What the service reads: a consistent-enough copy of the live status
/// (each field is read atomically; fields may be one period apart).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LiveStatus {
    /// The loop has started its first sample.
    pub running: bool,
    /// The loop has ended (stimulation already at zero).
    pub finished: bool,
    /// Loop iterations so far (advances while the loop runs, also while the
    /// plant is interrupted).
    pub heartbeat: u64,
    /// Stimulation is armed (as the loop applies it).
    pub armed: bool,
    /// Sequence number of the newest objective change the loop applied
    /// (0: the configured one).
    pub objective_seq: u64,
    pub samples: u64,
    pub lost_samples: u64,
    pub plant_interruptions: u64,
    pub records_dropped: u64,
    pub spikes: u64,
    pub plans_adopted: u64,
    pub late_plans: u64,
    pub plan_misses: u64,
    pub plan_miss_samples: u64,
    pub snapshots_skipped: u64,
    pub disarmed_samples: u64,
    /// MPC guard hand-overs to the fallback and back to MPC, and whether
    /// the fallback drives now.
    pub guard_to_fallback: u64,
    pub guard_to_mpc: u64,
    pub guard_in_fallback: bool,
    /// Safety interventions by cause ([`Cause::name`]), every cause listed.
    pub interventions: std::collections::BTreeMap<&'static str, u64>,
    pub charge_delivered_nc_cm2: f64,
    pub net_charge_nc_cm2: f64,
    pub last_command_ua_cm2: f64,
    pub plant_time_s: f64,
    /// `None` until the planner has measured one.
    pub forecast_error_mv: Option<f64>,
}

fn load_f64(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Ordering::Relaxed))
}

fn store_f64(a: &AtomicU64, v: f64) {
    a.store(v.to_bits(), Ordering::Relaxed);
}

impl LoopControls {
    /// Controls for a loop that starts armed or not, pursuing `objective`
    /// (which also fills the mailbox's boxes).
    pub fn new(armed: bool, objective: Objective) -> LoopControls {
        let (post_tx, post_rx) = bounded(1);
        let (spare_tx, spare_rx) = bounded(2);
        for _ in 0..2 {
            spare_tx
                .try_send(Box::new((0, objective)))
                .expect("the pool fits its channel");
        }
        LoopControls {
            armed: AtomicBool::new(armed),
            post_tx,
            post_rx,
            spare_tx,
            spare_rx,
            next_seq: AtomicU64::new(1),
            started: AtomicBool::new(false),
            finished: AtomicU8::new(0),
            heartbeat: AtomicU64::new(0),
            applied_seq: AtomicU64::new(0),
            armed_now: AtomicBool::new(armed),
            counters: Default::default(),
            interventions: Default::default(),
            charge_delivered: AtomicU64::new(0f64.to_bits()),
            net_charge: AtomicU64::new(0f64.to_bits()),
            last_command: AtomicU64::new(0f64.to_bits()),
            plant_time_ms: AtomicU64::new(0f64.to_bits()),
            forecast_error_mv: AtomicU64::new(f64::NAN.to_bits()),
        }
    }

    // ---------------------------------------------------------- service side

    /// Arm (`true`) or disarm stimulation.
    pub fn set_armed(&self, armed: bool) {
        self.armed.store(armed, Ordering::Relaxed);
    }

    /// What the operator asked for last (the loop may not have applied it
    /// yet; see [`LiveStatus::armed`]).
    pub fn armed_requested(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }

    /// Post an objective; it replaces any change the loop has not taken
    /// yet. Returns the change's sequence number, which
    /// [`LiveStatus::objective_seq`] reaches once the loop applied it.
    /// Runs off the real-time thread (may spin briefly if it races the loop
    /// for the single slot).
    pub fn post_objective(&self, objective: Objective) -> u64 {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        // A box: a spare one, or the pending change this one supersedes.
        let mut slot = loop {
            if let Ok(b) = self.spare_rx.try_recv() {
                break b;
            }
            if let Ok(b) = self.post_rx.try_recv() {
                break b;
            }
            // The loop holds a box for the moment of a copy.
            std::thread::yield_now();
        };
        *slot = (seq, objective);
        let mut item = slot;
        loop {
            match self.post_tx.try_send(item) {
                Ok(()) => return seq,
                Err(e) => {
                    // Another poster filled the slot: take its box back to
                    // the pool and post ours (newest wins).
                    item = e.into_inner();
                    if let Ok(old) = self.post_rx.try_recv() {
                        let _ = self.spare_tx.try_send(old);
                    }
                }
            }
        }
    }

    /// The live status.
    pub fn status(&self) -> LiveStatus {
        let c = |i: usize| self.counters[i].load(Ordering::Relaxed);
        let fe = load_f64(&self.forecast_error_mv);
        LiveStatus {
            running: self.started.load(Ordering::Acquire) && !self.is_finished(),
            finished: self.is_finished(),
            heartbeat: self.heartbeat(),
            armed: self.armed_now.load(Ordering::Relaxed),
            objective_seq: self.applied_seq.load(Ordering::Acquire),
            samples: c(0),
            lost_samples: c(1),
            plant_interruptions: c(2),
            records_dropped: c(3),
            spikes: c(4),
            plans_adopted: c(5),
            late_plans: c(6),
            plan_misses: c(7),
            plan_miss_samples: c(8),
            snapshots_skipped: c(9),
            disarmed_samples: c(10),
            guard_to_fallback: c(11),
            guard_to_mpc: c(12),
            guard_in_fallback: c(13) != 0,
            interventions: Cause::ALL
                .iter()
                .enumerate()
                .map(|(i, cause)| (cause.name(), self.interventions[i].load(Ordering::Relaxed)))
                .collect(),
            charge_delivered_nc_cm2: load_f64(&self.charge_delivered),
            net_charge_nc_cm2: load_f64(&self.net_charge),
            last_command_ua_cm2: load_f64(&self.last_command),
            plant_time_s: load_f64(&self.plant_time_ms) / 1000.0,
            forecast_error_mv: fe.is_finite().then_some(fe),
        }
    }

    /// Loop iterations so far: the watchdog is fed only while this advances.
    pub fn heartbeat(&self) -> u64 {
        self.heartbeat.load(Ordering::Relaxed)
    }

    /// Whether stimulation is armed as the loop applies it, and the newest
    /// objective change it applied (for the recording's events; cheaper
    /// than [`LoopControls::status`]).
    pub fn applied_state(&self) -> (bool, u64) {
        (
            self.armed_now.load(Ordering::Relaxed),
            self.applied_seq.load(Ordering::Acquire),
        )
    }

    /// The loop has started (READY for systemd).
    pub fn is_running(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// The loop has ended and stimulation is at zero.
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire) != 0
    }

    // ------------------------------------------------------------- loop side

    /// The loop is about to take its first sample.
    #[inline]
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// The loop has ended; its last command (zero) is written.
    #[inline]
    pub fn mark_finished(&self) {
        self.finished.store(1, Ordering::Release);
    }

    /// One loop iteration.
    #[inline]
    pub fn beat(&self) {
        self.heartbeat.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the loop should stimulate now, given whether it did on the
    /// previous sample and whether this sample is a control-period
    /// boundary: disarming applies at once, arming at a boundary.
    #[inline]
    pub fn armed_for(&self, was_armed: bool, boundary: bool) -> bool {
        let want = self.armed.load(Ordering::Relaxed);
        let now = if want { was_armed || boundary } else { false };
        self.armed_now.store(now, Ordering::Relaxed);
        now
    }

    /// A posted objective change, if any (call at a control-period
    /// boundary). Never allocates or blocks.
    #[inline]
    pub fn take_objective(&self) -> Option<(u64, Objective)> {
        let b = self.post_rx.try_recv().ok()?;
        let change = *b;
        // The pool's capacity equals its size: never full.
        let _ = self.spare_tx.try_send(b);
        Some(change)
    }

    /// The loop has applied the change `seq`.
    #[inline]
    pub fn applied(&self, seq: u64) {
        self.applied_seq.store(seq, Ordering::Release);
    }

    /// Store the loop's counters (once per control period).
    #[inline]
    pub fn publish(&self, p: &Published, limiter: &SafetyLimiter) {
        let set = |i: usize, v: u64| self.counters[i].store(v, Ordering::Relaxed);
        set(0, p.counters.samples);
        set(1, p.counters.lost_samples);
        set(2, p.counters.plant_interruptions);
        set(3, p.counters.records_dropped);
        set(4, p.counters.spikes);
        set(5, p.counters.plans_adopted);
        set(6, p.counters.late_plans);
        set(7, p.counters.plan_misses);
        set(8, p.counters.plan_miss_samples);
        set(9, p.counters.snapshots_skipped);
        set(10, p.counters.disarmed_samples);
        set(11, p.counters.guard_to_fallback);
        set(12, p.counters.guard_to_mpc);
        set(13, u64::from(p.in_fallback));
        for (i, cause) in Cause::ALL.iter().enumerate() {
            self.interventions[i].store(limiter.count(*cause), Ordering::Relaxed);
        }
        store_f64(&self.charge_delivered, limiter.charge_delivered());
        store_f64(&self.net_charge, limiter.net_charge());
        store_f64(&self.last_command, limiter.last_command());
        store_f64(&self.plant_time_ms, p.plant_time_ms);
        if p.forecast_error_mv.is_finite() {
            store_f64(&self.forecast_error_mv, p.forecast_error_mv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::objective;
    use crate::policy::ObjectiveKind;

    #[test]
    fn newest_objective_wins_and_boxes_circulate() {
        let c = LoopControls::new(true, objective(ObjectiveKind::Rate));
        assert!(c.take_objective().is_none());
        let a = c.post_objective(objective(ObjectiveKind::Voltage));
        let b = c.post_objective(objective(ObjectiveKind::Silence));
        assert!(b > a);
        let (seq, o) = c.take_objective().unwrap();
        assert_eq!((seq, o.kind), (b, ObjectiveKind::Silence));
        assert!(c.take_objective().is_none());
        // Many more posts never run out of boxes or block.
        for k in 0..100 {
            let s = c.post_objective(objective(ObjectiveKind::Rate));
            if k % 3 == 0 {
                assert_eq!(c.take_objective().unwrap().0, s);
            }
        }
    }

    #[test]
    fn disarm_is_immediate_and_arm_waits_for_a_boundary() {
        let c = LoopControls::new(true, objective(ObjectiveKind::Rate));
        assert!(c.armed_for(true, false));
        c.set_armed(false);
        assert!(!c.armed_for(true, false));
        assert!(!c.status().armed);
        c.set_armed(true);
        assert!(!c.armed_for(false, false));
        assert!(c.armed_for(false, true));
        assert!(c.status().armed);
    }

    #[test]
    fn status_reflects_what_was_published() {
        let c = LoopControls::new(false, objective(ObjectiveKind::Rate));
        let s = c.status();
        assert!(!s.running && !s.finished && s.forecast_error_mv.is_none());
        let limiter = SafetyLimiter::new(crate::config::Config::defaults().safety, 0.1).unwrap();
        c.mark_started();
        c.beat();
        c.publish(
            &Published {
                counters: Counters {
                    samples: 7,
                    plan_misses: 2,
                    ..Default::default()
                },
                forecast_error_mv: 1.5,
                plant_time_ms: 2500.0,
                in_fallback: false,
            },
            &limiter,
        );
        let s = c.status();
        assert!(s.running);
        assert_eq!((s.samples, s.plan_misses, s.heartbeat), (7, 2, 1));
        assert_eq!(s.forecast_error_mv, Some(1.5));
        assert_eq!(s.plant_time_s, 2.5);
        assert_eq!(s.interventions.len(), 12);
        c.mark_finished();
        assert!(c.status().finished && !c.status().running);
    }
}
