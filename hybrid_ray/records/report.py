"""results.json and plots: one run's curves, and comparisons across runs."""

from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

from hybrid_ray import storage
from hybrid_ray.errors import HybridRayError
from hybrid_ray.layout import RunLayout, SweepLayout, comparison_dir
from hybrid_ray.records import folders
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

def trial_row(arm: str, settings: dict[str, Any], seed: int, name: str, run: RunLayout, results: dict | None,
              value: float | None) -> dict[str, Any]:
    """One trial (or run) of a comparison, from its results.json: what sweep.json and the table hold."""
    row: dict[str, Any] = {"arm": arm, "settings": settings, "seed": seed, "name": name, "run_dir": run.dir,
                           "value": value}
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
        "history": results.get("history", []),
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def arm_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows grouped by arm: mean and standard deviation over seeds of the best validation loss (and accuracy; no
    deviation from one seed), seeds finished of seeds run, ranked with arms that ran to the end first (an arm stopped
    early saw fewer tokens: not comparable)."""
    arms: dict[str, list[dict]] = {}
    for row in rows:
        arms.setdefault(row["arm"], []).append(row)
    out = []
    for arm, members in arms.items():
        losses = [m["best"]["val_loss"] for m in members if (m.get("best") or {}).get("val_loss") is not None]
        accs = [m["best"]["val_accuracy"] for m in members if (m.get("best") or {}).get("val_accuracy") is not None]
        recalls = [_recall(m) for m in members if _recall(m) is not None]
        loss, loss_std = _mean_std(losses) if losses else (math.inf, 0.0)
        acc, acc_std = _mean_std(accs) if accs else (math.nan, 0.0)
        complete = all(m["status"] == "finished" for m in members)
        scores = {}
        for task in sorted({t for m in members for t, r in (m.get("evals") or {}).items() if "acc" in r}):
            values = [m["evals"][task]["acc"] for m in members if "acc" in (m.get("evals") or {}).get(task, {})]
            scores[task] = _mean_std(values)
        out.append({
            "arm": arm, "value": members[0]["value"], "seeds": len(members), "complete": complete,
            "finished_seeds": sum(m["status"] == "finished" for m in members), "scored_seeds": len(losses),
            "reasons": sorted({f"{m['status']} {m['reason']}" for m in members if m.get("reason")}),
            "statuses": sorted({m["status"] for m in members}), "best_val_loss": loss, "best_val_loss_std": loss_std,
            "best_val_accuracy": acc, "best_val_accuracy_std": acc_std, "params": members[0].get("params"),
            "tokens_seen": max((m.get("tokens_seen") or 0) for m in members),
            "stopped_at_step": max((m.get("stopped_at_step") or 0) for m in members) or None,
            "evals": scores, "losses": losses, "recalls": recalls,
            "recall": _mean_std(recalls) if recalls else None,
        })
    for key, metric, higher in (("loss_vs_best", "losses", False), ("recall_vs_best", "recalls", True)):
        verdicts = against_best({a["arm"]: a[metric] for a in out if a["complete"]}, higher_is_better=higher)
        for arm in out:
            arm[key] = str(verdicts[arm["arm"]]) if arm["arm"] in verdicts else None
    return sorted(out, key=lambda a: (not a["complete"], a["best_val_loss"]))


def _recall(row: dict[str, Any]) -> float | None:
    """A trial's recall score: its last evaluation's (the end of the run), else its best evaluation's."""
    for record in (row.get("final") or {}, row.get("best") or {}):
        if record.get("val_recall") is not None:
            return record["val_recall"]
    return None


def ranked_table(rows: list[dict[str, Any]]) -> str:
    """The terminal table: arms ranked by mean best validation loss over seeds (± std), parameters and tokens seen,
    the recall score (± std over seeds) and whether each arm's loss and recall differ from the best arm's by more
    than the seed noise (significance.METHOD, named under the table); arms that did not run to the end are marked."""
    summary = arm_summary(rows)
    tasks = sorted({t for arm in summary for t in arm["evals"]})
    with_recall = any(arm["recall"] for arm in summary)
    lines = [f"{'rank':>4}  {'arm':<28}{'best val loss':>19}{'val acc':>9}{'params':>10}{'tokens':>10}{'seeds':>6}"
             + (f"{'recall':>16}" if with_recall else "") + "".join(f"{task:>16}" for task in tasks)
             + f"  {'loss vs best':<24}" + (f"{'recall vs best':<24}" if with_recall else "") + "note"]
    for i, arm in enumerate(summary, 1):
        loss = "-" if not math.isfinite(arm["best_val_loss"]) else f"{arm['best_val_loss']:.4f}" + (
            f" ± {arm['best_val_loss_std']:.4f}" if arm["scored_seeds"] > 1 else "")
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
        lines.append(f"{i:>4}  {arm['arm']:<28}{loss:>19}{acc:>9}{params:>10}{tokens:>10}{seeds:>6}{recall}{scores}"
                     f"  {verdicts}{note}".rstrip())
    lines.append(f"vs best: {METHOD}, each arm against the best of the arms with >= 2 seeds that ran to the end"
                 + ("; recall: the mean accuracy of the recall probes at the run's end (README)" if with_recall else ""))
    return "\n".join(lines)


