//! The trainable network: stacked LSTM + one linear unit per horizon step
//! (the seed paper's architecture), with forward and backward passes
//! written out over batched loops (backpropagation through time).
//!
//! A two-layer MLP head (`Head::Mlp`) exists so the paper's claim that a
//! single fully connected output layer beats MLP heads can be tested with
//! the same trainer; the linear head stays the default and its arithmetic
//! is untouched by the option.
//!
//! Weights are kept in ONNX layout (W `[4H][in]`, R `[4H][H]`, gates in
//! i, o, f, c order, two bias vectors) so export is a copy. Training runs
//! on the trainer thread, never on the control loop; it allocates freely at
//! construction and reuses its buffers between batches.

use crate::forecast::card::OutputOrder;
use crate::forecast::lstm::matmul_acc;

/// Parameters of one LSTM layer (ONNX layout).
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub input: usize,
    pub hidden: usize,
    /// `[4H][input]`.
    pub w: Vec<f32>,
    /// `[4H][H]`.
    pub r: Vec<f32>,
    /// `[4H]` input bias and `[4H]` recurrent bias (ONNX's B = [wb, rb]).
    pub wb: Vec<f32>,
    pub rb: Vec<f32>,
}

/// The output head applied to each of the last `t_out` hidden states.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Head {
    /// One fully connected unit, `Linear(H, 1)` (the paper's choice).
    #[default]
    Linear,
    /// `Linear(H, H)`, tanh, `Linear(H, 1)`: the MLP output head the paper
    /// argues against.
    Mlp,
}

impl Head {
    /// The name the model card's `architecture.head` uses.
    pub fn name(self) -> &'static str {
        match self {
            Head::Linear => "linear",
            Head::Mlp => "mlp",
        }
    }
}

/// The whole network's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Net {
    pub layers: Vec<Layer>,
    /// `[H]` (linear head) or `[M]` (MLP head, the output layer) and the
    /// bias of the output unit.
    pub head_w: Vec<f32>,
    pub head_b: f32,
    /// MLP head only: the hidden layer's `[M][H]` weights and `[M]` biases;
    /// empty for the linear head.
    pub head_w1: Vec<f32>,
    pub head_b1: Vec<f32>,
    pub t_in: usize,
    pub t_out: usize,
    pub order: OutputOrder,
    /// The residual output (model card version 2): every output is the
    /// last observed V plus the head's value, so the network learns the
    /// change from the last sample. The skip has no parameters: gradients
    /// are those of the plain network at the shifted outputs.
    pub residual: bool,
    /// A fixed linear map of the whole input added to the output (the AR
    /// baseline's fit, [`super::baselines::LinearAr::linear_map`]): the
    /// LSTM then learns only what AR misses. Not trained (not a parameter).
    pub skip: Option<Skip>,
}

/// A fixed linear map of the contract input row to the outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Skip {
    /// `[(t_in + t_out)·3][t_out]`, columns in the model's output order.
    pub w: Vec<f32>,
    /// `[t_out]`, in the model's output order.
    pub b: Vec<f32>,
    /// Per-step gains on the head's output before the map is added
    /// (`[t_out]`, model order): `y_j = gain_j · head_j + skip_j(x)`. Set by
    /// calibration's AR blend (`train.ar_blend`), which chooses, on
    /// validation windows, how much of the network to trust at each
    /// horizon step against the AR baseline; `None` is gain 1 everywhere.
    pub gain: Option<Vec<f32>>,
}

impl Skip {
    /// From a forward-order map (`LinearAr::linear_map`), for a network
    /// with output `order`.
    pub fn from_forward(w: &[f32], b: &[f32], t_out: usize, order: OutputOrder) -> Skip {
        let col = |j: usize| match order {
            OutputOrder::Forward => j,
            OutputOrder::Reversed => t_out - 1 - j,
        };
        let rows = w.len() / t_out;
        let mut out = Skip {
            w: vec![0.0; w.len()],
            b: vec![0.0; t_out],
            gain: None,
        };
        for r in 0..rows {
            for j in 0..t_out {
                out.w[r * t_out + col(j)] = w[r * t_out + j];
            }
        }
        for (j, &bj) in b.iter().enumerate() {
            out.b[col(j)] = bj;
        }
        out
    }
}

impl Net {
    /// The trainable network holding the weights of a loaded contract model:
    /// what fine-tuning starts from, and what `model eval` runs (a batched
    /// forward pass, far faster than tract window by window).
    pub fn from_forecaster(f: &crate::forecast::Forecaster) -> Result<Net, String> {
        let card = f.card();
        let cw = crate::forecast::onnx::contract_weights(f.onnx_proto(), card)?;
        let layers = cw
            .layers
            .into_iter()
            .map(|l| {
                let g = 4 * l.hidden;
                let (wb, rb) = match l.b {
                    Some(b) => (b[..g].to_vec(), b[g..].to_vec()),
                    None => (vec![0.0; g], vec![0.0; g]),
                };
                Layer {
                    input: l.input,
                    hidden: l.hidden,
                    w: l.w,
                    r: l.r,
                    wb,
                    rb,
                }
            })
            .collect();
        Ok(Net {
            layers,
            head_w: cw.head_w,
            head_b: cw.head_b,
            // The contract's linear head (`contract_weights` refuses others).
            head_w1: Vec::new(),
            head_b1: Vec::new(),
            t_in: card.t_in,
            t_out: card.t_out,
            order: card.output.order,
            residual: card.output.residual,
            skip: None,
        })
    }

    /// PyTorch's default initialisation: uniform in ±1/√H, from a seed.
    pub fn new(
        layers: usize,
        hidden: usize,
        t_in: usize,
        t_out: usize,
        order: OutputOrder,
        seed: u64,
    ) -> Net {
        Net::with_head(layers, hidden, t_in, t_out, order, Head::Linear, seed)
    }

