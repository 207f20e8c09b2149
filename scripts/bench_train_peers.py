#!/usr/bin/env python3
"""Training throughput: `neurostimd train` vs. PyTorch, one thread, same model.

Model (both sides): nn.LSTM(3, H, num_layers=L, batch_first=True) over
t_in + t_out steps, then one nn.Linear(H, 1) applied to each of the last t_out
hidden states -> [batch, t_out]; MSE loss; Adam (lr --lr, betas 0.9/0.999,
eps 1e-8); gradient clipping by global norm (--clip-norm, 0 = off); shuffled
mini-batches of --batch windows; one thread; pinned to one core (--cpu).

  ours   `neurostimd train --config TMP/train.toml --out TMP/m.onnx --json`
         with a temporary config (in a temp dir) that sets [train] hidden,
         layers, t_in, t_out, dt 0.5 ms, batch, epochs, learning_rate,
         clip_norm, seed and a patience larger than --epochs (no early stop),
         and [train.data] presets ["regular"], regime_change false,
         train_fraction 0.7, val_fraction 0.15, --stride, and a duration
         chosen so that the number of training windows is --windows (or just
         above). The actual count is read from the outcome's `train_windows`.
         Per-epoch figures are the outcome's `epochs[].seconds` and
         `windows_per_second`: the training pass only (shuffle, gathering the
         mini-batches, forward, backward, clipping, Adam over all training
         windows); data simulation, the validation loss after each epoch, the
         test metrics and the ONNX export are outside it.
  torch  the same architecture in PyTorch, torch.set_num_threads(1) and
         set_num_interop_threads(1), on random contract-shaped inputs
         [N, t_in + t_out, 3] (N = ours' train_windows) and targets [N, t_out].
         Each epoch is timed with perf_counter around: randperm, then per
         mini-batch X[idx], Y[idx], zero_grad, forward, mse_loss, backward,
         clip_grad_norm_, Adam step, loss.item(). With the default
         --torch-variants both PyTorch paths are timed: `torch` (as shipped: on
         x86 CPUs its LSTM runs through oneDNN, aten::mkldnn_rnn_layer and its
         backward, when torch.backends.mkldnn is available) and
         `torch-native` (torch.backends.mkldnn.enabled = False: aten's own
         LSTM: the input projection as one GEMM, then per step an addmm and
         the gate ops, all recorded by autograd).

For each: the median windows/s and seconds over the epochs after the first
(the first includes warm-up: allocation, oneDNN primitive creation), and the
ratio ours / torch (> 1 means ours is faster). Run it pinned and, on a busy
machine, real-time: scripts/bench_train_peers.sh does `taskset -c 1` and, with
PEERS_RT=50, `chrt -f 50` (the neurostimd child inherits both).

Needs torch (and nothing else from the venv).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# [plant.sim] sample period of the built-in config; the script does not
# override it, and dt must be a whole number of sample periods.
DT_MS = 0.5
TRAIN_FRACTION = 0.7
VAL_FRACTION = 0.15


# --------------------------------------------------------------------------
# Sizing the data
# --------------------------------------------------------------------------


def train_windows_for(steps: int, t_in: int, t_out: int, stride: int) -> int:
    """Training windows of one source of `steps` model steps, as
    src/train/dataset.rs computes them (split_by_time, then Windows::cut)."""
    n = int(steps * TRAIN_FRACTION)  # `(n as f64 * train) as usize`
    span = t_in + t_out
    if n < span:
        return 0
    return (n - span) // stride + 1


def steps_for_windows(target: int, t_in: int, t_out: int, stride: int) -> int:
    """Fewest model steps giving at least `target` training windows."""
    span = t_in + t_out
    steps = max(1, math.floor(((target - 1) * stride + span) / TRAIN_FRACTION) - 2)
    while train_windows_for(steps, t_in, t_out, stride) < target:
        steps += 1
    return steps


def write_config(path: str, args, steps: int, epochs: int) -> float:
    duration_ms = steps * DT_MS
    text = f"""# Written by scripts/bench_train_peers.py (temporary).
[train]
layers = {args.layers}
hidden = {args.hidden}
t_in = {args.t_in}
t_out = {args.t_out}
dt = "{DT_MS} ms"
epochs = {epochs}
batch = {args.batch}
learning_rate = {args.lr!r}
clip_norm = {args.clip_norm!r}
patience = {epochs + 1000}
seed = {args.seed}

