#!/usr/bin/env python3
"""Check a `neurostimd paper-study` output directory (CI runs it on --quick).

    check_paper_study.py STUDY_DIR

Fails unless results.json has every variant x seed trained and scored on
every source with finite, positive RMSE of the right lengths, tables.md has
Tables 1-6 each with the rows the plan implies and no non-finite number,
and the CSVs hold every curve. Standard library only.
"""
import csv
import json
import math
import re
import sys
from pathlib import Path


def fail(msg):
    print(f"check_paper_study: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    d = Path(sys.argv[1])
    r = json.loads((d / "results.json").read_text())
    plan, variants, sources = r["plan"], r["variants"], r["sources"]
    seeds, h = plan["seeds"], plan["h_eval"]
    if len(sources) != 3:
        fail(f"expected regular, bursting and the regime change, got {sources}")
    for v in variants:
        runs = [x for x in r["runs"] if x["variant"] == v["name"]]
        if sorted(x["seed"] for x in runs) != sorted(seeds):
            fail(f"{v['name']}: seeds {[x['seed'] for x in runs]}, expected {seeds}")
        for x in runs:
            if [e["source"] for e in x["eval"]] != sources:
                fail(f"{v['name']} seed {x['seed']}: scored on {[e['source'] for e in x['eval']]}")
            for e in x["eval"]:
                for mode, n in (("direct", min(v["t_out"], h)), ("rollout", h)):
                    rm = e[mode]["rmse_mv"]
                    if len(rm) != n or not all(math.isfinite(a) and a > 0 for a in rm):
                        fail(f"{v['name']} seed {x['seed']} {e['source']} {mode}: {rm}")
    for b in r["baselines"]:
        for who in ("persistence", "ar"):
            if len(b[who]["rmse_mv"]) != h:
                fail(f"baseline {who} on {b['source']}")

    text = (d / "tables.md").read_text()
    parts = re.split(r"^### Table (\d+):", text, flags=re.M)
    tables = {int(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}
    if sorted(tables) != [1, 2, 3, 4, 5, 6]:
        fail(f"tables {sorted(tables)}, expected 1-6")

    def rows(t):
        return [l for l in t.splitlines() if l.startswith("| ") and not l.startswith("| source") and not l.startswith("| step") and not l.startswith("| variant")]

    n1 = len(sources) * 4
    n2 = len(sources) * 2
    n3 = len(sources) * (len(plan["horizons"]) + len(plan["horizons_2layer"]) + 2)
    n4 = len(sources) * len(plan["horizons"])
    n5 = plan["base_t_out"] + 1
    n6 = len(variants)
    for k, n in ((1, n1), (2, n2), (3, n3), (4, n4), (5, n5), (6, n6)):
        got = len(rows(tables[k]))
        if got != n:
            fail(f"table {k} has {got} rows, expected {n}")
    if re.search(r"\b(NaN|inf)\b", text):
        fail("a table holds a non-finite number")

    with open(d / "rmse_per_step.csv", newline="") as f:
        curves = {(x["variant"], x["source"], x["mode"]) for x in csv.DictReader(f)}
    want = len(variants) * len(sources) * 2 + 2 * len(sources)
    if len(curves) != want:
        fail(f"rmse_per_step.csv has {len(curves)} curves, expected {want}")
    with open(d / "traces.csv", newline="") as f:
        who = {x["who"] for x in csv.DictReader(f)}
    if "truth" not in who or len(who) < 2:
        fail(f"traces.csv holds {who}")
    print(f"check_paper_study: {d}: {len(r['runs'])} models, tables 1-6 complete")


if __name__ == "__main__":
    main()
