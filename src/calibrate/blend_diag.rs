//! Diagnostic for the AR blend (issue 16): how the per-step gains chosen
//! by several rules on the validation windows fare on the held-out ones,
//! and whether validation predicts held-out at step 1. Logged only
//! (target `neurostimd::calibrate::blend_diag`, debug level); nothing here
//! chooses anything.

use crate::forecast::card::Normalization;
use crate::train::baselines::{blend_gains, LinearAr};
use crate::train::dataset::Windows;
use crate::train::net::Net;

/// Model, AR, persistence and truth on `w`, normalised, forward order.
struct Preds {
    m: Vec<f32>,
    a: Vec<f32>,
    p: Vec<f32>,
    y: Vec<f32>,
}

fn preds(net: &Net, ar: &LinearAr, w: &Windows) -> Preds {
    let t_out = net.t_out;
    let m = super::fit::forward_preds(net, w);
    let mut a = vec![0.0f32; m.len()];
    let mut p = Vec::with_capacity(m.len());
    for (k, out) in a.chunks_exact_mut(t_out).enumerate() {
        let x = w.example(k).0;
        ar.predict(x, out);
        p.extend(std::iter::repeat_n(x[(net.t_in - 1) * 3], t_out));
    }
    Preds {
        m,
        a,
        p,
        y: w.y.clone(),
    }
}

fn rmse(f: &[f32], y: &[f32], t_out: usize, vs: f64) -> Vec<f64> {
    let (mut s, mut n) = (vec![0.0f64; t_out], 0usize);
    for (f, y) in f.chunks_exact(t_out).zip(y.chunks_exact(t_out)) {
        for j in 0..t_out {
            s[j] += ((f[j] - y[j]) as f64).powi(2);
        }
        n += 1;
    }
    s.iter()
        .map(|v| (v / n.max(1) as f64).sqrt() * vs)
        .collect()
}

fn blend(p: &Preds, g: &[f32], t_out: usize) -> Vec<f32> {
    p.m.iter()
        .zip(&p.a)
        .enumerate()
        .map(|(i, (m, a))| a + g[i % t_out] * (m - a))
        .collect()
}

/// Gains on each of `k` contiguous folds of the windows of `p`.
fn fold_gains(p: &Preds, t_out: usize, k: usize) -> Vec<Vec<f32>> {
    let n = p.y.len() / t_out;
    (0..k)
        .map(|f| {
            let (lo, hi) = (f * n / k * t_out, (f + 1) * n / k * t_out);
            blend_gains(&p.m[lo..hi], &p.a[lo..hi], &p.y[lo..hi], t_out)
        })
        .collect()
}

fn min_of(gs: &[Vec<f32>]) -> Vec<f32> {
    let mut out = gs[0].clone();
    for g in gs {
        out.iter_mut().zip(g).for_each(|(o, g)| *o = o.min(*g));
    }
    out
}

/// Per-step range `[lo, hi]` of the correction `m − a` on `p`.
fn corr_range(p: &Preds, t_out: usize) -> Vec<[f32; 2]> {
    let mut r = vec![[f32::INFINITY, f32::NEG_INFINITY]; t_out];
    for (i, (m, a)) in p.m.iter().zip(&p.a).enumerate() {
        let c = m - a;
        let e = &mut r[i % t_out];
        *e = [e[0].min(c), e[1].max(c)];
    }
    r
}

/// `p` with its model's correction over AR clipped to `r` per step.
fn clipped(p: &Preds, r: &[[f32; 2]], t_out: usize) -> Preds {
    let m =
        p.m.iter()
            .zip(&p.a)
            .enumerate()
            .map(|(i, (m, a))| {
                let [lo, hi] = r[i % t_out];
                a + (m - a).clamp(lo, hi)
            })
            .collect();
    Preds {
        m,
        a: p.a.clone(),
        p: p.p.clone(),
        y: p.y.clone(),
    }
}

