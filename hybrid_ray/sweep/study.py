"""`sweep --tune-lr`: every arm at its own best learning rate, then the seeds, then a report (issue #49).

Stage 1, the LR search: one Tune run (an ordinary sweep folder, `<study>/lr`) of every arm at every learning rate of
its grid (lr_around its own LR, or --lr-grid), one seed, under ASHA with one bracket per arm: an LR trial is judged
only against the same arm's LR trials (asha.RecordedASHA's groups). One Tune run rather than one ASHA sweep per arm
because it fills the cluster with every arm's trials at once (13 arms x 7 LRs on 8 GPUs), and it is one folder, one
resume, one plan, the same code path as any sweep. An arm whose best finished LR is at its grid's edge gets its grid
extended once (records/edge.py's two values past the edge, `<study>/lr-extend`, FIFO at the same budget, so they end
comparable), and the best finished trial of both is its choice.

Each arm's choice is written once, by `record_choice`, to lr_choices.jsonl; a relaunch reads it and never searches
that arm again. Stage 2, the comparison: an ordinary FIFO sweep (`<study>/compare`) of the arms at their chosen LRs,
every seed to the full length, which `hybrid-ray compare` reads like any other. Then report.md and study.png.

Stage 1's best trial is not counted as one of stage 2's seeds: stage 2 trains all N (a seed of a separate sweep would
make the comparison folder no longer an ordinary sweep).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from typing import Any

from hybrid_ray import storage
from hybrid_ray.config.grid import Arm, Axis, expand, lr_around, parse_grid
from hybrid_ray.errors import HybridRayError, SpecError
from hybrid_ray.layout import StudyLayout
from hybrid_ray.records import folders, jsonl, stage_costs
from hybrid_ray.records.edge import Edge, grid_edge
from hybrid_ray.spec import RunSpec
from hybrid_ray.sweep.options import HOW_TO_RUN, SweepOptions



@dataclass
class StudyOutcome:
    study_dir: str
    choices: dict[str, dict[str, Any]]  # arm id -> its lr_choices.jsonl line
    comparison: Any  # stage 2's SweepOutcome
    report: str  # report.md's path
    figure: str | None = None


def study_layout(base: RunSpec) -> StudyLayout:
    return StudyLayout(storage.normalize(base.storage_path), base.name)


def study_arms(base: RunSpec, options: SweepOptions) -> list[Arm]:
    """The arms compared: the grid's product, each at its own learning rate before stage 1."""
    return expand(base, parse_grid(options.grid))


def lr_values(arm: Arm, options: SweepOptions) -> tuple[float, ...]:
    """Stage 1's learning rates for `arm`: --lr-grid, else x1/4 ... x4 its own in 7 log-spaced points."""
    return tuple(options.lr_grid) if options.lr_grid else lr_around(arm.spec.optim.lr)


def lr_arms(arms: list[Arm], values: dict[str, tuple[float, ...]],
            steps: int | None = None) -> tuple[list[Arm], dict[str, tuple[str, float]]]:
    """Each arm at each of its learning rates (`<arm>-lr<v>`), with `steps` when stage 1 has its own budget; and
    each LR arm's (arm, lr)."""
    out, owner = [], {}
    for arm in arms:
        for point in expand(arm.spec, [Axis("lr", tuple(values[arm.id]))]):
            spec = point.spec.with_overrides({"train.steps": steps}) if steps else point.spec
            out.append(Arm(f"{arm.id}-{point.id}", {**arm.settings, "lr": point.settings["lr"]}, spec))
            owner[out[-1].id] = (arm.id, float(point.settings["lr"]))
    return out, owner


def _stage_options(options: SweepOptions, **changes: Any) -> SweepOptions:
    """A stage's SweepOptions: the study's, without tune-lr's own settings."""
    return dataclasses.replace(options, tune_lr=False, lr_grid=None, tune_steps=None, **changes)


def _search_options(options: SweepOptions, scheduler: str) -> SweepOptions:
    # its ended trials keep their records, not their weights: only their losses decide (ENDED_KEEPS)
    return _stage_options(options, grid=[*options.grid, "lr"], seeds=1, scheduler=scheduler, eval_tasks=[],
                          eval_data=None, keep_weights=False, keep_checkpoints=False)


def _stage_base(base: RunSpec, study: StudyLayout, stage: str) -> RunSpec:
    return base.with_overrides({"name": stage, "storage_path": study.dir})


# --- the LR decision: one writer (record_choice), read by every later launch ---

def read_choices(study: StudyLayout) -> dict[str, dict[str, Any]]:
    """Every arm's recorded choice (a line a full disk cut short is skipped: that arm is decided again)."""
    out = {}
    for record in jsonl.read(study.lr_choices):
        if "arm" in record and record["arm"] not in out:
            out[record["arm"]] = record
    return out


