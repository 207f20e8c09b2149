#!/usr/bin/env bash
# Peer benchmark: neurostimd's embedded CA1 simulator vs Brian2 on the same
# 9-state Golomb/Yue/Yaari 2006 model (shared/reference/ca1-model.md), the
# same presets and the same step, in one run, with speed ratios.
#
# Usage: scripts/bench_sim_peers.sh [--quick] [--duration-ms D] [--repeats N]
#            [--presets "regular bursting"] [--no-cython] [--no-taskset]
#            [--skip-ours] [--skip-brian2] [--bin PATH]
#
# See scripts/README.md ("Simulator peer benchmark") for what is measured.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPTS="$REPO/scripts"
BIN="$REPO/target/release/neurostimd"
VENV="$REPO/target/peers-venv"
WORK="$VENV/work"

DURATION_MS=2000
REPEATS=5
PRESETS="regular bursting"
USE_CYTHON=1
USE_TASKSET=1
RUN_OURS=1
RUN_BRIAN2=1
DT_MS=0.01
# Brian2 2.9.0 (the newest on PyPI for Python 3.11 at the time of writing)
# still calls numpy.ndarray.ptp, which numpy 2.4 removed: keep numpy < 2.4.
PIP_REQS=("brian2==2.9.0" "numpy>=1.23,<2.4" "cython>=3" "setuptools")

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) DURATION_MS=200; REPEATS=1; shift ;;
        --duration-ms) DURATION_MS="$2"; shift 2 ;;
        --repeats) REPEATS="$2"; shift 2 ;;
        --presets) PRESETS="$2"; shift 2 ;;
        --no-cython) USE_CYTHON=0; shift ;;
        --no-taskset) USE_TASKSET=0; shift ;;
        --skip-ours) RUN_OURS=0; shift ;;
        --skip-brian2) RUN_BRIAN2=0; shift ;;
        --bin) BIN="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

log() { echo "[bench] $*" >&2; }

# ---------------------------------------------------------------- pinning
PIN=()
if [[ $USE_TASKSET == 1 ]] && command -v taskset >/dev/null 2>&1; then
    ncpu=$(nproc 2>/dev/null || echo 1)
    cpu=1
    if [[ $ncpu -lt 2 ]]; then cpu=0; fi
    if taskset -c "$cpu" true 2>/dev/null; then
        PIN=(taskset -c "$cpu")
    fi
fi
if [[ ${#PIN[@]} -gt 0 ]]; then PIN_DESC="${PIN[*]}"; else PIN_DESC="none"; fi

# ---------------------------------------------------------------- Brian2 venv
PY="$VENV/bin/python"
if [[ $RUN_BRIAN2 == 1 ]]; then
    for tool in g++ gcc; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            echo "error: $tool not found; Brian2's cpp_standalone and cython targets need a C/C++ compiler (apt-get install g++)" >&2
            exit 1
        fi
    done
    SYS_PY="${PYTHON:-python3}"
    if ! command -v "$SYS_PY" >/dev/null 2>&1; then
        echo "error: $SYS_PY not found (Python >= 3.10 with the venv module is needed)" >&2
        exit 1
    fi
    stamp="$VENV/.peers-reqs"
    want="${PIP_REQS[*]}"
    if [[ ! -x "$PY" ]]; then
        log "creating venv $VENV"
        "$SYS_PY" -m venv "$VENV"
    fi
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]] || ! "$PY" -c 'import brian2, Cython' >/dev/null 2>&1; then
        log "installing ${PIP_REQS[*]} into $VENV"
        "$PY" -m pip install -q --upgrade pip >&2
        "$PY" -m pip install -q "${PIP_REQS[@]}" >&2
        echo "$want" > "$stamp"
    fi
    mkdir -p "$WORK"
fi

# ---------------------------------------------------------------- our binary
if [[ $RUN_OURS == 1 ]]; then
    if [[ ! -x "$BIN" ]]; then
        log "$BIN missing: cargo build --release"
        (cd "$REPO" && cargo build --release >&2)
    fi
    if ! "$BIN" simulate --help 2>/dev/null | grep -q -- '--json'; then
        echo "error: '$BIN simulate --help' does not list --json; rebuild (cargo build --release)" >&2
        exit 1
    fi
fi

load_warning() {
    local l1 n
    l1=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)
    n=$(nproc 2>/dev/null || echo 1)
    if awk -v l="$l1" -v n="$n" 'BEGIN { exit !(l > n - 0.5) }'; then
        echo "WARNING: 1-min load average $l1 on $n cores: other processes compete for the pinned core;"
        echo "         wall-clock timings are inflated and noisy. Re-run on an idle machine for numbers to quote."
    fi
}

