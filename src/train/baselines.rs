//! Baselines a forecaster must beat, computed on the same windows:
//! persistence (V stays where it is) and a linear autoregressive model with
//! exogenous input (the last `q` observed V and I and the whole planned
//! current), fitted by ridge-regularised least squares on the training
//! windows.

use super::dataset::Windows;

/// Persistence: every horizon step equals the last observed V (normalised).
pub fn persistence(x: &[f32], t_in: usize, t_out: usize, out: &mut [f32]) {
    let last = x[(t_in - 1) * 3];
    out[..t_out].fill(last);
}

/// A direct multi-output linear model: one weight vector per horizon step.
#[derive(Clone, Debug)]
pub struct LinearAr {
    pub q: usize,
    t_in: usize,
    t_out: usize,
    /// `[t_out][features]`.
    weights: Vec<f64>,
}

impl LinearAr {
    fn features(&self) -> usize {
        2 * self.q + self.t_out + 1
    }

    fn feature_vector(q: usize, t_in: usize, t_out: usize, x: &[f32], f: &mut Vec<f64>) {
        f.clear();
        for p in t_in - q..t_in {
            f.push(x[p * 3] as f64);
            f.push(x[p * 3 + 1] as f64);
        }
        for p in t_in..t_in + t_out {
            f.push(x[p * 3 + 1] as f64);
        }
        f.push(1.0);
    }

    /// Fit on training windows (normalised units).
    pub fn fit(w: &Windows, q: usize, ridge: f64) -> LinearAr {
        let q = q.clamp(1, w.t_in);
        let mut m = LinearAr {
            q,
            t_in: w.t_in,
            t_out: w.t_out,
            weights: Vec::new(),
        };
        let nf = m.features();
        let mut xtx = vec![0.0f64; nf * nf];
        let mut xty = vec![0.0f64; nf * w.t_out];
        let mut f = Vec::with_capacity(nf);
        for k in 0..w.len() {
            let (x, y) = w.example(k);
            Self::feature_vector(q, w.t_in, w.t_out, x, &mut f);
            for a in 0..nf {
                for b in 0..nf {
                    xtx[a * nf + b] += f[a] * f[b];
                }
                for (j, yj) in y.iter().enumerate() {
                    xty[a * w.t_out + j] += f[a] * *yj as f64;
                }
            }
        }
        for a in 0..nf {
            xtx[a * nf + a] += ridge * (1.0 + xtx[a * nf + a]);
        }
        let l = cholesky(&xtx, nf);
        let mut weights = vec![0.0; w.t_out * nf];
        for j in 0..w.t_out {
            let rhs: Vec<f64> = (0..nf).map(|a| xty[a * w.t_out + j]).collect();
            let sol = cholesky_solve(&l, nf, &rhs);
            weights[j * nf..(j + 1) * nf].copy_from_slice(&sol);
        }
        m.weights = weights;
        m
    }

    /// The fit as one linear map of a whole contract input row: weights
    /// `[(t_in + t_out)·3][t_out]` (row = input element, column = horizon
    /// step, forward order) and `[t_out]` biases, so that
    /// `predict(x)[j] = Σ_r x[r]·w[r][j] + b[j]`. A network can then carry
    /// AR inside itself (see [`super::net::Skip`]).
    pub fn linear_map(&self) -> (Vec<f32>, Vec<f32>) {
        let (t_in, t_out, q) = (self.t_in, self.t_out, self.q);
        let nf = self.features();
        let rows = (t_in + t_out) * 3;
        let mut w = vec![0.0f32; rows * t_out];
        let mut b = vec![0.0f32; t_out];
        for j in 0..t_out {
            let wj = &self.weights[j * nf..(j + 1) * nf];
            for (n, p) in (t_in - q..t_in).enumerate() {
                w[(p * 3) * t_out + j] = wj[2 * n] as f32;
                w[(p * 3 + 1) * t_out + j] = wj[2 * n + 1] as f32;
            }
            for (n, p) in (t_in..t_in + t_out).enumerate() {
                w[(p * 3 + 1) * t_out + j] = wj[2 * q + n] as f32;
            }
            b[j] = wj[nf - 1] as f32;
        }
        (w, b)
    }

    /// Predict the horizon (normalised) for one contract input row.
    pub fn predict(&self, x: &[f32], out: &mut [f32]) {
        let nf = self.features();
        let mut f = Vec::with_capacity(nf);
        Self::feature_vector(self.q, self.t_in, self.t_out, x, &mut f);
        for (j, o) in out.iter_mut().enumerate().take(self.t_out) {
            let w = &self.weights[j * nf..(j + 1) * nf];
            *o = w.iter().zip(&f).map(|(a, b)| a * b).sum::<f64>() as f32;
        }
    }
}

