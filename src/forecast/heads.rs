//! Which ONNX graphs the native engine runs: a stack of LSTM layers and one
//! of the output heads users export from PyTorch, recognised by following
//! the input tensor through the graph.
//!
//! Every value in the graph gets a description of what it is in terms of
//! the input (the input itself, a layer's hidden sequence, a stretch of its
//! steps, the last step, head layers applied to one of those), node by node
//! in the graph's order, which ONNX requires to be topological. An operator
//! that takes a described value either has a rule here that describes its
//! result, or its result is "not recognised, because node N (Op) ...". The
//! graph is accepted only when its output is described as a complete
//! forecast: a per-step head over exactly the last `t_out` steps of the top
//! layer, squeezed to `[batch, t_out]`, or a head over the top layer's last
//! hidden state ending in `t_out` units. Anything else keeps tract, with the
//! first reason found.
//!
//! Matching by data flow rather than by node sequence is what makes this
//! robust to the exporters' variations: operand order of `Add`, `MatMul` +
//! `Add` or `Gemm`, `out[:, -1, :]` as `Gather` or as `Slice` + `Squeeze`,
//! `h_n[-1]` through a `Concat` of the layers' final states, constants as
//! initializers or `Constant` nodes, side branches nobody reads. Values that
//! do not depend on the input's values (shapes, the zero initial states
//! PyTorch builds from the batch size) are tracked only as such; the load
//! probe, native against tract, catches what the structure cannot say.

use super::lstm::{Activation, Aligned, Dense, Head, HeadInput, LstmLayer, NativeLstm};
use super::ModelCard;
use std::collections::HashMap;
use tract_onnx::pb;

/// What the native engine needs from a recognised graph.
pub struct Recognised {
    pub layers: Vec<LstmLayer>,
    pub head: Head,
}

/// Build the native engine for `proto` if its graph is a recognised
/// architecture, or say why not. The caller must still prove numerical
/// equality with tract.
pub fn native_engine(
    proto: &pb::ModelProto,
    card: &ModelCard,
    max_batch: usize,
) -> Result<NativeLstm, String> {
    let r = recognise(proto, card.t_in, card.t_out)?;
    Ok(NativeLstm::with_head(
        r.layers, r.head, card.t_in, card.t_out, max_batch,
    ))
}

/// A constant tensor's values.
#[derive(Clone, Debug)]
enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

#[derive(Clone, Debug)]
struct Const {
    dims: Vec<usize>,
    data: Data,
}

/// Where a time-indexed value keeps its axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// An LSTM node's `Y`: `[steps, 1, batch, features]`.
    Raw,
    /// `[steps, batch, features]`.
    TimeMajor,
    /// `[batch, steps, features]`.
    BatchFirst,
    /// `[batch, steps]`: a one-unit feature squeezed away.
    Squeezed,
}

impl Layout {
    fn rank(self) -> usize {
        match self {
            Layout::Raw => 4,
            Layout::TimeMajor | Layout::BatchFirst => 3,
            Layout::Squeezed => 2,
        }
    }

    fn time_axis(self) -> usize {
        match self {
            Layout::Raw | Layout::TimeMajor => 0,
            Layout::BatchFirst | Layout::Squeezed => 1,
        }
    }
}

/// Features of a time step: LSTM layer `layer`'s hidden state, then the
/// head layers applied so far. `biased`: the last head layer has had its
/// bias added (a second bias is not a Linear).
#[derive(Clone, Debug)]
struct Features {
    layer: usize,
    hidden: usize,
    head: Vec<Dense>,
    biased: bool,
    /// The last observed V has been added to the head's outputs (the
    /// residual output, card version 2); nothing may follow it.
    residual: bool,
    /// A linear map of the whole input added to the outputs (weights
    /// `[steps·3][t_out]`, biases); nothing may follow it.
    skip: Option<(Vec<f32>, Vec<f32>)>,
    /// Per-step gains `[t_out]` (model order) multiplied into the complete
    /// forecast before a skip is added (calibration's AR blend); only a
    /// skip may follow them.
    gain: Option<Vec<f32>>,
}

impl Features {
    fn of_layer(layer: usize, hidden: usize) -> Features {
        Features {
            layer,
            hidden,
            head: Vec::new(),
            biased: false,
            residual: false,
            skip: None,
            gain: None,
        }
    }

    fn width(&self) -> usize {
        self.head.last().map_or(self.hidden, |d| d.output)
    }
}

