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

/// f32 storage whose first element sits on a 64-byte boundary (one cache
/// line, one AVX-512 vector). With plain `Vec<f32>` (16-byte aligned by the
/// allocator) the batch-1 encoder ran at one of two speeds, 75 or 118 µs on
/// the hidden-64 model, depending on where the heap placed the weights:
/// vector loads that straddle cache lines halve the bandwidth the
/// matrix–vector product lives on.
pub struct Aligned {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl Aligned {
    pub fn zeros(len: usize) -> Aligned {
        let buf = vec![0.0f32; len + 16];
        let misalign = (buf.as_ptr() as usize) % 64;
        let start = ((64 - misalign) % 64) / std::mem::size_of::<f32>();
        Aligned { buf, start, len }
    }

    pub fn from_slice(xs: &[f32]) -> Aligned {
        let mut a = Aligned::zeros(xs.len());
        a.copy_from_slice(xs);
        a
    }
}

impl Clone for Aligned {
    fn clone(&self) -> Aligned {
        // A cloned Vec may land on another alignment: re-align.
        Aligned::from_slice(self)
    }
}

impl std::fmt::Debug for Aligned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aligned[{}]", self.len)
    }
}

impl std::ops::Deref for Aligned {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for Aligned {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// One LSTM layer in ONNX gate order (i, o, f, c).
#[derive(Clone, Debug)]
pub struct LstmLayer {
    pub input: usize,
    pub hidden: usize,
    /// Wᵀ: `[input][4·hidden]`.
    pub wt: Aligned,
    /// Rᵀ: `[hidden][4·hidden]`.
    pub rt: Aligned,
    /// Wb + Rb: `[4·hidden]`.
    pub bias: Aligned,
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
        let mut wt = Aligned::zeros(input * g);
        for row in 0..g {
            for col in 0..input {
                wt[col * g + row] = w[row * input + col];
            }
        }
        let mut rt = Aligned::zeros(hidden * g);
        for row in 0..g {
            for col in 0..hidden {
                rt[col * g + row] = r[row * hidden + col];
            }
        }
        let bias = match b {
            Some(b) => Aligned::from_slice(&(0..g).map(|i| b[i] + b[g + i]).collect::<Vec<_>>()),
            None => Aligned::zeros(g),
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

/// A head layer's nonlinearity: the ones `torch.onnx.export` writes as a
/// single ONNX operator (GELU is not among them at opset 17: it becomes an
/// Erf subgraph, which the native engine declines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
    Tanh,
    Sigmoid,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "none",
            Activation::Relu => "Relu",
            Activation::Tanh => "Tanh",
            Activation::Sigmoid => "Sigmoid",
        }
    }
}

/// One fully connected layer of a head: `y = act(x · wt + bias)`.
#[derive(Clone, Debug)]
pub struct Dense {
    pub input: usize,
    pub output: usize,
    /// `[input][output]`, the layout of an ONNX MatMul weight (PyTorch's
    /// `Linear.weight` transposed).
    pub wt: Aligned,
    /// `[output]`.
    pub bias: Vec<f32>,
    pub act: Activation,
}

/// Which hidden states of the top LSTM layer the head reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadInput {
    /// Each of the last `t_out` steps, one output per step (the contract's
    /// `Linear(H, 1)` on `out[:, t_in:, :]`, or an MLP ending in one unit).
    EachStep,
    /// The last step only, all `t_out` outputs at once (`Linear(H, t_out)`
    /// on `out[:, -1, :]` or `h_n[-1]`, or an MLP ending in `t_out` units).
    LastStep,
}

/// The output head: fully connected layers over the top layer's hidden
/// states.
#[derive(Clone, Debug)]
pub struct Head {
    pub input: HeadInput,
    pub layers: Vec<Dense>,
    /// The residual output (card version 2): the last observed V is added
    /// to every output.
    pub residual: bool,
    /// A linear map of the whole input row added to the output (a model
    /// that carries the AR baseline inside itself): `[(t_in + t_out)·3]
    /// [t_out]` weights and `[t_out]` biases, in the model's output order.
    pub skip: Option<(Vec<f32>, Vec<f32>)>,
    /// Per-step gains `[t_out]` (model order) on the head's outputs, applied
    /// before the residual or the skip is added: calibration's AR blend
    /// (`y = gain · head + skip`).
    pub gain: Option<Vec<f32>>,
}

impl Head {
    /// The contract's linear head: `[H]` weights and one bias.
    pub fn linear(w: Vec<f32>, b: f32) -> Head {
        Head {
            input: HeadInput::EachStep,
            layers: vec![Dense {
                input: w.len(),
                output: 1,
                wt: Aligned::from_slice(&w),
                bias: vec![b],
                act: Activation::Identity,
            }],
            residual: false,
            skip: None,
            gain: None,
        }
    }

    pub fn parameters(&self) -> usize {
        self.layers
            .iter()
            .map(|d| d.wt.len() + d.bias.len())
            .sum::<usize>()
            + self.skip.as_ref().map_or(0, |(w, b)| w.len() + b.len())
            + self.gain.as_ref().map_or(0, Vec::len)
    }

    /// Multiply–accumulates per head application.
    fn macs(&self) -> usize {
        self.layers.iter().map(|d| d.input * d.output).sum()
    }

