"""sweep(): a grid of train() runs as Ray Tune trials, early-stopped by ASHA on validation loss, then sweep.json, the
ranked table and sweep.png.

Each trial is one `train()` run (a TorchTrainer reporting through TuneReportCallback), named `<arm>-s<seed>` under
`<storage>/<sweep>/trials/`, so it has everything a run has: checkpoints, exact resume, results.json, the model folder.
ASHA's unit is the evaluation: every evaluation is one report carrying `evaluations`, its count so far.
Relaunching a sweep's name resumes it: Tune restores its trials, and each unfinished trial's train() continues from
its own newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback

from hybrid_ray import cluster, ray_compat, storage
from hybrid_ray.config.grid import Arm, expand, numeric_value, parse_grid
from hybrid_ray.errors import HybridRayError, Interrupted, SpecError, first_line
from hybrid_ray.layout import RunLayout, SweepLayout
from hybrid_ray.model import count_params
from hybrid_ray.records import folders
from hybrid_ray.records import report
from hybrid_ray.records.edge import Edge
from hybrid_ray.spec import RunSpec
from hybrid_ray.sweep import status
from hybrid_ray.sweep.asha import asha_line, grace_period, launch_order, rung_steps, scheduler
from hybrid_ray.sweep.options import HOW_TO_RUN, SweepOptions
from hybrid_ray.sweep.plan import on_resolved_base, plan_sweep, with_warmup_used
from hybrid_ray.sweep.status import trial_name, trial_spec
from hybrid_ray.train.checkpoint import CheckpointManager, read_state
from hybrid_ray.train.launch import DivergedError, check_locally, finalize, share_data
from hybrid_ray.train.plan import TRIAL_CPU, gb
from hybrid_ray.train.rungs import RungConfig



class SweepFailed(HybridRayError):
    """The sweep ended, but some of its trials failed: a script sees it in the exit code."""


@dataclass
class SweepOutcome:
    sweep_dir: str
    rows: list[dict[str, Any]]  # one per trial, as in sweep.json
    table: str
    figure: str | None = field(default=None)
    edges: list[Edge] = field(default_factory=list)  # axes whose best value is at the grid's edge (records/edge.py)


def _grid_record(options: SweepOptions, arms: list[Arm]) -> dict[str, Any]:
    """What defines a sweep: relaunching its name with anything else is refused."""
    return {"options": {k: v for k, v in dataclasses.asdict(options).items() if k not in HOW_TO_RUN},
            "arms": {a.id: a.spec.to_dict() for a in arms}}


def launched_order(sweep: SweepLayout, arms: list[Arm]) -> list[str]:
    """The order the sweep's arms started in (the grid's, for a sweep recorded before launch orders were)."""
    recorded = folders.read_json(sweep.grid).get("launch_order") if storage.exists(sweep.grid) else None
    return recorded or [a.id for a in arms]


def _claim(sweep: SweepLayout, record: dict[str, Any], order: list[str]) -> bool:
    """Record a new sweep's grid and the order its arms start in (sweep/asha.py's launch_order: set at the first
    launch, which Tune keeps), or check a relaunch against the grid; True when the sweep existed."""
    path = sweep.grid
    if not storage.exists(path):
        storage.write_bytes(path, folders.dumps({**record, "launch_order": order}).encode())
        return False
    _refuse_another_grid(sweep, record)
    return True


def _refuse_another_grid(sweep: SweepLayout, record: dict[str, Any], planned: bool = True) -> None:
    """Refuse relaunching a sweep's name with another grid than grid.json's; `planned=False`: `record`'s arms are not
    yet planned on a cluster (check_relaunch, before Ray starts), so what the plan sets is not compared."""
    if not storage.exists(sweep.grid):
        return
    previous = {k: v for k, v in folders.read_json(sweep.grid).items() if k != "launch_order"}
    record = json.loads(folders.dumps(record))
    if not planned:  # an arm's GPU share, which the cluster's plan sets, is unknown before Ray starts
        for arms in (previous.get("arms", {}), record["arms"]):
            for spec in arms.values():
                if isinstance(spec, dict) and isinstance(spec.get("scale"), dict):
                    spec["scale"].pop("gpus_per_worker", None)
    if previous != record:
        changed = sorted(set(previous.get("arms", {})) ^ set(record["arms"])) or sorted(
            k for k in previous.get("options", {}) if previous["options"][k] != record["options"].get(k))
        raise SpecError(f"sweep {sweep.name!r} already exists with another grid "
                        f"(differs in: {', '.join(map(str, changed[:4])) or 'the arms specs'}); relaunch it unchanged "
                        "to resume it, or pick a new --name")


def check_relaunch(sweep: SweepLayout, options: SweepOptions, arms: list[Arm]) -> None:
    """Before Ray starts: a relaunch of the sweep's name with another grid is refused in a second, not after Ray's
    start (the arms' GPU shares, which the cluster's plan sets, are compared once planned, by _claim)."""
    _refuse_another_grid(sweep, _grid_record(options, arms), planned=False)


def _trial(config: dict[str, Any], specs: dict[str, dict], sweep: SweepLayout, data_origin: str | None,
           keeps: str = "weights", rungs: dict[str, list[int]] | None = None) -> None:
    """A Tune trial: one train() run of an arm and seed, reporting to Tune through Ray Train's callback. The trial's
    own process owns its run folder from start to end: its train() resumes it, keeps its newest checkpoints while it
    trains, stops it at a rung when ASHA says so (train/rungs.py), writes its results, and then this settles it; the
    scheduler and the sweep never delete anything of a trial that is running."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from hybrid_ray.train import train

    spec = trial_spec(RunSpec.from_dict(specs[config["arm"]]), config["arm"], config["seed"], sweep)
    run = sweep.trial(spec.name)
    folders.set_aside_damaged(run)
    steps = (rungs or {}).get(config["arm"]) or []
    judged = RungConfig(tuple(steps), sweep.asha_decisions) if rungs is not None else None
    if storage.exists(run.diverged):
        # it diverged at an earlier launch: a result of the grid (this LR is too high), which training it again from
        # its last checkpoint would only repeat; Tune reruns it only when it recorded it as failed (a sweep from
        # before diverged trials ended) or when a new Tuner reports the grid (sweep(): removed trials)
        _report_divergence(run)
        return
    settled = folders.read_results(run) if keeps == "records" and folders.newest_step(run) is None else None
    if settled and settled.get("status") in ("finished", "stopped"):
        # it ended and kept only its records (ENDED_KEEPS) before Tune could record its end: with no checkpoint left,
        # train() would start it over; report what it ended with instead
        _report_ended(settled)
        return
    try:
        outcome = train(spec, callbacks=[TuneReportCallback()], progress=False, kernel_cache=sweep.storage_path,
                        data_origin=data_origin, rungs=judged)
    except DivergedError:  # its train() wrote its results (status diverged) and diverged.json: the trial ends here
        CheckpointManager(run).settle(keeps)
        _report_divergence(run)
        return
    if outcome.already_done:
        # it ended before this launch (Tune's own record of it was lost, or Ctrl-C came between its judgement and
        # its end): report what it ended with, train nothing
        _report_ended(outcome.results)
    if outcome.results["status"] in ("finished", "stopped"):  # ran to its end, or to the rung ASHA stopped it at
        CheckpointManager(run).settle(keeps)  # free its disk now, not at the sweep's end