#[derive(Clone, Debug)]
enum Val {
    Const(Const),
    /// Computed from shapes and constants only.
    Indep,
    /// All zeros (a zero `ConstantOfShape` and reshapes of it).
    Zeros,
    /// The graph input `[batch, steps, 3]`.
    Input,
    /// The input made time-major, `[steps, batch, 3]`.
    InputTm,
    /// Steps `from..to` of the sequence.
    Steps {
        f: Features,
        layout: Layout,
        from: usize,
        to: usize,
    },
    /// The last step's features, `[batch, width]`.
    Last(Features),
    /// Final hidden states (`Y_h`) of these (layer, hidden size), stacked
    /// on axis 0.
    Finals(Vec<(usize, usize)>),
    /// The last observed V, `x[:, t_in-1:t_in, 0:1]`: `[batch, 1, 1]`
    /// (rank 3) or squeezed to `[batch, 1]` (rank 2), for the residual
    /// output.
    LastV(usize),
    /// The input flattened to `[batch, steps·3]`.
    InputFlat,
    /// A linear map of the flattened input, `[batch, t_out]`: weights
    /// `[steps·3][t_out]` and biases (zero until an `Add` gives them).
    Skip {
        w: Vec<f32>,
        b: Vec<f32>,
        biased: bool,
    },
    /// Not something the native engine can compute.
    No(String),
}

impl Val {
    fn tracked(&self) -> bool {
        !matches!(self, Val::Const(_) | Val::Indep | Val::Zeros)
    }
}

