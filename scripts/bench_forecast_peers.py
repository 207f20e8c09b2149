#!/usr/bin/env python3
"""Latency of the controller's forecast task on peers vs. neurostimd.

Task: one observed window + K candidate stimulation plans -> K forecasts.
Input is a contract tensor x [K, t_in + t_out, 3] (DESIGN §3) whose K rows
share the first t_in (observed) steps and differ only in the future I values.

Implementations timed, each for K in --k (default 1, 8, 32):
  ort-full   onnxruntime (1 intra-op, 1 inter-op thread, sequential) on the
             contract model itself at batch K: what a user would do.
  ort-split  onnxruntime on two graphs built with onnx.helper from the weights
             in the ONNX file: encoder = LSTM over the t_in observed steps at
             batch 1 -> (h, c) per layer; decoder = LSTM over the t_out future
             steps at batch K from the broadcast (h, c), plus the linear head.
             Timed as encoder + decoder. Checked against ort-full (1e-4).
  torch-full / torch-split  (only with --with-torch) nn.LSTM + nn.Linear
             rebuilt from the ONNX weights, 1 thread, inference_mode.
  tract-full (only with --with-tract) tract's Python bindings on the contract
             model with the input fact fixed to [K, t_in + t_out, 3].
  ours       `target/release/neurostimd model bench MODEL --batch K --runs N
             --engine E --json`, which prints {"p50_us","p99_us","p999_us",
             "max_us","runs","batch","engine", ...}, for each engine E of
             --ours-engines (default native; `--ours-engines native,tract`
             adds the row ours-tract, our tract fallback, in the same run).
             Skipped with a message if the binary or the subcommand is
             missing.

Heads: the per-step Linear(H, 1) of the contract, or Linear(H, t_out) on
the last step's hidden state (head "last"; split and torch peers then apply
it to the last rolled-out state). Other heads (MLPs) are not parsed here:
time such models with `neurostimd model bench` directly.

Per-run latency with time.perf_counter_ns after a warm-up; p50 / p99 / p99.9 /
max in microseconds (nearest-rank percentiles). Run it pinned to one core
(scripts/bench_forecast_peers.sh does `taskset -c 1`).

Models: contract .onnx files given on the command line, and/or
--synthetic HIDDENxT_INxT_OUT[xLAYERS][:last] (repeatable, e.g. 64x100x20 or
64x100x20x2): a random-weight contract model generated here with onnx.helper
and numpy only (seed --synthetic-seed, default 1; PyTorch's default init
uniform(+-1/sqrt(hidden))), with node for node the graph PyTorch's legacy
exporter writes for nn.LSTM(3, H, L, batch_first=True) + nn.Linear(H, 1) on
the last t_out steps (see build_synthetic), so a reviewer can reproduce the
reference-size comparison without installing torch. It is written with its
model card to --synthetic-dir (default target/peer-models/NAME.{onnx,json},
NAME = synthetic_lstm{L}_h{H}_tin{T_IN}_tout{T_OUT}), checked with
onnxruntime at batch 1 and 32 (finite, input-dependent, equal to the float64
numpy reference within 1e-4), then benched like any other model. With
neither models nor --synthetic the default is
--synthetic 64x100x20 tests/fixtures/pytorch_lstm1_h16.onnx
tests/fixtures/pytorch_lstm2_h8.onnx.

Needs numpy, onnx, onnxruntime; torch only for --with-torch.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What runs with no model and no --synthetic: the DESIGN's reference size
# (1-layer LSTM, hidden 64, t_in 100, t_out 20), generated without torch,
# plus the two PyTorch-exported fixtures.
DEFAULT_ARGS = [
    "--synthetic",
    "64x100x20",
    os.path.join(REPO, "tests", "fixtures", "pytorch_lstm1_h16.onnx"),
    os.path.join(REPO, "tests", "fixtures", "pytorch_lstm2_h8.onnx"),
]


# --------------------------------------------------------------------------
# Reading the contract model
# --------------------------------------------------------------------------


class ContractWeights:
    """Weights of a contract LSTM model, in ONNX layout.

    layers[l] = (W [1, 4H, in], R [1, 4H, H], B [1, 8H]) with ONNX gate order
    i, o, f, c; head_w [H, W] (MatMul layout), head_b [W]. head "step":
    W = 1, Linear(H, 1) on each of the last t_out steps; head "last": W =
    t_out, Linear(H, t_out) on the last step's hidden state (what PyTorch
    writes for out[:, -1, :] as Gather + Gemm).
    """

    def __init__(self, path: str):
        self.path = path
        m = onnx.load(path)
        g = m.graph
        consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        consts[n.output[0]] = numpy_helper.to_array(a.t)
        self.layers = []
        self.hidden = None
        for n in g.node:
            if n.op_type != "LSTM":
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            direction = attrs.get("direction", b"forward")
            if isinstance(direction, bytes):
                direction = direction.decode()
            if direction != "forward":
                raise ValueError(f"{path}: LSTM direction {direction} not supported")
            for bad in ("activations", "clip", "input_forget"):
                if bad in attrs and not (bad == "input_forget" and attrs[bad] == 0):
                    raise ValueError(f"{path}: LSTM attribute {bad} not supported")
            if attrs.get("layout", 0) != 0:
                raise ValueError(f"{path}: LSTM layout=1 not supported")
            h = int(attrs["hidden_size"])
            w = consts[n.input[1]].astype(np.float32)
            r = consts[n.input[2]].astype(np.float32)
            if len(n.input) > 3 and n.input[3]:
                b = consts[n.input[3]].astype(np.float32)
            else:
                b = np.zeros((1, 8 * h), np.float32)
            if len(n.input) > 4 and n.input[4]:
                raise ValueError(f"{path}: LSTM sequence_lens not supported")
            if len(n.input) > 7 and n.input[7]:
                raise ValueError(f"{path}: LSTM peepholes not supported")
            self.layers.append((w, r, b))
            self.hidden = h
        if not self.layers:
            raise ValueError(f"{path}: no LSTM node")
        # head: MatMul(x, W[H,1]) + Add(b[1])  or  Gemm
        self.head_w = None
        self.head_b = np.zeros((1,), np.float32)
        for n in g.node:
            if n.op_type == "MatMul" and n.input[1] in consts:
                self.head_w = consts[n.input[1]].astype(np.float32)
                mm_out = n.output[0]
                for n2 in g.node:
                    if n2.op_type == "Add" and mm_out in n2.input:
                        other = [i for i in n2.input if i != mm_out][0]
                        self.head_b = consts[other].astype(np.float32).reshape(-1)
            elif n.op_type == "Gemm" and n.input[1] in consts:
                attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
                w = consts[n.input[1]].astype(np.float32)
                self.head_w = w.T if attrs.get("transB", 0) else w
                if len(n.input) > 2 and n.input[2]:
                    self.head_b = consts[n.input[2]].astype(np.float32).reshape(-1)
        heads = [n.op_type for n in g.node if n.op_type in ("MatMul", "Gemm")]
        if self.head_w is None or len(heads) != 1 or self.head_w.shape[0] != self.hidden:
            raise ValueError(f"{path}: could not find one Linear(H, 1) or Linear(H, t_out) head")
        last = any(n.op_type == "Gather" and n.input[0] not in ("x",) and "Shape" not in n.input[0] for n in g.node)
        self.head = "last" if last else "step"
        if (self.head == "step") != (self.head_w.shape[1] == 1):
            raise ValueError(f"{path}: head weight {self.head_w.shape} does not fit a {self.head} head")
        # shapes from the graph, t_in/t_out from the card if there is one
        seq = g.input[0].type.tensor_type.shape.dim[1].dim_value
        t_out = g.output[0].type.tensor_type.shape.dim[1].dim_value
        card_path = os.path.splitext(path)[0] + ".json"
        self.card = None
        if os.path.exists(card_path):
            with open(card_path) as f:
                self.card = json.load(f)
            self.t_in = int(self.card["t_in"])
            self.t_out = int(self.card["t_out"])
        else:
            self.t_in, self.t_out = seq - t_out, t_out
        if seq and seq != self.t_in + self.t_out:
            raise ValueError(f"{path}: input length {seq} != t_in + t_out")
        if self.head == "last" and self.head_w.shape[1] != self.t_out:
            raise ValueError(f"{path}: last-state head of width {self.head_w.shape[1]} != t_out")
        self.input_name = g.input[0].name
        self.output_name = g.output[0].name
        self.num_layers = len(self.layers)

    def norm(self):
        if self.card:
            return self.card["normalization"]
        return {"v_mean": -65.0, "v_std": 10.0, "i_mean": 0.0, "i_std": 1.0}


# --------------------------------------------------------------------------
# Split graphs (encoder at batch 1, decoder at batch K) with onnx.helper
# --------------------------------------------------------------------------


def _const_i64(name, vals):
    return helper.make_node(
        "Constant", [], [name], value=helper.make_tensor(name + "_v", TensorProto.INT64, [len(vals)], vals)
    )


def build_encoder(cw: ContractWeights) -> onnx.ModelProto:
    L, H = cw.num_layers, cw.hidden
    nodes, inits, outputs = [], [], []
    nodes.append(helper.make_node("Transpose", ["x_obs"], ["xt"], perm=[1, 0, 2]))
    if L > 1:
        nodes.append(_const_i64("ax1", [1]))
    cur = "xt"
    for l, (w, r, b) in enumerate(cw.layers):
        for nm, arr in (("W", w), ("R", r), ("B", b)):
            inits.append(numpy_helper.from_array(arr, f"{nm}{l}"))
        last = l == L - 1
        y = "" if last else f"Y{l}"
        nodes.append(
            helper.make_node("LSTM", [cur, f"W{l}", f"R{l}", f"B{l}"], [y, f"h{l}", f"c{l}"], hidden_size=H)
        )
        if not last:
            nodes.append(helper.make_node("Squeeze", [y, "ax1"], [f"Ys{l}"]))
            cur = f"Ys{l}"
        outputs += [
            helper.make_tensor_value_info(f"h{l}", TensorProto.FLOAT, [1, 1, H]),
            helper.make_tensor_value_info(f"c{l}", TensorProto.FLOAT, [1, 1, H]),
        ]
    graph = helper.make_graph(
        nodes,
        "encoder",
        [helper.make_tensor_value_info("x_obs", TensorProto.FLOAT, [1, cw.t_in, 3])],
        outputs,
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def build_decoder(cw: ContractWeights) -> onnx.ModelProto:
    L, H = cw.num_layers, cw.hidden
    nodes, inits = [], []
    nodes.append(helper.make_node("Transpose", ["x_fut"], ["xt"], perm=[1, 0, 2]))
    nodes.append(_const_i64("ax1", [1]))
    nodes.append(_const_i64("ax2", [2]))
    nodes.append(_const_i64("one", [1]))
    nodes.append(_const_i64("hid", [H]))
    nodes.append(helper.make_node("Shape", ["x_fut"], ["xs"], start=0, end=1))
    nodes.append(helper.make_node("Concat", ["one", "xs", "hid"], ["state_shape"], axis=0))
    inputs = [helper.make_tensor_value_info("x_fut", TensorProto.FLOAT, ["K", cw.t_out, 3])]
    cur = "xt"
    for l, (w, r, b) in enumerate(cw.layers):
        for nm, arr in (("W", w), ("R", r), ("B", b)):
            inits.append(numpy_helper.from_array(arr, f"{nm}{l}"))
        inputs += [
            helper.make_tensor_value_info(f"h{l}", TensorProto.FLOAT, [1, 1, H]),
            helper.make_tensor_value_info(f"c{l}", TensorProto.FLOAT, [1, 1, H]),
        ]
        nodes.append(helper.make_node("Expand", [f"h{l}", "state_shape"], [f"hK{l}"]))
        nodes.append(helper.make_node("Expand", [f"c{l}", "state_shape"], [f"cK{l}"]))
        nodes.append(
            helper.make_node(
                "LSTM",
                [cur, f"W{l}", f"R{l}", f"B{l}", "", f"hK{l}", f"cK{l}"],
                [f"Y{l}"],
                hidden_size=H,
            )
        )
        nodes.append(helper.make_node("Squeeze", [f"Y{l}", "ax1"], [f"Ys{l}"]))  # [t_out, K, H]
        cur = f"Ys{l}"
    inits.append(numpy_helper.from_array(cw.head_w, "head_w"))
    inits.append(numpy_helper.from_array(cw.head_b, "head_b"))
    if cw.head == "last":
        inits.append(numpy_helper.from_array(np.array(-1, np.int64), "last"))
        nodes.append(helper.make_node("Gather", [cur, "last"], ["hl"], axis=0))  # [K, H]
        nodes.append(helper.make_node("MatMul", ["hl", "head_w"], ["mm"]))  # [K, t_out]
        nodes.append(helper.make_node("Add", ["mm", "head_b"], ["y"]))
    else:
        nodes.append(helper.make_node("MatMul", [cur, "head_w"], ["mm"]))  # [t_out, K, 1]
        nodes.append(helper.make_node("Add", ["mm", "head_b"], ["mmb"]))
        nodes.append(helper.make_node("Squeeze", ["mmb", "ax2"], ["s_tk"]))  # [t_out, K]
        nodes.append(helper.make_node("Transpose", ["s_tk"], ["y"], perm=[1, 0]))  # [K, t_out]
    graph = helper.make_graph(
        nodes,
        "decoder",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["K", cw.t_out])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


# --------------------------------------------------------------------------
# Plain numpy reference (documents the math a hand-written evaluator needs)
# --------------------------------------------------------------------------


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def numpy_reference(cw: ContractWeights, x: np.ndarray) -> np.ndarray:
    """y [B, t_out] from x [B, t_in + t_out, 3], float64, ONNX gate order iofc:
    gates = x_t W^T + h R^T + Wb + Rb; i, o, f = sigmoid; c~ = tanh;
    c = f*c + i*c~; h = o*tanh(c); zero initial state; y = h_top W_head + b."""
    B, T, _ = x.shape
    H = cw.hidden
    inp = x.astype(np.float64)
    for w, r, b in cw.layers:
        W, R = w[0].astype(np.float64), r[0].astype(np.float64)
        bias = (b[0, : 4 * H] + b[0, 4 * H :]).astype(np.float64)
        h = np.zeros((B, H))
        c = np.zeros((B, H))
        out = np.empty((B, T, H))
        for t in range(T):
            g = inp[:, t, :] @ W.T + h @ R.T + bias
            i, o, f, cc = (g[:, k * H : (k + 1) * H] for k in range(4))
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(cc)
            h = _sigmoid(o) * np.tanh(c)
            out[:, t, :] = h
        inp = out
    if cw.head == "last":
        return inp[:, -1, :] @ cw.head_w.astype(np.float64) + cw.head_b
    y = inp[:, cw.t_in :, :] @ cw.head_w.astype(np.float64) + cw.head_b[0]
    return y[:, :, 0]


# --------------------------------------------------------------------------
# Torch peer rebuilt from the ONNX weights
# --------------------------------------------------------------------------


def _iofc_to_ifgo(a, H, axis=0):
    i, o, f, c = (np.take(a, range(k * H, (k + 1) * H), axis=axis) for k in range(4))
    return np.concatenate([i, f, c, o], axis=axis)


def build_torch(cw: ContractWeights):
    import torch
    import torch.nn as nn

    H = cw.hidden
    lstm = nn.LSTM(3, H, cw.num_layers, batch_first=True)
    head = nn.Linear(H, cw.head_w.shape[1])
    with torch.no_grad():
        for l, (w, r, b) in enumerate(cw.layers):
            getattr(lstm, f"weight_ih_l{l}").copy_(torch.from_numpy(_iofc_to_ifgo(w[0], H)))
            getattr(lstm, f"weight_hh_l{l}").copy_(torch.from_numpy(_iofc_to_ifgo(r[0], H)))
            getattr(lstm, f"bias_ih_l{l}").copy_(torch.from_numpy(_iofc_to_ifgo(b[0, : 4 * H], H)))
            getattr(lstm, f"bias_hh_l{l}").copy_(torch.from_numpy(_iofc_to_ifgo(b[0, 4 * H :], H)))
        head.weight.copy_(torch.from_numpy(cw.head_w.T.copy()))
        head.bias.copy_(torch.from_numpy(cw.head_b))
    lstm.eval()
    head.eval()
    return lstm, head


# --------------------------------------------------------------------------
# Inputs, timing, statistics
# --------------------------------------------------------------------------


def make_task_input(cw: ContractWeights, K: int, seed: int = 7) -> np.ndarray:
    """One realistic observed window shared by K rows, K different plans."""
    rng = np.random.default_rng(seed)
    nm = cw.norm()
    t_in, t_out = cw.t_in, cw.t_out
    v = -65.0 + rng.normal(0.0, 1.5, t_in)
    i_obs = np.zeros(t_in)
    i_obs[t_in // 3 : t_in // 2] = 4.0
    p = t_in // 2
    for k, val in enumerate([-50.0, 30.0, -20.0, -75.0, -70.0]):
        if p + k < t_in:
            v[p + k] = val
    x = np.zeros((K, t_in + t_out, 3), np.float32)
    x[:, :t_in, 0] = (v - nm["v_mean"]) / nm["v_std"]
    x[:, :t_in, 1] = (i_obs - nm["i_mean"]) / nm["i_std"]
    amps = np.linspace(-4.0, 8.0, K) if K > 1 else np.array([2.0])
    for k in range(K):
        plan = np.zeros(t_out)
        plan[: max(1, t_out // 2)] = amps[k]
        x[k, t_in:, 1] = (plan - nm["i_mean"]) / nm["i_std"]
    x[:, t_in:, 2] = 1.0
    return x


# Under SCHED_FIFO/RR (PEERS_RT=...) the kernel throttles real-time tasks that
# run for more than sched_rt_runtime_us (default 950 ms) of every 1 s: that
# would show up as ~50 ms "latencies". So a real-time run rests 100 ms after
# every 700 ms of work, outside the timed region.
_RT = False
_last_rest_ns = time.perf_counter_ns()
_REST_EVERY_NS = 700_000_000
_REST_S = 0.1


def rest_if_needed(force: bool = False) -> None:
    global _last_rest_ns
    if not _RT:
        return
    now = time.perf_counter_ns()
    if force or now - _last_rest_ns > _REST_EVERY_NS:
        time.sleep(_REST_S)
        _last_rest_ns = time.perf_counter_ns()


def time_fn(fn, runs: int, warmup: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
        rest_if_needed()
    ts = np.empty(runs, np.int64)
    pc = time.perf_counter_ns
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(runs):
            t0 = pc()
            fn()
            ts[r] = pc() - t0
            rest_if_needed()
    finally:
        if gc_was:
            gc.enable()
    return ts


def pct(sorted_ns: np.ndarray, q: float) -> float:
    """Nearest-rank percentile, in microseconds."""
    n = len(sorted_ns)
    k = min(n, max(1, math.ceil(q / 100.0 * n)))
    return float(sorted_ns[k - 1]) / 1000.0


def stats(ts_ns: np.ndarray) -> dict:
    s = np.sort(ts_ns)
    return {
        "p50_us": pct(s, 50),
        "p99_us": pct(s, 99),
        "p999_us": pct(s, 99.9),
        "max_us": float(s[-1]) / 1000.0,
        "mean_us": float(s.mean()) / 1000.0,
        "runs": int(len(s)),
    }


def ort_session(model, ort):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def run_ours(binary: str, model: str, K: int, runs: int, timeout: float, engine: str = "native"):
    """Returns (stats dict or None, message)."""
    if not os.path.exists(binary):
        return None, f"binary {binary} not found (build with cargo build --release)"
    cmd = [binary, "model", "bench", model, "--batch", str(K), "--runs", str(runs), "--engine", engine, "--json"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"`{' '.join(cmd)}` timed out after {timeout:.0f} s"
    except OSError as e:
        return None, f"`{' '.join(cmd)}` could not run: {e}"
    if p.returncode != 0:
        err = (p.stderr or p.stdout).strip().splitlines()
        tail = err[-1] if err else ""
        return None, f"`model bench` unavailable or failed (exit {p.returncode}): {tail}"
    for line in reversed(p.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "p50_us" in d and "p99_us" in d:
                return d, "ok"
    try:
        d = json.loads(p.stdout)
        if "p50_us" in d:
            return d, "ok"
    except json.JSONDecodeError:
        pass
    return None, "`model bench --json` printed no JSON object with p50_us/p99_us"


# --------------------------------------------------------------------------
# Synthetic contract models (--synthetic HxT_INxT_OUT[xL]), without torch
# --------------------------------------------------------------------------

INT64_MAX = 9223372036854775807
SYNTH_DT_MS = 0.5
SYNTH_NORM = {"v_mean": -65.0, "v_std": 10.0, "i_mean": 0.0, "i_std": 1.0}


def parse_synthetic_spec(spec: str):
    """'64x100x20' or '64x100x20x2' -> (hidden, t_in, t_out, layers, head);
    a ':last' suffix (e.g. '48x160x20x2:last') asks for a Linear(H, t_out)
    head on the last step's hidden state instead of Linear(H, 1) per step."""
    spec, _, head = spec.lower().partition(":")
    if head not in ("", "last"):
        raise SystemExit(f"--synthetic {spec}:{head}: the only head suffix is ':last'")
    parts = spec.split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) not in (3, 4) or min(vals) < 1:
        raise SystemExit(
            f"--synthetic {spec!r}: expected HIDDENxT_INxT_OUT[xLAYERS] of positive integers, e.g. 64x100x20"
        )
    h, t_in, t_out = vals[:3]
    layers = vals[3] if len(vals) == 4 else 1
    return h, t_in, t_out, layers, head or "step"


