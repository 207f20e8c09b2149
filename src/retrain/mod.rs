//! Onboard retraining: the daemon keeps its forecaster accurate as the
//! neuron changes (DESIGN §1, §10).
//!
//! - [`drift`]: the recent data (model steps) and the rolling forecast
//!   error, kept by the record consumer.
//! - [`store`]: model versions in the state directory, and rollback.
//! - [`Supervisor`]: a low-priority thread, kept off the loop's CPU, that
//!   waits for a trigger (on demand, periodic, drift), fine-tunes the
//!   running model on the newest recorded data, scores the candidate and
//!   the running model on the same held-out stretch of that data, and
//!   sends the candidate to the planner only if it is better by the
//!   configured margin. Every step is a log line and an event in the
//!   recording.

pub mod drift;
pub mod store;

use crate::config::RetrainConfig;
use crate::forecast::card::ModelCard;
pub use crate::forecast::ModelSwap;
use crate::forecast::{Engine, Forecaster};
use crate::record::EventLine;
use crate::record::Note;
use crate::train::dataset::{Series, Windows};
use crate::train::net::{Net, Workspace};
use crate::train::{compare, export, trainer};
use crossbeam_channel::Sender;
use drift::{LiveForecast, RecentData};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::ModelStore;

/// A fine-tuned candidate and the scores of both models on the held-out
/// data.
pub struct Candidate {
    pub net: Net,
    /// RMSE per horizon step (mV) on the held-out windows.
    pub current_rmse: Vec<f64>,
    pub candidate_rmse: Vec<f64>,
    pub current_f1: f64,
    pub candidate_f1: f64,
    pub epochs: usize,
    pub train_windows: usize,
    pub holdout_windows: u64,
}

/// RMS over horizon steps of per-step RMSEs: one figure per model.
pub fn rms(per_step: &[f64]) -> f64 {
    if per_step.is_empty() {
        return f64::NAN;
    }
    (per_step.iter().map(|x| x * x).sum::<f64>() / per_step.len() as f64).sqrt()
}

/// The swap rule: strictly better by `margin` (a fraction), and finite.
pub fn accept(current: f64, candidate: f64, margin: f64) -> bool {
    candidate.is_finite() && current.is_finite() && candidate < current * (1.0 - margin)
}

/// Fine-tune `current` on `data` (split by time: train, validation,
/// held-out) with the running model's normalisation, and score both.
pub fn finetune(
    current: &Net,
    card: &ModelCard,
    data: &Series,
    cfg: &RetrainConfig,
    cancel: &AtomicBool,
) -> Result<Candidate, String> {
    let (t_in, t_out) = (card.t_in, card.t_out);
    let n = data.len();
    let train_end = ((1.0 - cfg.validation - cfg.holdout) * n as f64) as usize;
    let val_end = ((1.0 - cfg.holdout) * n as f64) as usize;
    let norm = card.normalization;
    let train_w = Windows::cut(&[data.slice(0, train_end)], t_in, t_out, cfg.stride, &norm);
    let val_w = Windows::cut(
        &[data.slice(train_end, val_end)],
        t_in,
        t_out,
        cfg.stride,
        &norm,
    );
    let hold_w = Windows::cut(&[data.slice(val_end, n)], t_in, t_out, 1, &norm);
    if train_w.is_empty() || val_w.is_empty() || hold_w.is_empty() {
        return Err(format!(
            "{n} model steps give {} training, {} validation and {} held-out windows; raise retrain.data",
            train_w.len(),
            val_w.len(),
            hold_w.len()
        ));
    }
    let mut net = current.clone();
    let history = trainer::fit_until(
        &mut net,
        &train_w,
        &val_w,
        &cfg.schedule,
        |e| {
            tracing::info!(
                target: "neurostimd::retrain",
                epoch = e.epoch,
                train_loss = e.train_loss,
                val_loss = e.val_loss,
                seconds = e.seconds,
                windows = train_w.len(),
                "fine-tuning"
            )
        },
        cancel,
    );
    if cancel.load(Ordering::Relaxed) {
        return Err("cancelled".into());
    }
    let score = |net: &Net| {
        let mut ws = Workspace::default();
        compare(
            "held-out",
            card.dt_ms,
            &norm,
            (&hold_w, &train_w),
            None,
            |x, b, o| {
                let y = ws.forward(net, x, b);
                for k in 0..b {
                    for j in 0..t_out {
                        o[k * t_out + j] = y[k * t_out + net.target_index(j)];
                    }
                }
            },
        )
    };
    let before = score(current);
    let after = score(&net);
    Ok(Candidate {
        net,
        current_rmse: before.model.rmse_mv,
        candidate_rmse: after.model.rmse_mv,
        current_f1: before.model.spikes.f1,
        candidate_f1: after.model.spikes.f1,
        epochs: history.len(),
        train_windows: train_w.len(),
        holdout_windows: after.model.windows,
    })
}

