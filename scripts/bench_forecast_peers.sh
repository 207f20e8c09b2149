#!/usr/bin/env bash
# Forecast latency: neurostimd vs. peers (onnxruntime, optionally PyTorch / tract).
#
#   scripts/bench_forecast_peers.sh MODEL.onnx [MODEL.onnx ...] [options]
#
# Options are passed to scripts/bench_forecast_peers.py (see --help there):
#   --k 1,8,32  --runs 2000  --warmup 200  --with-torch  --with-tract
#   --no-ours  --ours-bin PATH  --json-out FILE
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
# Build target/release/neurostimd first (cargo build --release) to get "ours".
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${PEERS_VENV:-target/peers-venv}"
CPU="${PEERS_CPU:-1}"

with_torch=0
with_tract=0
for a in "$@"; do
  case "$a" in
    --with-torch) with_torch=1 ;;
    --with-tract) with_tract=1 ;;
    -h|--help) ;;
  esac
done

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
