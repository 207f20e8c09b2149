//! What retraining watches and learns from, kept by the record consumer
//! (never the real-time thread): the recent data at the model's step, and
//! the rolling error of the forecasts the planner made against what the
//! cell then did.

use crate::record::Record;
use crate::train::dataset::Series;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// An f64 shared through an atomic (bit pattern), for figures read by
/// other threads (metrics, the supervisor).
#[derive(Debug, Default)]
pub struct AtomicF64(AtomicU64);

impl AtomicF64 {
    pub fn new(x: f64) -> AtomicF64 {
        AtomicF64(AtomicU64::new(x.to_bits()))
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
    pub fn set(&self, x: f64) {
        self.0.store(x.to_bits(), Ordering::Relaxed)
    }
}

/// Forecast-quality figures shared between the monitor, the supervisor and
/// whoever reports them.
#[derive(Debug)]
pub struct LiveForecast {
    /// Rolling RMS forecast error, mV (NaN until the window has data).
    pub rolling_rmse_mv: AtomicF64,
    /// The running model's validation RMSE, mV: what drift is measured
    /// against.
    pub reference_rmse_mv: AtomicF64,
    /// Set by the monitor when drift is detected; taken by the supervisor.
    pub drift: AtomicBool,
    /// Sample index at which drift was last detected.
    pub drift_index: AtomicU64,
    /// Newest sample index seen by the consumer.
    pub newest_index: AtomicU64,
    /// A cool-down (ms) the monitor should start from its newest sample,
    /// re-arming the drift rule after it; NaN: none pending.
    rearm_ms: AtomicF64,
    /// Rolling RMS error of persistence (V stays at its value at the
    /// forecast's base) on the same forecasts' targets, mV: how hard the
    /// cell is to forecast at all, so that errors before and after a
    /// regime change can be compared as skill.
    pub persistence_rmse_mv: AtomicF64,
    /// Once per second of plant time: (t s, rolling model RMSE, rolling
    /// persistence RMSE), mV; NaN while the window fills.
    pub timeline: Mutex<Vec<(f64, f64, f64)>>,
}

impl LiveForecast {
    pub fn new(reference_rmse_mv: f64) -> LiveForecast {
        LiveForecast {
            rolling_rmse_mv: AtomicF64::new(f64::NAN),
            reference_rmse_mv: AtomicF64::new(reference_rmse_mv),
            drift: AtomicBool::new(false),
            drift_index: AtomicU64::new(0),
            newest_index: AtomicU64::new(0),
            rearm_ms: AtomicF64::new(f64::NAN),
            persistence_rmse_mv: AtomicF64::new(f64::NAN),
            timeline: Mutex::new(Vec::new()),
        }
    }

    /// Re-arm drift detection `cooldown_ms` after the newest sample (after
    /// a retraining decision).
    pub fn rearm_after(&self, cooldown_ms: f64) {
        self.rearm_ms.set(cooldown_ms);
    }
}

/// The newest model steps of (V, applied I), for retraining.
pub struct RecentData {
    inner: Mutex<RecentInner>,
    decimation: usize,
    dt_ms: f64,
}

struct RecentInner {
    v: VecDeque<f32>,
    i: VecDeque<f32>,
    capacity: usize,
    /// Partial step being accumulated.
    acc_i: f64,
    acc_n: usize,
    /// Model steps completed since the start.
    total: u64,
    /// Sample index of the first sample of the partial step.
    last_index: Option<u64>,
}

impl RecentData {
    /// Keep `capacity` model steps of `decimation` samples each.
    pub fn new(decimation: usize, dt_ms: f64, capacity: usize) -> RecentData {
        RecentData {
            inner: Mutex::new(RecentInner {
                v: VecDeque::with_capacity(capacity),
                i: VecDeque::with_capacity(capacity),
                capacity,
                acc_i: 0.0,
                acc_n: 0,
                total: 0,
                last_index: None,
            }),
            decimation: decimation.max(1),
            dt_ms,
        }
    }