RUN_DIR="$VENV/results/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RUN_DIR"
AGG_PY="$PY"
[[ -x "$AGG_PY" ]] || AGG_PY=python3

# ---------------------------------------------------------------- header
{
    echo "== neurostimd vs Brian2: CA1 (Golomb 2006) peer benchmark =="
    echo "date:        $(date -Iseconds)"
    echo "host:        $(uname -srm), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ //')"
    echo "load avg:    $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?') (other work on the machine skews all timings)"
    echo "pinning:     $PIN_DESC"
    echo "duration:    ${DURATION_MS} ms simulated, dt ${DT_MS} ms, ${REPEATS} repeat(s), median reported"
    if [[ $RUN_OURS == 1 ]]; then
        echo "ours:        $BIN ($("$BIN" --version 2>/dev/null || echo 'version ?'))"
    fi
    if [[ $RUN_BRIAN2 == 1 ]]; then
        echo "brian2:      $("$PY" -c 'import brian2, numpy, sys; print(f"Brian2 {brian2.__version__}, numpy {numpy.__version__}, Python {sys.version.split()[0]}")' 2>/dev/null), $(g++ --version | head -1)"
    fi
    echo "raw results: $RUN_DIR"
    load_warning
    echo
} | tee "$RUN_DIR/header.txt"

# ---------------------------------------------------------------- runs
# Every result is a file NAME.out (stdout) + NAME.err in RUN_DIR; the
# aggregator below parses them.  Names: PRESET__ours__LABEL__I or
# PRESET__brian2__METHOD__TARGET.
run_ours() {  # preset label i args...
    local preset="$1" label="$2" i="$3"; shift 3
    local f="$RUN_DIR/${preset}__ours__${label}__${i}"
    if ! "${PIN[@]}" "$BIN" simulate --preset "$preset" --duration-ms "$DURATION_MS" "$@" --json \
            >"$f.out" 2>"$f.err"; then
        log "FAILED: neurostimd simulate --preset $preset $* (see $f.err)"
        tail -5 "$f.err" >&2 || true
    fi
}

run_brian2() {  # preset method target [standalone-timer]
    local preset="$1" method="$2" target="$3" timer="${4:-wall}"
    local f="$RUN_DIR/${preset}__brian2__${method}__${target}"
    local bdir="$WORK/${target}"
    local extra=()
    if [[ $target == cpp_standalone ]]; then
        f="${f}__${timer}"
        bdir="$WORK/standalone-${preset}-${method}-${timer}"
        extra=(--standalone-timer "$timer")
    fi
    log "brian2 $preset $method $target ${extra[*]} (build excluded from timing)"
    if ! "${PIN[@]}" "$PY" "$SCRIPTS/brian2_ca1.py" --preset "$preset" --duration-ms "$DURATION_MS" \
            --dt-ms "$DT_MS" --method "$method" --target "$target" --repeats "$REPEATS" \
            --build-dir "$bdir" "${extra[@]}" --json >"$f.out" 2>"$f.err"; then
        log "FAILED: brian2 $preset $method $target (see $f.err)"
        tail -5 "$f.err" >&2 || true
    fi
}

for preset in $PRESETS; do
    if [[ $RUN_OURS == 1 ]]; then
        log "ours $preset: rk4 dt $DT_MS x$REPEATS, default integrator x$REPEATS"
        for ((i = 1; i <= REPEATS; i++)); do
            run_ours "$preset" "rk4" "$i" --integrator rk4 --dt-ms "$DT_MS"
            run_ours "$preset" "default" "$i"
        done
    fi
    if [[ $RUN_BRIAN2 == 1 ]]; then
        for method in rk4 exponential_euler; do
            run_brian2 "$preset" "$method" cpp_standalone wall
            # Brian2 as shipped: its loop timer is std::clock() (CPU time), called
            # every step; on this kind of VM that syscall alone costs ~0.2-0.4 us.
            if [[ $method == rk4 ]]; then run_brian2 "$preset" "$method" cpp_standalone cpu; fi
            if [[ $USE_CYTHON == 1 ]]; then run_brian2 "$preset" "$method" cython; fi
        done
    fi
