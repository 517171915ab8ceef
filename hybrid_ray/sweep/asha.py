"""ASHA on the evaluation count: the grace period (not inside the learning-rate warm-up), its max_t and rungs, the line
that says what it will do, and the scheduler that records each judgement in the sweep folder (the only honest
"stopped by ASHA", and what a relaunch gives back to its rungs)."""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass
from typing import Any

from ray.tune.schedulers import ASHAScheduler

from hybrid_ray.config.grid import Arm
from hybrid_ray.errors import SpecError, first_line
from hybrid_ray.layout import SweepLayout
from hybrid_ray.records import decisions
from hybrid_ray.sweep.options import SweepOptions
from hybrid_ray.sweep.status import trial_name


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


def rung_evaluations(options: SweepOptions, arms: list[Arm]) -> list[int]:
    """The evaluations at which ASHA judges a trial, before the last one: its grace period times the reduction
    factor's powers, where Ray's bracket puts its rungs (a rung at or past max_t judges nothing: sweep/asha.py)."""
    rungs, milestone, max_evals = [], grace_period(options, arms), max_evaluations(arms)
    while milestone < max_evals:
        rungs.append(math.ceil(milestone))
        milestone *= options.reduction_factor
    return rungs


def rung_steps(options: SweepOptions, arms: list[Arm], arm: Arm) -> list[int]:
    """The steps of `arm` at which ASHA judges it: each is an evaluation, which its trial also saves as a checkpoint
    and where it waits for the judgement (train/rungs.py), so the model and numbers kept are the ones judged."""
    if options.scheduler != "asha":
        return []
    every, steps = arm.spec.train.eval_every, arm.spec.train.steps
    return [m * every for m in rung_evaluations(options, arms) if m * every < steps]


def asha_line(options: SweepOptions, arms: list[Arm]) -> str:
    """What ASHA will do, in the run's steps: when it may first stop a trial and where its rungs are."""
    grace = grace_period(options, arms)
    every = arms[0].spec.train.eval_every
    rungs = [m * every for m in rung_evaluations(options, arms)]
    how = "--grace-period" if options.grace_period is not None else "after the warm-up and a quarter of the run"
    where = (f"rungs at step(s) {', '.join(map(str, rungs))}" if rungs else
             "no rung before the last evaluation: it will stop no trial")
    return (f"ASHA: no trial stopped before step {grace * every} ({grace} evaluation(s), {how}; warm-up "
            f"{arms[0].spec.optim.warmup_steps} steps), keeps 1 in {options.reduction_factor}, {where}")


ORDER_SEED = 0


def launch_order(options: SweepOptions, arm_ids: list[str]) -> list[str]:
    """The order in which the arms' trials start (every arm's seed 0 first, then seed 1, ...). ASHA judges a trial
    at a rung only against those recorded there before it, so a grid whose later arms are better (an ascending LR
    grid, where the larger LR wins) is never cut: an H100 sweep of 7 LRs stopped none. Under ASHA the arms start in
    a shuffled order, seeded, so a sweep's decisions repeat; FIFO keeps the grid's order."""
    if options.scheduler != "asha":
        return list(arm_ids)
    order = list(arm_ids)
    random.Random(ORDER_SEED).shuffle(order)
    return order


@dataclass(frozen=True)
class _Named:
    """What ASHA's bracket needs of a trial: a key for its rung records. hybrid-ray keys them by the trial's name
    (`<arm>-s<seed>`), which a relaunch keeps, so the records can be given back to a relaunched scheduler."""

    trial_id: str