    /// As [`Net::new`] with a choice of head. The linear head draws exactly
    /// the numbers `new` always drew (same weights for the same seed); the
    /// MLP head's hidden layer (width M = H) is drawn after them.
    pub fn with_head(
        layers: usize,
        hidden: usize,
        t_in: usize,
        t_out: usize,
        order: OutputOrder,
        head: Head,
        seed: u64,
    ) -> Net {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let bound = 1.0 / (hidden as f32).sqrt();
        let mut rnd = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
                })
                .collect()
        };
        let mut ls = Vec::new();
        for l in 0..layers {
            let input = if l == 0 { 3 } else { hidden };
            let g = 4 * hidden;
            ls.push(Layer {
                input,
                hidden,
                w: rnd(g * input),
                r: rnd(g * hidden),
                wb: rnd(g),
                rb: rnd(g),
            });
        }
        let head_w = rnd(hidden);
        let head_b = rnd(1)[0];
        let (head_w1, head_b1) = match head {
            Head::Linear => (Vec::new(), Vec::new()),
            Head::Mlp => (rnd(hidden * hidden), rnd(hidden)),
        };
        Net {
            head_w,
            head_b,
            head_w1,
            head_b1,
            layers: ls,
            t_in,
            t_out,
            order,
            residual: false,
            skip: None,
        }
    }

    /// The same network with the residual output on or off.
    pub fn with_residual(mut self, residual: bool) -> Net {
        self.residual = residual;
        self
    }

    pub fn head(&self) -> Head {
        if self.head_w1.is_empty() {
            Head::Linear
        } else {
            Head::Mlp
        }
    }

    pub fn hidden(&self) -> usize {
        self.layers.last().map(|l| l.hidden).unwrap_or(0)
    }

    /// All parameters as one flat list of slices, in a fixed order (for the
    /// optimiser and gradient checks).
    pub fn params_mut(&mut self) -> Vec<&mut [f32]> {
        let mut v: Vec<&mut [f32]> = Vec::new();
        for l in &mut self.layers {
            v.push(&mut l.w);
            v.push(&mut l.r);
            v.push(&mut l.wb);
            v.push(&mut l.rb);
        }
        if !self.head_w1.is_empty() {
            v.push(&mut self.head_w1);
            v.push(&mut self.head_b1);
        }
        v.push(&mut self.head_w);
        v.push(std::slice::from_mut(&mut self.head_b));
        v
    }

    pub fn param_count(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.w.len() + l.r.len() + 2 * l.wb.len())
            .sum::<usize>()
            + self.head_w1.len()
            + self.head_b1.len()
            + self.head_w.len()
            + 1
    }

    /// A zeroed gradient of the same shape.
    pub fn zeros_like(&self) -> Net {
        let mut g = self.clone();
        for p in g.params_mut() {
            p.fill(0.0);
        }
        g
    }

    /// Target column for model output column j: reversed models predict
    /// horizon step t_out − j in column j.
    pub fn target_index(&self, j: usize) -> usize {
        match self.order {
            OutputOrder::Forward => j,
            OutputOrder::Reversed => self.t_out - 1 - j,
        }
    }
}

/// Per-layer activations kept for the backward pass, time-major `[T][B][·]`.
#[derive(Clone, Debug, Default)]
struct Cache {
    /// The layer's step inputs `[x_t, h_{t−1}, 1]` stored transposed,
    /// `[inp + H + 1][T·B]`: the weight and bias gradients of the whole
    /// sequence are then one product with the gate gradients, with no
    /// transpose pass (the constant row gives the bias gradient).
    xt: Vec<f32>,
    i: Vec<f32>,
    o: Vec<f32>,
    f: Vec<f32>,
    g: Vec<f32>,
    c: Vec<f32>,
    tc: Vec<f32>,
    h: Vec<f32>,
}

// The forecaster's branch-free activations (|error| < 1e-6): libm's exp
// and tanh, called per element, cost more than all the matrix products.
use crate::forecast::lstm::{detect_simd, sigmoid_k, tanh_k, Simd};

/// `out[cols][rows] = a[rows][cols]ᵀ`.
fn transpose(a: &[f32], rows: usize, cols: usize, out: &mut Vec<f32>) {
    // In 16×16 blocks: a plain row-by-row transpose writes with a stride
    // of `rows` floats.
    const B: usize = 16;
    out.clear();
    out.resize(rows * cols, 0.0);
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                let src = &a[r * cols..(r + 1) * cols];
                for c in c0..(c0 + B).min(cols) {
                    out[c * rows + r] = src[c];
                }
            }
        }
    }
}