    /// Add a block of records (decimated the forecaster's way: V at the
    /// step's end, current averaged over it). A gap in the sample numbers
    /// (lost samples, a plant interruption) restarts the stream: steps
    /// before it are dropped, so no training window straddles the gap.
    pub fn push_block(&self, block: &[Record]) {
        let mut g = self.inner.lock().expect("recent data lock");
        for r in block {
            if g.last_index.is_some_and(|l| r.index != l + 1) {
                g.v.clear();
                g.i.clear();
                g.acc_i = 0.0;
                g.acc_n = 0;
            }
            g.last_index = Some(r.index);
            g.acc_i += r.applied;
            g.acc_n += 1;
            if g.acc_n == self.decimation {
                if g.v.len() == g.capacity {
                    g.v.pop_front();
                    g.i.pop_front();
                }
                let mean = (g.acc_i / self.decimation as f64) as f32;
                g.v.push_back(r.v_mv as f32);
                g.i.push_back(mean);
                g.acc_i = 0.0;
                g.acc_n = 0;
                g.total += 1;
            }
        }
    }

    /// Model steps completed so far.
    pub fn total_steps(&self) -> u64 {
        self.inner.lock().expect("recent data lock").total
    }

    /// The newest `steps` model steps (fewer if not held), contiguous.
    pub fn newest(&self, steps: usize) -> Series {
        let g = self.inner.lock().expect("recent data lock");
        let n = steps.min(g.v.len());
        let from = g.v.len() - n;
        Series {
            dt_ms: self.dt_ms,
            v: g.v.range(from..).copied().collect(),
            i: g.i.range(from..).copied().collect(),
        }
    }
}

/// When forecast error counts as drift (`[retrain]`).
#[derive(Clone, Copy, Debug)]
pub struct DriftRule {
    /// Rolling window, ms of plant time.
    pub window_ms: f64,
    /// Drift: rolling error above this multiple of the reference.
    pub multiple: f64,
    /// Detect drift at all (else only measure).
    pub enabled: bool,
    /// The reference is measured online (see [`DriftMonitor`]).
    pub online_reference: bool,
    /// Score forecasts also on targets after the loop replaced the plan's
    /// current (else stop each forecast there).
    pub score_off_plan: bool,
}

/// Rolling forecast error and the drift rule.
pub struct DriftMonitor {
    decimation: u64,
    t_out: usize,
    /// V by sample index (ring).
    v: Vec<f32>,
    /// By sample index (ring): 1 + the newest off-plan sample at or before
    /// it (0: none yet). A forecast is scored only up to the first sample
    /// after its base where the loop applied a current of its own.
    off_plan: Vec<u64>,
    newest_off_plan: u64,
    /// Samples past a forecast's horizon before it is scored (see
    /// [`DriftMonitor::delay_scoring`]).
    score_delay: u64,
    newest: Option<u64>,
    oldest_held: u64,
    pending: VecDeque<(u64, Box<[f32]>)>,
    /// (sample index of the row, its mean squared error, persistence's).
    window: VecDeque<(u64, f64, f64)>,
    sum: f64,
    sum_persistence: f64,
    window_samples: u64,
    multiple: f64,
    enabled: bool,
    /// Measure the reference online: the model's own rolling error over
    /// its first full window in use (after start and after each swap).
    online_reference: bool,
    reference_pending: bool,
    /// No new trigger before this sample index.
    quiet_until: u64,
    period_ms: f64,
    live: std::sync::Arc<LiveForecast>,
    next_timeline: u64,
    per_second: u64,
}

const RING: usize = 1 << 15;

impl DriftMonitor {
    pub fn new(
        decimation: usize,
        t_out: usize,
        period_ms: f64,
        rule: DriftRule,
        live: std::sync::Arc<LiveForecast>,
    ) -> DriftMonitor {
        let DriftRule {
            window_ms,
            multiple,
            enabled,
            online_reference,
            score_off_plan,
        } = rule;
        let per_second = (1000.0 / period_ms).round().max(1.0) as u64;
        DriftMonitor {
            decimation: decimation.max(1) as u64,
            t_out,
            v: vec![f32::NAN; RING],
            off_plan: vec![0; if score_off_plan { 0 } else { RING }],
            newest_off_plan: 0,
            score_delay: 0,
            newest: None,
            oldest_held: 0,
            pending: VecDeque::new(),
            window: VecDeque::new(),
            sum: 0.0,
            sum_persistence: 0.0,
            window_samples: (window_ms / period_ms).round().max(1.0) as u64,
            multiple,
            enabled,
            online_reference,
            reference_pending: online_reference,
            quiet_until: 0,
            period_ms,
            live,
            next_timeline: per_second,
            per_second,
        }
    }

