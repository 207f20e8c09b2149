#!/usr/bin/env bash
# Does the paper study's finding "forward output order beats reversed over
# the horizon" hold at the shipped model's architecture? Trains the shipped
# configuration (config/train-ca1.toml: 1 x 48, 80 ms window, t_out 20) in
# both orders, 2 seeds, with a reduced budget (30 s per source, stride 4,
# 20 epochs), two trainings at a time, then scores each with
# `neurostimd model eval --sim PRESET` on fresh data and prints a summary.
#
#   scripts/paper_order_check.sh [OUT_DIR]      # ~8 min on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/paper-order}
mkdir -p "$out"
cargo build --release --locked --quiet
bin=./target/release/neurostimd

train() { # order seed
  local cfg="$out/$1-s$2.toml"
  sed -e "s/^order = .*/order = \"$1\"/" -e "s/^seed = .*/seed = $2/" \
      -e 's/^epochs = .*/epochs = 20/' -e 's/^duration = .*/duration = "30 s"/' \
      -e 's/^stride = .*/stride = 4/' config/train-ca1.toml > "$cfg"
  "$bin" train --config "$cfg" --out "$out/$1-s$2.onnx" --json > "$out/$1-s$2.train.json" 2> "$out/$1-s$2.log"
}
for seed in 1 2; do
  train reversed "$seed" &
  train forward "$seed" &
  wait
done
for m in "$out"/*.onnx; do
  for preset in regular bursting; do
    "$bin" model eval "$m" --sim "$preset" --duration 20 --json > "${m%.onnx}.$preset.eval.json" &
  done
  wait
done
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
print("| model | data | mean RMSE 1-5 (mV) | mean RMSE 1-20 (mV) | step 20 | F1 | persistence 1-20 | AR 1-20 |")
print("|---|---|---|---|---|---|---|---|")
for f in sorted(d.glob("*.eval.json")):
    e = json.loads(f.read_text())
    m = e["model"]["rmse_mv"]
    p = e["persistence"]["rmse_mv"]
    a = e["ar"]["rmse_mv"]
    mean = lambda v, n: sum(v[:n]) / n
    name, preset = f.name.split(".")[:2]
    print(f"| {name} | {preset} | {mean(m, 5):.3f} | {mean(m, 20):.3f} | {m[19]:.3f} | {e['model']['spikes']['f1']:.3f} | {mean(p, 20):.3f} | {mean(a, 20):.3f} |")
for f in sorted(d.glob("*.train.json")):
    t = json.loads(f.read_text())
    print(f"{f.name}: {len(t['epochs'])} epochs, best val {min(x['val_loss'] for x in t['epochs']):.4f}, {sum(x['seconds'] for x in t['epochs']):.0f} s training")
PY
