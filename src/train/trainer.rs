//! The training loop: Adam on mini-batches, gradient clipping by global
//! norm, the learning rate halved on a validation plateau, early stopping on
//! validation loss, keeping the best weights.
//!
//! Meant for a low-priority thread next to the real-time loop: it uses one
//! core, allocates only at start, and reports progress through a callback
//! (the binary draws a progress line on a terminal and logs otherwise).

use super::dataset::Windows;
use super::net::{Net, Workspace};
use serde::Serialize;

/// Optimiser and schedule settings (validated by the config).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Schedule {
    pub epochs: usize,
    pub batch: usize,
    pub learning_rate: f64,
    pub clip_norm: f64,
    /// Epochs without validation improvement before stopping.
    pub patience: usize,
    pub seed: u64,
}

/// One epoch's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub seconds: f64,
    pub windows_per_second: f64,
}

/// Adam with bias correction (Kingma & Ba), flat over all parameters.
struct Adam {
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    t: i32,
    lr: f32,
}

impl Adam {
    fn new(net: &mut Net, lr: f64) -> Adam {
        let shapes: Vec<usize> = net.params_mut().iter().map(|p| p.len()).collect();
        Adam {
            m: shapes.iter().map(|&n| vec![0.0; n]).collect(),
            v: shapes.iter().map(|&n| vec![0.0; n]).collect(),
            t: 0,
            lr: lr as f32,
        }
    }

    fn step(&mut self, net: &mut Net, grad: &mut Net, clip_norm: f64) {
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let mut grads = grad.params_mut();
        let norm = grads
            .iter()
            .flat_map(|g| g.iter())
            .map(|x| (*x as f64) * (*x as f64))
            .sum::<f64>()
            .sqrt();
        let scale = if clip_norm > 0.0 && norm > clip_norm {
            (clip_norm / norm) as f32
        } else {
            1.0
        };
        self.t += 1;
        let c1 = 1.0 - b1.powi(self.t);
        let c2 = 1.0 - b2.powi(self.t);
        for (k, p) in net.params_mut().into_iter().enumerate() {
            let g = &mut grads[k];
            for (idx, w) in p.iter_mut().enumerate() {
                let gi = g[idx] * scale;
                let m = &mut self.m[k][idx];
                let v = &mut self.v[k][idx];
                *m = b1 * *m + (1.0 - b1) * gi;
                *v = b2 * *v + (1.0 - b2) * gi * gi;
                *w -= self.lr * (*m / c1) / ((*v / c2).sqrt() + eps);
                g[idx] = 0.0;
            }
        }
    }
}

/// Mean squared error of `net` over windows (normalised units).
pub fn loss(net: &Net, w: &Windows, batch: usize) -> f64 {
    loss_weighted(net, w, None, batch)
}

/// [`loss`] with a weight per target (`[n][t_out]`, as
/// [`super::dataset::SpikeWeight::for_windows`] gives them).
pub fn loss_weighted(net: &Net, w: &Windows, weights: Option<&[f32]>, batch: usize) -> f64 {
    let mut ws = Workspace::default();
    let steps = w.t_in + w.t_out;
    let (mut total, mut count) = (0.0f64, 0usize);
    let n = w.len();
    let mut start = 0;
    while start < n {
        let b = batch.min(n - start);
        let x = &w.x[start * steps * 3..(start + b) * steps * 3];
        let out = ws.forward(net, x, b);
        for k in 0..b {
            let y = &w.y[(start + k) * w.t_out..(start + k + 1) * w.t_out];
            let wt = weights.map(|ws| &ws[(start + k) * w.t_out..(start + k + 1) * w.t_out]);
            for j in 0..w.t_out {
                let t = net.target_index(j);
                let e = (out[k * w.t_out + j] - y[t]) as f64;
                total += wt.map_or(1.0, |wt| wt[t] as f64) * e * e;
            }
        }
        count += b * w.t_out;
        start += b;
    }
    total / count.max(1) as f64
}

/// Train `net` in place; returns the per-epoch history. The best weights by
/// validation loss are kept.
pub fn fit(
    net: &mut Net,
    train: &Windows,
    val: &Windows,
    s: &Schedule,
    progress: impl FnMut(&EpochReport),
) -> Vec<EpochReport> {
    fit_until(
        net,
        train,
        val,
        s,
        progress,
        &std::sync::atomic::AtomicBool::new(false),
    )
}

/// [`fit`] that gives up between mini-batches once `cancel` is set (the
/// daemon's retraining, which must not hold up a shutdown); the best
/// weights so far are kept.
pub fn fit_until(
    net: &mut Net,
    train: &Windows,
    val: &Windows,
    s: &Schedule,
    progress: impl FnMut(&EpochReport),
    cancel: &std::sync::atomic::AtomicBool,
) -> Vec<EpochReport> {
    fit_weighted(net, (train, None), (val, None), s, progress, cancel)
}