def synthetic_name(h: int, t_in: int, t_out: int, layers: int, head: str = "step") -> str:
    return f"synthetic_lstm{layers}_h{h}_tin{t_in}_tout{t_out}" + ("_last" if head == "last" else "")


def _ifgo_to_iofc(a: np.ndarray, H: int) -> np.ndarray:
    """PyTorch's gate blocks (rows) i, f, g, o -> ONNX's i, o, f, c."""
    i, f, g, o = (a[k * H : (k + 1) * H] for k in range(4))
    return np.concatenate([i, o, f, g], axis=0)


def synthetic_weights(h: int, layers: int, seed: int, width: int = 1):
    """PyTorch's default init for nn.LSTM(3, h, layers) + nn.Linear(h, 1):
    every parameter uniform in [-1/sqrt(h), 1/sqrt(h)] (the Linear's
    kaiming_uniform(a=sqrt(5)) and bias bounds are 1/sqrt(fan_in) = 1/sqrt(h)
    too), drawn with numpy's default_rng(seed) in PyTorch's parameter order
    (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, ..., head.weight,
    head.bias) and converted to the ONNX layout as PyTorch's exporter does:
    W [1, 4H, in], R [1, 4H, H], B [1, 8H] = [bias_ih, bias_hh], gate rows
    reordered i,f,g,o -> i,o,f,c; head weight transposed to [H, 1]."""
    rng = np.random.default_rng(seed)
    k = 1.0 / math.sqrt(h)

    def u(*shape):
        return rng.uniform(-k, k, size=shape).astype(np.float32)

    lstm = []
    for l in range(layers):
        n_in = 3 if l == 0 else h
        w_ih, w_hh, b_ih, b_hh = u(4 * h, n_in), u(4 * h, h), u(4 * h), u(4 * h)
        W = _ifgo_to_iofc(w_ih, h)[None]
        R = _ifgo_to_iofc(w_hh, h)[None]
        B = np.concatenate([_ifgo_to_iofc(b_ih, h), _ifgo_to_iofc(b_hh, h)])[None]
        lstm.append((np.ascontiguousarray(W), np.ascontiguousarray(R), np.ascontiguousarray(B)))
    head_w = np.ascontiguousarray(u(width, h).T)  # [H, width]
    head_b = u(width)
    return lstm, head_w, head_b


