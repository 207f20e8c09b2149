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
# existing venv that already has torch), PEERS_CPU (core to pin to, default 1).
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
if command -v taskset >/dev/null 2>&1; then
  exec taskset -c "$CPU" "$PY" scripts/bench_forecast_peers.py "$@"
else
  echo "warning: taskset not found, running unpinned" >&2
  exec "$PY" scripts/bench_forecast_peers.py "$@"
fi
