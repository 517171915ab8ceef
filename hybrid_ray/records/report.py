"""results.json and plots: one run's curves, and comparisons across runs."""

from __future__ import annotations

import dataclasses
import math
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid_ray import storage
from hybrid_ray.errors import HybridRayError
from hybrid_ray.layout import ComparisonLayout, RunLayout, SweepLayout, comparison_dir
from hybrid_ray.records import edge, folders
from hybrid_ray.records.significance import METHOD, against_best

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


# --- comparisons: sweeps and `hybrid-ray compare` ------------------------------------------------------------------

# what a numeric axis of the sweep figure is called (a spec field's axis keeps its own name)
AXIS_LABELS = {"attention_ratio": "attention share (attention layers / layers)",
               "variant": "attention share of the variant", "lr": "learning rate"}


def trial_row(arm: str, settings: dict[str, Any], seed: int, name: str, run: RunLayout, results: dict | None,
              value: float | None, sweep: str | None = None) -> dict[str, Any]:
    """One trial (or run) of a comparison, from its results.json: what sweep.json and the table hold. `sweep` names
    the sweep the trial belongs to (None: a run of its own)."""
    row: dict[str, Any] = {"arm": arm, "sweep": sweep, "settings": settings, "seed": seed, "name": name,
                           "run_dir": run.dir, "value": value}
    if results is None:
        return {**row, "status": "no results"}
    step, total = results.get("step", 0), results.get("total_steps", 0)
    status = results.get("status", "?")
    best, final = results.get("best") or {}, results.get("final") or {}
    return {
        **row,
        "status": status,
        "stopped_at_step": step if step < total else None,
        "step": step,
        "total_steps": total,
        "params": (results.get("params") or {}).get("total"),
        "non_embedding_params": (results.get("params") or {}).get("non_embedding"),
        "attention_layers": results.get("attention_layers"),
        "best": best,
        "final": final,
        "tokens_seen": results.get("tokens_seen"),
        "wall_seconds": results.get("wall_seconds"),
        "train_seconds": results.get("train_seconds"),
        "compile_seconds": results.get("compile_seconds", 0.0),
        "tokens_per_s": results.get("mean_tokens_per_s"),
        "spec": results.get("spec"),
        "evals": results.get("evals", {}),
        "diverged": results.get("diverged"),  # {"step", "lr"}: where its loss stopped being finite
        "history": results.get("history", []),
    }


def diverged_at(diverged: dict[str, Any]) -> str:
    """Where a run's loss stopped being finite (its diverged.json): `at step 12 (lr 0.0008)`."""
    lr = diverged.get("lr")
    return f"at step {diverged.get('step', '?')}" + (f" (lr {lr:.3g})" if isinstance(lr, (int, float)) else "")