def build_synthetic(h: int, t_in: int, t_out: int, layers: int, seed: int, head: str = "step") -> onnx.ModelProto:
    """The graph PyTorch's legacy exporter (torch.onnx.export(dynamo=False,
    opset_version=17, dynamic_axes batch)) writes for
        out, _ = nn.LSTM(3, h, layers, batch_first=True)(x)
        y = nn.Linear(h, 1)(out[:, t_in:, :]).squeeze(-1)
    node for node (same ops, inputs, attributes, Constant nodes and node
    names as tests/fixtures/pytorch_lstm{1_h16,2_h8}.onnx), with seeded
    random weights instead of torch's. head "last": y = nn.Linear(h,
    t_out)(out[:, -1, :]), written as torch writes it: Gather(-1, axis 1),
    then Gemm(transB=1) with head.weight [t_out, h] and head.bias [t_out]."""
    lstm_w, head_w, head_b = synthetic_weights(h, layers, seed, t_out if head == "last" else 1)
    nodes = []
    inits = [numpy_helper.from_array(head_b, "head.bias")]
    counters = {}

    def const(scope: str, value, scalar: bool = False) -> str:
        i = counters.get(scope, 0)
        counters[scope] = i + 1
        name = f"{scope}/Constant" + (f"_{i}" if i else "")
        arr = np.array(value if scalar else list(value), dtype=np.int64)
        nodes.append(helper.make_node("Constant", [], [name + "_output_0"], name=name, value=numpy_helper.from_array(arr)))
        return name + "_output_0"

    def node(op: str, name: str, inputs, n_out: int = 1, **attrs):
        outs = [f"{name}_output_{j}" for j in range(n_out)]
        nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    # zero initial states [L, batch, H] from the batch size
    shape = node("Shape", "/lstm/Shape", ["x"])
    batch = node("Gather", "/lstm/Gather", [shape, const("/lstm", 0, scalar=True)], axis=0)
    c_layers = const("/lstm", [layers])
    nodes.append(
        helper.make_node(
            "Constant", [], ["onnx::Unsqueeze_14"], name="Constant_14", value=numpy_helper.from_array(np.array([0], np.int64))
        )
    )
    batch1 = node("Unsqueeze", "/lstm/Unsqueeze", [batch, "onnx::Unsqueeze_14"])
    c_hidden = const("/lstm", [h])
    st_shape = node("Concat", "/lstm/Concat", [c_layers, batch1, c_hidden], axis=0)
    zeros = node(
        "ConstantOfShape", "/lstm/ConstantOfShape", [st_shape], value=numpy_helper.from_array(np.zeros(1, np.float32))
    )
    cur = node("Transpose", "/lstm/Transpose", ["x"], perm=[1, 0, 2])

    init_id = 122
    n_slice = 0
    for l, (W, R, B) in enumerate(lstm_w):
        if layers == 1:
            h0 = c0 = zeros
        else:
            states = []
            for _ in range(2):  # initial_h, initial_c: zeros[l:l+1] along axis 0
                axes = const("/lstm", [0])
                starts = const("/lstm", [l])
                ends = const("/lstm", [l + 1])
                nm = "/lstm/Slice" + (f"_{n_slice}" if n_slice else "")
                n_slice += 1
                states.append(node("Slice", nm, [zeros, starts, ends, axes]))
            h0, c0 = states
        names = []
        for arr in (W, R, B):
            nm = f"onnx::LSTM_{init_id}"
            init_id += 1
            inits.append(numpy_helper.from_array(arr, nm))
            names.append(nm)
        sfx = f"_{l}" if l else ""
        y_seq, _, _ = node("LSTM", f"/lstm/LSTM{sfx}", [cur] + names + ["", h0, c0], n_out=3, hidden_size=h)
        cur = node("Squeeze", f"/lstm/Squeeze{sfx}", [y_seq, const("/lstm", [1])])
    cur = node("Transpose", "/lstm/Transpose_1", [cur], perm=[1, 0, 2])

    if head == "last":
        last = const("", -1, scalar=True)
        cur = node("Gather", "/Gather", [cur, last], axis=1)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(head_w.T), "head.weight"))
        nodes.append(
            helper.make_node("Gemm", [cur, "head.weight", "head.bias"], ["y"], name="/head/Gemm", alpha=1.0, beta=1.0, transB=1)
        )
        return finish_synthetic(nodes, inits, t_in, t_out)

    # out[:, t_in:, :] -> Linear(h, 1) -> squeeze(-1)
    axes = const("", [1])
    starts = const("", [t_in])
    ends = const("", [INT64_MAX])
    steps = const("", [1])
    cur = node("Slice", "/Slice", [cur, starts, ends, axes, steps])
    mm_w = f"onnx::MatMul_{init_id + 4}"
    inits.append(numpy_helper.from_array(head_w, mm_w))
    cur = node("MatMul", "/head/MatMul", [cur, mm_w])
    cur = node("Add", "/head/Add", ["head.bias", cur])
    nodes.append(helper.make_node("Squeeze", [cur, const("", [2])], ["y"], name="/Squeeze"))
    return finish_synthetic(nodes, inits, t_in, t_out)


