#!/usr/bin/env python3
"""Check a neurostimd report directory with the Python HdrHistogram package
(`hdrhistogram` on PyPI, module `hdrh`): the interval log decodes, every
tag's counts add up to the run's sample count, and each .hgrm's total count
matches too.

    python3 scripts/check_hdr_report.py REPORT_DIR
"""
import glob
import json
import os
import re
import sys

from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader


def main(d):
    summary = json.load(open(os.path.join(d, "summary.json")))
    samples = summary["samples"]
    reader = HistogramLogReader(os.path.join(d, "latency.hlog"), HdrHistogram(1, 60_000_000_000, 3))
    totals = {}
    while True:
        h = reader.get_next_interval_histogram()
        if h is None:
            break
        totals[h.get_tag()] = totals.get(h.get_tag(), 0) + h.get_total_count()
    assert totals.get("sample_to_command") == samples, f"interval log {totals} vs {samples} samples"
    for path in glob.glob(os.path.join(d, "*.hgrm")):
        text = open(path).read()
        m = re.search(r"Total count\s+=\s+(\d+)", text)
        assert m and int(m.group(1)) == samples, f"{path}: total count {m and m.group(1)} vs {samples}"
        rows = [l.split() for l in text.splitlines()[2:] if l and not l.startswith("#")]
        assert all(len(r) in (3, 4) for r in rows) and float(rows[-1][1]) == 1.0, f"{path}: layout"
    print(f"{d}: interval log decodes with hdrh ({totals}); .hgrm totals match {samples} samples")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