/// Per-step blend gains of a model with the AR baseline: for each horizon
/// step j, the `g_j` in [0, 1] minimising Σ (y − (a + g·(m − a)))² over the
/// windows, in closed form `Σ (y − a)(m − a) / Σ (m − a)²`, clamped. `m`,
/// `a`, `y`: model, AR and truth, `[windows][t_out]`, forward order. A step
/// where the model adds nothing to AR gets 0 (the forecast is AR's), one
/// where AR adds nothing to the model gets 1. Fitted on validation windows
/// by calibration (`train.ar_blend`): the gains are 21 numbers chosen on
/// data the network was not trained on, so they can undo what training
/// over-fitted at a step.
pub fn blend_gains(m: &[f32], a: &[f32], y: &[f32], t_out: usize) -> Vec<f32> {
    let (mut num, mut den) = (vec![0.0f64; t_out], vec![0.0f64; t_out]);
    for ((m, a), y) in m
        .chunks_exact(t_out)
        .zip(a.chunks_exact(t_out))
        .zip(y.chunks_exact(t_out))
    {
        for j in 0..t_out {
            let d = (m[j] - a[j]) as f64;
            num[j] += (y[j] - a[j]) as f64 * d;
            den[j] += d * d;
        }
    }
    num.iter()
        .zip(&den)
        .map(|(n, d)| {
            if *d > 0.0 {
                (n / d).clamp(0.0, 1.0) as f32
            } else {
                1.0
            }
        })
        .collect()
}

/// Lower-triangular L with L·Lᵀ = a (a symmetric positive definite).
fn cholesky(a: &[f64], n: usize) -> Vec<f64> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            if i == j {
                l[i * n + i] = (a[i * n + i] - s).max(1e-300).sqrt();
            } else {
                l[i * n + j] = (a[i * n + j] - s) / l[j * n + j];
            }
        }
    }
    l
}

fn cholesky_solve(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut y = vec![0.0; n];
    for i in 0..n {
        let s: f64 = (0..i).map(|k| l[i * n + k] * y[k]).sum();
        y[i] = (b[i] - s) / l[i * n + i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| l[k * n + i] * x[k]).sum();
        x[i] = (y[i] - s) / l[i * n + i];
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::card::Normalization;
    use crate::train::dataset::Series;

    #[test]
    fn blend_gains_recover_the_mixture_and_clamp() {
        // Truth = 0.3·model + 0.7·AR at step 0 exactly; at step 1 the model
        // is anti-correlated with the truth's departure from AR (gain
        // clamps to 0); at step 2 the truth is the model beyond AR (1).
        let t_out = 3;
        let (mut m, mut a, mut y) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..50 {
            let (mk, ak) = ((k as f32 * 0.37).sin(), (k as f32 * 0.11).cos());
            m.extend([mk, mk, mk]);
            a.extend([ak, ak, ak]);
            y.extend([0.3 * mk + 0.7 * ak, ak - (mk - ak), ak + 2.0 * (mk - ak)]);
        }
        let g = blend_gains(&m, &a, &y, t_out);
        assert!((g[0] - 0.3).abs() < 1e-5, "{g:?}");
        assert_eq!(g[1], 0.0);
        assert_eq!(g[2], 1.0);
        // No difference between model and AR: nothing to choose, gain 1.
        assert_eq!(blend_gains(&[1.0], &[1.0], &[2.0], 1), vec![1.0]);
    }

    #[test]
    fn ar_recovers_a_linear_system_exactly() {
        // v[t+1] = 0.9 v[t] + 0.5 i[t+1]: the AR model can represent it.
        let mut s = Series {
            dt_ms: 1.0,
            v: vec![0.0; 400],
            i: (0..400)
                .map(|t| ((t * 37 % 17) as f32 - 8.0) / 8.0)
                .collect(),
        };
        for t in 1..400 {
            s.v[t] = 0.9 * s.v[t - 1] + 0.5 * s.i[t];
        }
        let norm = Normalization {
            v_mean: 0.0,
            v_std: 1.0,
            i_mean: 0.0,
            i_std: 1.0,
        };
        let w = Windows::cut(&[s], 4, 3, 1, &norm);
        let ar = LinearAr::fit(&w, 2, 1e-9);
        let mut out = [0.0f32; 3];
        let mut worst = 0.0f32;
        for k in 0..w.len() {
            let (x, y) = w.example(k);
            ar.predict(x, &mut out);
            for j in 0..3 {
                worst = worst.max((out[j] - y[j]).abs());
            }
        }
        assert!(worst < 1e-3, "AR error {worst}");
        let (x, _) = w.example(5);
        persistence(x, 4, 3, &mut out);
        assert_eq!(out, [x[9]; 3]);
    }
}
