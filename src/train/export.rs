//! ONNX export written by our own code: the trained [`Net`] as a contract
//! model (DESIGN §3) that tract and onnxruntime load, node for node the
//! layout PyTorch's legacy exporter writes for `nn.LSTM` + `nn.Linear`
//! (standard `LSTM` operators, opset 17), so users' tools treat our models
//! and theirs alike and our loader's native engine recognises both.

use super::net::Net;
use prost::Message;
use tract_onnx::pb;

const FLOAT: i32 = 1;
const INT64: i32 = 7;
/// ONNX IR version 8 and opset 17, as PyTorch writes them.
const IR_VERSION: i64 = 8;
const OPSET: i64 = 17;

fn f32_tensor(name: &str, dims: &[i64], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: FLOAT,
        raw_data: data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn i64_tensor(name: &str, dims: &[i64], data: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: INT64,
        raw_data: data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn attr_int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn attr_ints(name: &str, ints: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

fn attr_tensor(name: &str, t: pb::TensorProto) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Tensor as i32,
        t: Some(t),
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn constant(name: &str, t: pb::TensorProto) -> pb::NodeProto {
    node(
        "Constant",
        name,
        &[],
        &[name],
        vec![attr_tensor("value", t)],
    )
}

fn value_info(name: &str, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(n) => Value::DimValue(*n),
                None => Value::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: FLOAT,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ONNX bytes of `net` with input `x` and output `y`.
pub fn to_onnx(net: &Net, producer_version: &str) -> Vec<u8> {
    let (t_in, t_out) = (net.t_in as i64, net.t_out as i64);
    let steps = t_in + t_out;
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    initial_state(&mut nodes, net.hidden() as i64);
    let seq = lstm_layers(net, &mut nodes, &mut inits);
    horizon(&mut nodes, &seq, t_in, steps);
    head(net, &mut nodes, &mut inits);
    // Constant nodes carry their value under their own output name.
    for n in nodes.iter_mut().filter(|n| n.op_type == "Constant") {
        if let Some(t) = n.attribute[0].t.as_mut() {
            t.name = n.output[0].clone();
        }
    }

    let model = pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "neurostimd".into(),
        producer_version: producer_version.into(),
        graph: Some(pb::GraphProto {
            name: "neurostimd_lstm".into(),
            node: nodes,
            initializer: inits,
            input: vec![value_info("x", &[None, Some(steps), Some(3)])],
            output: vec![value_info("y", &[None, Some(t_out)])],
            ..Default::default()
        }),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// Zero initial state [1, batch, H], built from the input's batch size
/// (one tensor per layer; tract handles that with a symbolic batch), and
/// the input made time-major.
fn initial_state(nodes: &mut Vec<pb::NodeProto>, h: i64) {
    nodes.push(node(
        "Shape",
        "/lstm/Shape",
        &["x"],
        &["/lstm/Shape_output_0"],
        vec![],
    ));
    nodes.push(constant("/lstm/zero_index", i64_tensor("", &[], &[0])));
    nodes.push(node(
        "Gather",
        "/lstm/Gather",
        &["/lstm/Shape_output_0", "/lstm/zero_index"],
        &["/lstm/batch"],
        vec![attr_int("axis", 0)],
    ));
    nodes.push(constant("/lstm/axes0", i64_tensor("", &[1], &[0])));
    nodes.push(node(
        "Unsqueeze",
        "/lstm/Unsqueeze",
        &["/lstm/batch", "/lstm/axes0"],
        &["/lstm/batch1"],
        vec![],
    ));
    nodes.push(constant("/lstm/one", i64_tensor("", &[1], &[1])));
    nodes.push(constant("/lstm/hidden", i64_tensor("", &[1], &[h])));
    nodes.push(node(
        "Concat",
        "/lstm/Concat",
        &["/lstm/one", "/lstm/batch1", "/lstm/hidden"],
        &["/lstm/state_shape"],
        vec![attr_int("axis", 0)],
    ));
    nodes.push(node(
        "Transpose",
        "/lstm/Transpose",
        &["x"],
        &["/lstm/seq0"],
        vec![attr_ints("perm", &[1, 0, 2])],
    ));
    nodes.push(constant("/lstm/axes1", i64_tensor("", &[1], &[1])));
}

/// The stacked LSTM operators and their weights; returns the name of the
/// top layer's output sequence.
fn lstm_layers(
    net: &Net,
    nodes: &mut Vec<pb::NodeProto>,
    inits: &mut Vec<pb::TensorProto>,
) -> String {
    let mut seq = "/lstm/seq0".to_string();
    for (l, layer) in net.layers.iter().enumerate() {
        let (g, inp, hd) = (
            4 * layer.hidden as i64,
            layer.input as i64,
            layer.hidden as i64,
        );
        let (w, r, b) = (
            format!("lstm.l{l}.W"),
            format!("lstm.l{l}.R"),
            format!("lstm.l{l}.B"),
        );
        inits.push(f32_tensor(&w, &[1, g, inp], &layer.w));
        inits.push(f32_tensor(&r, &[1, g, hd], &layer.r));
        let bias: Vec<f32> = layer.wb.iter().chain(&layer.rb).copied().collect();
        inits.push(f32_tensor(&b, &[1, 2 * g], &bias));
        let zeros = format!("/lstm/l{l}/zeros");
        nodes.push(node(
            "ConstantOfShape",
            &zeros,
            &["/lstm/state_shape"],
            &[&zeros],
            vec![attr_tensor("value", f32_tensor("", &[1], &[0.0]))],
        ));
        let (y, yh, yc) = (
            format!("/lstm/l{l}/Y"),
            format!("/lstm/l{l}/Y_h"),
            format!("/lstm/l{l}/Y_c"),
        );
        nodes.push(node(
            "LSTM",
            &format!("/lstm/l{l}/LSTM"),
            &[&seq, &w, &r, &b, "", &zeros, &zeros],
            &[&y, &yh, &yc],
            vec![attr_int("hidden_size", hd)],
        ));
        let squeezed = format!("/lstm/l{l}/seq");
        nodes.push(node(
            "Squeeze",
            &format!("/lstm/l{l}/Squeeze"),
            &[&y, "/lstm/axes1"],
            &[&squeezed],
            vec![],
        ));
        seq = squeezed;
    }
    seq
}

/// Back to batch-major, keeping the forecast steps only.
fn horizon(nodes: &mut Vec<pb::NodeProto>, seq: &str, t_in: i64, steps: i64) {
    nodes.push(node(
        "Transpose",
        "/lstm/Transpose_1",
        &[seq],
        &["/lstm/out"],
        vec![attr_ints("perm", &[1, 0, 2])],
    ));
    nodes.push(constant("/slice/starts", i64_tensor("", &[1], &[t_in])));
    nodes.push(constant("/slice/ends", i64_tensor("", &[1], &[steps])));
    nodes.push(constant("/slice/axes", i64_tensor("", &[1], &[1])));
    nodes.push(node(
        "Slice",
        "/Slice",
        &["/lstm/out", "/slice/starts", "/slice/ends", "/slice/axes"],
        &["/horizon"],
        vec![],
    ));
}

/// The output head, ending in `y` [batch, t_out].
fn head(net: &Net, nodes: &mut Vec<pb::NodeProto>, inits: &mut Vec<pb::TensorProto>) {
    let h = net.hidden() as i64;
    // The MLP head's hidden layer (none for the linear head, whose nodes
    // stay exactly as before): MatMul [H, M], Add [M], Tanh.
    let mut head_in = "/horizon";
    if !net.head_w1.is_empty() {
        let m = net.head_b1.len();
        let hd = net.hidden();
        let mut w1t = vec![0.0f32; hd * m];
        for k in 0..m {
            for u in 0..hd {
                w1t[u * m + k] = net.head_w1[k * hd + u];
            }
        }
        inits.push(f32_tensor("head.hidden.weight_t", &[h, m as i64], &w1t));
        inits.push(f32_tensor("head.hidden.bias", &[m as i64], &net.head_b1));
        nodes.push(node(
            "MatMul",
            "/head/hidden/MatMul",
            &["/horizon", "head.hidden.weight_t"],
            &["/head/hidden/MatMul_output_0"],
            vec![],
        ));
        nodes.push(node(
            "Add",
            "/head/hidden/Add",
            &["/head/hidden/MatMul_output_0", "head.hidden.bias"],
            &["/head/hidden/Add_output_0"],
            vec![],
        ));
        nodes.push(node(
            "Tanh",
            "/head/hidden/Tanh",
            &["/head/hidden/Add_output_0"],
            &["/head/hidden/Tanh_output_0"],
            vec![],
        ));
        head_in = "/head/hidden/Tanh_output_0";
    }
    let m_out = net.head_w.len() as i64;
    inits.push(f32_tensor("head.weight_t", &[m_out, 1], &net.head_w));
    inits.push(f32_tensor("head.bias", &[1], &[net.head_b]));
    nodes.push(node(
        "MatMul",
        "/head/MatMul",
        &[head_in, "head.weight_t"],
        &["/head/MatMul_output_0"],
        vec![],
    ));
    nodes.push(node(
        "Add",
        "/head/Add",
        &["/head/MatMul_output_0", "head.bias"],
        &["/head/Add_output_0"],
        vec![],
    ));
    nodes.push(constant("/axes2", i64_tensor("", &[1], &[2])));
    let extra = net.residual || net.skip.is_some();
    let gain = net.skip.as_ref().and_then(|s| s.gain.as_ref());
    let squeezed = match (extra, gain) {
        (_, Some(_)) => "/head/y_raw",
        (true, None) => "/head/y",
        (false, None) => "y",
    };
    nodes.push(node(
        "Squeeze",
        "/Squeeze",
        &["/head/Add_output_0", "/axes2"],
        &[squeezed],
        vec![],
    ));
    if let Some(g) = gain {
        // The AR blend's per-step gains: a constant `[t_out]` Mul on the
        // squeezed head, before the skip's Add (`y = gain * head + skip`).
        inits.push(f32_tensor("head.gain", &[net.t_out as i64], g));
        nodes.push(node(
            "Mul",
            "/head/Mul",
            &["/head/y_raw", "head.gain"],
            &["/head/y"],
            vec![],
        ));
    }
    match (&net.skip, net.residual) {
        (Some(_), _) => skip(net, nodes, inits),
        (None, true) => residual(nodes, net.t_in as i64),
        (None, false) => {}
    }
}

/// The fixed linear skip: `y = head + reshape(x, [batch, steps·3]) · W + b`
/// (as PyTorch writes `head(out) + skip(x.flatten(1))`; with the residual
/// flag as well, the skip's map already holds the last V's weight).
fn skip(net: &Net, nodes: &mut Vec<pb::NodeProto>, inits: &mut Vec<pb::TensorProto>) {
    let s = net.skip.as_ref().expect("called with a skip");
    let rows = ((net.t_in + net.t_out) * 3) as i64;
    let t_out = net.t_out as i64;
    let mut w = s.w.clone();
    if net.residual {
        // The last observed V enters the map with weight 1 per step.
        let r = (net.t_in - 1) * 3;
        for j in 0..net.t_out {
            w[r * net.t_out + j] += 1.0;
        }
    }
    inits.push(f32_tensor("skip.weight_t", &[rows, t_out], &w));
    inits.push(f32_tensor("skip.bias", &[t_out], &s.b));
    nodes.push(constant("/skip/shape", i64_tensor("", &[2], &[-1, rows])));
    nodes.push(node(
        "Reshape",
        "/skip/Reshape",
        &["x", "/skip/shape"],
        &["/skip/flat"],
        vec![],
    ));
    nodes.push(node(
        "MatMul",
        "/skip/MatMul",
        &["/skip/flat", "skip.weight_t"],
        &["/skip/MatMul_output_0"],
        vec![],
    ));
    nodes.push(node(
        "Add",
        "/skip/Add",
        &["/skip/MatMul_output_0", "skip.bias"],
        &["/skip/y"],
        vec![],
    ));
    nodes.push(node("Add", "/Add", &["/head/y", "/skip/y"], &["y"], vec![]));
}

/// The residual output (card version 2): `y = head + x[:, t_in-1:t_in, 0]`,
/// as PyTorch writes `head(out) + x[:, t_in - 1, 0:1]` (Slice, Squeeze,
/// Add broadcasting `[batch, 1]` over `[batch, t_out]`).
fn residual(nodes: &mut Vec<pb::NodeProto>, t_in: i64) {
    nodes.push(constant(
        "/residual/starts",
        i64_tensor("", &[2], &[t_in - 1, 0]),
    ));
    nodes.push(constant("/residual/ends", i64_tensor("", &[2], &[t_in, 1])));
    nodes.push(constant("/residual/axes", i64_tensor("", &[2], &[1, 2])));
    nodes.push(node(
        "Slice",
        "/residual/Slice",
        &["x", "/residual/starts", "/residual/ends", "/residual/axes"],
        &["/residual/last3"],
        vec![],
    ));
    nodes.push(node(
        "Squeeze",
        "/residual/Squeeze",
        &["/residual/last3", "/axes2"],
        &["/residual/last"],
        vec![],
    ));
    nodes.push(node(
        "Add",
        "/residual/Add",
        &["/head/y", "/residual/last"],
        &["y"],
        vec![],
    ));
}
