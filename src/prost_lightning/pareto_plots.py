"""The report's two figures as PNG bytes (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: servers, CI, containers
import matplotlib.pyplot as plt  # noqa: E402


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def plot_pareto(result: Mapping[str, Any]) -> bytes:
    """TGC against the chosen cost axis; the non-dominated runs are stars joined by a step line."""
    from prost_lightning.pareto_report import X_AXES

    key, label = X_AXES[result["x_axis"]]
    rows = result["runs"]
    front = result["pareto_front"]
    groups = sorted({r["group"] for r in rows})
    colours = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(groups)}
    markers = {"single": "o", "planner_executor": "s"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        on_front = row["name"] in front
        if row.get("tgc_interval"):  # results: the 95 % interval of a configuration's mean over seeds
            low, high = row["tgc_interval"]
            ax.errorbar(row[key], row["tgc"], yerr=[[row["tgc"] - low], [high - row["tgc"]]], fmt="none",
                        ecolor=colours[row["group"]], elinewidth=1, capsize=3, alpha=0.7, zorder=2)
        ax.scatter(row[key], row["tgc"], s=140 if on_front else 50, color=colours[row["group"]],
                   marker="*" if on_front else markers.get(row["system"], "^"),
                   edgecolors="black" if on_front else "none", zorder=3)
        ax.annotate(row["name"], (row[key], row["tgc"]), textcoords="offset points", xytext=(6, 4),
                    fontsize=8, fontweight="bold" if on_front else "normal")
    by_name = {r["name"]: r for r in rows}
    if len(front) > 1:
        xs = [by_name[n][key] for n in front]
        ys = [by_name[n]["tgc"] for n in front]
        ax.step(xs, ys, where="post", color="black", linewidth=1, alpha=0.6, zorder=2, label="Pareto front")
    for group in groups:
        ax.scatter([], [], color=colours[group], label=group)
    if any(r[key] > 0 for r in rows) and result["x_axis"] == "flops":
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("TGC (%)")
    ax.set_ylim(-5, 105)
    ax.set_title(f"{result['title']}: TGC vs {result['x_axis']} (★ = non-dominated)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def plot_subtask_errors(result: Mapping[str, Any]) -> bytes:
    """Grouped bars: for each sub-task index, the share of episodes that failed there, per schedule."""
    rates = result["subtask_error_rates"]
    failing = {int(k) for r in rates.values() for k in r}
    indices = list(range(1, max(failing) + 1)) if failing else [1]  # every index up to the last failing one
    groups = list(rates)
    width = 0.8 / max(len(groups), 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, group in enumerate(groups):
        xs = [k + (i - (len(groups) - 1) / 2) * width for k in indices]
        ax.bar(xs, [100 * rates[group].get(str(k), 0.0) for k in indices], width=width, label=group)
    ax.set_xticks(indices)
    ax.set_xlabel("sub-task index k")
    ax.set_ylabel("episodes failed at k (%)")
    ax.set_title(f"{result['title']}: sub-task error rates per schedule", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if groups:
        ax.legend(fontsize=8)
    return _png(fig)
