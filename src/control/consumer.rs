//! The record consumer and the forecast writer: the threads that take what
//! the loop and the planner hand off (records, notes, forecast rows) and
//! do the slow things with it (recording, the trace CSV, the drift monitor,
//! the quality meter). They may allocate, block and write files; the loop
//! never waits for them under real-time rules.

use super::controls;
use super::handoff::{ConsumerEnds, Note, Record};
use crate::policy::quality::{Quality, QualityMeter};
use crossbeam_channel::Receiver;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// What the consumer thread returns.
pub(crate) struct Consumed {
    pub(crate) quality: Quality,
    pub(crate) records: Option<Vec<Record>>,
    pub(crate) error: Option<String>,
    pub(crate) recorder: Option<crate::record::Recorder>,
    pub(crate) guard: Option<super::guard::GuardReport>,
}

/// The consumer's optional duties besides the quality meter and the trace.
pub(crate) struct ConsumerDuties {
    pub(crate) recorder: Option<crate::record::Recorder>,
    pub(crate) notes: Option<Receiver<Note>>,
    pub(crate) monitor: Option<crate::retrain::drift::DriftMonitor>,
    pub(crate) recent: Option<std::sync::Arc<crate::retrain::drift::RecentData>>,
    /// Each plan's bias-corrected forecast as rows `t_ms,dt_ms,v1,...`
    /// beside the trace (`--trace-out`, MPC).
    pub(crate) forecasts_csv: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
    /// Operator changes to record as events: (controls, last seen armed
    /// state and objective sequence).
    pub(crate) controls: Option<(std::sync::Arc<controls::LoopControls>, (bool, u64))>,
    /// The MPC guard (MPC with `control.guard.enabled`).
    pub(crate) guard: Option<GuardDuty>,
}

/// The MPC guard and what it acts through: the log, the retrainer (asked
/// for a new model at each hand-over to the fallback) and the calibration
/// hook.
pub(crate) struct GuardDuty {
    pub(crate) guard: super::guard::Guard,
    pub(crate) log: super::guard::RateLimitedLog,
    pub(crate) retrain: Option<std::sync::Arc<crate::retrain::Shared>>,
    pub(crate) hook: Option<super::guard::GuardHook>,
}

impl GuardDuty {
    /// The model the running one replaced, for the guard to go back to.
    pub(crate) fn with_revert(mut self, base: Option<String>) -> GuardDuty {
        self.guard = self.guard.with_revert(base);
        self
    }

    /// Judge a block; act on a hand-over (log, event, retraining, hook).
    fn block(&mut self, block: &[Record], recorder: Option<&mut crate::record::Recorder>) {
        let Some(h) = self.guard.block(block) else {
            return;
        };
        self.log.log(&h);
        let text = format!("guard {}: {}", h.direction.name(), h.reason);
        if let Some(r) = recorder {
            r.pulse(Some(h.index), crate::record::EventLine::PolicyChange, &text);
        }
        if h.direction == super::guard::Direction::ToFallback {
            if let Some(rt) = &self.retrain {
                rt.request();
            }
            if let Some(hook) = &self.hook {
                hook(&h.reason);
            }
        }
    }
}

impl ConsumerDuties {
    /// Take every note waiting: forecasts to the recorder and the monitor,
    /// swaps and events to the recording.
    fn drain_notes(&mut self, error: &mut Option<String>) {
        let Some(rx) = &self.notes else { return };
        while let Ok(note) = rx.try_recv() {
            match note {
                Note::Forecast {
                    base_index,
                    t_ms,
                    dt_ms,
                    model,
                    corrected,
                } => {
                    if let (Some((p, w)), None) = (&mut self.forecasts_csv, &*error) {
                        if let Err(e) = write_forecast_row(w, t_ms, dt_ms, &corrected) {
                            *error = Some(format!("{}: {e}", p.display()));
                        }
                    }
                    if let Some(r) = &mut self.recorder {
                        r.forecast(base_index, &model);
                    }
                    if let Some(g) = self.guard.as_mut().filter(|g| !g.guard.judges_applied()) {
                        g.guard.forecast(base_index, &corrected);
                    }
                    if let Some(m) = &mut self.monitor {
                        m.forecast(base_index, model);
                    }
                }
                Note::Hindcast {
                    base_index,
                    corrected,
                } => {
                    if let Some(g) = self.guard.as_mut().filter(|g| g.guard.judges_applied()) {
                        g.guard.forecast(base_index, &corrected);
                    }
                }
                Note::ModelSwapped { base_index, label } => {
                    if let Some(r) = &mut self.recorder {
                        r.pulse(
                            Some(base_index),
                            crate::record::EventLine::ModelSwap,
                            &label,
                        );
                    }
                    if let Some(m) = &mut self.monitor {
                        m.model_swapped(base_index, 0.0);
                    }
                    if let Some(g) = &mut self.guard {
                        g.guard.model_swapped(base_index, &label);
                    }
                }
                Note::Event { line, text } => {
                    if let Some(r) = &mut self.recorder {
                        r.pulse(None, line, &text);
                    }
                }
            }
        }
        if let (Some((c, seen)), Some(r)) = (&mut self.controls, &mut self.recorder) {
            let now = c.applied_state();
            if now.0 != seen.0 {
                let text = if now.0 { "armed" } else { "disarmed" };
                r.pulse(None, crate::record::EventLine::PolicyChange, text);
            }
            if now.1 != seen.1 {
                let text = format!("objective change #{} applied", now.1);
                r.pulse(None, crate::record::EventLine::PolicyChange, &text);
            }
            *seen = now;
        }
        if let Some(r) = &mut self.recorder {
            if let Err(e) = r.maybe_flush() {
                error.get_or_insert(format!("recording stopped: {e}"));
                self.recorder = None;
            }
        }
    }

