#!/usr/bin/env python3
"""Pospischil et al. (2008) RS/FS/IB/LTS cells in Brian2, as a peer check of
``src/neuron/pospischil.rs`` (specification: ``docs/pospischil.md``).

The equations are written out again here from the specification, not
generated from the Rust code: the same eight states (V, m, h, n, p, q, r, u),
the same parameter sets per class, RK4 (Brian2's ``rk4`` state updater) at
the same fixed step.  The linear-exponential rates use Brian2's ``exprel``
(a/(exp(a/k)-1) = k/exprel(a/k)), which is finite at the singular points.

Protocols (``PROTOCOLS`` below, the same list as the Rust runner written by
``scripts/peer_pospischil.sh``): a background current and one step, given in
nA and converted to uA/cm^2 with the class's membrane area (pi d^2, L = d):
I[uA/cm^2] = I[nA] * 1e5 / area[um^2].  Every run starts from the resting
state with the background alone: V found by bisection on the steady-state
I-V curve (gates at their steady states), computed here in numpy.

The step is applied exactly: the network is run in three segments (before,
during, after the step) with the stimulation parameter changed in between,
so the current is constant over every integration step, as in the Rust
``simulate_params`` (which samples the stimulus at the start of each step).

Spikes: V is recorded at every step; a spike is an upward crossing of 0 mV
timed by linear interpolation between the two bracketing steps, crossings
within 1 ms of the previous spike ignored (the Rust ``SpikeDetector``).

Output: CSV ``protocol,class,k,t_ms`` (one row per spike) to ``--out``.
With ``--compare ours.csv`` the two files are matched protocol by protocol
(spike k against spike k) and a Markdown table is printed.

Example:
    python scripts/peer_pospischil_brian2.py --dt-ms 0.01 --out /tmp/b2.csv \\
        --compare /tmp/ours.csv
"""

import argparse
import csv
import math
import sys
import time

import numpy as np

# Parameter sets per class (docs/pospischil.md, "Parameters"): conductances in
# mS/cm^2, potentials in mV, tau_max in ms, diameter in um (L = d).
BASE = dict(cm=1.0, e_na=50.0, e_k=-90.0, e_ca=120.0, v_x=2.0,
            g_m=0.0, tau_max=1000.0, g_l=0.0, g_t=0.0)
CLASSES = {
    "RS": dict(BASE, d=61.4, g_leak=0.0205, e_leak=-70.3, g_na=56.0, g_kd=6.0,
               v_t=-56.2, g_m=0.075, tau_max=608.0),
    "FS": dict(BASE, d=56.9, g_leak=0.038, e_leak=-70.4, g_na=58.0, g_kd=3.9,
               v_t=-57.9, g_m=0.0787, tau_max=502.0),
    "IB": dict(BASE, d=96.0, g_leak=0.01, e_leak=-70.0, g_na=50.0, g_kd=5.0,
               e_k=-100.0, v_t=-55.0, g_m=0.03, tau_max=1000.0, g_l=0.2),
    "LTS": dict(BASE, d=89.2, g_leak=0.019, e_leak=-50.0, g_na=50.0, g_kd=4.0,
                v_t=-50.0, g_m=0.028, tau_max=4000.0, g_t=0.4, v_x=-7.0),
}

# name, class, background nA, step nA, step on ms, step off ms, duration ms
PROTOCOLS = [
    ("rs_0.2nA", "RS", 0.0, 0.2, 100.0, 1100.0, 1100.0),
    ("rs_0.5nA", "RS", 0.0, 0.5, 100.0, 1100.0, 1100.0),
    ("fs_0.2nA", "FS", 0.0, 0.2, 100.0, 1100.0, 1100.0),
    ("fs_1nA", "FS", 0.0, 1.0, 100.0, 1100.0, 1100.0),
    ("ib_0.15nA", "IB", 0.0, 0.15, 100.0, 2100.0, 2200.0),
    ("ib_0.3nA", "IB", 0.0, 0.3, 100.0, 1100.0, 1100.0),
    ("lts_rebound_-0.2nA", "LTS", 0.0, -0.2, 100.0, 600.0, 1100.0),
    ("lts_onset_-0.15+0.2nA", "LTS", -0.15, 0.2, 100.0, 1100.0, 1100.0),
]

THRESHOLD_MV = 0.0
REFRACTORY_MS = 1.0


def area_um2(c):
    return math.pi * c["d"] ** 2


def na_to_density(c, i_na):
    return i_na * 1e5 / area_um2(c)


# ---------------------------------------------------------------- rest (numpy)
def linexp(a, k):
    x = a / k
    return np.where(np.abs(x) < 1e-6, k * (1 - 0.5 * x), a / np.expm1(np.where(x == 0, 1, x)))


