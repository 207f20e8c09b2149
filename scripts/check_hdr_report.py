#!/usr/bin/env python3
"""Check a neurostimd report directory with the Python HdrHistogram package
(`hdrhistogram` on PyPI, module `hdrh`): the interval log decodes; each
tag's interval counts add up to what the run says it measured (one per
sample for the loop's latencies, one per adopted plan for the planner's);
the merged interval histograms give the same p99 as summary.json; and each
.hgrm has HdrHistogram's layout and the same total count.

    python3 scripts/check_hdr_report.py REPORT_DIR
"""
import glob
import json
import os
import re
import sys

from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader

NEW = lambda: HdrHistogram(1, 60_000_000_000, 3)


def main(d):
    summary = json.load(open(os.path.join(d, "summary.json")))
    samples = summary["samples"]
    plans = summary["plans_adopted"]
    expected = {
        "sample_to_command": samples,
        "wakeup_jitter": samples if summary["clock"] == "paced" else 0,
        "plan_latency": plans,
        "decision_age": plans,
        "forecast_time": plans - summary["model_errors"],
    }
    reader = HistogramLogReader(os.path.join(d, "latency.hlog"), NEW())
    merged = {}
    while True:
        h = reader.get_next_interval_histogram()
        if h is None:
            break
        merged.setdefault(h.get_tag(), NEW()).add(h)
    for tag, n in expected.items():
        got = merged[tag].get_total_count() if tag in merged else 0
        assert got == n, f"interval log: {tag} has {got} values, expected {n}"
        if n == 0:
            continue
        # Implementations round the rank of a percentile differently (by
        # one value, which in a sparse tail can be a few percent): accept
        # the summary's p99 if it lies between the log's values two ranks
        # either side.
        span = 100.0 * 2 / n
        lo = merged[tag].get_value_at_percentile(max(0.0, 99.0 - span)) / 1000.0
        hi = merged[tag].get_value_at_percentile(min(100.0, 99.0 + span)) / 1000.0
        want = summary["latency"][tag]["p99_us"]
        assert lo * 0.999 - 0.002 <= want <= hi * 1.001 + 0.002, f"{tag}: summary p99 {want} us outside the log's [{lo}, {hi}] us"
        path = os.path.join(d, tag + ".hgrm")
        text = open(path).read()
        m = re.search(r"Total count\s+=\s+(\d+)", text)
        assert m and int(m.group(1)) == n, f"{path}: total count {m and m.group(1)} vs {n}"
        rows = [l.split() for l in text.splitlines()[2:] if l and not l.startswith("#")]
        assert all(len(r) in (3, 4) for r in rows) and float(rows[-1][1]) == 1.0, f"{path}: layout"
    counts = {t: merged[t].get_total_count() for t in merged}
    print(f"{d}: interval log decodes with hdrh ({counts}); p99s and .hgrm totals match summary.json")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
