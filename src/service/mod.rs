//! The daemon's service side (DESIGN §1, §9): a small tokio runtime on one
//! thread of its own, beside the control, planner and consumer threads. It
//! serves the control API on a Unix socket ([`api`]), Prometheus metrics on
//! localhost ([`metrics`]), and talks to systemd ([`notify`]): READY once
//! the loop runs, WATCHDOG only while the loop's heartbeat advances,
//! STOPPING as soon as a stop is requested.
//!
//! It reaches the loop only through [`LoopControls`] (atomics and a
//! preallocated single-slot mailbox) and the interval-histogram tap
//! ([`latency::LiveLatency`]), so nothing it does can block, lock or
//! allocate on the real-time thread. A `current_thread` runtime suffices:
//! the service handles a few requests a second and a scrape every few
//! seconds, and one thread keeps it off the cores the loop and the planner
//! need. Blocking work (retraining, through [`ModelOps`]) goes to tokio's
//! blocking pool.

pub mod api;
pub mod client;
pub mod conn;
pub mod latency;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod watch;

use crate::config::{Config, ServiceConfig, SocketChoice};
use crate::control::controls::LoopControls;
use crate::policy::Objective;
use latency::LiveLatency;
use notify::Notifier;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Retraining's calls, as the control API makes them (defined by the
/// retraining layer that implements them).
pub use crate::retrain::ModelOps;

/// The loaded model as its card describes it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ModelInfo {
    /// `embedded:ca1_lstm` or the configured path.
    pub path: String,
    /// Where it came from: compiled into the binary, or the file's
    /// absolute path.
    pub origin: String,
    pub name: String,
    pub sha256: String,
    pub dt_ms: f64,
    pub t_in: usize,
    pub t_out: usize,
}

/// What the run is, for status and metrics.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    pub plant: &'static str,
    pub policy: &'static str,
    pub clock: &'static str,
    pub sample_rate_hz: f64,
    pub control_period_ms: f64,
    pub max_amplitude_ua_cm2: f64,
    pub model: Option<ModelInfo>,
    pub report_dir: Option<PathBuf>,
}

impl RunInfo {
    pub fn new(config: &Config, model: Option<ModelInfo>, report_dir: Option<PathBuf>) -> RunInfo {
        RunInfo {
            plant: match config.plant_kind {
                crate::config::PlantKind::Sim => "sim",
                crate::config::PlantKind::Serial => "serial",
                crate::config::PlantKind::Replay => "replay",
            },
            policy: config.control.policy.name(),
            clock: match config.run.clock {
                crate::config::Clock::Paced => "paced",
                crate::config::Clock::Free => "free",
            },
            sample_rate_hz: 1000.0 / config.sim.sample_period_ms,
            control_period_ms: config.control.period_ms,
            max_amplitude_ua_cm2: config.safety.max_amplitude,
            model,
            report_dir,
        }
    }
}

/// A service that could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("control socket {path}: {error}")]
    Socket { path: String, error: std::io::Error },
    #[error(
        "control socket {0}: another neurostimd answers on it; stop that one or set service.socket"
    )]
    SocketInUse(String),
    #[error("cannot start the service runtime: {0}")]
    Runtime(std::io::Error),
}

/// Everything the service needs.
pub struct ServiceSetup {
    pub config: ServiceConfig,
    pub info: RunInfo,
    pub objective: Objective,
    pub controls: Arc<LoopControls>,
    pub latency: Arc<LiveLatency>,
    /// The loop's stop flag (SIGTERM/SIGINT and `POST /shutdown` set it).
    pub stop: Arc<AtomicBool>,
    pub model_ops: Option<Arc<dyn ModelOps>>,
    pub notifier: Notifier,
}

/// State shared by the service's tasks.
pub struct State {
    pub info: RunInfo,
    pub controls: Arc<LoopControls>,
    pub latency: Arc<LiveLatency>,
    pub stop: Arc<AtomicBool>,
    pub model_ops: Option<Arc<dyn ModelOps>>,
    /// The newest objective posted (sequence number, objective); the loop
    /// applies it at its next control-period boundary.
    pub objective: Mutex<(u64, Objective)>,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub socket: Option<PathBuf>,
    pub started: Instant,
    /// Plans have been missing their deadline for a while now (the
    /// operator log's watcher sets it; a metric).
    pub plan_misses_sustained: AtomicBool,
}