    /// One line for `model info`: what the engine recognised.
    pub fn describe(&self) -> String {
        let over = match self.input {
            HeadInput::EachStep => "each horizon step",
            HeadInput::LastStep => "the last step",
        };
        let layers: Vec<String> = self
            .layers
            .iter()
            .map(|d| match d.act {
                Activation::Identity => format!("Linear({}, {})", d.input, d.output),
                a => format!("Linear({}, {}) {}", d.input, d.output, a.name()),
            })
            .collect();
        let skip = match (self.residual, &self.skip) {
            (true, _) => " + last observed V (residual)",
            (false, Some(_)) => " + a linear map of the input (skip)",
            _ => "",
        };
        let gain = if self.gain.is_some() {
            " x per-step gain"
        } else {
            ""
        };
        format!("{} over {over}{gain}{skip}", layers.join(" -> "))
    }
}

/// The stacked LSTM plus the head, with preallocated buffers for up to
/// `max_batch` candidates.
#[derive(Clone, Debug)]
pub struct NativeLstm {
    pub layers: Vec<LstmLayer>,
    pub head: Head,
    t_in: usize,
    t_out: usize,
    max_batch: usize,
    simd: Simd,
    // Buffers.
    gates: Aligned,
    seq_a: Aligned,
    seq_b: Aligned,
    h_enc: Vec<Vec<f32>>,
    c_enc: Vec<Vec<f32>>,
    h: Aligned,
    c: Aligned,
    head_a: Aligned,
    head_b: Aligned,
    /// The skip's share of the observed window, `[t_out]`.
    skip_obs: Vec<f32>,
}

impl NativeLstm {
    /// With the contract's linear head (`[H]` weights, one bias).
    pub fn new(
        layers: Vec<LstmLayer>,
        head_w: Vec<f32>,
        head_b: f32,
        t_in: usize,
        t_out: usize,
        max_batch: usize,
    ) -> NativeLstm {
        Self::with_head(layers, Head::linear(head_w, head_b), t_in, t_out, max_batch)
    }

    /// With any [`Head`]. Panics if the head does not chain from the top
    /// layer's hidden size to the forecast (one value per step, or `t_out`
    /// from the last step): the graph reader checks that first.
    pub fn with_head(
        layers: Vec<LstmLayer>,
        head: Head,
        t_in: usize,
        t_out: usize,
        max_batch: usize,
    ) -> NativeLstm {
        let top = layers.last().map(|l| l.hidden).unwrap_or(0);
        let mut width = top;
        for d in &head.layers {
            assert!(
                d.input == width && d.wt.len() == d.input * d.output && d.bias.len() == d.output,
                "head layer {}x{} does not chain from {width}",
                d.input,
                d.output
            );
            width = d.output;
        }
        let want = match head.input {
            HeadInput::EachStep => 1,
            HeadInput::LastStep => t_out,
        };
        assert!(
            !head.layers.is_empty() && width == want,
            "head ends in {width} values, expected {want}"
        );
        let hmax = layers
            .iter()
            .map(|l| l.hidden.max(l.input))
            .max()
            .unwrap_or(1);
        let rows = t_in.max(t_out * max_batch);
        let head_rows = match head.input {
            HeadInput::EachStep => t_out * max_batch,
            HeadInput::LastStep => max_batch,
        };
        let head_width = head.layers.iter().map(|d| d.output).max().unwrap_or(1);
        let h_enc = layers.iter().map(|l| vec![0.0; l.hidden]).collect();
        let c_enc = layers.iter().map(|l| vec![0.0; l.hidden]).collect();
        NativeLstm {
            gates: Aligned::zeros(rows * 4 * hmax),
            seq_a: Aligned::zeros(rows * hmax.max(3)),
            seq_b: Aligned::zeros(rows * hmax.max(3)),
            h_enc,
            c_enc,
            h: Aligned::zeros(max_batch * hmax),
            c: Aligned::zeros(max_batch * hmax),
            head_a: Aligned::zeros(head_rows * head_width),
            head_b: Aligned::zeros(head_rows * head_width),
            skip_obs: vec![0.0; t_out],
            layers,
            head,
            t_in,
            t_out,
            max_batch,
            simd: detect_simd(),
        }
    }

    /// The kernel variant in use.
    pub fn simd(&self) -> Simd {
        self.simd
    }

    /// Force a kernel variant (tests and benchmarks compare them). A
    /// variant the CPU lacks is ignored.
    pub fn set_simd(&mut self, simd: Simd) {
        let best = detect_simd();
        let allowed = match best {
            Simd::Avx512 => true,
            Simd::Avx2 => simd != Simd::Avx512,
            Simd::Baseline => simd == Simd::Baseline,
        };
        if allowed {
            self.simd = simd;
        }
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Weights and biases of the LSTM layers and the head.
    pub fn parameters(&self) -> usize {
        self.layers.iter().map(|l| l.parameters()).sum::<usize>() + self.head.parameters()
    }

    /// Head applications per candidate.
    fn head_rows(&self) -> usize {
        match self.head.input {
            HeadInput::EachStep => self.t_out,
            HeadInput::LastStep => 1,
        }
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
            + k * self.head_rows() * self.head.macs()
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
            + self.head_rows() * self.head.macs())
    }