/// The card of a retrained model: the parent's, with new provenance,
/// validation (the held-out scores) and checksum.
pub fn candidate_card(
    parent: &ModelCard,
    c: &Candidate,
    onnx: &[u8],
    trigger: &str,
    parent_label: &str,
    data_steps: usize,
    cfg: &RetrainConfig,
) -> ModelCard {
    let mut card = parent.clone();
    card.onnx_sha256 = crate::forecast::sha256_hex(onnx);
    card.parent = Some(parent_label.to_string());
    card.provenance = serde_json::json!({
        "tool": format!("neurostimd {} retrain", env!("CARGO_PKG_VERSION")),
        "trigger": trigger,
        "data": "the daemon's own recent record (closed loop)",
        "data_ms": data_steps as f64 * parent.dt_ms,
        "fine_tuned_from": parent_label,
        "schedule": cfg.schedule,
        "epochs_run": c.epochs,
        "train_windows": c.train_windows,
    });
    card.validation = Some(serde_json::json!({
        "split": format!("by time: train {:.2}, validation {:.2}, held-out {:.2} of the newest data", 1.0 - cfg.validation - cfg.holdout, cfg.validation, cfg.holdout),
        "metric": "held-out windows, stride 1; RMSE in mV per horizon step; spikes: upward -20 mV crossings matched within ±1 ms",
        "per_source": [{
            "data": "held-out recent data",
            "windows": c.holdout_windows,
            "rmse_mv_per_step": c.candidate_rmse,
            "spike_f1": c.candidate_f1,
            "parent_rmse_mv_per_step": c.current_rmse,
            "parent_spike_f1": c.current_f1,
        }],
    }));
    card
}

/// What the supervisor is doing (for status and metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Idle = 0,
    Collecting = 1,
    Training = 2,
    Validating = 3,
}

impl Phase {
    fn from_u8(x: u8) -> Phase {
        match x {
            1 => Phase::Collecting,
            2 => Phase::Training,
            3 => Phase::Validating,
            _ => Phase::Idle,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Collecting => "collecting",
            Phase::Training => "training",
            Phase::Validating => "validating",
        }
    }
}

/// One retraining, as it went.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    pub trigger: String,
    /// Plant time of the trigger, and of the decision, s.
    pub triggered_s: f64,
    pub decided_s: f64,
    pub wall_training_s: f64,
    pub data_s: f64,
    pub current_rmse_mv: f64,
    pub candidate_rmse_mv: f64,
    pub accepted: bool,
    pub version: Option<u32>,
    pub note: String,
}

