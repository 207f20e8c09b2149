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
}

/// Extra choices of one run beyond the configuration.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Write the report here (created). `None`: no report.
    pub report: Option<PathBuf>,
    pub trace_out: Option<PathBuf>,
    pub keep_records: bool,
    /// The service's hooks into the loop (control API, metrics, watchdog).
    pub service: Option<ServiceHooks>,
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

/// Load the forecaster the configuration names, for its MPC batch.
pub fn load_forecaster(config: &Config) -> Result<Forecaster, ForecastError> {
    Forecaster::load(
        &config.control.model,
        config.control.mpc.candidates,
        Engine::Native,
    )
}

/// Run the configured loop until its duration or `stop`.
pub fn run(
    config: &Config,
    opts: &SessionOptions,
    stop: Arc<AtomicBool>,
) -> Result<SessionOutcome, SessionError> {
    let mut plant: Box<dyn crate::plant::Plant> = match config.plant_kind {
        PlantKind::Sim => Box::new(SimPlant::new(&config.sim)),
        PlantKind::Serial => Box::new(crate::plant::serial::SerialPlant::open(
            config.serial.clone(),
        )?),
    };
    let forecaster = if config.control.policy == PolicyKind::Mpc {
        Some(load_forecaster(config)?)
    } else {
        None
    };
    let mut writer = None;
    let tap = opts.service.as_ref().map(|s| s.latency.tap());
    if let Some(dir) = &opts.report {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let log = dir.join("latency.hlog");
        writer = Some(
            IntervalLogThread::start_tapped(Some(&log), control::LATENCY_TAGS, 4, tap)
                .map_err(io(&log))?,
        );
    } else if tap.is_some() {
        let name = Path::new("latency tap");
        writer = Some(
            IntervalLogThread::start_tapped(None, control::LATENCY_TAGS, 4, tap)
                .map_err(io(name))?,
        );
    }
    let setup = RunSetup {
        clock: config.run.clock,
        duration_s: config.run.duration_s,
        control: config.control.clone(),
        safety: config.safety,
        forecaster,
        keep_records: opts.keep_records,
        trace_out: opts.trace_out.clone(),
        controls: opts.service.as_ref().map(|s| s.controls.clone()),
    };
    let (thread, handoff) = match writer {
        Some((t, h)) => (Some(t), Some(h)),
        None => (None, None),
    };
    let control = std::thread::Builder::new()
        .name("control".into())
        .stack_size(8 << 20)
        .spawn(move || {
            let mut handoff = handoff;
            let r = control::run(plant.as_mut(), setup, &stop, handoff.as_mut());
            (r, handoff)
        })
        .map_err(|e| SessionError::Io {
            path: "control thread".into(),
            error: e,
        })?;
    let (result, handoff) = control.join().map_err(|_| SessionError::Panicked)?;
    let outcome = result?;
    let mut intervals = 0;
    let (thread, handoff) = if opts.report.is_none() {
        // Only the service's tap: let it see the last interval.
        if let (Some(t), Some(h)) = (thread, handoff) {
            h.finish(Duration::from_secs_f64(outcome.summary.wall_time_s));
            let _ = t.join();
        }
        (None, None)
    } else {
        (thread, handoff)
    };
    if let (Some(thread), Some(handoff), Some(dir)) = (thread, handoff, &opts.report) {
        handoff.finish(Duration::from_secs_f64(outcome.summary.wall_time_s));
        intervals = thread.join().map_err(io(dir))?;
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
    }
    Ok(SessionOutcome {
        summary: outcome.summary,
        records: outcome.records,
        intervals,
    })
}
