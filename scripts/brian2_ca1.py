#!/usr/bin/env python3
"""Golomb/Yue/Yaari 2006 CA1 pyramidal neuron in Brian2, for peer benchmarking.

The model follows the spec ``shared/reference/ca1-model.md`` exactly: nine
states (V, h, n, b, z, r, c, q, Ca), the calcium equation in the form
``dCa/dt = -nu*I_Ca - Ca/tau_Ca`` and ``q_inf = Ca^4/(Ca^4 + a_q^4)``.

Units are honoured with Brian2's unit system: V in mV, conductances in
mS/cm^2, currents in uA/cm^2, Cm = 1 uF/cm^2, t in ms.  [Ca] is dimensionless
(the spec's scale of a_c and a_q), so nu carries the units cm^2/(uA*ms).

Spikes are upward crossings of -20 mV, linearly interpolated between the two
integration steps that bracket the crossing (like the reference files): a
``run_regularly`` at the start of every step copies V into ``v_prev``; a custom
event ``cross`` (``v > -20 mV and v_prev <= -20 mV``) is evaluated after the
state update, its ``run_on_event`` code stores
``t_cross = t + dt*(-20 mV - v_prev)/(v - v_prev)`` and an EventMonitor in
the ``end`` slot (after the on-event code) records ``t_cross``.  No
StateMonitor is used, so the timed run does not pay for recording the trace.

Timing (``wall_seconds``) EXCLUDES code generation and compilation:

* cpp_standalone: the network is generated and compiled once with
  ``device.build(run=False)`` (timed separately as ``build_seconds``); then
  the compiled binary is executed ``--repeats`` times with ``device.run()``.
  ``wall_seconds`` is Brian2's own timer of the simulation loop,
  ``Network::_last_run_time`` in the generated C++ (read back by Brian2 into
  ``device._last_run_time``): it starts just before the main time-step loop
  and stops right after it, so it excludes compilation, process start,
  allocation, initialisation and writing results.  As shipped, Brian2 reads
  that timer with ``std::clock()`` (process CPU time) and calls it after
  EVERY time step; ``std::clock()`` is a real syscall (~0.2-0.4 us here), so
  at 200,000 steps it adds ~35 ms, a large share of the loop.  With
  ``--standalone-timer wall`` (default) the generated ``network.cpp`` is
  patched between generation and compilation (``build(compile=False)``,
  patch, ``device.compile_source``) so that the same timer uses
  ``std::chrono::steady_clock`` (wall time, vDSO, ~20 ns): the loop is
  otherwise unchanged and the time is wall time like neurostimd's.
  ``--standalone-timer cpu`` keeps Brian2 exactly as shipped.
  ``outer_wall_seconds`` is the ``time.perf_counter()`` time of the whole
  ``device.run()`` call (binary start + load + loop + writing results),
  reported for transparency.
* cython / numpy (runtime targets): one short warm-up run (``--warmup-ms``,
  default 1 ms) generates and compiles every code object (Cython extensions
  are cached in memory and on disk), then the network is restored to its
  initial state with ``Network.restore`` and ``Network.run(duration)`` is
  timed ``--repeats`` times (restoring before each).  ``wall_seconds`` is
  ``device._last_run_time``, measured by ``Network.run`` with
  ``time.time()`` around its stepping loop only, i.e. after ``before_run``
  (code-object creation and compilation/cache lookup) has finished.
  ``outer_wall_seconds`` is the perf_counter time of the whole ``run()``
  call, including ``before_run`` (codegen + cache hit, no compilation).

With ``--repeats N`` the reported ``wall_seconds`` is the median of the N
timed runs (all values are in ``wall_seconds_all``).

Example:
    python scripts/brian2_ca1.py --preset bursting --method rk4 --dt-ms 0.01 \\
        --target cpp_standalone --repeats 5 --json
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

PRESETS = {
    # name: (g_M, g_NaP, theta_p, I_app, reference spike file)
    "regular": (1.0, 0.2, -41.0, 1.0, "ca1_default_spikes.txt"),
    "bursting": (1.0, 0.41, -47.0, 0.5, "ca1_bursting_spikes.txt"),
}

# Initial state from the spec, in order V, h, n, b, z, r, c, q, Ca.
INITIAL = {
    "v": -71.962,  # mV
    "h": 0.979199,
    "n": 0.0242166,
    "b": 0.207565,
    "z": 0.0013689,
    "r": 0.005507,
    "c": 0.002486,
    "q": 0.0,
    "Ca": 0.000787,
}

V_SPIKE_MV = -20.0

# Model equations.  __INST__ is replaced by "" (exact instantaneous gates, used
# by every method that can integrate non-linear equations, e.g. rk4, rk2,
# euler, heun, milstein) or by " (constant over dt)" for exponential_euler,
# which in Brian2 requires every equation to be linear in its own variable:
# with m_inf, p_inf and a_inf depending on V the V equation is not, so for
# that method the instantaneous gates are evaluated once at the start of each
# step and held fixed during it (the usual way Brian2 users write this).
EQUATIONS = """
dv/dt = (-I_L - I_Na - I_NaP - I_Kdr - I_A - I_M - I_Ca - I_C - I_AHP + I_app + I_stim) / Cm : volt
I_L   = g_L * (v - E_L) : amp/meter**2
I_Na  = g_Na * m_inf**3 * h * (v - E_Na) : amp/meter**2
I_NaP = g_NaP * p_inf * (v - E_Na) : amp/meter**2
I_Kdr = g_Kdr * n**4 * (v - E_K) : amp/meter**2
I_A   = g_A * a_inf**3 * b * (v - E_K) : amp/meter**2
I_M   = g_M * z * (v - E_K) : amp/meter**2
I_Ca  = g_Ca * r**2 * (v - E_Ca) : amp/meter**2
I_C   = g_KCa * Ca / (Ca + a_c) * c * (v - E_K) : amp/meter**2
I_AHP = g_KAHP * q * (v - E_K) : amp/meter**2