    fn block(&mut self, block: &[Record]) {
        if let Some(r) = &mut self.recorder {
            for rec in block {
                r.push(rec);
            }
        }
        if let Some(recent) = &self.recent {
            recent.push_block(block);
        }
        if let Some(m) = &mut self.monitor {
            m.records(block);
        }
        if let Some(g) = &mut self.guard {
            g.block(block, self.recorder.as_mut());
        }
    }
}

pub(crate) fn spawn_consumer(
    ends: ConsumerEnds,
    mut meter: QualityMeter,
    keep: bool,
    trace: Option<(PathBuf, std::fs::File)>,
    mut duties: ConsumerDuties,
) -> std::thread::JoinHandle<Consumed> {
    std::thread::Builder::new()
        .name("records".into())
        .spawn(move || {
            let mut kept = keep.then(Vec::new);
            let mut error = None;
            let mut out = trace.map(|(p, f)| (p, std::io::BufWriter::new(f)));
            if let Some((p, w)) = &mut out {
                if let Err(e) = writeln!(
                    w,
                    "t_ms,V_mV,I_stim_uA_cm2,I_requested_uA_cm2,I_command_uA_cm2,safety"
                ) {
                    error = Some(format!("{}: {e}", p.display()));
                }
            }
            loop {
                // A bounded wait, so notes are taken and the recording is
                // flushed even while no samples come (a stalled rig).
                // Polled, never parked: the loop's `try_send` must not have
                // to wake this thread (see `crate::poll`).
                let mut block = match crate::poll::recv_timeout(
                    &ends.full,
                    Duration::from_millis(1),
                    Duration::from_millis(100),
                ) {
                    Ok(b) => b,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        duties.drain_notes(&mut error);
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                };
                duties.drain_notes(&mut error);
                duties.block(&block);
                for r in &block {
                    meter.push(r.t_ms, r.v_mv, r.command);
                    if let (Some((p, w)), None) = (&mut out, &error) {
                        if let Err(e) = writeln!(
                            w,
                            "{:.4},{:.6},{:.6},{:.6},{:.6},{}",
                            r.t_ms,
                            r.v_mv,
                            r.applied,
                            r.requested,
                            r.command,
                            r.cause.map_or("", |c| c.name())
                        ) {
                            error = Some(format!("{}: {e}", p.display()));
                        }
                    }
                }
                if let Some(k) = &mut kept {
                    k.extend_from_slice(&block);
                }
                block.clear();
                let _ = ends.empty.try_send(block);
            }
            if let Some((p, w)) = &mut out {
                if let Err(e) = w.flush() {
                    error.get_or_insert(format!("{}: {e}", p.display()));
                }
            }
            // The planner has stopped: take its last notes.
            duties.drain_notes(&mut error);
            if let Some((p, w)) = &mut duties.forecasts_csv {
                if let Err(e) = w.flush() {
                    error.get_or_insert(format!("{}: {e}", p.display()));
                }
            }
            Consumed {
                quality: meter.finish(),
                records: kept,
                error,
                recorder: duties.recorder,
                guard: duties.guard.as_ref().map(|g| g.guard.report()),
            }
        })
        .expect("spawning the record consumer")
}

/// Where the plans' forecasts go beside a trace: `trace.csv` →
/// `trace.forecasts.csv`.
pub fn forecasts_path(trace: &std::path::Path) -> PathBuf {
    trace.with_extension("forecasts.csv")
}

/// One forecast row: `t_ms,dt_ms,v1,...` (what `neurostimd plot` reads).
fn write_forecast_row(w: &mut impl Write, t_ms: f64, dt_ms: f64, v: &[f32]) -> std::io::Result<()> {
    write!(w, "{t_ms:.4},{dt_ms}")?;
    for x in v {
        write!(w, ",{x:.3}")?;
    }
    writeln!(w)
}