class RecordedASHA(ASHAScheduler):
    """ASHA that writes each judgement it makes at a rung (continue or stop) to the sweep's record of decisions
    before Tune hears of it, and reads that record back when a relaunch builds it anew, so the same losses give the
    same stops whether or not the sweep was interrupted.

    It never stops a trial itself and never touches a run folder: a trial waits at each rung for its judgement and,
    told to stop, ends there on its own, saved, finalized and settled by its own run (train/rungs.py), so that what
    ASHA judged is what the trial reports and keeps. Tune ends a trial that Ctrl-C cut exactly as one that ended, so
    this record is also the only honest source of "stopped by ASHA" (status.trial_status)."""

    def __init__(self, sweep: SweepLayout, groups: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sweep = sweep
        self._restored = False
        # arm id -> its group: ASHA judges a trial only against trials of its own group, each group with a bracket
        # of its own (tune-lr's stage 1: an LR trial of one arm is never compared with another arm's). None: one group
        self.groups = groups
        self._group_brackets: dict[str, Any] = {}
        self._settings = kwargs

    def _bracket(self, arm: str | None = None) -> Any:
        if self.groups is None or arm is None:
            return self._brackets[0]  # one bracket: ASHA's default, and what hybrid-ray builds
        from ray.tune.schedulers.async_hyperband import _Bracket

        group = self.groups.get(arm, arm)
        if group not in self._group_brackets:
            self._group_brackets[group] = _Bracket(
                self._settings["grace_period"], self._settings["max_t"], self._settings["reduction_factor"], 0,
                stop_last_trials=self._settings.get("stop_last_trials", True))
        return self._group_brackets[group]

    def _rungs(self, arm: str | None = None) -> list[tuple[float, dict]]:
        return self._bracket(arm)._rungs

    def restore_rungs(self) -> None:
        """Give the rungs back the judgements recorded before (a relaunch's scheduler starts empty); once."""
        if self._restored:
            return
        self._restored = True
        for record in decisions.read(self.sweep.asha_decisions):
            arm = str(record["trial"]).rsplit("-s", 1)[0]
            for milestone, recorded in self._rungs(arm):
                if math.isclose(milestone, record.get("milestone", -1)):
                    recorded[record["trial"]] = self._metric_op * float(record["val_loss"])

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self.restore_rungs()
        if self._time_attr not in result or self._metric not in result or result[self._time_attr] >= self._max_t:
            # ASHA's rungs go on past max_t: the last evaluation is no rung, the trial ends there by itself
            return self.CONTINUE
        arm = trial.config["arm"]
        name = trial_name(arm, trial.config["seed"])
        before = {m for m, recorded in self._rungs(arm) if name in recorded}
        decision = self._bracket(arm).on_result(_Named(name), result[self._time_attr],
                                                self._metric_op * result[self._metric])
        judged = [m for m, recorded in self._rungs(arm) if name in recorded and m not in before]
        if judged:
            if decision == self.STOP:
                self._num_stopped += 1
            self._record(name, judged[0], result, decision)
        return self.CONTINUE  # the trial stops itself at the rung, when it reads the decision

    def _record(self, name: str, milestone: float, result: dict, decision: str) -> None:
        line = {"trial": name, "milestone": milestone, "evaluations": result.get(self._time_attr),
                "step": result.get("step"), "val_loss": result.get(self._metric),
                "decision": decisions.STOP if decision == self.STOP else decisions.CONTINUE}
        try:
            decisions.append(self.sweep.asha_decisions, line)
        except OSError as e:  # a bookkeeping failure must not fail the trial: it waits, then goes on (train/rungs.py)
            warnings.warn(f"could not record ASHA's decision on {name} at step {line['step']}: {first_line(e)}")

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        # judgements come from the results the trial reported at its rungs, never from how Tune ended it
        self._trial_info.pop(trial.trial_id, None)


def scheduler(options: SweepOptions, arms: list[Arm], sweep: SweepLayout,
              groups: dict[str, str] | None = None) -> Any:
    """ASHA on the evaluation count (or FIFO), recording its decisions in the sweep's folder; `groups` (arm id ->
    group): one ASHA per group, which judges a trial only against its own group's."""
    from ray.tune.schedulers import FIFOScheduler

    if options.scheduler == "fifo":
        return FIFOScheduler()
    return RecordedASHA(
        sweep, groups, time_attr="evaluations", metric="val_loss", mode="min",
        max_t=max_evaluations(arms),
        grace_period=grace_period(options, arms), reduction_factor=options.reduction_factor,
        # judged with the rungs' own records only (a trial past its last rung is never stopped)
        stop_last_trials=False)