def value_positions(summary: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, int] | None]:
    """Where each arm sits on the swept-value axis: its value when every arm has one (arms without results keep
    theirs), else its rank in the arms' order with those ticks (a categorical axis)."""
    if all(a["value"] is not None for a in summary):
        return {a["arm"]: a["value"] for a in summary}, None
    order = sorted(summary, key=lambda a: (a["value"] is None, a["value"] or 0, a["arm"]))
    ticks = {a["arm"]: i for i, a in enumerate(order)}
    return {arm: float(i) for arm, i in ticks.items()}, ticks


def plot_sweep(rows: list[dict[str, Any]], path: str, title: str = "") -> None:
    """Three panels: validation curves per arm (mean over seeds), best validation loss against the swept value with
    error bars (std over seeds; arms stopped early hollow), and validation loss against training time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_recall = any((r.get("final") or {}).get("val_recall") is not None for r in rows)
    fig, axes = plt.subplots(1, 4 if with_recall else 3, figsize=(22 if with_recall else 17, 5))
    curves, by_value, by_time = axes[0], axes[1], axes[-1]
    recall_panel = axes[2] if with_recall else None
    colors = plt.get_cmap("viridis")
    summary = arm_summary(rows)
    order = {a["arm"]: i for i, a in enumerate(sorted(summary, key=lambda a: (a["value"] is None, a["value"] or 0, a["arm"])))}
    for arm in summary:
        color = colors(order[arm["arm"]] / max(len(order) - 1, 1))
        members = [r for r in rows if r["arm"] == arm["arm"]]
        for i, member in enumerate(members):
            steps, values = series(member.get("history", []), "val_loss")
            times = [r.get("time_s") for r in member.get("history", []) if "val_loss" in r and r.get("val_loss") is not None]
            marker = "." if len(steps) < 30 else None  # a trial ASHA stopped at its first evaluation is one point
            curves.plot(steps, values, color=color, alpha=0.8, marker=marker, label=arm["arm"] if i == 0 else None)
            if len(times) == len(values) and all(t is not None for t in times):
                by_time.plot(times, values, color=color, alpha=0.8, marker=marker)
    positions, ticks = value_positions(summary)
    for arm in summary:
        if not math.isfinite(arm["best_val_loss"]):
            continue
        by_value.errorbar(positions[arm["arm"]], arm["best_val_loss"], yerr=arm["best_val_loss_std"], fmt="o",
                          capsize=3, color=colors(order[arm["arm"]] / max(len(order) - 1, 1)),
                          mfc="white" if not arm["complete"] else None)
        if recall_panel is not None and arm["recall"]:
            recall_panel.errorbar(positions[arm["arm"]], arm["recall"][0], yerr=arm["recall"][1], fmt="s", capsize=3,
                                  color=colors(order[arm["arm"]] / max(len(order) - 1, 1)),
                                  mfc="white" if not arm["complete"] else None)
    swept = next(iter(rows[0]["settings"]), "arm") if rows else "arm"
    for ax in (by_value, recall_panel):
        if ax is None:
            continue
        if ticks:  # a categorical axis: label the arms
            ax.set_xticks(list(ticks.values()), list(ticks), rotation=60, fontsize=7)
        elif swept == "lr":
            ax.set_xscale("log")
    curves.set(title="validation loss", xlabel="step", ylabel="val loss")
    by_value.set(title="best validation loss (mean ± std over seeds)", xlabel=swept, ylabel="best val loss")
    by_time.set(title="validation loss against training time", xlabel="training seconds", ylabel="val loss")
    if recall_panel is not None:
        recall_panel.set(title="recall at the end (mean ± std over seeds)", xlabel=swept, ylabel="recall score")
    curves.legend(fontsize=6, ncol=2)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_comparison(rows: list[dict[str, Any]], title: str, json_path: str, figure_path: str,
                     meta: dict[str, Any] | None = None) -> tuple[str, str | None]:
    """Write the rows (strict JSON, with `meta` beside them) and their figure (local or URI paths); returns (table,
    figure path or None)."""
    storage.write_bytes(json_path, folders.dumps({**(meta or {}), "trials": rows}).encode())
    figure = None
    if any(r.get("history") for r in rows):
        with tempfile.TemporaryDirectory() as tmp:
            local = str(Path(tmp, storage.name(figure_path)))
            plot_sweep(rows, local, title=title)
            figure = figure_path
            storage.write_bytes(figure, Path(local).read_bytes())
    return ranked_table(rows), figure


def _run_row(run: RunLayout, results: dict[str, Any]) -> dict[str, Any]:
    """A run as a comparison row: runs named `<arm>-s<seed>` (a sweep's trials) group by arm."""
    name = results.get("name") or storage.name(run.dir)
    arm, _, seed = name.rpartition("-s")
    if not (arm and seed.isdigit()):
        arm, seed = name, str((results.get("spec") or {}).get("train", {}).get("seed", 0))
    return trial_row(arm, {"attention_ratio": results.get("attention_ratio")}, int(seed), name, run, results,
                     results.get("attention_ratio"))


def _sweep_rows(path: str) -> list[dict[str, Any]]:
    """A sweep folder's trials from its sweep.json ([] when `path` is not a sweep folder)."""
    sweep = SweepLayout.at(path).results
    return folders.read_json(sweep).get("trials") or [] if storage.exists(sweep) else []


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

