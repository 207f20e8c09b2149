#!/usr/bin/env bash
# Soak and chaos run (issue 15 point 5; docs/reliability.md).
#
#   scripts/soak.sh [--minutes N] [--short] [OUTDIR]
#
# Run 1: the daemon paced at 10 kHz on the simulator, MPC, recording and
#   report, for N minutes (default 10), while two CPU hogs (`yes`) run and
#   scripts/soak_client.py floods and abuses the control socket and the
#   metrics port (loopback and Unix sockets only, bounded in count and time).
# Run 2: the daemon over the emulated rig (`neurostimd rig`) with dropped and
#   corrupted frames and random bytes on the wire, a stall and a disconnect
#   injected by the rig, then the rig SIGSTOPped for a while and SIGCONTed,
#   then killed and restarted on the same --link path; a status probe runs
#   throughout.
# Each run ends with SIGTERM to the daemon, which must exit 0.
# scripts/soak_report.py then prints the markdown table (OUTDIR/soak.md) and
# exits non-zero if a daemon crashed or exited non-zero, recorded data were
# lost (records dropped, incomplete sidecar, fewer recorded samples than the
# summary's), or a client broke the daemon.
#
# --short: both runs in about 60 s in all (CI). --minutes N: N minutes per run.
# Environment: NEUROSTIMD (binary, default target/release/neurostimd),
# SOAK_PYTHON (a python3 with numpy; default target/ci-venv/bin/python if
# present, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

minutes=10
short=0
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --short) short=1; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    -*) echo "soak.sh: unknown option $1" >&2; exit 2 ;;
    *) out="$1"; shift ;;
  esac
done
if [ "$short" = 1 ]; then run_s=25; else run_s=$(python3 -c "print(int(float('$minutes')*60))"); fi
[ -n "$out" ] || out="target/soak-$(date -u +%Y%m%dT%H%M%SZ)"
bin="${NEUROSTIMD:-$repo/target/release/neurostimd}"
py="${SOAK_PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "$repo/target/ci-venv/bin/python" ]; then py="$repo/target/ci-venv/bin/python"; else py=python3; fi
fi
"$py" -c 'import numpy' 2>/dev/null || { echo "soak.sh: $py has no numpy (set SOAK_PYTHON)" >&2; exit 2; }
[ -x "$bin" ] || { echo "soak.sh: no binary at $bin" >&2; exit 2; }
if [ -e "$out" ]; then echo "soak.sh: $out exists; give a new directory" >&2; exit 2; fi
mkdir -p "$out"
out=$(cd "$out" && pwd)

t0=$(date +%s)
stamp() { echo "[soak +$(( $(date +%s) - t0 ))s] $*"; }

