#!/usr/bin/env python3
"""The adaptation run (`neurostimd adapt --quick --json`) against its bounds.

    check_adapt.py RESULTS.json [--expected docs/control/adapt-expected.json]

Asserts the bounds committed in the expected file: drift is detected after
the change and a retrained candidate is swapped in within the run, with the
model's skill before the change and the latency ratio bounded. Recovery
(the error relative to persistence's back within 20% of its pre-change
level) is printed but not enforced in CI: whether it shows within the run
depends on when the swap lands, and the trainer's wall time on a shared
2-core VM varies 2.5x from run to run (the expected file's `not_enforced`
says so, with the measurements).

The run is paced (real time) and trains on the side, so unlike the free-clock
scenarios it does not repeat to the digit: the bounds are the measured
values plus the margin stated in the expected file. Exit 1 naming every
bound missed, with the measured value and the bound. Stdlib only.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_EXPECTED = "docs/control/adapt-expected.json"


def derived(r):
    """The report's figures, plus times counted from the change."""
    d = dict(r)
    c = r.get("change_s")
    for key, name in (
        ("detected_s", "detected_after_change_s"),
        ("swapped_s", "swapped_after_change_s"),
        ("recovered_s", "recovered_after_change_s"),
        ("recovered_relative_s", "recovered_relative_after_change_s"),
    ):
        v = r.get(key)
        d[name] = None if v is None or c is None else v - c
    pre, fin = r.get("pre_change_relative_error"), r.get("final_relative_error")
    d["final_relative_ratio"] = None if not pre or fin is None else fin / pre
    for k, v in (r.get("checks") or {}).items():
        d["checks." + k] = v
    return d


def fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="`neurostimd adapt --quick --json` output")
    ap.add_argument("--expected", default=DEFAULT_EXPECTED)
    a = ap.parse_args()
    with open(a.results, encoding="utf-8") as f:
        r = json.load(f)
    path = a.expected if os.path.isabs(a.expected) else os.path.join(ROOT, a.expected)
    with open(path, encoding="utf-8") as f:
        exp = json.load(f)
    d = derived(r)

    def g(k):
        v = d.get(k)
        return "-" if v is None else fmt(v)

    print(
        f"change {g('change_s')} s; detected {g('detected_s')}, swapped {g('swapped_s')}, "
        f"recovered {g('recovered_s')} (relative to persistence: {g('recovered_relative_s')}); "
        f"RMSE {g('pre_change_rmse_mv')} mV before, {g('final_rmse_mv')} mV at the end ({g('final_ratio')}x); "
        f"relative to persistence {g('pre_change_relative_error')} -> {g('final_relative_error')} "
        f"({g('final_relative_ratio')}x); p99 {g('p99_training_us')} us training vs "
        f"{g('p99_not_training_us')} us ({g('p99_ratio')}x)"
    )
    print("binary's checks: " + ", ".join(f"{k} {v}" for k, v in (r.get("checks") or {}).items()))

    fails = []
    for b in exp["bounds"]:
        key, why = b["field"], b.get("why", "")
        v = d.get(key)
        if "equals" in b:
            ok = v == b["equals"]
            want = f"== {fmt(b['equals'])}"
        elif v is None or isinstance(v, bool):
            ok, want = False, "a number (null: it did not happen in the run)"
        elif "max" in b:
            ok, want = v <= b["max"], f"<= {fmt(b['max'])}"
        else:
            ok, want = v >= b["min"], f">= {fmt(b['min'])}"
        if ok:
            print(f"ok   {key} = {fmt(v) if v is not None else 'null'} ({want})")
        else:
            fails.append(f"{key} = {fmt(v) if v is not None else 'null'}, expected {want}: {why}")
    if fails:
        for at in r.get("attempts") or []:
            print(
                f"attempt: triggered {fmt(at.get('triggered_s'))} s, decided {fmt(at.get('decided_s'))} s, "
                f"{fmt(at.get('wall_training_s'))} s of training (wall): {at.get('note')}",
                file=sys.stderr,
            )
    for f_ in fails:
        print("FAIL " + f_, file=sys.stderr)
    if fails:
        print(
            f"check_adapt: {len(fails)} bound(s) missed ({a.expected}; run {exp.get('command', '')})",
            file=sys.stderr,
        )
        return 1
    print(f"check_adapt: every enforced bound (detection, swap) within {a.expected}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
