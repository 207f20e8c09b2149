#!/usr/bin/env bash
# The daemon's wake-up latency against cyclictest's, in one session
# (issue 15 point 6; docs/deploy.md, "Real-time kernel and CPU isolation").
#
#   scripts/rt_compare.sh [--rounds N] [--cpu C] [--priority P] [--baseline] [OUTDIR]
#
# Each round, one after the other on the same CPU and priority:
#   1. cyclictest: one thread, SCHED_FIFO P, pinned to CPU C, 100 µs
#      interval, 60,000 loops (6 s), memory locked, every wake-up logged (-v);
#      it holds /dev/cpu_dma_latency = 0 for the run, as it does by default;
#   2. the daemon: `neurostimd --plant sim --duration 6 --report DIR`
#      (paced, 10 kHz: 60,000 wake-ups; MPC with its planner on the other
#      CPUs), the control thread at SCHED_FIFO P on CPU C, holding
#      control.realtime.cpu_dma_latency_us = 0;
#   3. with --baseline, the daemon again with cpu_dma_latency_us = -1 (no
#      request), to show what the request is worth.
# Prints a table of p50 / p99 for each, the ratios daemon / cyclictest and
# the load average (uptime) before each round; OUTDIR (default
# target/rt-compare) keeps the raw outputs and the table (rt_compare.md).
#
# Like for like: the daemon's wakeup_jitter (summary.json, HdrHistogram in
# ns) has one value per sample deadline, so a 20 ms stall is 200 late
# samples (its catch-up is real lateness for a control loop); cyclictest
# records one value per wake-up and skips the periods a stall swallowed.
# The ratios therefore use cyclictest's wake-ups with the same correction
# (each wake-up L late also stands for the deadlines L - 100 µs, L - 200
# µs, ... it missed); its per-wake-up figures are shown too. cyclictest
# records whole µs (truncated): a value k means [k, k+1) µs, taken as
# k + 0.5.
#
# Installs rt-tests (Debian, for cyclictest) if missing: run as root, or
# with cyclictest already installed. SCHED_FIFO and the latency request
# need root (or RLIMIT_RTPRIO and access to /dev/cpu_dma_latency); without
# them both tools run anyway and report what they got.
# Environment: NEUROSTIMD (binary, default target/release/neurostimd),
# NEUROSTIMD_ARGS (more daemon arguments, e.g. "--policy pid": no planner).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
cpu=""
prio=80
baseline=0
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --cpu) cpu="$2"; shift 2 ;;
    --priority) prio="$2"; shift 2 ;;
    --baseline) baseline=1; shift ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    -*) echo "rt_compare.sh: unknown option $1" >&2; exit 2 ;;
    *) out="$1"; shift ;;
  esac
done
out=${out:-target/rt-compare}
bin=${NEUROSTIMD:-target/release/neurostimd}
read -r -a extra <<<"${NEUROSTIMD_ARGS:-}"
# The daemon's default: the last CPU.
cpu=${cpu:-$(($(nproc) - 1))}
loops=60000
interval_us=100
seconds=6

if [ ! -x "$bin" ]; then
  echo "rt_compare.sh: $bin is missing (cargo build --release --locked)" >&2
  exit 2
fi
if ! command -v cyclictest >/dev/null; then
  echo "installing rt-tests (cyclictest)" >&2
  if [ "$(id -u)" != 0 ]; then
    echo "rt_compare.sh: cyclictest is missing; run as root or apt-get install rt-tests" >&2
    exit 2
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rt-tests >/dev/null
fi
rm -rf "$out" && mkdir -p "$out"

# The daemon's layer: the same CPU and priority as cyclictest's thread.
daemon_config() { # $1: cpu_dma_latency_us
  cat <<EOF
[control.realtime]
mlockall = true
priority = $prio
cpu = $cpu
cpu_dma_latency_us = $1
EOF
}

# p50 and p99 (µs) of a cyclictest -v log on stdin (one "thread: cycle:
# latency" line per wake-up, whole µs, truncated: the bucket's middle,
# k + 0.5), two ways: as cyclictest counts (one value per wake-up; after a
# stall it skips the periods it missed) and per deadline, the way the
# daemon counts (a sample whose deadline passed during a stall is late
# too): a wake-up L late also stands for deadlines L - I, L - 2I, ... > 0
# late (HdrHistogram's correction for coordinated omission, I = interval).
# Prints "p50 p99 p50_per_deadline p99_per_deadline".
cyclictest_percentiles() {
  python3 -c '
import sys
interval = float(sys.argv[1])
raw = []
for line in sys.stdin:
    f = line.replace(":", " ").split()
    if len(f) == 3 and all(x.isdigit() for x in f):
        raw.append(int(f[2]) + 0.5)
if not raw:
    print("- - - -"); sys.exit()
full = list(raw)
for v in raw:
    late = v - interval
    while late > 0:
        full.append(late)
        late -= interval
def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(q * len(xs) + 0.999999) - 1))]
print("%.1f %.1f %.1f %.1f" % (pct(raw, .5), pct(raw, .99), pct(full, .5), pct(full, .99)))
' "$interval_us"
}