/// State shared with the session, the record consumer and the service.
pub struct Shared {
    pub live: Arc<LiveForecast>,
    pub recent: Arc<RecentData>,
    /// True while a candidate is being trained (the loop splits its
    /// latency histogram on it).
    pub training: Arc<AtomicBool>,
    demand: AtomicU64,
    phase: AtomicU8,
    stop: AtomicBool,
    store: Mutex<ModelStore>,
    swaps: Sender<ModelSwap>,
    notes: Sender<Note>,
    /// Version and label (`vN NAME`) of the running model, and its sha256.
    current: Mutex<(u32, String)>,
    current_sha: Mutex<String>,
    attempts: Mutex<Vec<Attempt>>,
    max_batch: usize,
    period_ms: f64,
    /// The drift rule (`[retrain]`), for the consumer's monitor.
    pub on_drift: bool,
    pub drift_multiple: f64,
    pub drift_window_ms: f64,
    pub online_reference: bool,
    pub decimation: usize,
    pub t_out: usize,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("retrain::Shared")
            .field("current", &self.current_version())
            .field("phase", &self.phase())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The consumer's drift monitor for this configuration.
    pub fn monitor(&self) -> drift::DriftMonitor {
        drift::DriftMonitor::new(
            self.decimation,
            self.t_out,
            self.period_ms,
            drift::DriftRule {
                window_ms: self.drift_window_ms,
                multiple: self.drift_multiple,
                enabled: self.on_drift,
                online_reference: self.online_reference,
                score_off_plan: true,
            },
            self.live.clone(),
        )
    }

    /// Ask for a retraining now (API, CLI).
    pub fn request(&self) {
        self.demand.fetch_add(1, Ordering::Relaxed);
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    pub fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().expect("attempts").clone()
    }

    pub fn current_version(&self) -> (u32, String) {
        self.current.lock().expect("current").clone()
    }

    fn plant_s(&self) -> f64 {
        self.live.newest_index.load(Ordering::Relaxed) as f64 * self.period_ms / 1000.0
    }

    fn event(&self, text: String) {
        tracing::info!(target: "neurostimd::retrain", "{text}");
        let _ = self.notes.try_send(Note::Event {
            line: EventLine::Retraining,
            text,
        });
    }

    /// Put the previous model version back (store and planner).
    pub fn rollback(&self) -> Result<String, String> {
        let mut store = self.store.lock().expect("store");
        let (from, to) = store.rollback().map_err(|e| e.to_string())?;
        let path = store.path_of(&to);
        drop(store);
        let f =
            Forecaster::load(&path, self.max_batch, Engine::Native).map_err(|e| e.to_string())?;
        let reference = if self.online_reference {
            f64::NAN
        } else {
            drift::card_reference_rmse(f.card()).unwrap_or(f64::NAN)
        };
        let label = format!("v{} {}", to.version, f.card().name);
        self.swaps
            .try_send(ModelSwap {
                forecaster: f,
                label: label.clone(),
            })
            .map_err(|_| "a model swap is already pending; try again".to_string())?;
        self.live.reference_rmse_mv.set(reference);
        *self.current.lock().expect("current") = (to.version, label.clone());
        *self.current_sha.lock().expect("current") = to.onnx_sha256.clone();
        let text = format!("rolled back from v{} to {label}", from.version);
        self.event(text.clone());
        Ok(text)
    }

    /// The rolling forecast error (model, persistence), once per second of
    /// plant time.
    pub fn timeline(&self) -> Vec<(f64, f64, f64)> {
        self.live.timeline.lock().expect("timeline").clone()
    }

    pub fn status(&self) -> serde_json::Value {
        let (v, label) = self.current_version();
        let name = label.split_once(' ').map_or(label.as_str(), |(_, n)| n);
        serde_json::json!({
            "version": v,
            "name": name,
            "sha256": *self.current_sha.lock().expect("current"),
            "state": self.phase().name(),
            "model_version": v,
            "model": label,
            "phase": self.phase().name(),
            "rolling_forecast_rmse_mv": finite_or_null(self.live.rolling_rmse_mv.get()),
            "rolling_persistence_rmse_mv": finite_or_null(self.live.persistence_rmse_mv.get()),
            "reference_rmse_mv": finite_or_null(self.live.reference_rmse_mv.get()),
            "attempts": self.attempts(),
        })
    }
}

