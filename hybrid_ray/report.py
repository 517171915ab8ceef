"""results.json and plots: one run's curves, and comparisons across runs."""

from __future__ import annotations

import math
from typing import Any

PANELS = [
    ("loss", [("loss", "train"), ("val_loss", "validation")]),
    ("next-token accuracy", [("val_accuracy", "validation")]),
    ("perplexity", [("val_perplexity", "validation")]),
    ("tokens/s", [("tokens_per_s", "total"), ("tokens_per_s_per_worker", "per worker")]),
]


def series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in history if key in r and r[key] is not None and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


def summarize(history: list[dict]) -> dict[str, Any]:
    """Final and best validation numbers, the last train loss, and mean throughput (first log window excluded)."""
    evals = [r for r in history if "val_loss" in r]
    logs = [r for r in history if "loss" in r]
    out: dict[str, Any] = {}
    if evals:
        final = evals[-1]
        best = min(evals, key=lambda r: r["val_loss"])
        keys = [k for k in final if k.startswith("val_")]
        out["final"] = {"step": final["step"], **{k: final[k] for k in keys}}
        out["best"] = {"step": best["step"], **{k: best[k] for k in keys}}
    if logs:
        out["final_train_loss"] = logs[-1]["loss"]
        steady = logs[1:] or logs
        for key in ("tokens_per_s", "tokens_per_s_per_worker", "mfu"):
            values = [r[key] for r in steady if key in r]
            if values:
                out[f"mean_{key}"] = sum(values) / len(values)
        out["peak_memory_gib"] = max(r.get("memory_gib", 0.0) for r in logs)
    return out


def plot_runs(runs: dict[str, list[dict]], path: str, title: str = "") -> None:
    """One figure, four panels (loss, accuracy, perplexity, throughput), one line per run and series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, (panel, keys) in zip(axes.flat, PANELS):
        for run, history in runs.items():
            for key, label in keys:
                steps, values = series(history, key)
                if steps:
                    name = label if len(runs) == 1 else f"{run} ({label})"
                    ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=name)
        ax.set_title(panel)
        ax.set_xlabel("step")
        if panel == "perplexity":
            ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
