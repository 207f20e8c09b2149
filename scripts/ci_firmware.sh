#!/usr/bin/env bash
# The reference rig firmware (firmware/, docs/firmware.md) in CI:
#   1. installs arm-none-eabi-gcc, newlib and qemu-system-arm from Debian's
#      packages if they are missing;
#   2. builds the host and board images (make -C firmware), runs the core's
#      tests (protocol vectors, rig behaviour, decoder fuzz, also under
#      ASan/UBSan) and prints flash/RAM;
#   3. runs `neurostimd --plant serial` in closed loop, MPC and PID, 10 s
#      each, against the host build (10 kHz) and against the QEMU image
#      (lm3s6965evb at 2 kHz: the emulated UART that carries the command
#      stream), and the mps2-an386 (Cortex-M4F) image briefly, and checks
#      the daemon's report (summary.json) and the firmware's counters;
#   4. replays the daemon's serial fault tests (tests/serial.rs) against
#      the host build's fault injection: corruption/drops/duplicates/
#      garbage, a garbage flood, a stall, a disconnect, another protocol
#      version, a rig Fault frame; garbage and a stall from the QEMU image
#      itself; and checks the rig side returns its output to zero when the
#      daemon goes away (host and QEMU).
#
# usage: scripts/ci_firmware.sh           (from anywhere; needs
#        target/release/neurostimd, or NEUROSTIMD=path)
# env:   LOOP_SECS (default 10): length of each closed loop
#        QEMU_BOARD (lm3s6965evb), QEMU_RATE (2000): the QEMU closed loops
#        CI_EXTRA_TOML: configuration lines appended for the daemon
#        KEEP=1: keep the work directory (reports, logs)
# Takes about 2 minutes; exits non-zero on the first failed check.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
fw="$root/firmware"
bin=${NEUROSTIMD:-$root/target/release/neurostimd}
secs=${LOOP_SECS:-10}
t_start=$(date +%s)

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'ci_firmware: FAIL: %s\n' "$*" >&2; exit 1; }

# ---- 1. toolchain ----
need=()
command -v arm-none-eabi-gcc >/dev/null || need+=(gcc-arm-none-eabi)
[ -e /usr/lib/arm-none-eabi/newlib/libc.a ] || [ -e /usr/lib/arm-none-eabi/lib/libc.a ] \
    || need+=(libnewlib-arm-none-eabi)
command -v qemu-system-arm >/dev/null || need+=(qemu-system-arm)
command -v cc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# ---- 2. build, test, size ----
say "build (make -C firmware)"
make -C "$fw" -s
say "core tests (make -C firmware test)"
make -C "$fw" -s test
say "flash and RAM (arm-none-eabi-size)"
make -C "$fw" -s size

