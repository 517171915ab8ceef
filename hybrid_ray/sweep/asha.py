"""ASHA on the evaluation count: the grace period (not inside the learning-rate warm-up), its max_t, the line that says
what it will do, and the scheduler that records each stop in the sweep folder (the only honest "stopped by ASHA")."""

from __future__ import annotations

import math
from typing import Any

from ray.tune.schedulers import ASHAScheduler

from hybrid_ray.config.grid import Arm
from hybrid_ray.errors import SpecError
from hybrid_ray.layout import SweepLayout
from hybrid_ray.sweep import status
from hybrid_ray.sweep.options import SweepOptions
from hybrid_ray.sweep.status import trial_name
from hybrid_ray.train.checkpoint import CheckpointManager


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


class RecordedASHA(ASHAScheduler):
    """ASHA that records each of its decisions to stop a trial (which trial, at which step) in the sweep folder before
    Tune acts on it. Tune ends a trial that Ctrl-C, SIGTERM or a lost node cut exactly as one ASHA stopped
    (TERMINATED), so this record is the only honest source of "stopped by ASHA" (status.trial_status)."""

    def __init__(self, sweep: SweepLayout, keep_checkpoints: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sweep, self.keep_checkpoints = sweep, keep_checkpoints

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == self.STOP and result.get(self._time_attr, 0) >= self._max_t:
            # ASHA's rungs go on past max_t: one there "stops" a trial at its last evaluation, which ends it anyway
            # with its results written; stopping it would kill it before it writes them
            return self.CONTINUE
        if decision == self.STOP:
            status.record_stop(self.sweep, trial_name(trial.config["arm"], trial.config["seed"]), result)
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        name = trial_name(trial.config["arm"], trial.config["seed"])
        if name in status.read_stops(self.sweep):
            # free its optimizer state now, not at the sweep's end: the disk plan counts a stopped trial at what an
            # ended one keeps (its report's checkpoint is complete by the time ASHA judged that report)
            CheckpointManager(self.sweep.trial(name)).settle(self.keep_checkpoints)


def scheduler(options: SweepOptions, arms: list[Arm], sweep: SweepLayout) -> Any:
    """ASHA on the evaluation count (or FIFO), recording its stops in the sweep's folder."""
    from ray.tune.schedulers import FIFOScheduler

    if options.scheduler == "fifo":
        return FIFOScheduler()
    return RecordedASHA(
        sweep, options.keep_checkpoints, time_attr="evaluations", metric="val_loss", mode="min",
        max_t=max_evaluations(arms),
        grace_period=grace_period(options, arms), reduction_factor=options.reduction_factor,
        # a trial at its last evaluation ends by itself (results, model/, its placement group freed by Ray Train);
        # stopping it there would kill it before it writes them, and free its resources only through the dashboard
        stop_last_trials=False)