/// The running service; [`Service::finish`] ends it.
pub struct Service {
    thread: Option<std::thread::JoinHandle<()>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    state: Arc<State>,
}

/// The control socket for `choice`, given the run's report directory. An
/// automatic path too long for a Unix socket (a deep report directory)
/// turns the API off with a warning rather than failing the run.
pub fn socket_path(choice: &SocketChoice, report_dir: Option<&Path>) -> Option<PathBuf> {
    match choice {
        SocketChoice::Off => None,
        SocketChoice::Path(p) => Some(p.clone()),
        SocketChoice::Auto => auto_socket(report_dir).filter(|p| {
            let fits = p.as_os_str().len() <= 107;
            if !fits {
                tracing::warn!(
                    "control API off: {} is longer than a Unix socket path may be; set service.socket",
                    p.display()
                );
            }
            fits
        }),
    }
}

fn auto_socket(report_dir: Option<&Path>) -> Option<PathBuf> {
    std::env::var_os("RUNTIME_DIRECTORY")
        .filter(|d| !d.is_empty())
        // systemd may list several directories, separated by ':'.
        .and_then(|d| {
            d.to_str()
                .and_then(|s| s.split(':').next())
                .map(PathBuf::from)
        })
        .or_else(|| report_dir.map(Path::to_path_buf))
        .map(|d| d.join("control.sock"))
}

/// Bind the control socket: a stale socket file left by a crash is
/// replaced, a live daemon's is not.
fn bind_socket(path: &Path, mode: u32) -> Result<std::os::unix::net::UnixListener, ServiceError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let err = |error| ServiceError::Socket {
        path: path.display().to_string(),
        error,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServiceError::SocketInUse(path.display().to_string()));
            }
            std::fs::remove_file(path).map_err(err)?;
        }
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

impl Service {
    /// Bind the socket and the metrics port and start the service thread.
    /// A metrics port that is taken is logged and skipped (the loop must
    /// not fail for want of observability); a control socket that cannot
    /// be bound is an error.
    pub fn start(setup: ServiceSetup, socket: Option<PathBuf>) -> Result<Service, ServiceError> {
        let unix = socket
            .as_deref()
            .map(|p| bind_socket(p, setup.config.socket_mode))
            .transpose()?;
        let tcp = setup.config.metrics.and_then(|addr| {
            match std::net::TcpListener::bind(addr).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            }) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(
                        "metrics: cannot listen on {addr} ({e}); running without metrics"
                    );
                    None
                }
            }
        });
        let metrics_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
        let state = Arc::new(State {
            info: setup.info,
            controls: setup.controls,
            latency: setup.latency,
            stop: setup.stop,
            model_ops: setup.model_ops,
            objective: Mutex::new((0, setup.objective)),
            metrics_addr,
            socket: socket.clone(),
            started: Instant::now(),
            plan_misses_sustained: AtomicBool::new(false),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(ServiceError::Runtime)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let st = state.clone();
        let notifier = setup.notifier;
        let thread = std::thread::Builder::new()
            .name("service".into())
            .spawn(move || {
                runtime.block_on(run(st, unix, tcp, notifier, rx));
            })
            .map_err(ServiceError::Runtime)?;
        if let Some(p) = &socket {
            tracing::info!(
                "control API on {} (neurostimd ctl --socket {})",
                p.display(),
                p.display()
            );
        }
        if let Some(a) = metrics_addr {
            tracing::info!("metrics on http://{a}/metrics");
        }
        Ok(Service {
            thread: Some(thread),
            shutdown: Some(tx),
            state,
        })
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Stop serving (after the loop has ended): STOPPING for systemd if not
    /// sent yet, listeners closed, the socket file removed.
    pub fn finish(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = &self.state.socket {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.end();
    }
}

/// The service thread's main task.
async fn run(
    state: Arc<State>,
    unix: Option<std::os::unix::net::UnixListener>,
    tcp: Option<std::net::TcpListener>,
    notifier: Notifier,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let mut tasks = Vec::new();
    if let Some(l) = unix {
        match tokio::net::UnixListener::from_std(l) {
            Ok(l) => tasks.push(tokio::spawn(api::serve(state.clone(), l))),
            Err(e) => tracing::error!("control API: {e}"),
        }
    }
    if let Some(l) = tcp {
        match tokio::net::TcpListener::from_std(l) {
            Ok(l) => tasks.push(tokio::spawn(metrics::serve(state.clone(), l))),
            Err(e) => tracing::error!("metrics: {e}"),
        }
    }
    let mut lifecycle = Lifecycle::default();
    let tick = notifier
        .watchdog_interval()
        .map_or(Duration::from_millis(50), |w| {
            w.min(Duration::from_millis(50))
        });
    let mut last_feed = Instant::now();
    let mut watch = watch::Watch::default();
    let mut last_watch = Instant::now();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(tick) => {}
        }
        lifecycle.step(&state, &notifier);
        if last_watch.elapsed() >= watch::WINDOW {
            last_watch = Instant::now();
            for c in watch.step(state.controls.status(), last_watch) {
                watch::log(&c);
            }
            state
                .plan_misses_sustained
                .store(watch.misses_sustained(), Ordering::Relaxed);
        }
        if let Some(w) = notifier.watchdog_interval() {
            if last_feed.elapsed() >= w {
                last_feed = Instant::now();
                lifecycle.feed(&state, &notifier);
            }
        }
    }
    lifecycle.step(&state, &notifier);
    if !lifecycle.stopping {
        send(&notifier, "STOPPING=1\nSTATUS=stopped");
    }
    for t in tasks {
        t.abort();
    }
}