[train.data]
presets = ["regular"]
regime_change = false
duration = "{duration_ms!r} ms"
stride = {args.stride}
train_fraction = {TRAIN_FRACTION}
val_fraction = {VAL_FRACTION}
"""
    with open(path, "w") as f:
        f.write(text)
    return duration_ms


# --------------------------------------------------------------------------
# Ours
# --------------------------------------------------------------------------


def run_ours(args, tmp: str) -> dict:
    steps = steps_for_windows(args.windows, args.t_in, args.t_out, args.stride)
    cfg = os.path.join(tmp, "train.toml")
    duration_ms = write_config(cfg, args, steps, args.epochs)
    out = os.path.join(tmp, "m.onnx")
    cmd = [args.ours_bin, "train", "--config", cfg, "--out", out, "--json"]
    if not args.no_pin and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(args.cpu)] + cmd
    print(f"ours: {' '.join(cmd)}")
    print(
        f"ours: data 1 source (regular), {duration_ms:g} ms at dt {DT_MS} ms = {steps} steps, stride {args.stride} "
        f"-> expecting {train_windows_for(steps, args.t_in, args.t_out, args.stride)} training windows"
    )
    sys.stdout.flush()
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=args.ours_timeout)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"neurostimd train failed with exit code {p.returncode}")
    outcome = json.loads(p.stdout)
    epochs = outcome["epochs"]
    n = outcome["train_windows"]
    if len(epochs) != args.epochs:
        print(f"warning: ours ran {len(epochs)} epochs, not {args.epochs} (early stop?)")
    # Consistency: windows_per_second must be train_windows / seconds.
    worst = max(abs(e["windows_per_second"] * e["seconds"] - n) / n for e in epochs)
    if worst > 1e-6:
        print(f"warning: ours' windows_per_second * seconds differs from train_windows by {worst:.1e} (relative)")
    trained = sum(e["seconds"] for e in epochs)
    with open(cfg) as f:
        cfg_text = f.read()
    return {
        "impl": "ours",
        "command": cmd,
        "config": cfg_text,
        "duration_ms": duration_ms,
        "steps": steps,
        "train_windows": n,
        "parameters": outcome.get("parameters"),
        "epochs": [
            {
                "epoch": e["epoch"],
                "seconds": e["seconds"],
                "windows_per_second": e["windows_per_second"],
                "train_loss": e["train_loss"],
                "val_loss": e["val_loss"],
            }
            for e in epochs
        ],
        "process_wall_seconds": wall,
        "outside_epochs_seconds": wall - trained,
        "export_difference": outcome.get("export_difference"),
    }


# --------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------


def run_torch(torch, args, n: int, variant: str) -> dict:
    nn = torch.nn
    t_in, t_out = args.t_in, args.t_out
    steps = t_in + t_out

    class Forecaster(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(3, args.hidden, num_layers=args.layers, batch_first=True)
            self.head = nn.Linear(args.hidden, 1)

        def forward(self, x):
            h, _ = self.lstm(x)
            return self.head(h[:, -t_out:, :]).squeeze(-1)

    mkldnn_before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = variant == "torch"
    try:
        torch.manual_seed(args.seed)
        model = Forecaster()
        model.train()
        params = list(model.parameters())
        opt = torch.optim.Adam(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
        # Contract-shaped random data (normalised units): observed steps carry
        # (V, I, 0), future steps (0, I, 1).
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn(n, steps, 3, generator=g)
        x[:, t_in:, 0] = 0.0
        x[:, :t_in, 2] = 0.0
        x[:, t_in:, 2] = 1.0
        y = torch.randn(n, t_out, generator=g)
        mse = nn.functional.mse_loss
        clip = args.clip_norm
        batch = args.batch
        epochs = []
        for epoch in range(1, args.epochs + 1):
            t0 = time.perf_counter()
            order = torch.randperm(n, generator=g)
            total, batches = 0.0, 0
            for start in range(0, n, batch):
                idx = order[start : start + batch]
                xb, yb = x[idx], y[idx]
                opt.zero_grad(set_to_none=True)
                loss = mse(model(xb), yb)
                loss.backward()
                if clip > 0:
                    nn.utils.clip_grad_norm_(params, clip)
                opt.step()
                total += loss.item()
                batches += 1
            secs = time.perf_counter() - t0
            epochs.append(
                {
                    "epoch": epoch,
                    "seconds": secs,
                    "windows_per_second": n / secs,
                    "train_loss": total / max(1, batches),
                }
            )
            print(f"{variant}: epoch {epoch}: {secs:.3f} s, {n / secs:.0f} windows/s")
            sys.stdout.flush()
        # Which LSTM kernel autograd recorded (walk the graph of one batch).
        out = model(x[:batch])
        seen, stack, kinds = set(), [out.grad_fn], set()
        while stack:
            fn = stack.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            kinds.add(type(fn).__name__)
            stack.extend(f for f, _ in fn.next_functions)
        if any("Mkldnn" in k for k in kinds):
            lstm_path = "oneDNN (aten::mkldnn_rnn_layer + MkldnnRnnLayerBackward0)"
        else:
            lstm_path = "aten native (per-step addmm + gate ops, each step's ops recorded by autograd)"
        del out
        opt.zero_grad(set_to_none=True)
    finally:
        torch.backends.mkldnn.enabled = mkldnn_before
    return {
        "impl": variant,
        "mkldnn_enabled": variant == "torch",
        "lstm_path": lstm_path,
        "train_windows": n,
        "parameters": sum(p.numel() for p in params),
        "epochs": epochs,
    }


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def summarize(res: dict) -> None:
    eps = res["epochs"]
    later = eps[1:] if len(eps) > 1 else eps
    res["median_windows_per_second"] = statistics.median(e["windows_per_second"] for e in later)
    res["median_seconds"] = statistics.median(e["seconds"] for e in later)
    res["first_epoch_windows_per_second"] = eps[0]["windows_per_second"]
    res["epochs_in_median"] = [e["epoch"] for e in later]


def versions_of(args, torch) -> dict:
    v = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_mkldnn_available": bool(torch.backends.mkldnn.is_available()),
        "torch_cpu_capability": None,
        "neurostimd": None,
        "neurostimd_bin": os.path.abspath(args.ours_bin) if not args.no_ours else None,
        "neurostimd_bin_mtime": None,
        "neurostimd_bin_sha256": None,
        "repo_head": None,
        "cpu": None,
        "kernel": platform.release(),
    }
    try:
        v["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:
        pass
    if not args.no_ours and os.path.exists(args.ours_bin):
        try:
            v["neurostimd"] = subprocess.run(
                [args.ours_bin, "--version"], stdout=subprocess.PIPE, text=True, timeout=30
            ).stdout.strip()
        except Exception:
            pass
        st = os.stat(args.ours_bin)
        v["neurostimd_bin_mtime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime))
        h = hashlib.sha256()
        with open(args.ours_bin, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        v["neurostimd_bin_sha256"] = h.hexdigest()
    try:
        head = subprocess.run(
            ["git", "-C", REPO, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        ).stdout.strip()
        v["repo_head"] = head + ("-dirty" if dirty else "") if head else None
    except Exception:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    v["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--t-in", type=int, default=40)
    ap.add_argument("--t-out", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per implementation; the first is not in the median (default 3)")
    ap.add_argument("--windows", type=int, default=20000, help="target number of training windows (default 20000)")
    ap.add_argument("--stride", type=int, default=1, help="[train.data] stride for ours (default 1: least simulation)")
    ap.add_argument("--lr", type=float, default=3e-3, help="Adam step size, both sides (default 3e-3)")
    ap.add_argument("--clip-norm", type=float, default=1.0, help="global-norm clipping, both sides; 0 = off (default 1.0)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--torch-variants",
        default="torch,torch-native",
        help="comma-separated: torch (as shipped, oneDNN LSTM) and/or torch-native (mkldnn disabled) (default both)",
    )
    ap.add_argument(
        "--cpu",
        type=int,
        default=int(os.environ.get("PEERS_CPU", "1")),
        help="core to pin this process (torch) and neurostimd to (default $PEERS_CPU or 1)",
    )
    ap.add_argument("--no-pin", action="store_true", help="do not pin anything (numbers not for quoting)")
    ap.add_argument("--ours-bin", default=os.path.join(REPO, "target", "release", "neurostimd"))
    ap.add_argument("--ours-timeout", type=float, default=3600.0)
    ap.add_argument("--no-ours", action="store_true", help="PyTorch only (N = --windows)")
    ap.add_argument("--no-torch", action="store_true", help="ours only")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (config, model, card)")
    ap.add_argument("--json-out", default=None, help="write all results as JSON here")
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.windows < 1 or args.batch < 1 or args.stride < 1:
        ap.error("--epochs, --windows, --batch and --stride must be >= 1")
    variants = [v.strip() for v in args.torch_variants.split(",") if v.strip()]
    for v in variants:
        if v not in ("torch", "torch-native"):
            ap.error(f"unknown torch variant {v!r} (torch, torch-native)")
    if args.no_torch:
        variants = []

    # Pin before torch creates its thread pools; the neurostimd child inherits
    # the mask (and is also started under taskset -c CPU).
    if not args.no_pin:
        try:
            os.sched_setaffinity(0, {args.cpu})
        except (AttributeError, OSError) as e:
            print(f"warning: could not pin to core {args.cpu}: {e}")
    else:
        args.cpu = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

    if not args.no_ours and not os.access(args.ours_bin, os.X_OK):
        raise SystemExit(f"{args.ours_bin} is missing (cargo build --release, or --ours-bin PATH, or --no-ours)")

    versions = versions_of(args, torch)
    affinity = sorted(os.sched_getaffinity(0))
    print(
        f"versions: python {versions['python']}, torch {versions['torch']} "
        f"(mkldnn available {versions['torch_mkldnn_available']}, cpu capability {versions['torch_cpu_capability']}, "
        f"threads {torch.get_num_threads()}/{torch.get_num_interop_threads()}), "
        f"{versions['neurostimd']} ({versions['neurostimd_bin']}, built {versions['neurostimd_bin_mtime']}), "
        f"repo {versions['repo_head']}"
    )
    print(f"cpu: {versions['cpu']}; kernel {versions['kernel']}; affinity {affinity}")
    sched = None
    try:
        pol = os.sched_getscheduler(0)
        names = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR"}
        sched = f"{names.get(pol, pol)} priority {os.sched_getparam(0).sched_priority}"
        print(f"scheduler: {sched}")
    except (AttributeError, OSError):
        pass
    try:
        print(f"load average: {os.getloadavg()}")
    except OSError:
        pass
    print(
        f"model: LSTM(3, {args.hidden}, layers {args.layers}) + Linear({args.hidden}, 1) on the last {args.t_out} of "
        f"{args.t_in} + {args.t_out} steps; batch {args.batch}; Adam lr {args.lr:g}; clip {args.clip_norm:g}; "
        f"{args.epochs} epochs (median over epochs 2..{args.epochs})"
    )
    sys.stdout.flush()

    results = {
        "versions": versions,
        "affinity": affinity,
        "scheduler": sched,
        "settings": {
            k: getattr(args, k)
            for k in ("hidden", "layers", "t_in", "t_out", "batch", "epochs", "windows", "stride", "lr", "clip_norm", "seed")
        },
        "impls": [],
    }

    n = args.windows
    tmp = tempfile.mkdtemp(prefix="bench_train_peers.")
    try:
        if not args.no_ours:
            ours = run_ours(args, tmp)
            n = ours["train_windows"]
            summarize(ours)
            results["impls"].append(ours)
            for e in ours["epochs"]:
                print(f"ours: epoch {e['epoch']}: {e['seconds']:.3f} s, {e['windows_per_second']:.0f} windows/s")
            print(
                f"ours: {n} training windows; process wall {ours['process_wall_seconds']:.2f} s, of which "
                f"{ours['outside_epochs_seconds']:.2f} s outside the timed epochs (simulation, validation, test metrics, export)"
            )
            sys.stdout.flush()
    finally:
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    for v in variants:
        r = run_torch(torch, args, n, v)
        summarize(r)
        results["impls"].append(r)
        print(f"{v}: LSTM path {r['lstm_path']}")
        sys.stdout.flush()

    # Table.
    impls = results["impls"]
    ours = next((r for r in impls if r["impl"] == "ours"), None)
    print()
    print(
        f"training throughput, H {args.hidden}, L {args.layers}, t_in {args.t_in}, t_out {args.t_out}, "
        f"batch {args.batch}, {n} windows, 1 thread, core {args.cpu}"
    )
    hdr = f"{'impl':<14} {'params':>7} {'windows/s':>11} {'s/epoch':>9} {'1st epoch w/s':>14} {'ours/impl':>10}"
    print(hdr)
    print("-" * len(hdr))
    for r in impls:
        ratio = ""
        if ours is not None and r is not ours:
            r["ratio_ours_over_this"] = ours["median_windows_per_second"] / r["median_windows_per_second"]
            ratio = f"{r['ratio_ours_over_this']:.2f}"
        print(
            f"{r['impl']:<14} {r['parameters']:>7} {r['median_windows_per_second']:>11.0f} {r['median_seconds']:>9.3f} "
            f"{r['first_epoch_windows_per_second']:>14.0f} {ratio:>10}"
        )
    print("windows/s and s/epoch: medians over the epochs after the first; ours/impl > 1 means ours is faster")
    if ours is not None:
        for r in impls:
            if r is not ours and r["parameters"] != ours["parameters"]:
                print(f"warning: parameter counts differ: ours {ours['parameters']}, {r['impl']} {r['parameters']}")

    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
