//! The operator's log: what changed in the loop, said from the service
//! thread (never the real-time one), rate-limited.
//!
//! The loop only publishes counters. Once a second this watcher compares
//! them with the previous second's and turns the differences into the few
//! lines an operator needs: the plant went away and came back (how often,
//! for how long), plans started and stopped missing their deadline, the
//! limiter intervened in bursts (by cause). Model swaps, rollbacks and
//! retraining decisions are logged where they are decided (the retraining
//! supervisor thread).

use crate::control::controls::LiveStatus;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often counters are compared.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Fewest misses in a window, and least fraction of the window's plans,
/// that count as missing.
const MISS_MIN: u64 = 5;
const MISS_FRACTION: f64 = 0.05;
/// Windows in a row with misses before "sustained" (and without, before
/// "stopped").
const SUSTAINED_WINDOWS: u32 = 2;
/// Interventions of one cause in a window that count as a burst.
const BURST_MIN: u64 = 100;
/// Least time between two lines about the same thing.
const REPEAT: Duration = Duration::from_secs(30);

/// What the watcher found in one window (also what the tests check).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    PlantInterrupted { interruptions: u64 },
    PlantBack { after: Duration, interruptions: u64 },
    PlanMissesStarted { missed: u64, plans: u64 },
    PlanMissesContinue { missed: u64, plans: u64 },
    PlanMissesStopped { lasted: Duration, missed: u64 },
    InterventionBurst { cause: &'static str, count: u64 },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::PlantInterrupted { interruptions } => write!(
                f,
                "plant interrupted (interruption {interruptions} of this run): stimulation is at zero, waiting for the plant"
            ),
            Change::PlantBack {
                after,
                interruptions,
            } => write!(
                f,
                "plant back after {:.1} s ({interruptions} interruption(s) so far)",
                after.as_secs_f64()
            ),
            Change::PlanMissesStarted { missed, plans } => write!(
                f,
                "plans are missing their deadline: {missed} of {plans} in the last second (the limiter zeroes each miss; see control.compute_delay and [control.mpc])"
            ),
            Change::PlanMissesContinue { missed, plans } => write!(
                f,
                "plans still missing their deadline: {missed} of {plans} in the last second"
            ),
            Change::PlanMissesStopped { lasted, missed } => write!(
                f,
                "plan misses stopped after {:.1} s ({missed} missed)",
                lasted.as_secs_f64()
            ),
            Change::InterventionBurst { cause, count } => write!(
                f,
                "safety limiter: {count} `{cause}` interventions in the last second"
            ),
        }
    }
}

/// The watcher's memory between windows.
#[derive(Default)]
pub struct Watch {
    prev: Option<LiveStatus>,
    /// When the plant was seen to stop delivering samples.
    interrupted_since: Option<Instant>,
    missing_windows: u32,
    quiet_windows: u32,
    misses_since: Option<(Instant, u64)>,
    last_miss_line: Option<Instant>,
    last_burst_line: BTreeMap<&'static str, Instant>,
}

impl Watch {
    /// Whether plan misses are sustained now (a metric).
    pub fn misses_sustained(&self) -> bool {
        self.misses_since.is_some()
    }

    /// Compare `now` with the previous window; the changes worth a line.
    pub fn step(&mut self, now: LiveStatus, at: Instant) -> Vec<Change> {
        let mut out = Vec::new();
        let Some(prev) = self.prev.replace(now.clone()) else {
            return out;
        };
        if !now.running || now.finished {
            return out;
        }
        // The plant: the loop beats while it waits, samples stand still.
        let stalled = now.samples == prev.samples && now.heartbeat != prev.heartbeat;
        let new_interruption = now.plant_interruptions > prev.plant_interruptions;
        match self.interrupted_since {
            None if stalled || new_interruption => {
                self.interrupted_since = Some(at);
                out.push(Change::PlantInterrupted {
                    interruptions: now.plant_interruptions.max(1),
                });
            }
            Some(t0) if !stalled && now.samples > prev.samples => {
                self.interrupted_since = None;
                out.push(Change::PlantBack {
                    after: at.saturating_duration_since(t0),
                    interruptions: now.plant_interruptions,
                });
            }
            _ => {}
        }
        // Plan misses.
        let missed = now.plan_misses.saturating_sub(prev.plan_misses);
        let plans = missed + now.plans_adopted.saturating_sub(prev.plans_adopted);
        let missing = missed >= MISS_MIN && missed as f64 >= MISS_FRACTION * plans as f64;
        if missing {
            self.missing_windows += 1;
            self.quiet_windows = 0;
        } else {
            self.quiet_windows += 1;
            self.missing_windows = 0;
        }
        match self.misses_since {
            None if self.missing_windows >= SUSTAINED_WINDOWS => {
                self.misses_since = Some((at, now.plan_misses));
                self.last_miss_line = Some(at);
                out.push(Change::PlanMissesStarted { missed, plans });
            }
            Some(_)
                if missing
                    && self
                        .last_miss_line
                        .is_none_or(|t| at.saturating_duration_since(t) >= REPEAT) =>
            {
                self.last_miss_line = Some(at);
                out.push(Change::PlanMissesContinue { missed, plans });
            }
            Some(_) if missing => {}
            Some((t0, at_start)) if self.quiet_windows >= SUSTAINED_WINDOWS => {
                self.misses_since = None;
                out.push(Change::PlanMissesStopped {
                    lasted: at.saturating_duration_since(t0),
                    missed: now.plan_misses.saturating_sub(at_start),
                });
            }
            _ => {}
        }
        // Intervention bursts, by cause (shutdown and plan misses have
        // their own lines).
        for (&cause, &n) in &now.interventions {
            if matches!(cause, "shutdown" | "plan_miss") {
                continue;
            }
            let count = n.saturating_sub(prev.interventions.get(cause).copied().unwrap_or(0));
            if count >= BURST_MIN
                && self
                    .last_burst_line
                    .get(cause)
                    .is_none_or(|t| at.saturating_duration_since(*t) >= REPEAT)
            {
                self.last_burst_line.insert(cause, at);
                out.push(Change::InterventionBurst { cause, count });
            }
        }
        out
    }
}