fn send(n: &Notifier, state: &str) {
    if let Err(e) = n.notify(state) {
        tracing::warn!("sd_notify {:?}: {e}", state.lines().next().unwrap_or(""));
    }
}

/// READY/STOPPING/WATCHDOG bookkeeping.
#[derive(Default)]
struct Lifecycle {
    ready: bool,
    stopping: bool,
    fed: Option<u64>,
}

impl Lifecycle {
    fn step(&mut self, state: &State, n: &Notifier) {
        let c = &state.controls;
        if !self.ready && (c.is_running() || c.is_finished()) {
            self.ready = true;
            send(
                n,
                &format!(
                    "READY=1\nSTATUS=closed loop running ({} plant, policy {})",
                    state.info.plant, state.info.policy
                ),
            );
            tracing::info!("closed loop running");
        }
        if !self.stopping && (state.stop.load(Ordering::Relaxed) || c.is_finished()) {
            self.stopping = true;
            send(
                n,
                "STOPPING=1\nSTATUS=stopping: stimulation to zero, writing reports",
            );
        }
    }

    fn feed(&mut self, state: &State, n: &Notifier) {
        let hb = state.controls.heartbeat();
        if notify::should_feed(self.fed, hb, state.controls.is_finished()) {
            self.fed = Some(hb);
            send(n, "WATCHDOG=1");
        } else if !state.controls.is_finished() && self.fed.is_some() {
            tracing::error!("control loop heartbeat stalled at {hb}; not feeding the watchdog");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths() {
        assert_eq!(socket_path(&SocketChoice::Off, Some(Path::new("r"))), None);
        assert_eq!(
            socket_path(&SocketChoice::Path("/x/c.sock".into()), None),
            Some(PathBuf::from("/x/c.sock"))
        );
        if std::env::var_os("RUNTIME_DIRECTORY").is_none() {
            assert_eq!(
                socket_path(&SocketChoice::Auto, Some(Path::new("reports/run-1"))),
                Some(PathBuf::from("reports/run-1/control.sock"))
            );
            assert_eq!(socket_path(&SocketChoice::Auto, None), None);
            let deep = "d/".repeat(60);
            assert_eq!(
                socket_path(&SocketChoice::Auto, Some(Path::new(&deep))),
                None
            );
        }
    }

    #[test]
    fn a_live_socket_is_not_taken_over_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.sock");
        let live = bind_socket(&p, 0o660).unwrap();
        assert!(matches!(
            bind_socket(&p, 0o660),
            Err(ServiceError::SocketInUse(_))
        ));
        drop(live);
        // The file stays after the listener is gone: stale.
        assert!(p.exists());
        let again = bind_socket(&p, 0o600).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        drop(again);
    }
}
