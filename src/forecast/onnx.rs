//! Reading ONNX files: the protobuf for checks and weights, tract for the
//! plain windowed computation.

use super::lstm::{LstmLayer, NativeLstm};
use super::ModelCard;
use std::collections::HashMap;
use std::sync::Arc;
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// A tract plan for one concrete batch size.
pub type Plan = Arc<TypedRunnableModel>;

/// Dimensions of a graph input or output as declared in the file: `None` is
/// a symbolic (dynamic) dimension.
pub fn declared_dims(v: &pb::ValueInfoProto) -> Option<Vec<Option<i64>>> {
    use pb::tensor_shape_proto::dimension::Value;
    let t = match v.r#type.as_ref()?.value.as_ref()? {
        pb::type_proto::Value::TensorType(t) => t,
        #[allow(unreachable_patterns)]
        _ => return None,
    };
    Some(
        t.shape
            .as_ref()?
            .dim
            .iter()
            .map(|d| match d.value {
                Some(Value::DimValue(n)) => Some(n),
                _ => None,
            })
            .collect(),
    )
}

/// Compile the plain contract model for a fixed batch.
pub fn plain_plan(proto: &pb::ModelProto, batch: usize, steps: usize) -> TractResult<Plan> {
    tract_onnx::onnx()
        .with_ignore_value_info(true)
        .model_for_proto_model(proto)?
        .with_input_fact(0, f32::fact([batch, steps, 3]).into())?
        .into_optimized()?
        .into_runnable()
}

/// Run a plan on `[batch, steps, 3]` data, returning `[batch, t_out]`.
pub fn run_plan(plan: &Plan, batch: usize, steps: usize, data: &[f32]) -> TractResult<Vec<f32>> {
    let input = tract_ndarray::Array3::from_shape_vec((batch, steps, 3), data.to_vec())?;
    let out = plan.run(tvec!(Tensor::from(input).into()))?;
    let view = out[0].to_plain_array_view::<f32>()?;
    Ok(view.iter().copied().collect())
}