def record_choice(study: StudyLayout, arm: str, curve: list[dict[str, Any]], edge: Edge | None,
                  extended: bool) -> dict[str, Any]:
    """Choose `arm`'s learning rate from its LR curve (the finished trial with the lowest final validation loss)
    and write that choice once; the only writer of lr_choices.jsonl."""
    best = best_point(curve)
    if best is None:
        raise HybridRayError(f"arm {arm}: no learning rate of its search ended with a finite loss (every one diverged "
                             "or failed); give it lower ones with --lr-grid")
    record = {"arm": arm, "lr": best["lr"], "val_loss": best["val_loss"], "curve": sorted(curve, key=lambda p: p["lr"]),
              "extended": extended, "edge": str(edge) if edge else None,
              # bounded: one extension; a best still at the (new) edge is said, not searched further
              "still_at_edge": str(after) if extended and (after := edge_of(curve)) is not None else None}
    if arm in read_choices(study):
        raise HybridRayError(f"arm {arm}'s learning rate is already chosen in {study.lr_choices}")
    jsonl.append(study.lr_choices, record)
    return record


def best_point(curve: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The point of an LR curve that ran its whole budget with the lowest final validation loss."""
    done = [p for p in curve if p["status"] == "finished" and isinstance(p.get("val_loss"), (int, float))
            and math.isfinite(p["val_loss"])]
    return min(done, key=lambda p: p["val_loss"]) if done else None


def curves(rows: list[dict[str, Any]], owner: dict[str, tuple[str, float]]) -> dict[str, list[dict[str, Any]]]:
    """Each arm's LR curve from a search's rows: per LR its status, step and final validation loss."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        arm, lr = owner[row["arm"]]
        out.setdefault(arm, []).append({"lr": lr, "status": row["status"], "step": row.get("step"),
                                        "val_loss": (row.get("final") or {}).get("val_loss"), "trial": row["name"]})
    return out


def edge_of(curve: list[dict[str, Any]]) -> Edge | None:
    """The extension an arm's LR curve asks for: its best finished LR at the grid's edge (every LR diverged: the
    lowest, whose lower side is then searched)."""
    values = [p["lr"] for p in curve]
    best = best_point(curve)
    return grid_edge("lr", values, best["lr"] if best else min(values))


def _study_record(options: SweepOptions, arms: list[Arm]) -> dict[str, Any]:
    """What defines a study: its options and arms (how to run it aside)."""
    return json.loads(folders.dumps({
        "options": {k: v for k, v in dataclasses.asdict(options).items() if k not in HOW_TO_RUN},
        "arms": {a.id: a.spec.with_overrides({"storage_path": "."}).to_dict() for a in arms}}))


def _check_relaunch(study: StudyLayout, record: dict[str, Any]) -> None:
    """Refuse relaunching a study's name with other settings, in one line, before anything starts."""
    if not storage.exists(study.study):
        return
    previous = folders.read_json(study.study)
    if {k: previous.get(k) for k in record} != record:
        changed = sorted(k for k in record["options"] if previous.get("options", {}).get(k) != record["options"][k])
        raise SpecError(f"study {study.name!r} already exists with other settings (differs in: "
                        f"{', '.join(changed[:4]) or 'the arms specs'}); relaunch it unchanged to resume it, or pick "
                        "a new --name")


def _record_study(study: StudyLayout, record: dict[str, Any], base: RunSpec) -> None:
    """study.json, once stage 1's sweep has its folder (a study refused before it started leaves none)."""
    if not storage.exists(study.study) and storage.exists(study.lr_search.grid):
        storage.write_bytes(study.study, folders.dumps({**record, "base": base.to_dict()}).encode())


def dry_run(base: RunSpec, options: SweepOptions, *, address: str | None = None, assume: Any = None) -> None:
    """Print both stages' plans (trials, trials at once, disk, GPU memory) without training or tokenizing; stage 2
    is planned at each arm's own learning rate (the one stage 1 will choose changes no size)."""
    from hybrid_ray.records.speeds import Speeds, estimate, hours_text
    from hybrid_ray.sweep.plan import Assumed, gpu_hours
    from hybrid_ray.sweep.plan import dry_run as plan_only

    assume = assume or Assumed()
    arms = study_arms(base, options)
    study = study_layout(base)
    speeds = Speeds.read(study.storage_path)  # every run under the storage path, not the study's own alone
    values = {a.id: lr_values(a, options) for a in arms}
    search, _ = lr_arms(arms, values, options.tune_steps)
    steps = options.tune_steps or base.train.steps
    print(f"stage 1, the LR search: {len(arms)} arm(s) x {len(next(iter(values.values())))} LR(s) x 1 seed = "
          f"{len(search)} trial(s) of {steps} steps, ASHA within each arm; then at most {2 * len(arms)} more, FIFO "
          f"(two LRs past the edge, once, for each arm whose best LR is at its grid's edge)", flush=True)
    search_options = _search_options(options, "asha")
    first = plan_only(_stage_base(base, study, "lr"), search_options, address=address, assume=assume, arms=search,
                      speeds=speeds)
    print(f"\nstage 2, the comparison: {len(arms)} arm(s) x {options.seeds} seed(s) = {len(arms) * options.seeds} "
          f"trial(s) of {base.train.steps} steps, each arm at the LR stage 1 chooses, FIFO", flush=True)
    compare_options = _stage_options(options, scheduler="fifo")
    second = plan_only(_stage_base(base, study, "compare"), compare_options, address=address, assume=assume,
                       arms=arms, speeds=speeds)
    product = len(search) * options.seeds * base.train.steps
    method = len(search) * steps + len(arms) * options.seeds * base.train.steps
    # stage 1's extensions: at most two LRs of each arm, each at its arm's speed (an LR sets no speed)
    extensions = estimate([a.spec.with_overrides({"train.steps": steps}) for a in second.arms], 2, speeds)
    stages = [gpu_hours(first, search_options, speeds), extensions, gpu_hours(second, compare_options, speeds)]
    hours = (f"; GPU-hours: at most about {hours_text(sum(s.hours for s in stages))} (stage 1 "
             f"{hours_text(stages[0].hours)}, its extensions {hours_text(stages[1].hours)}, stage 2 "
             f"{hours_text(stages[2].hours)})" if all(s.complete for s in stages) else "")
    print(f"\nin all: at most {len(search) * steps + 2 * len(arms) * steps + len(arms) * options.seeds * base.train.steps}"
          f" trial-steps ({first.concurrent} then {second.concurrent} trial(s) at once; ASHA's stops make stage 1 "
          f"shorter), against {product} for every arm at every LR with every seed to the end "
          f"({method / product:.0%} of it before ASHA and extensions){hours}", flush=True)


def _timed(study: StudyLayout, stage: str, run: Any) -> Any:
    started = time.time()
    try:
        return run()
    finally:
        if storage.exists(study.dir):  # a stage refused before it started wrote nothing
            stage_costs.add(study, stage, time.time() - started)


def tune_lr(base: RunSpec, options: SweepOptions, *, address: str | None = None, progress: bool = True,
            verbose: bool = False, relaunch: str | None = None) -> StudyOutcome:
    """Run (or resume) the study `base.name`: stage 1 (each arm's LR), the decisions, stage 2 (the seeds), the
    report. Ctrl-C at any stage raises Interrupted (exit 130); a relaunch goes on where it stopped, never searching an
    arm whose learning rate is chosen."""
    from hybrid_ray.records import study_report
    from hybrid_ray.sweep.tuner import sweep

    if not options.tune_lr:
        raise SpecError("tune_lr() runs a --tune-lr study")
    arms = study_arms(base, options)
    study = study_layout(base)
    record = _study_record(options, arms)
    _check_relaunch(study, record)
    say = (lambda text: print(text, flush=True)) if progress else (lambda text: None)
    values = {a.id: lr_values(a, options) for a in arms}
    choices = read_choices(study)
    run = {"address": address, "progress": progress, "verbose": verbose, "relaunch": relaunch}
    if len(choices) < len(arms):
        say(f"stage 1: the learning rate of {len(arms) - len(choices)} arm(s), {len(next(iter(values.values())))} "
            f"LR(s) each, one seed, ASHA within each arm ({study.lr_search.dir})")
        search, owner = lr_arms(arms, values, options.tune_steps)
        groups = {a.id: owner[a.id][0] for a in search}
        try:
            found = _timed(study, "lr", lambda: sweep(_stage_base(base, study, "lr"),
                                                      _search_options(options, "asha"), arms=search,
                                                      asha_groups=groups, **run))
        finally:
            _record_study(study, record, base)
        first = curves(found.rows, owner)
        edges = {a.id: e for a in arms if (e := edge_of(first[a.id])) is not None}
        for arm in arms:
            if arm.id not in choices and arm.id not in edges:
                choices[arm.id] = record_choice(study, arm.id, first[arm.id], None, extended=False)
        if edges and any(a not in choices for a in edges):
            more = [a for a in arms if a.id in edges]
            say(f"stage 1: extending the LR grid of {len(more)} arm(s) once: "
                + "; ".join(f"{a.id}: {e}" for a, e in ((a, edges[a.id]) for a in more)))
            extra, extra_owner = lr_arms(more, {a.id: edges[a.id].extend for a in more}, options.tune_steps)
            extended = _timed(study, "lr-extend", lambda: sweep(
                _stage_base(base, study, "lr-extend"), _search_options(options, "fifo"), arms=extra, **run))
            second = curves(extended.rows, extra_owner)
            for arm in more:
                if arm.id not in choices:
                    curve = first[arm.id] + second.get(arm.id, [])
                    choices[arm.id] = record_choice(study, arm.id, curve, edges[arm.id], extended=True)
    chosen = [dataclasses.replace(a, spec=a.spec.with_overrides({"optim.lr": choices[a.id]["lr"]})) for a in arms]
    say("stage 2: " + ", ".join(f"{a.id} at lr {choices[a.id]['lr']:.3g}" for a in arms)
        + f"; {options.seeds} seed(s) each, full length, FIFO ({study.comparison.dir})")
    compared = _timed(study, "compare", lambda: sweep(_stage_base(base, study, "compare"),
                                                     _stage_options(options, scheduler="fifo"), arms=chosen, **run))
    report, figure = study_report.write(study, base, options, choices, compared.rows, command=relaunch)
    if progress:
        say(f"report: {report}")
    return StudyOutcome(study.dir, choices, compared, report, figure)
