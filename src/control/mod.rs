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

mod clock;
mod consumer;
pub mod controls;
pub mod decide;
pub mod guard;
pub mod handoff;
pub mod planner;

/// The real-time measures moved below the loop (retraining uses them too);
/// the old path keeps working.
pub use crate::rt;
pub(crate) use clock::await_item;
pub use consumer::forecasts_path;

use crate::config::{Clock, ControlConfig};
use crate::forecast::{Forecaster, WindowRing};
use crate::plant::{Plant, PlantError, Sample};
use crate::policy::mpc::Mpc;
use crate::policy::quality::{Quality, QualityMeter};
use crate::policy::PolicyKind;
use crate::report::{new_histogram, IntervalHandoff};
use crate::safety::{Fault, Limits, SafetyLimiter};
use crossbeam_channel::{Receiver, Sender};
use handoff::{Note, Plan, Record};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
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
    /// The MPC guard and the feedback between plans (MPC only).
    pub guard: Option<GuardSummary>,
}

/// What the MPC guard and the feedback between plans did (`summary.json`).
#[derive(Clone, Debug, Serialize)]
pub struct GuardSummary {
    pub enabled: bool,
    pub fallback: &'static str,
    /// Hand-overs as the loop applied them.
    pub handovers_to_fallback: u64,
    pub handovers_to_mpc: u64,
    /// Samples the fallback drove, and whether it drove at the end.
    pub fallback_samples: u64,
    pub in_fallback_at_end: bool,
    /// Samples on which the feedback between plans (or the spike reflex)
    /// changed the plan's current.
    pub feedback_samples: u64,
    /// What the guard judged by, and each decision with its reason.
    pub judged: Option<guard::GuardReport>,
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
    /// The model the configured one replaced (a calibration's base), for
    /// the guard to go back to (`control.guard.revert`).
    pub revert: Option<planner::ModelSwap>,
    /// Retraining's shared state: the consumer feeds its recent data and
    /// drift monitor; the loop splits its latency on `training`.
    pub retrain: Option<std::sync::Arc<crate::retrain::Shared>>,
    /// Operator controls and live status (the service); `None`: the loop
    /// runs armed with its configured objective and publishes nothing.
    pub controls: Option<std::sync::Arc<controls::LoopControls>>,
    /// Requests to play in place of the baseline (`neurostimd calibrate`'s
    /// excitation, with the `off` policy), through the limiter.
    pub script: Option<crate::policy::pid::Script>,
    /// Called when the MPC guard hands control to its fallback (a
    /// calibration request); `None`: the guard only asks the retrainer.
    pub guard_hook: Option<guard::GuardHook>,
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
            revert: None,
            retrain: None,
            controls: None,
            script: None,
            guard_hook: None,
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

/// Run the closed loop on the calling thread (which should be a thread of
/// its own: it is the one promoted to real time) until the duration is
/// reached, `stop` is set, the plant ends or faults. Stimulation is driven
/// to zero through the limiter at the end in every case. With `intervals`,
/// per-second histograms go to the interval-log writer.
///
/// Three steps: [`Running::start`] checks the model's geometry, builds
/// the hand-offs and starts the planner and consumer threads;
/// [`Running::sample_loop`] answers samples until a stop; and
/// [`Running::finish`] zeroes the stimulation, joins the threads and
/// writes the summary.
pub fn run(
    plant: &mut dyn Plant,
    setup: RunSetup,
    stop: &AtomicBool,
    intervals: Option<&mut IntervalHandoff>,
) -> Result<RunOutcome, ControlError> {
    let mut r = Running::start(plant, setup)?;
    let reason = r.sample_loop(plant, stop, intervals);
    r.finish(plant, reason)
}

/// The model's geometry as the loop uses it (MPC only).
#[derive(Clone, Copy)]
struct Geometry {
    t_in: usize,
    t_out: usize,
    decimation: usize,
    steps_per_period: u64,
    dt_model: f64,
}

/// Check the forecaster against the plant's sample period and the control
/// period; `None` when the policy is not MPC.
fn geometry(
    c: &ControlConfig,
    forecaster: Option<&Forecaster>,
    period_ms: f64,
) -> Result<Option<Geometry>, ControlError> {
    if c.policy != PolicyKind::Mpc {
        return Ok(None);
    }
    let f = forecaster.ok_or_else(|| {
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
    Ok(Some(Geometry {
        t_in: card.t_in,
        t_out: card.t_out,
        decimation: dec,
        steps_per_period: steps.round() as u64,
        dt_model: card.dt_ms,
    }))
}

/// The threads a run starts besides its own.
struct Threads {
    consumer: std::thread::JoinHandle<consumer::Consumed>,
    planner: Option<std::thread::JoinHandle<planner::PlannerTotals>>,
}

/// A run in progress: the decision state, the hand-offs, the histograms
/// and the other threads.
struct Running {
    c: ControlConfig,
    period: Duration,
    max_samples: Option<u64>,
    per_interval: u64,
    period_samples: u64,
    mpc_on: bool,
    rt_rules: bool,
    paced: bool,
    clocked: bool,
    decider: decide::Decider,
    ends: handoff::LoopEnds,
    hist: LoopHistograms,
    /// Retraining: sample→command split by whether a model is being
    /// trained.
    split_hist: [Histogram<u64>; 2],
    training_flag: Option<std::sync::Arc<AtomicBool>>,
    controls: Option<std::sync::Arc<controls::LoopControls>>,
    /// The MPC guard's decisions (MPC with the guard on).
    guard: Option<std::sync::Arc<guard::GuardLink>>,
    threads: Threads,
    realtime: rt::RtReport,
    /// The CPU latency request, held from before the first sample until
    /// the loop has ended (the kernel drops it when this closes).
    cpu_latency: rt::CpuLatencyRequest,
    model_path: Option<String>,
    fault_text: Option<String>,
    start: Instant,
    start_mono: u64,
}

impl Running {
    /// Everything before the first sample (allocations, threads, files).
    fn start(plant: &mut dyn Plant, mut setup: RunSetup) -> Result<Running, ControlError> {
        let c = setup.control.clone();
        let period_ms = plant.sample_period_ms();
        let limiter = SafetyLimiter::new(setup.safety, period_ms)
            .map_err(|e| ControlError::Setup(e.to_string()))?;
        let mpc_on = c.policy == PolicyKind::Mpc;
        let model_path = setup
            .forecaster
            .as_ref()
            .map(|f| f.path().display().to_string());
        let (geo, window, revert) = Self::geometry_with_revert(&c, &mut setup, period_ms)?;
        // Free clock with a modelled delay: plans of every snapshot taken
        // during the delay (at most one per model step) are in flight.
        let delay_samples = (c.compute_delay_ms / period_ms).round() as u64;
        let dec = geo.map_or(1, |g| g.decimation);
        let plan_pool = 4 + delay_samples.div_ceil(dec as u64) as usize;
        let (t_in, plan_len) = geo.map_or((1, 1), |g| (g.t_in, g.t_out * dec));
        let t_out = geo.map_or(1, |g| g.t_out);
        let (ends, planner_ends, consumer_ends) = handoff::build(
            mpc_on.then(|| (t_in, t_out, plan_len, plan_pool, limiter.clone())),
            64,
        );
        let guard_link =
            (mpc_on && c.guard.enabled).then(|| std::sync::Arc::new(guard::GuardLink::new()));
        let (notes_tx, mut duties) =
            Self::consumer_duties(&mut setup, mpc_on, guard_link.is_some())?;
        let revert_label = revert.as_ref().map(|r| r.label.clone());
        duties.guard = Self::guard_duty(&c, &mut setup, guard_link.as_ref(), geo, period_ms)
            .map(|d| d.with_revert(revert_label));
        let training_flag = setup.retrain.as_ref().map(|r| r.training.clone());
        let trace = match &setup.trace_out {
            Some(p) => Some((p.clone(), create(p)?)),
            None => None,
        };
        let consumer = consumer::spawn_consumer(
            consumer_ends,
            QualityMeter::new(c.objective, period_ms),
            setup.keep_records,
            trace,
            duties,
        );
        let (mut realtime, cpu_latency) = rt::apply(&c.realtime);
        // A rig clocks the loop itself (its `read` blocks until the next
        // sample): no sleeping, but real-time rules (never wait for the
        // planner or the recorder) as with the paced clock.
        let clocked = plant.clocked();
        let rt_rules = setup.clock == Clock::Paced || clocked;
        let paced = setup.clock == Clock::Paced && !clocked;
        let planner = match (planner_ends, setup.forecaster.take(), geo) {
            (Some(pe), Some(f), Some(g)) => {
                let links = planner::PlannerLinks {
                    notes: notes_tx.clone().map(|tx| (tx, !rt_rules)),
                    swaps: setup.swaps.take(),
                    hindcasts: guard_link.is_some() && c.guard.judges_applied(),
                    revert,
                    waiting: None,
                };
                Some(Self::start_planner(
                    &c,
                    setup.safety.max_amplitude,
                    g,
                    delay_samples,
                    pe,
                    f,
                    links,
                    rt_rules,
                    realtime.pinned_cpu,
                )?)
            }
            _ => None,
        };
        realtime.planner_excluded = planner.is_some() && realtime.pinned_cpu.is_some();
        drop(notes_tx);
        let controls = setup.controls.take();
        let armed = controls.as_ref().is_none_or(|k| k.armed_requested());
        let timing = geo.map(|g| decide::PlanTiming {
            decimation: g.decimation as u64,
            steps_per_period: g.steps_per_period,
            delay_samples,
            pool: plan_pool,
        });
        Ok(Running {
            period: Duration::from_secs_f64(period_ms / 1000.0),
            max_samples: setup
                .duration_s
                .map(|d| (d * 1000.0 / period_ms).round() as u64 + 1),
            per_interval: ((1000.0 / period_ms).round() as u64).max(1),
            period_samples: ((c.period_ms / period_ms).round() as u64).max(1),
            decider: {
                let mut d =
                    decide::Decider::new(&c, period_ms, limiter, timing, window, rt_rules, armed);
                d.hold_commands_for(plant.command_hold_samples());
                if let Some(script) = setup.script.take() {
                    d.play(script);
                }
                d
            },
            c,
            mpc_on,
            rt_rules,
            paced,
            clocked,
            ends,
            hist: LoopHistograms::new(),
            split_hist: [new_histogram(), new_histogram()],
            training_flag,
            controls,
            guard: guard_link,
            threads: Threads { consumer, planner },
            realtime,
            cpu_latency,
            model_path,
            fault_text: None,
            start: Instant::now(),
            start_mono: 0,
        })
    }

    /// The model's geometry and the loop's window, long enough for the
    /// model to go back to as well (the planner gives each model the newest
    /// `t_in` of it; snapshots start once the running model's are in), and
    /// that model.
    fn geometry_with_revert(
        c: &ControlConfig,
        setup: &mut RunSetup,
        period_ms: f64,
    ) -> Result<(Option<Geometry>, WindowRing, Option<planner::ModelSwap>), ControlError> {
        let geo = geometry(c, setup.forecaster.as_ref(), period_ms)?;
        let revert = Self::revert_model(c, setup);
        let Some(mut g) = geo else {
            return Ok((None, WindowRing::new(1, 1), revert));
        };
        let ready = g.t_in;
        if let Some(r) = &revert {
            g.t_in = g.t_in.max(r.forecaster.card().t_in);
        }
        let window = WindowRing::new(g.t_in, g.decimation).ready_at(ready);
        Ok((Some(g), window, revert))
    }

    /// The model to go back to (`control.guard.revert`), if the guard is on
    /// and it plans as the running model does (the plans and the batch are
    /// sized for that one; the window is sized for both).
    fn revert_model(c: &ControlConfig, setup: &mut RunSetup) -> Option<planner::ModelSwap> {
        let r = setup
            .revert
            .take()
            .filter(|_| c.guard.enabled && c.guard.revert)?;
        let f = setup.forecaster.as_ref()?;
        if !planner::plans_alike(f, &r.forecaster) {
            tracing::warn!(model = %r.label, "control.guard.revert: the model to go back to differs from the running one in horizon, step or batch; the guard will hand over instead");
            return None;
        }
        Some(r)
    }

    /// The guard's work on the record consumer (MPC with the guard on).
    fn guard_duty(
        c: &ControlConfig,
        setup: &mut RunSetup,
        link: Option<&std::sync::Arc<guard::GuardLink>>,
        geo: Option<Geometry>,
        period_ms: f64,
    ) -> Option<consumer::GuardDuty> {
        let (link, g) = (link?, geo?);
        Some(consumer::GuardDuty {
            guard: guard::Guard::new(
                c.guard,
                c.objective,
                period_ms,
                g.decimation,
                g.t_out,
                link.clone(),
            )
            .with_replan_period(g.steps_per_period * g.decimation as u64)
            .with_reflex(&c.feedback),
            log: guard::RateLimitedLog::new(Duration::from_secs(1)),
            retrain: setup.retrain.clone(),
            hook: setup.guard_hook.take(),
        })
    }

    /// The notes channel (the planner's and the retraining thread's
    /// sender) and the consumer's duties.
    /// With a trace and MPC, each plan's forecast also goes to
    /// FILE.forecasts.csv (written by the consumer from the notes).
    fn consumer_duties(
        setup: &mut RunSetup,
        mpc_on: bool,
        guard_on: bool,
    ) -> Result<(Option<Sender<Note>>, consumer::ConsumerDuties), ControlError> {
        let forecasts_csv = match (&setup.trace_out, mpc_on) {
            (Some(trace), true) => {
                let path = forecasts_path(trace);
                let file = create(&path)?;
                Some((path, std::io::BufWriter::new(file)))
            }
            _ => None,
        };
        let notes = setup.notes.take().or_else(|| {
            (setup.recorder.is_some() || forecasts_csv.is_some() || guard_on)
                .then(|| crossbeam_channel::bounded(handoff::NOTES))
        });
        let (notes_tx, notes_rx) = match notes {
            Some((tx, rx)) => (Some(tx), Some(rx)),
            None => (None, None),
        };
        let retrain = setup.retrain.clone();
        let duties = consumer::ConsumerDuties {
            recorder: setup.recorder.take(),
            notes: notes_rx,
            monitor: retrain.as_ref().filter(|_| mpc_on).map(|r| r.monitor()),
            recent: retrain.as_ref().map(|r| r.recent.clone()),
            forecasts_csv,
            controls: setup.controls.clone().map(|c| {
                let seen = c.applied_state();
                (c, seen)
            }),
            guard: None,
        };
        Ok((notes_tx, duties))
    }

    #[allow(clippy::too_many_arguments)]
    fn start_planner(
        c: &ControlConfig,
        max_amplitude: f64,
        g: Geometry,
        delay_samples: u64,
        pe: handoff::PlannerEnds,
        f: Forecaster,
        links: planner::PlannerLinks,
        rt_rules: bool,
        exclude: Option<usize>,
    ) -> Result<std::thread::JoinHandle<planner::PlannerTotals>, ControlError> {
        let mpc = Mpc::new(
            c.mpc,
            c.objective,
            g.t_out,
            g.decimation,
            g.dt_model,
            c.mpc.max_amplitude.min(max_amplitude),
            delay_samples as usize,
        )
        .with_reflex(&c.feedback)
        .with_window(g.t_in);
        let budget = rt_rules.then(|| Duration::from_secs_f64(c.mpc.time_budget_ms / 1000.0));
        std::thread::Builder::new()
            .name("planner".into())
            .spawn(move || {
                if let Some(cpu) = exclude {
                    rt::exclude_cpu(cpu);
                }
                planner::run(pe, f, mpc, budget, links)
            })
            .map_err(|e| ControlError::Setup(format!("cannot start the planner: {e}")))
    }

    /// Answer samples until a stop; why it stopped. Between the first and
    /// the last sample nothing here allocates, locks, logs or touches a
    /// file (tests/no_alloc.rs).
    fn sample_loop(
        &mut self,
        plant: &mut dyn Plant,
        stop: &AtomicBool,
        mut intervals: Option<&mut IntervalHandoff>,
    ) -> StopReason {
        if self.paced {
            clock::reduce_timer_slack();
        }
        self.start = Instant::now();
        self.start_mono = clock::monotonic_ns();
        if let Some(k) = &self.controls {
            k.mark_started();
        }
        loop {
            let samples = self.decider.counters.samples;
            if self.max_samples.is_some_and(|m| samples >= m) {
                return StopReason::DurationReached;
            }
            if stop.load(Ordering::Relaxed) {
                return StopReason::Signal;
            }
            self.operator_boundary(samples);
            let jitter_ns = self.pace(samples);
            let s = match plant.read() {
                Ok(s) => s,
                Err(PlantError::Ended) => return StopReason::PlantEnded,
                Err(PlantError::Interrupted { .. }) => {
                    // Stimulation to zero now; the plant recovers on later
                    // reads.
                    let se = self.ends.snapshots.as_ref();
                    let zero = self.decider.interrupted(|old| {
                        if let Some(se) = se {
                            let _ = se.used_plans.try_send(old);
                        }
                    });
                    let _ = plant.write(zero);
                    continue;
                }
                Err(e) => {
                    let zero = self.decider.zero(e.safety_fault());
                    let _ = plant.write(zero);
                    self.fault_text = Some(e.to_string());
                    return StopReason::PlantFault;
                }
            };
            let arrived = Instant::now();
            if let Some(reason) = self.answer(plant, &s, arrived, jitter_ns, &mut intervals) {
                return reason;
            }
        }
    }

    /// Operator changes take effect at a control-period boundary
    /// (disarming at once); status is published at the same rate.
    fn operator_boundary(&mut self, samples: u64) {
        let Some(k) = self.controls.as_deref() else {
            return;
        };
        k.beat();
        let boundary = samples.is_multiple_of(self.period_samples);
        if boundary {
            if let Some((seq, o)) = k.take_objective() {
                self.decider.set_objective(seq, o);
                k.applied(seq);
            }
            k.publish(&self.decider.published(), self.decider.limiter());
        }
        let now = k.armed_for(self.decider.armed(), boundary);
        self.decider.set_armed(now);
    }

    /// The MPC guard's decision takes effect: under real-time rules at a
    /// control-period boundary (read, never waited for); under the free
    /// clock at each record block, as the guard decided once it had judged
    /// every block but the newest (so the run stays reproducible).
    fn guard_boundary(&mut self, index: u64) {
        let Some(link) = self.guard.as_deref() else {
            return;
        };
        let samples = self.decider.counters.samples;
        let boundary = if self.rt_rules {
            samples.is_multiple_of(self.period_samples)
        } else {
            samples > 0 && samples.is_multiple_of(handoff::BLOCK as u64)
        };
        if !boundary {
            return;
        }
        let want = if self.rt_rules {
            link.wants()
        } else {
            let blocks = samples / handoff::BLOCK as u64 - 1;
            clock::await_condition(|| link.blocks_judged() >= blocks);
            link.wanted_after(blocks)
        };
        self.decider.set_reflex_suspended(want.no_reflex);
        self.decider.set_revert_model(want.revert);
        if self.decider.set_fallback(want.fallback) {
            link.applied(want.fallback, index);
        }
    }

    /// Paced clock: sleep to the sample's deadline; the wake-up lateness.
    fn pace(&mut self, samples: u64) -> Option<u64> {
        if !self.paced {
            return None;
        }
        let period_ns = self.period.as_nanos() as u64;
        let deadline = self.start + Duration::from_nanos(period_ns * samples);
        clock::sleep_until(self.start_mono + period_ns * samples, deadline);
        let late = Instant::now().saturating_duration_since(deadline);
        if late > self.period {
            self.decider.counters.overruns += 1;
        }
        Some(late.as_nanos().max(1) as u64)
    }

    /// One sample: take in plans, decide, write, measure, hand off.
    fn answer(
        &mut self,
        plant: &mut dyn Plant,
        s: &Sample,
        arrived: Instant,
        jitter_ns: Option<u64>,
        intervals: &mut Option<&mut IntervalHandoff>,
    ) -> Option<StopReason> {
        self.guard_boundary(s.index);
        let se = self.ends.snapshots.as_ref();
        if let (true, true, Some(se)) = (self.mpc_on, self.rt_rules, se) {
            while let Ok(p) = se.plans.try_recv() {
                self.decider.receive(p, s.index);
            }
        }
        let hist = &mut self.hist;
        let d = self.decider.tick(
            s,
            |p| record_plan_timing(hist, intervals.as_deref_mut(), p),
            |old| {
                if let Some(se) = se {
                    let _ = se.used_plans.try_send(old);
                }
            },
        );
        if let Err(e) = plant.write(d.record.command) {
            let zero = self.decider.zero(Fault::PlantFault);
            let _ = plant.write(zero);
            self.fault_text = Some(e.to_string());
            return Some(StopReason::PlantFault);
        }
        let latency = arrived.elapsed().as_nanos().max(1) as u64;
        self.hist.sample_to_command.saturating_record(latency);
        if let Some(flag) = &self.training_flag {
            let k = usize::from(flag.load(Ordering::Relaxed));
            self.split_hist[k].saturating_record(latency);
        }
        if let Some(j) = jitter_ns {
            self.hist.wakeup_jitter.saturating_record(j);
        }
        self.decider.counters.records_dropped += self.ends.records.push(d.record, !self.rt_rules);
        if self.decider.snapshot_due(d.step_done) {
            self.send_snapshot(s, arrived);
        }
        if let Some(iv) = intervals.as_deref_mut() {
            let set = iv.current();
            if let Some(j) = jitter_ns {
                set.histograms[0].saturating_record(j);
            }
            set.histograms[1].saturating_record(latency);
            if (self.decider.counters.samples + 1).is_multiple_of(self.per_interval) {
                iv.rotate(self.start.elapsed());
            }
        }
        self.decider.counters.samples += 1;
        None
    }

    /// Hand the planner a snapshot of the window; in lockstep (free clock)
    /// await its plan.
    fn send_snapshot(&mut self, s: &Sample, arrived: Instant) {
        let Some(se) = &self.ends.snapshots else {
            return;
        };
        let Ok(mut snap) = se.empty.try_recv() else {
            self.decider.counters.snapshots_skipped += 1;
            return;
        };
        self.decider.fill_snapshot(&mut snap, s, arrived);
        if se.to_planner.try_send(snap).is_err() {
            self.decider.lose_planner();
        } else if !self.rt_rules {
            match clock::await_item(&se.plans) {
                Some(p) => self.decider.queue(s.index, p),
                None => self.decider.lose_planner(),
            }
        }
    }

    /// Stimulation to zero first, then join the threads and summarise.
    fn finish(
        mut self,
        plant: &mut dyn Plant,
        reason: StopReason,
    ) -> Result<RunOutcome, ControlError> {
        if reason != StopReason::PlantFault {
            let zero = self.decider.zero(Fault::Shutdown);
            if let Err(e) = plant.write(zero) {
                self.fault_text.get_or_insert(e.to_string());
            }
        }
        // The loop has ended: release the CPU latency request.
        drop(std::mem::take(&mut self.cpu_latency));
        let wall = self.start.elapsed().as_secs_f64();
        if let Some(k) = &self.controls {
            k.publish(&self.decider.published(), self.decider.limiter());
            k.mark_finished();
        }
        self.ends.records.flush();
        let planner_totals = {
            drop(self.ends.snapshots.take());
            self.threads.planner.map(|h| h.join().unwrap_or_default())
        };
        drop(self.ends);
        let consumed = self
            .threads
            .consumer
            .join()
            .map_err(|_| ControlError::Setup("the record consumer panicked".into()))?;
        if let Some(e) = consumed.error {
            return Err(ControlError::Io {
                path: "trace".into(),
                error: std::io::Error::other(e),
            });
        }
        let recording = match consumed.recorder {
            Some(r) => {
                let dir = r.dir().display().to_string();
                let dropped = self.decider.counters.records_dropped;
                let counts = r.finish(dropped).map_err(|e| ControlError::Io {
                    path: dir.clone(),
                    error: std::io::Error::other(e.to_string()),
                })?;
                Some(serde_json::json!({ "dir": dir, "counts": counts }))
            }
            None => None,
        };
        let ended = Ended {
            plant_kind: plant.kind(),
            plant_report: plant.report(),
            reason,
            wall,
            planner: planner_totals.unwrap_or_default(),
            quality: consumed.quality,
            recording,
            guard: consumed.guard,
        };
        let summary = summarise(
            &self.c,
            &self.decider,
            &self.hist,
            &self.split_hist,
            SummaryParts {
                clock: if self.clocked {
                    "plant"
                } else if self.paced {
                    "paced"
                } else {
                    "free"
                },
                model: self.model_path.filter(|_| self.mpc_on),
                realtime: self.realtime,
                fault: self.fault_text,
                ended,
            },
        );
        Ok(RunOutcome {
            summary,
            histograms: self.hist,
            records: consumed.records,
        })
    }
}

/// A plan's timing, as the loop adopts it.
fn record_plan_timing(
    hist: &mut LoopHistograms,
    intervals: Option<&mut IntervalHandoff>,
    p: &Plan,
) {
    let now = Instant::now();
    let ns = |d: Duration| d.as_nanos().max(1) as u64;
    let lat = ns(p.published.saturating_duration_since(p.snapshot_taken));
    let age = ns(now.saturating_duration_since(p.snapshot_taken));
    hist.plan_latency.saturating_record(lat);
    hist.decision_age.saturating_record(age);
    if p.forecast_ns > 0 {
        hist.forecast_time.saturating_record(p.forecast_ns);
    }
    if let Some(iv) = intervals {
        let set = iv.current();
        set.histograms[2].saturating_record(lat);
        set.histograms[3].saturating_record(age);
        if p.forecast_ns > 0 {
            set.histograms[4].saturating_record(p.forecast_ns);
        }
    }
}

fn create(p: &std::path::Path) -> Result<std::fs::File, ControlError> {
    std::fs::File::create(p).map_err(|error| ControlError::Io {
        path: p.display().to_string(),
        error,
    })
}

/// What the end of a run found out (threads joined, plant asked).
struct Ended {
    plant_kind: &'static str,
    plant_report: Option<serde_json::Value>,
    reason: StopReason,
    wall: f64,
    planner: planner::PlannerTotals,
    quality: Quality,
    recording: Option<serde_json::Value>,
    guard: Option<guard::GuardReport>,
}

/// The summary's parts that are not counters.
struct SummaryParts {
    clock: &'static str,
    model: Option<String>,
    realtime: rt::RtReport,
    fault: Option<String>,
    ended: Ended,
}

fn summarise(
    c: &ControlConfig,
    d: &decide::Decider,
    hist: &LoopHistograms,
    split_hist: &[Histogram<u64>; 2],
    parts: SummaryParts,
) -> LoopSummary {
    let limiter = d.limiter();
    let n = d.counters;
    let e = parts.ended;
    let mut interventions = BTreeMap::new();
    for (cause, k) in limiter.counts() {
        interventions.insert(cause.name(), k);
    }
    let pct = |h: &Histogram<u64>| (!h.is_empty()).then(|| Percentiles::from_ns(h));
    LoopSummary {
        plant: e.plant_kind,
        policy: c.policy.name(),
        objective: c.objective.kind.name(),
        clock: parts.clock,
        model: parts.model,
        samples: n.samples,
        lost_samples: n.lost_samples,
        plant_interruptions: n.plant_interruptions,
        plant_report: e.plant_report,
        records_dropped: n.records_dropped,
        plant_time_s: d.plant_time_ms() / 1000.0,
        wall_time_s: e.wall,
        spikes: n.spikes,
        plans_adopted: n.plans_adopted,
        late_plans: n.late_plans,
        plan_misses: n.plan_misses,
        plan_miss_samples: n.plan_miss_samples,
        snapshots_skipped: n.snapshots_skipped,
        snapshots_superseded: e.planner.superseded,
        model_errors: e.planner.model_errors,
        model_error: e
            .planner
            .first_error
            .or_else(|| d.planner_gone().then(|| "the planner stopped".into())),
        interventions_total: limiter.counts().map(|(_, k)| k).sum(),
        interventions,
        charge_delivered_nc_cm2: limiter.charge_delivered(),
        net_charge_end_nc_cm2: limiter.net_charge(),
        quality: e.quality,
        latency: Latencies {
            wakeup_jitter: pct(&hist.wakeup_jitter),
            sample_to_command: pct(&hist.sample_to_command),
            plan_latency: pct(&hist.plan_latency),
            decision_age: pct(&hist.decision_age),
            forecast_time: pct(&hist.forecast_time),
            sample_to_command_training: pct(&split_hist[1]),
            sample_to_command_not_training: pct(&split_hist[0]),
        },
        overruns: n.overruns,
        disarmed_samples: n.disarmed_samples,
        objective_changes: n.objective_changes,
        realtime: parts.realtime,
        stop: e.reason,
        fault: parts.fault,
        recording: e.recording,
        models_swapped: e.planner.models_swapped,
        notes_dropped: e.planner.notes_dropped,
        retraining: None,
        guard: (c.policy == PolicyKind::Mpc).then(|| GuardSummary {
            enabled: c.guard.enabled,
            fallback: c.guard.fallback.name(),
            handovers_to_fallback: n.guard_to_fallback,
            handovers_to_mpc: n.guard_to_mpc,
            fallback_samples: n.guard_fallback_samples,
            in_fallback_at_end: d.in_fallback(),
            feedback_samples: n.feedback_samples,
            judged: e.guard,
        }),
    }
}