/// One step's LSTM cell over the batch on sixteen lanes: from the gate
/// pre-activations `gates` (`[B][4H]`, i, o, f, c order) and the previous
/// cell state `c_prev` (`[B][H]`, `None` for zeros), the step's activations
/// into the cache rows (each `[B][H]`). The same arithmetic, in the same
/// order, as the scalar loop in `forward_layer`, so the same bits.
///
/// # Safety
/// The CPU must support AVX-512F and FMA; `hd` a multiple of 16; `gates` holds
/// `4·len` values and every other slice `len` (a multiple of `hd`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn cell_forward_avx512(
    gates: &[f32],
    hd: usize,
    c_prev: Option<&[f32]>,
    i_out: &mut [f32],
    o_out: &mut [f32],
    f_out: &mut [f32],
    g_out: &mut [f32],
    c_out: &mut [f32],
    tc_out: &mut [f32],
    h_out: &mut [f32],
) {
    use crate::forecast::lstm::{sigmoid_avx512, tanh_avx512};
    use std::arch::x86_64::*;
    let len = h_out.len();
    assert!(hd.is_multiple_of(16) && len.is_multiple_of(hd) && gates.len() >= 4 * len);
    assert!([
        i_out.len(),
        o_out.len(),
        f_out.len(),
        g_out.len(),
        c_out.len(),
        tc_out.len()
    ]
    .iter()
    .all(|&l| l == len));
    assert!(c_prev.is_none_or(|c| c.len() == len));
    let gp = gates.as_ptr();
    // SAFETY (pointers): every offset is below `len` (outputs, c_prev) or
    // `4·len` (gates), asserted above.
    for b in 0..len / hd {
        let g = gp.add(b * 4 * hd);
        for u in (0..hd).step_by(16) {
            let at = b * hd + u;
            let i = sigmoid_avx512(_mm512_loadu_ps(g.add(u)));
            let o = sigmoid_avx512(_mm512_loadu_ps(g.add(hd + u)));
            let f = sigmoid_avx512(_mm512_loadu_ps(g.add(2 * hd + u)));
            let gg = tanh_avx512(_mm512_loadu_ps(g.add(3 * hd + u)));
            let cp = match c_prev {
                Some(cp) => _mm512_loadu_ps(cp.as_ptr().add(at)),
                None => _mm512_setzero_ps(),
            };
            let c = _mm512_add_ps(_mm512_mul_ps(f, cp), _mm512_mul_ps(i, gg));
            let tc = tanh_avx512(c);
            _mm512_storeu_ps(i_out.as_mut_ptr().add(at), i);
            _mm512_storeu_ps(o_out.as_mut_ptr().add(at), o);
            _mm512_storeu_ps(f_out.as_mut_ptr().add(at), f);
            _mm512_storeu_ps(g_out.as_mut_ptr().add(at), gg);
            _mm512_storeu_ps(c_out.as_mut_ptr().add(at), c);
            _mm512_storeu_ps(tc_out.as_mut_ptr().add(at), tc);
            _mm512_storeu_ps(h_out.as_mut_ptr().add(at), _mm512_mul_ps(o, tc));
        }
    }
}

/// The cached activations of one step (each `[B][H]`) for the backward
/// element loop.
struct StepCache<'a> {
    i: &'a [f32],
    o: &'a [f32],
    f: &'a [f32],
    g: &'a [f32],
    tc: &'a [f32],
    /// The previous step's cell state; `None` for zeros (the first step).
    c_prev: Option<&'a [f32]>,
}

/// One step's gate gradients over the batch on sixteen lanes: `dg`
/// (`[B][4H]`) from dL/dh (`dh_above + dh_next`) and the carried dL/dc
/// (`dc_next`, updated to the previous step's). The same arithmetic, in
/// the same order, as the scalar loop in `backward_layer`, so the same
/// bits.
///
/// # Safety
/// The CPU must support AVX-512F; `hd` a multiple of 16; `dg` holds `4·len`
/// values and every other slice `len` (a multiple of `hd`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn cell_backward_avx512(
    s: &StepCache,
    hd: usize,
    dh_above: &[f32],
    dh_next: &[f32],
    dc_next: &mut [f32],
    dg: &mut [f32],
) {
    use std::arch::x86_64::*;
    let len = dc_next.len();
    assert!(hd.is_multiple_of(16) && len.is_multiple_of(hd) && dg.len() >= 4 * len);
    assert!([
        s.i.len(),
        s.o.len(),
        s.f.len(),
        s.g.len(),
        s.tc.len(),
        dh_above.len(),
        dh_next.len()
    ]
    .iter()
    .all(|&l| l == len));
    assert!(s.c_prev.is_none_or(|c| c.len() == len));
    let one = _mm512_set1_ps(1.0);
    let ld = |x: &[f32], at: usize| _mm512_loadu_ps(x.as_ptr().add(at));
    // SAFETY (pointers): offsets below `len`, or `4·len` in `dg`.
    for b in 0..len / hd {
        let d = dg.as_mut_ptr().add(b * 4 * hd);
        for u in (0..hd).step_by(16) {
            let at = b * hd + u;
            let dh = _mm512_add_ps(ld(dh_above, at), ld(dh_next, at));
            let (i, o, f, g, tc) = (
                ld(s.i, at),
                ld(s.o, at),
                ld(s.f, at),
                ld(s.g, at),
                ld(s.tc, at),
            );
            let c_prev = match s.c_prev {
                Some(c) => ld(c, at),
                None => _mm512_setzero_ps(),
            };
            let dtc = _mm512_sub_ps(one, _mm512_mul_ps(tc, tc));
            let dc = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(dh, o), dtc), ld(dc_next, at));
            let di = _mm512_mul_ps(
                _mm512_mul_ps(_mm512_mul_ps(dc, g), i),
                _mm512_sub_ps(one, i),
            );
            let do_ = _mm512_mul_ps(
                _mm512_mul_ps(_mm512_mul_ps(dh, tc), o),
                _mm512_sub_ps(one, o),
            );
            let df = _mm512_mul_ps(
                _mm512_mul_ps(_mm512_mul_ps(dc, c_prev), f),
                _mm512_sub_ps(one, f),
            );
            let dgc = _mm512_mul_ps(
                _mm512_mul_ps(dc, i),
                _mm512_sub_ps(one, _mm512_mul_ps(g, g)),
            );
            _mm512_storeu_ps(d.add(u), di);
            _mm512_storeu_ps(d.add(hd + u), do_);
            _mm512_storeu_ps(d.add(2 * hd + u), df);
            _mm512_storeu_ps(d.add(3 * hd + u), dgc);
            _mm512_storeu_ps(dc_next.as_mut_ptr().add(at), _mm512_mul_ps(dc, f));
        }
    }
}