fn floats(t: &pb::TensorProto) -> Result<Vec<f32>, String> {
    const FLOAT: i32 = 1;
    if t.data_type != FLOAT {
        return Err(format!(
            "tensor `{}` is not float32 (type {})",
            t.name, t.data_type
        ));
    }
    if !t.raw_data.is_empty() {
        if !t.raw_data.len().is_multiple_of(4) {
            return Err(format!("tensor `{}` has a ragged raw_data", t.name));
        }
        Ok(t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    } else {
        Ok(t.float_data.clone())
    }
}

/// Constant tensors of the graph by name: initializers and `Constant` nodes.
fn constants(g: &pb::GraphProto) -> HashMap<&str, (&pb::TensorProto, Vec<usize>)> {
    let mut m = HashMap::new();
    for t in &g.initializer {
        m.insert(
            t.name.as_str(),
            (t, t.dims.iter().map(|&d| d as usize).collect()),
        );
    }
    for n in &g.node {
        if n.op_type == "Constant" {
            if let (Some(out), Some(t)) = (
                n.output.first(),
                n.attribute.iter().find_map(|a| a.t.as_ref()),
            ) {
                m.insert(
                    out.as_str(),
                    (t, t.dims.iter().map(|&d| d as usize).collect()),
                );
            }
        }
    }
    m
}

/// One LSTM layer's tensors as ONNX stores them: W `[4H, input]`, R
/// `[4H, H]`, B `[8H]` (None: zeros).
pub struct RawLayer {
    pub input: usize,
    pub hidden: usize,
    pub w: Vec<f32>,
    pub r: Vec<f32>,
    pub b: Option<Vec<f32>>,
}

/// The weights of a contract-architecture graph.
pub struct ContractWeights {
    pub layers: Vec<RawLayer>,
    pub head_w: Vec<f32>,
    pub head_b: f32,
}

/// Build the native evaluator from the graph's weights if the graph is the
/// contract's architecture (stacked forward LSTMs with default activations,
/// then one linear unit). Returns why not otherwise; the caller then uses
/// tract alone. The caller must still prove numerical equality.
pub fn extract_native(
    proto: &pb::ModelProto,
    card: &ModelCard,
    max_batch: usize,
) -> Result<NativeLstm, String> {
    let cw = contract_weights(proto, card)?;
    let layers = cw
        .layers
        .iter()
        .map(|l| LstmLayer::from_onnx(&l.w, &l.r, l.b.as_deref(), l.input, l.hidden))
        .collect();
    Ok(NativeLstm::new(
        layers, cw.head_w, cw.head_b, card.t_in, card.t_out, max_batch,
    ))
}

/// The weights of the contract's architecture (stacked forward LSTMs with
/// default activations, then one linear unit), or why the graph is not it.
/// Shared by the native engine and by retraining, which starts from the
/// running model's weights.
pub fn contract_weights(
    proto: &pb::ModelProto,
    card: &ModelCard,
) -> Result<ContractWeights, String> {
    let g = proto.graph.as_ref().ok_or("the file has no graph")?;
    let consts = constants(g);
    let get = |name: &str| -> Result<(Vec<f32>, &Vec<usize>), String> {
        let (t, dims) = consts.get(name).ok_or(format!(
            "`{name}` is not a constant (weights must be initializers)"
        ))?;
        Ok((floats(t)?, dims))
    };
    let mut layers = Vec::new();
    let mut input = 3usize;
    for n in g.node.iter().filter(|n| n.op_type == "LSTM") {
        for a in &n.attribute {
            let default_activations = a.strings.iter().map(|s| s.as_slice()).eq([
                b"Sigmoid".as_slice(),
                b"Tanh",
                b"Tanh",
            ]);
            let supported = match a.name.as_str() {
                "hidden_size" => true,
                "layout" | "input_forget" => a.i == 0,
                "direction" => a.s == b"forward",
                "activations" => default_activations,
                _ => false,
            };
            if !supported {
                return Err(format!(
                    "LSTM attribute `{}` is not supported by the native path",
                    a.name
                ));
            }
        }
        let opt = |i: usize| n.input.get(i).filter(|s| !s.is_empty());
        if opt(4).is_some() {
            return Err("LSTM with sequence_lens".into());
        }
        if opt(7).is_some() {
            return Err("LSTM with peepholes".into());
        }
        let (w, wd) = get(&n.input[1])?;
        let (r, rd) = get(&n.input[2])?;
        if wd.len() != 3 || wd[0] != 1 || rd.len() != 3 || rd[0] != 1 {
            return Err(format!(
                "LSTM weights of shape {wd:?}/{rd:?}: only one direction is supported"
            ));
        }
        let hidden = rd[2];
        if wd[1] != 4 * hidden || rd[1] != 4 * hidden || wd[2] != input {
            return Err(format!(
                "LSTM weights {wd:?}/{rd:?} do not chain from input size {input}"
            ));
        }
        let b = match opt(3) {
            Some(name) => Some(get(name)?.0),
            None => None,
        };
        if b.as_ref().is_some_and(|b| b.len() != 8 * hidden) {
            return Err("LSTM bias is not [1, 8H]".into());
        }
        layers.push(RawLayer {
            input,
            hidden,
            w,
            r,
            b,
        });
        input = hidden;
    }
    if layers.is_empty() {
        return Err("the graph has no LSTM node".into());
    }
    let hidden = input;
    // The head: a [H, 1] (MatMul) or [1, H] (Gemm transB) weight and a
    // one-element bias.
    let mut head_w = None;
    let mut head_b = None;
    for n in g
        .node
        .iter()
        .filter(|n| matches!(n.op_type.as_str(), "MatMul" | "Gemm" | "Add"))
    {
        for name in &n.input {
            if let Some((t, dims)) = consts.get(name.as_str()) {
                let count: usize = dims.iter().product();
                if count == hidden
                    && dims.iter().filter(|&&d| d == 1).count() + 1 == dims.len()
                    && n.op_type != "Add"
                {
                    head_w = Some(floats(t)?);
                } else if count == 1 && (n.op_type == "Add" || n.op_type == "Gemm") {
                    head_b = Some(floats(t)?[0]);
                }
            }
        }
    }
    let head_w = head_w.ok_or("no linear head of shape [hidden, 1] found")?;
    if card.architecture.head != "linear" {
        return Err(format!("head `{}` is not `linear`", card.architecture.head));
    }
    Ok(ContractWeights {
        layers,
        head_w,
        head_b: head_b.unwrap_or(0.0),
    })
}