    /// Score each forecast only once the records reach `samples` past its
    /// horizon. For forecasts that arrive late (the guard's forecasts of
    /// what was applied, made at the first plan after the horizon): under
    /// the free clock every record after that plan follows its note, so a
    /// forecast is scored at the same record whatever the threads' timing
    /// and the run stays reproducible. `samples`: the replanning period.
    pub fn delay_scoring(&mut self, samples: u64) {
        self.score_delay = samples;
    }

    /// A planning tick's forecast (mV per model step of the horizon).
    pub fn forecast(&mut self, base_index: u64, values: Box<[f32]>) {
        if values.len() == self.t_out {
            self.pending.push_back((base_index, values));
        }
    }

    /// The model changed: errors of the old one no longer describe it.
    pub fn model_swapped(&mut self, index: u64, quiet_ms: f64) {
        self.window.clear();
        self.sum = 0.0;
        self.sum_persistence = 0.0;
        self.pending.retain(|(b, _)| *b >= index);
        self.quiet_until = index + (quiet_ms / self.period_ms) as u64;
        self.live.rolling_rmse_mv.set(f64::NAN);
        self.reference_pending = self.online_reference;
    }

    /// Records in order of sample index; scores every forecast whose
    /// horizon they complete.
    pub fn records(&mut self, block: &[Record]) {
        for r in block {
            if self.newest.is_some_and(|n| r.index <= n) {
                continue;
            }
            if self.newest.is_none() {
                self.oldest_held = r.index;
            }
            self.v[(r.index as usize) % RING] = r.v_mv as f32;
            if !self.off_plan.is_empty() {
                if r.off_plan {
                    self.newest_off_plan = r.index + 1;
                }
                self.off_plan[(r.index as usize) % RING] = self.newest_off_plan;
            }
            self.newest = Some(r.index);
            self.oldest_held = self
                .oldest_held
                .max(r.index.saturating_sub(RING as u64 - 1));
            if r.index >= self.next_timeline {
                self.next_timeline = r.index + self.per_second;
                let rm = self.live.rolling_rmse_mv.get();
                let rp = self.live.persistence_rmse_mv.get();
                self.live
                    .timeline
                    .lock()
                    .expect("timeline")
                    .push((r.t_ms / 1000.0, rm, rp));
            }
        }
        let Some(newest) = self.newest else { return };
        self.live.newest_index.store(newest, Ordering::Relaxed);
        let rearm = self.live.rearm_ms.get();
        if rearm.is_finite() {
            self.live.rearm_ms.set(f64::NAN);
            self.quiet_until = newest + (rearm / self.period_ms) as u64;
        }
        let span = self.t_out as u64 * self.decimation;
        while let Some((base, _)) = self.pending.front() {
            let base = *base;
            if base + span + self.score_delay > newest {
                break;
            }
            let (_, values) = self.pending.pop_front().expect("checked");
            if base + self.decimation < self.oldest_held {
                continue;
            }
            let v0 = self.v[(base as usize) % RING];
            let (mut se, mut sp) = (0.0, 0.0);
            let mut n = 0;
            for (j, &f) in values.iter().enumerate() {
                let at = base + (j as u64 + 1) * self.decimation;
                if !self.off_plan.is_empty() && self.off_plan[(at as usize) % RING] > base + 1 {
                    // The current this forecast assumed was not applied
                    // from some sample after its base on.
                    break;
                }
                let v = self.v[(at as usize) % RING];
                if f.is_finite() && v.is_finite() && v0.is_finite() {
                    se += ((f - v) as f64).powi(2);
                    sp += ((v0 - v) as f64).powi(2);
                    n += 1;
                }
            }
            if n > 0 {
                let (mse, msp) = (se / n as f64, sp / n as f64);
                self.window.push_back((base, mse, msp));
                self.sum += mse;
                self.sum_persistence += msp;
            }
        }
        while let Some(&(b, mse, msp)) = self.window.front() {
            if b + self.window_samples >= newest {
                break;
            }
            self.window.pop_front();
            self.sum -= mse;
            self.sum_persistence -= msp;
        }
        // Half a window of rows at least before the figure means anything.
        let span_held =
            self.window.back().map_or(0, |b| b.0) - self.window.front().map_or(0, |f| f.0);
        if self.window.is_empty() || span_held < self.window_samples / 2 {
            return;
        }
        let rmse = (self.sum.max(0.0) / self.window.len() as f64).sqrt();
        self.live.rolling_rmse_mv.set(rmse);
        self.live
            .persistence_rmse_mv
            .set((self.sum_persistence.max(0.0) / self.window.len() as f64).sqrt());
        if self.reference_pending {
            // The first full window of the model in use is its reference.
            if span_held * 10 >= self.window_samples * 9 {
                self.reference_pending = false;
                self.live.reference_rmse_mv.set(rmse);
            }
            return;
        }
        let reference = self.live.reference_rmse_mv.get();
        if self.enabled
            && newest >= self.quiet_until
            && reference.is_finite()
            && rmse > self.multiple * reference
            && !self.live.drift.load(Ordering::Relaxed)
        {
            self.live.drift_index.store(newest, Ordering::Relaxed);
            self.live.drift.store(true, Ordering::Release);
            // One detection per episode: the supervisor's decision (or the
            // cool-down) re-arms it.
            self.quiet_until = u64::MAX;
        }
    }

