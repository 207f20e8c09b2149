#!/usr/bin/env bash
# Forecast latency: neurostimd vs. peers (onnxruntime, optionally PyTorch / tract).
#
#   scripts/bench_forecast_peers.sh [MODEL.onnx ...] [--synthetic SPEC ...] [options]
#
# With no MODEL and no --synthetic it runs the reference comparison:
#   --synthetic 64x100x20 tests/fixtures/pytorch_lstm1_h16.onnx tests/fixtures/pytorch_lstm2_h8.onnx
# --synthetic HIDDENxT_INxT_OUT[xLAYERS] (repeatable) generates, without torch,
# a random-weight contract model with the graph PyTorch's exporter writes for
# that LSTM (64x100x20 = the DESIGN's 1-layer, hidden 64, t_in 100, t_out 20)
# into target/peer-models/NAME.{onnx,json} and benches it like a MODEL.
#
# Options are passed to scripts/bench_forecast_peers.py (see --help there):
#   --k 1,8,32  --runs 2000  --warmup 200  --with-torch  --with-tract
#   --no-ours  --ours-bin PATH  --json-out FILE
#   --synthetic SPEC  --synthetic-seed 1  --synthetic-dir target/peer-models
#
# Creates (if missing) a venv in target/peers-venv and installs numpy, onnx and
# onnxruntime into it; torch only with --with-torch (a ~5 GB CUDA build from
# PyPI), tract's Python bindings only with --with-tract. Then runs the bench
# pinned to one core with taskset.
#
# Environment: PEERS_VENV (venv directory, default target/peers-venv; e.g. an
# existing venv that already has torch), PEERS_CPU (core to pin to, default 1),
# PEERS_RT (if set, e.g. PEERS_RT=50, run with SCHED_FIFO at that priority via
# chrt, so that other work on the machine, such as a cargo build, does not
# preempt the timed runs; needs root or CAP_SYS_NICE. The .py then rests
# 100 ms after every 700 ms of work, outside the timed region, to stay clear
# of the kernel's real-time throttling; a `model bench` run longer than ~0.9 s
# can still be throttled for ~50 ms, visible in its max).
# Builds target/release/neurostimd with `cargo build --release` if it is
# missing (not with --no-ours or --ours-bin); without it "ours" is skipped.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${PEERS_VENV:-target/peers-venv}"
CPU="${PEERS_CPU:-1}"

with_torch=0
with_tract=0
want_ours=1
help=0
for a in "$@"; do
  case "$a" in
    --with-torch) with_torch=1 ;;
    --with-tract) with_tract=1 ;;
    --no-ours|--ours-bin|--ours-bin=*) want_ours=0 ;;
    -h|--help) help=1 ;;
  esac
done

if [ "$help" = 0 ] && [ "$want_ours" = 1 ] && [ ! -x target/release/neurostimd ]; then
  if command -v cargo >/dev/null 2>&1; then
    echo "building target/release/neurostimd (cargo build --release)" >&2
    cargo build --release
  else
    echo "warning: target/release/neurostimd missing and cargo not found: \"ours\" will be skipped" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating venv $VENV" >&2
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

need=()
"$PY" -c 'import numpy' 2>/dev/null || need+=(numpy)
"$PY" -c 'import onnx' 2>/dev/null || need+=(onnx)
"$PY" -c 'import onnxruntime' 2>/dev/null || need+=(onnxruntime)
if [ "$with_torch" = 1 ]; then
  "$PY" -c 'import torch' 2>/dev/null || need+=(torch)
fi
if [ "$with_tract" = 1 ]; then
  "$PY" -c 'import tract' 2>/dev/null || need+=(tract)
fi
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing into $VENV: ${need[*]}" >&2
  "$PY" -m pip install --quiet "${need[@]}"
fi

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
prefix=()
if [ -n "${PEERS_RT:-}" ]; then
  prefix+=(chrt -f "$PEERS_RT")
fi
if command -v taskset >/dev/null 2>&1; then
  prefix+=(taskset -c "$CPU")
else
  echo "warning: taskset not found, running unpinned" >&2
fi
exec ${prefix[@]+"${prefix[@]}"} "$PY" scripts/bench_forecast_peers.py "$@"
