#!/usr/bin/env bash
# The seed-paper reproduction study (docs/paper-reproduction.md), one command:
#
#   scripts/paper_study.sh [--quick] [OUT_DIR]
#
# Builds the release binary, runs `neurostimd paper-study` (full: about 13
# minutes on 2 cores; --quick: seconds), records the commit and the wall
# time beside the results, then draws the plots with matplotlib from a venv
# under target/ (created on first use; set PLOT=0 to skip the plots).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=()
if [ "${1:-}" = "--quick" ]; then
  quick=(--quick)
  shift
fi
out=${1:-target/paper-study${quick:+-quick}}

cargo build --release --locked --quiet
mkdir -p "$out"
{
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "command neurostimd paper-study ${quick[*]:-} --out $out"
  echo "started $(date -u +%FT%TZ) on $(nproc) cores"
} > "$out/provenance.txt"
start=$(date +%s)
./target/release/neurostimd paper-study "${quick[@]}" --out "$out"
echo "wall_seconds $(( $(date +%s) - start ))" >> "$out/provenance.txt"

if [ "${PLOT:-1}" != 0 ]; then
  venv=target/plot-venv
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check matplotlib
  fi
  "$venv/bin/python" scripts/plot_paper_study.py "$out"
fi
cat "$out/provenance.txt"