    /// Forecast `k` candidates. `observed`: normalised (V, I) pairs of the
    /// window, `[t_in][2]`; `plans`: normalised future currents `[k][t_out]`;
    /// `out`: the head's raw outputs `[k][t_out]` in the model's own order
    /// (for a per-step head, sequence position t_in + j in column j).
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
        let simd = self.simd;

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
                simd,
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
                simd,
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
        self.apply_head(k, out);
        if let Some(g) = &self.head.gain {
            for o in out[..k * t_out].chunks_exact_mut(t_out) {
                o.iter_mut().zip(g).for_each(|(o, g)| *o *= g);
            }
        }
        if self.head.residual {
            let last = observed[2 * (t_in - 1)];
            out[..k * t_out].iter_mut().for_each(|v| *v += last);
        }
        if let Some((w, b)) = &self.head.skip {
            // Observed rows (V, I, flag 0) once; each plan's rows (V 0, I,
            // flag 1) per candidate.
            let obs = &mut self.skip_obs;
            obs.copy_from_slice(b);
            for (t, pair) in observed.chunks_exact(2).enumerate() {
                for (f, &x) in pair.iter().enumerate() {
                    let row = &w[(t * 3 + f) * t_out..(t * 3 + f + 1) * t_out];
                    obs.iter_mut().zip(row).for_each(|(o, wj)| *o += x * wj);
                }
            }
            for j in 0..t_out {
                let flag = &w[((t_in + j) * 3 + 2) * t_out..((t_in + j) * 3 + 3) * t_out];
                obs.iter_mut().zip(flag).for_each(|(o, wj)| *o += wj);
            }
            for kk in 0..k {
                let o = &mut out[kk * t_out..(kk + 1) * t_out];
                o.iter_mut().zip(obs.iter()).for_each(|(o, s)| *o += s);
                for (j, &p) in plans[kk * t_out..(kk + 1) * t_out].iter().enumerate() {
                    let row = &w[((t_in + j) * 3 + 1) * t_out..((t_in + j) * 3 + 2) * t_out];
                    o.iter_mut().zip(row).for_each(|(o, wj)| *o += p * wj);
                }
            }
        }
    }

    /// The head over the rolled-out top layer (`seq_a`, `[t_out][k][H]`).
    fn apply_head(&mut self, k: usize, out: &mut [f32]) {
        let t_out = self.t_out;
        let hd = self.head.layers[0].input;
        let (x, rows) = match self.head.input {
            HeadInput::EachStep => (&self.seq_a[..t_out * k * hd], t_out * k),
            // The last step's states: rows (t_out − 1)·k .. t_out·k.
            HeadInput::LastStep => (&self.seq_a[(t_out - 1) * k * hd..t_out * k * hd], k),
        };
        let (mut src, mut dst) = (&mut self.head_a, &mut self.head_b);
        for (n, d) in self.head.layers.iter().enumerate() {
            let input: &[f32] = if n == 0 { x } else { &src[..rows * d.input] };
            dense_forward(self.simd, d, input, rows, &mut dst[..rows * d.output]);
            std::mem::swap(&mut src, &mut dst);
        }
        let y = &src[..rows * self.head.layers.last().map_or(0, |d| d.output)];
        match self.head.input {
            // Row j·k + kk is candidate kk at horizon position j.
            HeadInput::EachStep => {
                for (r, &v) in y.iter().enumerate() {
                    out[(r % k) * t_out + r / k] = v;
                }
            }
            HeadInput::LastStep => out[..k * t_out].copy_from_slice(y),
        }
    }
}

/// `y[m × out] = act(x[m × in] · wt + bias)`. A one-unit layer is a dot
/// product per row (the GEMM's tiles would be idle on a single column).
fn dense_forward(simd: Simd, d: &Dense, x: &[f32], m: usize, y: &mut [f32]) {
    if d.output == 1 {
        for (r, yr) in y.iter_mut().enumerate() {
            let xr = &x[r * d.input..(r + 1) * d.input];
            *yr = xr.iter().zip(d.wt.iter()).map(|(a, b)| a * b).sum::<f32>() + d.bias[0];
        }
    } else {
        for row in y.chunks_exact_mut(d.output) {
            row.copy_from_slice(&d.bias);
        }
        gemm_with(simd, y, x, &d.wt, m, d.input, d.output);
    }
    match d.act {
        Activation::Identity => {}
        Activation::Relu => y.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Tanh => y.iter_mut().for_each(|v| *v = tanh(*v)),
        Activation::Sigmoid => y.iter_mut().for_each(|v| *v = sigmoid(*v)),
    }
}

/// Which compiled variant of the kernels this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    Avx512,
    Avx2,
    Baseline,
}

pub fn detect_simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx2") && has!("fma") {
            return Simd::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return Simd::Avx2;
        }
    }
    Simd::Baseline
}