# ---- 3./4. closed loops ----
[ -x "$bin" ] || fail "$bin missing: build the daemon first (cargo build --release)"
work=$(mktemp -d "${TMPDIR:-/tmp}/ci-firmware.XXXXXX")
rigpid=""
cleanup() {
    if [ -n "$rigpid" ]; then kill "$rigpid" 2>/dev/null || true; wait "$rigpid" 2>/dev/null || true; fi
    if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
# The daemon without real-time privileges (a shared CI machine), as
# tests/serial.rs runs it.
cat >"$work/ci.toml" <<'EOF'
[control.realtime]
mlockall = false
priority = 0
cpu = "none"
EOF
# Extra configuration for the daemon (e.g. on a loaded machine, where MPC's
# start-up check refuses the default candidate count:
# CI_EXTRA_TOML='[mpc]\ncandidates = 8').
printf '%b\n' "${CI_EXTRA_TOML:-}" >>"$work/ci.toml"

# start_rig NAME CMD...: the rig in the background; its first stdout line
# is the port. Sets $port and $rigpid.
start_rig() {
    local name=$1
    shift
    "$@" >"$work/$name.rig.out" 2>"$work/$name.rig.err" &
    rigpid=$!
    port=""
    for _ in $(seq 1 200); do
        port=$(head -n 1 "$work/$name.rig.out" 2>/dev/null || true)
        [ -n "$port" ] && return 0
        kill -0 "$rigpid" 2>/dev/null || break
        sleep 0.05
    done
    cat "$work/$name.rig.err" >&2
    fail "$name: the rig did not print its port"
}

# stop_rig NAME: SIGTERM, and the rig must still have been alive (no crash).
stop_rig() {
    local name=$1
    kill -0 "$rigpid" 2>/dev/null || { cat "$work/$name.rig.err" >&2; fail "$name: the rig died during the run"; }
    kill -TERM "$rigpid"
    wait "$rigpid" 2>/dev/null || true
    rigpid=""
}

# daemon NAME SECONDS ARGS...: run the daemon against $port; its exit code
# in $rc, report in $work/NAME/. MPC's start-up check of the planning
# budget (a property of the machine's load, not of the rig) is retried
# twice.
daemon() {
    local name=$1 s=$2 try
    shift 2
    for try in 1 2 3; do
        set +e
        timeout $((${s%.*} + 60)) "$bin" --config "$work/ci.toml" --plant serial --port "$port" \
            --duration "$s" --report "$work/$name" "$@" >"$work/$name.out" 2>"$work/$name.err"
        rc=$?
        set -e
        if [ "$rc" = 2 ] && grep -q "planning budget" "$work/$name.err"; then
            echo "$name: the daemon refused MPC's planning budget on this machine now (try $try): $(grep -o 'one forecast.*fit;' "$work/$name.err" | head -c 200)"
            sleep 5
            continue
        fi
        break
    done
}

# check NAME PYTHON-EXPR...: assertions over s (summary.json), link
# (its plant_report.link), fr (link.frames), rig (the host rig's
# JSON, {} if none); prints the run's figures.
check() {
    local name=$1
    shift
    python3 - "$work" "$name" "$@" <<'PY'
import json, sys, os
work, name, exprs = sys.argv[1], sys.argv[2], sys.argv[3:]
path = os.path.join(work, name, "summary.json")
if not os.path.exists(path):
    sys.stderr.write(open(os.path.join(work, name + ".err")).read()[-3000:])
    sys.exit(f"{name}: no summary.json")
s = json.load(open(path))
pr = s.get("plant_report") or {}
link = pr.get("link") or {}
fr = link.get("frames") or {}
rig = {}
errf = os.path.join(work, name + ".rig.err")
if os.path.exists(errf):
    for line in open(errf):
        if line.startswith("rig stopped: "):
            rig = json.loads(line[len("rig stopped: "):])
rtt = pr.get("round_trip_us") or {}
errors = sum(fr.get(k, 0) for k in ("oversized", "bad_cobs", "short", "bad_crc", "unknown_type", "bad_length"))
print(f"{name}: samples {s['samples']}, lost {s['lost_samples']}, bad frames {errors} "
      f"(crc {fr.get('bad_crc')}, cobs {fr.get('bad_cobs')}, oversized {fr.get('oversized')}, "
      f"length {fr.get('bad_length')}, type {fr.get('unknown_type')}, short {fr.get('short')}), "
      f"gaps {link.get('sequence_gaps')}, stale {link.get('stale_frames')}, stalls {link.get('stalls')}, "
      f"interruptions {s['plant_interruptions']}, disconnects {link.get('disconnects')}/"
      f"reconnects {link.get('reconnects')}, rtt p50/p99/max {rtt.get('p50')}/{rtt.get('p99')}/{rtt.get('max')} us "
      f"(n={rtt.get('count')}), spikes {s['spikes']}, charge {s['charge_delivered_nc_cm2']:.1f} nC/cm2, "
      f"plan misses {s['plan_misses']}, stop {s['stop']}, wall {s['wall_time_s']:.1f} s")
if rig:
    print(f"{name}: rig " + json.dumps(rig))
# Every protocol error is counted: the counters exist and are numbers.
for k in ("oversized", "bad_cobs", "short", "bad_crc", "unknown_type", "bad_length", "frames"):
    assert isinstance(fr.get(k), int), f"{name}: link.frames.{k} missing: {pr}"
for k in ("sequence_gaps", "stale_frames", "stalls", "disconnects", "reconnects"):
    assert isinstance(link.get(k), int), f"{name}: link.{k} missing: {pr}"
assert isinstance(s["lost_samples"], int)
ok = True
for e in exprs:
    if not eval(e):
        print(f"{name}: FAILED: {e}", file=sys.stderr)
        ok = False
sys.exit(0 if ok else 1)
PY
}

host="$fw/build/host/ns-rig-host"
n_secs=$((secs * 10000 + 1))

for policy in mpc pid; do
    name=host-$policy
    say "$name: ${secs} s closed loop, neurostimd --plant serial --policy $policy against the host build"
    start_rig "$name" "$host"
    daemon "$name" "$secs" --policy "$policy"
    stop_rig "$name"
    [ "$rc" = 0 ] || { tail -20 "$work/$name.err" >&2; fail "$name: daemon exited $rc"; }
    check "$name" "s['samples'] == $n_secs" "s['stop'] == 'duration_reached'" \
        "s['lost_samples'] <= s['samples'] // 100 or rig['late_max_us'] > 40000" \
        "rtt.get('count', 0) > s['samples'] // 2" \
        "s['spikes'] > 0" "pr['hello']['rig_id'] == 18" "rig['hold_max_us'] <= 2000"
done

say "host faults: corrupted, dropped, duplicated frames and garbage (1 s)"
start_rig host-noise "$host" --corrupt 0.02 --drop 0.01 --duplicate 0.01 --garbage 0.01
daemon host-noise 1 --policy pid
stop_rig host-noise
[ "$rc" = 0 ] || fail "host-noise: daemon exited $rc"
check host-noise "s['samples'] == 10001" "errors >= rig['corrupted'] // 2" "link['sequence_gaps'] > 0" \
    "link['stale_frames'] > 0" "s['lost_samples'] == link['sequence_gaps']"

say "host faults: a flood of garbage (1 s)"
start_rig host-flood "$host" --garbage 0.9
daemon host-flood 1 --policy pid
stop_rig host-flood
[ "$rc" = 0 ] || fail "host-flood: daemon exited $rc"
# No loss and no interruption from the garbage itself; they are allowed
# only if the rig process was itself descheduled for most of the 20 ms
# timeout or longer than its TX ring holds (a loaded CI machine), which its
# own late_max_us shows.
check host-flood "s['samples'] == 10001" "rig['garbage_bytes'] > 100000" "errors > 0" \
    "s['lost_samples'] == 0 or rig['late_max_us'] > 40000" \
    "fr['frames'] >= 10001 - s['lost_samples']" \
    "s['plant_interruptions'] == 0 or rig['late_max_us'] > 10000"

say "host faults: a 100 ms stall at 0.4 s (1 s)"
start_rig host-stall "$host" --stall-at 0.4 --stall-ms 100
daemon host-stall 1 --policy pid
stop_rig host-stall
[ "$rc" = 0 ] || fail "host-stall: daemon exited $rc"
check host-stall "s['plant_interruptions'] >= 1" "s['interventions']['plant_fault'] >= 1" \
    "link['stalls'] >= 1" "rig['expired'] >= 1" "s['samples'] == 10001" "rig['hold_max_us'] <= 2000"

say "host faults: a disconnect at 0.3 s, a new pty after 300 ms (1 s)"
start_rig host-disconnect "$host" --link "$work/rig-link" --disconnect-at 0.3 --reconnect-ms 300
daemon host-disconnect 1 --policy pid
stop_rig host-disconnect
[ "$rc" = 0 ] || fail "host-disconnect: daemon exited $rc"
check host-disconnect "link['disconnects'] >= 1" "link['reconnects'] >= 1" \
    "s['plant_interruptions'] >= 1" "s['samples'] == 10001" "rig['hellos'] >= 2"

say "host faults: another protocol version is refused"
start_rig host-version "$host" --version 2
daemon host-version 0.5 --policy pid
stop_rig host-version
[ "$rc" != 0 ] || fail "host-version: the daemon accepted protocol version 2"
grep -q "protocol version 2" "$work/host-version.err" && grep -q "this daemon speaks 1" "$work/host-version.err" \
    || { cat "$work/host-version.err" >&2; fail "host-version: the refusal does not name both versions"; }
echo "host-version: refused (exit $rc): $(grep -o 'rig speaks.*\|protocol version 2[^"]*' "$work/host-version.err" | head -n 1)"

