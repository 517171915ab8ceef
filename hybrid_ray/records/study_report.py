"""A tune-lr study's report (sweep/study.py): report.md, for a paper's appendix (the command, versions, data, the
cost of each stage, the ranked table with mean ± std and Welch's test against the best, each arm's chosen learning
rate and the LR curve that chose it), and study.png (each arm's LR curve beside stage 2's ranking)."""

from __future__ import annotations

import math
import platform
import tempfile
from pathlib import Path
from typing import Any

from hybrid_ray import storage
from hybrid_ray.layout import StudyLayout, SweepLayout
from hybrid_ray.records import folders
from hybrid_ray.records.stage_costs import stage_seconds
from hybrid_ray.records.report import arm_summary, ranked_table
from hybrid_ray.records.significance import METHOD


def _versions() -> str:
    import importlib.metadata as meta

    out = [f"python {platform.python_version()}"]
    for name in ("hybrid-ray", "torch", "ray", "flash-linear-attention"):
        try:
            out.append(f"{name} {meta.version(name)}")
        except meta.PackageNotFoundError:
            continue
    return ", ".join(out)


def stage_rows(sweep: SweepLayout) -> list[dict[str, Any]]:
    """A stage's trials as its sweep.json holds them ([] for a stage that did not run)."""
    return (folders.read_json(sweep.results).get("trials") or []) if storage.exists(sweep.results) else []


def stage_cost(rows: list[dict[str, Any]]) -> dict[str, float]:
    """What a stage's trials trained: trials, trial-steps, tokens and the trials' own wall seconds."""
    return {"trials": len(rows), "trial_steps": sum(r.get("step") or 0 for r in rows),
            "tokens": sum(r.get("tokens_seen") or 0 for r in rows),
            "trial_seconds": sum(r.get("wall_seconds") or 0.0 for r in rows)}


def _curve_table(choices: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| arm | chosen lr | its final val loss | LR curve (lr: final val loss, status) | note |",
             "|---|---|---|---|---|"]
    for arm, choice in choices.items():
        points = "; ".join(f"{p['lr']:.3g}: " + (f"{p['val_loss']:.4f}" if isinstance(p.get("val_loss"), (int, float))
                                                  else "-") + ("" if p["status"] == "finished" else f" ({p['status']}"
                                                               f"{' at step ' + str(p['step']) if p.get('step') else ''})")
                           for p in choice["curve"])
        note = ("grid extended once: " + choice["edge"]) if choice.get("extended") else ""
        if choice.get("still_at_edge"):
            note += "; after the one extension, still at the edge: " + choice["still_at_edge"]
        lines.append(f"| {arm} | {choice['lr']:.3g} | {choice['val_loss']:.4f} | {points} | {note} |")
    return lines


def write(study: StudyLayout, base: Any, options: Any, choices: dict[str, dict[str, Any]],
          rows: list[dict[str, Any]], command: str | None = None) -> tuple[str, str | None]:
    """report.md and study.png in the study's folder; returns their paths (no figure without a history)."""
    seconds = stage_seconds(study)
    stages = [("1: LR search (ASHA within each arm)", study.lr_search), ("1b: LR grid extension (FIFO)",
                                                                         study.lr_extension),
              ("2: comparison (FIFO, every seed to the end)", study.comparison)]
    costs = [(label, sweep, stage_cost(stage_rows(sweep) if sweep != study.comparison else rows))
             for label, sweep in stages]
    data = base.data
    lines = [f"# {base.name}: each arm at its own best learning rate, {options.seeds} seed(s)", "",
             f"Command: `{command or 'hybrid-ray sweep ' + ' '.join('--grid ' + g for g in options.grid) + ' --tune-lr'}`",
             "", f"Versions: {_versions()}", "",
             f"Data: {data.source if hasattr(data, 'source') else data}"
             + (f", tokenizer {data.tokenizer}" if getattr(data, "tokenizer", None) else ""), "",
             f"Stage 1 budget: {options.tune_steps or base.train.steps} steps a trial"
             + ("" if options.tune_steps else " (the full run)")
             + f"; stage 2: {base.train.steps} steps a trial. Stage 2 trains all {options.seeds} seed(s) "
               "of every arm (stage 1's best trial is not counted as one).", "",
             "## Cost of each stage", "",
             "| stage | trials | trial-steps | tokens | trials' wall s | stage wall s |", "|---|---|---|---|---|---|"]
    for (label, sweep, cost), key in zip(costs, ("lr", "lr-extend", "compare")):
        lines.append(f"| {label} | {cost['trials']} | {cost['trial_steps']} | {cost['tokens']:,} | "
                     f"{cost['trial_seconds']:.0f} | {seconds.get(key, 0.0):.0f} |")
    lines += ["", "## Ranking (stage 2)", "", f"Mean ± std over seeds of each trial's best validation loss; vs best: "
              f"{METHOD}.", "", "```", ranked_table(rows), "```", "",
              "## Each arm's learning rate (stage 1)", "",
              "The finished trial with the lowest final validation loss; trials ASHA stopped show the step it "
              "stopped them at.", "", *_curve_table(choices), ""]
    storage.write_bytes(study.report, "\n".join(lines).encode())
    figure = None
    if any(r.get("history") for r in rows):
        with tempfile.TemporaryDirectory() as tmp:
            local = str(Path(tmp, "study.png"))
            plot_study(choices, rows, local, title=base.name)
            storage.write_bytes(study.figure, Path(local).read_bytes())
            figure = study.figure
    return study.report, figure


def plot_study(choices: dict[str, dict[str, Any]], rows: list[dict[str, Any]], path: str, title: str = "") -> None:
    """Left, the LR panel: each arm's final validation loss against its learning rate (stage 1; the chosen one
    circled, hollow marks for trials that did not finish). Right: stage 2's mean best validation loss ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lr_ax, rank_ax) = plt.subplots(1, 2, figsize=(13, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (arm, choice) in enumerate(choices.items()):
        color = colors[i % len(colors)]
        done = [p for p in choice["curve"] if isinstance(p.get("val_loss"), (int, float)) and math.isfinite(p["val_loss"])]
        finished = [p for p in done if p["status"] == "finished"]
        lr_ax.plot([p["lr"] for p in finished], [p["val_loss"] for p in finished], "o-", color=color, label=arm)
        cut = [p for p in done if p["status"] != "finished"]
        lr_ax.plot([p["lr"] for p in cut], [p["val_loss"] for p in cut], "o", mfc="none", color=color)
        lr_ax.plot([choice["lr"]], [choice["val_loss"]], "o", ms=14, mfc="none", color=color)
    lr_ax.set_xscale("log")
    lr_ax.set_xlabel("learning rate (stage 1)")
    lr_ax.set_ylabel("final val loss")
    lr_ax.set_title("LR search: chosen LR circled, hollow = stopped by ASHA")
    lr_ax.legend(fontsize=7)
    summary = [a for a in arm_summary(rows) if math.isfinite(a["best_val_loss"])]
    names = [a["arm"] for a in summary]
    rank_ax.errorbar(range(len(summary)), [a["best_val_loss"] for a in summary],
                     yerr=[a["best_val_loss_std"] for a in summary], fmt="o", capsize=4)
    rank_ax.set_xticks(range(len(summary)), names, rotation=45, ha="right", fontsize=8)
    rank_ax.set_ylabel("best val loss, mean ± std over seeds")
    rank_ax.set_title("stage 2: each arm at its chosen LR")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