# p50 and p99 (µs) of wakeup_jitter in a summary.json.
daemon_percentiles() {
  python3 -c '
import json, sys
w = json.load(open(sys.argv[1]))["latency"]["wakeup_jitter"]
print("%.1f %.1f" % (w["p50_us"], w["p99_us"]))
' "$1"
}

# The system-wide CPU latency target now (µs), "?" if unreadable. Opening
# the device adds a request at the default (no constraint), so this does
# not change it.
system_target() {
  python3 -c 'import struct; print(struct.unpack("i", open("/dev/cpu_dma_latency", "rb").read(4))[0])' 2>/dev/null || echo "?"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b; else print "-" }'; }

table="$out/rt_compare.md"
{
  echo "cyclictest: cyclictest -m -t1 -p$prio -a$cpu -i$interval_us -l$loops -q -v"
  echo "daemon:     $bin --plant sim --duration $seconds --report DIR --config LAYER ${NEUROSTIMD_ARGS:-}"
  echo "            (LAYER: [control.realtime] priority = $prio, cpu = $cpu, mlockall = true,"
  echo "             cpu_dma_latency_us = 0$([ $baseline = 1 ] && echo '; baseline: -1'))"
  echo "CPU $cpu of $(nproc), kernel $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  if [ $baseline = 1 ]; then
    echo "| round | load (1/5/15 min) | cyclictest p50 / p99 µs, per wake-up | cyclictest per deadline | daemon p50 / p99 µs (per deadline) | daemon / cyclictest p50 | p99 | daemon without request p50 / p99 µs | others' request during it, µs |"
    echo "|---|---|---|---|---|---|---|---|---|"
  else
    echo "| round | load (1/5/15 min) | cyclictest p50 / p99 µs, per wake-up | cyclictest per deadline | daemon p50 / p99 µs (per deadline) | daemon / cyclictest p50 | p99 |"
    echo "|---|---|---|---|---|---|---|"
  fi
} | tee "$table"

for r in $(seq 1 "$rounds"); do
  load=$(awk '{ print $1 " / " $2 " / " $3 }' /proc/loadavg)
  cyc="$out/cyclictest-$r.txt"
  cyclictest -m -t1 -p"$prio" -a"$cpu" -i"$interval_us" -l"$loops" -q -v >"$cyc" 2>"$out/cyclictest-$r.err" || {
    echo "rt_compare.sh: cyclictest failed:" >&2
    cat "$out/cyclictest-$r.err" >&2
    exit 1
  }
  read -r c50 c99 k50 k99 < <(cyclictest_percentiles <"$cyc")

  daemon_config 0 >"$out/layer-request.toml"
  dir="$out/daemon-$r"
  "$bin" --config "$out/layer-request.toml" --plant sim --duration "$seconds" --report "$dir" ${extra[@]+"${extra[@]}"} \
    >"$out/daemon-$r.txt" 2>"$out/daemon-$r.err" || {
    echo "rt_compare.sh: the daemon failed:" >&2
    tail -5 "$out/daemon-$r.err" >&2
    exit 1
  }
  read -r d50 d99 < <(daemon_percentiles "$dir/summary.json")
  held=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["realtime"].get("cpu_dma_latency", "?"))' "$dir/summary.json")
  echo "round $r: daemon's CPU latency request: $held" >&2

  row="| $r | $load | $c50 / $c99 | $k50 / $k99 | $d50 / $d99 | $(ratio "$d50" "$k50") | $(ratio "$d99" "$k99") |"
  if [ $baseline = 1 ]; then
    daemon_config -1 >"$out/layer-none.toml"
    dir="$out/daemon-none-$r"
    # Another process's request (a test, another cyclictest) would make
    # this run a second one with the request: read the system-wide target
    # half way through (2000000000: nobody asks).
    (sleep $((seconds / 2 + 1)); system_target >"$out/others-$r.txt") &
    "$bin" --config "$out/layer-none.toml" --plant sim --duration "$seconds" --report "$dir" ${extra[@]+"${extra[@]}"} \
      >"$out/daemon-none-$r.txt" 2>"$out/daemon-none-$r.err" || {
      echo "rt_compare.sh: the daemon (no request) failed:" >&2
      tail -5 "$out/daemon-none-$r.err" >&2
      exit 1
    }
    wait
    read -r n50 n99 < <(daemon_percentiles "$dir/summary.json")
    row="$row $n50 / $n99 | $(cat "$out/others-$r.txt") |"
  fi
  echo "$row" | tee -a "$table"
done
echo "load after: $(awk '{ print $1 " / " $2 " / " $3 }' /proc/loadavg)" | tee -a "$table"