say "host faults: a rig Fault frame (code 2) at 0.5 s"
start_rig host-fault "$host" --fault-at 0.5 --fault-code 2
daemon host-fault 2 --policy pid
stop_rig host-fault
check host-fault "s['stop'] == 'plant_fault'" "'fault code 2' in (s['fault'] or '')" \
    "s['interventions']['plant_fault'] >= 1" "rig['faults_sent'] == 1"
echo "host-fault: daemon exit code $rc, fault: $(python3 -c "import json;print(json.load(open('$work/host-fault/summary.json'))['fault'])")"

say "host safety: the daemon is killed mid-run; the rig's output returns to zero by itself"
start_rig host-kill "$host"
set +e
"$bin" --config "$work/ci.toml" --plant serial --port "$port" --policy pid --report "$work/host-kill" >"$work/host-kill.out" 2>&1 &
dpid=$!
sleep 3
kill -KILL "$dpid"
wait "$dpid" 2>/dev/null
set -e
sleep 0.5
stop_rig host-kill
python3 - "$work/host-kill.rig.err" <<'PY'
import json, sys
rig = [json.loads(l[13:]) for l in open(sys.argv[1]) if l.startswith("rig stopped: ")][-1]
print("host-kill: rig", json.dumps(rig))
assert rig["commands"] > 1000, "the daemon never drove the rig"
assert rig["hold_max_us"] <= 2000, "output held longer than the command validity"
assert rig["output_at_exit"] == 0
PY