m_inf = 1 / (1 + exp(-(v - (-30*mV)) / (9.5*mV))) : 1__INST__
p_inf = 1 / (1 + exp(-(v - theta_p) / (3*mV))) : 1__INST__
a_inf = 1 / (1 + exp(-(v - (-50*mV)) / (20*mV))) : 1__INST__

h_inf = 1 / (1 + exp(-(v - (-45*mV)) / (-7*mV))) : 1
tau_h = 0.1*ms + 0.75*ms / (1 + exp((v + 40.5*mV) / (6*mV))) : second
dh/dt = (h_inf - h) / tau_h : 1

n_inf = 1 / (1 + exp(-(v - (-35*mV)) / (10*mV))) : 1
tau_n = 0.1*ms + 0.5*ms / (1 + exp((v + 27*mV) / (15*mV))) : second
dn/dt = (n_inf - n) / tau_n : 1

b_inf = 1 / (1 + exp(-(v - (-80*mV)) / (-6*mV))) : 1
db/dt = (b_inf - b) / tau_b : 1

z_inf = 1 / (1 + exp(-(v - (-39*mV)) / (5*mV))) : 1
dz/dt = (z_inf - z) / tau_z : 1

r_inf = 1 / (1 + exp(-(v - (-20*mV)) / (10*mV))) : 1
dr/dt = (r_inf - r) / tau_r : 1

c_inf = 1 / (1 + exp(-(v - (-30*mV)) / (7*mV))) : 1
dc/dt = (c_inf - c) / tau_c : 1

q_inf = Ca**4 / (Ca**4 + a_q**4) : 1
dq/dt = (q_inf - q) / tau_q : 1

dCa/dt = -nu * I_Ca - Ca / tau_Ca : 1