/// Forward and backward passes with reusable buffers, written as batched
/// matrix products over the forecaster's kernels. Per step, the input and
/// recurrent projections are one product over `[x_t, h_{t−1}]` (one pass
/// over a gate buffer that stays in cache, instead of a whole-sequence gate
/// tensor streamed through memory twice); the weight gradients of a whole
/// sequence are one product.
#[derive(Clone, Debug, Default)]
pub struct Workspace {
    caches: Vec<Cache>,
    /// The batch time-major, `[T][B][3]`: layer 0's input.
    input: Vec<f32>,
    out: Vec<f32>,
    /// `[inp + H][4H]`: W and R transposed and stacked.
    wrt: Vec<f32>,
    /// `[4H][inp + H]`: W and R side by side (backward, layers above 0).
    wr: Vec<f32>,
    tmp: Vec<f32>,
    bias: Vec<f32>,
    /// One step's gates `[B][4H]` and stacked inputs `[B][inp + H]`.
    gates: Vec<f32>,
    xh: Vec<f32>,
    dg: Vec<f32>,
    dxh: Vec<f32>,
    scratch: Vec<f32>,
    below: Vec<f32>,
    dh_next: Vec<f32>,
    dc_next: Vec<f32>,
    zeros: Vec<f32>,
    wgrad: Vec<f32>,
    /// MLP head: tanh activations `[B][t_out][M]`.
    head_a: Vec<f32>,
}

impl Workspace {
    /// Forward pass over a batch of contract inputs `x` (`[B][T][3]`,
    /// normalised). Returns the outputs `[B][t_out]` in the model's order.
    pub fn forward(&mut self, net: &Net, x: &[f32], batch: usize) -> &[f32] {
        match detect_simd() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU reports AVX-512F, AVX2 and FMA.
            Simd::Avx512 => unsafe { self.forward_avx512(net, x, batch) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU reports AVX2 and FMA.
            Simd::Avx2 => unsafe { self.forward_avx2(net, x, batch) },
            _ => self.forward_impl::<false, false>(net, x, batch),
        }
        &self.out
    }

    /// Mean squared error against targets `y` (`[B][t_out]`, normalised,
    /// forward order) and its gradient, accumulated into `grad`. Call
    /// `forward` first with the same batch.
    pub fn backward(&mut self, net: &Net, y: &[f32], batch: usize, grad: &mut Net) -> f64 {
        self.backward_weighted(net, y, None, batch, grad)
    }