# ---- QEMU ----
# QEMU's emulated UARTs carry tens of kB/s into the guest, not the 270 kB/s
# of the daemon's 10 kHz command stream (docs/firmware.md, "What is and is
# not real time under QEMU"): the closed loops run at QEMU_RATE (2 kHz: the
# lowest at which the default MPC model's 0.5 ms step is a whole number of
# samples) on the board whose UART model has a FIFO.
qboard=${QEMU_BOARD:-lm3s6965evb}
qrate=${QEMU_RATE:-2000}
q_samples=$((secs * qrate + 1))
diag_last() { tail -n 1 "$1" 2>/dev/null || true; }
for policy in mpc pid; do
    name=qemu-$policy
    say "$name: ${secs} s closed loop against the $qboard image under QEMU at $qrate Hz"
    start_rig "$name" "$fw/run-qemu.sh" --board "$qboard" --rate "$qrate" --diag "$work/$name.diag"
    daemon "$name" "$secs" --policy "$policy"
    stop_rig "$name"
    echo "$name: firmware: $(diag_last "$work/$name.diag")"
    [ "$rc" = 0 ] || { tail -20 "$work/$name.err" >&2; fail "$name: daemon exited $rc"; }
    check "$name" "s['samples'] == $q_samples" "s['stop'] == 'duration_reached'" \
        "rtt.get('count', 0) > s['samples'] // 2" "s['spikes'] > 0" \
        "pr['hello']['sample_rate_hz'] == $qrate"
    python3 - "$work/$name.diag" <<'PY'