done

# ---------------------------------------------------------------- table
echo "load avg after runs: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')" | tee "$RUN_DIR/load-after.txt"
load_warning | tee -a "$RUN_DIR/load-after.txt"
echo
"$AGG_PY" - "$RUN_DIR" "$DURATION_MS" "$DT_MS" "$SCRIPTS" "$PRESETS" <<'PYEOF' | tee "$RUN_DIR/table.txt"
import json, statistics, sys
from pathlib import Path

run_dir, duration_ms, dt_ms, scripts, presets = sys.argv[1:6]
duration_ms, dt_ms = float(duration_ms), float(dt_ms)
sys.path.insert(0, scripts)
from brian2_ca1 import PRESETS, compare, default_reference_dir, load_reference  # noqa: E402

BOUND = 0.1  # ms; the spec's accuracy bound for a scheme other than RK4 @ 0.01

def last_json(path):
    """The last JSON object in a file (pretty-printed or one line; log lines before it are skipped)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    try:
        d = json.loads(text)
        return d if isinstance(d, dict) else None
    except ValueError:
        pass
    dec = json.JSONDecoder()
    starts = [i for i in range(len(text)) if text[i] == "{" and (i == 0 or text[i - 1] == "\n")]
    for i in reversed(starts):
        try:
            d, _ = dec.raw_decode(text, i)
        except ValueError:
            continue
        if isinstance(d, dict):
            return d
    return None


def ours_spikes(d):
    times = None
    for k in ("spike_times_ms", "spike_times", "spikes_ms", "spikes"):
        if isinstance(d.get(k), list):
            times = [float(x) for x in d[k]]
            break
    n = d.get("spikes") if isinstance(d.get("spikes"), int) else d.get("spike_count")
    if n is None and times is not None:
        n = len(times)
    return n, times

def fmt(x, spec):
    return "-" if x is None else format(x, spec)

rows_all = []
for preset in presets.split():
    ref = load_reference(default_reference_dir() / PRESETS[preset][4], duration_ms)
    nref = None if ref is None else len(ref)
    rows = []
    # ours
    for label in ("rk4", "default"):
        runs = [last_json(p) for p in sorted(Path(run_dir).glob(f"{preset}__ours__{label}__*.out"))]
        runs = [r for r in runs if r and "wall_seconds" in r]
        if not runs:
            continue
        walls = [float(r["wall_seconds"]) for r in runs]
        d = runs[-1]
        n, times = ours_spikes(d)
        err, ok = (compare(times, ref) if times is not None else (d.get("max_spike_err_ms"), None))
        if ok is None and n is not None and nref is not None:
            ok = n == nref
        integ = d.get("integrator", "?")
        dt = d.get("dt_ms", dt_ms if label == "rk4" else None)
        rows.append(dict(side="ours", label=label, method=str(integ), dt=dt, target="neurostimd",
                         wall=statistics.median(walls), wmin=min(walls), n=n, err=err, ok=ok))
    # brian2: rk4 first, then the other methods; cpp_standalone before cython
    b2 = [last_json(p) for p in Path(run_dir).glob(f"{preset}__brian2__*.out")]
    b2 = [d for d in b2 if d and "wall_seconds" in d]
    b2.sort(key=lambda d: (d["method"] != "rk4", d["method"], d["target"] != "cpp_standalone", d["target"],
                           d.get("standalone_timer") == "cpu"))
    for d in b2:
        rows.append(dict(side="brian2", label=d["method"], method=d["method"], dt=d["dt_ms"],
                         target=d["target"], timer=d.get("standalone_timer"),
                         wall=float(d["wall_seconds"]), wmin=min(d.get("wall_seconds_all") or [d["wall_seconds"]]),
                         n=d["spikes"],
                         err=d["max_spike_err_ms"], ok=d["spike_count_ok"]))
    for r in rows:
        r["rt"] = duration_ms / 1000.0 / r["wall"] if r["wall"] > 0 else None
        if r["ok"] is False or (r["err"] is not None and r["err"] > BOUND):
            r["meets"] = False
        elif r["ok"] is True and r["err"] is not None:
            r["meets"] = True
        else:
            r["meets"] = None  # no spike times reported: cannot tell
        r["preset"] = preset
    ours_rk4 = next((r for r in rows if r["side"] == "ours" and r["label"] == "rk4"), None)
    ours_def = next((r for r in rows if r["side"] == "ours" and r["label"] == "default"), None)
    for r in rows:
        r["ratio"] = None
        if (r["side"] == "brian2" and ours_rk4 and r["method"] == "rk4"
                and abs(float(r["dt"]) - float(ours_rk4["dt"] or dt_ms)) < 1e-12):
            r["ratio"] = r["wall"] / ours_rk4["wall"]

    print(f"--- preset {preset}: reference {nref} spikes in {duration_ms:g} ms ---")
    hdr = f"{'config':58s} {'median wall s':>13s} {'min wall s':>10s} {'RT factor':>10s} {'spikes':>8s} {'max err ms':>11s} {'<=0.1ms':>7s} {'B2/ours same method+dt':>24s}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        if r["side"] == "ours":
            name = f"ours {r['label']} ({r['method']}" + (f", dt {r['dt']:g} ms)" if r["dt"] else ")")
        else:
            name = f"brian2 {r['method']} {r['target']} dt {r['dt']:g} ms"
            if r["timer"] == "cpu":
                name += " [B2 clock]"
        spikes = f"{r['n'] if r['n'] is not None else '?'}/{nref if nref is not None else '?'}"
        err = fmt(r["err"], ".2e") + ("" if r["ok"] is not False else "*")
        print(f"{name:58s} {r['wall']:13.4f} {r['wmin']:10.4f} {fmt(r['rt'], '10.1f'):>10s} {spikes:>8s} {err:>11s} "
              f"{ {True: 'yes', False: 'NO', None: '?'}[r['meets']]:>7s} {fmt(r['ratio'], '.2f') + ('x' if r['ratio'] else ''):>24s}")
    best = min((r for r in rows if r["side"] == "brian2" and r["meets"]), key=lambda r: r["wall"], default=None)
    if best and ours_def:
        print(f"Brian2 best meeting {BOUND} ms ({best['method']} {best['target']}, {best['wall']:.4f} s) / "
              f"ours default ({ours_def['method']}, {ours_def['wall']:.4f} s"
              f"{ {True: '', False: ', ours MISSES the bound', None: ', ours accuracy unknown'}[ours_def['meets']]}) = {best['wall'] / ours_def['wall']:.2f}x")
    elif ours_def:
        print("no Brian2 configuration met the 0.1 ms bound: no fair default-vs-best ratio")
    for r in rows:
        if r["side"] == "brian2" and not r["meets"]:
            why = (f"{r['n']} spikes vs {nref}" if r["ok"] is False else f"max err {fmt(r['err'], '.3g')} ms")
            print(f"note: brian2 {r['method']} {r['target']} misses the {BOUND} ms spike-time bound ({why}); "
                  "its speed is not a fair comparison")
    if any(r["ok"] is False for r in rows):
        print("(* = spike count differs from the reference: error is over the paired first spikes only)")
    if any(r["side"] == "brian2" and r["timer"] == "cpu" for r in rows):
        print("([B2 clock] = Brian2's generated loop as shipped, timed by its own std::clock(), which it")
        print(" calls every step (a syscall); other cpp_standalone rows use the same loop with that")
        print(" timer patched to steady_clock wall time, like neurostimd's wall_seconds)")
    if any(r["side"] == "brian2" and r["method"] == "exponential_euler" for r in rows):
        print("(brian2 exponential_euler holds m_inf, p_inf, a_inf constant over each step: Brian2 requires")
        print(" equations linear in their own variable for that method, and V's is not with instantaneous gates)")
    print()
    rows_all.extend(rows)

with open(Path(run_dir) / "summary.json", "w") as f:
    json.dump(rows_all, f, indent=1)
print("RT factor = simulated seconds / wall seconds; wall = integration loop only (see scripts/README.md).")
PYEOF