def evaluations(row: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """A trial's evaluations (finite validation loss) by step; of two at one step (a resumed trial evaluates its
    checkpoint's step again) the later one."""
    return {r["step"]: r for r in row.get("history") or []
            if r.get("val_loss") is not None and math.isfinite(r["val_loss"])}


def common_step(rows: list[dict[str, Any]]) -> int | None:
    """The largest step at which every trial with a validation curve (failed and diverged ones aside) was evaluated:
    there, and only there, every arm is compared after the same training (None when no step is shared)."""
    steps = [set(evaluations(r)) for r in rows if r.get("status") not in ("failed", "diverged")]
    steps = [s for s in steps if s]
    shared = set.intersection(*steps) if steps else set()
    return max(shared) if shared else None


def at_step(row: dict[str, Any], key: str, step: int | None) -> float | None:
    """A trial's `key` (val_loss, val_recall, ...) at its evaluation of `step`, None when it has none there."""
    value = evaluations(row).get(step, {}).get(key) if step is not None else None
    return value if value is not None and math.isfinite(value) else None


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def _axis(arm: dict[str, Any]) -> str | None:
    """The arm's first swept axis (what its value is), None when unknown."""
    return next(iter(arm.get("settings") or {}), None)


def arm_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows grouped by arm (an arm of one sweep: two sweeps' arms of one name stay apart): mean and standard deviation
    over seeds of the best validation loss (and accuracy; no deviation from one seed), of the loss and recall at the
    common step (every trial's), the steps its trials ran, seeds finished of seeds run, ranked with arms that ran to
    the end first (an arm stopped early saw fewer tokens: not comparable) and arms whose every seed diverged last,
    latest divergence first (their loss is no number; a seed that diverged counts in no mean)."""
    arms: dict[tuple[str | None, str], list[dict]] = {}
    for row in rows:
        arms.setdefault((row.get("sweep"), row["arm"]), []).append(row)
    several = len({sweep for sweep, _ in arms}) > 1
    step = common_step(rows)
    out = []
    for (sweep, arm), every in arms.items():
        members = [m for m in every if m["status"] != "diverged"]
        diverged = [m for m in every if m["status"] == "diverged"]
        reasons = {f"diverged {m.get('reason') or diverged_at(m.get('diverged') or {})}" for m in diverged}
        if diverged and members:
            reasons.add(f"{len(diverged)} of {len(every)} seeds diverged")
        losses = [m["best"]["val_loss"] for m in members if (m.get("best") or {}).get("val_loss") is not None]
        accs = [m["best"]["val_accuracy"] for m in members if (m.get("best") or {}).get("val_accuracy") is not None]
        recalls = [_recall(m) for m in members if _recall(m) is not None]
        loss, loss_std = _mean_std(losses) if losses else (math.inf, 0.0)
        acc, acc_std = _mean_std(accs) if accs else (math.nan, 0.0)
        common = [v for m in members if (v := at_step(m, "val_loss", step)) is not None]
        common_recall = [v for m in members if (v := at_step(m, "val_recall", step)) is not None]
        complete = all(m["status"] == "finished" for m in every)
        scores = {}
        for task in sorted({t for m in members for t, r in (m.get("evals") or {}).items() if "acc" in r}):
            values = [m["evals"][task]["acc"] for m in members if "acc" in (m.get("evals") or {}).get(task, {})]
            scores[task] = _mean_std(values)
        out.append({
            "arm": arm, "sweep": sweep, "id": f"{sweep}/{arm}" if sweep else arm,
            "label": f"{arm} ({sweep})" if several and sweep else arm,
            "settings": every[0].get("settings") or {}, "value": every[0]["value"], "seeds": len(every),
            "complete": complete,
            "finished_seeds": sum(m["status"] == "finished" for m in every), "scored_seeds": len(losses),
            "diverged_seeds": len(diverged), "diverged": not members,
            "diverged_at": max(((m.get("diverged") or {}).get("step") or 0 for m in diverged), default=None),
            "reasons": sorted(reasons | {f"{m['status']} {m['reason']}" for m in members if m.get("reason")}),
            "statuses": sorted({m["status"] for m in every}), "best_val_loss": loss, "best_val_loss_std": loss_std,
            "best_val_accuracy": acc, "best_val_accuracy_std": acc_std, "params": every[0].get("params"),
            "tokens_seen": max((m.get("tokens_seen") or 0) for m in every),
            "steps": sorted(m["step"] for m in members if m.get("step") and m["status"] != "not started"),
            "total_steps": max((m.get("total_steps") or 0) for m in every) or None,
            "stopped_at_step": max((m.get("stopped_at_step") or 0 for m in members), default=0) or None,
            "common_step": step, "losses_at_common": common,
            "loss_at_common": _mean_std(common) if common else None,
            "recall_at_common": _mean_std(common_recall) if common_recall else None,
            "evals": scores, "losses": losses, "recalls": recalls,
            "recall": _mean_std(recalls) if recalls else None,
        })
    # an arm is tested only against arms trained alike: of its own sweep (runs: among runs), of as many steps
    for group in dict.fromkeys(_like(a) for a in out):
        alike = [a for a in out if _like(a) == group]
        for key, metric, higher in (("loss_vs_best", "losses", False), ("recall_vs_best", "recalls", True)):
            verdicts = against_best({a["id"]: a[metric] for a in alike if a["complete"]}, higher_is_better=higher)
            for arm in alike:
                arm[key] = str(verdicts[arm["id"]]) if arm["id"] in verdicts else None
    # arms whose every seed diverged last, the one that trained longest first
    return sorted(out, key=lambda a: (a["diverged"], not a["complete"], a["best_val_loss"], -(a["diverged_at"] or 0)))


def _like(arm: dict[str, Any]) -> tuple[str | None, int | None]:
    """What an arm's significance test compares it within: its sweep and its steps."""
    return arm["sweep"], arm["total_steps"]


def _recall(row: dict[str, Any]) -> float | None:
    """A trial's recall score: its last evaluation's (the end of the run), else its best evaluation's."""
    for record in (row.get("final") or {}, row.get("best") or {}):
        if record.get("val_recall") is not None:
            return record["val_recall"]
    return None


def _grid_number(arm: dict[str, Any], axis: str) -> float | None:
    """The arm's value along `axis` as a number: an attention share as the grid records it (the arm's value), a
    learning rate or numeric spec field as given; None for a value that is no number (a variant's name: variants
    differ in more than their share)."""
    if axis in edge.BOUNDS and _axis(arm) == axis:
        return arm["value"]
    try:
        value = float(arm["settings"].get(axis))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def grid_edges(summary: list[dict[str, Any]]) -> list[tuple[str, edge.Edge]]:
    """(sweep, Edge) for every numeric axis of each sweep whose best arm (the table's first of that sweep) sits at the
    grid's edge: the optimum may lie beyond it (records/edge.py). Runs of their own are no grid."""
    out = []
    for sweep in dict.fromkeys(a["sweep"] for a in summary if a["sweep"]):
        arms = [a for a in summary if a["sweep"] == sweep]
        best = _best_of(summary, sweep)
        for axis in (best or {}).get("settings") or {}:
            value = _grid_number(best, axis)
            values = [v for a in arms if (v := _grid_number(a, axis)) is not None]
            found = edge.grid_edge(axis, values, value) if value is not None else None
            if found:
                out.append((sweep, found))
    return out


def _best_of(summary: list[dict[str, Any]], sweep: str | None) -> dict[str, Any] | None:
    """A sweep's best arm: its first in the table's ranking with a loss."""
    return next((a for a in summary if a["sweep"] == sweep and math.isfinite(a["best_val_loss"])), None)


def edge_lines(summary: list[dict[str, Any]]) -> list[str]:
    """The edge notes as the table and the console say them (the sweep named when several are compared)."""
    found = grid_edges(summary)
    several = len({a["sweep"] for a in summary}) > 1
    return [f"note{f' ({sweep})' if several else ''}: {found_edge}" for sweep, found_edge in found]


def _beyond(rows: list[dict[str, Any]], step: int | None) -> bool:
    """Whether some trial was evaluated past the common step (so it tells something the end of each run does not)."""
    return step is not None and any(max(evaluations(r), default=0) > step for r in rows)


def steps_text(arm: dict[str, Any]) -> str:
    """The steps an arm's trials ran: `120` when all ran their 120, `40-60/120` when some stopped at 40 to 60."""
    steps, total = arm["steps"], arm["total_steps"]
    if not steps:
        return "-"
    ran = str(steps[0]) if steps[0] == steps[-1] else f"{steps[0]}-{steps[-1]}"
    return ran if not total or steps[0] == total else f"{ran}/{total}"


def _mean_text(stat: tuple[float, float] | None, n: int, digits: int = 4) -> str:
    if stat is None or not math.isfinite(stat[0]):
        return "-"
    return f"{stat[0]:.{digits}f}" + (f" ± {stat[1]:.{digits}f}" if n > 1 else "")


def ranked_table(rows: list[dict[str, Any]]) -> str:
    """The terminal table: arms ranked by mean best validation loss over seeds (± std), the steps they ran, their
    loss at the step every trial reached (when some ran further), parameters and tokens seen, the recall score (± std
    over seeds) and whether each arm's loss and recall differ from the best arm's by more than the seed noise
    (significance.METHOD, named under the table); arms that did not run to the end are marked, each arm's sweep is
    named when several are compared, and a best value at its grid's edge is noted."""
    summary = arm_summary(rows)
    tasks = sorted({t for arm in summary for t in arm["evals"]})
    with_recall = any(arm["recall"] for arm in summary)
    sweeps = len({arm["sweep"] for arm in summary}) > 1
    width = max([len(a["sweep"] or "-") for a in summary] + [5]) + 2
    step = summary[0]["common_step"] if summary else None
    at_common = _beyond(rows, step)
    common_head = f"val loss @{step}" if at_common else ""
    lines = [f"{'rank':>4}  {'arm':<28}" + (f"{'sweep':<{width}}" if sweeps else "") + f"{'steps':>10}"
             + f"{'best val loss':>19}" + (f"{common_head:>19}" if at_common else "")
             + f"{'val acc':>9}{'params':>10}{'tokens':>10}{'seeds':>6}"
             + (f"{'recall':>16}" if with_recall else "") + "".join(f"{task:>16}" for task in tasks)
             + f"  {'loss vs best':<24}" + (f"{'recall vs best':<24}" if with_recall else "") + "note"]
    for i, arm in enumerate(summary, 1):
        loss = _mean_text((arm["best_val_loss"], arm["best_val_loss_std"]), arm["scored_seeds"])
        loss = "diverged" if arm["diverged"] else loss  # where: the note
        common = _mean_text(arm["loss_at_common"], len(arm["losses_at_common"])) if at_common else ""
        acc = f"{arm['best_val_accuracy']:.3f}" if math.isfinite(arm["best_val_accuracy"]) else "-"
        params = f"{arm['params'] / 1e6:.2f}M" if arm["params"] else "-"
        seeds = f"{arm['finished_seeds']}/{arm['seeds']}"
        tokens = f"{arm['tokens_seen'] / 1e6:.2f}M" if arm["tokens_seen"] else "-"
        note = "" if arm["complete"] else "; ".join(arm["reasons"]) or ", ".join(arm["statuses"])
        scores = "".join(f"{arm['evals'][t][0]:>9.3f} ± {arm['evals'][t][1]:.3f}" if t in arm["evals"] else f"{'-':>16}"
                         for t in tasks)
        recall = ""
        if with_recall:
            recall = f"{'-':>16}" if not arm["recall"] else (f"{arm['recall'][0]:>9.3f} ± {arm['recall'][1]:.3f}"
                                                            if len(arm["recalls"]) > 1 else f"{arm['recall'][0]:>16.3f}")
        verdicts = f"{arm['loss_vs_best'] or '-':<24}" + (f"{arm['recall_vs_best'] or '-':<24}" if with_recall else "")
        lines.append(f"{i:>4}  {arm['arm']:<28}" + (f"{arm['sweep'] or '-':<{width}}" if sweeps else "")
                     + f"{steps_text(arm):>10}{loss:>19}" + (f"{common:>19}" if at_common else "")
                     + f"{acc:>9}{params:>10}{tokens:>10}{seeds:>6}{recall}{scores}  {verdicts}{note}".rstrip())
    lines.append("steps: the steps each arm's trials ran (of the run's total when they ended early); best val loss: "
                 "each trial's best over its own steps" + (f"; val loss @{step}: at step {step}, the last step every "
                 "trial reached (failed ones aside), the like-with-like comparison" if at_common else ""))
    lines += edge_lines(summary)
    groups = len({_like(a) for a in summary}) > 1
    lines.append(f"vs best: {METHOD}, each arm against the best of the arms with >= 2 seeds that ran to the end"
                 + (" of its own sweep and number of steps" if groups else "")
                 + ("; recall: the mean accuracy of the recall probes at the run's end (README)" if with_recall else ""))
    return "\n".join(lines)


def value_positions(summary: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, int] | None]:
    """Where each arm (by its id) sits on the swept-value axis: its value when every arm has one along the same
    axis (arms without results keep theirs), else its rank in the arms' order with those ticks (a categorical axis,
    labelled by arm): so an LR sweep's arms are never drawn on a ratio axis at their learning rate."""
    axes = {_axis(a) for a in summary} - {None}
    if all(a["value"] is not None for a in summary) and len(axes) <= 1:
        return {a["id"]: a["value"] for a in summary}, None
    sweeps = list(dict.fromkeys(a["sweep"] for a in summary))
    order = sorted(summary, key=lambda a: (sweeps.index(a["sweep"]), _axis(a) or "", a["value"] is None,
                                           a["value"] or 0, a["arm"]))
    return {a["id"]: float(i) for i, a in enumerate(order)}, {a["label"]: i for i, a in enumerate(order)}


def _ended_early(row: dict[str, Any]) -> bool:
    return row.get("stopped_at_step") is not None and row.get("status") not in ("not started", "no results", "diverged")


def _span(values: list[int]) -> str:
    return "-" if not values else str(min(values)) if min(values) == max(values) else f"{min(values)}-{max(values)}"


def _subtitle(rows: list[dict[str, Any]]) -> str:
    """What the figure's trials ran: how many finished their steps, how many stopped early and where."""
    ran = [r for r in rows if r.get("step") and r.get("status") != "diverged"]
    stopped = [r["step"] for r in ran if r.get("status") == "stopped by ASHA"]
    other = [r["step"] for r in ran if _ended_early(r) and r.get("status") != "stopped by ASHA"]
    broke = [(r.get("diverged") or {}).get("step") or 0 for r in rows if r.get("status") == "diverged"]
    done = [r["step"] for r in ran if not _ended_early(r)]
    parts = [f"{len(rows)} trial(s)"]
    if done:
        parts.append(f"{len(done)} ran all their steps ({_span(done)})")
    if stopped:
        parts.append(f"{len(stopped)} stopped by ASHA at step {_span(stopped)}")
    if other:
        parts.append(f"{len(other)} ended early at step {_span(other)} (interrupted, failed or stopped)")
    if broke:
        parts.append(f"{len(broke)} diverged at step {_span(broke)} (not drawn)")
    return ", ".join(parts)


def _value_panel(ax: Any, summary: list[dict[str, Any]], positions: dict[str, float], colors: dict[str, Any],
                 common: str, own: str, label: str, several: bool, offset: Any) -> None:
    """One arm-per-point panel: each arm's mean ± std over seeds at the common step (`common`; a marker per sweep),
    and beside it (`offset`), for an arm whose trials ran past that step, its own number over its whole run (`own`;
    diamonds: filled for arms that ran all their steps, hollow for arms stopped early), with a legend that says which
    is which."""
    from matplotlib.lines import Line2D

    shapes = dict(zip(dict.fromkeys(a["sweep"] for a in summary), "osv^P*X"))
    own_text = "best over its own run" if own == "best_val_loss" else "at the end of its own run"
    drawn: dict[str, list[int]] = {"full": [], "early": []}
    for arm in summary:
        x, color = positions[arm["id"]], colors[arm["id"]]
        if (stat := _stat(arm, common)) is not None:
            ax.errorbar(x, stat[0], yerr=stat[1], fmt=shapes[arm["sweep"]], ms=7, capsize=3, color=color)
        past = arm["common_step"] is not None and arm["steps"] and arm["steps"][-1] > arm["common_step"]
        if common != own and past and (stat := _stat(arm, own)) is not None:
            early = not arm["complete"]
            drawn["early" if early else "full"] += arm["steps"]
            ax.errorbar(offset(x), stat[0], yerr=stat[1], fmt="D", ms=5, capsize=2, color=color, alpha=0.7,
                        mfc="white" if early else color)
    handles = [Line2D([], [], marker=shape, color="black", ls="", label=(f"{sweep or 'runs'}: " if several else "")
                      + label) for sweep, shape in shapes.items()]
    if drawn["full"]:
        handles.append(Line2D([], [], marker="D", color="grey", ls="", label=f"{own_text}, all its steps "
                              f"({_span(drawn['full'])})"))
    if drawn["early"]:
        handles.append(Line2D([], [], marker="D", color="grey", mfc="white", ls="",
                              label=f"{own_text}, an arm with trials stopped early (steps {_span(drawn['early'])})"))
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.1 * len(handles) * (high - low))  # room above the points for the legend
    ax.legend(handles=handles, fontsize=7, loc="upper center")


def _stat(arm: dict[str, Any], metric: str) -> tuple[float, float] | None:
    """An arm's (mean, std) over seeds of `metric`: best_val_loss, recall (at the end of each run), loss_at_common or
    recall_at_common; None when it has none."""
    if metric == "best_val_loss":
        return (arm["best_val_loss"], arm["best_val_loss_std"]) if math.isfinite(arm["best_val_loss"]) else None
    return arm[metric]


def _beside(positions: dict[str, float], ticks: dict[str, int] | None, axis: str | None) -> Any:
    """Where a second point of an arm goes: a little to the right of its first, on the axis's own scale."""
    if ticks:
        return lambda x: x + 0.2
    values = list(positions.values())
    if axis in edge.LOG_AXES:
        ratio = max(values) / min(values) if min(values) > 0 and max(values) > min(values) else 1.5
        return lambda x: x * ratio ** 0.03
    span = (max(values) - min(values)) or 1.0
    return lambda x: x + 0.025 * span


def _value_axis(ax: Any, positions: dict[str, float], ticks: dict[str, int] | None, axis: str | None) -> None:
    """The swept-value axis: the arms' names on a categorical one; else the grid's own values, as they are typed,
    on a log scale for a learning rate."""
    if ticks:
        ax.set_xticks(list(ticks.values()), list(ticks), rotation=60, fontsize=7, ha="right")
        return
    if axis in edge.LOG_AXES:
        ax.set_xscale("log")
    grid = sorted(set(positions.values()))
    if len(grid) <= 13:
        ax.set_xticks(grid, [edge.number(v) for v in grid], rotation=45 if len(grid) > 6 else 0, fontsize=8)
        ax.minorticks_off()


def _mark_edges(ax: Any, summary: list[dict[str, Any]], found: list[tuple[str, edge.Edge]],
                positions: dict[str, float], metric: str, several: bool, below: float) -> None:
    """Ring each sweep's best arm whose value is at the grid's edge, and say under the panel what extends the grid."""
    from matplotlib.lines import Line2D

    for sweep, _ in found:
        best = _best_of(summary, sweep)
        if best is not None and (stat := _stat(best, metric)) is not None:
            ax.plot(positions[best["id"]], stat[0], "o", ms=15, mfc="none", mec="firebrick", mew=1.5)
    ring = Line2D([], [], marker="o", ms=11, mfc="none", mec="firebrick", ls="", label="best arm, at the grid's edge")
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.08 * (high - low))
    ax.legend(handles=[*ax.get_legend().legend_handles, ring], fontsize=7, loc="upper center")
    notes = [str(e) if not several else f"{sweep}: {e}" for sweep, e in found]
    ax.text(0.5, below, "\n".join(notes), transform=ax.transAxes, ha="center", va="top", fontsize=8,
            color="firebrick", wrap=True)