import sys
last = open(sys.argv[1]).read().strip().splitlines()[-1]
kv = dict(x.split("=") for x in last.split() if "=" in x)
assert int(kv["commands"]) > 1000, last
assert int(kv["hold_max_us"]) <= 2000, last
PY
done

# Faults from the emulated MCU itself (the lm3s image has fault injection):
# garbage after half the samples, and a 100 ms stall at 3 s of rig time.
name=qemu-faults
say "$name: $qboard image at $qrate Hz with --garbage 0.5 --stall-at 3 --stall-ms 100, PID 6 s"
start_rig "$name" "$fw/run-qemu.sh" --board "$qboard" --rate "$qrate" --diag "$work/$name.diag" \
    --garbage 0.5 --stall-at 3 --stall-ms 100
daemon "$name" 6 --policy pid
stop_rig "$name"
echo "$name: firmware: $(diag_last "$work/$name.diag")"
[ "$rc" = 0 ] || { tail -20 "$work/$name.err" >&2; fail "$name: daemon exited $rc"; }
check "$name" "s['samples'] == $((6 * qrate + 1))" "errors > 0" "link['stalls'] >= 1" \
    "s['interventions']['plant_fault'] >= 1" "s['plant_interruptions'] >= 1"
python3 - "$work/$name.diag" <<'PY'
import sys
last = open(sys.argv[1]).read().strip().splitlines()[-1]
kv = dict(x.split("=") for x in last.split() if "=" in x)
assert int(kv["garbage_bytes"]) > 10000, last
assert int(kv["stalled_cycles"]) > 0, last
assert int(kv["expired"]) >= 1, last  # the rig went to zero by itself in the stall
assert int(kv["hold_max_us"]) <= 2000, last
PY

# The rig side after the daemon leaves, on the mps2 (Cortex-M4F) image,
# whose UART model does not block the CPU when nobody reads the pty.
name=qemu-leave
say "$name: mps2-an386 image, 3 s of PID at $qrate Hz, then the daemon leaves"
start_rig "$name" "$fw/run-qemu.sh" --board mps2-an386 --rate "$qrate" --diag "$work/$name.diag"
daemon "$name" 3 --policy pid
# Commands still queued in the pty drain, then the last one expires. On a
# loaded host the backlog can outlast a fixed wait (a fresh-clone run saw
# 2829 queued frames and the output still following them 3 s later), so
# wait until a new counter line (one per second of rig time) shows no new
# command since the line before (at most 20 s); the output must then be
# at zero.
prev_line="" prev_cmd=""
for _ in $(seq 40); do
    sleep 0.5
    line=$(diag_last "$work/$name.diag")
    [ "$line" = "$prev_line" ] && continue
    cmd=$(printf '%s\n' "$line" | tr ' ' '\n' | grep '^commands=' || true)
    [ -n "$cmd" ] && [ "$cmd" = "$prev_cmd" ] && break
    prev_line=$line prev_cmd=$cmd
done
echo "$name: firmware: $(diag_last "$work/$name.diag")"
stop_rig "$name"
[ "$rc" = 0 ] || { tail -20 "$work/$name.err" >&2; fail "$name: daemon exited $rc"; }
check "$name" "s['samples'] == $((3 * qrate + 1))" "pr['hello']['rig_id'] == 0x4D345246"
python3 - "$work/$name.diag" <<'PY'
import sys
last = open(sys.argv[1]).read().strip().splitlines()[-1]
kv = dict(x.split("=") for x in last.split() if "=" in x)
assert int(kv["commands"]) > 100, last
assert kv["dac"] == "0", "output not at zero after the daemon left: " + last
assert int(kv["hold_max_us"]) <= 2000, last
PY

echo
echo "ci_firmware: all passed in $(($(date +%s) - t_start)) s"