fn finite_or_null(x: f64) -> serde_json::Value {
    if x.is_finite() {
        x.into()
    } else {
        serde_json::Value::Null
    }
}

/// The retraining thread and what it shares.
pub struct Supervisor {
    pub shared: Arc<Shared>,
    handle: std::thread::JoinHandle<()>,
}

/// What the supervisor needs to start.
pub struct SupervisorSetup<'a> {
    pub config: RetrainConfig,
    pub store: ModelStore,
    /// The running model (a copy of its weights is fine-tuned).
    pub model: &'a Forecaster,
    pub version: (u32, String),
    pub decimation: usize,
    pub period_ms: f64,
    pub swaps: Sender<ModelSwap>,
    pub notes: Sender<Note>,
    /// Keep off this CPU (the loop's).
    pub avoid_cpu: Option<usize>,
}

impl Supervisor {
    pub fn start(s: SupervisorSetup<'_>) -> Result<Supervisor, String> {
        let card = s.model.card().clone();
        let reference = if s.config.drift_reference_online {
            f64::NAN
        } else {
            drift::card_reference_rmse(&card).unwrap_or(f64::NAN)
        };
        let steps = (s.config.buffer_ms / card.dt_ms).ceil() as usize;
        let shared = Arc::new(Shared {
            live: Arc::new(LiveForecast::new(reference)),
            recent: Arc::new(RecentData::new(s.decimation, card.dt_ms, steps)),
            training: Arc::new(AtomicBool::new(false)),
            demand: AtomicU64::new(0),
            phase: AtomicU8::new(Phase::Idle as u8),
            stop: AtomicBool::new(false),
            store: Mutex::new(s.store),
            swaps: s.swaps,
            notes: s.notes,
            current: Mutex::new(s.version),
            current_sha: Mutex::new(card.onnx_sha256.clone()),
            attempts: Mutex::new(Vec::new()),
            max_batch: s.model.max_batch(),
            period_ms: s.period_ms,
            on_drift: s.config.on_drift,
            drift_multiple: s.config.drift_multiple,
            drift_window_ms: s.config.drift_window_ms,
            online_reference: s.config.drift_reference_online,
            decimation: s.decimation,
            t_out: card.t_out,
        });
        let net = Net::from_forecaster(s.model)?;
        let sh = shared.clone();
        let cfg = s.config;
        let avoid = s.avoid_cpu;
        let handle = std::thread::Builder::new()
            .name("retrain".into())
            .spawn(move || {
                lower_priority(avoid);
                supervise(&sh, cfg, net, card);
            })
            .map_err(|e| format!("cannot start the retraining thread: {e}"))?;
        Ok(Supervisor { shared, handle })
    }

    /// Stop (a training in progress is abandoned at its next mini-batch)
    /// and wait for the thread.
    pub fn stop(self) -> Vec<Attempt> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
        self.shared.attempts()
    }
}

/// Background priority, off the loop's CPU: training must not move the
/// loop's latency.
fn lower_priority(avoid: Option<usize>) {
    if let Some(cpu) = avoid {
        crate::rt::exclude_cpu(cpu);
    }
    #[cfg(target_os = "linux")]
    // SAFETY: plain calls on the calling thread.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 19);
        }
    }
}

