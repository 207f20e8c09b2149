#!/usr/bin/env python3
"""Census of randomised cells: how many rest, fire regularly or burst.

Runs `neurostimd simulate --json` for each cell seed over a preset (no
stimulation, noise-free), drops the first second (the transient from the
initial state) and classifies the rest of the spike train:

  silent    no spike after the first second
  regular   fewer than half of the spikes in bursts (ISI < 10 ms)
  bursting  at least half of the spikes in bursts

Usage:
  scripts/cell_census.py [--bin target/release/neurostimd] --preset bursting \
      --seeds 1-100 [--family ca1] [--duration-ms 6000] [--set KEY=VALUE ...]
      [--table]   # one row per cell (markdown) as well as the totals
"""
import argparse
import json
import subprocess
import sys


def seeds_of(spec):
    out = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def classify(spikes, t0, t1, max_isi=10.0):
    s = [t for t in spikes if t >= t0]
    n = len(s)
    if n == 0:
        return "silent", 0.0, 0.0
    in_bursts = 0
    i = 0
    while i < n:
        j = i
        while j + 1 < n and s[j + 1] - s[j] < max_isi:
            j += 1
        if j > i:
            in_bursts += j - i + 1
        i = j + 1
    frac = in_bursts / n
    rate = n / ((t1 - t0) / 1000.0)
    return ("bursting" if 2 * in_bursts >= n else "regular"), rate, frac


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/neurostimd")
    ap.add_argument("--family", default="ca1")
    ap.add_argument("--preset", required=True)
    ap.add_argument("--seeds", required=True)
    ap.add_argument("--duration-ms", type=float, default=6000.0)
    ap.add_argument("--skip-ms", type=float, default=1000.0)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--table", action="store_true")
    a = ap.parse_args()
    counts = {"silent": 0, "regular": 0, "bursting": 0}
    rows = []
    for seed in seeds_of(a.seeds):
        cmd = [a.bin, "simulate", "--json", "--family", a.family, "--preset", a.preset,
               "--cell-seed", str(seed), "--duration-ms", str(a.duration_ms)]
        for kv in a.set:
            cmd += ["--set", kv]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"seed {seed}: {r.stderr.strip()}", file=sys.stderr)
            sys.exit(1)
        rep = json.loads(r.stdout)
        kind, rate, frac = classify(rep["spike_times_ms"], a.skip_ms, rep["duration_ms"])
        counts[kind] += 1
        rows.append((seed, kind, rate, frac))
    n = len(rows)
    if a.table:
        print("| cell seed | pattern | rate Hz | fraction of spikes in bursts |")
        print("|---|---|---|---|")
        for seed, kind, rate, frac in rows:
            print(f"| {seed} | {kind} | {rate:.1f} | {frac:.2f} |")
    print(f"{a.family} {a.preset}, seeds {a.seeds} ({n} cells), "
          f"{a.skip_ms / 1000:.0f}-{a.duration_ms / 1000:.0f} s: "
          + ", ".join(f"{k} {v} ({100.0 * v / n:.0f}%)" for k, v in counts.items()))


if __name__ == "__main__":
    main()
