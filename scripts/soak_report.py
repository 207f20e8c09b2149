#!/usr/bin/env python3
"""Summarise a scripts/soak.sh output directory as a markdown table.

    python3 scripts/soak_report.py OUTDIR

Reads, per run (OUTDIR/run1, OUTDIR/run2): the daemon's exit code, the
report's summary.json, the recording (with numpy: the sample_numbers.npy and
continuous.dat of both continuous streams, and the sidecar), the client's
stats and, for run 2, the rig's own counts. Writes OUTDIR/soak.md and
OUTDIR/soak.json, prints the table, and exits 1 if any run: did not start,
died before SIGTERM or hung after it, exited non-zero, panicked, dropped
records, left an incomplete sidecar, has fewer (or more) recorded samples
than its summary or streams that disagree, or if the client broke the
daemon (final requests unanswered, a long gap without an answer, a sample
counter that stopped).
"""
import json
import os
import re
import sys

import numpy as np


def load(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def text(path, default=""):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def recording(rec):
    """Recorded samples per stream (numpy), their agreement and the sidecar."""
    side = load(os.path.join(rec, "neurostimd.json"), {})
    r = {"sidecar_status": side.get("status"), "sidecar_complete": side.get("complete"),
         "sidecar_counts": side.get("counts", {})}
    base = os.path.join(rec, (side.get("recording") or {}).get("path", "Record Node 100/experiment1/recording1"))
    oebin = load(os.path.join(base, "structure.oebin"), {})
    streams = {}
    sns = []
    for c in oebin.get("continuous", []):
        d = os.path.join(base, "continuous", c["folder_name"].strip("/"))
        nch = int(c["num_channels"])
        sn = np.load(os.path.join(d, "sample_numbers.npy"), mmap_mode="r")
        ts = np.load(os.path.join(d, "timestamps.npy"), mmap_mode="r")
        frames = os.path.getsize(os.path.join(d, "continuous.dat")) // (2 * nch)
        steps = np.diff(np.asarray(sn))
        streams[c["folder_name"].strip("/")] = {
            "sample_numbers": int(len(sn)), "timestamps": int(len(ts)), "dat_frames": int(frames),
            "monotonic": bool(len(steps) == 0 or steps.min() > 0),
            "gaps": int(np.count_nonzero(steps > 1)), "missing_in_gaps": int((steps[steps > 1] - 1).sum()),
        }
        sns.append(np.asarray(sn))
    r["streams"] = streams
    r["streams_agree"] = bool(len(sns) >= 2 and all(len(s) == len(sns[0]) and np.array_equal(s, sns[0]) for s in sns))
    lens = {v["sample_numbers"] for v in streams.values()} | {v["dat_frames"] for v in streams.values()} | \
        {v["timestamps"] for v in streams.values()}
    r["samples"] = lens.pop() if len(lens) == 1 else None
    r["lengths"] = sorted(lens) if r["samples"] is None else None
    return r


def run(d, name):
    r = {"name": name, "dir": d}
    r["exit_code"] = text(os.path.join(d, "exit_code"), None)
    r["died"] = text(os.path.join(d, "died"), None)
    r["stop_ms"] = text(os.path.join(d, "stop_ms"), None)
    r["command"] = text(os.path.join(d, "command"))
    r["start_refusals"] = len([f for f in os.listdir(d) if f.startswith("daemon.stderr.refused")])
    s = load(os.path.join(d, "report", "summary.json"))
    r["summary"] = s
    r["client"] = load(os.path.join(d, "client.json"))
    err = text(os.path.join(d, "daemon.stderr"))
    r["panicked"] = "panicked" in err
    r["log_warnings"] = len(re.findall(r"\bWARN\b", err))
    r["log_errors"] = len(re.findall(r"\bERROR\b", err))
    r["rigs"] = []
    for f in ("rig1.out", "rig2.out"):
        m = re.search(r"rig stopped: (\{.*\})", text(os.path.join(d, f)))
        if m:
            r["rigs"].append(json.loads(m.group(1)))
    rec = os.path.join(d, "rec")
    r["recording"] = recording(rec) if os.path.isdir(rec) else None

    problems = []
    if r["died"]:
        problems.append(f"daemon: {r['died']}")
    if r["exit_code"] != "0":
        problems.append(f"daemon exit code {r['exit_code']}")
    if r["panicked"]:
        problems.append("daemon panicked (stderr)")
    if s is None:
        problems.append("no summary.json")
    rr = r["recording"]
    if rr is None:
        problems.append("no recording")
    elif s is not None:
        if rr["samples"] is None:
            problems.append(f"recorded streams disagree in length: {rr['lengths']}")
        elif rr["samples"] != s["samples"]:
            problems.append(f"recording holds {rr['samples']} samples, the summary {s['samples']}")
        if not rr["streams_agree"]:
            problems.append("the streams' sample numbers differ")
        if not all(v["monotonic"] for v in rr["streams"].values()):
            problems.append("sample numbers not increasing")
        if s.get("records_dropped") or (rr["sidecar_counts"] or {}).get("records_dropped"):
            problems.append("records dropped")
        if rr["sidecar_status"] != "complete" or rr["sidecar_complete"] is not True:
            problems.append(f"sidecar status {rr['sidecar_status']}, complete {rr['sidecar_complete']}")
    c = r["client"]
    if c is None:
        problems.append("no client stats")
    elif not c.get("ok"):
        problems.append(f"client: {c.get('problems')}")
    r["problems"] = problems
    return r


def us(x):
    return "n/a" if x is None else (f"{x:,.1f}" if x < 1000 else f"{x:,.0f}")


def table(runs):
    rows = []

    def row(label, f):
        vals = []
        for r in runs:
            try:
                v = f(r)
            except (KeyError, TypeError, IndexError, AttributeError):
                v = None
            vals.append("n/a" if v is None else str(v))
        rows.append(f"| {label} | " + " | ".join(vals) + " |")

    S = lambda r: r["summary"]  # noqa: E731
    L = lambda r, k: S(r)["latency"][k]  # noqa: E731
    link = lambda r: S(r)["plant_report"]["link"]  # noqa: E731
    row("daemon exit code after SIGTERM (time to exit)", lambda r: f"{r['exit_code']} ({r['stop_ms']} ms)")
    row("starts refused by the planning-budget check (retried)", lambda r: r["start_refusals"])
    row("plant time / wall time (s)", lambda r: f"{S(r)['plant_time_s']:.1f} / {S(r)['wall_time_s']:.1f}")
    row("stop", lambda r: S(r)["stop"])
    row("samples", lambda r: f"{S(r)['samples']:,}")
    row("lost samples", lambda r: f"{S(r)['lost_samples']:,}")
    row("plant interruptions", lambda r: f"{S(r)['plant_interruptions']:,}")
    row("plan misses (plans adopted; samples held at zero)", lambda r: f"{S(r)['plan_misses']:,} ({S(r)['plans_adopted']:,}; {S(r)['plan_miss_samples']:,})")
    row("safety interventions (by cause)", lambda r: f"{S(r)['interventions_total']:,}: " + ", ".join(
        f"{k} {v:,}" for k, v in sorted(S(r)["interventions"].items()) if v) or "0")
    row("overruns (wake-ups > 1 period late)", lambda r: f"{S(r).get('overruns'):,}")
    row("bad frames (cobs / crc / length / oversized / short / unknown)", lambda r: " / ".join(
        str(link(r)["frames"][k]) for k in ("bad_cobs", "bad_crc", "bad_length", "oversized", "short", "unknown_type")))
    row("samples missing in sequence gaps, link stalls, disconnects / reconnects", lambda r: f"{link(r)['sequence_gaps']}, {link(r)['stalls']}, {link(r)['disconnects']} / {link(r)['reconnects']}")
    row("rig: frames dropped / corrupted / garbage bytes (per rig process)", lambda r: "; ".join(
        f"{g['dropped']} / {g['corrupted']} / {g['garbage_bytes']}" for g in r["rigs"]) or None)
    row("recording: samples (numpy) vs summary", lambda r: f"{r['recording']['samples']:,} vs {S(r)['samples']:,}" + (
        " (equal)" if r["recording"]["samples"] == S(r)["samples"] else " (DIFFER)"))
    row("recording: sidecar status, records dropped, gaps in sample numbers", lambda r: f"{r['recording']['sidecar_status']}, {S(r)['records_dropped']}, " + ", ".join(
        f"{v['gaps']} ({v['missing_in_gaps']} samples)" for v in list(r["recording"]["streams"].values())[:1]))
    for k, label in (("sample_to_command", "sample→command"), ("wakeup_jitter", "wake-up jitter")):
        row(f"{label} p50 / p99 / p99.9 / max (µs)", lambda r, k=k: " / ".join(us(L(r, k)[q]) for q in ("p50_us", "p99_us", "p999_us", "max_us")) if L(r, k) else None)
    row("decision age p50 / p99 / max (µs)", lambda r: " / ".join(us(L(r, "decision_age")[q]) for q in ("p50_us", "p99_us", "max_us")))
    row("round trip p50 / p99 / max (µs)", lambda r: " / ".join(us(S(r)["plant_report"]["round_trip_us"][q]) for q in ("p50", "p99", "max")))
    row("client requests (mode)", lambda r: f"{r['client']['requests']:,} ({r['client']['mode']})")
    row("status probe: answered / failed, p50 / p99 / max (ms), longest gap (s)", lambda r: (
        f"{r['client']['probe']['answered']} / {r['client']['probe']['failed']}, "
        f"{r['client']['probe']['p50_ms']:.1f} / {r['client']['probe']['p99_ms']:.1f} / {r['client']['probe']['max_ms']:.0f}, "
        f"{r['client']['probe']['max_gap_s']:.1f}"))
    row("log lines WARN / ERROR", lambda r: f"{r['log_warnings']} / {r['log_errors']}")
    row("verdict", lambda r: "ok" if not r["problems"] else "FAIL: " + "; ".join(r["problems"]))
    head = "| | " + " | ".join(r["name"] for r in runs) + " |\n|---|" + "---|" * len(runs)
    return head + "\n" + "\n".join(rows)


def outcomes(r):
    c = r["client"]
    if not c:
        return ""
    lines = [f"{k}: " + ", ".join(f"{o} ×{n}" for o, n in sorted(v.items())) for k, v in c["outcomes"].items()]
    return f"Client outcomes, {r['name']} (HTTP status or what happened, × count):\n\n" + "\n".join(f"- {x}" for x in lines)


def main(out):
    names = {"run1": "run 1: sim 10 kHz paced, MPC, 2 CPU hogs, API abuse",
             "run2": "run 2: serial rig with faults"}
    runs = [run(os.path.join(out, k), v) for k, v in names.items() if os.path.isdir(os.path.join(out, k))]
    md = table(runs)
    extra = "\n\n".join(outcomes(r) for r in runs if r["client"])
    with open(os.path.join(out, "soak.md"), "w") as f:
        f.write(md + "\n\n" + extra + "\n")
    with open(os.path.join(out, "soak.json"), "w") as f:
        json.dump([{k: v for k, v in r.items() if k != "summary"} for r in runs], f, indent=1)
    print(md)
    print()
    print(extra)
    bad = [r for r in runs if r["problems"]] + ([] if len(runs) == 2 else [{"name": "missing run"}])
    for r in bad:
        print(f"soak: {r['name']}: {r.get('problems', 'run directory missing')}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