def finish_synthetic(nodes, inits, t_in: int, t_out: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "main_graph",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", t_in + t_out, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", t_out])],
        inits,
    )
    m = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="neurostimd scripts/bench_forecast_peers.py --synthetic",
        producer_version="1",
    )
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def check_synthetic(path: str, cw: "ContractWeights", ort) -> dict:
    """onnxruntime runs it at batch 1 and 32; outputs finite and input-dependent;
    equal to the float64 numpy reference."""
    sess = ort_session(path, ort)
    out = {}
    for K in (1, 32):
        x = make_task_input(cw, K)
        y = sess.run(["y"], {"x": x})[0]
        if y.shape != (K, cw.t_out):
            raise SystemExit(f"{path}: onnxruntime output shape {y.shape} at batch {K}, expected {(K, cw.t_out)}")
        if not np.all(np.isfinite(y)):
            raise SystemExit(f"{path}: onnxruntime output not finite at batch {K}")
        err = float(np.max(np.abs(numpy_reference(cw, x) - y)))
        if err > 1e-4:
            raise SystemExit(f"{path}: onnxruntime differs from the numpy reference by {err:g} at batch {K}")
        out[f"numpy_ref_vs_ort_k{K}"] = err
        if K == 32:
            # the 32 rows share the window and differ only in the plan
            spread = float(np.max(np.abs(y - y[:1])))
        else:
            x2 = x.copy()
            x2[:, : cw.t_in, 0] += 0.5  # a different observed V
            spread = float(np.max(np.abs(sess.run(["y"], {"x": x2})[0] - y)))
        if not spread > 1e-6:
            raise SystemExit(f"{path}: onnxruntime output does not depend on the input at batch {K}")
        out[f"input_effect_k{K}"] = spread
    return out