    /// Current rolling RMSE (mV), NaN if not yet meaningful.
    pub fn rolling(&self) -> f64 {
        self.live.rolling_rmse_mv.get()
    }
}

/// The RMS over horizon steps of a card's per-step validation RMSE,
/// averaged (in the mean-square sense) over its data sources: the figure
/// drift is measured against. `None` if the card has none.
pub fn card_reference_rmse(card: &crate::forecast::card::ModelCard) -> Option<f64> {
    let v = card.validation.as_ref()?;
    let mut total = 0.0;
    let mut n = 0usize;
    for src in v["per_source"].as_array()? {
        for x in src["rmse_mv_per_step"].as_array()? {
            let x = x.as_f64()?;
            total += x * x;
            n += 1;
        }
    }
    (n > 0).then(|| (total / n as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn rec(index: u64, v: f64) -> Record {
        Record {
            index,
            t_ms: index as f64 * 0.1,
            v_mv: v,
            applied: 1.0,
            requested: 0.0,
            command: 0.0,
            cause: None,
            forecast: f32::NAN,
            off_plan: false,
        }
    }

    #[test]
    fn rolling_error_is_measured_and_drift_fires_once() {
        let live = Arc::new(LiveForecast::new(1.0));
        // 0.1 ms samples, 5-sample steps, 4-step horizon, 100 ms window.
        let rule = |online| DriftRule {
            window_ms: 100.0,
            multiple: 2.0,
            enabled: true,
            online_reference: online,
            score_off_plan: true,
        };
        let mut m = DriftMonitor::new(5, 4, 0.1, rule(false), live.clone());
        let mut index = 0u64;
        let mut run = |m: &mut DriftMonitor, err: f32, blocks: usize| {
            for _ in 0..blocks {
                let base = index;
                m.forecast(base, vec![-65.0 + err; 4].into_boxed_slice());
                let block: Vec<Record> = (0..20).map(|k| rec(base + 1 + k, -65.0)).collect();
                index += 20;
                m.records(&block);
            }
        };
        run(&mut m, 1.0, 200);
        assert!((m.rolling() - 1.0).abs() < 1e-6, "{}", m.rolling());
        assert!(!live.drift.load(Ordering::Relaxed));
        run(&mut m, 3.0, 200);
        assert!((m.rolling() - 3.0).abs() < 1e-6);
        assert!(live.drift.load(Ordering::Relaxed));
        // Once per episode.
        live.drift.store(false, Ordering::Relaxed);
        run(&mut m, 3.0, 50);
        assert!(!live.drift.load(Ordering::Relaxed));
        live.rearm_after(0.0);
        run(&mut m, 3.0, 10);
        assert!(live.drift.load(Ordering::Relaxed));
    }

    #[test]
    fn a_forecast_is_scored_only_up_to_the_loops_own_current() {
        // Steps 1-2 miss by 1 mV, steps 3-4 by 5 mV; with the loop's own
        // current (the spike reflex) from between steps 2 and 3 on, only
        // steps 1-2 asked about what was applied.
        let rule = |score_off_plan| DriftRule {
            window_ms: 100.0,
            multiple: 2.0,
            enabled: true,
            online_reference: false,
            score_off_plan,
        };
        let run = |off_plan_at: Option<u64>, score_off_plan: bool| {
            let live = Arc::new(LiveForecast::new(1.0));
            let mut m = DriftMonitor::new(5, 4, 0.1, rule(score_off_plan), live);
            let mut index = 0u64;
            for _ in 0..200 {
                let base = index;
                m.forecast(base, vec![-64.0, -64.0, -60.0, -60.0].into_boxed_slice());
                let block: Vec<Record> = (0..20)
                    .map(|k| Record {
                        off_plan: off_plan_at == Some(k + 1),
                        ..rec(base + 1 + k, -65.0)
                    })
                    .collect();
                index += 20;
                m.records(&block);
            }
            m.rolling()
        };
        let rolling = |off_plan_at| run(off_plan_at, false);
        let all = ((1.0 + 1.0 + 25.0 + 25.0) / 4.0f64).sqrt();
        // Scoring off-plan targets too (the default), the flag changes
        // nothing.
        assert!((run(Some(11), true) - all).abs() < 1e-6);
        assert!((rolling(None) - all).abs() < 1e-6, "{}", rolling(None));
        assert!(
            (rolling(Some(11)) - 1.0).abs() < 1e-6,
            "{}",
            rolling(Some(11))
        );
        // Off plan at step 2's own sample: step 1 only.
        assert!((rolling(Some(10)) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn the_online_reference_is_the_first_full_window() {
        let live = Arc::new(LiveForecast::new(f64::NAN));
        let rule = DriftRule {
            window_ms: 100.0,
            multiple: 2.0,
            enabled: true,
            online_reference: true,
            score_off_plan: true,
        };
        let mut m = DriftMonitor::new(5, 4, 0.1, rule, live.clone());
        let mut index = 0u64;
        for k in 0..400 {
            let err = if k < 200 { 1.5 } else { 4.0 };
            m.forecast(index, vec![-65.0 + err; 4].into_boxed_slice());
            let block: Vec<Record> = (0..20).map(|j| rec(index + 1 + j, -65.0)).collect();
            index += 20;
            m.records(&block);
            if k == 150 {
                assert!((live.reference_rmse_mv.get() - 1.5).abs() < 1e-6);
                assert!(!live.drift.load(Ordering::Relaxed));
            }
        }
        assert!(live.drift.load(Ordering::Relaxed));
        // A swap measures the new model's reference afresh.
        m.model_swapped(index, 0.0);
        live.drift.store(false, Ordering::Relaxed);
        for _ in 0..200 {
            m.forecast(index, vec![-65.0 + 4.0; 4].into_boxed_slice());
            let block: Vec<Record> = (0..20).map(|j| rec(index + 1 + j, -65.0)).collect();
            index += 20;
            m.records(&block);
        }
        assert!((live.reference_rmse_mv.get() - 4.0).abs() < 1e-6);
        assert!(!live.drift.load(Ordering::Relaxed));
    }

    #[test]
    fn recent_data_decimates_and_restarts_at_gaps() {
        let r = RecentData::new(5, 0.5, 100);
        let block: Vec<Record> = (0..23).map(|k| rec(k, k as f64)).collect();
        r.push_block(&block);
        let s = r.newest(10);
        assert_eq!(s.v, vec![4.0, 9.0, 14.0, 19.0]);
        assert_eq!(s.i, vec![1.0; 4]);
        // A gap drops what came before it.
        let block: Vec<Record> = (40..50).map(|k| rec(k, k as f64)).collect();
        r.push_block(&block);
        assert_eq!(r.newest(10).v, vec![44.0, 49.0]);
        assert_eq!(r.total_steps(), 6);
    }
}
