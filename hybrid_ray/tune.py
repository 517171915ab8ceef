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
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler

from hybrid_ray import cluster, ray_compat, report, runs, storage, sweep_plan
from hybrid_ray import sweep_status as status_lib
from hybrid_ray.errors import HybridRayError, Interrupted, SpecError, suggest
from hybrid_ray.grid import Arm, expand, match_params, numeric_value, parse_grid
from hybrid_ray.model import count_params
from hybrid_ray.spec import RunSpec
from hybrid_ray.train import checkpoint as ckpt_lib
from hybrid_ray.train.launch import check_locally, finalize, share_data

SWEEP_FILE = "sweep.json"
GRID_FILE = "grid.json"
FIGURE_FILE = "sweep.png"
SCHEDULERS = ("asha", "fifo")


@dataclass(kw_only=True)
class SweepOptions:
    """How to sweep; the base RunSpec says what each trial trains."""

    grid: list[str]
    seeds: int = 1
    scheduler: str = "asha"
    grace_period: int | None = None  # evaluations before ASHA may stop a trial; None: grace_period() decides
    reduction_factor: int = 3
    max_concurrent: int | None = None  # None: as many trials as the cluster holds (sweep_plan.concurrency)
    gpus_per_trial: float | None = None  # None: as many trials a GPU as its memory holds (sweep_plan.plan)
    match_params: bool = False
    reference_arm: str | None = None  # --match-params REF; None: the arm without attention
    eval_tasks: list[str] = field(default_factory=list)  # downstream tasks scored on every finished trial
    eval_data: str | None = None  # their data when the hub is out of reach (one task)
    keep_checkpoints: bool = False  # ended trials keep every checkpoint with its optimizer state

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise SpecError(f"--seeds must be >= 1, got {self.seeds}")
        if self.scheduler not in SCHEDULERS:
            raise SpecError(f"unknown scheduler {self.scheduler!r}{suggest(self.scheduler, SCHEDULERS)}; use asha or fifo")
        if (self.grace_period is not None and self.grace_period < 1) or self.reduction_factor < 2:
            raise SpecError("--grace-period must be >= 1 and --reduction-factor >= 2")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise SpecError("--max-concurrent must be >= 1")
        if self.gpus_per_trial is not None and self.gpus_per_trial < 0:
            raise SpecError("--gpus-per-trial must be >= 0")
        from hybrid_ray.evals import TASKS

        for task in self.eval_tasks:
            if task not in TASKS or task == "perplexity":
                raise SpecError(f"unknown eval task {task!r}{suggest(task, TASKS)}; a sweep scores arc_easy, "
                                "arc_challenge, hellaswag or lambada")
        if self.eval_data is not None and len(self.eval_tasks) != 1:
            raise SpecError("--eval-data goes with exactly one --eval-task")


def sweep_options(job: dict[str, Any], flags: dict[str, Any] | None = None) -> SweepOptions:
    """SweepOptions from a job file's `sweep` section with the command line's flags on top (a flag that is None, or a
    repeatable one given no times, is not given); unknown keys are one-line errors."""
    given = {k: list(v) if isinstance(v, tuple) else v for k, v in (flags or {}).items() if v is not None and v != ()}
    settings = {**job, **given}
    known = [f.name for f in dataclasses.fields(SweepOptions)]
    for key in settings:
        if key not in known:
            raise SpecError(f"unknown sweep setting {key!r}{suggest(key, known)}")
    grid = settings.get("grid", [])
    return SweepOptions(**{**settings, "grid": [grid] if isinstance(grid, str) else list(grid)})


class SweepFailed(HybridRayError):
    """The sweep ended, but some of its trials failed: a script sees it in the exit code."""


def grace_period(options: SweepOptions, arms: list[Arm]) -> int:
    """Evaluations before ASHA may stop a trial. By default the first evaluation at or after the learning-rate warm-up
    ends, and at least a quarter of the run: during warm-up every arm's loss still falls with its learning rate, so
    a rung there ranks arms by how fast they warm up, not by what they learn (ASHA stopped the eventual winner at step
    25 of 200 on a 0.017 difference). An explicit --grace-period inside the warm-up is refused for the same reason."""
    evals = max_evaluations(arms)
    after_warmup = max(math.ceil(a.spec.optim.warmup_steps / a.spec.train.eval_every) for a in arms)
    if options.grace_period is None:
        return min(evals, max(1, after_warmup, math.ceil(evals / 4)))
    if options.grace_period < after_warmup:
        spec = arms[0].spec
        raise SpecError(f"--grace-period {options.grace_period} lets ASHA stop trials at step "
                        f"{options.grace_period * spec.train.eval_every}, inside the {spec.optim.warmup_steps}-step "
                        f"learning-rate warm-up; use --grace-period {after_warmup} or more (or leave it out)")
    return min(evals, options.grace_period)


