//! One run of the daemon from a validated configuration: build the plant,
//! load the forecaster, start the report writer, run the control loop on a
//! thread of its own, and write the report. Shared by the daemon's default
//! command and `neurostimd scenarios`.

use crate::config::{Config, PlantKind};
use crate::control::{self, handoff::Record, LoopSummary, RunSetup};
use crate::forecast::{Engine, ForecastError, Forecaster};
use crate::plant::SimPlant;
use crate::policy::PolicyKind;
use crate::report::{self, IntervalLogThread};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// A run that could not start or finish cleanly.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("loading the model for the mpc policy: {0}")]
    Model(#[from] ForecastError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("the control thread panicked")]
    Panicked,
    #[error(transparent)]
    Serial(#[from] crate::plant::serial::SerialError),
    #[error("--plant replay: {0}")]
    Replay(#[from] crate::record::RecordingError),
    #[error("recording: {0}")]
    Record(#[from] crate::record::RecordError),
    #[error("retrain.state_dir: {0}")]
    Store(#[from] crate::retrain::store::StoreError),
    #[error("retraining: {0}")]
    Retrain(String),
    /// The planner cannot keep up (see [`crate::policy::budget`]).
    #[error("{0}")]
    Budget(String),
}

/// Extra choices of one run beyond the configuration.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Write the report here (created). `None`: no report.
    pub report: Option<PathBuf>,
    pub trace_out: Option<PathBuf>,
    pub keep_records: bool,
    /// Record into this directory (created; must not hold a recording).
    /// `None`: a fresh `run-<UTC>` directory under `record.dir` if that is
    /// set, else no recording.
    pub record: Option<PathBuf>,
    /// The command line, for the recording's sidecar.
    pub command: String,
    /// The service's hooks into the loop (control API, metrics, watchdog).
    pub service: Option<ServiceHooks>,
    /// Filled with retraining's shared state once it starts (the service's
    /// retrain and rollback calls go there).
    pub retrain_slot: Option<Arc<std::sync::OnceLock<Arc<crate::retrain::Shared>>>>,
    /// Requests played in place of the baseline (calibration's excitation,
    /// with the `off` policy), through the limiter.
    pub script: Option<crate::policy::pid::Script>,
    /// Events to record at the run's first sample (e.g. what a calibration
    /// before the run decided).
    pub events: Vec<(crate::record::EventLine, String)>,
    /// The model `control.model` replaced (a calibration's base model), for
    /// MPC's guard to go back to (`control.guard.revert`).
    pub base_model: Option<crate::forecast::ModelSource>,
}

/// What the service shares with a run: the loop's controls and live
/// status, and the live latency histograms (fed from the interval log's
/// writer thread, which then runs even without a report directory).
#[derive(Clone)]
pub struct ServiceHooks {
    pub controls: Arc<crate::control::controls::LoopControls>,
    pub latency: Arc<crate::service::latency::LiveLatency>,
}

impl std::fmt::Debug for ServiceHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHooks").finish_non_exhaustive()
    }
}

pub struct SessionOutcome {
    pub summary: LoopSummary,
    /// The recording's root directory, if the run recorded.
    pub recording: Option<PathBuf>,
    pub records: Option<Vec<Record>>,
    /// Interval histograms written to the log.
    pub intervals: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SessionError + '_ {
    move |error| SessionError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// A fresh report directory name under `parent`: `run-YYYYMMDDTHHMMSSZ`
/// (UTC), with a suffix if taken.
pub fn new_report_dir(parent: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let stamp = format!(
        "run-{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    let mut dir = parent.join(&stamp);
    let mut k = 1;
    while dir.exists() {
        dir = parent.join(format!("{stamp}-{k}"));
        k += 1;
    }
    dir
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The state directory: `retrain.state_dir`, under systemd's
/// `$STATE_DIRECTORY` when relative and that is set.
pub fn state_dir(config: &Config) -> PathBuf {
    let d = &config.retrain.state_dir;
    match std::env::var_os("STATE_DIRECTORY") {
        Some(base) if d.is_relative() => PathBuf::from(base).join(d),
        _ => d.clone(),
    }
}

/// Load the forecaster the configuration names, for its MPC batch.
pub fn load_forecaster(config: &Config) -> Result<Forecaster, ForecastError> {
    load_for_mpc(config, &config.control.model)
}

/// Load a model for MPC as the configured one is: its batch, its engine.
fn load_for_mpc(
    config: &Config,
    source: &crate::forecast::ModelSource,
) -> Result<Forecaster, ForecastError> {
    Forecaster::load_source(source, config.control.mpc.candidates, Engine::Native)
}

/// The base model for MPC's guard to go back to, if it may
/// (`control.guard.revert`) and there is one.
fn load_revert(
    config: &Config,
    opts: &SessionOptions,
) -> Result<Option<control::planner::ModelSwap>, SessionError> {
    let c = &config.control;
    let wanted = c.policy == PolicyKind::Mpc && c.guard.enabled && c.guard.revert;
    let Some(base) = opts.base_model.as_ref().filter(|_| wanted) else {
        return Ok(None);
    };
    Ok(Some(control::planner::ModelSwap {
        forecaster: load_for_mpc(config, base)?,
        label: base.name(),
    }))
}

/// Before a paced run: refuse a forecaster that cannot produce a plan
/// within the planning deadline (the free clock models the delay and does
/// not care how long a forecast takes).
fn check_planning_budget(f: &mut Forecaster, config: &Config) -> Result<(), SessionError> {
    let c = &config.control;
    let deadline = c.compute_delay_ms.min(c.period_ms);
    // The engine's capability, not a moment's load: a busy machine gets
    // three tries, a fifth of a second apart, before the run is refused.
    let mut b = crate::policy::budget::measure(f, c.mpc.candidates, deadline)?;
    for _ in 0..2 {
        if b.fits() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        let again = crate::policy::budget::measure(f, c.mpc.candidates, deadline)?;
        if again.fastest_ms < b.fastest_ms {
            b = again;
        }
    }
    if !b.fits() {
        return Err(SessionError::Budget(b.refusal()));
    }
    tracing::info!(
        engine = b.engine,
        candidates = b.candidates,
        fastest_ms = format!("{:.3}", b.fastest_ms),
        median_ms = format!("{:.3}", b.median_ms),
        deadline_ms = b.deadline_ms,
        "planning budget: one forecast batch fits the planning deadline"
    );
    Ok(())
}

/// Run the configured loop until its duration or `stop`: open the plant,
/// load the model (from the retraining store when retraining), start the
/// retraining supervisor, the recorder and the interval-log writer, run
/// the loop on a thread of its own, then write the report.
pub fn run(
    config: &Config,
    opts: &SessionOptions,
    stop: Arc<AtomicBool>,
) -> Result<SessionOutcome, SessionError> {
    let plant = open_plant(config)?;
    run_on(plant, config, opts, stop).map(|(outcome, _)| outcome)
}

/// [`run`] on a plant that is already open, handed back at the end: a
/// calibration and the run after it drive the same cell.
pub fn run_on(
    plant: Box<dyn crate::plant::Plant>,
    config: &Config,
    opts: &SessionOptions,
    stop: Arc<AtomicBool>,
) -> Result<(SessionOutcome, Box<dyn crate::plant::Plant>), SessionError> {
    let (mut forecaster, store_version) = load_model(config)?;
    if let (Some(f), crate::config::Clock::Paced) = (forecaster.as_mut(), config.run.clock) {
        check_planning_budget(f, config)?;
    }
    let period_ms = plant.sample_period_ms();
    let retraining = match (store_version, forecaster.as_ref()) {
        (Some(sv), Some(f)) => Some(start_retraining(config, opts, sv, f, period_ms)?),
        _ => None,
    };
    let record_dir = match (&opts.record, &config.record.dir) {
        (Some(d), _) => Some(d.clone()),
        (None, Some(parent)) => Some(new_report_dir(parent)),
        (None, None) => None,
    };
    let recorder = match &record_dir {
        Some(dir) => Some(start_recorder(
            config,
            opts,
            dir,
            plant.kind(),
            forecaster.as_ref(),
            period_ms,
        )?),
        None => None,
    };
    let writer = start_interval_writer(opts)?;
    let (notes, swaps, supervisor) = match retraining {
        Some(r) => (Some(r.notes), Some(r.swaps), Some(r.supervisor)),
        None => (None, None, None),
    };
    let notes = with_events(notes, &opts.events);
    let revert = load_revert(config, opts)?;
    let setup = RunSetup {
        keep_records: opts.keep_records,
        trace_out: opts.trace_out.clone(),
        recorder,
        notes,
        swaps,
        revert,
        retrain: supervisor.as_ref().map(|s| s.shared.clone()),
        controls: opts.service.as_ref().map(|s| s.controls.clone()),
        script: opts.script.clone(),
        ..RunSetup::new(config, config.run.duration_s, forecaster)
    };
    let (thread, handoff) = match writer {
        Some((t, h)) => (Some(t), Some(h)),
        None => (None, None),
    };
    let (mut outcome, handoff, plant) = run_control_thread(plant, setup, stop, handoff)?;
    if let Some(sup) = supervisor {
        outcome.summary.retraining = Some(finish_retraining(sup));
    }
    let intervals = write_report(config, opts, &outcome, thread, handoff)?;
    let outcome = SessionOutcome {
        summary: outcome.summary,
        recording: record_dir,
        records: outcome.records,
        intervals,
    };
    Ok((outcome, plant))
}

/// The notes channel with `events` queued on it (made if nothing else
/// needs one): the consumer records them at the first sample.
fn with_events(
    notes: Option<NotesPair>,
    events: &[(crate::record::EventLine, String)],
) -> Option<NotesPair> {
    if events.is_empty() {
        return notes;
    }
    let pair = notes.unwrap_or_else(|| crossbeam_channel::bounded(control::handoff::NOTES));
    for (line, text) in events {
        let _ = pair.0.try_send(control::handoff::Note::Event {
            line: *line,
            text: text.clone(),
        });
    }
    Some(pair)
}

type NotesPair = (
    crossbeam_channel::Sender<control::handoff::Note>,
    crossbeam_channel::Receiver<control::handoff::Note>,
);

/// The plant `config` names, opened.
pub fn open_plant(config: &Config) -> Result<Box<dyn crate::plant::Plant>, SessionError> {
    Ok(match config.plant_kind {
        PlantKind::Sim => Box::new(SimPlant::new(&config.sim)),
        PlantKind::Serial => Box::new(crate::plant::serial::SerialPlant::open(
            config.serial.clone(),
        )?),
        PlantKind::Replay => Box::new(crate::plant::replay::ReplayPlant::open(&config.replay)?),
    })
}

/// The model store and the version it made current (retraining only).
type StoreVersion = (
    crate::retrain::store::ModelStore,
    crate::retrain::store::Version,
);

/// The forecaster for MPC: with retraining, the state directory's current
/// version (the configured model adopted as v1 the first time).
fn load_model(config: &Config) -> Result<(Option<Forecaster>, Option<StoreVersion>), SessionError> {
    let mpc = config.control.policy == PolicyKind::Mpc;
    if !mpc {
        return Ok((None, None));
    }
    if !config.retrain.enabled {
        return Ok((Some(load_forecaster(config)?), None));
    }
    let mut store = crate::retrain::store::ModelStore::open(&state_dir(config))?;
    let (path, version) = store.adopt(&config.control.model)?;
    let f = Forecaster::load(&path, config.control.mpc.candidates, Engine::Native)?;
    tracing::info!(
        model = %path.display(),
        version = version.version,
        origin = %version.origin,
        "model from the state directory (neurostimd model rollback restores the previous one)"
    );
    Ok((Some(f), Some((store, version))))
}

/// Retraining's thread and its channels to the planner (new models) and
/// the record consumer (events).
struct Retraining {
    notes: (
        crossbeam_channel::Sender<control::handoff::Note>,
        crossbeam_channel::Receiver<control::handoff::Note>,
    ),
    swaps: crossbeam_channel::Receiver<control::planner::ModelSwap>,
    supervisor: crate::retrain::Supervisor,
}

fn start_retraining(
    config: &Config,
    opts: &SessionOptions,
    (store, version): StoreVersion,
    f: &Forecaster,
    period_ms: f64,
) -> Result<Retraining, SessionError> {
    let (swap_tx, swap_rx) = crossbeam_channel::bounded(1);
    let (note_tx, note_rx) = crossbeam_channel::bounded(control::handoff::NOTES);
    let dec = crate::forecast::WindowRing::decimation_for(f.card().dt_ms, period_ms).ok_or_else(
        || {
            SessionError::Retrain(format!(
                "model step {} ms is not a whole number of sample periods ({period_ms} ms)",
                f.card().dt_ms
            ))
        },
    )?;
    let sup = crate::retrain::Supervisor::start(crate::retrain::SupervisorSetup {
        config: config.retrain.clone(),
        store,
        model: f,
        version: (
            version.version,
            format!("v{} {}", version.version, f.card().name),
        ),
        decimation: dec,
        period_ms,
        swaps: swap_tx,
        notes: note_tx.clone(),
        avoid_cpu: crate::control::rt::loop_cpu(config.control.realtime.cpu),
    })
    .map_err(SessionError::Retrain)?;
    if let Some(slot) = &opts.retrain_slot {
        let _ = slot.set(sup.shared.clone());
    }
    Ok(Retraining {
        notes: (note_tx, note_rx),
        swaps: swap_rx,
        supervisor: sup,
    })
}

fn start_recorder(
    config: &Config,
    opts: &SessionOptions,
    dir: &Path,
    plant_kind: &str,
    forecaster: Option<&Forecaster>,
    period_ms: f64,
) -> Result<crate::record::Recorder, SessionError> {
    Ok(crate::record::Recorder::create(
        crate::record::RecordingSetup {
            dir: dir.to_path_buf(),
            sample_rate_hz: 1000.0 / period_ms,
            current_units: "uA/cm2".into(),
            t_out: forecaster.map_or(0, |f| f.card().t_out),
            forecast_dt_ms: forecaster.map_or(0.0, |f| f.card().dt_ms),
            flush_interval: Duration::from_secs_f64(config.record.flush_interval_ms / 1000.0),
            fsync: config.record.fsync,
            v_range_mv: config.record.v_range_mv,
            i_range: config.record.i_range,
            sidecar: serde_json::json!({
                "neurostimd_version": env!("CARGO_PKG_VERSION"),
                "command": opts.command,
                "plant": plant_kind,
                "started_unix_s": std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                "model": forecaster.map(|f| serde_json::json!({
                    "path": f.path().display().to_string(),
                    "card": f.card(),
                })),
                "config": config,
            }),
        },
    )?)
}

/// The interval-log writer: to the report's `latency.hlog`, and/or the
/// service's live latency tap.
fn start_interval_writer(
    opts: &SessionOptions,
) -> Result<Option<(IntervalLogThread, report::IntervalHandoff)>, SessionError> {
    let tap = opts.service.as_ref().map(|s| s.latency.tap());
    if let Some(dir) = &opts.report {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let log = dir.join("latency.hlog");
        return Ok(Some(
            IntervalLogThread::start_tapped(Some(&log), control::LATENCY_TAGS, 4, tap)
                .map_err(io(&log))?,
        ));
    }
    if tap.is_some() {
        let name = Path::new("latency tap");
        return Ok(Some(
            IntervalLogThread::start_tapped(None, control::LATENCY_TAGS, 4, tap)
                .map_err(io(name))?,
        ));
    }
    Ok(None)
}

/// What the control thread hands back: the outcome, the interval log's
/// hand-off and the plant (a calibration run passes it on to the policy).
type ControlThreadEnd = (
    control::RunOutcome,
    Option<report::IntervalHandoff>,
    Box<dyn crate::plant::Plant>,
);

/// The loop on a thread of its own (the one promoted to real time).
fn run_control_thread(
    mut plant: Box<dyn crate::plant::Plant>,
    setup: RunSetup,
    stop: Arc<AtomicBool>,
    handoff: Option<report::IntervalHandoff>,
) -> Result<ControlThreadEnd, SessionError> {
    let control = std::thread::Builder::new()
        .name("control".into())
        .stack_size(8 << 20)
        .spawn(move || {
            let mut handoff = handoff;
            let r = control::run(plant.as_mut(), setup, &stop, handoff.as_mut());
            (r, handoff, plant)
        })
        .map_err(|e| SessionError::Io {
            path: "control thread".into(),
            error: e,
        })?;
    let (result, handoff, plant) = control.join().map_err(|_| SessionError::Panicked)?;
    Ok((result?, handoff, plant))
}

/// Stop retraining; what it did, for `summary.json`.
fn finish_retraining(sup: crate::retrain::Supervisor) -> serde_json::Value {
    let shared = sup.shared.clone();
    let attempts = sup.stop();
    let (v, label) = shared.current_version();
    serde_json::json!({
        "model_version_end": v,
        "model_end": label,
        "reference_rmse_mv_end": shared.live.reference_rmse_mv.get(),
        "attempts": attempts,
        "rolling_forecast_rmse_mv_per_s": shared.timeline(),
    })
}

/// Close the interval log and write the report (`.hgrm`, `summary.json`,
/// `objective.json`); the number of intervals logged.
fn write_report(
    config: &Config,
    opts: &SessionOptions,
    outcome: &control::RunOutcome,
    thread: Option<IntervalLogThread>,
    handoff: Option<report::IntervalHandoff>,
) -> Result<u64, SessionError> {
    let wall = Duration::from_secs_f64(outcome.summary.wall_time_s);
    let (Some(thread), Some(handoff)) = (thread, handoff) else {
        return Ok(0);
    };
    let Some(dir) = &opts.report else {
        // Only the service's tap: let it see the last interval.
        handoff.finish(wall);
        let _ = thread.join();
        return Ok(0);
    };
    handoff.finish(wall);
    let intervals = thread.join().map_err(io(dir))?;
    for (name, h) in outcome.histograms.all() {
        if !h.is_empty() {
            report::write_hgrm(dir, name, h).map_err(io(dir))?;
        }
    }
    report::write_summary(dir, &outcome.summary).map_err(io(dir))?;
    // What the run aimed for, for `neurostimd plot`.
    report::write_json(
        dir,
        "objective.json",
        &report::objective_json(&config.control.objective),
    )
    .map_err(io(dir))?;
    Ok(intervals)
}