def steady_gates(c, v):
    x = v - c["v_t"]
    am, bm = 0.32 * linexp(13 - x, 4), 0.28 * linexp(x - 40, 5)
    ah, bh = 0.128 * np.exp(-(x - 17) / 18), 4 / (1 + np.exp(-(x - 40) / 5))
    an, bn = 0.032 * linexp(15 - x, 5), 0.5 * np.exp(-(x - 10) / 40)
    pinf = 1 / (1 + np.exp(-(v + 35) / 10))
    aq, bq = 0.055 * linexp(-27 - v, 3.8), 0.94 * np.exp((-75 - v) / 17)
    ar, br = 0.000457 * np.exp((-13 - v) / 50), 0.0065 / (np.exp((-15 - v) / 28) + 1)
    w = v + c["v_x"]
    sinf = 1 / (1 + np.exp(-(w + 57) / 6.2))
    uinf = 1 / (1 + np.exp((w + 81) / 4))
    return dict(m=am / (am + bm), h=ah / (ah + bh), n=an / (an + bn), p=pinf,
                q=aq / (aq + bq), r=ar / (ar + br), u=uinf, s=sinf)

def steady_current(c, v, i_app):
    g = steady_gates(c, v)
    i = (c["g_leak"] * (v - c["e_leak"])
         + c["g_na"] * g["m"] ** 3 * g["h"] * (v - c["e_na"])
         + (c["g_kd"] * g["n"] ** 4 + c["g_m"] * g["p"]) * (v - c["e_k"])
         + (c["g_l"] * g["q"] ** 2 * g["r"] + c["g_t"] * g["s"] ** 2 * g["u"]) * (v - c["e_ca"]))
    return i - i_app


def rest(c, i_app):
    """Lowest upward zero crossing of the steady-state I-V curve in [-120, 0]."""
    vs = np.arange(-120.0, 0.0001, 0.25)
    f = steady_current(c, vs, i_app)
    for k in range(len(vs) - 1):
        if f[k] < 0 <= f[k + 1]:
            a, b = vs[k], vs[k + 1]
            while b - a > 1e-10:
                m = 0.5 * (a + b)
                if steady_current(c, m, i_app) < 0:
                    a = m
                else:
                    b = m
            v = 0.5 * (a + b)
            return v, steady_gates(c, v)
    raise RuntimeError("no rest")


# ---------------------------------------------------------------- Brian2
EQS = """
dv/dt = (i_app + i_stim - i_ion) / c_m : volt
i_ion = g_leak*(v - e_leak) + g_na*m**3*h*(v - e_na)
        + (g_kd*n**4 + g_m*p)*(v - e_k)
        + (g_l*q**2*r + g_t*s_inf**2*u)*(v - e_ca) : amp/meter**2
x = (v - v_t)/mV : 1
vm = v/mV : 1
w = vm + v_x/mV : 1
alpha_m = 0.32*4/exprel((13 - x)/4)/ms : Hz
beta_m = 0.28*5/exprel((x - 40)/5)/ms : Hz
alpha_h = 0.128*exp(-(x - 17)/18)/ms : Hz
beta_h = 4/(1 + exp(-(x - 40)/5))/ms : Hz
alpha_n = 0.032*5/exprel((15 - x)/5)/ms : Hz
beta_n = 0.5*exp(-(x - 10)/40)/ms : Hz
p_inf = 1/(1 + exp(-(vm + 35)/10)) : 1
tau_p = tau_max/(3.3*exp((vm + 35)/20) + exp(-(vm + 35)/20)) : second
alpha_q = 0.055*3.8/exprel((-27 - vm)/3.8)/ms : Hz
beta_q = 0.94*exp((-75 - vm)/17)/ms : Hz
alpha_r = 0.000457*exp((-13 - vm)/50)/ms : Hz
beta_r = 0.0065/(exp((-15 - vm)/28) + 1)/ms : Hz
s_inf = 1/(1 + exp(-(w + 57)/6.2)) : 1
u_inf = 1/(1 + exp((w + 81)/4)) : 1
tau_u = (30.8 + (211.4 + exp((w + 113.2)/5))/(1 + exp((w + 84)/3.2)))/3.7*ms : second
dm/dt = alpha_m*(1 - m) - beta_m*m : 1
dh/dt = alpha_h*(1 - h) - beta_h*h : 1
dn/dt = alpha_n*(1 - n) - beta_n*n : 1
dp/dt = (p_inf - p)/tau_p : 1
dq/dt = alpha_q*(1 - q) - beta_q*q : 1
dr/dt = alpha_r*(1 - r) - beta_r*r : 1
du/dt = (u_inf - u)/tau_u : 1
i_stim : amp/meter**2
i_app : amp/meter**2
c_m : farad/meter**2
g_leak : siemens/meter**2
g_na : siemens/meter**2
g_kd : siemens/meter**2
g_m : siemens/meter**2
g_l : siemens/meter**2
g_t : siemens/meter**2
e_leak : volt
e_na : volt
e_k : volt
e_ca : volt
v_t : volt
v_x : volt
tau_max : second
"""


