#!/usr/bin/env bash
# Training throughput: `neurostimd train` vs. PyTorch, one thread, same model,
# same batch, same sequence length, same number of windows.
#
#   scripts/bench_train_peers.sh [options]
#
# Options are passed to scripts/bench_train_peers.py (see --help there):
#   --hidden 32 --layers 1 --t-in 40 --t-out 20 --batch 64 --epochs 3
#   --windows 20000 --stride 1 --lr 3e-3 --clip-norm 1.0 --seed 1
#   --torch-variants torch,torch-native  --no-ours  --no-torch
#   --ours-bin PATH  --keep-tmp  --json-out FILE
#
# Creates (if missing) a venv in target/peers-venv and installs torch into it
# if it is not there yet (torch from PyPI is a ~5 GB CUDA build; only its CPU
# path is used). Then runs the bench pinned to one core with taskset.
#
# Environment: PEERS_VENV (venv directory, default target/peers-venv; e.g. an
# existing venv that already has torch), PEERS_CPU (core to pin to, default 1),
# PEERS_RT (if set, e.g. PEERS_RT=50, run with SCHED_FIFO at that priority via
# chrt, so that other work on the machine, such as a cargo build, does not
# preempt the timed epochs; needs root or CAP_SYS_NICE; the neurostimd child
# inherits the policy and the core).
# Builds target/release/neurostimd with `cargo build --release` if it is
# missing (not with --no-ours or --ours-bin).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${PEERS_VENV:-target/peers-venv}"
CPU="${PEERS_CPU:-1}"

want_ours=1
help=0
for a in "$@"; do
  case "$a" in
    --no-ours|--ours-bin|--ours-bin=*) want_ours=0 ;;
    -h|--help) help=1 ;;
  esac
done

if [ "$help" = 0 ] && [ "$want_ours" = 1 ] && [ ! -x target/release/neurostimd ]; then
  if command -v cargo >/dev/null 2>&1; then
    echo "building target/release/neurostimd (cargo build --release)" >&2
    cargo build --release
  else
    echo "error: target/release/neurostimd missing and cargo not found (use --no-ours or --ours-bin PATH)" >&2
    exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating venv $VENV" >&2
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "installing torch into $VENV (a ~5 GB CUDA build from PyPI)" >&2
  "$PY" -m pip install --quiet torch
fi

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
prefix=()
if [ -n "${PEERS_RT:-}" ]; then
  prefix+=(chrt -f "$PEERS_RT")
fi
if command -v taskset >/dev/null 2>&1; then
  prefix+=(taskset -c "$CPU")
else
  echo "warning: taskset not found; the .py still pins itself with sched_setaffinity" >&2
fi
exec ${prefix[@]+"${prefix[@]}"} "$PY" scripts/bench_train_peers.py --cpu "$CPU" "$@"