fn supervise(sh: &Shared, cfg: RetrainConfig, net: Net, card: ModelCard) {
    let dt = card.dt_ms;
    let need_steps = (cfg.data_ms / dt).ceil() as u64;
    let mut r = Rounds {
        net,
        card,
        served_demand: 0,
        follow_up: None,
        drift_start_step: 0,
        last_goal: f64::NAN,
        last_periodic: Instant::now(),
    };
    let nap = Duration::from_millis(20);
    let stopped = || sh.stop.load(Ordering::Relaxed);
    while !stopped() {
        // ------------------------------------------------ wait for a trigger
        let Some(trigger) = r.next_trigger(sh, &cfg) else {
            std::thread::sleep(nap);
            continue;
        };
        let drift = trigger.starts_with("drift");
        let follow_round = trigger.starts_with("follow-up");
        if drift {
            r.last_goal = sh.live.reference_rmse_mv.get();
        }
        let triggered_s = sh.plant_s();
        sh.event(format!("retraining triggered ({trigger})"));
        // ------------------------------------------------- collect the data
        // After drift, only data from after the detection: the neuron the
        // model must learn is the changed one.
        sh.phase.store(Phase::Collecting as u8, Ordering::Relaxed);
        let start = sh.recent.total_steps();
        if drift {
            r.drift_start_step = start;
        }
        loop {
            let have = sh.recent.total_steps();
            let ready = if drift {
                have.saturating_sub(start) >= need_steps
            } else {
                have >= need_steps
            };
            if ready || stopped() {
                break;
            }
            std::thread::sleep(nap);
        }
        if stopped() {
            break;
        }
        // A follow-up round learns from everything since the drift (at most
        // twice `data`): more of the changed cell than the round before.
        let steps = if follow_round {
            (sh.recent.total_steps() - r.drift_start_step).clamp(need_steps, 2 * need_steps)
        } else {
            need_steps
        };
        let data = sh.recent.newest(steps as usize);
        // ------------------------------------------------------------ train
        sh.phase.store(Phase::Training as u8, Ordering::Relaxed);
        sh.training.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        let result = finetune(&r.net, &r.card, &data, &cfg, &sh.stop);
        sh.training.store(false, Ordering::Relaxed);
        let wall = t0.elapsed().as_secs_f64();
        sh.phase.store(Phase::Validating as u8, Ordering::Relaxed);
        let mut attempt = Attempt {
            trigger: trigger.clone(),
            triggered_s,
            decided_s: 0.0,
            wall_training_s: wall,
            data_s: data.len() as f64 * dt / 1000.0,
            current_rmse_mv: f64::NAN,
            candidate_rmse_mv: f64::NAN,
            accepted: false,
            version: None,
            note: String::new(),
        };
        let after_drift = drift || follow_round;
        r.decide(sh, &cfg, result, &mut attempt, data.len(), after_drift);
        attempt.decided_s = sh.plant_s();
        sh.event(attempt.note.clone());
        sh.attempts.lock().expect("attempts").push(attempt);
        sh.phase.store(Phase::Idle as u8, Ordering::Relaxed);
        // Drift may fire again only after the cool-down.
        sh.live.rearm_after(cfg.cooldown_ms);
    }
    sh.phase.store(Phase::Idle as u8, Ordering::Relaxed);
}

/// What the supervisor carries from one retraining round to the next.
struct Rounds {
    /// The model running now, which the next round fine-tunes.
    net: Net,
    card: ModelCard,
    served_demand: u64,
    /// After a drift episode's accepted candidate: the error before the
    /// drift, which further rounds (on more post-change data) aim at while
    /// candidates keep improving.
    follow_up: Option<f64>,
    drift_start_step: u64,
    last_goal: f64,
    last_periodic: Instant,
}