/// Log one change at its level.
pub fn log(c: &Change) {
    match c {
        Change::PlantInterrupted { .. }
        | Change::PlanMissesStarted { .. }
        | Change::PlanMissesContinue { .. }
        | Change::InterventionBurst { .. } => tracing::warn!("{c}"),
        Change::PlantBack { .. } | Change::PlanMissesStopped { .. } => tracing::info!("{c}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(samples: u64, heartbeat: u64) -> LiveStatus {
        LiveStatus {
            running: true,
            finished: false,
            heartbeat,
            armed: true,
            objective_seq: 0,
            samples,
            lost_samples: 0,
            plant_interruptions: 0,
            records_dropped: 0,
            spikes: 0,
            plans_adopted: 0,
            late_plans: 0,
            plan_misses: 0,
            plan_miss_samples: 0,
            guard_to_fallback: 0,
            guard_to_mpc: 0,
            guard_in_fallback: false,
            snapshots_skipped: 0,
            disarmed_samples: 0,
            interventions: BTreeMap::from([("amplitude", 0), ("shutdown", 0)]),
            charge_delivered_nc_cm2: 0.0,
            net_charge_nc_cm2: 0.0,
            last_command_ua_cm2: 0.0,
            plant_time_s: 0.0,
            forecast_error_mv: None,
        }
    }

    #[test]
    fn an_interruption_is_said_once_and_its_end_with_its_duration() {
        let mut w = Watch::default();
        let t0 = Instant::now();
        let s = |n, hb, intr| LiveStatus {
            plant_interruptions: intr,
            ..status(n, hb)
        };
        assert!(w.step(s(10_000, 10_000, 0), t0).is_empty());
        assert!(w.step(s(20_000, 20_000, 0), t0 + WINDOW).is_empty());
        let c = w.step(s(21_000, 30_000, 1), t0 + 2 * WINDOW);
        assert_eq!(c, vec![Change::PlantInterrupted { interruptions: 1 }]);
        assert!(w.step(s(21_000, 40_000, 1), t0 + 3 * WINDOW).is_empty());
        let c = w.step(s(25_000, 50_000, 1), t0 + 4 * WINDOW);
        assert_eq!(
            c,
            vec![Change::PlantBack {
                after: 2 * WINDOW,
                interruptions: 1
            }]
        );
    }

    #[test]
    fn sustained_plan_misses_start_repeat_rarely_and_stop() {
        let mut w = Watch::default();
        let t0 = Instant::now();
        let s = |k: u64, misses: u64, adopted: u64| LiveStatus {
            plan_misses: misses,
            plans_adopted: adopted,
            ..status(10_000 * k, 10_000 * k)
        };
        w.step(s(0, 0, 0), t0);
        // One bad window is not sustained.
        assert!(w.step(s(1, 100, 400), t0 + WINDOW).is_empty());
        let c = w.step(s(2, 200, 800), t0 + 2 * WINDOW);
        assert!(
            matches!(
                c[..],
                [Change::PlanMissesStarted {
                    missed: 100,
                    plans: 500
                }]
            ),
            "{c:?}"
        );
        assert!(w.misses_sustained());
        // Still missing: no new line within REPEAT.
        assert!(w.step(s(3, 300, 1200), t0 + 3 * WINDOW).is_empty());
        // Two quiet windows: stopped.
        assert!(w.step(s(4, 300, 1700), t0 + 4 * WINDOW).is_empty());
        let c = w.step(s(5, 300, 2200), t0 + 5 * WINDOW);
        assert!(
            matches!(c[..], [Change::PlanMissesStopped { missed: 100, .. }]),
            "{c:?}"
        );
        assert!(!w.misses_sustained());
    }

    #[test]
    fn intervention_bursts_are_said_by_cause_at_most_every_30_s() {
        let mut w = Watch::default();
        let t0 = Instant::now();
        let s = |k: u64, amp: u64| LiveStatus {
            interventions: BTreeMap::from([("amplitude", amp), ("shutdown", 0)]),
            ..status(10_000 * k, 10_000 * k)
        };
        w.step(s(0, 0), t0);
        let c = w.step(s(1, 5_000), t0 + WINDOW);
        assert_eq!(
            c,
            vec![Change::InterventionBurst {
                cause: "amplitude",
                count: 5_000
            }]
        );
        assert!(w.step(s(2, 10_000), t0 + 2 * WINDOW).is_empty());
        assert_eq!(w.step(s(32, 20_000), t0 + 32 * WINDOW).len(), 1);
        // A few interventions are no burst.
        assert!(w.step(s(33, 20_050), t0 + 63 * WINDOW).is_empty());
    }
}