def plot_sweep(rows: list[dict[str, Any]], path: str, title: str = "") -> None:
    """Validation curves per trial (those stopped early end in a cross), the loss (and recall) of every arm at the
    step every trial reached against the swept value (mean ± std over seeds; beside it each arm's own best, hollow
    when it stopped early), and validation loss against training time; a best value at its grid's edge is noted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    with_recall = any((r.get("final") or {}).get("val_recall") is not None for r in rows)
    fig, axes = plt.subplots(1, 4 if with_recall else 3, figsize=(22 if with_recall else 17, 5.8))
    curves, by_value, by_time = axes[0], axes[1], axes[-1]
    recall_panel = axes[2] if with_recall else None
    cmap = plt.get_cmap("viridis")
    summary = arm_summary(rows)
    several = len({a["sweep"] for a in summary}) > 1
    sweeps = list(dict.fromkeys(a["sweep"] for a in summary))
    order = sorted(summary, key=lambda a: (sweeps.index(a["sweep"]), a["value"] is None, a["value"] or 0, a["arm"]))
    colors = {a["id"]: cmap(i / max(len(order) - 1, 1)) for i, a in enumerate(order)}
    step = summary[0]["common_step"] if summary else None
    beyond = _beyond(rows, step)
    ended_early = False
    for arm in order:
        members = [r for r in rows if r["arm"] == arm["arm"] and r.get("sweep") == arm["sweep"]]
        drawn = [m for m in members if m["status"] != "diverged"]  # its losses before it broke: off any scale
        for i, member in enumerate(drawn):
            steps, values = series(member.get("history", []), "val_loss")
            times = [r.get("time_s") for r in member.get("history", []) if "val_loss" in r and r.get("val_loss") is not None]
            marker = "." if len(steps) < 30 else None  # a trial ASHA stopped at its first evaluation is one point
            color = colors[arm["id"]]
            curves.plot(steps, values, color=color, alpha=0.8, marker=marker, label=arm["label"] if i == 0 else None)
            timed = len(times) == len(values) and all(t is not None for t in times)
            if timed:
                by_time.plot(times, values, color=color, alpha=0.8, marker=marker)
            if steps and _ended_early(member):
                ended_early = True
                curves.plot(steps[-1], values[-1], "x", color="black", ms=8, mew=1.5)
                if timed:
                    by_time.plot(times[-1], values[-1], "x", color="black", ms=8, mew=1.5)
    handles = []
    if beyond:
        curves.axvline(step, color="grey", ls=":", lw=1.2)
        handles.append(Line2D([], [], color="grey", ls=":", label=f"step {step}: every trial reached it"))
    if ended_early:
        handles.append(Line2D([], [], color="black", marker="x", ls="", ms=8, label="stopped by ASHA"
                              if all(r.get("status") == "stopped by ASHA" for r in rows if _ended_early(r))
                              else "ended early (ASHA, interrupted or failed)"))
    positions, ticks = value_positions(summary)
    axis = next((_axis(a) for a in summary if _axis(a)), None)
    xlabel = "arm" if ticks else AXIS_LABELS.get(axis, axis or "swept value")
    at = (f"at step {step}, the last step every trial reached" if beyond else
          f"at step {step}, the end of every trial" if step is not None else "best over each run")
    primary = f"at step {step}, every trial (mean ± std)" if step is not None else "best over each run"
    offset = _beside(positions, ticks, axis)
    _value_panel(by_value, summary, positions, colors, "loss_at_common" if step is not None else "best_val_loss",
                 "best_val_loss", primary, several, offset)
    by_value.set(title=f"validation loss {at}\n(mean ± std over seeds)", xlabel=xlabel, ylabel="val loss")
    for arm in (a for a in summary if a["diverged"]):  # no loss: a cross at the foot of the panel, where it sits
        x = positions[arm["id"]]
        by_value.plot(x, 0.04, "x", color="firebrick", ms=9, mew=2, transform=by_value.get_xaxis_transform())
        by_value.annotate("diverged", (x, 0.07), xycoords=by_value.get_xaxis_transform(), ha="center", fontsize=7,
                          color="firebrick")
    if recall_panel is not None:
        _value_panel(recall_panel, summary, positions, colors, "recall_at_common" if step is not None else "recall",
                     "recall", primary.replace("best over", "at the end of"), several, offset)
        recall_panel.set(title=f"recall {at}\n(mean ± std over seeds)", xlabel=xlabel, ylabel="recall score")
    for ax in (by_value, recall_panel):
        if ax is not None:
            _value_axis(ax, positions, ticks, axis)
    if found := grid_edges(summary):
        _mark_edges(by_value, summary, found, positions, "loss_at_common" if step is not None else "best_val_loss",
                    several, below=-0.42 if ticks else -0.2)
    gone: list[str] = []  # arms whose every seed diverged, and the trials that diverged of the others
    for arm in summary:
        broke = [r["name"] for r in rows if r["arm"] == arm["arm"] and r.get("sweep") == arm["sweep"]
                 and r["status"] == "diverged"]
        gone += [arm["label"]] if arm["diverged"] else broke
    if gone:  # no loss to draw: say which are missing
        curves.text(0.02, 0.02, f"diverged, not drawn: {', '.join(gone)}", transform=curves.transAxes, fontsize=7,
                    color="firebrick")
    curves.set(title="validation loss", xlabel="step", ylabel="val loss")
    by_time.set(title="validation loss against training time", xlabel="training seconds", ylabel="val loss")
    curves.legend(handles=curves.get_legend_handles_labels()[0] + handles, fontsize=6, ncol=2)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}\n{_subtitle(rows)}" if title else _subtitle(rows), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_comparison(rows: list[dict[str, Any]], title: str, json_path: str, figure_path: str,
                     meta: dict[str, Any] | None = None) -> tuple[str, str | None]:
    """Write the rows (strict JSON, with `meta`, the arms' summary as the table ranks them, the common step and the
    edge notes beside them) and their figure (local or URI paths); returns (table, figure path or None)."""
    summary = arm_summary(rows)
    record = {**(meta or {}), "common_step": summary[0]["common_step"] if summary else None,
              "edges": [{"sweep": sweep, **dataclasses.asdict(found), "note": str(found)}
                        for sweep, found in grid_edges(summary)],
              "arms": summary, "trials": rows}
    storage.write_bytes(json_path, folders.dumps(record).encode())
    figure = None
    if any(r.get("history") for r in rows):
        with tempfile.TemporaryDirectory() as tmp:
            local = str(Path(tmp, storage.name(figure_path)))
            plot_sweep(rows, local, title=title)
            figure = figure_path
            storage.write_bytes(figure, Path(local).read_bytes())
    return ranked_table(rows), figure


def _run_row(run: RunLayout, results: dict[str, Any]) -> dict[str, Any]:
    """A run as a comparison row: runs named `<arm>-s<seed>` (a sweep's trials) group by arm. A sweep's trial keeps
    its sweep and, when sweep.json has it, its arm's settings and value (an LR sweep's trial is no point of a ratio
    axis); a run of its own is placed by its attention share."""
    name = results.get("name") or storage.name(run.dir)
    arm, _, seed = name.rpartition("-s")
    if not (arm and seed.isdigit()):
        arm, seed = name, str((results.get("spec") or {}).get("train", {}).get("seed", 0))
    settings, value, sweep = {"attention_ratio": results.get("attention_ratio")}, results.get("attention_ratio"), None
    parent = storage.parent(run.dir)
    if _is_trials(parent):
        sweep = storage.name(storage.parent(parent))
        recorded = next((r for r in _sweep_rows(storage.parent(parent)) if r.get("name") == name), None)
        if recorded:
            arm, settings, value = recorded["arm"], recorded.get("settings") or {}, recorded.get("value")
    return trial_row(arm, settings, int(seed), name, run, results, value, sweep=sweep)


def _sweep_rows(path: str) -> list[dict[str, Any]]:
    """A sweep folder's trials from its sweep.json, each with the sweep's name ([] when `path` is not a sweep
    folder)."""
    sweep = SweepLayout.at(path).results
    rows = folders.read_json(sweep).get("trials") or [] if storage.exists(sweep) else []
    return [{**row, "sweep": storage.name(path)} for row in rows]


def comparison_rows(paths: list[str]) -> list[dict[str, Any]]:
    """Rows from run folders (results.json), sweep folders (sweep.json) and folders of runs, in the order given."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        path = storage.normalize(path)
        if sweep_rows := _sweep_rows(path):
            rows += sweep_rows
            continue
        results = folders.read_results(RunLayout(path))
        if results is not None:
            rows.append(_run_row(RunLayout(path), results))
            continue
        inner = [storage.join(path, d) for d in storage.list_dirs(path)]
        found, damaged = [], []
        for folder in inner:  # a folder of runs and sweeps (the default storage path holds both)
            try:
                if sweep_rows := _sweep_rows(folder):
                    found += sweep_rows
                elif (results := folders.read_results(RunLayout(folder))) is not None:
                    found.append(_run_row(RunLayout(folder), results))
            except HybridRayError as e:  # one damaged run does not hide the others
                damaged.append(e)
        if not found:
            if damaged:
                raise damaged[0]
            raise HybridRayError(f"{path} holds no results.json or sweep.json (not a finished run, sweep or folder of runs)")
        for error in damaged:
            warnings.warn(f"{error}; left out of the comparison")
        rows += found
    return rows