    /// [`Workspace::backward`] with a weight per target (`[B][t_out]`,
    /// forward order, like `y`): the loss is Σ w·e² / (B·t_out), so weights
    /// of 1 give the plain mean squared error. The spike-aware loss weights
    /// the steps around spikes, which the plain error averages away.
    pub fn backward_weighted(
        &mut self,
        net: &Net,
        y: &[f32],
        w: Option<&[f32]>,
        batch: usize,
        grad: &mut Net,
    ) -> f64 {
        if let Some(w) = w {
            assert_eq!(w.len(), y.len(), "one weight per target");
        }
        match detect_simd() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU reports AVX-512F, AVX2 and FMA.
            Simd::Avx512 => unsafe { self.backward_avx512(net, y, w, batch, grad) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU reports AVX2 and FMA.
            Simd::Avx2 => unsafe { self.backward_avx2(net, y, w, batch, grad) },
            _ => self.backward_impl::<false, false>(net, y, w, batch, grad),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn forward_avx512(&mut self, net: &Net, x: &[f32], batch: usize) {
        self.forward_impl::<true, true>(net, x, batch)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_avx2(&mut self, net: &Net, x: &[f32], batch: usize) {
        self.forward_impl::<true, false>(net, x, batch)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn backward_avx512(
        &mut self,
        net: &Net,
        y: &[f32],
        w: Option<&[f32]>,
        batch: usize,
        grad: &mut Net,
    ) -> f64 {
        self.backward_impl::<true, true>(net, y, w, batch, grad)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn backward_avx2(
        &mut self,
        net: &Net,
        y: &[f32],
        w: Option<&[f32]>,
        batch: usize,
        grad: &mut Net,
    ) -> f64 {
        self.backward_impl::<true, false>(net, y, w, batch, grad)
    }

    #[inline(always)]
    fn forward_impl<const FMA: bool, const AVX512: bool>(
        &mut self,
        net: &Net,
        x: &[f32],
        batch: usize,
    ) {
        let t_total = net.t_in + net.t_out;
        assert_eq!(x.len(), batch * t_total * 3);
        self.caches.resize_with(net.layers.len(), Cache::default);
        self.input.resize(t_total * batch * 3, 0.0);
        for b in 0..batch {
            for t in 0..t_total {
                let src = &x[(b * t_total + t) * 3..(b * t_total + t) * 3 + 3];
                self.input[(t * batch + b) * 3..(t * batch + b) * 3 + 3].copy_from_slice(src);
            }
        }
        let widest = net.layers.iter().map(|l| l.hidden).max().unwrap_or(0);
        if self.zeros.len() < widest {
            self.zeros = vec![0.0; widest];
        }
        for (l, layer) in net.layers.iter().enumerate() {
            self.forward_layer::<FMA, AVX512>(layer, l, t_total, batch);
        }
        self.forward_head::<FMA>(net, batch);
        if let Some(g) = net.skip.as_ref().and_then(|s| s.gain.as_ref()) {
            for out in self.out[..batch * net.t_out].chunks_exact_mut(net.t_out) {
                out.iter_mut().zip(g).for_each(|(o, g)| *o *= g);
            }
        }
        if net.residual {
            for b in 0..batch {
                let last = x[(b * t_total + net.t_in - 1) * 3];
                for o in &mut self.out[b * net.t_out..(b + 1) * net.t_out] {
                    *o += last;
                }
            }
        }
        if let Some(skip) = &net.skip {
            let t_out = net.t_out;
            for b in 0..batch {
                let out = &mut self.out[b * t_out..(b + 1) * t_out];
                for (o, sb) in out.iter_mut().zip(&skip.b) {
                    *o += sb;
                }
                let row = &x[b * t_total * 3..(b + 1) * t_total * 3];
                for (r, &xr) in row.iter().enumerate() {
                    if xr != 0.0 {
                        let w = &skip.w[r * t_out..(r + 1) * t_out];
                        for (o, wj) in out.iter_mut().zip(w) {
                            *o += xr * wj;
                        }
                    }
                }
            }
        }
    }

    /// One LSTM layer over the whole sequence; its input is the batch
    /// (layer 0) or the `h` of the layer below, read in place.
    #[inline(always)]
    fn forward_layer<const FMA: bool, const AVX512: bool>(
        &mut self,
        layer: &Layer,
        l: usize,
        t_total: usize,
        batch: usize,
    ) {
        let (hd, inp) = (layer.hidden, layer.input);
        let (g4, kx) = (4 * hd, inp + hd);
        let rows = t_total * batch;
        transpose(&layer.w, g4, inp, &mut self.wrt);
        transpose(&layer.r, g4, hd, &mut self.tmp);
        self.wrt.extend_from_slice(&self.tmp);
        self.bias.clear();
        self.bias
            .extend(layer.wb.iter().zip(&layer.rb).map(|(a, b)| a + b));
        let (below, rest) = self.caches.split_at_mut(l);
        let cache = &mut rest[0];
        let input: &[f32] = if l == 0 { &self.input } else { &below[l - 1].h };
        // Every element is written below: resize without clearing.
        for v in [
            &mut cache.i,
            &mut cache.o,
            &mut cache.f,
            &mut cache.g,
            &mut cache.c,
            &mut cache.tc,
            &mut cache.h,
        ] {
            v.resize(rows * hd, 0.0);
        }
        cache.xt.resize((kx + 1) * rows, 0.0);
        cache.xt[kx * rows..].fill(1.0);
        self.gates.resize(batch * g4, 0.0);
        self.xh.resize(batch * kx, 0.0);
        for t in 0..t_total {
            for b in 0..batch {
                let row = &mut self.xh[b * kx..(b + 1) * kx];
                let (xr, hr) = row.split_at_mut(inp);
                xr.copy_from_slice(&input[(t * batch + b) * inp..(t * batch + b + 1) * inp]);
                if t > 0 {
                    hr.copy_from_slice(&cache.h[((t - 1) * batch + b) * hd..][..hd]);
                } else {
                    hr.fill(0.0);
                }
            }
            for k in 0..kx {
                let dst = &mut cache.xt[k * rows + t * batch..k * rows + (t + 1) * batch];
                for (b, d) in dst.iter_mut().enumerate() {
                    *d = self.xh[b * kx + k];
                }
            }
            for row in self.gates.chunks_exact_mut(g4) {
                row.copy_from_slice(&self.bias);
            }
            // Step t's input and recurrent projections in one product.
            matmul_acc(&mut self.gates, &self.xh, &self.wrt, batch, kx, g4);
            #[cfg(target_arch = "x86_64")]
            if AVX512 && hd.is_multiple_of(16) {
                let step = t * batch * hd..(t + 1) * batch * hd;
                let (c_done, c_rest) = cache.c.split_at_mut(step.start);
                let c_prev = (t > 0).then(|| &c_done[step.start - batch * hd..]);
                let c_out = &mut c_rest[..batch * hd];
                let (i, o, f, g) = (
                    &mut cache.i[step.clone()],
                    &mut cache.o[step.clone()],
                    &mut cache.f[step.clone()],
                    &mut cache.g[step.clone()],
                );
                let (tc, h) = (&mut cache.tc[step.clone()], &mut cache.h[step]);
                // SAFETY: AVX512 is true only in `forward_avx512` (the CPU
                // reports AVX-512F and FMA); shapes as the kernel requires.
                unsafe { cell_forward_avx512(&self.gates, hd, c_prev, i, o, f, g, c_out, tc, h) }
                continue;
            }
            for b in 0..batch {
                let gb = &self.gates[b * g4..(b + 1) * g4];
                let base = (t * batch + b) * hd;
                // Row slices of equal length let the loop below
                // vectorise (no per-element bounds checks).
                let (gi, rest) = gb.split_at(hd);
                let (go, rest) = rest.split_at(hd);
                let (gf, gc) = rest.split_at(hd);
                let (c_done, c_rest) = cache.c.split_at_mut(base);
                let c_row = &mut c_rest[..hd];
                let c_prev: &[f32] = if t > 0 {
                    &c_done[base - batch * hd..base - batch * hd + hd]
                } else {
                    &self.zeros[..hd]
                };
                let i_row = &mut cache.i[base..base + hd];
                let o_row = &mut cache.o[base..base + hd];
                let f_row = &mut cache.f[base..base + hd];
                let g_row = &mut cache.g[base..base + hd];
                let tc_row = &mut cache.tc[base..base + hd];
                let h_row = &mut cache.h[base..base + hd];
                for u in 0..hd {
                    let i = sigmoid_k::<FMA>(gi[u]);
                    let o = sigmoid_k::<FMA>(go[u]);
                    let f = sigmoid_k::<FMA>(gf[u]);
                    let gg = tanh_k::<FMA>(gc[u]);
                    let c = f * c_prev[u] + i * gg;
                    let tc = tanh_k::<FMA>(c);
                    i_row[u] = i;
                    o_row[u] = o;
                    f_row[u] = f;
                    g_row[u] = gg;
                    c_row[u] = c;
                    tc_row[u] = tc;
                    h_row[u] = o * tc;
                }
            }
        }
    }

    /// The output head on the top layer's `h` over the forecast steps.
    #[inline(always)]
    fn forward_head<const FMA: bool>(&mut self, net: &Net, batch: usize) {
        let hd = net.hidden();
        let top = &self.caches[net.layers.len() - 1].h;
        self.out.clear();
        self.out.resize(batch * net.t_out, 0.0);
        if !net.head_w1.is_empty() {
            let m = net.head_b1.len();
            self.head_a.resize(batch * net.t_out * m, 0.0);
            for b in 0..batch {
                for j in 0..net.t_out {
                    let t = net.t_in + j;
                    let h = &top[(t * batch + b) * hd..(t * batch + b + 1) * hd];
                    let a = &mut self.head_a[(b * net.t_out + j) * m..(b * net.t_out + j + 1) * m];
                    for (k, ak) in a.iter_mut().enumerate() {
                        let w = &net.head_w1[k * hd..(k + 1) * hd];
                        let z = net.head_b1[k] + h.iter().zip(w).map(|(x, y)| x * y).sum::<f32>();
                        *ak = tanh_k::<FMA>(z);
                    }
                    self.out[b * net.t_out + j] =
                        net.head_b + a.iter().zip(&net.head_w).map(|(x, y)| x * y).sum::<f32>();
                }
            }
            return;
        }
        for b in 0..batch {
            for j in 0..net.t_out {
                let t = net.t_in + j;
                let h = &top[(t * batch + b) * hd..(t * batch + b + 1) * hd];
                self.out[b * net.t_out + j] =
                    net.head_b + h.iter().zip(&net.head_w).map(|(a, b)| a * b).sum::<f32>();
            }
        }
    }

    #[inline(always)]
    fn backward_impl<const FMA: bool, const AVX512: bool>(
        &mut self,
        net: &Net,
        y: &[f32],
        w: Option<&[f32]>,
        batch: usize,
        grad: &mut Net,
    ) -> f64 {
        let t_total = net.t_in + net.t_out;
        let n = (batch * net.t_out) as f32;
        // dL/dh of the top layer, time-major.
        let mut dh_above = std::mem::take(&mut self.scratch);
        dh_above.clear();
        dh_above.resize(t_total * batch * net.hidden(), 0.0);
        let loss = self.backward_head(net, y, w, batch, grad, &mut dh_above);
        for l in (0..net.layers.len()).rev() {
            self.backward_layer::<AVX512>(net, l, batch, grad, &mut dh_above);
        }
        self.scratch = dh_above;
        loss / n as f64
    }

    /// The loss and the head's gradients; adds dL/dh of the top layer into
    /// `dh_above`. Returns the summed (not yet averaged) weighted squared
    /// error.
    #[inline(always)]
    fn backward_head(
        &mut self,
        net: &Net,
        y: &[f32],
        w: Option<&[f32]>,
        batch: usize,
        grad: &mut Net,
        dh_above: &mut [f32],
    ) -> f64 {
        let (t_in, t_out) = (net.t_in, net.t_out);
        let hd_top = net.hidden();
        let n = (batch * t_out) as f32;
        let mut loss = 0.0f64;
        let top = &self.caches[net.layers.len() - 1].h;
        let gain = net.skip.as_ref().and_then(|s| s.gain.as_deref());
        for b in 0..batch {
            for j in 0..t_out {
                let target = b * t_out + net.target_index(j);
                let weight = w.map_or(1.0, |w| w[target]);
                let e = self.out[b * t_out + j] - y[target];
                loss += (weight * e * e) as f64;
                // dL/d(head output): the skip's gain scales it.
                let ds = 2.0 * weight * e / n * gain.map_or(1.0, |g| g[j]);
                grad.head_b += ds;
                let t = t_in + j;
                let h = &top[(t * batch + b) * hd_top..(t * batch + b + 1) * hd_top];
                let dh = &mut dh_above[(t * batch + b) * hd_top..(t * batch + b + 1) * hd_top];
                if !net.head_w1.is_empty() {
                    let m = net.head_b1.len();
                    let a = &self.head_a[(b * t_out + j) * m..(b * t_out + j + 1) * m];
                    for (k, &ak) in a.iter().enumerate() {
                        grad.head_w[k] += ds * ak;
                        let dz = ds * net.head_w[k] * (1.0 - ak * ak);
                        grad.head_b1[k] += dz;
                        let w = &net.head_w1[k * hd_top..(k + 1) * hd_top];
                        let gw = &mut grad.head_w1[k * hd_top..(k + 1) * hd_top];
                        for u in 0..hd_top {
                            gw[u] += dz * h[u];
                            dh[u] += dz * w[u];
                        }
                    }
                    continue;
                }
                for u in 0..hd_top {
                    grad.head_w[u] += ds * h[u];
                    dh[u] += ds * net.head_w[u];
                }
            }
        }
        loss
    }

    /// Back-propagation through time of layer `l`: its weight gradients
    /// into `grad`, and `dh_above` replaced by dL/dx for the layer below.
    #[inline(always)]
    fn backward_layer<const AVX512: bool>(
        &mut self,
        net: &Net,
        l: usize,
        batch: usize,
        grad: &mut Net,
        dh_above: &mut Vec<f32>,
    ) {
        let t_total = net.t_in + net.t_out;
        let layer = &net.layers[l];
        let gl = &mut grad.layers[l];
        let cache = &self.caches[l];
        let (hd, inp) = (layer.hidden, layer.input);
        let (g4, kx) = (4 * hd, inp + hd);
        let rows = t_total * batch;
        // Every gate gradient is written in the loop below.
        self.dg.resize(rows * g4, 0.0);
        let mut dh_next = std::mem::take(&mut self.dh_next);
        let mut dc_next = std::mem::take(&mut self.dc_next);
        dh_next.clear();
        dh_next.resize(batch * hd, 0.0);
        dc_next.clear();
        dc_next.resize(batch * hd, 0.0);
        if l > 0 {
            // [W | R] row by row: dx_t and dh_{t−1} in one product.
            self.wr.clear();
            for g in 0..g4 {
                self.wr.extend_from_slice(&layer.w[g * inp..(g + 1) * inp]);
                self.wr.extend_from_slice(&layer.r[g * hd..(g + 1) * hd]);
            }
            self.below.clear();
            self.below.resize(rows * inp, 0.0);
            self.dxh.resize(batch * kx, 0.0);
        }
        for t in (0..t_total).rev() {
            let dgt = &mut self.dg[t * batch * g4..(t + 1) * batch * g4];
            let vector = cfg!(target_arch = "x86_64") && AVX512 && hd.is_multiple_of(16);
            #[cfg(target_arch = "x86_64")]
            if vector {
                let step = t * batch * hd..(t + 1) * batch * hd;
                let s = StepCache {
                    i: &cache.i[step.clone()],
                    o: &cache.o[step.clone()],
                    f: &cache.f[step.clone()],
                    g: &cache.g[step.clone()],
                    tc: &cache.tc[step.clone()],
                    c_prev: (t > 0).then(|| &cache.c[step.start - batch * hd..step.start]),
                };
                // SAFETY: AVX512 is true only in `backward_avx512` (the CPU
                // reports AVX-512F); shapes as the kernel requires.
                unsafe {
                    cell_backward_avx512(&s, hd, &dh_above[step], &dh_next, &mut dc_next, dgt)
                };
            }
            // The scalar loop, where the vector kernel did not run.
            if !vector {
                let zeros = &self.zeros[..hd];
                cell_backward_scalar(
                    cache,
                    zeros,
                    t,
                    batch,
                    hd,
                    dh_above,
                    &dh_next,
                    &mut dc_next,
                    dgt,
                );
            }
            let dgt = &self.dg[t * batch * g4..(t + 1) * batch * g4];
            if l == 0 {
                // dh_{t-1} = dG_t · R (the batch's own gradient is not needed).
                dh_next.fill(0.0);
                if t > 0 {
                    matmul_acc(&mut dh_next, dgt, &layer.r, batch, g4, hd);
                }
                continue;
            }
            // [dx_t, dh_{t−1}] = dG_t · [W | R].
            self.dxh.fill(0.0);
            matmul_acc(&mut self.dxh, dgt, &self.wr, batch, g4, kx);
            for b in 0..batch {
                let (dx, dh) = self.dxh[b * kx..(b + 1) * kx].split_at(inp);
                self.below[(t * batch + b) * inp..(t * batch + b + 1) * inp].copy_from_slice(dx);
                dh_next[b * hd..(b + 1) * hd].copy_from_slice(dh);
            }
        }
        // Weight and bias gradients of the whole sequence in one product:
        // [x_t, h_{t−1}, 1]ᵀ · dG over all steps (h_{−1} = 0 adds nothing).
        self.wgrad.clear();
        self.wgrad.resize((kx + 1) * g4, 0.0);
        matmul_acc(&mut self.wgrad, &cache.xt, &self.dg, kx + 1, rows, g4);
        add_weight_grads(&self.wgrad, gl, inp, hd);
        self.dh_next = dh_next;
        self.dc_next = dc_next;
        if l > 0 {
            std::mem::swap(dh_above, &mut self.below);
        }
    }
}

/// The scalar gate-gradient loop of step `t` (every row of the batch):
/// `dgt` gets dL/d(gates), `dc_next` becomes dL/dc of the step before.
/// `zeros`: the cell state before the first step (`hd` zeros).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn cell_backward_scalar(
    cache: &Cache,
    zeros: &[f32],
    t: usize,
    batch: usize,
    hd: usize,
    dh_above: &[f32],
    dh_next: &[f32],
    dc_next: &mut [f32],
    dgt: &mut [f32],
) {
    let g4 = 4 * hd;
    for b in 0..batch {
        let base = (t * batch + b) * hd;
        let dgb = &mut dgt[b * g4..(b + 1) * g4];
        let (dgi, rest) = dgb.split_at_mut(hd);
        let (dgo, rest) = rest.split_at_mut(hd);
        let (dgf, dgc) = rest.split_at_mut(hd);
        let row = base..base + hd;
        let (ci, co, cf, cg, ctc) = (
            &cache.i[row.clone()],
            &cache.o[row.clone()],
            &cache.f[row.clone()],
            &cache.g[row.clone()],
            &cache.tc[row.clone()],
        );
        let c_prev: &[f32] = if t > 0 {
            &cache.c[base - batch * hd..base - batch * hd + hd]
        } else {
            zeros
        };
        let dh_row = &dh_above[row];
        let dhn = &dh_next[b * hd..(b + 1) * hd];
        let dcn = &mut dc_next[b * hd..(b + 1) * hd];
        for u in 0..hd {
            let dh = dh_row[u] + dhn[u];
            let (i, o, f, g, tc) = (ci[u], co[u], cf[u], cg[u], ctc[u]);
            let dc = dh * o * (1.0 - tc * tc) + dcn[u];
            dgi[u] = dc * g * i * (1.0 - i);
            dgo[u] = dh * tc * o * (1.0 - o);
            dgf[u] = dc * c_prev[u] * f * (1.0 - f);
            dgc[u] = dc * i * (1.0 - g * g);
            dcn[u] = dc * f;
        }
    }
}

/// Add the whole sequence's weight-gradient product (`[x, h, 1]ᵀ · dG`,
/// `inp + hd + 1` rows of `4·hd`) into the layer's gradients: input
/// weights, recurrent weights, and both biases.
fn add_weight_grads(wgrad: &[f32], gl: &mut Layer, inp: usize, hd: usize) {
    let (g4, kx) = (4 * hd, inp + hd);
    for (k, row) in wgrad.chunks_exact(g4).enumerate() {
        if k < inp {
            for (g, v) in row.iter().enumerate() {
                gl.w[g * inp + k] += v;
            }
        } else if k < kx {
            for (g, v) in row.iter().enumerate() {
                gl.r[g * hd + k - inp] += v;
            }
        } else {
            for (g, v) in row.iter().enumerate() {
                gl.wb[g] += v;
                gl.rb[g] += v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(net: &Net, b: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let t = net.t_in + net.t_out;
        let mut s = seed;
        let mut r = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as f32 / (1u64 << 31) as f32 - 0.5
        };
        let mut x = Vec::new();
        for _ in 0..b {
            for p in 0..t {
                let fut = p >= net.t_in;
                x.extend_from_slice(&[
                    if fut { 0.0 } else { r() * 2.0 },
                    r() * 2.0,
                    if fut { 1.0 } else { 0.0 },
                ]);
            }
        }
        let y = (0..b * net.t_out).map(|_| r()).collect();
        (x, y)
    }

    /// The head option leaves the linear network as it was: the same draws
    /// for the same seed (so the shipped model's retraining is unchanged),
    /// and the MLP head only adds its hidden layer after them.
    #[test]
    fn linear_head_is_unchanged_and_mlp_adds_a_layer() {
        let old = Net::new(2, 6, 4, 3, OutputOrder::Reversed, 7);
        let lin = Net::with_head(2, 6, 4, 3, OutputOrder::Reversed, Head::Linear, 7);
        assert_eq!(old, lin);
        assert_eq!(lin.head(), Head::Linear);
        let mut mlp = Net::with_head(2, 6, 4, 3, OutputOrder::Reversed, Head::Mlp, 7);
        assert_eq!(mlp.head(), Head::Mlp);
        assert_eq!(mlp.layers, lin.layers);
        assert_eq!((mlp.head_w1.len(), mlp.head_b1.len()), (36, 6));
        assert_eq!(mlp.param_count(), lin.param_count() + 36 + 6);
        let mut lin = lin;
        assert_eq!(mlp.params_mut().len(), lin.params_mut().len() + 2);
        // The head changes the output, so the option is not a no-op.
        let (x, _) = batch(&mlp, 2, 3);
        let a = Workspace::default().forward(&mlp, &x, 2).to_vec();
        let b = Workspace::default().forward(&lin, &x, 2).to_vec();
        assert_ne!(a, b);
    }

    /// The AVX-512 cell kernels (forward and backward element loops) give
    /// the bits of the scalar loops they replace.
    #[test]
    fn vector_cells_equal_the_scalar_loops() {
        if detect_simd() != Simd::Avx512 {
            return;
        }
        for (layers, hidden, residual) in [(2, 16, false), (1, 32, true)] {
            let net =
                Net::new(layers, hidden, 6, 4, OutputOrder::Reversed, 3).with_residual(residual);
            let (x, y) = batch(&net, 5, 9);
            let mut fast = Workspace::default();
            let mut grad_fast = net.zeros_like();
            let out_fast = fast.forward(&net, &x, 5).to_vec();
            let loss_fast = fast.backward(&net, &y, 5, &mut grad_fast);
            let mut slow = Workspace::default();
            let mut grad_slow = net.zeros_like();
            slow.forward_impl::<true, false>(&net, &x, 5);
            let loss_slow = slow.backward_impl::<true, false>(&net, &y, None, 5, &mut grad_slow);
            assert_eq!(out_fast, slow.out);
            assert_eq!(loss_fast.to_bits(), loss_slow.to_bits());
            for (a, b) in fast.caches.iter().zip(&slow.caches) {
                assert_eq!((&a.i, &a.o, &a.f, &a.g), (&b.i, &b.o, &b.f, &b.g));
                assert_eq!((&a.c, &a.tc, &a.h), (&b.c, &b.tc, &b.h));
            }
            assert_eq!(grad_fast, grad_slow, "{layers} layers, H {hidden}");
        }
    }

    /// Backpropagation agrees with central finite differences on every
    /// parameter tensor of a 2-layer net (sampled entries).
    #[test]
    fn gradients_match_finite_differences() {
        for (order, head, weighted, residual) in [
            (OutputOrder::Reversed, Head::Linear, false, false),
            (OutputOrder::Forward, Head::Linear, false, false),
            (OutputOrder::Reversed, Head::Mlp, false, false),
            (OutputOrder::Forward, Head::Mlp, false, false),
            (OutputOrder::Reversed, Head::Linear, true, false),
            (OutputOrder::Forward, Head::Linear, true, true),
        ] {
            let mut net = Net::with_head(2, 5, 4, 3, order, head, 11).with_residual(residual);
            if weighted && !residual {
                // The AR blend's per-step gain on the head, with a skip.
                net.skip = Some(Skip {
                    w: (0..(4 + 3) * 3 * 3)
                        .map(|k| k as f32 * 0.01 - 0.3)
                        .collect(),
                    b: vec![0.1, -0.2, 0.05],
                    gain: Some(vec![0.5, 0.0, 1.3]),
                });
            }
            let (x, y) = batch(&net, 3, 5);
            // The spike-aware loss: a weight per target (1 or 5 here).
            let wt: Vec<f32> = (0..y.len())
                .map(|k| if weighted && k % 3 == 1 { 5.0 } else { 1.0 })
                .collect();
            let mut ws = Workspace::default();
            let mut grad = net.zeros_like();
            ws.forward(&net, &x, 3);
            ws.backward_weighted(&net, &y, weighted.then_some(&wt[..]), 3, &mut grad);
            let loss_at = |net: &Net| {
                let mut ws = Workspace::default();
                let out = ws.forward(net, &x, 3).to_vec();
                let mut l = 0.0f64;
                for b in 0..3 {
                    for j in 0..net.t_out {
                        let t = b * net.t_out + net.target_index(j);
                        let e = (out[b * net.t_out + j] - y[t]) as f64;
                        l += wt[t] as f64 * e * e;
                    }
                }
                l / (3 * net.t_out) as f64
            };
            let analytic: Vec<Vec<f32>> =
                grad.params_mut().into_iter().map(|p| p.to_vec()).collect();
            for (ti, tensor) in analytic.iter().enumerate() {
                let len = tensor.len();
                for idx in [0, len / 2, len - 1] {
                    let eps = 1e-2f32;
                    let orig = net.params_mut()[ti][idx];
                    net.params_mut()[ti][idx] = orig + eps;
                    let up = loss_at(&net);
                    net.params_mut()[ti][idx] = orig - eps;
                    let down = loss_at(&net);
                    net.params_mut()[ti][idx] = orig;
                    let numeric = (up - down) / (2.0 * eps as f64);
                    let a = tensor[idx] as f64;
                    let err = (a - numeric).abs() / (a.abs() + numeric.abs()).max(1e-3);
                    assert!(
                        err < 2e-2,
                        "{order:?} {head:?} residual {residual} tensor {ti} entry {idx}: analytic {a:e}, numeric {numeric:e}"
                    );
                }
            }
        }
    }
}