fn floats(t: &pb::TensorProto) -> Option<Vec<f32>> {
    if t.data_type != 1 {
        return None;
    }
    if t.raw_data.is_empty() {
        return Some(t.float_data.clone());
    }
    t.raw_data.len().is_multiple_of(4).then(|| {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

fn ints(t: &pb::TensorProto) -> Option<Vec<i64>> {
    if t.data_type != 7 {
        return None;
    }
    if t.raw_data.is_empty() {
        return Some(t.int64_data.clone());
    }
    t.raw_data.len().is_multiple_of(8).then(|| {
        t.raw_data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    })
}

fn constant(t: &pb::TensorProto) -> Val {
    let dims = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    match (floats(t), ints(t)) {
        (Some(f), _) => Val::Const(Const {
            dims,
            data: Data::F32(f),
        }),
        (_, Some(i)) => Val::Const(Const {
            dims,
            data: Data::I64(i),
        }),
        _ => Val::Indep,
    }
}

fn attr<'a>(n: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

fn attr_i(n: &pb::NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map_or(default, |a| a.i)
}

/// The graph walk's state: descriptions by value name and the LSTM layers
/// recognised so far (a chain: each reads the previous one's sequence).
struct Walk<'a> {
    vals: HashMap<&'a str, Val>,
    layers: Vec<LstmLayer>,
    steps: usize,
    t_in: usize,
}

/// Recognise the architecture of `proto` for a `t_in + t_out` window.
pub fn recognise(proto: &pb::ModelProto, t_in: usize, t_out: usize) -> Result<Recognised, String> {
    let g = proto.graph.as_ref().ok_or("the file has no graph")?;
    let mut w = Walk {
        vals: HashMap::new(),
        layers: Vec::new(),
        steps: t_in + t_out,
        t_in,
    };
    for t in &g.initializer {
        w.vals.insert(t.name.as_str(), constant(t));
    }
    for i in &g.input {
        w.vals.entry(i.name.as_str()).or_insert(Val::Input);
    }
    for n in &g.node {
        let ins: Vec<Val> = n
            .input
            .iter()
            .map(|name| match name.as_str() {
                "" => Val::Indep,
                s => w.vals.get(s).cloned().unwrap_or(Val::No(format!(
                    "node `{}` reads `{s}`, which no earlier node computes",
                    n.name
                ))),
            })
            .collect();
        let outs = w.node(n, &ins);
        for (name, v) in n.output.iter().zip(outs) {
            w.vals.insert(name.as_str(), v);
        }
    }
    let out = g.output.first().ok_or("the graph has no output")?;
    let y = w.vals.get(out.name.as_str()).cloned().unwrap_or(Val::Indep);
    if let Val::No(why) = y {
        return Err(why);
    }
    let top = w
        .layers
        .len()
        .checked_sub(1)
        .ok_or("the graph has no LSTM node")?;
    let from_top = |f: &Features| {
        if f.layer == top {
            Ok(())
        } else {
            Err(format!(
                "the head reads LSTM layer {} of {}, not the top one",
                f.layer + 1,
                top + 1
            ))
        }
    };
    let head = match y {
        Val::Steps {
            f,
            layout: Layout::Squeezed,
            from,
            to,
        } if from == t_in && to == t_in + t_out && !f.head.is_empty() => {
            from_top(&f)?;
            Head {
                input: HeadInput::EachStep,
                layers: f.head,
                residual: f.residual,
                skip: f.skip,
                gain: f.gain,
            }
        }
        Val::Steps { from, to, .. } => {
            return Err(format!(
                "the output covers steps {from}..{to} of the sequence, not one value for each of the last t_out = {t_out} ({t_in}..{})",
                t_in + t_out
            ))
        }
        Val::Last(f) if f.width() == t_out && !f.head.is_empty() => {
            from_top(&f)?;
            Head {
                input: HeadInput::LastStep,
                layers: f.head,
                residual: f.residual,
                skip: f.skip,
                gain: f.gain,
            }
        }
        Val::Last(f) => {
            return Err(format!(
                "the output is {} values from the last step, not t_out = {t_out} through a Linear head",
                f.width()
            ))
        }
        _ => return Err(format!("output `{}` is not computed from the LSTM", out.name)),
    };
    Ok(Recognised {
        layers: w.layers,
        head,
    })
}

impl Walk<'_> {
    /// The descriptions of node `n`'s outputs.
    fn node(&mut self, n: &pb::NodeProto, ins: &[Val]) -> Vec<Val> {
        let op = n.op_type.as_str();
        if op == "Constant" {
            let v = attr(n, "value")
                .and_then(|a| a.t.as_ref())
                .map_or(Val::Indep, constant);
            return vec![v];
        }
        if op == "Shape" {
            return vec![Val::Indep];
        }
        if let Some(no) = ins.iter().find(|v| matches!(v, Val::No(_))) {
            return vec![no.clone(); n.output.len().max(1)];
        }
        if !ins.iter().any(Val::tracked) {
            return vec![untracked(n, ins); n.output.len().max(1)];
        }
        if op == "LSTM" {
            return self.lstm(n, ins);
        }
        // Missing operands read as "not a constant", never out of bounds.
        let mut ins = ins.to_vec();
        ins.resize(ins.len().max(3), Val::Indep);
        let ins = &ins[..];
        let why = |what: &str| Val::No(format!("node `{}` ({op}) {what}", n.name));
        let v = match op {
            "Identity" => Ok(ins[0].clone()),
            "Transpose" => transpose(n, &ins[0]),
            "Squeeze" => squeeze(n, ins, self.steps),
            "Slice" => match ins[0] {
                Val::Input => last_v(n, ins, self.t_in),
                _ => slice(n, ins),
            },
            "Gather" => gather(n, ins, self.steps),
            "Concat" => concat(n, &ins[..n.input.len()]),
            "MatMul" => match ins[0] {
                Val::InputFlat => skip_map(&ins[1], self.steps, self.steps - self.t_in),
                _ => matmul(ins),
            },
            "Reshape" => flatten(ins, self.steps),
            "Gemm" => gemm(n, ins),
            "Add" => match (&ins[0], &ins[1]) {
                (Val::LastV(2), y) | (y, Val::LastV(2)) => residual(y, self.steps - self.t_in),
                (Val::Skip { w, b, biased }, c) | (c, Val::Skip { w, b, biased })
                    if !c.tracked() =>
                {
                    skip_bias(w, b, *biased, c)
                }
                (Val::Skip { w, b, .. }, y) | (y, Val::Skip { w, b, .. }) => {
                    with_skip(y, w, b, self.steps - self.t_in)
                }
                _ => add(ins),
            },
            "Mul" => match (&ins[0], &ins[1]) {
                (y, c) | (c, y) if y.tracked() && !c.tracked() => {
                    gain(y, c, self.steps - self.t_in)
                }
                _ => Err("of two computed tensors".into()),
            },
            "Relu" => activate(&ins[0], Activation::Relu),
            "Tanh" => activate(&ins[0], Activation::Tanh),
            "Sigmoid" => activate(&ins[0], Activation::Sigmoid),
            _ => Err("is not an operator the native engine runs".to_string()),
        };
        let v = v.unwrap_or_else(|e| why(&e));
        let mut outs = vec![v];
        outs.resize(
            n.output.len().max(1),
            why("has more outputs than the native engine reads"),
        );
        outs
    }

    /// An LSTM layer that reads the input or the previous layer's whole
    /// sequence, from zero (or absent) initial states.
    fn lstm(&mut self, n: &pb::NodeProto, ins: &[Val]) -> Vec<Val> {
        match self.lstm_layer(n, ins) {
            Ok(layer) => {
                let l = self.layers.len();
                let hidden = layer.hidden;
                self.layers.push(layer);
                vec![
                    Val::Steps {
                        f: Features::of_layer(l, hidden),
                        layout: Layout::Raw,
                        from: 0,
                        to: self.steps,
                    },
                    Val::Finals(vec![(l, hidden)]),
                    Val::No(format!(
                        "node `{}` (LSTM): its cell state is not a forecast",
                        n.name
                    )),
                ]
            }
            Err(e) => vec![Val::No(format!("node `{}` (LSTM): {e}", n.name)); 3],
        }
    }

    fn lstm_layer(&self, n: &pb::NodeProto, ins: &[Val]) -> Result<LstmLayer, String> {
        for a in &n.attribute {
            let supported = match a.name.as_str() {
                "hidden_size" => true,
                "layout" | "input_forget" => a.i == 0,
                "direction" => a.s == b"forward",
                "activations" => a.strings.iter().map(|s| s.as_slice()).eq([
                    b"Sigmoid".as_slice(),
                    b"Tanh",
                    b"Tanh",
                ]),
                _ => false,
            };
            if !supported {
                return Err(format!("attribute `{}` is not supported", a.name));
            }
        }
        let input = match (&ins[0], self.layers.last()) {
            (Val::InputTm, None) => 3,
            (
                Val::Steps {
                    f,
                    layout: Layout::TimeMajor,
                    from: 0,
                    to,
                },
                Some(prev),
            ) if f.head.is_empty() && f.layer + 1 == self.layers.len() && *to == self.steps => {
                prev.hidden
            }
            _ => {
                return Err(
                    "its input is neither the time-major model input (first layer) nor the previous layer's whole output sequence".into(),
                )
            }
        };
        let opt = |i: usize| {
            ins.get(i)
                .filter(|_| n.input.get(i).is_some_and(|s| !s.is_empty()))
        };
        if opt(4).is_some() {
            return Err("sequence_lens is not supported".into());
        }
        if opt(7).is_some() {
            return Err("peepholes are not supported".into());
        }
        for (i, what) in [(5, "initial_h"), (6, "initial_c")] {
            if let Some(v) = opt(i) {
                if !matches!(v, Val::Zeros) {
                    return Err(format!("{what} is not a zero tensor"));
                }
            }
        }
        let weight = |i: usize, what: &str| match opt(i) {
            Some(Val::Const(Const {
                dims,
                data: Data::F32(x),
            })) if x.len() == dims.iter().product::<usize>() => Ok((dims.clone(), x.clone())),
            _ => Err(format!("{what} is not a float constant")),
        };
        let (wd, w) = weight(1, "W")?;
        let (rd, r) = weight(2, "R")?;
        if wd.len() != 3 || wd[0] != 1 || rd.len() != 3 || rd[0] != 1 {
            return Err(format!(
                "weights of shape {wd:?}/{rd:?}: only one direction is supported"
            ));
        }
        let hidden = rd[2];
        if wd[1] != 4 * hidden || rd[1] != 4 * hidden || wd[2] != input {
            return Err(format!(
                "weights {wd:?}/{rd:?} do not chain from input size {input}"
            ));
        }
        let b = match opt(3) {
            Some(_) => Some(weight(3, "B")?.1),
            None => None,
        };
        if b.as_ref().is_some_and(|b| b.len() != 8 * hidden) {
            return Err("B is not [1, 8H]".into());
        }
        if attr(n, "hidden_size").is_some_and(|a| a.i as usize != hidden) {
            return Err("hidden_size does not match R".into());
        }
        Ok(LstmLayer::from_onnx(&w, &r, b.as_deref(), input, hidden))
    }
}

/// A node none of whose inputs depends on the model input's values: zeros
/// stay zeros through the reshaping operators PyTorch uses on its initial
/// states; anything else is just "independent".
fn untracked(n: &pb::NodeProto, ins: &[Val]) -> Val {
    let reshaping = matches!(
        n.op_type.as_str(),
        "Slice" | "Expand" | "Reshape" | "Squeeze" | "Unsqueeze" | "Identity" | "Transpose"
    );
    let zero_fill = n.op_type == "ConstantOfShape"
        && attr(n, "value")
            .and_then(|a| a.t.as_ref())
            .and_then(floats)
            .is_none_or(|v| v.iter().all(|&x| x == 0.0));
    let all_zero_concat = n.op_type == "Concat" && ins.iter().all(|v| matches!(v, Val::Zeros));
    if zero_fill || all_zero_concat || (reshaping && matches!(ins.first(), Some(Val::Zeros))) {
        Val::Zeros
    } else {
        Val::Indep
    }
}

/// A constant list of integers (or one scalar), from an input or, for
/// older opsets, an attribute.
fn int_list(n: &pb::NodeProto, ins: &[Val], input: usize, attr_name: &str) -> Option<Vec<i64>> {
    match ins.get(input) {
        Some(Val::Const(Const {
            data: Data::I64(v), ..
        })) if n.input.get(input).is_some_and(|s| !s.is_empty()) => Some(v.clone()),
        _ => attr(n, attr_name).map(|a| a.ints.clone()),
    }
}

fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

fn transpose(n: &pb::NodeProto, x: &Val) -> Result<Val, String> {
    let perm = attr(n, "perm").map(|a| a.ints.clone()).unwrap_or_default();
    if perm != [1, 0, 2] {
        return Err(format!(
            "with perm {perm:?} (only [1, 0, 2] swaps batch and time)"
        ));
    }
    match x {
        Val::Input => Ok(Val::InputTm),
        Val::Steps {
            f,
            layout,
            from,
            to,
        } => {
            let layout = match layout {
                Layout::TimeMajor => Layout::BatchFirst,
                Layout::BatchFirst => Layout::TimeMajor,
                _ => return Err("on a tensor that is not [time, batch, features]".into()),
            };
            Ok(Val::Steps {
                f: f.clone(),
                layout,
                from: *from,
                to: *to,
            })
        }
        _ => Err("on a tensor the native engine does not transpose".into()),
    }
}

fn squeeze(n: &pb::NodeProto, ins: &[Val], steps: usize) -> Result<Val, String> {
    let axes = int_list(n, ins, 1, "axes").ok_or("without constant axes")?;
    let [axis] = axes[..] else {
        return Err(format!("with axes {axes:?} (one axis expected)"));
    };
    match &ins[0] {
        Val::Steps {
            f,
            layout,
            from,
            to,
        } => {
            let a = norm_axis(axis, layout.rank()).ok_or("with an axis out of range")?;
            let one_step = to - from == 1;
            match (layout, a) {
                (Layout::Raw, 1) => Ok(Val::Steps {
                    f: f.clone(),
                    layout: Layout::TimeMajor,
                    from: *from,
                    to: *to,
                }),
                (Layout::BatchFirst, 2) if f.width() == 1 => Ok(Val::Steps {
                    f: f.clone(),
                    layout: Layout::Squeezed,
                    from: *from,
                    to: *to,
                }),
                (Layout::BatchFirst, 1) | (Layout::TimeMajor, 0) if one_step => {
                    last_step(f, *from, steps)
                }
                _ => Err(format!("on axis {a} of a {layout:?} sequence")),
            }
        }
        Val::Finals(layers) if layers.len() == 1 && norm_axis(axis, 3) == Some(0) => {
            Ok(Val::Last(Features::of_layer(layers[0].0, layers[0].1)))
        }
        Val::LastV(3) if norm_axis(axis, 3) == Some(2) => Ok(Val::LastV(2)),
        _ => Err("on a tensor the native engine does not squeeze".into()),
    }
}

/// The features of step `step`, which must be the sequence's last.
fn last_step(f: &Features, step: usize, steps: usize) -> Result<Val, String> {
    if step + 1 == steps {
        Ok(Val::Last(f.clone()))
    } else {
        Err(format!(
            "keeps step {step} of the sequence, not the last one ({})",
            steps - 1
        ))
    }
}

fn slice(n: &pb::NodeProto, ins: &[Val]) -> Result<Val, String> {
    let Val::Steps {
        f,
        layout,
        from,
        to,
    } = &ins[0]
    else {
        return Err("on a tensor the native engine does not slice".into());
    };
    let one = |i: usize, name: &str| -> Result<Option<i64>, String> {
        match int_list(n, ins, i, name) {
            None => Ok(None),
            Some(v) if v.len() == 1 => Ok(Some(v[0])),
            Some(v) => Err(format!("with {name} {v:?} (one axis expected)")),
        }
    };
    let start = one(1, "starts")?.ok_or("without constant starts")?;
    let end = one(2, "ends")?.ok_or("without constant ends")?;
    let axis = one(3, "axes")?.unwrap_or(0);
    if one(4, "steps")?.unwrap_or(1) != 1 {
        return Err("with a step other than 1".into());
    }
    if norm_axis(axis, layout.rank()) != Some(layout.time_axis()) {
        return Err(format!("along axis {axis}, not time"));
    }
    let len = (to - from) as i64;
    let clamp = |i: i64| (if i < 0 { i + len } else { i }).clamp(0, len) as usize;
    let (s, e) = (clamp(start), clamp(end));
    if s >= e {
        return Err("to an empty range".into());
    }
    Ok(Val::Steps {
        f: f.clone(),
        layout: *layout,
        from: from + s,
        to: from + e,
    })
}

fn gather(n: &pb::NodeProto, ins: &[Val], steps: usize) -> Result<Val, String> {
    let index = match &ins[1] {
        Val::Const(Const {
            dims,
            data: Data::I64(v),
        }) if dims.is_empty() && v.len() == 1 => v[0],
        _ => return Err("with indices that are not one constant scalar".into()),
    };
    let axis = attr_i(n, "axis", 0);
    match &ins[0] {
        Val::Steps {
            f,
            layout,
            from,
            to,
        } => {
            if !matches!(layout, Layout::BatchFirst | Layout::TimeMajor)
                || norm_axis(axis, layout.rank()) != Some(layout.time_axis())
            {
                return Err(format!("along axis {axis} of a {layout:?} sequence"));
            }
            let len = (to - from) as i64;
            let i = if index < 0 { index + len } else { index };
            if !(0..len).contains(&i) {
                return Err("with an index out of range".into());
            }
            last_step(f, from + i as usize, steps)
        }
        Val::Finals(layers) if axis == 0 => {
            let len = layers.len() as i64;
            let i = if index < 0 { index + len } else { index };
            if !(0..len).contains(&i) {
                return Err("with an index out of range".into());
            }
            let (layer, hidden) = layers[i as usize];
            Ok(Val::Last(Features::of_layer(layer, hidden)))
        }
        _ => Err("on a tensor the native engine does not index".into()),
    }
}

/// `x[:, t_in-1:t_in, 0:1]`: the last observed V, which the residual
/// output adds (card version 2).
fn last_v(n: &pb::NodeProto, ins: &[Val], t_in: usize) -> Result<Val, String> {
    let list = |i: usize, name: &str| int_list(n, ins, i, name);
    let (starts, ends) = (list(1, "starts"), list(2, "ends"));
    let axes = list(3, "axes");
    let steps = list(4, "steps");
    if steps.is_some_and(|s| s.iter().any(|&x| x != 1)) {
        return Err("on the input with a step other than 1".into());
    }
    let (Some(starts), Some(ends), Some(axes)) = (starts, ends, axes) else {
        return Err("on the input without constant starts, ends and axes".into());
    };
    let mut by_axis: Vec<(usize, i64, i64)> = Vec::new();
    for ((&a, &s), &e) in axes.iter().zip(&starts).zip(&ends) {
        let a = norm_axis(a, 3).ok_or("on the input along an axis out of range")?;
        by_axis.push((a, s, e));
    }
    by_axis.sort_unstable();
    let t = t_in as i64;
    if by_axis == [(1, t - 1, t), (2, 0, 1)] {
        Ok(Val::LastV(3))
    } else {
        Err(format!(
            "on the input takes {by_axis:?} (axis, start, end), not the last observed V (step {}, feature 0)",
            t_in - 1
        ))
    }
}

/// The residual output: the last observed V added to a complete forecast
/// `[batch, t_out]` (a squeezed per-step head, or a head over the last
/// step ending in t_out units).
fn residual(y: &Val, t_out: usize) -> Result<Val, String> {
    add_skip(y, t_out, "the last observed V", |f| f.residual = true)
}

/// One skip onto a complete forecast `[batch, t_out]`; `what` names it in
/// the reason a graph is declined. A second skip is declined: the native
/// engine evaluates one.
fn add_skip(y: &Val, t_out: usize, what: &str, set: impl Fn(&mut Features)) -> Result<Val, String> {
    let add_to = |f: &Features| -> Result<Features, String> {
        if f.residual || f.skip.is_some() {
            return Err(format!("adds {what} after another skip"));
        }
        let mut f = f.clone();
        set(&mut f);
        Ok(f)
    };
    match y {
        Val::Steps {
            f,
            layout: Layout::Squeezed,
            from,
            to,
        } => Ok(Val::Steps {
            f: add_to(f)?,
            layout: Layout::Squeezed,
            from: *from,
            to: *to,
        }),
        Val::Last(f) if f.width() == t_out && !f.head.is_empty() => Ok(Val::Last(add_to(f)?)),
        _ => Err(format!(
            "adds {what} to something other than a [batch, t_out] forecast"
        )),
    }
}

/// A constant per-step gain `[t_out]` (or one value) multiplied into a
/// complete forecast `[batch, t_out]`: calibration's AR blend. Only a skip
/// may follow it (the graph must then add one).
fn gain(y: &Val, c: &Val, t_out: usize) -> Result<Val, String> {
    let g = bias_of(c, t_out).ok_or("whose constant does not fit the forecast's width")?;
    let scale = |f: &Features| -> Result<Features, String> {
        if f.residual || f.skip.is_some() || f.gain.is_some() {
            return Err("scales a forecast that already has a skip or a gain".into());
        }
        let mut f = f.clone();
        f.gain = Some(g.clone());
        Ok(f)
    };
    match y {
        Val::Steps {
            f,
            layout: Layout::Squeezed,
            from,
            to,
        } if to - from == t_out => Ok(Val::Steps {
            f: scale(f)?,
            layout: Layout::Squeezed,
            from: *from,
            to: *to,
        }),
        Val::Last(f) if f.width() == t_out && !f.head.is_empty() => Ok(Val::Last(scale(f)?)),
        _ => Err("scales something other than a [batch, t_out] forecast".into()),
    }
}

/// `Reshape(x, [-1, steps·3])` (or `[0, ...]`): the input flattened, for a
/// linear skip.
fn flatten(ins: &[Val], steps: usize) -> Result<Val, String> {
    let Val::Input = ins[0] else {
        return Err("on a tensor the native engine does not reshape".into());
    };
    match &ins[1] {
        Val::Const(Const {
            data: Data::I64(v), ..
        }) if v.len() == 2 && (v[0] == -1 || v[0] == 0) && v[1] == (steps * 3) as i64 => {
            Ok(Val::InputFlat)
        }
        _ => Err(format!(
            "on the input to a shape other than [-1, {}]",
            steps * 3
        )),
    }
}

/// `MatMul` of the flattened input with a constant `[steps·3, t_out]`.
fn skip_map(w: &Val, steps: usize, t_out: usize) -> Result<Val, String> {
    match weight_2d(w) {
        Some((r, c, w)) if r == steps * 3 && c == t_out => Ok(Val::Skip {
            w: w.to_vec(),
            b: vec![0.0; t_out],
            biased: false,
        }),
        _ => Err(format!(
            "on the flattened input with a weight that is not a [{}, {t_out}] float constant",
            steps * 3
        )),
    }
}

fn skip_bias(w: &[f32], b: &[f32], biased: bool, c: &Val) -> Result<Val, String> {
    if biased {
        return Err("adds a second bias to the input's linear map".into());
    }
    let add = bias_of(c, b.len()).ok_or("whose constant does not fit the skip's width")?;
    Ok(Val::Skip {
        w: w.to_vec(),
        b: b.iter().zip(&add).map(|(x, y)| x + y).collect(),
        biased: true,
    })
}

/// A complete forecast `[batch, t_out]` plus the linear map of the input.
fn with_skip(y: &Val, w: &[f32], b: &[f32], t_out: usize) -> Result<Val, String> {
    add_skip(y, t_out, "a linear map of the input", |f| {
        f.skip = Some((w.to_vec(), b.to_vec()))
    })
}

/// `Concat` of the layers' final hidden states along axis 0: `h_n`.
fn concat(n: &pb::NodeProto, ins: &[Val]) -> Result<Val, String> {
    if attr_i(n, "axis", 0) != 0 {
        return Err("along an axis other than 0".into());
    }
    let mut layers = Vec::new();
    for v in ins {
        match v {
            Val::Finals(l) => layers.extend(l),
            _ => return Err("of tensors that are not LSTM final states".into()),
        }
    }
    Ok(Val::Finals(layers))
}

/// The features a head layer may read, with the width it must accept.
fn features_of(v: &Val) -> Option<Features> {
    match v {
        Val::Steps {
            f,
            layout: Layout::BatchFirst | Layout::TimeMajor,
            ..
        }
        | Val::Last(f)
            if !f.residual && f.skip.is_none() && f.gain.is_none() =>
        {
            Some(f.clone())
        }
        _ => None,
    }
}

fn with_features(v: &Val, f: Features) -> Val {
    match v {
        Val::Steps {
            layout, from, to, ..
        } => Val::Steps {
            f,
            layout: *layout,
            from: *from,
            to: *to,
        },
        _ => Val::Last(f),
    }
}

fn weight_2d(v: &Val) -> Option<(usize, usize, &[f32])> {
    match v {
        Val::Const(Const {
            dims,
            data: Data::F32(w),
        }) if dims.len() == 2 && w.len() == dims[0] * dims[1] => Some((dims[0], dims[1], w)),
        _ => None,
    }
}

/// Append a head layer (bias still to come) to `x`'s features.
fn push_dense(
    x: &Val,
    input: usize,
    output: usize,
    wt: Vec<f32>,
    bias: Option<Vec<f32>>,
) -> Result<Val, String> {
    let mut f = features_of(x).ok_or("on a tensor that is not hidden states")?;
    if f.width() != input {
        return Err(format!(
            "with a [{input}, {output}] weight on {} features",
            f.width()
        ));
    }
    f.biased = bias.is_some();
    f.head.push(Dense {
        input,
        output,
        wt: Aligned::from_slice(&wt),
        bias: bias.unwrap_or_else(|| vec![0.0; output]),
        act: Activation::Identity,
    });
    Ok(with_features(x, f))
}

fn matmul(ins: &[Val]) -> Result<Val, String> {
    let (input, output, w) =
        weight_2d(&ins[1]).ok_or("whose weight is not a 2-D float constant")?;
    push_dense(&ins[0], input, output, w.to_vec(), None)
}

/// `Gemm` as `torch.onnx` writes `nn.Linear` on a 2-D input: `A · Bᵀ + C`.
fn gemm(n: &pb::NodeProto, ins: &[Val]) -> Result<Val, String> {
    let alpha = attr(n, "alpha").map_or(1.0, |a| a.f);
    let beta = attr(n, "beta").map_or(1.0, |a| a.f);
    if alpha != 1.0 || beta != 1.0 || attr_i(n, "transA", 0) != 0 {
        return Err("with alpha, beta or transA other than 1, 1, 0".into());
    }
    let (r, c, b) = weight_2d(&ins[1]).ok_or("whose B is not a 2-D float constant")?;
    let (input, output, wt) = if attr_i(n, "transB", 0) == 1 {
        let mut wt = vec![0.0; r * c];
        for o in 0..r {
            for i in 0..c {
                wt[i * r + o] = b[o * c + i];
            }
        }
        (c, r, wt)
    } else {
        (r, c, b.to_vec())
    };
    let bias = match ins.get(2).filter(|_| n.input.len() > 2) {
        None => vec![0.0; output],
        Some(v) => bias_of(v, output).ok_or("whose C is not a constant of the output width")?,
    };
    push_dense(&ins[0], input, output, wt, Some(bias))
}

/// A constant bias for `width` units: `[width]` (or with leading ones), or
/// one value broadcast.
fn bias_of(v: &Val, width: usize) -> Option<Vec<f32>> {
    let Val::Const(Const {
        dims,
        data: Data::F32(b),
    }) = v
    else {
        return None;
    };
    let leading_ones = dims.iter().rev().skip(1).all(|&d| d == 1);
    match b.len() {
        n if n == width && leading_ones => Some(b.clone()),
        1 if dims.len() <= 1 => Some(vec![b[0]; width]),
        _ => None,
    }
}

fn add(ins: &[Val]) -> Result<Val, String> {
    let (x, c) = match (&ins[0], &ins[1]) {
        (x, c) if x.tracked() && !c.tracked() => (x, c),
        (c, x) if x.tracked() && !c.tracked() => (x, c),
        _ => return Err("of two computed tensors".into()),
    };
    let mut f = features_of(x).ok_or("on a tensor that is not a head layer's output")?;
    let width = f.width();
    let last = f
        .head
        .last_mut()
        .filter(|d| d.act == Activation::Identity)
        .ok_or("that is not the bias of a Linear layer")?;
    if f.biased {
        return Err("adds a second bias to a Linear layer".into());
    }
    let b = bias_of(c, width).ok_or("whose constant does not fit the layer's width")?;
    last.bias.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
    f.biased = true;
    Ok(with_features(x, f))
}

fn activate(x: &Val, act: Activation) -> Result<Val, String> {
    let mut f = features_of(x).ok_or("on a tensor that is not a head layer's output")?;
    let last = f
        .head
        .last_mut()
        .filter(|d| d.act == Activation::Identity)
        .ok_or("not right after a Linear layer")?;
    last.act = act;
    f.biased = true;
    Ok(with_features(x, f))
}