impl Rounds {
    /// Why to retrain now, if at all: drift first, then a follow-up round,
    /// then an operator's demand, then the period.
    fn next_trigger(&mut self, sh: &Shared, cfg: &RetrainConfig) -> Option<String> {
        let demand = sh.demand.load(Ordering::Relaxed);
        let reference = sh.live.reference_rmse_mv.get();
        let follow = match self.follow_up {
            // The new model's own level is measured once its window fills.
            Some(goal) if reference.is_finite() => {
                if reference > 1.2 * goal {
                    Some(goal)
                } else {
                    self.follow_up = None;
                    None
                }
            }
            _ => None,
        };
        if sh.live.drift.swap(false, Ordering::Acquire) {
            self.follow_up = None;
            Some(format!(
                "drift: rolling forecast RMSE {:.2} mV > {} x reference {:.2} mV",
                sh.live.rolling_rmse_mv.get(),
                cfg.drift_multiple,
                sh.live.reference_rmse_mv.get()
            ))
        } else if let Some(goal) = follow {
            self.follow_up = None;
            Some(format!(
                "follow-up: the new model's error {reference:.2} mV is still above the {goal:.2} mV before the drift"
            ))
        } else if demand != self.served_demand {
            self.served_demand = demand;
            Some("on demand".to_string())
        } else if cfg
            .periodic_ms
            .is_some_and(|p| self.last_periodic.elapsed().as_secs_f64() * 1000.0 >= p)
        {
            self.last_periodic = Instant::now();
            Some("periodic".to_string())
        } else {
            None
        }
    }

    /// The gate: adopt the candidate if it beats the running model by the
    /// margin, and say why either way in `attempt`.
    fn decide(
        &mut self,
        sh: &Shared,
        cfg: &RetrainConfig,
        result: Result<Candidate, String>,
        attempt: &mut Attempt,
        data_steps: usize,
        after_drift: bool,
    ) {
        let c = match result {
            Err(e) => {
                attempt.note = format!("no candidate: {e}");
                return;
            }
            Ok(c) => c,
        };
        attempt.current_rmse_mv = rms(&c.current_rmse);
        attempt.candidate_rmse_mv = rms(&c.candidate_rmse);
        if !accept(
            attempt.current_rmse_mv,
            attempt.candidate_rmse_mv,
            cfg.margin,
        ) {
            attempt.note = format!(
                "candidate rejected: held-out RMSE {:.3} mV vs running model {:.3} mV (needs {:.0}% lower)",
                attempt.candidate_rmse_mv,
                attempt.current_rmse_mv,
                cfg.margin * 100.0
            );
            return;
        }
        match adopt(sh, &c, &self.card, &attempt.trigger, data_steps, cfg) {
            Ok((v, new_card, reference)) => {
                attempt.accepted = true;
                attempt.version = Some(v);
                attempt.note = format!(
                    "candidate v{v} accepted: held-out RMSE {:.3} mV vs running model {:.3} mV; swapped in",
                    attempt.candidate_rmse_mv, attempt.current_rmse_mv
                );
                self.net = c.net;
                self.card = new_card;
                if sh.online_reference {
                    // Measured afresh once the new model runs.
                    sh.live.reference_rmse_mv.set(f64::NAN);
                    if after_drift {
                        self.follow_up = Some(self.last_goal);
                    }
                } else {
                    sh.live.reference_rmse_mv.set(reference);
                }
            }
            Err(e) => attempt.note = format!("candidate not adopted: {e}"),
        }
    }
}