# on exit (also on an error or Ctrl-C): stop this script's own background
# jobs that are still running (`jobs -p` lists only un-reaped children, so a
# reused pid is never hit)
cleanup() {
  local p
  for p in $(jobs -p); do kill -CONT "$p" 2>/dev/null; kill "$p" 2>/dev/null; done
}
trap cleanup EXIT
trap "exit 130" INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_for FILE PATTERN SECONDS PID: until PATTERN is in FILE (0) or PID died / time ran out (1)
wait_for() {
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$4" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# stop_daemon DIR PID: SIGTERM, wait up to 30 s, write DIR/exit_code and DIR/stop_ms
stop_daemon() {
  local dir=$1 pid=$2 rc i t_sig t_end
  [ -n "$pid" ] || return 0
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid"; rc=$?
    echo "$rc" > "$dir/exit_code"; echo "died_before_sigterm" > "$dir/died"
    stamp "daemon $pid had already exited ($rc) before SIGTERM"
    return
  fi
  t_sig=$(date +%s%N)
  kill -TERM "$pid"
  for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    stamp "daemon $pid still running 30 s after SIGTERM: killing it"
    kill -KILL "$pid"; echo "hung_after_sigterm" > "$dir/died"
  fi
  wait "$pid"; rc=$?
  t_end=$(date +%s%N)
  echo "$rc" > "$dir/exit_code"
  echo $(( (t_end - t_sig) / 1000000 )) > "$dir/stop_ms"
  stamp "daemon exited $rc, $(( (t_end - t_sig) / 1000000 )) ms after SIGTERM"
}

# start_daemon DIR CMD...: start the daemon (stdout/stderr in DIR), set DPID,
# return 0 once its loop runs. A paced MPC run refuses to start (exit 2) when
# the machine is too busy for the planning deadline at that moment (the
# planning-budget check); that is retried up to 4 times, 10 s apart, and
# each refusal is kept (DIR/daemon.stderr.refusedN, counted in the report).
start_daemon() {
  local dir=$1 attempt rc; shift
  for attempt in 1 2 3 4 5; do
    "$@" > "$dir/daemon.stdout" 2> "$dir/daemon.stderr" &
    DPID=$!
    wait_for "$dir/daemon.stderr" "closed loop running" 60 "$DPID" && return 0
    kill -0 "$DPID" 2>/dev/null && return 1
    wait "$DPID"; rc=$?
    if [ "$rc" = 2 ] && grep -q "planning budget" "$dir/daemon.stderr" && [ "$attempt" -lt 5 ]; then
      mv "$dir/daemon.stderr" "$dir/daemon.stderr.refused$attempt"
      stamp "the daemon refused to start (planning budget on a busy machine; attempt $attempt): retrying in 10 s"
      sleep 10
      continue
    fi
    echo "$rc" > "$dir/exit_code"; echo "did_not_start (exit $rc)" > "$dir/died"
    DPID=""
    return 1
  done
}

# watch_daemon PID SECONDS DIR: sleep, noting if the daemon dies early
watch_daemon() {
  local i
  for ((i = 0; i < $2; i++)); do
    if ! kill -0 "$1" 2>/dev/null; then echo "died_during_run after ${i}s" > "$3/died"; return 1; fi
    sleep 1
  done
}

git -C "$repo" rev-parse HEAD > "$out/commit" 2>/dev/null || true
# a private copy of the binary (a rebuild during the soak must not change or
# remove what the restarted rig runs); a hard link when possible
ln "$bin" "$out/neurostimd" 2>/dev/null || cp "$bin" "$out/neurostimd"
bin="$out/neurostimd"
"$bin" --version > "$out/version" 2>&1
# what else the machine is doing: load and the busiest processes every 30 s
( while :; do echo "$(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"; ps -eo pcpu,comm --sort=-pcpu | sed -n '2,6p' | tr -s ' ' | paste -sd';'; sleep 30; done ) > "$out/load.log" 2>&1 &
loadmon=$!
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"; echo "host: $(uname -srm), $(nproc) CPUs"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"; echo "binary: $bin ($(stat -c %y "$bin" 2>/dev/null))"
  echo "run seconds: $run_s (short=$short)"
} > "$out/machine.txt"
ps -eo pid,pcpu,etimes,comm --sort=-pcpu | head -15 > "$out/ps_before.txt"

# --------------------------------------------------------------- run 1
r1="$out/run1"; mkdir -p "$r1"
port=$(free_port)
cat > "$r1/config.toml" <<EOF
[service]
socket = "$r1/control.sock"
metrics = "127.0.0.1:$port"
EOF
cmd1=("$bin" --config "$r1/config.toml" --plant sim --clock paced --policy mpc --record "$r1/rec" --report "$r1/report")
printf '%q ' "${cmd1[@]}" > "$r1/command"; echo >> "$r1/command"
stamp "run 1: ${run_s} s paced sim + MPC + recording; 2 CPU hogs; API/metrics flood and abuse"
start_daemon "$r1" "${cmd1[@]}"; ok1=$?; d1=$DPID
if [ "$ok1" != 0 ]; then
  stamp "run 1: the daemon did not start"; tail -20 "$r1/daemon.stderr"
  [ -e "$r1/died" ] || echo "did_not_start" > "$r1/died"
else
  yes > /dev/null & h1=$!; yes > /dev/null & h2=$!
  "$py" "$repo/scripts/soak_client.py" --mode abuse --socket "$r1/control.sock" --metrics "127.0.0.1:$port" \
    --seconds $((run_s - 3)) --out "$r1/client.json" > "$r1/client.out" 2>&1 &
  c1=$!
  watch_daemon "$d1" "$run_s" "$r1"
  sar_load=$(cut -d' ' -f1-3 /proc/loadavg); echo "load at end of run 1 (1/5/15 min): $sar_load" >> "$out/machine.txt"
  for ((i = 0; i < 600; i++)); do kill -0 "$c1" 2>/dev/null || break; sleep 0.1; done
  kill "$c1" 2>/dev/null; wait "$c1"; echo $? > "$r1/client_exit"
  cat "$r1/client.out"
fi
stop_daemon "$r1" "$d1"
kill "${h1:-}" "${h2:-}" 2>/dev/null; wait "${h1:-}" "${h2:-}" 2>/dev/null