def _is_sweep(path: str) -> bool:
    return SweepLayout.at(path).exists()


def comparison_home(paths: list[str]) -> str:
    """Where `compare` writes when --out does not say: beside what it compares, never the current folder. One sweep
    (or its trials/ folder, or one of its trials): `<sweep>/comparison`; runs and sweeps of one storage path, or that
    folder of runs itself: `<storage path>/comparison`; things under different folders: the first one's."""
    homes = []
    for path in map(storage.normalize, paths):
        if _is_sweep(path):
            homes.append(path if len(paths) == 1 else storage.parent(path))
        elif storage.exists(RunLayout(path).results):
            parent = storage.parent(path)  # a run's storage path, or a sweep's trials/ folder
            homes.append(storage.parent(parent) if _is_trials(parent) else parent)
        elif _is_trials(path):
            homes.append(storage.parent(path))
        else:
            homes.append(path)  # a folder of runs and sweeps
    return comparison_dir(homes[0])


def _is_trials(path: str) -> bool:
    """Whether `path` is a sweep's trials/ folder."""
    sweep = SweepLayout.at(storage.parent(path))
    return sweep.trials == path.rstrip("/") and sweep.exists()



@dataclass
class Comparison:
    """What `compare` wrote: the folder, the ranked table, and the figure (None without curves to plot)."""

    folder: str
    table: str
    figure: str | None


def compare(paths: list[str], out: str | None = None) -> Comparison:
    """Rank runs and sweeps (run folders, sweep folders, folders of runs) in one table and figure, written to `out`
    (default: `comparison_home`)."""
    rows = comparison_rows(paths)
    folder = storage.normalize(out) if out else comparison_home(paths)
    written = ComparisonLayout(folder)
    table, figure = write_comparison(rows, "comparison", written.results, written.figure)
    return Comparison(folder, table, figure)