v_prev : volt
t_cross : second
"""


def default_reference_dir() -> Path:
    env = os.environ.get("NEUROSTIMD_REFERENCE_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for cand in (
        here.parent / "shared" / "reference",
        here.parent.parent / "shared" / "reference",
        Path("/work/shared/reference"),
    ):
        if cand.is_dir():
            return cand
    return here.parent.parent / "shared" / "reference"


def load_reference(path: Path, duration_ms: float):
    if not path.is_file():
        return None
    times = []
    for line in path.read_text().split():
        line = line.strip()
        if line:
            times.append(float(line))
    # Reference files cover 2 s; compare only what the run simulates.
    return [t for t in times if t <= duration_ms]


def compare(spikes, ref):
    """Return (max |dt| over paired spikes, counts equal)."""
    if ref is None:
        return None, None
    k = min(len(spikes), len(ref))
    err = max((abs(a - b) for a, b in zip(spikes[:k], ref[:k])), default=0.0)
    return err, len(spikes) == len(ref)


WALL_CLOCK_SHIM = """
// --- brian2_ca1.py: time the loop with a monotonic wall clock (vDSO, ~20 ns)
// instead of std::clock() (process CPU time, a real syscall of ~0.4 us that
// Brian2 calls once per time step).  Same units: ticks of CLOCKS_PER_SEC.
#include <chrono>
static inline std::clock_t brian2_ca1_wall_ticks()
{
    return (std::clock_t)(std::chrono::duration<double>(
        std::chrono::steady_clock::now().time_since_epoch()).count() * CLOCKS_PER_SEC);
}
// ---
"""


def patch_standalone_timer(network_cpp: Path):
    """Make Brian2's Network::run loop timer a wall clock (see --standalone-timer)."""
    src = network_cpp.read_text()
    n = src.count("std::clock()")
    if n == 0:
        raise RuntimeError(f"{network_cpp}: no std::clock() to patch (Brian2 template changed?)")
    anchor = "#include <ctime>"
    if anchor not in src:
        raise RuntimeError(f"{network_cpp}: '{anchor}' not found (Brian2 template changed?)")
    src = src.replace("std::clock()", "brian2_ca1_wall_ticks()")
    src = src.replace(anchor, anchor + "\n" + WALL_CLOCK_SHIM, 1)
    network_cpp.write_text(src)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="regular")
    p.add_argument("--duration-ms", type=float, default=2000.0)
    p.add_argument("--dt-ms", type=float, default=0.01)
    p.add_argument(
        "--method",
        default="rk4",
        help="Brian2 state updater: rk4, rk2, euler, heun, exponential_euler, ...",
    )
    p.add_argument(
        "--target", choices=["cpp_standalone", "cython", "numpy"], default="cpp_standalone"
    )
    p.add_argument("--repeats", type=int, default=1, help="timed runs; median is reported")
    p.add_argument(
        "--warmup-ms",
        type=float,
        default=1.0,
        help="runtime targets: length of the untimed warm-up run that compiles code",
    )
    p.add_argument("--reference", type=Path, default=None, help="reference spike-time file")
    p.add_argument(
        "--build-dir",
        type=Path,
        default=None,
        help="cpp_standalone project dir / cython cache root (default: a temp dir, removed)",
    )
    p.add_argument(
        "--standalone-timer",
        choices=["wall", "cpu"],
        default="wall",
        help="cpp_standalone loop timer: 'wall' patches the generated network.cpp to use "
        "std::chrono::steady_clock (wall time, like neurostimd; drops the per-step "
        "std::clock() syscall); 'cpu' keeps Brian2's shipped std::clock() (CPU time)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--print-spikes", action="store_true", help="include spike times in output")
    p.add_argument(
        "--no-spike-detect",
        action="store_true",
        help="time the bare state update only (no v_prev copy, no crossing event, no monitor)",
    )
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.repeats < 1:
        sys.exit("--repeats must be >= 1")

    ref_name = PRESETS[args.preset][4]
    ref_path = args.reference or (default_reference_dir() / ref_name)
    ref = load_reference(ref_path, args.duration_ms)

    tmp_root = None
    if args.build_dir is None:
        tmp_root = Path(tempfile.mkdtemp(prefix="brian2_ca1_"))
        work = tmp_root
    else:
        work = args.build_dir.resolve()
        work.mkdir(parents=True, exist_ok=True)
    try:
        result = simulate(args, work, ref, ref_path)
    finally:
        if tmp_root is not None:
            shutil.rmtree(tmp_root, ignore_errors=True)

    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:24s} {v}")
    if ref is None:
        print(f"warning: reference file {ref_path} not found", file=sys.stderr)


