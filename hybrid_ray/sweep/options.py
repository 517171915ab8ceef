"""How to sweep (SweepOptions): the grid, seeds, the scheduler, packing, downstream evals; from a job file's `sweep`
section with the command line's flags on top."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hybrid_ray.errors import SpecError, first_line, suggest

SCHEDULERS = ("asha", "fifo")
# the settings that say how to run a sweep, not what it is: a relaunch may change them (sweep/tuner.py, sweep/study.py)
HOW_TO_RUN = ("max_concurrent", "keep_checkpoints", "keep_weights")


@dataclass(kw_only=True)
class SweepOptions:
    """How to sweep; the base RunSpec says what each trial trains."""

    grid: list[str]
    seeds: int = 1
    scheduler: str = "asha"
    grace_period: int | None = None  # evaluations before ASHA may stop a trial; None: grace_period() decides
    reduction_factor: int = 3
    max_concurrent: int | None = None  # None: as many trials as the cluster holds (train/plan.py, concurrency)
    gpus_per_trial: float | None = None  # None: as many trials a GPU as its memory holds (train/plan.py, plan)
    match_params: bool = False
    reference_arm: str | None = None  # --match-params REF; None: the arm without attention
    eval_tasks: list[str] = field(default_factory=list)  # downstream tasks scored on every finished trial
    eval_data: str | None = None  # their data when the hub is out of reach (one task)
    keep_checkpoints: bool = False  # ended trials keep every checkpoint with its optimizer state
    keep_weights: bool = True  # False: ended trials keep only their records (a --tune-lr search's trials)
    tune_lr: bool = False  # each arm at its own best learning rate, then the seeds (sweep/study.py)
    lr_grid: list[float] | None = None  # tune-lr's learning rates for every arm; None: lr_around each arm's own
    tune_steps: int | None = None  # tune-lr's stage-1 budget in steps; None: the full run

    @property
    def ended_keeps(self) -> str:
        """What an ended trial keeps (train/checkpoint.py's ENDED_KEEPS)."""
        return "checkpoints" if self.keep_checkpoints else "weights" if self.keep_weights else "records"

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
        if self.lr_grid is not None:
            items = self.lr_grid.split(",") if isinstance(self.lr_grid, str) else self.lr_grid
            try:
                self.lr_grid = [float(v) for v in items]
            except ValueError as e:
                raise SpecError(f"--lr-grid takes learning rates such as 3e-4,1e-3,3e-3: {first_line(e)}") from e
        if not self.tune_lr and (self.lr_grid is not None or self.tune_steps is not None):
            raise SpecError("--lr-grid and --tune-steps go with --tune-lr")
        if self.tune_lr:
            axes = [g.partition("=")[0].strip() for g in self.grid]
            if any(a in ("lr", "optim.lr") for a in axes):
                raise SpecError("--tune-lr searches each arm's learning rate itself: drop --grid lr (--lr-grid sets "
                                "the values it tries)")
            if self.lr_grid is not None and (len(self.lr_grid) < 2 or min(self.lr_grid) <= 0
                                             or len(set(self.lr_grid)) != len(self.lr_grid)):
                raise SpecError(f"--lr-grid needs two or more distinct learning rates > 0, got "
                                f"{','.join(f'{v:g}' for v in self.lr_grid)}")
            if self.tune_steps is not None and self.tune_steps < 1:
                raise SpecError(f"--tune-steps must be >= 1, got {self.tune_steps}")
            if self.scheduler != "asha":
                raise SpecError("--tune-lr runs its LR search under ASHA and its comparison under FIFO: drop "
                                "--scheduler")
        from hybrid_ray.evals.downstream import TASKS

        for task in self.eval_tasks:
            if task not in TASKS or task in ("perplexity", "recall"):  # a trial scores recall itself
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
