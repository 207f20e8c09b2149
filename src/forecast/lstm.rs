//! A native LSTM evaluator for the controller's forecast task.
//!
//! The task is "one observed window + K candidate plans → K forecasts". The
//! plain windowed computation runs the whole `t_in + t_out` sequence for
//! every candidate. But all K candidates share the observed part, so here the
//! window is encoded once at batch 1 and only the horizon is rolled out at
//! batch K from the carried (h, c); the result is the same function (the
//! encoder starts from zero state over exactly the last `t_in` steps), with
//! `t_in·(K−1)` fewer step evaluations. The loader proves the equality on a
//! probe input against tract running the ONNX file, and `tests/` checks it
//! on random windows.
//!
//! Layout tricks, all standard: the input projections of a whole sequence
//! are one matrix product (only the recurrent product is sequential), layers
//! are processed one after the other over the whole sequence, and sigmoid and
//! tanh use a branch-free rational approximation that vectorises (absolute
//! error < 1e-6, far below the 1e-4 equality bound). Kernels are compiled
//! twice, for AVX2+FMA (picked at run time) and for the baseline target.
//!
//! All buffers are allocated in [`NativeLstm::new`]; `forecast` never
//! allocates.

/// One LSTM layer in ONNX gate order (i, o, f, c).
#[derive(Clone, Debug)]
pub struct LstmLayer {
    pub input: usize,
    pub hidden: usize,
    /// Wᵀ: `[input][4·hidden]`.
    pub wt: Vec<f32>,
    /// Rᵀ: `[hidden][4·hidden]`.
    pub rt: Vec<f32>,
    /// Wb + Rb: `[4·hidden]`.
    pub bias: Vec<f32>,
}

impl LstmLayer {
    /// From ONNX tensors: W `[4H, input]`, R `[4H, H]`, B `[8H]` (zeros if
    /// absent).
    pub fn from_onnx(
        w: &[f32],
        r: &[f32],
        b: Option<&[f32]>,
        input: usize,
        hidden: usize,
    ) -> LstmLayer {
        let g = 4 * hidden;
        let mut wt = vec![0.0; input * g];
        for row in 0..g {
            for col in 0..input {
                wt[col * g + row] = w[row * input + col];
            }
        }
        let mut rt = vec![0.0; hidden * g];
        for row in 0..g {
            for col in 0..hidden {
                rt[col * g + row] = r[row * hidden + col];
            }
        }
        let bias = match b {
            Some(b) => (0..g).map(|i| b[i] + b[g + i]).collect(),
            None => vec![0.0; g],
        };
        LstmLayer {
            input,
            hidden,
            wt,
            rt,
            bias,
        }
    }

    pub fn parameters(&self) -> usize {
        self.wt.len() + self.rt.len() + 2 * self.bias.len()
    }
}

/// The stacked LSTM plus the linear head, with preallocated buffers for up
/// to `max_batch` candidates.
#[derive(Clone, Debug)]
pub struct NativeLstm {
    pub layers: Vec<LstmLayer>,
    pub head_w: Vec<f32>,
    pub head_b: f32,
    t_in: usize,
    t_out: usize,
    max_batch: usize,
    avx2: bool,
    // Buffers.
    gates: Vec<f32>,
    seq_a: Vec<f32>,
    seq_b: Vec<f32>,
    h_enc: Vec<Vec<f32>>,
    c_enc: Vec<Vec<f32>>,
    h: Vec<f32>,
    c: Vec<f32>,
}

