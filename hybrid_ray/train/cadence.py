"""When the worker loop logs, evaluates, checkpoints and reports: the rules, apart from the work they schedule.

Each component owns its cadence (`MetricsLogger.should_log`, `Evaluator.should_evaluate`, `Checkpointer.should_save`,
all an `Every`); `report_due` is the one rule for Ray Train's report. All of them depend on the step number alone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Every:
    """Due every `steps` steps (counted from step 0 of the run, so a resumed run keeps the same steps) and at the
    last step of a launch, so that a launch always ends logged, evaluated and saved."""

    steps: int

    def due(self, step: int, last: bool) -> bool:
        return step % self.steps == 0 or last


def report_due(saved: bool, evaluated: bool) -> bool:
    """Whether a step reports to Ray Train: when it saved a checkpoint (Ray registers and uploads it) or evaluated
    (the metrics Tune's schedulers decide on).

    Ray Train's report is a barrier: every rank's call waits for every other rank's, so every rank must report at the
    same steps, or the ranks that did report wait forever. Both conditions follow from the step number alone (the
    cadences above), the same on every rank: never make a report depend on anything one rank measured. Steps that
    only log do not report: each report waits until Ray Train's controller has taken the previous one, which it polls
    every 2 s, and a report per log line stalled a fast model 4x.
    """
    return saved or evaluated