def max_evaluations(arms: list[Arm]) -> int:
    """The evaluations of the longest arm: ASHA's time unit, so its max_t."""
    return max(max(1, math.ceil(a.spec.train.steps / a.spec.train.eval_every)) for a in arms)


@dataclass
class SweepOutcome:
    sweep_dir: str
    rows: list[dict[str, Any]]  # one per trial, as in sweep.json
    table: str
    figure: str | None = field(default=None)


def trial_name(arm_id: str, seed: int) -> str:
    return f"{arm_id}-s{seed}"


def trial_spec(arm_spec: RunSpec, arm_id: str, seed: int, trials_root: str) -> RunSpec:
    """The run a trial trains: its arm's spec, named <arm>-s<seed> under the sweep's trials folder, seed + k."""
    return arm_spec.with_overrides({"name": trial_name(arm_id, seed), "storage_path": trials_root,
                                    "train.seed": arm_spec.train.seed + seed})


def _on_resolved_base(arms: list[Arm], base: RunSpec, options: SweepOptions) -> list[Arm]:
    """Arms expanded before check_locally, given what it resolved for the base: the normalized storage path and,
    where the arm does not set its own, the tokenizer's vocabulary (so --match-params counts the embeddings)."""
    arms = [dataclasses.replace(a, spec=dataclasses.replace(
        a.spec, storage_path=base.storage_path,
        model=a.spec.model if a.spec.model.vocab_size is not None else a.spec.model.with_vocab(base.model.vocab_size)))
        for a in arms]
    return match_params(arms, options.reference_arm) if options.match_params else arms


def _grid_record(options: SweepOptions, arms: list[Arm]) -> dict[str, Any]:
    """What defines a sweep: relaunching its name with anything else is refused."""
    how = ("max_concurrent", "keep_checkpoints")  # how to run it, not what it is
    return {"options": {k: v for k, v in dataclasses.asdict(options).items() if k not in how},
            "arms": {a.id: a.spec.to_dict() for a in arms}}


def _claim(sweep_dir: str, record: dict[str, Any]) -> bool:
    """Record a new sweep's grid, or check a relaunch against it; True when the sweep existed."""
    path = storage.join(sweep_dir, GRID_FILE)
    if not storage.exists(path):
        storage.write_bytes(path, runs.dumps(record).encode())
        return False
    previous = runs.read_json(path)
    if previous != json.loads(runs.dumps(record)):
        changed = sorted(set(previous["arms"]) ^ set(record["arms"])) or sorted(
            k for k in previous["options"] if previous["options"][k] != record["options"].get(k))
        raise SpecError(f"sweep {sweep_dir.rsplit('/', 1)[-1]!r} already exists with another grid "
                        f"(differs in: {', '.join(map(str, changed[:4])) or 'the arms specs'}); relaunch it unchanged "
                        "to resume it, or pick a new --name")
    return True