impl NativeLstm {
    pub fn new(
        layers: Vec<LstmLayer>,
        head_w: Vec<f32>,
        head_b: f32,
        t_in: usize,
        t_out: usize,
        max_batch: usize,
    ) -> NativeLstm {
        let hmax = layers
            .iter()
            .map(|l| l.hidden.max(l.input))
            .max()
            .unwrap_or(1);
        let rows = t_in.max(t_out * max_batch);
        let h_enc = layers.iter().map(|l| vec![0.0; l.hidden]).collect();
        let c_enc = layers.iter().map(|l| vec![0.0; l.hidden]).collect();
        NativeLstm {
            gates: vec![0.0; rows * 4 * hmax],
            seq_a: vec![0.0; rows * hmax.max(3)],
            seq_b: vec![0.0; rows * hmax.max(3)],
            h_enc,
            c_enc,
            h: vec![0.0; max_batch * hmax],
            c: vec![0.0; max_batch * hmax],
            layers,
            head_w,
            head_b,
            t_in,
            t_out,
            max_batch,
            avx2: detect_avx2_fma(),
        }
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Multiply–accumulate operations of one forecast for `k` candidates.
    pub fn macs(&self, k: usize) -> usize {
        self.layers
            .iter()
            .map(|l| {
                let per_row = 4 * l.hidden * (l.input + l.hidden);
                per_row * (self.t_in + k * self.t_out)
            })
            .sum::<usize>()
            + k * self.t_out * self.head_w.len()
    }

    /// Multiply–accumulate operations of the plain windowed computation of
    /// `k` candidates (every candidate runs the whole sequence).
    pub fn plain_macs(&self, k: usize) -> usize {
        let steps = self.t_in + self.t_out;
        k * (self
            .layers
            .iter()
            .map(|l| 4 * l.hidden * (l.input + l.hidden) * steps)
            .sum::<usize>()
            + self.t_out * self.head_w.len())
    }

    /// Forecast `k` candidates. `observed`: normalised (V, I) pairs of the
    /// window, `[t_in][2]`; `plans`: normalised future currents `[k][t_out]`;
    /// `out`: the head's raw outputs `[k][t_out]` in the model's own order
    /// (sequence position t_in + j in column j).
    pub fn forecast(&mut self, observed: &[f32], plans: &[f32], k: usize, out: &mut [f32]) {
        assert!(
            k >= 1 && k <= self.max_batch,
            "batch {k} outside 1..={}",
            self.max_batch
        );
        assert_eq!(observed.len(), 2 * self.t_in);
        assert_eq!(plans.len(), k * self.t_out);
        assert_eq!(out.len(), k * self.t_out);
        let (t_in, t_out) = (self.t_in, self.t_out);
        let avx2 = self.avx2;

        // Encode the window once, batch 1, from zero state.
        for (t, pair) in observed.chunks_exact(2).enumerate() {
            self.seq_a[t * 3..t * 3 + 3].copy_from_slice(&[pair[0], pair[1], 0.0]);
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let h = &mut self.h_enc[l];
            let c = &mut self.c_enc[l];
            h.fill(0.0);
            c.fill(0.0);
            run_layer(
                avx2,
                layer,
                &self.seq_a,
                t_in,
                1,
                h,
                c,
                &mut self.gates,
                &mut self.seq_b,
            );
            std::mem::swap(&mut self.seq_a, &mut self.seq_b);
        }

        // Roll out the horizon for all candidates, time-major [t][k][·].
        for j in 0..t_out {
            for kk in 0..k {
                let row = (j * k + kk) * 3;
                self.seq_a[row..row + 3].copy_from_slice(&[0.0, plans[kk * t_out + j], 1.0]);
            }
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let hd = layer.hidden;
            for kk in 0..k {
                self.h[kk * hd..(kk + 1) * hd].copy_from_slice(&self.h_enc[l]);
                self.c[kk * hd..(kk + 1) * hd].copy_from_slice(&self.c_enc[l]);
            }
            run_layer(
                avx2,
                layer,
                &self.seq_a,
                t_out,
                k,
                &mut self.h[..k * hd],
                &mut self.c[..k * hd],
                &mut self.gates,
                &mut self.seq_b,
            );
            std::mem::swap(&mut self.seq_a, &mut self.seq_b);
        }
        let hd = self.head_w.len();
        for j in 0..t_out {
            for kk in 0..k {
                let h = &self.seq_a[(j * k + kk) * hd..(j * k + kk + 1) * hd];
                let s: f32 = h.iter().zip(&self.head_w).map(|(a, b)| a * b).sum();
                out[kk * t_out + j] = s + self.head_b;
            }
        }
    }
}

fn detect_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One layer over a time-major sequence `x` (`[steps][batch][input]`),
/// starting from and updating (h, c) (`[batch][hidden]`), writing the hidden
/// sequence to `y` (`[steps][batch][hidden]`).
#[allow(clippy::too_many_arguments)]
fn run_layer(
    avx2: bool,
    layer: &LstmLayer,
    x: &[f32],
    steps: usize,
    batch: usize,
    h: &mut [f32],
    c: &mut [f32],
    gates: &mut [f32],
    y: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: only called when the CPU reports AVX2 and FMA.
        unsafe { run_layer_avx2(layer, x, steps, batch, h, c, gates, y) };
        return;
    }
    let _ = avx2;
    run_layer_body::<false>(layer, x, steps, batch, h, c, gates, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn run_layer_avx2(
    layer: &LstmLayer,
    x: &[f32],
    steps: usize,
    batch: usize,
    h: &mut [f32],
    c: &mut [f32],
    gates: &mut [f32],
    y: &mut [f32],
) {
    run_layer_body::<true>(layer, x, steps, batch, h, c, gates, y)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn run_layer_body<const FMA: bool>(
    layer: &LstmLayer,
    x: &[f32],
    steps: usize,
    batch: usize,
    h: &mut [f32],
    c: &mut [f32],
    gates: &mut [f32],
    y: &mut [f32],
) {
    let hd = layer.hidden;
    let g4 = 4 * hd;
    let rows = steps * batch;
    let gates = &mut gates[..rows * g4];
    for row in gates.chunks_exact_mut(g4) {
        row.copy_from_slice(&layer.bias);
    }
    // Input projection of the whole sequence at once.
    gemm_acc::<FMA>(
        gates,
        &x[..rows * layer.input],
        &layer.wt,
        rows,
        layer.input,
        g4,
    );
    for t in 0..steps {
        let g = &mut gates[t * batch * g4..(t + 1) * batch * g4];
        gemm_acc::<FMA>(g, h, &layer.rt, batch, hd, g4);
        for b in 0..batch {
            let gb = &mut g[b * g4..(b + 1) * g4];
            let (gi, rest) = gb.split_at_mut(hd);
            let (go, rest) = rest.split_at_mut(hd);
            let (gf, gc) = rest.split_at_mut(hd);
            let hb = &mut h[b * hd..(b + 1) * hd];
            let cb = &mut c[b * hd..(b + 1) * hd];
            for u in 0..hd {
                let i = sigmoid(gi[u]);
                let o = sigmoid(go[u]);
                let f = sigmoid(gf[u]);
                let cand = tanh(gc[u]);
                let cn = f * cb[u] + i * cand;
                cb[u] = cn;
                hb[u] = o * tanh(cn);
            }
        }
        y[t * batch * hd..(t + 1) * batch * hd].copy_from_slice(&h[..batch * hd]);
    }
}

/// `c[m×n] += a[m×k] · b[k×n]`, all row-major, register-blocked 4×16.
#[inline(always)]
fn gemm_acc<const FMA: bool>(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    const MR: usize = 4;
    const NR: usize = 16;
    let fma = |acc: f32, x: f32, y: f32| if FMA { x.mul_add(y, acc) } else { acc + x * y };
    let m_main = m - m % MR;
    let n_main = n - n % NR;
    for i0 in (0..m_main).step_by(MR) {
        for j0 in (0..n_main).step_by(NR) {
            let mut acc = [[0.0f32; NR]; MR];
            for (r, acc_r) in acc.iter_mut().enumerate() {
                acc_r.copy_from_slice(&c[(i0 + r) * n + j0..(i0 + r) * n + j0 + NR]);
            }
            for p in 0..k {
                let brow: &[f32; NR] = b[p * n + j0..p * n + j0 + NR].try_into().unwrap();
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let av = a[(i0 + r) * k + p];
                    for q in 0..NR {
                        acc_r[q] = fma(acc_r[q], av, brow[q]);
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                c[(i0 + r) * n + j0..(i0 + r) * n + j0 + NR].copy_from_slice(acc_r);
            }
        }
    }
    // Edges: remaining rows (all columns) and remaining columns (main rows).
    for i in m_main..m {
        let crow = &mut c[i * n..(i + 1) * n];
        for p in 0..k {
            let av = a[i * k + p];
            let brow = &b[p * n..(p + 1) * n];
            for (cv, bv) in crow.iter_mut().zip(brow) {
                *cv = fma(*cv, av, *bv);
            }
        }
    }
    if n_main < n {
        for i in 0..m_main {
            for p in 0..k {
                let av = a[i * k + p];
                for j in n_main..n {
                    c[i * n + j] = fma(c[i * n + j], av, b[p * n + j]);
                }
            }
        }
    }
}

/// tanh by a [13/6] rational approximation on a clamped argument: branch
/// free, so loops over it vectorise; |error| < 1e-6 over all of f32.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    let x = x.clamp(-CLAMP, CLAMP);
    let x2 = x * x;
    let mut p = -2.760_768_5e-16_f32;
    p = p * x2 + 2.000_187_9e-13;
    p = p * x2 - 8.604_671_5e-11;
    p = p * x2 + 5.122_297e-8;
    p = p * x2 + 1.485_722_4e-5;
    p = p * x2 + 6.372_619_3e-4;
    p = p * x2 + 4.893_524_6e-3;
    p *= x;
    let mut q = 1.198_258_4e-6_f32;
    q = q * x2 + 1.185_347_1e-4;
    q = q * x2 + 2.268_434_6e-3;
    q = q * x2 + 4.893_525e-3;
    p / q
}

/// σ(x) = (1 + tanh(x/2)) / 2.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    0.5 + 0.5 * tanh(0.5 * x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_activations_are_accurate_everywhere() {
        let mut worst_t = 0.0f64;
        let mut worst_s = 0.0f64;
        let mut x = -30.0f32;
        while x < 30.0 {
            worst_t = worst_t.max((tanh(x) as f64 - (x as f64).tanh()).abs());
            worst_s = worst_s.max((sigmoid(x) as f64 - 1.0 / (1.0 + (-(x as f64)).exp())).abs());
            x += 0.001;
        }
        assert!(worst_t < 1e-6, "tanh error {worst_t:e}");
        assert!(worst_s < 1e-6, "sigmoid error {worst_s:e}");
        assert_eq!(tanh(f32::INFINITY), tanh(1e9));
    }

    #[test]
    fn gemm_matches_naive_for_ragged_shapes() {
        for (m, k, n) in [(1, 3, 64), (5, 7, 40), (8, 16, 64), (33, 9, 19)] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1)
                .collect();
            let c0: Vec<f32> = (0..m * n).map(|i| (i % 3) as f32).collect();
            let mut want = c0.clone();
            for i in 0..m {
                for j in 0..n {
                    for p in 0..k {
                        want[i * n + j] += a[i * k + p] * b[p * n + j];
                    }
                }
            }
            for fma in [false, true] {
                let mut c = c0.clone();
                if fma {
                    gemm_acc::<true>(&mut c, &a, &b, m, k, n);
                } else {
                    gemm_acc::<false>(&mut c, &a, &b, m, k, n);
                }
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-4, "{m}x{k}x{n}: {x} vs {y}");
                }
            }
        }
    }

    /// A scalar, textbook LSTM over the full sequence per candidate: the
    /// windowed computation the fast path must equal.
    fn reference(
        lstm: &NativeLstm,
        observed: &[f32],
        plans: &[f32],
        k: usize,
        t_in: usize,
        t_out: usize,
    ) -> Vec<f32> {
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        let mut out = vec![0.0; k * t_out];
        for kk in 0..k {
            let mut seq: Vec<Vec<f32>> = (0..t_in)
                .map(|t| vec![observed[2 * t], observed[2 * t + 1], 0.0])
                .chain((0..t_out).map(|j| vec![0.0, plans[kk * t_out + j], 1.0]))
                .collect();
            for l in &lstm.layers {
                let (hd, g4) = (l.hidden, 4 * l.hidden);
                let (mut h, mut c) = (vec![0.0f32; hd], vec![0.0f32; hd]);
                for x in seq.iter_mut() {
                    let mut g = l.bias.clone();
                    for (p, xv) in x.iter().enumerate() {
                        for q in 0..g4 {
                            g[q] += xv * l.wt[p * g4 + q];
                        }
                    }
                    for (p, hv) in h.iter().enumerate() {
                        for q in 0..g4 {
                            g[q] += hv * l.rt[p * g4 + q];
                        }
                    }
                    for u in 0..hd {
                        let cn = sig(g[2 * hd + u]) * c[u] + sig(g[u]) * g[3 * hd + u].tanh();
                        c[u] = cn;
                        h[u] = sig(g[hd + u]) * cn.tanh();
                    }
                    *x = h.clone();
                }
            }
            for j in 0..t_out {
                let h = &seq[t_in + j];
                out[kk * t_out + j] =
                    h.iter().zip(&lstm.head_w).map(|(a, b)| a * b).sum::<f32>() + lstm.head_b;
            }
        }
        out
    }

    #[test]
    fn encode_once_rollout_equals_the_windowed_computation() {
        let mut seed = 12345u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 0.8
        };
        for (layers, hidden, t_in, t_out, k) in
            [(1, 16, 12, 5, 7), (2, 8, 9, 4, 32), (2, 13, 6, 3, 1)]
        {
            let mut ls = Vec::new();
            for l in 0..layers {
                let input = if l == 0 { 3 } else { hidden };
                let w: Vec<f32> = (0..4 * hidden * input).map(|_| rnd()).collect();
                let r: Vec<f32> = (0..4 * hidden * hidden).map(|_| rnd()).collect();
                let b: Vec<f32> = (0..8 * hidden).map(|_| rnd()).collect();
                ls.push(LstmLayer::from_onnx(&w, &r, Some(&b), input, hidden));
            }
            let head: Vec<f32> = (0..hidden).map(|_| rnd()).collect();
            let mut lstm = NativeLstm::new(ls, head, 0.1, t_in, t_out, 32);
            let observed: Vec<f32> = (0..2 * t_in).map(|_| rnd() * 3.0).collect();
            let plans: Vec<f32> = (0..k * t_out).map(|_| rnd() * 3.0).collect();
            let mut out = vec![0.0; k * t_out];
            lstm.forecast(&observed, &plans, k, &mut out);
            let want = reference(&lstm, &observed, &plans, k, t_in, t_out);
            for (a, b) in out.iter().zip(&want) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "{layers} layers, H {hidden}: {a} vs {b}"
                );
            }
        }
    }
}
