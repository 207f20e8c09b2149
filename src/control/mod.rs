//! The control loop: one real-time thread per run (DESIGN §1).
//!
//! Per sample it reads the plant, feeds the window ring, takes the request
//! of the active policy (the current step of the newest MPC plan, or a
//! per-sample baseline), passes it through the safety limiter, writes the
//! command, records timing into preallocated HDR histograms and hands the
//! sample record to the consumer thread. Forecasting and planning happen on
//! the planner thread ([`planner`]), fed with window snapshots each control
//! period. All hand-offs are bounded, preallocated and non-blocking
//! ([`handoff`]); the loop never allocates, locks, logs or touches a file
//! between its first and last sample (tests/no_alloc.rs measures it).
//!
//! Clocks: `paced` sleeps to absolute deadlines one sample period apart and
//! measures wake-up jitter as cyclictest does; `free` runs as fast as
//! possible in lockstep with the planner (each snapshot's plan is awaited
//! and applied `compute_delay` later), so a run is a deterministic function
//! of its configuration and seeds. A plant with its own clock (a serial rig)
//! paces the loop by its samples: no sleeping, and the real-time rules of
//! the paced clock (never wait for the planner or the consumer).

pub mod controls;
pub mod handoff;
pub mod planner;
pub mod rt;

use crate::config::{Clock, ControlConfig};
use crate::forecast::{Forecaster, WindowRing};
use crate::neuron::spikes::{SpikeDetector, DEFAULT_THRESHOLD_MV};
use crate::plant::{Plant, PlantError};
use crate::policy::mpc::Mpc;
use crate::policy::pid::Baseline;
use crate::policy::quality::{Quality, QualityMeter};
use crate::policy::PolicyKind;
use crate::report::{new_histogram, IntervalHandoff};
use crate::safety::{Fault, Limits, SafetyLimiter};
use crossbeam_channel::{Receiver, Sender};
use handoff::{ConsumerEnds, Note, Plan, PlanStatus, Record};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Percentiles of one latency distribution, µs.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    /// From a histogram recorded in nanoseconds.
    pub fn from_ns(h: &Histogram<u64>) -> Percentiles {
        let us = |v: u64| v as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// Linux lets a thread's timers fire up to its "timer slack" late (50 µs by
/// default) so wake-ups can be batched; a 10 kHz loop cannot afford that.
fn reduce_timer_slack() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only the
    // calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// CLOCK_MONOTONIC now, ns (the clock `Instant` uses on Linux).
fn monotonic_ns() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid out-pointer to a timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// Sleep until an absolute CLOCK_MONOTONIC time (cyclictest's method: no
/// drift from computing relative sleeps); `deadline` is the same moment as
/// an `Instant`, for other platforms.
fn sleep_until(mono_ns: u64, deadline: Instant) {
    #[cfg(target_os = "linux")]
    {
        let _ = deadline;
        let ts = libc::timespec {
            tv_sec: (mono_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (mono_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: valid timespec; a null remainder is allowed with
        // TIMER_ABSTIME. EINTR just ends the sleep early (measured as
        // negative lateness, recorded as 1 ns).
        unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = mono_ns;
        let now = Instant::now();
        if deadline > now {
            std::thread::sleep(deadline - now);
        }
    }
}

/// Why the loop ended.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    DurationReached,
    Signal,
    PlantEnded,
    PlantFault,
}

/// Tags of the loop's latency histograms, in [`LoopHistograms`] order (and
/// in the interval log).
pub const LATENCY_TAGS: &[&str] = &[
    "wakeup_jitter",
    "sample_to_command",
    "plan_latency",
    "decision_age",
    "forecast_time",
];

/// Whole-run latency histograms (ns), for `.hgrm` reports.
pub struct LoopHistograms {
    /// Actual − intended wake-up (paced clock only).
    pub wakeup_jitter: Histogram<u64>,
    /// From the sample's arrival (read returned) to the command written.
    pub sample_to_command: Histogram<u64>,
    /// Snapshot's sample arrival → plan published.
    pub plan_latency: Histogram<u64>,
    /// Snapshot's sample arrival → the plan's first use by the loop.
    pub decision_age: Histogram<u64>,
    /// Forecaster time per plan (all its batches).
    pub forecast_time: Histogram<u64>,
}

impl LoopHistograms {
    fn new() -> LoopHistograms {
        LoopHistograms {
            wakeup_jitter: new_histogram(),
            sample_to_command: new_histogram(),
            plan_latency: new_histogram(),
            decision_age: new_histogram(),
            forecast_time: new_histogram(),
        }
    }

    /// In [`LATENCY_TAGS`] order.
    pub fn all(&self) -> [(&'static str, &Histogram<u64>); 5] {
        [
            (LATENCY_TAGS[0], &self.wakeup_jitter),
            (LATENCY_TAGS[1], &self.sample_to_command),
            (LATENCY_TAGS[2], &self.plan_latency),
            (LATENCY_TAGS[3], &self.decision_age),
            (LATENCY_TAGS[4], &self.forecast_time),
        ]
    }
}

/// Latency percentiles of a run; `None` where nothing was measured.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Latencies {
    pub wakeup_jitter: Option<Percentiles>,
    pub sample_to_command: Option<Percentiles>,
    pub plan_latency: Option<Percentiles>,
    pub decision_age: Option<Percentiles>,
    pub forecast_time: Option<Percentiles>,
    /// With retraining: sample→command while a candidate model was being
    /// trained, and while none was.
    pub sample_to_command_training: Option<Percentiles>,
    pub sample_to_command_not_training: Option<Percentiles>,
}

/// What a run did: `summary.json`.
#[derive(Clone, Debug, Serialize)]
pub struct LoopSummary {
    pub plant: &'static str,
    pub policy: &'static str,
    pub objective: &'static str,
    pub clock: &'static str,
    pub model: Option<String>,
    pub samples: u64,
    /// Samples the plant skipped (gaps in its sample index).
    pub lost_samples: u64,
    /// Interruptions the plant reported: a stalled or disconnected plant
    /// reports one per timeout period until it recovers (stimulation held
    /// at zero meanwhile).
    pub plant_interruptions: u64,
    /// The plant's own figures (a rig's link statistics and round trips).
    pub plant_report: Option<serde_json::Value>,
    /// Records the consumer could not take in time (dropped, counted).
    pub records_dropped: u64,
    pub plant_time_s: f64,
    pub wall_time_s: f64,
    pub spikes: u64,
    /// Plans the loop started using.
    pub plans_adopted: u64,
    /// Paced clock: plans that arrived after the planning delay had passed
    /// (applied on arrival; their first samples were already gone).
    pub late_plans: u64,
    /// Times a plan ran out with no fresher one (stimulation → 0).
    pub plan_misses: u64,
    /// Samples spent in a plan miss.
    pub plan_miss_samples: u64,
    /// Snapshots not sent because the planner held every buffer.
    pub snapshots_skipped: u64,
    /// Snapshots the planner skipped for a newer one.
    pub snapshots_superseded: u64,
    pub model_errors: u64,
    pub model_error: Option<String>,
    /// Safety interventions by cause (every cause listed).
    pub interventions: BTreeMap<&'static str, u64>,
    pub interventions_total: u64,
    /// Total |charge| the limiter let through, nC/cm².
    pub charge_delivered_nc_cm2: f64,
    /// The leaky net-charge integral at the end, nC/cm².
    pub net_charge_end_nc_cm2: f64,
    /// Objective error and firing statistics.
    pub quality: Quality,
    pub latency: Latencies,
    /// Paced clock: wake-ups more than one sample period late.
    pub overruns: u64,
    /// Samples the operator held stimulation disarmed (control API).
    pub disarmed_samples: u64,
    /// Objective changes applied (control API). With any, `quality` mixes
    /// objectives: it is scored against the configured one.
    pub objective_changes: u64,
    pub realtime: rt::RtReport,
    pub stop: StopReason,
    /// The plant fault that ended the run, if any.
    pub fault: Option<String>,
    /// The recording, if the run recorded: where and what it holds.
    pub recording: Option<serde_json::Value>,
    /// Models the planner swapped in during the run.
    pub models_swapped: u64,
    /// Forecast rows and events the planner could not hand to the recorder.
    pub notes_dropped: u64,
    /// Onboard retraining (filled in by the session).
    pub retraining: Option<serde_json::Value>,
}

/// Everything a run needs besides the plant.
pub struct RunSetup {
    pub clock: Clock,
    /// Plant time to run, s; `None` runs until `stop` is set.
    pub duration_s: Option<f64>,
    pub control: ControlConfig,
    pub safety: Limits,
    /// Required for the `mpc` policy.
    pub forecaster: Option<Forecaster>,
    /// Keep every record in memory (tests, determinism checks).
    pub keep_records: bool,
    /// Write every record to this CSV file (consumer thread).
    pub trace_out: Option<PathBuf>,
    /// Record the run (on the consumer thread).
    pub recorder: Option<crate::record::Recorder>,
    /// Forecasts and events for the recorder and the drift monitor: the
    /// planner's and the retraining thread's sender, the consumer's
    /// receiver. Made here if only recording needs it.
    pub notes: Option<(Sender<Note>, Receiver<Note>)>,
    /// New models for the planner (retraining, rollback).
    pub swaps: Option<Receiver<planner::ModelSwap>>,
    /// Retraining's shared state: the consumer feeds its recent data and
    /// drift monitor; the loop splits its latency on `training`.
    pub retrain: Option<std::sync::Arc<crate::retrain::Shared>>,
    /// Operator controls and live status (the service); `None`: the loop
    /// runs armed with its configured objective and publishes nothing.
    pub controls: Option<std::sync::Arc<controls::LoopControls>>,
}

impl RunSetup {
    /// A run of `config`'s loop for `duration_s` of plant time (`None`:
    /// until stopped), with no records kept and none of the optional
    /// connections (recorder, retraining, operator controls): set those
    /// with struct-update syntax.
    pub fn new(
        config: &crate::config::Config,
        duration_s: Option<f64>,
        forecaster: Option<Forecaster>,
    ) -> RunSetup {
        RunSetup {
            clock: config.run.clock,
            duration_s,
            control: config.control.clone(),
            safety: config.safety,
            forecaster,
            keep_records: false,
            trace_out: None,
            recorder: None,
            notes: None,
            swaps: None,
            retrain: None,
            controls: None,
        }
    }
}

/// A run's results.
pub struct RunOutcome {
    pub summary: LoopSummary,
    pub histograms: LoopHistograms,
    pub records: Option<Vec<Record>>,
}

/// A run that could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Setup(String),
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
}

/// What the consumer thread returns.
struct Consumed {
    quality: Quality,
    records: Option<Vec<Record>>,
    error: Option<String>,
    recorder: Option<crate::record::Recorder>,
}

/// The consumer's optional duties besides the quality meter and the trace.
struct ConsumerDuties {
    recorder: Option<crate::record::Recorder>,
    notes: Option<Receiver<Note>>,
    monitor: Option<crate::retrain::drift::DriftMonitor>,
    recent: Option<std::sync::Arc<crate::retrain::drift::RecentData>>,
    /// Operator changes to record as events: (controls, last seen armed
    /// state and objective sequence).
    controls: Option<(std::sync::Arc<controls::LoopControls>, (bool, u64))>,
}

impl ConsumerDuties {
    /// Take every note waiting: forecasts to the recorder and the monitor,
    /// swaps and events to the recording.
    fn drain_notes(&mut self, error: &mut Option<String>) {
        let Some(rx) = &self.notes else { return };
        while let Ok(note) = rx.try_recv() {
            match note {
                Note::Forecast { base_index, values } => {
                    if let Some(r) = &mut self.recorder {
                        r.forecast(base_index, &values);
                    }
                    if let Some(m) = &mut self.monitor {
                        m.forecast(base_index, values);
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
    }
}

fn spawn_consumer(
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
                let mut block = match ends.full.recv_timeout(Duration::from_millis(100)) {
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
            Consumed {
                quality: meter.finish(),
                records: kept,
                error,
                recorder: duties.recorder,
            }
        })
        .expect("spawning the record consumer")
}

/// Where the plans' forecasts go beside a trace: `trace.csv` →
/// `trace.forecasts.csv`.
pub fn forecasts_path(trace: &std::path::Path) -> PathBuf {
    trace.with_extension("forecasts.csv")
}

/// Write forecast rows (`t_ms,dt_ms,v1,...`) until the planner hangs up;
/// the first error, if any.
fn spawn_forecast_writer(
    path: PathBuf,
    file: std::fs::File,
    rx: crossbeam_channel::Receiver<handoff::ForecastRow>,
) -> std::thread::JoinHandle<Option<String>> {
    std::thread::Builder::new()
        .name("forecasts".into())
        .spawn(move || {
            let mut w = std::io::BufWriter::new(file);
            let fail = |e: std::io::Error| Some(format!("{}: {e}", path.display()));
            for row in rx {
                let mut line = format!("{:.4},{}", row.t_ms, row.dt_ms);
                for v in &row.v {
                    line.push_str(&format!(",{v:.3}"));
                }
                if let Err(e) = writeln!(w, "{line}") {
                    return fail(e);
                }
            }
            w.flush().err().and_then(fail)
        })
        .expect("spawning the forecast writer")
}

/// Free clock: wait for the next item (a plan, an empty record block)
/// without the channel's blocking machinery (which parks the thread and may
/// allocate its wait context lazily): spin briefly, then yield, then nap.
/// `None` if the other side is gone.
pub(crate) fn await_item<T>(rx: &crossbeam_channel::Receiver<T>) -> Option<T> {
    let mut tries = 0u32;
    loop {
        match rx.try_recv() {
            Ok(p) => return Some(p),
            Err(crossbeam_channel::TryRecvError::Disconnected) => return None,
            Err(crossbeam_channel::TryRecvError::Empty) => {}
        }
        tries += 1;
        if tries < 64 {
            std::hint::spin_loop();
        } else if tries < 1024 {
            std::thread::yield_now();
        } else {
            // A SCHED_FIFO loop sharing a CPU with the other thread must
            // let it run: yielding only yields to equal priority.
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}

/// Run the closed loop on the calling thread (which should be a thread of
/// its own: it is the one promoted to real time) until the duration is
/// reached, `stop` is set, the plant ends or faults. Stimulation is driven
/// to zero through the limiter at the end in every case. With `intervals`,
/// per-second histograms go to the interval-log writer.
pub fn run(
    plant: &mut dyn Plant,
    mut setup: RunSetup,
    stop: &AtomicBool,
    mut intervals: Option<&mut IntervalHandoff>,
) -> Result<RunOutcome, ControlError> {
    // ------------------------------------------------------------ prepare
    let c = setup.control.clone();
    let period_ms = plant.sample_period_ms();
    let period = Duration::from_secs_f64(period_ms / 1000.0);
    let period_ns = period.as_nanos() as u64;
    let max_samples = setup
        .duration_s
        .map(|d| (d * 1000.0 / period_ms).round() as u64 + 1);
    let per_interval = ((1000.0 / period_ms).round() as u64).max(1);
    let mut limiter = SafetyLimiter::new(setup.safety, period_ms)
        .map_err(|e| ControlError::Setup(e.to_string()))?;
    let mpc_on = c.policy == PolicyKind::Mpc;
    let mut baseline = match c.policy {
        PolicyKind::Off | PolicyKind::Mpc => Baseline::Off,
        PolicyKind::Open => Baseline::Open(c.open),
        PolicyKind::Pid => {
            Baseline::pid_for(&c.objective, &c.pid, period_ms, setup.safety.max_amplitude)
        }
    };
    let model_path = setup
        .forecaster
        .as_ref()
        .map(|f| f.path().display().to_string());
    // Model geometry (MPC only).
    let mut geometry = None;
    if mpc_on {
        let f = setup.forecaster.as_ref().ok_or_else(|| {
            ControlError::Setup("policy mpc needs a forecaster (control.model)".into())
        })?;
        let card = f.card();
        let dec = WindowRing::decimation_for(card.dt_ms, period_ms).ok_or_else(|| {
            ControlError::Setup(format!(
                "{}: model step {} ms is not a whole number of sample periods ({period_ms} ms)",
                f.path().display(),
                card.dt_ms
            ))
        })?;
        let steps = c.period_ms / card.dt_ms;
        if (steps - steps.round()).abs() > 1e-6 || steps.round() < 1.0 {
            return Err(ControlError::Setup(format!(
                "control.period = {} ms is not a whole number of the model's steps ({} ms)",
                c.period_ms, card.dt_ms
            )));
        }
        if f.max_batch() < c.mpc.candidates {
            return Err(ControlError::Setup(format!(
                "the forecaster was loaded for batches up to {}, mpc.candidates is {}",
                f.max_batch(),
                c.mpc.candidates
            )));
        }
        geometry = Some((card.t_in, card.t_out, dec, steps.round() as u64, card.dt_ms));
    }
    let (mut window, t_in, plan_len, steps_per_period) = match geometry {
        Some((t_in, t_out, dec, spp, _)) => (WindowRing::new(t_in, dec), t_in, t_out * dec, spp),
        None => (WindowRing::new(1, 1), 1, 1, 1),
    };
    // Free clock with a modelled delay: plans of every snapshot taken during
    // the delay (at most one per model step) are in flight at once.
    let delay_samples = (c.compute_delay_ms / period_ms).round() as u64;
    let dec = geometry.map_or(1, |g| g.2 as u64);
    let plan_pool = 4 + delay_samples.div_ceil(dec) as usize;
    let t_out = geometry.map_or(1, |g| g.1);
    let (mut ends, mut planner_ends, consumer_ends) = handoff::build(
        mpc_on.then(|| (t_in, t_out, plan_len, plan_pool, limiter.clone())),
        64,
    );
    let notes = setup.notes.take().or_else(|| {
        setup
            .recorder
            .is_some()
            .then(|| crossbeam_channel::bounded(handoff::NOTES))
    });
    let (notes_tx, notes_rx) = match notes {
        Some((tx, rx)) => (Some(tx), Some(rx)),
        None => (None, None),
    };
    let retrain = setup.retrain.clone();
    let duties = ConsumerDuties {
        recorder: setup.recorder.take(),
        notes: notes_rx,
        monitor: retrain.as_ref().filter(|_| mpc_on).map(|r| r.monitor()),
        recent: retrain.as_ref().map(|r| r.recent.clone()),
        controls: setup.controls.clone().map(|c| {
            let seen = c.applied_state();
            (c, seen)
        }),
    };
    let training_flag = retrain.as_ref().map(|r| r.training.clone());

    let trace = match &setup.trace_out {
        Some(p) => Some((
            p.clone(),
            std::fs::File::create(p).map_err(|error| ControlError::Io {
                path: p.display().to_string(),
                error,
            })?,
        )),
        None => None,
    };
    // With a trace, each plan's forecast goes to FILE.forecasts.csv (a
    // writer thread fed by the planner; the loop never sees it).
    let forecast_writer = match (&setup.trace_out, planner_ends.as_mut()) {
        (Some(trace), Some(pe)) => {
            let path = forecasts_path(trace);
            let file = std::fs::File::create(&path).map_err(|error| ControlError::Io {
                path: path.display().to_string(),
                error,
            })?;
            let (tx, rx) = crossbeam_channel::bounded::<handoff::ForecastRow>(4096);
            pe.forecasts = Some(tx);
            Some(spawn_forecast_writer(path, file, rx))
        }
        _ => None,
    };
    let consumer = spawn_consumer(
        consumer_ends,
        QualityMeter::new(c.objective, period_ms),
        setup.keep_records,
        trace,
        duties,
    );

    let realtime = rt::apply(&c.realtime);
    // A rig clocks the loop itself (its `read` blocks until the next
    // sample): no sleeping, but real-time rules (never wait for the planner
    // or the recorder) as with the paced clock.
    let clocked = plant.clocked();
    let rt_rules = setup.clock == Clock::Paced || clocked;
    let paced = setup.clock == Clock::Paced && !clocked;
    let planner = match (planner_ends, setup.forecaster.take(), geometry) {
        (Some(pe), Some(f), Some((_, t_out, dec, _, dt_model))) => {
            let mpc = Mpc::new(
                c.mpc,
                c.objective,
                t_out,
                dec,
                dt_model,
                c.mpc.max_amplitude.min(setup.safety.max_amplitude),
                delay_samples as usize,
            );
            let budget = rt_rules.then(|| Duration::from_secs_f64(c.mpc.time_budget_ms / 1000.0));
            let exclude = realtime.pinned_cpu;
            let links = planner::PlannerLinks {
                notes: notes_tx.clone().map(|tx| (tx, !rt_rules)),
                swaps: setup.swaps.take(),
            };
            Some(
                std::thread::Builder::new()
                    .name("planner".into())
                    .spawn(move || {
                        if let Some(cpu) = exclude {
                            rt::exclude_cpu(cpu);
                        }
                        planner::run(pe, f, mpc, budget, links)
                    })
                    .map_err(|e| ControlError::Setup(format!("cannot start the planner: {e}")))?,
            )
        }
        _ => None,
    };
    let mut realtime = realtime;
    realtime.planner_excluded = planner.is_some() && realtime.pinned_cpu.is_some();

    drop(notes_tx);
    let mut hist = LoopHistograms::new();
    // Retraining: sample→command split by whether a model is being trained.
    let mut split_hist = [new_histogram(), new_histogram()];
    let mut detector = SpikeDetector::new(DEFAULT_THRESHOLD_MV);
    let mut last_spike_ms = f64::NEG_INFINITY;
    let mut spikes = 0u64;
    let mut overruns = 0u64;
    let mut samples = 0u64;
    let mut lost_samples = 0u64;
    let mut records_dropped = 0u64;
    let mut plans_adopted = 0u64;
    let mut plant_interruptions = 0u64;
    let mut late_plans = 0u64;
    let mut plan_misses = 0u64;
    let mut plan_miss_samples = 0u64;
    let mut snapshots_skipped = 0u64;
    let mut planner_gone = false;
    let mut in_miss = false;
    let mut replan = false;
    // Index of the last spike's sample: plans computed before it are stale.
    let mut spike_index = 0u64;
    let mut model_steps = 0u64;
    let mut expected_index: Option<u64> = None;
    let mut active: Option<Box<Plan>> = None;
    // Plans received but not yet due (free clock with a modelled delay can
    // have several in flight; the queue's capacity is the plan pool's, so
    // pushing never allocates).
    let mut pending: std::collections::VecDeque<(u64, Box<Plan>)> =
        std::collections::VecDeque::with_capacity(plan_pool);
    let mut last_t = 0.0;
    let mut fault_text = None;
    // Operator controls (service): the objective in force and its change
    // number, whether stimulation is armed, the newest forecast error.
    let controls = setup.controls.take();
    let period_samples = ((c.period_ms / period_ms).round() as u64).max(1);
    let mut objective = c.objective;
    let mut objective_seq = 0u64;
    let mut armed = controls.as_ref().is_none_or(|k| k.armed_requested());
    let mut disarmed_samples = 0u64;
    let mut objective_changes = 0u64;
    let mut forecast_error_mv = f64::NAN;
    if paced {
        reduce_timer_slack();
    }
    let start = Instant::now();
    let start_mono = monotonic_ns();
    let mut reason = StopReason::Signal;
    if let Some(k) = &controls {
        k.mark_started();
    }

    // The loop's counters as the service sees them, from the locals of the
    // moment (each period boundary, and once at the end).
    macro_rules! published {
        () => {
            controls::Published {
                samples,
                lost_samples,
                plant_interruptions,
                records_dropped,
                spikes,
                plans_adopted,
                late_plans,
                plan_misses,
                plan_miss_samples,
                snapshots_skipped,
                disarmed_samples,
                plant_time_ms: last_t,
                forecast_error_mv,
            }
        };
    }

    // --------------------------------------------------------------- loop
    loop {
        if max_samples.is_some_and(|m| samples >= m) {
            reason = StopReason::DurationReached;
            break;
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(k) = controls.as_deref() {
            // Operator changes take effect at a control-period boundary
            // (disarming at once); status is published at the same rate.
            k.beat();
            let boundary = samples.is_multiple_of(period_samples);
            if boundary {
                if let Some((seq, o)) = k.take_objective() {
                    objective = o;
                    objective_seq = seq;
                    objective_changes += 1;
                    if c.policy == PolicyKind::Pid {
                        baseline = Baseline::pid_for(
                            &objective,
                            &c.pid,
                            period_ms,
                            setup.safety.max_amplitude,
                        );
                    }
                    replan = true;
                    k.applied(seq);
                }
                k.publish(&published!(), &limiter);
            }
            let now = k.armed_for(armed, boundary);
            if now && !armed && c.policy == PolicyKind::Pid {
                // Re-armed: start the baseline afresh (its integrator kept
                // integrating an error nobody acted on).
                baseline =
                    Baseline::pid_for(&objective, &c.pid, period_ms, setup.safety.max_amplitude);
            }
            armed = now;
        }
        let mut jitter_ns = None;
        if paced {
            let deadline = start + Duration::from_nanos(period_ns * samples);
            sleep_until(start_mono + period_ns * samples, deadline);
            let late = Instant::now().saturating_duration_since(deadline);
            jitter_ns = Some(late.as_nanos().max(1) as u64);
            if late > period {
                overruns += 1;
            }
        }
        let s = match plant.read() {
            Ok(s) => s,
            Err(PlantError::Ended) => {
                reason = StopReason::PlantEnded;
                break;
            }
            Err(PlantError::Interrupted { .. }) => {
                // Stimulation to zero now; the plant recovers on later
                // reads. The window and the plan no longer match the cell.
                let d = limiter.limit(0.0, Some(Fault::PlantFault));
                let _ = plant.write(d.command);
                plant_interruptions += 1;
                window.clear();
                if let Some(se) = &ends.snapshots {
                    if let Some(old) = active.take() {
                        let _ = se.used_plans.try_send(old);
                    }
                    while let Some((_, old)) = pending.pop_front() {
                        let _ = se.used_plans.try_send(old);
                    }
                }
                continue;
            }
            Err(e) => {
                let d = limiter.limit(0.0, Some(Fault::PlantFault));
                let _ = plant.write(d.command);
                reason = StopReason::PlantFault;
                fault_text = Some(e.to_string());
                break;
            }
        };
        let arrived = Instant::now();
        let mut fault = None;
        match expected_index {
            Some(e) if s.index < e => fault = Some(Fault::StaleSample),
            Some(e) => lost_samples += s.index - e,
            None => {}
        }
        expected_index = Some(s.index.max(expected_index.unwrap_or(0)) + 1);
        let spiked = match detector.push(s.t_ms, s.v_mv) {
            Some(t) => {
                last_spike_ms = t;
                spikes += 1;
                replan = true;
                spike_index = s.index;
                true
            }
            None => false,
        };
        last_t = s.t_ms;
        let step_done = window.push(s.v_mv, s.i_applied);

        // The policy's request.
        let requested = if mpc_on {
            if let Some(se) = &ends.snapshots {
                if rt_rules {
                    // Plans take effect `compute_delay` after their snapshot
                    // (what the planner assumed), or on arrival if later.
                    while let Ok(p) = se.plans.try_recv() {
                        let due = p.base_index + 1 + delay_samples;
                        if s.index > due {
                            late_plans += 1;
                        }
                        pending.push_back((due, p));
                    }
                }
                while pending.front().is_some_and(|(at, _)| s.index >= *at) {
                    let (_, p) = pending.pop_front().expect("checked");
                    let now = Instant::now();
                    let ns = |d: Duration| d.as_nanos().max(1) as u64;
                    let lat = ns(p.published.saturating_duration_since(p.snapshot_taken));
                    let age = ns(now.saturating_duration_since(p.snapshot_taken));
                    hist.plan_latency.saturating_record(lat);
                    hist.decision_age.saturating_record(age);
                    if p.forecast_ns > 0 {
                        hist.forecast_time.saturating_record(p.forecast_ns);
                    }
                    if let Some(iv) = intervals.as_deref_mut() {
                        let set = iv.current();
                        set.histograms[2].saturating_record(lat);
                        set.histograms[3].saturating_record(age);
                        if p.forecast_ns > 0 {
                            set.histograms[4].saturating_record(p.forecast_ns);
                        }
                    }
                    if p.forecast_error_mv.is_finite() {
                        forecast_error_mv = p.forecast_error_mv;
                    }
                    if let Some(old) = active.replace(p) {
                        let _ = se.used_plans.try_send(old);
                    }
                    plans_adopted += 1;
                    in_miss = false;
                }
            }
            match &active {
                _ if planner_gone => {
                    fault = fault.or(Some(Fault::ModelError));
                    0.0
                }
                None => 0.0,
                Some(p) => match p.status {
                    PlanStatus::ModelError => {
                        fault = fault.or(Some(Fault::ModelError));
                        0.0
                    }
                    PlanStatus::NonFinite => {
                        fault = fault.or(Some(Fault::NonFinite));
                        0.0
                    }
                    PlanStatus::Ok => {
                        let off = s.index.saturating_sub(p.base_index + 1) as usize;
                        if s.index > p.base_index && off < p.currents.len() {
                            let u = p.currents[off] as f64;
                            // A plan made before the last spike did not
                            // know of it: its depolarising current (meant to
                            // bring that spike about) would only evoke
                            // another. Hyperpolarising current stays.
                            if p.base_index < spike_index {
                                u.min(0.0)
                            } else {
                                u
                            }
                        } else if s.index <= p.base_index {
                            0.0
                        } else {
                            if !in_miss {
                                plan_misses += 1;
                                in_miss = true;
                            }
                            plan_miss_samples += 1;
                            fault = fault.or(Some(Fault::PlanMiss));
                            0.0
                        }
                    }
                },
            }
        } else {
            baseline.step(s.t_ms, s.v_mv, spiked)
        };
        // Disarmed: the request is zero (still through the limiter).
        let requested = if armed {
            requested
        } else {
            disarmed_samples += 1;
            0.0
        };

        // What the plan in use forecast for this sample's model step.
        let forecast = match &active {
            Some(p) if mpc_on && p.status == PlanStatus::Ok && s.index > p.base_index => {
                let j = ((s.index - p.base_index - 1) / dec) as usize;
                p.forecast.get(j).copied().unwrap_or(f32::NAN)
            }
            _ => f32::NAN,
        };
        let d = limiter.limit(requested, fault);
        if let Err(e) = plant.write(d.command) {
            let z = limiter.limit(0.0, Some(Fault::PlantFault));
            let _ = plant.write(z.command);
            reason = StopReason::PlantFault;
            fault_text = Some(e.to_string());
            break;
        }
        let latency = arrived.elapsed().as_nanos().max(1) as u64;
        hist.sample_to_command.saturating_record(latency);
        if let Some(flag) = &training_flag {
            let k = usize::from(flag.load(Ordering::Relaxed));
            split_hist[k].saturating_record(latency);
        }
        if let Some(j) = jitter_ns {
            hist.wakeup_jitter.saturating_record(j);
        }
        records_dropped += ends.records.push(
            Record {
                index: s.index,
                t_ms: s.t_ms,
                v_mv: s.v_mv,
                applied: s.i_applied,
                requested,
                command: d.command,
                cause: d.cause,
                forecast,
            },
            !rt_rules,
        );

        // Snapshot for the planner at the end of each control period.
        if step_done && mpc_on && !planner_gone {
            model_steps += 1;
            // Each control period, and at once after a spike: a spike
            // changes what the forecast says next (and what the objective
            // wants), so a plan made before it is stale.
            if window.is_full() && (replan || model_steps.is_multiple_of(steps_per_period)) {
                replan = false;
                if let Some(se) = &ends.snapshots {
                    match se.empty.try_recv() {
                        Ok(mut snap) => {
                            window.snapshot(&mut snap.v, &mut snap.i);
                            snap.index = s.index;
                            snap.t_ms = s.t_ms;
                            snap.v_now = s.v_mv;
                            snap.last_spike_ms = last_spike_ms;
                            snap.limiter = limiter.clone();
                            snap.taken = arrived;
                            snap.objective =
                                (objective_seq > 0).then_some((objective_seq, objective));
                            if se.to_planner.try_send(snap).is_err() {
                                planner_gone = true;
                            } else if !rt_rules {
                                // Lockstep: await this snapshot's plan.
                                match await_item(&se.plans) {
                                    Some(p) => {
                                        pending.push_back((s.index + 1 + delay_samples, p));
                                    }
                                    None => planner_gone = true,
                                }
                            }
                        }
                        Err(_) => snapshots_skipped += 1,
                    }
                }
            }
        }

        if let Some(iv) = intervals.as_deref_mut() {
            let set = iv.current();
            if let Some(j) = jitter_ns {
                set.histograms[0].saturating_record(j);
            }
            set.histograms[1].saturating_record(latency);
            if (samples + 1).is_multiple_of(per_interval) {
                iv.rotate(start.elapsed());
            }
        }
        samples += 1;
    }

    // ------------------------------------------------------------ wind down
    // Stimulation to zero first, then the rest.
    if reason != StopReason::PlantFault {
        let d = limiter.limit(0.0, Some(Fault::Shutdown));
        if let Err(e) = plant.write(d.command) {
            fault_text.get_or_insert(e.to_string());
        }
    }
    let wall = start.elapsed().as_secs_f64();
    if let Some(k) = &controls {
        k.publish(&published!(), &limiter);
        k.mark_finished();
    }
    ends.records.flush();
    let planner_totals = {
        let snapshot_ends = ends.snapshots.take();
        drop(snapshot_ends);
        planner.map(|h| h.join().unwrap_or_default())
    };
    let forecast_error = forecast_writer.and_then(|w| w.join().ok().flatten());
    drop(ends);
    let consumed = consumer
        .join()
        .map_err(|_| ControlError::Setup("the record consumer panicked".into()))?;
    if let Some(e) = consumed.error.or(forecast_error) {
        return Err(ControlError::Io {
            path: "trace".into(),
            error: std::io::Error::other(e),
        });
    }
    let mut interventions = BTreeMap::new();
    for (cause, n) in limiter.counts() {
        interventions.insert(cause.name(), n);
    }
    let pct = |h: &Histogram<u64>| (!h.is_empty()).then(|| Percentiles::from_ns(h));
    let (superseded, model_errors, model_error, models_swapped, notes_dropped) = planner_totals
        .map(|t| {
            (
                t.superseded,
                t.model_errors,
                t.first_error,
                t.models_swapped,
                t.notes_dropped,
            )
        })
        .unwrap_or_default();
    let recording = match consumed.recorder {
        Some(r) => {
            let dir = r.dir().display().to_string();
            let counts = r.finish(records_dropped).map_err(|e| ControlError::Io {
                path: dir.clone(),
                error: std::io::Error::other(e.to_string()),
            })?;
            Some(serde_json::json!({ "dir": dir, "counts": counts }))
        }
        None => None,
    };
    let summary = LoopSummary {
        plant: plant.kind(),
        policy: c.policy.name(),
        objective: c.objective.kind.name(),
        clock: if clocked {
            "plant"
        } else if paced {
            "paced"
        } else {
            "free"
        },
        model: model_path.filter(|_| mpc_on),
        samples,
        lost_samples,
        plant_interruptions,
        plant_report: plant.report(),
        records_dropped,
        plant_time_s: last_t / 1000.0,
        wall_time_s: wall,
        spikes,
        plans_adopted,
        late_plans,
        plan_misses,
        plan_miss_samples,
        snapshots_skipped,
        snapshots_superseded: superseded,
        model_errors,
        model_error: model_error.or_else(|| planner_gone.then(|| "the planner stopped".into())),
        interventions_total: limiter.counts().map(|(_, n)| n).sum(),
        interventions,
        charge_delivered_nc_cm2: limiter.charge_delivered(),
        net_charge_end_nc_cm2: limiter.net_charge(),
        quality: consumed.quality,
        latency: Latencies {
            wakeup_jitter: pct(&hist.wakeup_jitter),
            sample_to_command: pct(&hist.sample_to_command),
            plan_latency: pct(&hist.plan_latency),
            decision_age: pct(&hist.decision_age),
            forecast_time: pct(&hist.forecast_time),
            sample_to_command_training: pct(&split_hist[1]),
            sample_to_command_not_training: pct(&split_hist[0]),
        },
        overruns,
        disarmed_samples,
        objective_changes,
        realtime,
        stop: reason,
        fault: fault_text,
        recording,
        models_swapped,
        notes_dropped,
        retraining: None,
    };
    Ok(RunOutcome {
        summary,
        histograms: hist,
        records: consumed.records,
    })
}