/// Export, store and load the candidate (the loader checks the export
/// against tract), then hand it to the planner.
fn adopt(
    sh: &Shared,
    c: &Candidate,
    parent: &ModelCard,
    trigger: &str,
    data_steps: usize,
    cfg: &RetrainConfig,
) -> Result<(u32, ModelCard, f64), String> {
    let onnx = export::to_onnx(&c.net, env!("CARGO_PKG_VERSION"));
    let (cur_v, _) = sh.current_version();
    let parent_label = format!(
        "v{cur_v} {} (sha256 {})",
        parent.name,
        &parent.onnx_sha256[..12.min(parent.onnx_sha256.len())]
    );
    let card = candidate_card(parent, c, &onnx, trigger, &parent_label, data_steps, cfg);
    let card_json = serde_json::to_string_pretty(&card).expect("card json") + "\n";
    let mut store = sh.store.lock().expect("store");
    let (path, v) = store
        .add(
            &card.name,
            &onnx,
            card_json.as_bytes(),
            format!("retrained: {trigger}"),
            rms(&c.candidate_rmse),
        )
        .map_err(|e| e.to_string())?;
    let f = Forecaster::load(&path, sh.max_batch, Engine::Native).map_err(|e| e.to_string())?;
    let label = format!("v{} {}", v.version, card.name);
    sh.swaps
        .try_send(ModelSwap {
            forecaster: f,
            label: label.clone(),
        })
        .map_err(|_| "a model swap is already pending".to_string())?;
    store.make_current(v.version).map_err(|e| e.to_string())?;
    drop(store);
    *sh.current.lock().expect("current") = (v.version, label);
    *sh.current_sha.lock().expect("current") = v.onnx_sha256.clone();
    let reference = rms(&c.candidate_rmse);
    Ok((v.version, card, reference))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_swap_rule_needs_a_real_margin() {
        assert!(accept(2.0, 1.8, 0.05));
        assert!(!accept(2.0, 1.95, 0.05));
        assert!(!accept(2.0, 2.5, 0.0));
        assert!(!accept(2.0, f64::NAN, 0.05));
        assert!(!accept(f64::NAN, 1.0, 0.05));
    }
}

/// Model management the control API exposes (`POST /model/retrain`,
/// `POST /model/rollback`, the model part of `GET /status` and the
/// metrics). The recorder/retraining work (issue 7) implements it and hands
/// it to [`ServiceSetup::model_ops`]; without it the retrain and rollback
/// calls answer 503 and the metrics report the loaded model's card and
/// retraining state `disabled`.
///
/// Calls come from tokio's blocking pool (never the real-time thread) and
/// may take long; they must not block the loop (a swap goes through the
/// planner's own hand-off).
pub trait ModelOps: Send + Sync {
    /// Start (or run) a retraining from the recorded data; the JSON says
    /// what happened (e.g. `{"state": "training", "job": 3}`).
    fn retrain(&self) -> Result<serde_json::Value, String>;
    /// Return to the previous model version.
    fn rollback(&self) -> Result<serde_json::Value, String>;
    /// The model in use and the retraining state. Keys the metrics read:
    /// `version` (number), `name`, `sha256`, `state` (string, e.g.
    /// `idle`, `training`, `validating`, `failed`).
    fn status(&self) -> serde_json::Value;
}

/// The service's handle on retraining ([`ModelOps`]). The
/// service starts before the run's retraining thread exists, so the handle
/// is bound when the session starts it.
#[derive(Default)]
pub struct RetrainOps {
    slot: Arc<std::sync::OnceLock<Arc<Shared>>>,
}

impl RetrainOps {
    pub fn new() -> RetrainOps {
        RetrainOps::default()
    }

    /// What the session fills in once retraining runs.
    pub fn slot(&self) -> Arc<std::sync::OnceLock<Arc<Shared>>> {
        self.slot.clone()
    }

    fn shared(&self) -> Result<&Arc<Shared>, String> {
        self.slot.get().ok_or_else(|| {
            "retraining has not started yet (the loop is starting); try again".into()
        })
    }
}

impl ModelOps for RetrainOps {
    fn retrain(&self) -> Result<serde_json::Value, String> {
        let s = self.shared()?;
        s.request();
        Ok(serde_json::json!({
            "requested": true,
            "state": s.phase().name(),
            "note": "the retraining thread takes the request within 20 ms; GET /status shows its phase and every attempt",
        }))
    }

    fn rollback(&self) -> Result<serde_json::Value, String> {
        let s = self.shared()?;
        s.rollback().map(|text| {
            serde_json::json!({ "rolled_back": true, "model": s.current_version().1, "note": text })
        })
    }

    fn status(&self) -> serde_json::Value {
        match self.slot.get() {
            Some(s) => s.status(),
            None => serde_json::json!({ "state": "starting" }),
        }
    }
}