# --------------------------------------------------------------- run 2
r2="$out/run2"; mkdir -p "$r2"
port=$(free_port)
cat > "$r2/config.toml" <<EOF
[service]
socket = "$r2/control.sock"
metrics = "127.0.0.1:$port"
EOF
link="$r2/rig.link"
# fault schedule, as fractions of the run (the rig's own clock starts ~1 s earlier)
at() { python3 -c "print(round($run_s * $1, 1))"; }
stall_at=$(at 0.2); disc_at=$(at 0.36); sigstop_at=$(at 0.5); kill_at=$(at 0.7)
if [ "$short" = 1 ]; then stall_ms=500; reconnect_ms=1000; sigstop_s=1.5; else stall_ms=1500; reconnect_ms=2000; sigstop_s=3; fi
faults=(--drop 0.001 --corrupt 0.001 --garbage 0.0005 --seed 7)
rigcmd1=("$bin" rig --link "$link" "${faults[@]}" --stall-at "$stall_at" --stall-ms "$stall_ms" --disconnect-at "$disc_at" --reconnect-ms "$reconnect_ms")
rigcmd2=("$bin" rig --link "$link" "${faults[@]}")
cmd2=("$bin" --config "$r2/config.toml" --plant serial --port "$link" --policy mpc --record "$r2/rec" --report "$r2/report")
{ printf '%q ' "${rigcmd1[@]}"; echo; printf '%q ' "${cmd2[@]}"; echo
  echo "# rig SIGSTOP at ${sigstop_at} s for ${sigstop_s} s; rig killed (SIGTERM) at ${kill_at} s, restarted 1 s later as:"
  printf '%q ' "${rigcmd2[@]}"; echo; } > "$r2/command"
stamp "run 2: ${run_s} s over the emulated rig: drops, corruption, garbage; stall at ${stall_at} s, disconnect at ${disc_at} s, SIGSTOP at ${sigstop_at} s, kill+restart at ${kill_at} s"
"${rigcmd1[@]}" > "$r2/rig1.out" 2>&1 &
g1=$!
if ! wait_for "$r2/rig1.out" "rig ready" 30 "$g1"; then stamp "run 2: the rig did not start"; cat "$r2/rig1.out"; fi
start_daemon "$r2" "${cmd2[@]}"; ok2=$?; d2=$DPID
t_run2=$(date +%s.%N)
since() { python3 -c "import time; print(max(0.0, $1 - (time.time() - $t_run2)))"; }
if [ "$ok2" != 0 ]; then
  stamp "run 2: the daemon did not start"; tail -20 "$r2/daemon.stderr"
  [ -e "$r2/died" ] || echo "did_not_start" > "$r2/died"
else
  "$py" "$repo/scripts/soak_client.py" --mode probe --socket "$r2/control.sock" --metrics "127.0.0.1:$port" \
    --seconds $((run_s - 3)) --out "$r2/client.json" > "$r2/client.out" 2>&1 &
  c2=$!
  sleep "$(since "$sigstop_at")"
  stamp "run 2: SIGSTOP the rig for ${sigstop_s} s"; kill -STOP "$g1"; sleep "$sigstop_s"; kill -CONT "$g1"
  sleep "$(since "$kill_at")"
  stamp "run 2: kill the rig, restart it on $link after 1 s"
  kill -TERM "$g1"; wait "$g1"; echo $? > "$r2/rig1_exit"
  sleep 1
  "${rigcmd2[@]}" > "$r2/rig2.out" 2>&1 &
  g2=$!
  rest=$(since "$run_s"); watch_daemon "$d2" "${rest%.*}" "$r2"
  for ((i = 0; i < 600; i++)); do kill -0 "$c2" 2>/dev/null || break; sleep 0.1; done
  kill "$c2" 2>/dev/null; wait "$c2"; echo $? > "$r2/client_exit"
  cat "$r2/client.out"
fi
stop_daemon "$r2" "$d2"
for g in "${g1:-}" "${g2:-}"; do [ -n "$g" ] && { kill -TERM "$g" 2>/dev/null; wait "$g" 2>/dev/null; }; done

ps -eo pid,pcpu,etimes,comm --sort=-pcpu | head -15 > "$out/ps_after.txt"
kill "$loadmon" 2>/dev/null; wait "$loadmon" 2>/dev/null
echo "total wall time: $(( $(date +%s) - t0 )) s" >> "$out/machine.txt"
stamp "report"
"$py" "$repo/scripts/soak_report.py" "$out"
rc=$?
stamp "done (exit $rc): $out/soak.md"
exit $rc
