#!/usr/bin/env python3
"""CI: scrape a running daemon's metrics and parse them with the reference
Prometheus client's text parser (prometheus_client), which refuses text
the Prometheus server would refuse.

Usage: check_metrics.py path/to/neurostimd
"""
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    binary = os.path.abspath(sys.argv[1])
    with tempfile.TemporaryDirectory() as d:
        cfg = os.path.join(d, "c.toml")
        with open(cfg, "w") as f:
            f.write('[service]\nmetrics = "127.0.0.1:0"\n')
        p = subprocess.Popen(
            [binary, "--plant", "sim", "--duration", "6", "--report", os.path.join(d, "rep"),
             "--config", cfg],
            cwd=os.getcwd(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        url = None
        t0 = time.time()
        for line in p.stderr:
            m = re.search(r"metrics on (http://\S+/metrics)", line)
            if m:
                url = m.group(1)
                break
            if time.time() - t0 > 60:
                break
        if url is None:
            p.kill()
            print("the daemon did not say where its metrics are", file=sys.stderr)
            return 1
        time.sleep(3)  # a few one-second latency intervals
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        p.stderr.read()
        rc = p.wait(timeout=60)
        if rc != 0:
            print(f"daemon exited {rc}", file=sys.stderr)
            return 1
    need = {
        "neurostimd_samples": "counter",
        "neurostimd_lost_samples": "counter",
        "neurostimd_plan_misses": "counter",
        "neurostimd_safety_interventions": "counter",
        "neurostimd_stimulation_charge_nc_cm2": "counter",
        "neurostimd_latency_seconds": "summary",
        "neurostimd_retraining_state": "gauge",
        "neurostimd_model_info": "gauge",
        "neurostimd_forecast_error_mv": "gauge",
        "neurostimd_guard_handovers": "counter",
        "neurostimd_guard_fallback": "gauge",
    }
    bad = [f"{n} ({t})" for n, t in need.items() if n not in families or families[n].type != t]
    if bad:
        print("missing or mistyped families: " + ", ".join(bad), file=sys.stderr)
        print(text, file=sys.stderr)
        return 1
    samples = sum(len(f.samples) for f in families.values())
    quantiles = [s for s in families["neurostimd_latency_seconds"].samples
                 if s.labels.get("kind") == "sample_to_command" and "quantile" in s.labels]
    if len(quantiles) != 4 or not all(s.value > 0 for s in quantiles):
        print(f"sample_to_command quantiles: {quantiles}", file=sys.stderr)
        return 1
    print(f"prometheus_client parsed {len(families)} families, {samples} samples; "
          f"sample->command p99 {quantiles[2].value * 1e6:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