def _trial(config: dict[str, Any], specs: dict[str, dict], trials_root: str, kernel_cache: str | None,
           data_origin: str | None, keep_checkpoints: bool = False) -> None:
    """A Tune trial: one train() run of an arm and seed, reporting to Tune through Ray Train's callback."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from hybrid_ray.train import train

    spec = trial_spec(RunSpec.from_dict(specs[config["arm"]]), config["arm"], config["seed"], trials_root)
    runs.set_aside_damaged(storage.join(trials_root, spec.name))
    done = runs.read_results(storage.join(trials_root, spec.name)) or {}
    if done.get("status") == "finished" and done.get("total_steps") == spec.train.steps:
        # finished before the sweep was interrupted (and Tune's own record of it was lost): report, do not retrain
        evaluations = sum("val_loss" in r for r in done.get("history", []))
        tune.report({**(done.get("final") or {}), "step": done["step"], "evaluations": evaluations, "evaluated": False})
        return
    outcome = train(spec, callbacks=[TuneReportCallback()], progress=False, kernel_cache=kernel_cache,
                    data_origin=data_origin)
    if outcome.finished:
        status_lib.settle(outcome.run_dir, keep_checkpoints)  # free its disk now, not at the sweep's end


class Console(Callback):
    """A Tune callback that prints one line per trial event, with the current ranking by best validation loss.

    Tune pickles it with the experiment and restores it on a relaunch: `setup` restarts its clock for each launch."""

    def __init__(self, total: int, steps: dict[str, int], sweep_dir: str) -> None:
        self.total, self.steps, self.sweep_dir = total, steps, sweep_dir
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
        stop = status_lib.read_stops(self.sweep_dir).get(self._name(trial))
        if step >= self.steps[trial.config["arm"]]:
            self._line(f"finished  {self._name(trial)}")
        elif stop is not None:
            self._line(f"stopped   {self._name(trial)} by ASHA after step {stop['step']}")
        else:  # Tune ends a trial it was told to stop (Ctrl-C) like one it completed
            self._line(f"cut       {self._name(trial)} at step {step}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(f"failed    {self._name(trial)}: {status_lib.error_line(ray_compat.trial_error(trial))}")


def sweep(
    base: RunSpec,
    options: SweepOptions,
    *,
    address: str | None = None,
    progress: bool = True,
    verbose: bool = False,
    relaunch: str | None = None,
) -> SweepOutcome:
    """Run (or resume) the sweep `base.name`: every arm of the grid times every seed, under `base.storage_path`.

    Ctrl-C or SIGTERM stops it resumably: the table so far is written and Interrupted (exit code 130) says how to
    relaunch (`relaunch`, the command line, when given)."""
    arms = expand(base, parse_grid(options.grid))  # grid errors before anything else
    base, dataset = check_locally(base, address=address, extend_steps=0, until_step=None, progress=progress)
    arms = _on_resolved_base(arms, base, options)
    if options.scheduler == "asha":
        grace_period(options, arms)  # an ASHA rung inside the warm-up is refused before anything starts
    for arm in arms:
        if arm.spec.data != base.data:
            check_locally(arm.spec, address=address, extend_steps=0, until_step=None, progress=progress)
    sweep_dir = storage.join(base.storage_path, base.name)  # made by _claim: a refused sweep leaves no folder behind

    where = cluster.connect(address, verbose=verbose)
    have = cluster.resources()
    planned = plan_sweep(arms, options, have, cluster.gpu_memory(have, local=cluster.node_count() == 1), sweep_dir)
    arms, concurrent, disk = planned.arms, planned.concurrent, planned.disk
    resumed = _claim(sweep_dir, _grid_record(options, arms))
    trials = len(arms) * options.seeds
    if progress:
        counts = sorted({count_params(a.spec.model)["total"] for a in arms})
        sizes = f"{counts[0] / 1e6:.2f}M" + (f"-{counts[-1] / 1e6:.2f}M" if len(counts) > 1 else "")
        print(f"{'resuming' if resumed else 'sweeping'} {base.name} on {where}: {len(arms)} arm(s) x {options.seeds} "
              f"seed(s) = {trials} trial(s), {concurrent} at a time, {options.scheduler.upper()}, {sizes} parameters",
              flush=True)
        print(f"  sweep folder: {sweep_dir} (disk: {sweep_plan.gb(disk.to_write)} to write, up to "
              f"{sweep_plan.gb(disk.need)} at the peak)", flush=True)
        if options.scheduler == "asha":
            print(f"  {asha_line(options, arms)}", flush=True)
        if not storage.is_uri(sweep_dir):
            print(f"  watch: tensorboard --logdir {storage.join(sweep_dir, 'trials')}", flush=True)
        if dashboard := cluster.dashboard_url():
            print(f"  Ray dashboard: {dashboard}", flush=True)

    started = time.time()
    origin = share_data(base, dataset)
    outcomes, interrupted = _fit(base, options, arms, sweep_dir, concurrent, resumed, progress, verbose, origin)
    rerun = not interrupted and options.scheduler != "asha"  # ASHA's stops cannot be replayed in a new Tuner
    removed = removed_trials(outcomes, sweep_dir) if rerun else []
    if removed:
        # Tune never runs an ended trial again: a new Tuner over the grid trains them (the others only report)
        if progress:
            print(f"training again the trial(s) whose run folder was deleted: {', '.join(removed)}", flush=True)
        outcomes, interrupted = _fit(base, options, arms, sweep_dir, concurrent, False, progress, verbose, origin)
    rows = collect(arms, options.seeds, sweep_dir, dataset, outcomes=outcomes, keep_checkpoints=options.keep_checkpoints)
    if options.eval_tasks and not interrupted:
        rows = evaluate_finished(rows, options, address, progress)
    outcome = write_outputs(sweep_dir, rows, title=base.name)
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    if interrupted or not all(r["status"] in status_lib.ENDED for r in rows):
        if progress:
            print(outcome.table, flush=True)
        how = f": {relaunch}" if relaunch else " (the same sweep name and storage path)"
        raise Interrupted(f"sweep {base.name} interrupted after {time.time() - started:.0f}s ({summary}); "
                          f"relaunch the same command to resume it{how}")
    if progress:
        print(f"sweep finished in {time.time() - started:.0f}s: {summary}", flush=True)
    failed = [r for r in rows if r["status"] == status_lib.FAILED]
    if failed:
        if progress:  # the table says why each failed
            print(outcome.table, flush=True)
            print(f"results: {outcome.sweep_dir}", flush=True)
        first = failed[0]
        raise SweepFailed(f"{len(failed)} trial(s) of sweep {base.name} failed ({first['name']}: {first['reason']}"
                          f"{'; ...' if len(failed) > 1 else ''}); the table says why, and relaunching the same "
                          "command retries them")
    return outcome


@dataclass
class SweepPlan:
    """How a sweep sits on a cluster: its arms as their trials train them (GPU shares applied), each arm's resource
    plan, trials at once, and the disk it still needs; the same plan for a launch, a relaunch and --dry-run."""

    arms: list[Arm]
    plans: list[sweep_plan.ResourcePlan]
    concurrent: int
    disk: sweep_plan.DiskPlan
    gpu_memory: int | None
    gpus: float
    disk_bound: bool = False  # fewer trials at once than the cluster holds, because the disk holds no more

    def describe(self, options: SweepOptions) -> str:
        plans = [dataclasses.replace(p, concurrent=self.concurrent) for p in self.plans]
        text = sweep_plan.describe_sweep(self.arms, plans, self.disk, self.gpu_memory, self.gpus, options.seeds)
        if self.disk_bound:
            text += (f"\n{self.concurrent} trial(s) at a time, not {min(p.concurrent for p in self.plans)}: the disk "
                     "holds no more (--max-concurrent sets it)")
        return text + (f"\n{asha_line(options, self.arms)}" if options.scheduler == "asha" else "")


def plan_sweep(arms: list[Arm], options: SweepOptions, have: dict[str, float], gpu_memory: int | None,
               sweep_dir: str, *, free: int | None = None, check: bool = True) -> SweepPlan:
    """Size every arm on a cluster of `have` (GPUs of `gpu_memory` bytes; None: unknown), then the disk from what the
    sweep's trials hold now (a relaunch needs only what remains to be written). `check`: refuse, in one line, a
    packing or a disk that cannot hold the sweep; `free`: the free bytes to plan against (default: the storage's)."""
    plans = [sweep_plan.plan(arm.spec, have, trial=True, gpus_per_trial=options.gpus_per_trial,
                             max_concurrent=options.max_concurrent, gpu_memory=gpu_memory, label=arm.id)
             for arm in arms]
    arms = [dataclasses.replace(arm, spec=p.apply(arm.spec)) for arm, p in zip(arms, plans)]
    concurrent = min(p.concurrent for p in plans)  # the largest arm bounds it
    trials = {trial_name(a.id, seed): a.spec for a in arms for seed in range(options.seeds)}
    on_disk = sweep_plan.trials_on_disk(sweep_dir, list(trials))
    kwargs = {"on_disk": on_disk, "keep_checkpoints": options.keep_checkpoints}
    free = free if free is not None else sweep_plan.free_bytes(sweep_dir)
    fits = concurrent
    if options.max_concurrent is None and free is not None:  # the default runs no more at once than the disk holds
        while fits > 1 and sweep_plan.disk_plan(trials, fits, free, **kwargs).to_write > free:
            fits -= 1
    if check:
        disk = sweep_plan.check_disk(trials, fits, sweep_dir, free=free, **kwargs)
    else:
        disk = sweep_plan.disk_plan(trials, fits, free, **kwargs)
    return SweepPlan(arms, plans, fits, disk, gpu_memory, have.get("GPU", 0.0), disk_bound=fits < concurrent)


@dataclass(frozen=True)
class Assumed:
    """The cluster a dry run plans for instead of the one at hand (None: what this machine or --address has)."""

    gpus: int | None = None
    gpu_memory_gb: float | None = None
    free_disk_gb: float | None = None
    cpus_per_gpu: int = 16  # a GPU node's cores per GPU (an H100 node: 16 a GPU)


def dry_run(base: RunSpec, options: SweepOptions, *, address: str | None = None,
            assume: Assumed = Assumed()) -> SweepPlan:
    """Print the sweep's plan without training (or tokenizing): arms, parameters, MLP widths, GPU memory per trial
    against its share, trials at once, disk, kernel shapes; then refuse, in one line, what would be refused at launch.
    Plans for `assume` where given, else for the cluster at `address` (or $RAY_ADDRESS), else for this machine."""
    arms = expand(base, parse_grid(options.grid))
    base = dataclasses.replace(base, storage_path=storage.normalize(base.storage_path))
    base = dataclasses.replace(base, model=base.model.with_vocab(_planned_vocab(base)))
    arms = _on_resolved_base(arms, base, options)
    if options.scheduler == "asha":
        grace_period(options, arms)
    have, memory = _cluster_to_plan(address, assume)
    sweep_dir = storage.join(base.storage_path, base.name)
    free = int(assume.free_disk_gb * 1e9) if assume.free_disk_gb is not None else None
    planned = plan_sweep(arms, options, have, memory, sweep_dir, free=free, check=False)
    print(planned.describe(options), flush=True)
    plan_sweep(arms, options, have, memory, sweep_dir, free=free)  # the launch's refusals, after the plan
    return planned


def _planned_vocab(spec: RunSpec) -> int:
    """The model vocabulary a launch would resolve, without tokenizing the corpus (a synthetic task is made, cheaply)."""
    if spec.model.vocab_size is not None:
        return spec.model.vocab_size
    from hybrid_ray import data as data_lib

    if spec.data.parsed.kind == "mqar":
        return data_lib.prepare(spec.data).model_vocab_size
    from hybrid_ray.data.tokenizer import get_tokenizer

    return -(-get_tokenizer(spec.data.tokenizer).vocab_size // 64) * 64


def _cluster_to_plan(address: str | None, assume: Assumed) -> tuple[dict[str, float], int | None]:
    """(Ray resources, GPU memory in bytes) of the cluster a dry run plans for."""
    if assume.gpus is not None:
        memory = int(assume.gpu_memory_gb * 1e9) if assume.gpu_memory_gb else None
        return {"CPU": float(max(1, assume.gpus) * assume.cpus_per_gpu), "GPU": float(assume.gpus)}, memory
    if address or cluster.address_from_env():
        cluster.connect(address)
        have = cluster.resources()
        memory = cluster.gpu_memory(have, local=cluster.node_count() == 1)
    else:  # this machine, as a local Ray would see it, without starting one
        cards = cluster.local_gpu_memory()
        have, memory = {"CPU": float(os.cpu_count() or 1), "GPU": float(len(cards))}, (min(cards) if cards else None)
    if assume.gpu_memory_gb:
        memory = int(assume.gpu_memory_gb * 1e9)
    return have, memory


def asha_line(options: SweepOptions, arms: list[Arm]) -> str:
    """What ASHA will do, in the run's steps: when it may first stop a trial and where its rungs are."""
    grace = grace_period(options, arms)
    every, max_evals = arms[0].spec.train.eval_every, max_evaluations(arms)
    rungs, milestone = [], grace
    while milestone < max_evals:
        rungs.append(milestone * every)
        milestone *= options.reduction_factor
    how = "--grace-period" if options.grace_period is not None else "after the warm-up and a quarter of the run"
    where = (f"rungs at step(s) {', '.join(map(str, rungs))}" if rungs else
             "no rung before the last evaluation: it will stop no trial")
    return (f"ASHA: no trial stopped before step {grace * every} ({grace} evaluation(s), {how}; warm-up "
            f"{arms[0].spec.optim.warmup_steps} steps), keeps 1 in {options.reduction_factor}, {where}")


def kernel_cache_for(sweep_dir: str) -> str | None:
    """Where the trials share compiled kernels between nodes: the storage path holding the sweep (its `.kernels/`).
    Each node's Triton reads its own copy, in the node's kernel cache (hybrid_ray/kernels.py)."""
    return sweep_dir.rstrip("/").rsplit("/", 1)[0]


class _Signals:
    """While a sweep runs: SIGTERM stops it like Ctrl-C (Tune's SIGINT handler ends the run and saves its state);
    unless verbose, Tune's own banner, hints and log lines stay off the console."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose

    def __enter__(self) -> _Signals:
        self.main = threading.current_thread() is threading.main_thread()
        if self.main:
            self.term = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
        self.output = os.environ.get("RAY_AIR_NEW_OUTPUT")
        self.level = logging.getLogger("ray.tune").level
        if not self.verbose:
            os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the legacy reporter is silent at verbose=0; the new one is not
            logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
        return self

    def __exit__(self, *exc) -> None:
        if self.main:
            signal.signal(signal.SIGTERM, self.term)
        if self.output is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = self.output
        logging.getLogger("ray.tune").setLevel(self.level)


# Tune does not retry a failed trial: the trial's train() already restarts its worker group from its newest checkpoint
# up to scale.max_failures times (Ray Train's own FailureConfig, inside the trial), so a Tune retry would multiply
# those attempts and rerun what no retry fixes (a diverged loss, a full disk, bad input). One failed trial does not
# stop the others (fail_fast=False), and relaunching the sweep resumes it from its newest checkpoint (resume_errored).
TRIAL_FAILURES = {"max_failures": 0, "fail_fast": False}


def run_config(base: RunSpec, callbacks: list[Callback]) -> Any:
    """The Tuner's RunConfig: the sweep's folder, its console, and how it treats a failed trial."""
    from ray import tune

    return tune.RunConfig(name=base.name, storage_path=base.storage_path, callbacks=callbacks, verbose=0,
                          failure_config=tune.FailureConfig(**TRIAL_FAILURES))


class RecordedASHA(ASHAScheduler):
    """ASHA that records each of its decisions to stop a trial (which trial, at which step) in the sweep folder before
    Tune acts on it. Tune ends a trial that Ctrl-C, SIGTERM or a lost node cut exactly as one ASHA stopped
    (TERMINATED), so this record is the only honest source of "stopped by ASHA" (sweep_status.trial_status)."""

    def __init__(self, sweep_dir: str, keep_checkpoints: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sweep_dir, self.keep_checkpoints = sweep_dir, keep_checkpoints

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == self.STOP and result.get(self._time_attr, 0) >= self._max_t:
            # ASHA's rungs go on past max_t: one there "stops" a trial at its last evaluation, which ends it anyway
            # with its results written; stopping it would kill it before it writes them
            return self.CONTINUE
        if decision == self.STOP:
            status_lib.record_stop(self.sweep_dir, trial_name(trial.config["arm"], trial.config["seed"]), result)
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        name = trial_name(trial.config["arm"], trial.config["seed"])
        if name in status_lib.read_stops(self.sweep_dir):
            # free its optimizer state now, not at the sweep's end: the disk plan counts a stopped trial at what an
            # ended one keeps (its report's checkpoint is complete by the time ASHA judged that report)
            status_lib.settle(storage.join(self.sweep_dir, "trials", name), self.keep_checkpoints)


def _scheduler(options: SweepOptions, arms: list[Arm], sweep_dir: str) -> Any:
    """ASHA on the evaluation count (or FIFO), recording its stops in `sweep_dir`."""
    from ray.tune.schedulers import FIFOScheduler

    if options.scheduler == "fifo":
        return FIFOScheduler()
    return RecordedASHA(
        sweep_dir, options.keep_checkpoints, time_attr="evaluations", metric="val_loss", mode="min",
        max_t=max_evaluations(arms),
        grace_period=grace_period(options, arms), reduction_factor=options.reduction_factor,
        # a trial at its last evaluation ends by itself (results, model/, its placement group freed by Ray Train);
        # stopping it there would kill it before it writes them, and free its resources only through the dashboard
        stop_last_trials=False)


def _new_tuner(trainable: Any, base: RunSpec, options: SweepOptions, arms: list[Arm], sweep_dir: str, concurrent: int,
               progress: bool) -> Any:
    """A new sweep's Tuner: every arm times every seed, `concurrent` at a time."""
    from ray import tune

    steps = {arm.id: arm.spec.train.steps for arm in arms}
    callbacks = [Console(len(arms) * options.seeds, steps, sweep_dir)] if progress else []
    return tune.Tuner(
        trainable,
        param_space={"arm": tune.grid_search([a.id for a in arms]), "seed": tune.grid_search(list(range(options.seeds)))},
        tune_config=tune.TuneConfig(scheduler=_scheduler(options, arms, sweep_dir), max_concurrent_trials=concurrent),
        run_config=run_config(base, callbacks),
    )


def _fit(base: RunSpec, options: SweepOptions, arms: list[Arm], sweep_dir: str, concurrent: int, resumed: bool,
         progress: bool, verbose: bool, data_origin: str | None) -> tuple[dict[str, status_lib.TuneOutcome], bool]:
    """Run the Tuner; returns Tune's outcome of every trial it knows, by trial name, and whether it was interrupted."""
    from ray import tune

    specs = {arm.id: arm.spec.to_dict() for arm in arms}
    trials_root = storage.join(sweep_dir, "trials")
    trainable = tune.with_parameters(_trial, specs=specs, trials_root=trials_root, kernel_cache=kernel_cache_for(sweep_dir),
                                     data_origin=data_origin, keep_checkpoints=options.keep_checkpoints)
    # the trial itself only waits on its TorchTrainer, whose workers hold the CPUs and GPUs
    trainable = tune.with_resources(trainable, {"CPU": sweep_plan.TRIAL_CPU})
    path = storage.join(base.storage_path, base.name)
    with _Signals(verbose):
        try:
            if resumed and tune.Tuner.can_restore(path):
                # Tune kept the first launch's settings (scheduler, concurrency, run config) in the sweep folder
                tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
            else:
                tuner = _new_tuner(trainable, base, options, arms, sweep_dir, concurrent, progress)
            grid = tuner.fit()
        except KeyboardInterrupt:  # a second Ctrl-C, or one before Tune's handler was in place
            return {}, True
    outcomes = {}
    for trial in ray_compat.tune_trials(grid):
        error = ray_compat.trial_error(trial) if trial.status == "ERROR" else None
        outcomes[trial_name(trial.config["arm"], trial.config["seed"])] = status_lib.TuneOutcome(
            state=trial.status, error=status_lib.error_line(error), interrupted=status_lib.is_interruption(error),
            seconds=(trial.last_result or {}).get("time_total_s"))
    # Tune ends the trials it cuts on Ctrl-C as TERMINATED (and saves them as running, to resume): with nothing left
    # pending, only the trials' own state shows that the sweep was interrupted
    statuses = trial_statuses(outcomes, sweep_dir)
    interrupted = any(s in (status_lib.INTERRUPTED, status_lib.NOT_STARTED) for s, _ in statuses.values())
    return outcomes, interrupted


def _on_disk(run_dir: str) -> tuple[dict[str, Any] | None, int | None, bool]:
    """A trial's results.json (one that cannot be read is set aside: it is written again from the newest checkpoint),
    its newest checkpoint's step, and whether its run folder is gone (no spec.yaml)."""
    runs.set_aside_damaged(run_dir)
    gone = not storage.exists(storage.join(run_dir, runs.SPEC_FILE))
    return runs.read_results(run_dir), ckpt_lib.newest_step(run_dir), gone


def trial_statuses(outcomes: dict[str, status_lib.TuneOutcome], sweep_dir: str) -> dict[str, tuple[str, str | None]]:
    """(status, reason) of every trial Tune knows, from its run folder, Tune's outcome and ASHA's record."""
    stops = status_lib.read_stops(sweep_dir)
    statuses = {}
    for name, outcome in outcomes.items():
        results, newest, gone = _on_disk(storage.join(sweep_dir, "trials", name))
        statuses[name] = status_lib.trial_status(results, newest, outcome, stops.get(name), gone=gone)
    return statuses


def removed_trials(outcomes: dict[str, status_lib.TuneOutcome], sweep_dir: str) -> list[str]:
    """The trials Tune ran to their end whose run folder was deleted since (see sweep_status.REMOVED)."""
    return [name for name, (status, _) in trial_statuses(outcomes, sweep_dir).items() if status == status_lib.REMOVED]


def collect(arms: list[Arm], seeds: int, sweep_dir: str, dataset: Any, *,
            outcomes: dict[str, status_lib.TuneOutcome] | None = None,
            keep_checkpoints: bool = False) -> list[dict[str, Any]]:
    """One row per trial from its run folder, with its status; a trial that ASHA stopped (or the sweep interrupted)
    gets its results.json written now, from its newest checkpoint, so it keeps its results like any other run. Only
    trials that ended for good (finished, stopped by ASHA) drop their optimizer state: an interrupted one resumes."""
    outcomes = outcomes or {}
    stops = status_lib.read_stops(sweep_dir)
    rows = []
    for arm in arms:
        for seed in range(seeds):
            name = trial_name(arm.id, seed)
            run_dir = storage.join(sweep_dir, "trials", name)
            results, newest, gone = _on_disk(run_dir)
            outcome = outcomes.get(name)
            if newest is not None and (results is None or results.get("step", 0) < newest):
                spec = trial_spec(arm.spec, arm.id, seed, storage.join(sweep_dir, "trials"))
                wall = outcome.seconds if outcome is not None and outcome.seconds else 0.0
                if runs.launch_count(run_dir) == 0:  # cut before its train() could count the launch that trained it
                    runs.count_launch(run_dir)
                results = finalize(spec, run_dir, dataset, wall or _trained_seconds(run_dir)).results
            status, reason = status_lib.trial_status(results, newest, outcome, stops.get(name), gone=gone)
            if status in (status_lib.FINISHED, status_lib.STOPPED):
                status_lib.settle(run_dir, keep_checkpoints)
            if results is None and status == status_lib.STOPPED:
                results = _seen_by_asha(arm.spec, stops[name])
            row = report.trial_row(arm.id, arm.settings, seed, name, run_dir, results, numeric_value(arm))
            rows.append({**row, "status": status, "reason": reason})
    return rows


def _seen_by_asha(spec: RunSpec, stop: dict[str, Any]) -> dict[str, Any]:
    """What is known of a trial ASHA stopped before its first checkpoint: the evaluation ASHA judged it on (its
    run folder holds no results; the table ranked it with none, though ASHA had compared its loss)."""
    seen = {"step": stop.get("step"), "val_loss": stop.get("val_loss")}
    return {"status": "stopped", "step": stop.get("step") or 0, "total_steps": spec.train.steps,
            "params": count_params(spec.model), "attention_layers": spec.model.attn_layers, "best": seen,
            "final": seen, "spec": spec.to_dict(), "history": [seen]}


def _trained_seconds(run_dir: str) -> float:
    """Wall seconds a trial's checkpoints account for (training and compiling), when Tune recorded none for it."""
    newest = ckpt_lib.latest(run_dir)
    state = ckpt_lib.read_state(newest) if newest else None
    return (state.train_seconds + state.compile_seconds) if state else 0.0


def evaluate_finished(rows: list[dict[str, Any]], options: SweepOptions, address: str | None,
                      progress: bool) -> list[dict[str, Any]]:
    """Score every finished trial on the sweep's eval tasks (Ray tasks, on GPUs when the cluster has them)."""
    from hybrid_ray.evals import evaluate_on_cluster

    finished = [r for r in rows if r["status"] == "finished"]
    for task in options.eval_tasks:
        if progress:
            print(f"evaluating {len(finished)} finished trial(s) on {task}", flush=True)
        results = evaluate_on_cluster([r["run_dir"] for r in finished], task, address=address, data=options.eval_data)
        for row, result in zip(finished, results):
            row.setdefault("evals", {})[task] = result
    return rows


def write_outputs(sweep_dir: str, rows: list[dict[str, Any]], title: str) -> SweepOutcome:
    """sweep.json, sweep.png and the ranked table."""
    table, figure = report.write_comparison(sweep_dir, rows, title, SWEEP_FILE, FIGURE_FILE)
    return SweepOutcome(sweep_dir=sweep_dir, rows=rows, table=table, figure=figure)