def _report_ended(done: dict[str, Any]) -> None:
    """What an ended trial's relaunch reports: its final numbers, judged by no one again (`evaluated` False)."""
    from ray import tune

    evaluations = sum("val_loss" in r for r in done.get("history", []))
    tune.report({**(done.get("final") or {}), "step": done["step"], "evaluations": evaluations, "evaluated": False})


def _report_divergence(run: RunLayout) -> None:
    """A diverged trial's last result, which says so: its loss is no number, and without `evaluations` ASHA judges
    nothing of it; the trial simply ends."""
    from ray import tune

    step = json.loads(storage.read_bytes(run.diverged)).get("step")
    tune.report({"step": step, "diverged": True, "evaluated": False})


class Console(Callback):
    """A Tune callback that prints one line per trial event, with the current ranking by best validation loss.

    Tune pickles it with the experiment and restores it on a relaunch: `setup` restarts its clock for each launch."""

    def __init__(self, total: int, steps: dict[str, int], sweep: SweepLayout) -> None:
        self.total, self.steps, self.sweep = total, steps, sweep
        self.best: dict[str, float] = {}
        self.started_trials = 0
        self.started = time.time()

    def setup(self, **info):
        self.started, self.started_trials = time.time(), 0

    def _line(self, text: str) -> None:
        ranking = ", ".join(f"{name} {loss:.3f}" for name, loss in sorted(self.best.items(), key=lambda kv: kv[1])[:3])
        print(f"[{time.time() - self.started:6.0f}s] {text}" + (f"  | best: {ranking}" if ranking else ""), flush=True)

    @staticmethod
    def _name(trial: Any) -> str:
        return trial_name(trial.config["arm"], trial.config["seed"])

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started_trials += 1
        self._line(f"started   {self._name(trial)} ({self.started_trials} this launch, {self.total} in the sweep)")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("evaluated"):
            if math.isfinite(result["val_loss"]):
                self.best[self._name(trial)] = min(self.best.get(self._name(trial), math.inf), result["val_loss"])
            self._line(f"evaluated {self._name(trial)} step {result.get('step')}: val_loss {result['val_loss']:.4f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        step = (trial.last_result or {}).get("step", 0)
        stop = status.read_stops(self.sweep).get(self._name(trial))
        diverged = self.sweep.trial(self._name(trial)).diverged
        if storage.exists(diverged):  # its loss is no number: it leaves the ranking
            self.best.pop(self._name(trial), None)
            where = report.diverged_at(json.loads(storage.read_bytes(diverged)))
            self._line(f"diverged  {self._name(trial)} {where}: a result, not a failure (no relaunch trains it)")
        elif step >= self.steps[trial.config["arm"]]:
            self._line(f"finished  {self._name(trial)}")
        elif stop is not None:
            self._line(f"stopped   {self._name(trial)} by ASHA after step {stop['step']}")
        else:  # Tune ends a trial it was told to stop (Ctrl-C) like one it completed
            self._line(f"cut       {self._name(trial)} at step {step}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(f"failed    {self._name(trial)}: {status.error_line(ray_compat.trial_error(trial))}")


def sweep(
    base: RunSpec,
    options: SweepOptions,
    *,
    address: str | None = None,
    progress: bool = True,
    verbose: bool = False,
    relaunch: str | None = None,
    arms: list[Arm] | None = None,
    asha_groups: dict[str, str] | None = None,
) -> SweepOutcome:
    """Run (or resume) the sweep `base.name`: every arm of the grid times every seed, under `base.storage_path`.

    Ctrl-C or SIGTERM stops it resumably: the table so far is written and Interrupted (exit code 130) says how to
    relaunch (`relaunch`, the command line, when given). `arms`: the sweep's arms as given (sweep/study.py: each at
    its own learning rate) instead of the grid's product; `asha_groups` (arm id -> group): ASHA judges a trial only
    against its own group's (sweep/asha.py)."""
    arms = arms if arms is not None else expand(base, parse_grid(options.grid))  # grid errors before anything else
    base, dataset = check_locally(base, address=address, extend_steps=0, until_step=None, progress=progress)
    arms, warmups = with_warmup_used(on_resolved_base(arms, base, options))
    if options.scheduler == "asha":
        grace_period(options, arms)  # an ASHA rung inside the warm-up is refused before anything starts
    for arm in arms:
        if arm.spec.data != base.data:
            check_locally(arm.spec, address=address, extend_steps=0, until_step=None, progress=progress)
    sweep = SweepLayout.of(base)  # its folder is made by _claim: a refused sweep leaves no folder behind
    check_relaunch(sweep, options, arms)

    where = cluster.connect(address, verbose=verbose)
    have = cluster.resources()
    planned = plan_sweep(arms, options, have, cluster.gpu_memory(have, local=cluster.node_count() == 1),
                         sweep)
    arms, concurrent, disk = planned.arms, planned.concurrent, planned.disk
    resumed = _claim(sweep, _grid_record(options, arms), launch_order(options, [a.id for a in arms]))
    trials = len(arms) * options.seeds
    for note in warmups if progress and not resumed else []:
        warnings.warn(note)  # said once the sweep is sure to start, so that a refusal stays its one line
    if progress:
        counts = sorted({count_params(a.spec.model)["total"] for a in arms})
        sizes = f"{counts[0] / 1e6:.2f}M" + (f"-{counts[-1] / 1e6:.2f}M" if len(counts) > 1 else "")
        print(f"{'resuming' if resumed else 'sweeping'} {base.name} on {where}: {len(arms)} arm(s) x {options.seeds} "
              f"seed(s) = {trials} trial(s), {concurrent} at a time, {options.scheduler.upper()}, {sizes} parameters",
              flush=True)
        print(f"  sweep folder: {sweep.dir} (disk: {gb(disk.to_write)} to write, up to "
              f"{gb(disk.need)} at the peak)", flush=True)
        if options.scheduler == "asha":
            print(f"  {asha_line(options, arms)}", flush=True)
        if not storage.is_uri(sweep.dir):
            print(f"  watch: tensorboard --logdir {sweep.trials}", flush=True)
        if dashboard := cluster.dashboard_url():
            print(f"  Ray dashboard: {dashboard}", flush=True)

    started = time.time()
    origin = share_data(base, dataset)
    outcomes, interrupted = _fit(base, options, arms, sweep, concurrent, resumed, progress, verbose, origin,
                                 asha_groups)
    rerun = not interrupted and options.scheduler != "asha"  # ASHA's stops cannot be replayed in a new Tuner
    removed = removed_trials(outcomes, sweep) if rerun else []
    if removed:
        # Tune never runs an ended trial again: a new Tuner over the grid trains them (the others only report)
        if progress:
            print(f"training again the trial(s) whose run folder was deleted: {', '.join(removed)}", flush=True)
        outcomes, interrupted = _fit(base, options, arms, sweep, concurrent, False, progress, verbose, origin)
    rows = collect(arms, options.seeds, sweep, dataset, outcomes=outcomes, keeps=options.ended_keeps)
    if options.eval_tasks and not interrupted:
        rows = evaluate_finished(rows, options, address, progress)
    outcome = write_outputs(sweep, rows, title=base.name, launch_order=launched_order(sweep, arms))
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    if interrupted or not all(r["status"] in status.ENDED for r in rows):
        if progress:
            print(outcome.table, flush=True)
        how = f": {relaunch}" if relaunch else " (the same sweep name and storage path)"
        raise Interrupted(f"sweep {base.name} interrupted after {time.time() - started:.0f}s ({summary}); "
                          f"relaunch the same command to resume it{how}")
    if progress:
        print(f"sweep finished in {time.time() - started:.0f}s: {summary}", flush=True)
        if line := status.divergence_line(rows):
            print(line, flush=True)
    failed = [r for r in rows if r["status"] == status.FAILED]
    if failed:
        if progress:  # the table says why each failed
            print(outcome.table, flush=True)
            print(f"results: {outcome.sweep_dir}", flush=True)
        first = failed[0]
        raise SweepFailed(f"{len(failed)} trial(s) of sweep {base.name} failed ({first['name']}: {first['reason']}"
                          f"{'; ...' if len(failed) > 1 else ''}); the table says why, and relaunching the same "
                          "command retries them")
    return outcome


STRICT_METRICS = "TUNE_DISABLE_STRICT_METRIC_CHECKING"


class _Signals:
    """While a sweep runs: SIGTERM stops it like Ctrl-C (Tune's SIGINT handler ends the run and saves its state);
    unless verbose, Tune's own banner, hints and log lines stay off the console; and Tune's strict metric check is
    off. That check failed the whole sweep (TuneError) on any result without ASHA's `val_loss`: a checkpoint's report
    before the first evaluation (--checkpoint-every 5 --eval-every 10), a trial that diverged before it evaluated.
    RecordedASHA judges only results that carry both its metric and `evaluations`."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose

    def __enter__(self) -> _Signals:
        self.main = threading.current_thread() is threading.main_thread()
        if self.main:
            self.term = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
        self.output = os.environ.get("RAY_AIR_NEW_OUTPUT")
        self.strict = os.environ.get(STRICT_METRICS)
        os.environ[STRICT_METRICS] = "1"
        self.level = logging.getLogger("ray.tune").level
        if not self.verbose:
            os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the legacy reporter is silent at verbose=0; the new one is not
            logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
        return self

    def __exit__(self, *exc) -> None:
        if self.main:
            signal.signal(signal.SIGTERM, self.term)
        for name, value in (("RAY_AIR_NEW_OUTPUT", self.output), (STRICT_METRICS, self.strict)):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        logging.getLogger("ray.tune").setLevel(self.level)


# Tune does not retry a failed trial: the trial's train() already restarts its worker group from its newest checkpoint
# up to scale.max_failures times (Ray Train's own FailureConfig, inside the trial), so a Tune retry would multiply
# those attempts and rerun what no retry fixes (a full disk, bad input; a diverged loss is no failure: `_trial` ends
# such a trial as diverged, and a relaunch trains it no more). One failed trial does not stop the others
# (fail_fast=False), and relaunching the sweep resumes it from its newest checkpoint (resume_errored).
TRIAL_FAILURES = {"max_failures": 0, "fail_fast": False}


def run_config(base: RunSpec, callbacks: list[Callback]) -> Any:
    """The Tuner's RunConfig: the sweep's folder, its console, and how it treats a failed trial."""
    from ray import tune

    return tune.RunConfig(name=base.name, storage_path=base.storage_path, callbacks=callbacks, verbose=0,
                          failure_config=tune.FailureConfig(**TRIAL_FAILURES))


def _new_tuner(trainable: Any, base: RunSpec, options: SweepOptions, arms: list[Arm], sweep: SweepLayout, concurrent: int,
               progress: bool, asha_groups: dict[str, str] | None = None) -> Any:
    """A new sweep's Tuner: every arm times every seed, `concurrent` at a time."""
    from ray import tune

    steps = {arm.id: arm.spec.train.steps for arm in arms}
    callbacks = [Console(len(arms) * options.seeds, steps, sweep)] if progress else []
    return tune.Tuner(
        trainable,
        # Tune starts the arm axis fastest: every arm's seed 0, in this order, then seed 1, ...
        param_space={"arm": tune.grid_search(launched_order(sweep, arms)),
                     "seed": tune.grid_search(list(range(options.seeds)))},
        tune_config=tune.TuneConfig(scheduler=scheduler(options, arms, sweep, asha_groups), max_concurrent_trials=concurrent),
        run_config=run_config(base, callbacks),
    )


def _fit(base: RunSpec, options: SweepOptions, arms: list[Arm], sweep: SweepLayout, concurrent: int, resumed: bool,
         progress: bool, verbose: bool, data_origin: str | None,
         asha_groups: dict[str, str] | None = None) -> tuple[dict[str, status.TuneOutcome], bool]:
    """Run the Tuner; returns Tune's outcome of every trial it knows, by trial name, and whether it was interrupted."""
    from ray import tune

    specs = {arm.id: arm.spec.to_dict() for arm in arms}
    rungs = {arm.id: rung_steps(options, arms, arm) for arm in arms} if options.scheduler == "asha" else None
    trainable = tune.with_parameters(_trial, specs=specs, sweep=sweep, data_origin=data_origin,
                                     keeps=options.ended_keeps, rungs=rungs)
    # the trial itself only waits on its TorchTrainer, whose workers hold the CPUs and GPUs
    trainable = tune.with_resources(trainable, {"CPU": TRIAL_CPU})
    with _Signals(verbose):
        try:
            if resumed and tune.Tuner.can_restore(sweep.dir):
                # Tune kept the first launch's settings (scheduler, concurrency, run config) in the sweep folder
                tuner = tune.Tuner.restore(sweep.dir, trainable, resume_unfinished=True, resume_errored=True)
            else:
                tuner = _new_tuner(trainable, base, options, arms, sweep, concurrent, progress, asha_groups)
            grid = tuner.fit()
        except KeyboardInterrupt:  # a second Ctrl-C, or one before Tune's handler was in place
            return {}, True
    outcomes = {}
    for trial in ray_compat.tune_trials(grid):
        error = ray_compat.trial_error(trial) if trial.status == "ERROR" else None
        outcomes[trial_name(trial.config["arm"], trial.config["seed"])] = status.TuneOutcome(
            state=trial.status, error=status.error_line(error), interrupted=status.is_interruption(error),
            seconds=(trial.last_result or {}).get("time_total_s"))
    # Tune ends the trials it cuts on Ctrl-C as TERMINATED (and saves them as running, to resume): with nothing left
    # pending, only the trials' own state shows that the sweep was interrupted
    statuses = trial_statuses(outcomes, sweep)
    interrupted = any(s in (status.INTERRUPTED, status.NOT_STARTED) for s, _ in statuses.values())
    return outcomes, interrupted


def _on_disk(run: RunLayout) -> tuple[dict[str, Any] | None, int | None, bool]:
    """A trial's results.json (one that cannot be read is set aside: it is written again from the newest checkpoint),
    its newest checkpoint's step, and whether its run folder is gone (no spec.yaml)."""
    folders.set_aside_damaged(run)
    gone = not storage.exists(run.spec)
    return folders.read_results(run), folders.newest_step(run), gone


def trial_statuses(outcomes: dict[str, status.TuneOutcome], sweep: SweepLayout) -> dict[str, tuple[str, str | None]]:
    """(status, reason) of every trial Tune knows, from its run folder, Tune's outcome and ASHA's record."""
    stops = status.read_stops(sweep)
    statuses = {}
    for name, outcome in outcomes.items():
        results, newest, gone = _on_disk(sweep.trial(name))
        statuses[name] = status.trial_status(results, newest, outcome, stops.get(name), gone=gone)
    return statuses


def removed_trials(outcomes: dict[str, status.TuneOutcome], sweep: SweepLayout) -> list[str]:
    """The trials Tune ran to their end whose run folder was deleted since (see status.REMOVED)."""
    return [name for name, (state, _) in trial_statuses(outcomes, sweep).items() if state == status.REMOVED]


def collect(arms: list[Arm], seeds: int, sweep: SweepLayout, dataset: Any, *,
            outcomes: dict[str, status.TuneOutcome] | None = None,
            keeps: str = "weights") -> list[dict[str, Any]]:
    """One row per trial from its run folder, with its status; a trial that ASHA stopped (or the sweep interrupted)
    gets its results.json written now, from its newest checkpoint, so it keeps its results like any other run. Only
    trials that ended for good (finished, stopped by ASHA, diverged) drop their optimizer state: an interrupted one
    resumes."""
    outcomes = outcomes or {}
    stops = status.read_stops(sweep)
    rows = []
    for arm in arms:
        for seed in range(seeds):
            name = trial_name(arm.id, seed)
            run = sweep.trial(name)
            results, newest, gone = _on_disk(run)
            outcome = outcomes.get(name)
            behind = newest is not None and (results is None or results.get("step", 0) < newest)
            unrecorded = storage.exists(run.diverged) and (results or {}).get("status") != status.DIVERGED
            if behind or unrecorded:  # (a diverged trial's results not written: its process ended first)
                spec = trial_spec(arm.spec, arm.id, seed, sweep)
                wall = outcome.seconds if outcome is not None and outcome.seconds else 0.0
                if folders.launch_count(run) == 0:  # cut before its train() could count the launch that trained it
                    folders.count_launch(run)
                results = _results_of_cut(spec, run, dataset, wall, results)
            state, reason = status.trial_status(results, newest, outcome, stops.get(name), gone=gone)
            if state in (status.FINISHED, status.STOPPED, status.DIVERGED):  # its process ended before it settled it
                try:
                    CheckpointManager(run).settle(keeps)
                except (OSError, HybridRayError) as e:  # it keeps more than it needs: that fails nothing
                    warnings.warn(f"could not free the disk of trial {name} ({first_line(e)})")
            if results is None and state == status.STOPPED:
                results = _seen_by_asha(arm.spec, stops[name])
            row = report.trial_row(arm.id, arm.settings, seed, name, run, results, numeric_value(arm), sweep=sweep.name)
            rows.append({**row, "status": state, "reason": reason})
    return rows


def _results_of_cut(spec: RunSpec, run: RunLayout, dataset: Any, wall: float,
                    results: dict[str, Any] | None) -> dict[str, Any] | None:
    """results.json of a trial the sweep cut, from its newest checkpoint. Ray may still be ending the trial's run
    (its retention callback deleting what it no longer keeps): a checkpoint gone from under the export leaves the
    trial with the results it had, to be written again when it resumes; bookkeeping never fails a sweep."""
    try:
        return finalize(spec, run, dataset, wall or _trained_seconds(run)).results
    except (OSError, HybridRayError) as e:
        warnings.warn(f"could not write the results of trial {spec.name} yet ({first_line(e)}); its relaunch will")
        return results


def _seen_by_asha(spec: RunSpec, stop: dict[str, Any]) -> dict[str, Any]:
    """What is known of a trial ASHA stopped before its first checkpoint: the evaluation ASHA judged it on (its
    run folder holds no results; the table ranked it with none, though ASHA had compared its loss)."""
    seen = {"step": stop.get("step"), "val_loss": stop.get("val_loss")}
    return {"status": "stopped", "step": stop.get("step") or 0, "total_steps": spec.train.steps,
            "params": count_params(spec.model), "attention_layers": spec.model.attn_layers, "best": seen,
            "final": seen, "spec": spec.to_dict(), "history": [seen]}


def _trained_seconds(run: RunLayout) -> float:
    """Wall seconds a trial's checkpoints account for (training and compiling), when Tune recorded none for it."""
    newest = CheckpointManager(run).latest()
    state = read_state(newest) if newest else None
    return (state.train_seconds + state.compile_seconds) if state else 0.0


def evaluate_finished(rows: list[dict[str, Any]], options: SweepOptions, address: str | None,
                      progress: bool) -> list[dict[str, Any]]:
    """Score every finished trial on the sweep's eval tasks (Ray tasks, on GPUs when the cluster has them)."""
    from hybrid_ray.evals.downstream import evaluate_on_cluster

    finished = [r for r in rows if r["status"] == "finished"]
    for task in options.eval_tasks:
        if progress:
            print(f"evaluating {len(finished)} finished trial(s) on {task}", flush=True)
        results = evaluate_on_cluster([r["run_dir"] for r in finished], task, address=address, data=options.eval_data)
        for row, result in zip(finished, results):
            row.setdefault("evals", {})[task] = result
    return rows


def write_outputs(sweep: SweepLayout, rows: list[dict[str, Any]], title: str,
                  launch_order: list[str] | None = None) -> SweepOutcome:
    """sweep.json (with the order the arms started in), sweep.png, the ranked table and the grid's edges."""
    meta = {"launch_order": launch_order} if launch_order else None
    table, figure = report.write_comparison(rows, title, sweep.results, sweep.figure, meta=meta)
    edges = [found for _, found in report.grid_edges(report.arm_summary(rows))]
    return SweepOutcome(sweep_dir=sweep.dir, rows=rows, table=table, figure=figure, edges=edges)
