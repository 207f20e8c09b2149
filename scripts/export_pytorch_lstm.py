#!/usr/bin/env python3
"""Export a PyTorch LSTM forecaster to the neurostimd model contract (DESIGN §3).

Architecture (Plaster & Kumar 2019, "Data-Driven Predictive Modeling of
Neuronal Dynamics using LSTM"):

    lstm = nn.LSTM(input_size=3, hidden_size=H, num_layers=L, batch_first=True)
    head = nn.Linear(H, 1)

The LSTM runs over the whole input sequence (zero initial state); the single
linear head is applied to each of the LAST t_out hidden states of the top layer.

--head picks one of the heads users commonly export (all run natively by
neurostimd, docs/model-contract.md "Accepted heads"):

  linear     Linear(H, 1) on each of the last t_out steps (the default above)
  mlp        Linear(H, M) -> ACT -> Linear(M, 1) on each of the last t_out steps
  last       Linear(H, t_out) on the last step's hidden state, all outputs at once
  last_mlp   Linear(H, M) -> ACT -> Linear(M, t_out) on the last step's state

(M = --head-hidden, ACT = --activation: relu, tanh, sigmoid or gelu; gelu is
exported at opset 17 as an Erf subgraph, which neurostimd runs with tract.)
--last-state out|h_n says how the last state is taken: out[:, -1, :] or
h_n[-1] (the same numbers, different ONNX graphs).

Input  ``x``: float32 [batch, t_in + t_out, 3], features (V, I, is_future).
  * steps 0 .. t_in-1 (observed):   Vn = (V - v_mean) / v_std (observed V),
                                    In = (I - i_mean) / i_std (applied current),
                                    flag 0.
  * steps t_in .. t_in+t_out-1 (future): V = 0 exactly,
                                    In = normalised candidate stimulation plan,
                                    flag 1.
Output ``y``: float32 [batch, t_out], normalised V (V = y * v_std + v_mean).

Precise definition of the output order. Let

    s = head(lstm_out[:, t_in:, :]).squeeze(-1)      # shape [B, t_out]

so s[:, j] is produced at sequence position t_in + j.

  * order ``forward``:  y = s, and y[:, j] is the forecast of V at horizon
    step j + 1 (j = 0 .. t_out-1).
  * order ``reversed`` (as in the paper): the model is trained so that s[:, j]
    predicts horizon step t_out - j (the last hidden state predicts the nearest
    step), and the exported output is y = s (NOT flipped): y[:, j] is the
    forecast for horizon step t_out - j. A consumer flips a reversed output to
    forward order (forward[:, j] = y[:, t_out - 1 - j]).

The ONNX graph is identical for both orders; ``order`` only records how the
weights were trained and is written to the model card.

Outputs written to --out-dir:
  NAME.onnx            the contract model (legacy exporter, dynamo=False, opset 17)
  NAME.json            the model card (with sha256 of NAME.onnx)
  NAME.input.npy       float32 [4, t_in + t_out, 3] realistic contract input
  NAME.expected.npy    float32 [4, t_out] PyTorch output on that input (raw
                       contract tensor: normalised, in the model's own order)

Weights are random (seeded, PyTorch default init) unless --state-dict is given.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys

import numpy as np
import torch
import torch.nn as nn

N_FEATURES = 3
BUNDLE_BATCH = 4


HEADS = ("linear", "mlp", "last", "last_mlp")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


class ContractLSTM(nn.Module):
    """nn.LSTM over the whole sequence + a head (see --head): per step on the
    last t_out states, or on the last state producing all t_out at once."""

    def __init__(
        self,
        layers: int,
        hidden: int,
        t_in: int,
        t_out: int,
        head: str = "linear",
        head_hidden: int = 16,
        activation: str = "relu",
        last_state: str = "out",
    ):
        super().__init__()
        self.t_in = t_in
        self.t_out = t_out
        self.kind = head
        self.last_state = last_state
        self.lstm = nn.LSTM(
            input_size=N_FEATURES,
            hidden_size=hidden,
            num_layers=layers,
            batch_first=True,
        )
        width = 1 if head in ("linear", "mlp") else t_out
        if head in ("linear", "last"):
            self.head = nn.Linear(hidden, width)
        else:
            self.head = nn.Sequential(
                nn.Linear(hidden, head_hidden), ACTIVATIONS[activation](), nn.Linear(head_hidden, width)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, (h_n, _) = self.lstm(x)
        if self.kind in ("linear", "mlp"):
            return self.head(out[:, self.t_in :, :]).squeeze(-1)
        last = h_n[-1] if self.last_state == "h_n" else out[:, -1, :]
        return self.head(last)


def load_state_dict(model: ContractLSTM, path: str) -> None:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    renamed = {}
    for k, v in sd.items():
        k2 = k
        if k2.startswith("module."):
            k2 = k2[len("module.") :]
        for prefix in ("linear.", "fc.", "out.", "dense.", "output."):
            if k2.startswith(prefix):
                k2 = "head." + k2[len(prefix) :]
        renamed[k2] = v
    model.load_state_dict(renamed, strict=True)


# --------------------------------------------------------------------------
# Realistic contract input
# --------------------------------------------------------------------------


def _observed_window(rng: np.random.Generator, t_in: int, dt_ms: float, spikes: int):
    """Observed V (mV) and applied I (uA/cm^2) for t_in steps."""
    t = np.arange(t_in) * dt_ms
    v = -65.0 + rng.normal(0.0, 1.5, t_in) + 4.0 * np.sin(2 * np.pi * t / (t_in * dt_ms))
    i = np.zeros(t_in)
    # a few current pulses of a few uA/cm^2
    n_pulses = int(rng.integers(1, 4))
    for _ in range(n_pulses):
        start = int(rng.integers(0, max(1, t_in - 4)))
        width = int(rng.integers(2, max(3, t_in // 4)))
        i[start : start + width] += rng.uniform(-3.0, 6.0)
    # action potentials: ~1 ms upstroke to +30 mV, AHP to -75 mV
    for _ in range(spikes):
        p = int(rng.integers(2, max(3, t_in - 4)))
        shape = [-50.0, 30.0, -20.0, -75.0, -70.0]
        for k, val in enumerate(shape):
            if p + k < t_in:
                v[p + k] = val + rng.normal(0.0, 1.0)
    return v, i


def _plan(rng: np.random.Generator, t_out: int):
    """Candidate stimulation plan (uA/cm^2) for t_out future steps."""
    plan = np.zeros(t_out)
    kind = int(rng.integers(0, 3))
    if kind == 0:  # constant step
        plan[:] = rng.uniform(-4.0, 8.0)
    elif kind == 1:  # pulse
        s = int(rng.integers(0, max(1, t_out - 2)))
        w = int(rng.integers(1, max(2, t_out // 2)))
        plan[s : s + w] = rng.uniform(2.0, 10.0)
    else:  # ramp
        plan[:] = np.linspace(0.0, rng.uniform(-5.0, 8.0), t_out)
    return plan


def contract_row(v_obs, i_obs, plan, norm) -> np.ndarray:
    t_in, t_out = len(v_obs), len(plan)
    x = np.zeros((t_in + t_out, N_FEATURES), dtype=np.float64)
    x[:t_in, 0] = (v_obs - norm["v_mean"]) / norm["v_std"]
    x[:t_in, 1] = (i_obs - norm["i_mean"]) / norm["i_std"]
    x[:t_in, 2] = 0.0
    x[t_in:, 0] = 0.0
    x[t_in:, 1] = (plan - norm["i_mean"]) / norm["i_std"]
    x[t_in:, 2] = 1.0
    return x.astype(np.float32)


def make_bundle_input(seed: int, t_in: int, t_out: int, dt_ms: float, norm) -> np.ndarray:
    """[4, t_in+t_out, 3]: rows 0 and 1 share the observed window (controller
    case: one window, two candidate plans); rows 2 and 3 have their own
    windows (row 2 without spikes, row 3 with two spikes)."""
    rng = np.random.default_rng(seed + 1000)
    v0, i0 = _observed_window(rng, t_in, dt_ms, spikes=1)
    v2, i2 = _observed_window(rng, t_in, dt_ms, spikes=0)
    v3, i3 = _observed_window(rng, t_in, dt_ms, spikes=2)
    rows = [
        contract_row(v0, i0, _plan(rng, t_out), norm),
        contract_row(v0, i0, _plan(rng, t_out), norm),
        contract_row(v2, i2, _plan(rng, t_out), norm),
        contract_row(v3, i3, _plan(rng, t_out), norm),
    ]
    x = np.stack(rows).astype(np.float32)
    assert x.shape == (BUNDLE_BATCH, t_in + t_out, N_FEATURES)
    assert np.all(x[:, t_in:, 0] == 0.0) and np.all(x[:, t_in:, 2] == 1.0)
    assert np.all(x[:, :t_in, 2] == 0.0)
    return x


# --------------------------------------------------------------------------


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--head", choices=HEADS, default="linear", help="output head (see the module doc)")
    ap.add_argument("--head-hidden", type=int, default=16, help="hidden units of an mlp / last_mlp head")
    ap.add_argument("--activation", choices=sorted(ACTIVATIONS), default="relu", help="of an mlp / last_mlp head")
    ap.add_argument("--last-state", choices=["out", "h_n"], default="out", help="last / last_mlp: out[:, -1, :] or h_n[-1]")
    ap.add_argument("--t-in", type=int, default=40)
    ap.add_argument("--t-out", type=int, default=20)
    ap.add_argument("--dt-ms", type=float, default=0.5)
    ap.add_argument("--order", choices=["reversed", "forward"], default="reversed")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--v-mean", type=float, default=-65.0)
    ap.add_argument("--v-std", type=float, default=10.0)
    ap.add_argument("--i-mean", type=float, default=0.0)
    ap.add_argument("--i-std", type=float, default=1.0)
    ap.add_argument("--state-dict", default=None, help="load trained weights (torch state dict)")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--tol", type=float, default=1e-5, help="max |onnxruntime - torch|")
    ap.add_argument("--no-bundle", action="store_true", help="skip NAME.input.npy / NAME.expected.npy")
    args = ap.parse_args(argv)

    if args.layers < 1 or args.hidden < 1 or args.t_in < 1 or args.t_out < 1:
        ap.error("layers, hidden, t-in, t-out must be >= 1")
    if args.v_std <= 0 or args.i_std <= 0:
        ap.error("v-std and i-std must be > 0")

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    model = ContractLSTM(
        args.layers,
        args.hidden,
        args.t_in,
        args.t_out,
        head=args.head,
        head_hidden=args.head_hidden,
        activation=args.activation,
        last_state=args.last_state,
    )
    trained = False
    if args.state_dict:
        load_state_dict(model, args.state_dict)
        trained = True
    model.eval()

    norm = {
        "v_mean": args.v_mean,
        "v_std": args.v_std,
        "i_mean": args.i_mean,
        "i_std": args.i_std,
    }
    seq = args.t_in + args.t_out
    x_np = make_bundle_input(args.seed, args.t_in, args.t_out, args.dt_ms, norm)
    x = torch.from_numpy(x_np)

    os.makedirs(args.out_dir, exist_ok=True)
    onnx_path = os.path.join(args.out_dir, args.name + ".onnx")
    card_path = os.path.join(args.out_dir, args.name + ".json")

    with torch.no_grad():
        expected = model(x).numpy().astype(np.float32)
    assert expected.shape == (BUNDLE_BATCH, args.t_out)

    # Trace with batch 2 so that nothing gets specialised to batch 1.
    with torch.no_grad():
        torch.onnx.export(
            model,
            (x[:2].clone(),),
            onnx_path,
            dynamo=False,
            opset_version=args.opset,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            do_constant_folding=True,
        )

    import onnx
    import onnxruntime as ort

    m = onnx.load(onnx_path)
    onnx.checker.check_model(m, full_check=True)

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    worst = 0.0
    rng = np.random.default_rng(args.seed + 2000)
    checks = [x_np, x_np[:1], x_np[1:2]]
    for b in (3, 17):
        checks.append(rng.normal(0.0, 1.0, (b, seq, N_FEATURES)).astype(np.float32))
    for xc in checks:
        (y_ort,) = sess.run(["y"], {"x": xc})
        with torch.no_grad():
            y_pt = model(torch.from_numpy(xc)).numpy()
        if y_ort.shape != y_pt.shape:
            raise SystemExit(f"shape mismatch: ort {y_ort.shape} vs torch {y_pt.shape}")
        worst = max(worst, float(np.max(np.abs(y_ort - y_pt))))
    if worst > args.tol:
        raise SystemExit(f"onnxruntime differs from torch by {worst:g} > {args.tol:g}")

    if not args.no_bundle:
        np.save(os.path.join(args.out_dir, args.name + ".input.npy"), x_np)
        np.save(os.path.join(args.out_dir, args.name + ".expected.npy"), expected)

    command = shlex.join(["python3", "scripts/export_pytorch_lstm.py"] + list(sys.argv[1:] if argv is None else argv))
    card = {
        "format": "neurostimd-model-card",
        "format_version": 1,
        "name": args.name,
        "dt_ms": args.dt_ms,
        "t_in": args.t_in,
        "t_out": args.t_out,
        "input": {"name": "x", "features": ["V", "I", "is_future"]},
        "output": {"name": "y", "order": args.order},
        "normalization": norm,
        "architecture": {
            "cell": "lstm",
            "layers": args.layers,
            "hidden": args.hidden,
            "head": args.head,
        },
        "provenance": {
            "tool": "scripts/export_pytorch_lstm.py",
            "command": command,
            "seed": args.seed,
            "trained": trained,
            "torch_version": torch.__version__,
            "opset": args.opset,
            "exporter": "legacy (dynamo=False)",
            "head": str(model.head),
            **({"last_state": args.last_state} if args.head in ("last", "last_mlp") else {}),
            "note": (
                "trained weights loaded from a state dict"
                if trained
                else "random weights: interoperability fixture, not a useful forecaster"
            ),
        },
        "validation": None,
        "onnx_sha256": sha256_file(onnx_path),
        "parent": None,
    }
    with open(card_path, "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")

    print(
        f"wrote {onnx_path} ({os.path.getsize(onnx_path)} B), {card_path}"
        + ("" if args.no_bundle else ", .input.npy, .expected.npy")
        + f"; max |ort - torch| = {worst:.3g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