/// Windows and, optionally, a loss weight per target (`[n][t_out]`).
pub type WeightedWindows<'a> = (&'a Windows, Option<&'a [f32]>);

/// [`fit_until`] with the spike-aware loss: each set's targets weighted
/// (training loss and the validation loss that early stopping watches).
pub fn fit_weighted(
    net: &mut Net,
    (train, train_wt): WeightedWindows,
    (val, val_wt): WeightedWindows,
    s: &Schedule,
    mut progress: impl FnMut(&EpochReport),
    cancel: &std::sync::atomic::AtomicBool,
) -> Vec<EpochReport> {
    let steps = train.t_in + train.t_out;
    let mut grad = net.zeros_like();
    let mut adam = Adam::new(net, s.learning_rate);
    let mut ws = Workspace::default();
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut rng = s.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    let mut best = (f64::INFINITY, net.clone());
    let mut since_best = 0;
    let mut history = Vec::new();
    let (mut xb, mut yb, mut wb) = (Vec::new(), Vec::new(), Vec::new());
    for epoch in 1..=s.epochs {
        let t0 = std::time::Instant::now();
        // Fisher–Yates with a xorshift generator: deterministic per seed.
        for i in (1..order.len()).rev() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            order.swap(i, (rng % (i as u64 + 1)) as usize);
        }
        let (mut sum, mut batches) = (0.0, 0usize);
        for chunk in order.chunks(s.batch) {
            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            xb.clear();
            yb.clear();
            wb.clear();
            for &k in chunk {
                let (x, y) = train.example(k);
                xb.extend_from_slice(x);
                yb.extend_from_slice(y);
                if let Some(w) = train_wt {
                    wb.extend_from_slice(&w[k * train.t_out..(k + 1) * train.t_out]);
                }
            }
            debug_assert_eq!(xb.len(), chunk.len() * steps * 3);
            ws.forward(net, &xb, chunk.len());
            let w = (!wb.is_empty()).then_some(&wb[..]);
            sum += ws.backward_weighted(net, &yb, w, chunk.len(), &mut grad);
            adam.step(net, &mut grad, s.clip_norm);
            batches += 1;
        }
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let secs = t0.elapsed().as_secs_f64();
        let val_loss = loss_weighted(net, val, val_wt, 256);
        let report = EpochReport {
            epoch,
            train_loss: sum / batches.max(1) as f64,
            val_loss,
            seconds: secs,
            windows_per_second: train.len() as f64 / secs.max(1e-9),
        };
        progress(&report);
        history.push(report);
        if val_loss < best.0 {
            best = (val_loss, net.clone());
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= s.patience {
                break;
            }
            // Halve the step size when half the patience has gone by
            // without a gain: the usual plateau schedule, which lets the
            // long-horizon error settle instead of stopping at its noise.
            if since_best == s.patience.div_ceil(2) {
                adam.lr *= 0.5;
            }
        }
    }
    if best.0.is_finite() {
        *net = best.1;
    }
    history
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::card::{Normalization, OutputOrder};
    use crate::train::dataset::Series;

    #[test]
    fn training_reduces_loss_on_a_learnable_signal() {
        // A damped oscillator driven by the current: learnable by an LSTM.
        let n = 3000;
        let i: Vec<f32> = (0..n)
            .map(|t| if (t / 37) % 3 == 0 { 1.0 } else { 0.0 })
            .collect();
        let mut v = vec![0.0f32; n];
        let mut vel = 0.0f32;
        for t in 1..n {
            vel = 0.8 * vel - 0.1 * v[t - 1] + 0.3 * i[t];
            v[t] = v[t - 1] + vel;
        }
        let s = Series { dt_ms: 1.0, v, i };
        let norm = super::super::dataset::normalization(std::slice::from_ref(&s));
        let (a, b, _) = super::super::dataset::split_by_time(&[s], 0.7, 0.15);
        let tw = Windows::cut(&a, 12, 4, 2, &norm);
        let vw = Windows::cut(&b, 12, 4, 2, &norm);
        let mut net = Net::new(1, 8, 12, 4, OutputOrder::Reversed, 3);
        let before = loss(&net, &vw, 64);
        let sched = Schedule {
            epochs: 8,
            batch: 32,
            learning_rate: 1e-2,
            clip_norm: 1.0,
            patience: 3,
            seed: 1,
        };
        let h = fit(&mut net, &tw, &vw, &sched, |_| {});
        let after = loss(&net, &vw, 64);
        assert!(
            after < 0.3 * before,
            "validation loss {before} -> {after}: {h:?}"
        );
        let _ = Normalization { ..norm };
    }
}