def simulate(args, work: Path, ref, ref_path: Path):
    g_m, g_nap, theta_p, i_app, _ = PRESETS[args.preset]

    import brian2 as b2
    from brian2 import (
        EventMonitor,
        Network,
        NeuronGroup,
        cm,
        defaultclock,
        device,
        ms,
        msiemens,
        mV,
        prefs,
        second,
        set_device,
        uA,
        uF,
    )

    b2.BrianLogger.log_level_error()  # keep stdout/stderr clean for --json
    if args.target == "cpp_standalone":
        set_device("cpp_standalone", directory=str(work / "standalone"), build_on_run=False)
    else:
        prefs.codegen.target = args.target
        prefs.codegen.runtime.cython.cache_dir = str(work / "cython_cache")

    defaultclock.dt = args.dt_ms * ms

    namespace = {
        "Cm": 1 * uF / cm**2,
        "g_L": 0.05 * msiemens / cm**2,
        "g_Na": 35 * msiemens / cm**2,
        "g_NaP": g_nap * msiemens / cm**2,
        "g_Kdr": 6 * msiemens / cm**2,
        "g_A": 1.4 * msiemens / cm**2,
        "g_M": g_m * msiemens / cm**2,
        "g_Ca": 0.08 * msiemens / cm**2,
        "g_KCa": 10 * msiemens / cm**2,
        "g_KAHP": 5 * msiemens / cm**2,
        "E_L": -70 * mV,
        "E_Na": 55 * mV,
        "E_K": -90 * mV,
        "E_Ca": 120 * mV,
        "theta_p": theta_p * mV,
        "a_c": 6.0,
        "a_q": 2.0,
        "tau_b": 15 * ms,
        "tau_z": 75 * ms,
        "tau_r": 1 * ms,
        "tau_c": 2 * ms,
        "tau_q": 450 * ms,
        "tau_Ca": 13 * ms,
        "nu": 0.13 * cm**2 / (uA * ms),
        "I_app": i_app * uA / cm**2,
        "I_stim": 0 * uA / cm**2,
    }

    inst = " (constant over dt)" if args.method == "exponential_euler" else ""
    eqs = EQUATIONS.replace("__INST__", inst)

    vth = V_SPIKE_MV * mV
    detect = not args.no_spike_detect
    group = NeuronGroup(
        1,
        eqs,
        method=args.method,
        events={"cross": "v > v_spike and v_prev <= v_spike"} if detect else None,
        namespace={**namespace, "v_spike": vth},
        name="ca1",
    )
    for k, val in INITIAL.items():
        if k == "v":
            setattr(group, k, val * mV)
        else:
            setattr(group, k, val)
    group.v_prev = INITIAL["v"] * mV
    group.t_cross = 0 * second
    if detect:
        group.run_on_event("cross", "t_cross = t + dt * (v_spike - v_prev) / (v - v_prev)")
        # v_prev = V at the start of the step (before the state update).
        group.run_regularly("v_prev = v", when="start", name="ca1_vprev")
        mon = EventMonitor(group, "cross", variables=["t_cross"], when="end", name="ca1_cross")
        net = Network(group, mon)
    else:
        mon = None
        net = Network(group)

    walls, outer = [], []
    build_seconds = None
    duration = args.duration_ms * ms

    if args.target == "cpp_standalone":
        net.run(duration, namespace={})
        proj = str(work / "standalone")
        t0 = time.perf_counter()
        if args.standalone_timer == "wall":
            device.build(run=False, directory=proj, compile=False)
            patch_standalone_timer(Path(proj) / "network.cpp")
            device.compile_source(proj, "gcc", False, False)
        else:
            device.build(run=False, directory=proj, compile=True)
        build_seconds = time.perf_counter() - t0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            device.run()
            outer.append(time.perf_counter() - t0)
            walls.append(float(device._last_run_time))
        spikes_s = [float(x) for x in mon.t_cross[:]] if mon is not None else None
    else:
        net.store("init")
        t0 = time.perf_counter()
        net.run(args.warmup_ms * ms, namespace={})  # codegen + compile, untimed
        build_seconds = time.perf_counter() - t0
        spikes_s = []
        for _ in range(args.repeats):
            net.restore("init")
            t0 = time.perf_counter()
            net.run(duration, namespace={})
            outer.append(time.perf_counter() - t0)
            walls.append(float(device._last_run_time))
            spikes_s = [float(x) for x in mon.t_cross[:]] if mon is not None else None

    if spikes_s is None:  # --no-spike-detect
        spikes_ms, err, count_ok = None, None, None
    else:
        spikes_ms = [t * 1e3 for t in spikes_s]
        err, count_ok = compare(spikes_ms, ref)
    wall = statistics.median(walls)
    sim_s = args.duration_ms / 1000.0
    result = {
        "target": args.target,
        "method": args.method,
        "dt_ms": args.dt_ms,
        "duration_ms": args.duration_ms,
        "wall_seconds": wall,
        "realtime_factor": sim_s / wall if wall > 0 else None,
        "spikes": None if spikes_ms is None else len(spikes_ms),
        "max_spike_err_ms": err,
        # extras
        "preset": args.preset,
        "reference_spikes": None if ref is None else len(ref),
        "spike_count_ok": count_ok,
        "meets_0_1ms": None if (ref is None or err is None) else bool(count_ok and err <= 0.1),
        "spike_detection": detect,
        "repeats": args.repeats,
        "wall_seconds_all": walls,
        "outer_wall_seconds_all": outer,
        "build_seconds": build_seconds,
        "timer": (
            (
                "Network::_last_run_time around the step loop, "
                + (
                    "patched to steady_clock (wall)"
                    if args.standalone_timer == "wall"
                    else "Brian2's std::clock (CPU time, one syscall per step)"
                )
            )
            if args.target == "cpp_standalone"
            else "Network.run stepping loop (time.time), after before_run"
        ),
        "standalone_timer": args.standalone_timer if args.target == "cpp_standalone" else None,
        "instantaneous_gates": "constant over dt" if inst else "exact",
        "brian2_version": b2.__version__,
        "cxx_flags": list(prefs["codegen.cpp.extra_compile_args_gcc"]),
        "reference_file": str(ref_path),
    }
    if args.print_spikes:
        result["spike_times_ms"] = spikes_ms

    return result


if __name__ == "__main__":
    main()
