#!/usr/bin/env python3
"""Plots of a `neurostimd paper-study` run (docs/paper-reproduction.md).

    plot_paper_study.py STUDY_DIR [FIG_DIR]

Reads STUDY_DIR/rmse_per_step.csv and traces.csv, writes PNGs into FIG_DIR
(default STUDY_DIR):
  paper-study-traces.png   forecasts overlaid on the true trace around a
                           spike (regular) and a burst (bursting)
  paper-study-horizon.png  RMSE vs horizon step for each training horizon
                           (rollout to the common evaluation horizon)
  paper-study-heads.png    RMSE vs horizon step for the output heads and
                           orders and for 2 layers (direct forecasts)
Needs matplotlib only (scripts/paper_study.sh makes a venv under target/).
"""
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main():
    study = Path(sys.argv[1])
    figs = Path(sys.argv[2]) if len(sys.argv) > 2 else study
    figs.mkdir(parents=True, exist_ok=True)
    rows = read(study / "rmse_per_step.csv")
    sources = list(dict.fromkeys(r["source"] for r in rows))
    curves = defaultdict(list)  # (variant, source, mode) -> [(step, mean, sd)]
    for r in rows:
        curves[(r["variant"], r["source"], r["mode"])].append(
            (float(r["t_ms"]), float(r["rmse_mean_mv"]), float(r["rmse_sd_mv"]))
        )

    def line(ax, key, label, **kw):
        pts = curves.get(key)
        if not pts:
            return
        pts.sort()
        t = [p[0] for p in pts]
        m = [p[1] for p in pts]
        sd = [p[2] for p in pts]
        (ln,) = ax.plot(t, m, label=label, **kw)
        if any(s > 0 for s in sd):
            ax.fill_between(
                t,
                [a - b for a, b in zip(m, sd)],
                [a + b for a, b in zip(m, sd)],
                color=ln.get_color(),
                alpha=0.15,
                linewidth=0,
            )

    variants = list(dict.fromkeys(r["variant"] for r in rows))

    # Error vs horizon, per training horizon (rollout to h_eval).
    fig, axes = plt.subplots(1, len(sources), figsize=(5 * len(sources), 4), sharey=True)
    horizon_vars = [v for v in variants if "linear reversed" in v]
    cmap = plt.get_cmap("viridis")
    touts = sorted({int(v.rsplit(" ", 1)[1]) for v in horizon_vars})
    for ax, src in zip(axes, sources):
        for v in horizon_vars:
            t_out = int(v.rsplit(" ", 1)[1])
            c = cmap(touts.index(t_out) / max(1, len(touts) - 1))
            style = "-" if v.startswith("L1") else "--"
            line(ax, (v, src, "rollout"), f"{v.split(' ')[0]} t_out {t_out}", color=c, linestyle=style)
        line(ax, ("persistence", src, "rollout"), "persistence", color="0.6", linestyle=":")
        line(ax, ("AR", src, "rollout"), "AR", color="0.3", linestyle=":")
        ax.set_title(src)
        ax.set_xlabel("horizon (ms)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("RMSE (mV), mean ± sd over seeds")
    axes[-1].legend(fontsize=7, ncol=2)
    fig.suptitle("Error vs horizon by training horizon t_out (rollout where t_out < horizon; solid 1 layer, dashed 2 layers)", fontsize=9)
    fig.tight_layout()
    fig.savefig(figs / "paper-study-horizon.png", dpi=90)
    plt.close(fig)

    # Heads and orders (direct, base horizon).
    base = max(
        (v for v in variants if v.startswith("L1 mlp")),
        key=lambda v: 0,
        default=None,
    )
    b = base.rsplit(" ", 1)[1] if base else "20"
    head_vars = [
        f"L1 linear reversed t_out {b}",
        f"L1 linear forward t_out {b}",
        f"L1 mlp reversed t_out {b}",
        f"L1 mlp forward t_out {b}",
        f"L2 linear reversed t_out {b}",
    ]
    fig, axes = plt.subplots(1, len(sources), figsize=(5 * len(sources), 4), sharey=True)
    for ax, src in zip(axes, sources):
        for v, style in zip(head_vars, ["-", "-", "--", "--", "-."]):
            line(ax, (v, src, "direct"), v.replace(f" t_out {b}", ""), linestyle=style)
        ax.set_title(src)
        ax.set_xlabel("horizon (ms)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("RMSE (mV), mean ± sd over seeds")
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"Output head and order, and depth (t_out {b}, direct forecasts)", fontsize=9)
    fig.tight_layout()
    fig.savefig(figs / "paper-study-heads.png", dpi=90)
    plt.close(fig)

    # Forecasts overlaid on the truth around a spike and a burst.
    tr = read(study / "traces.csv")
    tsrc = list(dict.fromkeys(r["source"] for r in tr))
    who = [w for w in dict.fromkeys(r["who"] for r in tr) if w != "truth"]
    if tsrc and who:
        fig, axes = plt.subplots(len(who), len(tsrc), figsize=(6 * len(tsrc), 2.2 * len(who)), sharex="col", squeeze=False)
        for j, src in enumerate(tsrc):
            truth = [(float(r["t_ms"]), float(r["v_mv"])) for r in tr if r["source"] == src and r["who"] == "truth"]
            for i, w in enumerate(who):
                ax = axes[i][j]
                ax.plot([p[0] for p in truth], [p[1] for p in truth], color="black", linewidth=1.2, label="true V")
                by_anchor = defaultdict(list)
                for r in tr:
                    if r["source"] == src and r["who"] == w:
                        by_anchor[float(r["anchor_ms"])].append((float(r["t_ms"]), float(r["v_mv"])))
                for k, (a, pts) in enumerate(sorted(by_anchor.items())):
                    ax.plot([a] + [p[0] for p in pts], [math.nan] + [p[1] for p in pts], color=plt.get_cmap("tab10")(k % 10), linewidth=0.9, alpha=0.8)
                ax.set_title(f"{src}: {w}", fontsize=8)
                ax.set_ylabel("V (mV)")
                ax.grid(alpha=0.3)
            axes[-1][j].set_xlabel("time (ms); coloured: forecasts from anchors every 2.5 ms")
        fig.tight_layout()
        fig.savefig(figs / "paper-study-traces.png", dpi=80)
        plt.close(fig)
    print(f"plots in {figs}")


if __name__ == "__main__":
    main()