/// Log the diagnostic for one trained network (before any blend).
pub(super) fn log(
    net: &Net,
    train_w: &Windows,
    val_w: &Windows,
    hold_w: &Windows,
    norm: &Normalization,
    label: &str,
) {
    if !tracing::enabled!(target: "neurostimd::calibrate::blend_diag", tracing::Level::DEBUG) {
        return;
    }
    let t_out = net.t_out;
    let vs = norm.v_std;
    let ar = LinearAr::fit(train_w, 10, 1e-6);
    let (v, h) = (preds(net, &ar, val_w), preds(net, &ar, hold_w));
    let full = blend_gains(&v.m, &v.a, &v.y, t_out);
    let schemes: Vec<(&str, Vec<f32>)> = vec![
        ("full", full.clone()),
        ("half", full.iter().map(|g| g * 0.5).collect()),
        ("min2", min_of(&fold_gains(&v, t_out, 2))),
        ("min4", min_of(&fold_gains(&v, t_out, 4))),
        ("last_half", fold_gains(&v, t_out, 2)[1].clone()),
        ("oracle_heldout", blend_gains(&h.m, &h.a, &h.y, t_out)),
    ];
    // Windows by their strongest current over the forecast rows: the gain
    // on the validation windows nearest the extrapolation.
    let t_in = net.t_in;
    let strength: Vec<f32> = (0..val_w.len())
        .map(|k| {
            val_w.example(k).0[t_in * 3..]
                .chunks_exact(3)
                .map(|r| r[1])
                .fold(f32::NEG_INFINITY, f32::max)
        })
        .collect();
    let mut sorted = strength.clone();
    sorted.sort_by(f32::total_cmp);
    let mut schemes = schemes;
    for (name, q) in [("strong_half", 0.5), ("strong_quarter", 0.75)] {
        let cut = sorted[((sorted.len() - 1) as f64 * q) as usize];
        let (mut m, mut a, mut y) = (Vec::new(), Vec::new(), Vec::new());
        for (k, s) in strength.iter().enumerate() {
            if *s >= cut {
                let r = k * t_out..(k + 1) * t_out;
                m.extend_from_slice(&v.m[r.clone()]);
                a.extend_from_slice(&v.a[r.clone()]);
                y.extend_from_slice(&v.y[r]);
            }
        }
        schemes.push((name, blend_gains(&m, &a, &y, t_out)));
    }
    let (ha, hp) = (rmse(&h.a, &h.y, t_out, vs), rmse(&h.p, &h.y, t_out, vs));
    let f3 = |x: &[f64]| format!("{:.3}/{:.3}/{:.3}", x[0], x[1], x[2]);
    let g3 = |x: &[f32]| format!("{:.2}/{:.2}/{:.2}", x[0], x[1], x[2]);
    tracing::debug!(
        target: "neurostimd::calibrate::blend_diag",
        start = %label,
        val_model = %f3(&rmse(&v.m, &v.y, t_out, vs)),
        val_ar = %f3(&rmse(&v.a, &v.y, t_out, vs)),
        val_pers = %f3(&rmse(&v.p, &v.y, t_out, vs)),
        val_blend_full = %f3(&rmse(&blend(&v, &full, t_out), &v.y, t_out, vs)),
        hold_model = %f3(&rmse(&h.m, &h.y, t_out, vs)),
        hold_ar = %f3(&ha),
        hold_pers = %f3(&hp),
        "blend diagnostic (steps 1/2/3, mV)"
    );
    let tr = preds(net, &ar, train_w);
    let (rt, rv) = (corr_range(&tr, t_out), corr_range(&v, t_out));
    let mut all: Vec<(&str, Vec<f32>, Preds)> = Vec::new();
    for (name, g) in schemes {
        all.push((
            name,
            g,
            clipped(&h, &vec![[f32::MIN, f32::MAX]; t_out], t_out),
        ));
    }
    for (name, r) in [("clip_train", &rt), ("clip_val", &rv)] {
        let (vc, hc) = (clipped(&v, r, t_out), clipped(&h, r, t_out));
        all.push((name, blend_gains(&vc.m, &vc.a, &vc.y, t_out), hc));
    }
    tracing::debug!(
        target: "neurostimd::calibrate::blend_diag",
        train = %format!("{:.2}..{:.2}", rt[0][0] as f64 * vs, rt[0][1] as f64 * vs),
        val = %format!("{:.2}..{:.2}", rv[0][0] as f64 * vs, rv[0][1] as f64 * vs),
        heldout = %format!("{:.2}..{:.2}", corr_range(&h, t_out)[0][0] as f64 * vs, corr_range(&h, t_out)[0][1] as f64 * vs),
        "step-1 correction range, mV"
    );
    for (name, g, h) in &all {
        let r = rmse(&blend(h, g, t_out), &h.y, t_out, vs);
        let wins = (0..t_out)
            .filter(|&j| r[j] < ha[j] - 1e-3 && r[j] < hp[j] - 1e-3)
            .count();
        tracing::debug!(
            target: "neurostimd::calibrate::blend_diag",
            start = %label,
            scheme = name,
            gains = %g3(g),
            hold_blend = %f3(&r),
            wins,
            "blend scheme (steps 1/2/3)"
        );
    }
}