def write_synthetic(spec: str, out_dir: str, seed: int, ort) -> dict:
    """Builds NAME.onnx + NAME.json in out_dir; returns info for the report."""
    h, t_in, t_out, layers, head = parse_synthetic_spec(spec)
    name = synthetic_name(h, t_in, t_out, layers, head)
    os.makedirs(out_dir, exist_ok=True)
    onnx_path = os.path.join(out_dir, name + ".onnx")
    data = build_synthetic(h, t_in, t_out, layers, seed, head).SerializeToString()
    with open(onnx_path, "wb") as f:
        f.write(data)
    sha = hashlib.sha256(data).hexdigest()
    card = {
        "format": "neurostimd-model-card",
        "format_version": 1,
        "name": name,
        "dt_ms": SYNTH_DT_MS,
        "t_in": t_in,
        "t_out": t_out,
        "input": {"name": "x", "features": ["V", "I", "is_future"]},
        "output": {"name": "y", "order": "reversed"},
        "normalization": dict(SYNTH_NORM),
        "architecture": {"cell": "lstm", "layers": layers, "hidden": h, "head": "last" if head == "last" else "linear"},
        "provenance": {
            "tool": "scripts/bench_forecast_peers.py",
            "command": f"scripts/bench_forecast_peers.sh --synthetic {spec} --synthetic-seed {seed}",
            "spec": spec,
            "seed": seed,
            "trained": False,
            "generator": "onnx.helper + numpy, no torch",
            "weights": "uniform(-1/sqrt(hidden), 1/sqrt(hidden)) as PyTorch's default init, "
            "numpy.random.default_rng(seed), PyTorch parameter order",
            "graph": "node for node what torch.onnx.export(dynamo=False) writes for nn.LSTM + nn.Linear",
            "opset": 17,
            "onnx_version": onnx.__version__,
            "numpy_version": np.__version__,
            "note": "synthetic random-weight model for latency benchmarks, not a useful forecaster",
        },
        "validation": None,
        "onnx_sha256": sha,
        "parent": None,
    }
    card_path = os.path.join(out_dir, name + ".json")
    with open(card_path, "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    cw = ContractWeights(onnx_path)
    checks = check_synthetic(onnx_path, cw, ort)
    print(
        f"synthetic {spec} (seed {seed}): {os.path.relpath(onnx_path, os.getcwd())} "
        f"{len(data)} B sha256 {sha[:16]}…; onnxruntime at batch 1 and 32: finite, input-dependent, "
        f"max |ORT - numpy f64| {max(v for k, v in checks.items() if k.startswith('numpy')):.1e}",
        flush=True,
    )
    return {"spec": spec, "seed": seed, "path": onnx_path, "card": card_path, "onnx_sha256": sha, "checks": checks}


# --------------------------------------------------------------------------


def bench_model(path: str, args, ort, torch, tract) -> dict:
    cw = ContractWeights(path)
    res = {
        "model": path,
        "layers": cw.num_layers,
        "hidden": cw.hidden,
        "t_in": cw.t_in,
        "t_out": cw.t_out,
        "by_k": {},
    }
    print(
        f"\n=== {os.path.basename(path)}: LSTM layers={cw.num_layers} hidden={cw.hidden} "
        f"t_in={cw.t_in} t_out={cw.t_out} ===",
        flush=True,
    )
    full = ort_session(path, ort)
    enc = ort_session(build_encoder(cw), ort)
    dec = ort_session(build_decoder(cw), ort)
    L = cw.num_layers
    state_names = [f"{hc}{l}" for l in range(L) for hc in ("h", "c")]

    if torch is not None:
        lstm, head = build_torch(cw)

    for K in args.k:
        x = make_task_input(cw, K)
        x_obs = np.ascontiguousarray(x[:1, : cw.t_in, :])
        x_fut = np.ascontiguousarray(x[:, cw.t_in :, :])
        feed_full = {cw.input_name: x}
        out_full = [cw.output_name]

        def ort_full():
            return full.run(out_full, feed_full)[0]

        def ort_split():
            st = enc.run(state_names, {"x_obs": x_obs})
            feed = {"x_fut": x_fut}
            for nm, v in zip(state_names, st):
                feed[nm] = v
            return dec.run(["y"], feed)[0]

        y_full = ort_full()
        y_split = ort_split()
        err_split = float(np.max(np.abs(y_full - y_split)))
        if err_split > 1e-4:
            raise SystemExit(f"{path} K={K}: split differs from full by {err_split:g} > 1e-4")
        rows = {}
        err_np = float(np.max(np.abs(numpy_reference(cw, x) - y_full)))
        if err_np > 1e-4:
            raise SystemExit(f"{path} K={K}: numpy reference differs from ORT by {err_np:g}")
        checks = {"split_vs_full": err_split, "numpy_ref_vs_ort": err_np}
        rows["ort-full"] = stats(time_fn(ort_full, args.runs, args.warmup))
        rows["ort-split"] = stats(time_fn(ort_split, args.runs, args.warmup))

        if torch is not None:
            xt = torch.from_numpy(x)
            xt_obs = torch.from_numpy(x_obs)
            xt_fut = torch.from_numpy(x_fut)
            t_in = cw.t_in

            last = cw.head == "last"

            def torch_full():
                with torch.inference_mode():
                    out, _ = lstm(xt)
                    if last:
                        return head(out[:, -1, :])
                    return head(out[:, t_in:, :]).squeeze(-1)

            def torch_split():
                with torch.inference_mode():
                    _, (h, c) = lstm(xt_obs)
                    hK = h.expand(-1, K, -1).contiguous()
                    cK = c.expand(-1, K, -1).contiguous()
                    out, _ = lstm(xt_fut, (hK, cK))
                    if last:
                        return head(out[:, -1, :])
                    return head(out).squeeze(-1)

            with torch.no_grad():
                e1 = float(np.max(np.abs(torch_full().numpy() - y_full)))
                e2 = float(np.max(np.abs(torch_split().numpy() - y_full)))
            checks["torch_full_vs_ort"] = e1
            checks["torch_split_vs_ort"] = e2
            if max(e1, e2) > 1e-4:
                raise SystemExit(f"{path} K={K}: torch differs from ORT by {max(e1, e2):g}")
            rows["torch-full"] = stats(time_fn(torch_full, args.runs, args.warmup))
            rows["torch-split"] = stats(time_fn(torch_split, args.runs, args.warmup))

        if tract is not None:
            # tract 0.23 needs a concrete batch here: with the symbolic batch
            # of the contract model, multi-layer LSTMs exported by torch fail
            # at run time for batch != 1 (see tests/fixtures/README.md).
            im = tract.onnx().load(path)
            im.set_input_fact(0, f"{K},{cw.t_in + cw.t_out},3,f32")
            tr = im.into_model().into_runnable()

            def tract_full():
                return tr.run([x])[0].to_numpy()

            e3 = float(np.max(np.abs(tract_full() - y_full)))
            checks["tract_full_vs_ort"] = e3
            if e3 > 1e-4:
                raise SystemExit(f"{path} K={K}: tract differs from ORT by {e3:g}")
            rows["tract-full"] = stats(time_fn(tract_full, args.runs, args.warmup))

        ours_msg = "skipped (--no-ours)"
        if not args.no_ours:
            for engine in args.ours_engines:
                rest_if_needed(force=True)
                d, ours_msg = run_ours(args.ours_bin, os.path.abspath(path), K, args.runs, args.ours_timeout, engine)
                if d is not None:
                    if d.get("engine") not in (None, engine):
                        ours_msg = f"asked for --engine {engine}, model bench ran {d.get('engine')}"
                        print(f"  warning: {ours_msg}")
                    rows["ours" if engine == args.ours_engines[0] else f"ours-{engine}"] = d
        res["by_k"][K] = {"rows": rows, "checks": checks, "ours": ours_msg}

        print(f"\nK={K}  (max |split-full| = {err_split:.2e}" +
              "".join(f", {k} = {v:.2e}" for k, v in checks.items() if k != "split_vs_full") + ")")
        print(f"  {'impl':<12} {'p50 us':>10} {'p99 us':>10} {'p99.9 us':>10} {'max us':>10}")
        for name, s in rows.items():
            if name == "ours" and s.get("engine"):
                name = f"ours/{s['engine']}"
            print(
                f"  {name:<12} {s['p50_us']:>10.1f} {s['p99_us']:>10.1f} "
                f"{s.get('p999_us', float('nan')):>10.1f} {s.get('max_us', float('nan')):>10.1f}"
            )
        if "ours" not in rows:
            print(f"  ours: {ours_msg}")
        sys.stdout.flush()

    # ratio table
    print(f"\nratios ours/peer for {os.path.basename(path)} (p50, p99; < 1 means ours is faster)")
    peers = [
        n
        for n in ("ort-full", "ort-split", "torch-full", "torch-split", "tract-full", "ours-native", "ours-tract")
        if n in res["by_k"][args.k[0]]["rows"]
    ]
    print(f"  {'K':>4} " + " ".join(f"{p:>22}" for p in peers))
    for K in args.k:
        rows = res["by_k"][K]["rows"]
        if "ours" not in rows:
            print(f"  {K:>4} " + " ".join(f"{'n/a':>22}" for _ in peers))
            continue
        o = rows["ours"]
        cells = []
        for p in peers:
            cells.append(f"{o['p50_us'] / rows[p]['p50_us']:>9.3f} / {o['p99_us'] / rows[p]['p99_us']:<9.3f}")
        print(f"  {K:>4} " + " ".join(f"{c:>22}" for c in cells))
    return res


def main(argv=None) -> int:
    global _RT
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "models",
        nargs="*",
        help="contract .onnx files (card NAME.json beside them if present); with neither models nor "
        "--synthetic: " + " ".join(os.path.relpath(a, REPO) if a.endswith(".onnx") else a for a in DEFAULT_ARGS),
    )
    ap.add_argument(
        "--synthetic",
        action="append",
        default=[],
        metavar="SPEC",
        help="generate (no torch) and bench a random-weight contract model HIDDENxT_INxT_OUT[xLAYERS], "
        "e.g. 64x100x20 (the DESIGN's reference size) or 64x100x20x2; repeatable",
    )
    ap.add_argument("--synthetic-seed", type=int, default=1, help="seed of the synthetic weights (default 1)")
    ap.add_argument(
        "--synthetic-dir",
        default=os.path.join(REPO, "target", "peer-models"),
        help="where synthetic NAME.onnx + NAME.json go (default target/peer-models)",
    )
    ap.add_argument("--k", default="1,8,32", help="comma-separated K values (default 1,8,32)")
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--with-torch", action="store_true", help="also time PyTorch (needs torch)")
    ap.add_argument("--with-tract", action="store_true", help="also time tract's Python bindings (pip install tract)")
    ap.add_argument("--ours-bin", default=os.path.join(REPO, "target", "release", "neurostimd"))
    ap.add_argument("--ours-timeout", type=float, default=600.0)
    ap.add_argument("--no-ours", action="store_true", help="peers only")
    ap.add_argument(
        "--ours-engines",
        default="native",
        help="comma-separated engines to time ours with (`model bench --engine`): native, tract; "
        "the first is the row `ours` the ratios use, the others are rows `ours-ENGINE` (default native)",
    )
    ap.add_argument("--json-out", default=None, help="write all results as JSON here")
    args = ap.parse_args(argv)
    if not args.models and not args.synthetic:
        args = ap.parse_args(list(argv if argv is not None else sys.argv[1:]) + DEFAULT_ARGS)
    args.k = [int(v) for v in args.k.split(",") if v.strip()]
    args.ours_engines = [e.strip() for e in args.ours_engines.split(",") if e.strip()]
    if not args.ours_engines or any(e not in ("native", "tract") for e in args.ours_engines):
        ap.error(f"--ours-engines {','.join(args.ours_engines)}: expected native and/or tract")

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import onnxruntime as ort

    torch = None
    if args.with_torch:
        import torch as _torch

        torch = _torch
        torch.set_num_threads(1)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass

    tract = None
    if args.with_tract:
        import tract as _tract

        tract = _tract

    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "tract": tract.version() if tract is not None else None,
    }
    print(
        f"peers: {', '.join(f'{k} {v}' for k, v in versions.items() if v)}; "
        f"cpu affinity {affinity}; runs {args.runs} after {args.warmup} warm-up; K {args.k}"
    )
    if affinity is not None and len(affinity) > 1:
        print("warning: not pinned to one core (use scripts/bench_forecast_peers.sh or taskset -c 1)")
    try:
        pol = os.sched_getscheduler(0)
        names = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR"}
        print(f"scheduler: {names.get(pol, pol)} priority {os.sched_getparam(0).sched_priority}")
        _RT = pol in (os.SCHED_FIFO, os.SCHED_RR)
    except (AttributeError, OSError):
        pass
    try:
        print(f"load average: {os.getloadavg()}")
    except OSError:
        pass

    results = {"versions": versions, "affinity": affinity, "runs": args.runs, "warmup": args.warmup, "models": []}
    synthetic = {}
    for spec in args.synthetic:
        info = write_synthetic(spec, args.synthetic_dir, args.synthetic_seed, ort)
        synthetic[info["path"]] = info
    for path in list(synthetic) + args.models:
        res = bench_model(path, args, ort, torch, tract)
        if path in synthetic:
            res["synthetic"] = synthetic[path]
        results["models"].append(res)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
