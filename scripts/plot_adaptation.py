#!/usr/bin/env python3
"""Plot an adaptation run (`neurostimd adapt --out DIR`): the rolling
forecast error of the model in use and of persistence, with the regime
change, drift detection, retraining attempts and swaps marked.

    python3 scripts/plot_adaptation.py DIR/report OUT.png

Needs numpy and matplotlib (a venv under target/ or /tmp).
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def main(report, out):
    a = json.load(open(os.path.join(report, "adaptation.json")))
    d = np.genfromtxt(os.path.join(report, "forecast_error.csv"), delimiter=",", names=True)
    fig, ax = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    t = d["t_s"]
    ax[0].plot(t, d["rolling_forecast_rmse_mv"], label="model in use", color="C0")
    ax[0].plot(t, d["rolling_persistence_rmse_mv"], label="persistence (same targets)", color="0.6")
    pre = a["pre_change_rmse_mv"]
    ax[0].axhspan(0, 1.2 * pre, color="C2", alpha=0.12, label="within 20% of the pre-change error")
    ax[1].plot(t, d["rolling_forecast_rmse_mv"] / d["rolling_persistence_rmse_mv"], color="C0")
    ax[1].axhline(a["pre_change_relative_error"], color="C2", ls=":", label="before the change")
    for axis in ax:
        axis.axvline(a["change_s"], color="k", ls="--", lw=1)
        if a["detected_s"] is not None:
            axis.axvline(a["detected_s"], color="C3", lw=1)
        for at in a["attempts"]:
            c = "C2" if at["accepted"] else "C1"
            axis.axvspan(at["decided_s"] - at["wall_training_s"], at["decided_s"], color=c, alpha=0.15)
            axis.axvline(at["decided_s"], color=c, lw=1.5)
    ax[0].set_ylabel("rolling RMS forecast\nerror (mV, 5 s)")
    ax[1].set_ylabel("model / persistence")
    ax[1].set_xlabel("plant time (s)")
    ax[0].legend(loc="upper left", fontsize=8)
    ax[1].legend(loc="upper left", fontsize=8)
    ax[0].set_title(
        "regime change (dashed), drift detected (red), training (shaded) and decision:"
        " accepted (green) / rejected (orange)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