def run_protocol(b2, proto, dt_ms):
    name, cls, bg_na, amp_na, on, off, dur = proto
    c = CLASSES[cls]
    bg, amp = na_to_density(c, bg_na), na_to_density(c, amp_na)
    v0, g0 = rest(c, bg)
    b2.start_scope()
    b2.defaultclock.dt = dt_ms * b2.ms
    G = b2.NeuronGroup(1, EQS, method="rk4")
    ua = b2.uA / b2.cm ** 2
    ms_cm2 = b2.msiemens / b2.cm ** 2
    G.c_m = c["cm"] * b2.uF / b2.cm ** 2
    for k in ("g_leak", "g_na", "g_kd", "g_m", "g_l", "g_t"):
        setattr(G, k, c[k] * ms_cm2)
    for k in ("e_leak", "e_na", "e_k", "e_ca", "v_t", "v_x"):
        setattr(G, k, c[k] * b2.mV)
    G.tau_max = c["tau_max"] * b2.ms
    G.i_app = bg * ua
    G.i_stim = 0 * ua
    G.v = v0 * b2.mV
    for k in "mhnpqru":
        setattr(G, k, float(g0[k]))
    mon = b2.StateMonitor(G, "v", record=0, when="end")
    net = b2.Network(G, mon)
    t0 = time.perf_counter()
    net.run(on * b2.ms)
    G.i_stim = amp * ua
    net.run((off - on) * b2.ms)
    G.i_stim = 0 * ua
    if dur > off:
        net.run((dur - off) * b2.ms)
    wall = time.perf_counter() - t0
    # 'end' slot: value after the update of the step that ends at t + dt.
    t = np.asarray(mon.t / b2.ms) + dt_ms
    v = np.asarray(mon.v[0] / b2.mV)
    t = np.concatenate([[0.0], t])
    v = np.concatenate([[v0], v])
    return detect(t, v), wall, v0


def detect(t, v):
    out, last = [], -math.inf
    for k in range(1, len(t)):
        if v[k - 1] < THRESHOLD_MV <= v[k]:
            tc = t[k - 1] + (THRESHOLD_MV - v[k - 1]) / (v[k] - v[k - 1]) * (t[k] - t[k - 1])
            if tc - last >= REFRACTORY_MS:
                out.append(tc)
                last = tc
    return out


def read_csv(path):
    spikes = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            spikes.setdefault(row["protocol"], []).append(float(row["t_ms"]))
    return spikes


def compare(ours, theirs, tol_ms):
    print("| protocol | class | spikes ours | spikes Brian2 | matched (within %.1f ms) | max abs diff ms | mean abs diff ms |" % tol_ms)
    print("|---|---|---|---|---|---|---|")
    ok = True
    for name, cls, *_ in PROTOCOLS:
        a, b = ours.get(name, []), theirs.get(name, [])
        d = [abs(x - y) for x, y in zip(a, b)]
        matched = sum(1 for x in d if x <= tol_ms)
        mx = max(d) if d else 0.0
        mean = sum(d) / len(d) if d else 0.0
        good = len(a) == len(b) and matched == len(a)
        ok &= good
        print(f"| {name} | {cls} | {len(a)} | {len(b)} | {matched}/{max(len(a), len(b))} | {mx:.2e} | {mean:.2e} |")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dt-ms", type=float, default=0.01)
    ap.add_argument("--target", default="cython", choices=["cython", "numpy"])
    ap.add_argument("--out", default="/tmp/pospischil_brian2.csv")
    ap.add_argument("--compare", help="our spike CSV (protocol,class,k,t_ms) to match against")
    ap.add_argument("--tol-ms", type=float, default=0.5)
    ap.add_argument("--only", help="comma-separated protocol names")
    args = ap.parse_args()

    import brian2 as b2
    b2.prefs.codegen.target = args.target
    b2.prefs.core.default_float_dtype = np.float64

    protos = PROTOCOLS
    if args.only:
        keep = set(args.only.split(","))
        protos = [p for p in PROTOCOLS if p[0] in keep]
    with open(args.out, "w") as f:
        f.write("protocol,class,k,t_ms\n")
        for proto in protos:
            spikes, wall, v0 = run_protocol(b2, proto, args.dt_ms)
            print(f"# {proto[0]}: rest {v0:.4f} mV, {len(spikes)} spikes, {wall:.1f} s (Brian2 {b2.__version__}, {args.target}, rk4 dt {args.dt_ms} ms)", file=sys.stderr)
            for k, ts in enumerate(spikes):
                f.write(f"{proto[0]},{proto[1]},{k},{ts:.9f}\n")
    if args.compare:
        ok = compare(read_csv(args.compare), read_csv(args.out), args.tol_ms)
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