/// One layer over a time-major sequence `x` (`[steps][batch][input]`),
/// starting from and updating (h, c) (`[batch][hidden]`), writing the hidden
/// sequence to `y` (`[steps][batch][hidden]`).
#[allow(clippy::too_many_arguments)]
fn run_layer(
    simd: Simd,
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
    match simd {
        // SAFETY: each variant is only chosen when the CPU reports its
        // features (see `detect_simd`).
        Simd::Avx512 => return unsafe { run_layer_avx512(layer, x, steps, batch, h, c, gates, y) },
        Simd::Avx2 => return unsafe { run_layer_avx2(layer, x, steps, batch, h, c, gates, y) },
        Simd::Baseline => {}
    }
    run_layer_body::<false, 4, 16, 64, false>(layer, x, steps, batch, h, c, gates, y)
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
    run_layer_body::<true, 4, 16, 64, false>(layer, x, steps, batch, h, c, gates, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn run_layer_avx512(
    layer: &LstmLayer,
    x: &[f32],
    steps: usize,
    batch: usize,
    h: &mut [f32],
    c: &mut [f32],
    gates: &mut [f32],
    y: &mut [f32],
) {
    run_layer_body::<true, 4, 16, 128, true>(layer, x, steps, batch, h, c, gates, y)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn run_layer_body<
    const FMA: bool,
    const MR: usize,
    const NR: usize,
    const CB: usize,
    const AVX512: bool,
>(
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
    gemm_dispatch::<FMA, MR, NR, CB, AVX512>(
        gates,
        &x[..rows * layer.input],
        &layer.wt,
        rows,
        layer.input,
        g4,
    );
    for t in 0..steps {
        let g = &mut gates[t * batch * g4..(t + 1) * batch * g4];
        gemm_dispatch::<FMA, MR, NR, CB, AVX512>(g, h, &layer.rt, batch, hd, g4);
        for b in 0..batch {
            let gb = &mut g[b * g4..(b + 1) * g4];
            let (gi, rest) = gb.split_at_mut(hd);
            let (go, rest) = rest.split_at_mut(hd);
            let (gf, gc) = rest.split_at_mut(hd);
            let hb = &mut h[b * hd..(b + 1) * hd];
            let cb = &mut c[b * hd..(b + 1) * hd];
            for u in 0..hd {
                let i = sigmoid_k::<FMA>(gi[u]);
                let o = sigmoid_k::<FMA>(go[u]);
                let f = sigmoid_k::<FMA>(gf[u]);
                let cand = tanh_k::<FMA>(gc[u]);
                let cn = f * cb[u] + i * cand;
                cb[u] = cn;
                hb[u] = o * tanh_k::<FMA>(cn);
            }
        }
        y[t * batch * hd..(t + 1) * batch * hd].copy_from_slice(&h[..batch * hd]);
    }
}

/// `c[m×n] += a[m×k] · b[k×n]` (row-major) with the fastest kernel this CPU
/// has; for the trainer, which shares the forecaster's kernels.
pub fn matmul_acc(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    gemm_with(detect_simd(), c, a, b, m, k, n)
}

/// [`matmul_acc`] with a chosen kernel variant (one the CPU has).
fn gemm_with(simd: Simd, c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    assert!(c.len() >= m * n && a.len() >= m * k && b.len() >= k * n);
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `simd` is a variant the CPU reports (`detect_simd`,
        // `NativeLstm::set_simd` refuses others): AVX-512F, AVX2 and FMA.
        Simd::Avx512 => unsafe { gemm_acc_avx512(c, a, b, m, k, n) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above: AVX2 and FMA.
        Simd::Avx2 => unsafe { matmul_avx2(c, a, b, m, k, n) },
        _ => gemm_acc::<false, 4, 16, 64>(c, a, b, m, k, n),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn matmul_avx2(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    gemm_acc::<true, 4, 16, 64>(c, a, b, m, k, n)
}

/// The AVX-512 micro-kernel where the variant has it, else the generic one.
#[inline(always)]
fn gemm_dispatch<
    const FMA: bool,
    const MR: usize,
    const NR: usize,
    const CB: usize,
    const AVX512: bool,
>(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if AVX512 {
        // SAFETY: AVX512 is true only in `run_layer_avx512`, which runs only
        // when the CPU reports AVX-512F, AVX2 and FMA.
        return unsafe { gemm_acc_avx512(c, a, b, m, k, n) };
    }
    gemm_acc::<FMA, MR, NR, CB>(c, a, b, m, k, n)
}

/// `c[m×n] += a[m×k] · b[k×n]`, all row-major. Tiles of `MR` rows × `NR`
/// columns keep their accumulators in registers across the whole `k` loop
/// (4×16 for both AVX2 and AVX-512: larger tiles measured slower because
/// the compiler then keeps the accumulators in memory); rows left over (the
/// batch-1 encoder is all leftovers) use `CB`-column blocks, eight vectors
/// wide, so enough independent FMA chains hide the latency.
#[inline(always)]
fn gemm_acc<const FMA: bool, const MR: usize, const NR: usize, const CB: usize>(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
) {
    let fma = |acc: f32, x: f32, y: f32| if FMA { x.mul_add(y, acc) } else { acc + x * y };
    let m_main = m - m % MR;
    let n_main = n - n % NR;
    let b = &b[..k * n];
    for i0 in (0..m_main).step_by(MR) {
        let rows: [&[f32]; MR] = std::array::from_fn(|r| &a[(i0 + r) * k..(i0 + r + 1) * k]);
        for j0 in (0..n_main).step_by(NR) {
            let mut acc = [[0.0f32; NR]; MR];
            for (r, acc_r) in acc.iter_mut().enumerate() {
                acc_r.copy_from_slice(&c[(i0 + r) * n + j0..(i0 + r) * n + j0 + NR]);
            }
            for (p, brow) in b.chunks_exact(n).enumerate() {
                let brow: &[f32; NR] = brow[j0..j0 + NR].try_into().unwrap();
                let av: [f32; MR] = std::array::from_fn(|r| rows[r][p]);
                for r in 0..MR {
                    for q in 0..NR {
                        acc[r][q] = fma(acc[r][q], av[r], brow[q]);
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                c[(i0 + r) * n + j0..(i0 + r) * n + j0 + NR].copy_from_slice(acc_r);
            }
        }
        // Columns left of a whole tile.
        for r in i0..i0 + MR {
            let ar = &a[r * k..(r + 1) * k];
            for (p, brow) in b.chunks_exact(n).enumerate() {
                for j in n_main..n {
                    c[r * n + j] = fma(c[r * n + j], ar[p], brow[j]);
                }
            }
        }
    }
    // Rows left of a whole tile: one row at a time, CB columns at once
    // (CB = 4·NR: eight independent accumulator chains hide FMA latency).
    for i in m_main..m {
        let ar = &a[i * k..(i + 1) * k];
        let crow = &mut c[i * n..(i + 1) * n];
        let mut j0 = 0;
        while j0 + CB <= n {
            let mut acc: [f32; CB] = crow[j0..j0 + CB].try_into().unwrap();
            for (p, brow) in b.chunks_exact(n).enumerate() {
                let brow: &[f32; CB] = brow[j0..j0 + CB].try_into().unwrap();
                let av = ar[p];
                for q in 0..CB {
                    acc[q] = fma(acc[q], av, brow[q]);
                }
            }
            crow[j0..j0 + CB].copy_from_slice(&acc);
            j0 += CB;
        }
        for (p, brow) in b.chunks_exact(n).enumerate() {
            for j in j0..n {
                crow[j] = fma(crow[j], ar[p], brow[j]);
            }
        }
    }
}

/// AVX-512 micro-kernel on an `MR`-row × `16·NV`-column tile:
/// `c[0..MR][0..16·NV] += a[0..MR][0..kn] · b[0..kn][0..16·NV]` with row
/// strides `ldc`, `lda`, `ldb`, and `MR·NV` zmm accumulators held in
/// registers across the whole `k` loop (written with intrinsics because
/// the auto-vectorised form of a tile this wide keeps its accumulators in
/// memory). Each element's sum runs over `p` in order, whatever the tile
/// shape, so every shape (and packing `b` or not) gives the same bits.
///
/// # Safety
/// The CPU must support AVX-512F; `c`, `a` and `b` must be valid for the
/// rows, columns and strides above.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx512<const MR: usize, const NV: usize>(
    cp: *mut f32,
    ldc: usize,
    ap: *const f32,
    lda: usize,
    bp: *const f32,
    ldb: usize,
    kn: usize,
) {
    use std::arch::x86_64::*;
    // SAFETY (all pointer arithmetic below): within the rows and strides
    // of the contract.
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    for (r, acc_r) in acc.iter_mut().enumerate() {
        for (v, acc_rv) in acc_r.iter_mut().enumerate() {
            *acc_rv = _mm512_loadu_ps(cp.add(r * ldc + 16 * v));
        }
    }
    let rows: [*const f32; MR] = std::array::from_fn(|r| ap.add(r * lda));
    for p in 0..kn {
        let brow = bp.add(p * ldb);
        let bv: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(brow.add(16 * v)));
        for r in 0..MR {
            let x = _mm512_set1_ps(*rows[r].add(p));
            for v in 0..NV {
                acc[r][v] = _mm512_fmadd_ps(x, bv[v], acc[r][v]);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (v, acc_rv) in acc_r.iter().enumerate() {
            _mm512_storeu_ps(cp.add(r * ldc + 16 * v), *acc_rv);
        }
    }
}

/// Depth of the k blocks: the `b` panel a row band streams through
/// (`KC` × 32 floats, 32 KB) stays in L1.
const KC: usize = 256;

/// A `KC` × 32 panel of `b`, packed contiguously.
#[repr(C, align(64))]
struct Panel([f32; KC * 32]);

/// `c += a · b` on rows `0..m4` (`m4` a multiple of 4) and columns
/// `0..n16` (a multiple of 16), over k blocks of [`KC`]: 8×32 tiles
/// (sixteen accumulators: per step of `k`, two loads of `b` and eight
/// broadcasts feed sixteen FMAs), a 4-row band below them, 16-column
/// tiles right of them. With `PACK`, each 32-column panel of `b` is first
/// copied into a contiguous buffer: rows of `b` a power-of-two apart map
/// to a few L1 sets, so the strided panel does not stay in L1 while the
/// row tiles reuse it.
///
/// # Safety
/// The CPU must support AVX-512F; the slices hold `m·n` (c), `m·k` (a)
/// and `k·n` (b) values with `m4 <= m`, `n16 <= n`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
unsafe fn tiles_avx512<const PACK: bool>(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m4: usize,
    n16: usize,
    k: usize,
    n: usize,
) {
    debug_assert!(c.len() >= m4 * n && a.len() >= m4 * k && b.len() >= k * n);
    debug_assert!(m4.is_multiple_of(4) && n16.is_multiple_of(16) && n16 <= n);
    let m8 = m4 - m4 % 8;
    let n32 = n16 - n16 % 32;
    // Written before it is read (only its first `kn` rows are used).
    let mut panel = std::mem::MaybeUninit::<Panel>::uninit();
    let panel_w = panel.as_mut_ptr() as *mut f32;
    let (cp, ap, bp) = (c.as_mut_ptr(), a.as_ptr(), b.as_ptr());
    // SAFETY (pointer arithmetic): every tile lies within rows `0..m4`,
    // columns `0..n16` and depth `0..k`, as the contract allows.
    for k0 in (0..k).step_by(KC) {
        let kn = KC.min(k - k0);
        for j0 in (0..n32).step_by(32) {
            let (panel_p, ldb) = if PACK {
                for p in 0..kn {
                    std::ptr::copy_nonoverlapping(
                        bp.add((k0 + p) * n + j0),
                        panel_w.add(p * 32),
                        32,
                    );
                }
                (panel_w as *const f32, 32)
            } else {
                (bp.add(k0 * n + j0), n)
            };
            for i0 in (0..m8).step_by(8) {
                let (ct, at) = (cp.add(i0 * n + j0), ap.add(i0 * k + k0));
                tile_avx512::<8, 2>(ct, n, at, k, panel_p, ldb, kn);
            }
            if m4 > m8 {
                let (ct, at) = (cp.add(m8 * n + j0), ap.add(m8 * k + k0));
                tile_avx512::<4, 2>(ct, n, at, k, panel_p, ldb, kn);
            }
        }
        if n16 > n32 {
            let bt = bp.add(k0 * n + n32);
            for i0 in (0..m4).step_by(4) {
                let (ct, at) = (cp.add(i0 * n + n32), ap.add(i0 * k + k0));
                tile_avx512::<4, 1>(ct, n, at, k, bt, n, kn);
            }
        }
    }
}

/// `c += a · b` with the AVX-512 micro-kernels ([`tiles_avx512`]) and the
/// generic code for the last rows and columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gemm_acc_avx512(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    assert!(c.len() >= m * n && a.len() >= m * k && b.len() >= k * n);
    let m4 = m - m % 4;
    let n16 = n - n % 16;
    // Packing pays when enough row tiles reuse each panel: measured
    // (examples of the trainer's shapes, one core) 7–12 % faster at 64
    // rows, 0–4 % slower at 32.
    // SAFETY: bounds asserted above; AVX-512F enabled on this fn.
    unsafe {
        if m4 == 0 || n16 == 0 {
            // Nothing for the tiles (the batch-1 encoder's steps): no call.
        } else if m >= 48 {
            tiles_avx512::<true>(c, a, b, m4, n16, k, n)
        } else {
            tiles_avx512::<false>(c, a, b, m4, n16, k, n)
        }
    }
    // Columns right of the tiles. (Guarded: with none, the empty loop
    // still walked all m·k entries of `a`, 10 % of a training run.)
    if n16 < n {
        for r in 0..m4 {
            for p in 0..k {
                let av = a[r * k + p];
                for j in n16..n {
                    c[r * n + j] = av.mul_add(b[p * n + j], c[r * n + j]);
                }
            }
        }
    }
    if m4 < m {
        let (c_rest, a_rest) = (&mut c[m4 * n..m * n], &a[m4 * k..m * k]);
        gemm_acc::<true, 4, 16, 128>(c_rest, a_rest, b, m - m4, k, n);
    }
}

/// tanh by a [13/6] rational approximation on a clamped argument: branch
/// free, so loops over it vectorise; |error| < 1e-6 over all of f32.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    tanh_k::<false>(x)
}

/// σ(x) = (1 + tanh(x/2)) / 2.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    sigmoid_k::<false>(x)
}

/// [`tanh`] with fused multiply–adds where the kernel variant has them.
#[inline(always)]
pub(crate) fn tanh_k<const FMA: bool>(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    let madd = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { a * b + c };
    let x = x.clamp(-CLAMP, CLAMP);
    let x2 = x * x;
    let mut p = -2.760_768_5e-16_f32;
    p = madd(p, x2, 2.000_188e-13);
    p = madd(p, x2, -8.604_672e-11);
    p = madd(p, x2, 5.122_297e-8);
    p = madd(p, x2, 1.485_722_4e-5);
    p = madd(p, x2, 6.372_619_3e-4);
    p = madd(p, x2, 4.893_524_6e-3);
    p *= x;
    let mut q = 1.198_258_4e-6_f32;
    q = madd(q, x2, 1.185_347_1e-4);
    q = madd(q, x2, 2.268_434_6e-3);
    q = madd(q, x2, 4.893_525e-3);
    p / q
}

#[inline(always)]
pub(crate) fn sigmoid_k<const FMA: bool>(x: f32) -> f32 {
    0.5 + 0.5 * tanh_k::<FMA>(0.5 * x)
}

/// [`tanh_k`] on sixteen lanes (AVX-512F): the same clamp, the same fused
/// polynomial evaluation and the same division, so the same bits as
/// `tanh_k::<true>` lane by lane (for any argument but NaN). (A 14-bit
/// reciprocal estimate refined by a Newton step in place of `vdivps`
/// measured no faster in training, within the noise, and changes the bits.)
///
/// # Safety
/// The CPU must support AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[inline]
pub(crate) unsafe fn tanh_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    const CLAMP: f32 = 7.905_311;
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-CLAMP)),
        _mm512_set1_ps(CLAMP),
    );
    let x2 = _mm512_mul_ps(x, x);
    let madd = |p: __m512, c: f32| _mm512_fmadd_ps(p, x2, _mm512_set1_ps(c));
    let mut p = _mm512_set1_ps(-2.760_768_5e-16);
    p = madd(p, 2.000_188e-13);
    p = madd(p, -8.604_672e-11);
    p = madd(p, 5.122_297e-8);
    p = madd(p, 1.485_722_4e-5);
    p = madd(p, 6.372_619_3e-4);
    p = madd(p, 4.893_524_6e-3);
    p = _mm512_mul_ps(p, x);
    let mut q = _mm512_set1_ps(1.198_258_4e-6);
    q = madd(q, 1.185_347_1e-4);
    q = madd(q, 2.268_434_6e-3);
    q = madd(q, 4.893_525e-3);
    _mm512_div_ps(p, q)
}

/// [`sigmoid_k`] on sixteen lanes: ½ + ½·tanh(x/2), as [`tanh_avx512`].
///
/// # Safety
/// As for [`tanh_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[inline]
pub(crate) unsafe fn sigmoid_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let half = _mm512_set1_ps(0.5);
    let t = tanh_avx512(_mm512_mul_ps(half, x));
    _mm512_add_ps(half, _mm512_mul_ps(half, t))
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
        let mut y = -30.0f32;
        while y < 30.0 {
            let exact = (y as f64).tanh();
            assert!(
                (tanh_k::<true>(y) as f64 - exact).abs() < 1e-6,
                "fused tanh at {y}"
            );
            let s_exact = 1.0 / (1.0 + (-(y as f64)).exp());
            assert!(
                (sigmoid_k::<true>(y) as f64 - s_exact).abs() < 1e-6,
                "fused sigmoid at {y}"
            );
            y += 0.01;
        }
        assert!(worst_s < 1e-6, "sigmoid error {worst_s:e}");
        assert_eq!(tanh(f32::INFINITY), tanh(1e9));
    }

    /// The sixteen-lane activations give the bits of the scalar ones.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_activations_equal_the_scalar_ones() {
        use std::arch::x86_64::*;
        if detect_simd() != Simd::Avx512 {
            return;
        }
        let mut x = -30.0f32;
        while x < 30.0 {
            let xs: [f32; 16] = std::array::from_fn(|l| x + l as f32 * 0.000_37);
            let (mut t, mut s) = ([0.0f32; 16], [0.0f32; 16]);
            // SAFETY: the CPU reports AVX-512F and FMA.
            unsafe {
                let v = _mm512_loadu_ps(xs.as_ptr());
                _mm512_storeu_ps(t.as_mut_ptr(), tanh_avx512(v));
                _mm512_storeu_ps(s.as_mut_ptr(), sigmoid_avx512(v));
            }
            for l in 0..16 {
                assert_eq!(
                    t[l].to_bits(),
                    tanh_k::<true>(xs[l]).to_bits(),
                    "tanh {}",
                    xs[l]
                );
                assert_eq!(
                    s[l].to_bits(),
                    sigmoid_k::<true>(xs[l]).to_bits(),
                    "σ {}",
                    xs[l]
                );
            }
            x += 0.0061;
        }
    }

    #[test]
    fn gemm_matches_naive_for_ragged_shapes() {
        for (m, k, n) in [
            (1, 3, 64),
            (5, 7, 40),
            (8, 16, 64),
            (33, 9, 19),
            (3, 64, 256),
            (32, 64, 256),
            (9, 5, 70),
            (8, 7, 48),
            (12, 33, 83),
            (8, 600, 80),
            // The trainer's shapes (packed panels from 48 rows), ragged
            // edges and several k blocks.
            (64, 67, 256),
            (64, 256, 64),
            (68, 600, 256),
            (52, 300, 83),
            (50, 19, 48),
        ] {
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
            for variant in 0..3 {
                let mut c = c0.clone();
                match variant {
                    0 => gemm_acc::<false, 4, 16, 64>(&mut c, &a, &b, m, k, n),
                    1 => gemm_acc::<true, 4, 16, 64>(&mut c, &a, &b, m, k, n),
                    _ => gemm_acc::<true, 4, 16, 128>(&mut c, &a, &b, m, k, n),
                }
                #[cfg(target_arch = "x86_64")]
                if variant == 2 && detect_simd() == Simd::Avx512 {
                    let mut c2 = c0.clone();
                    // SAFETY: the CPU reports AVX-512F.
                    unsafe { gemm_acc_avx512(&mut c2, &a, &b, m, k, n) };
                    // Every element is the same chain of fused
                    // multiply–adds over p in order, whatever the tile.
                    assert_eq!(c2, c, "avx512 {m}x{k}x{n} differs from the generic kernel");
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
                    for (xv, w) in x.iter().zip(l.wt.chunks_exact(g4)) {
                        g.iter_mut().zip(w).for_each(|(gq, wq)| *gq += xv * wq);
                    }
                    for (hv, r) in h.iter().zip(l.rt.chunks_exact(g4)) {
                        g.iter_mut().zip(r).for_each(|(gq, rq)| *gq += hv * rq);
                    }
                    for u in 0..hd {
                        let cn = sig(g[2 * hd + u]) * c[u] + sig(g[u]) * g[3 * hd + u].tanh();
                        c[u] = cn;
                        h[u] = sig(g[hd + u]) * cn.tanh();
                    }
                    *x = h.clone();
                }
            }
            match lstm.head.input {
                HeadInput::EachStep => {
                    for j in 0..t_out {
                        out[kk * t_out + j] = reference_head(&lstm.head, &seq[t_in + j])[0];
                    }
                }
                HeadInput::LastStep => out[kk * t_out..(kk + 1) * t_out]
                    .copy_from_slice(&reference_head(&lstm.head, &seq[t_in + t_out - 1])),
            }
        }
        out
    }

    /// The head on one hidden state, textbook style (exact activations).
    fn reference_head(head: &Head, h: &[f32]) -> Vec<f32> {
        let mut x = h.to_vec();
        for d in &head.layers {
            x = (0..d.output)
                .map(|o| {
                    let z = d.bias[o]
                        + (0..d.input)
                            .map(|i| x[i] * d.wt[i * d.output + o])
                            .sum::<f32>();
                    match d.act {
                        Activation::Identity => z,
                        Activation::Relu => z.max(0.0),
                        Activation::Tanh => z.tanh(),
                        Activation::Sigmoid => 1.0 / (1.0 + (-z).exp()),
                    }
                })
                .collect();
        }
        x
    }

    fn random_stack(rnd: &mut impl FnMut() -> f32, layers: usize, hidden: usize) -> Vec<LstmLayer> {
        (0..layers)
            .map(|l| {
                let input = if l == 0 { 3 } else { hidden };
                let w: Vec<f32> = (0..4 * hidden * input).map(|_| rnd()).collect();
                let r: Vec<f32> = (0..4 * hidden * hidden).map(|_| rnd()).collect();
                let b: Vec<f32> = (0..8 * hidden).map(|_| rnd()).collect();
                LstmLayer::from_onnx(&w, &r, Some(&b), input, hidden)
            })
            .collect()
    }

    fn random_dense(
        rnd: &mut impl FnMut() -> f32,
        input: usize,
        output: usize,
        act: Activation,
    ) -> Dense {
        let wt: Vec<f32> = (0..input * output).map(|_| rnd()).collect();
        Dense {
            input,
            output,
            wt: Aligned::from_slice(&wt),
            bias: (0..output).map(|_| rnd()).collect(),
            act,
        }
    }

    /// Per-step MLPs and dense heads over the last state, for 1 and 2
    /// layers and every activation, equal the textbook computation for
    /// K = 1 and 32 with every kernel variant the CPU has.
    #[test]
    fn every_head_equals_the_windowed_computation() {
        let mut seed = 99u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 0.8
        };
        let (t_in, t_out) = (10, 6);
        let acts = [
            Activation::Relu,
            Activation::Tanh,
            Activation::Sigmoid,
            Activation::Identity,
        ];
        for (n, act) in acts.into_iter().enumerate() {
            let (layers, hidden) = (1 + n % 2, 8 + 5 * n);
            let heads = [
                Head {
                    input: HeadInput::EachStep,
                    layers: vec![
                        random_dense(&mut rnd, hidden, 12, act),
                        random_dense(&mut rnd, 12, 1, Activation::Identity),
                    ],
                    residual: false,
                    skip: None,
                    gain: None,
                },
                Head {
                    input: HeadInput::LastStep,
                    layers: vec![random_dense(&mut rnd, hidden, t_out, Activation::Identity)],
                    residual: false,
                    skip: None,
                    gain: None,
                },
                Head {
                    input: HeadInput::LastStep,
                    layers: vec![
                        random_dense(&mut rnd, hidden, 33, act),
                        random_dense(&mut rnd, 33, t_out, Activation::Identity),
                    ],
                    residual: false,
                    skip: None,
                    gain: None,
                },
            ];
            for head in heads {
                let stack = random_stack(&mut rnd, layers, hidden);
                let mut lstm = NativeLstm::with_head(stack, head, t_in, t_out, 32);
                for simd in [Simd::Baseline, Simd::Avx2, Simd::Avx512] {
                    lstm.set_simd(simd);
                    for k in [1, 32] {
                        let observed: Vec<f32> = (0..2 * t_in).map(|_| rnd() * 3.0).collect();
                        let plans: Vec<f32> = (0..k * t_out).map(|_| rnd() * 3.0).collect();
                        let mut out = vec![0.0; k * t_out];
                        lstm.forecast(&observed, &plans, k, &mut out);
                        let want = reference(&lstm, &observed, &plans, k, t_in, t_out);
                        for (a, b) in out.iter().zip(&want) {
                            assert!(
                                (a - b).abs() < 1e-5,
                                "{} ({layers} layers, {simd:?}, K {k}): {a} vs {b}",
                                lstm.head.describe()
                            );
                        }
                    }
                }
            }
        }
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
