"""What each sweep trial ended as, honestly, and what an ended trial keeps on disk.

A trial is finished (it ran all its steps), stopped by ASHA (only under ASHA, never one that ran all its steps),
failed (with the first line of its error), interrupted (the sweep was stopped while it ran: relaunching resumes it),
not started, or removed (Tune ran it to its end, but its run folder was deleted since; Tune never runs an ended trial
again, so under FIFO the sweep trains such trials in a new Tuner, and under ASHA, whose stops cannot be replayed, it
reports them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hybrid_ray.errors import HybridRayError, first_line, root_cause
from hybrid_ray.train import checkpoint as ckpt_lib

FINISHED = "finished"
STOPPED = "stopped by ASHA"
FAILED = "failed"
INTERRUPTED = "interrupted"
NOT_STARTED = "not started"
REMOVED = "removed"
ENDED = (FINISHED, STOPPED, FAILED, REMOVED)


@dataclass
class TuneOutcome:
    """What Tune knows of one trial once fit() returns."""

    state: str  # Tune's trial status: TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    error: str | None = None  # the first line of its error
    seconds: float | None = None  # Tune's time_total_s: wall seconds the trial ran


def error_line(error: BaseException | None) -> str | None:
    """The user-facing line of a trial's error: the hybrid-ray error inside Ray's wrappers, else the last line of
    the traceback Ray recorded (`Type: message`)."""
    if error is None:
        return None
    cause = root_cause(error)
    if isinstance(cause, HybridRayError):
        return first_line(cause)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def trial_status(results: dict[str, Any] | None, newest_step: int | None, outcome: TuneOutcome | None,
                 scheduler: str, gone: bool = False) -> tuple[str, str | None]:
    """(status, reason) of one trial from its results.json, its newest checkpoint, Tune's record of it and whether
    its run folder is `gone` (no spec.yaml: every trial that started wrote one)."""
    step = max((results or {}).get("step", 0), newest_step or 0)
    total = (results or {}).get("total_steps")
    if results is not None and total and results.get("step", 0) >= total and results.get("status") == FINISHED:
        return FINISHED, None
    if outcome is not None and outcome.state == "ERROR":
        return FAILED, outcome.error
    ended = outcome is not None and outcome.state == "TERMINATED"
    if ended and newest_step is None and results is None and (gone or scheduler != "asha"):
        if scheduler == "asha":  # (a trial ASHA stopped before its first checkpoint still has its folder)
            return REMOVED, "after it ended (its run folder is gone); a sweep under a new --name trains it again"
        return REMOVED, "after it finished (its run folder is gone); relaunch the sweep to train it again"
    if ended and scheduler == "asha":
        return STOPPED, f"at step {step}"
    if newest_step is None and results is None:
        return NOT_STARTED, None
    return INTERRUPTED, f"at step {step}; relaunch to resume"


def settle(run_dir: str, keep_checkpoints: bool) -> None:
    """What an ended trial keeps: model/ and its newest checkpoint's weights, without optimizer state or older
    checkpoints, unless `keep_checkpoints`."""
    if not keep_checkpoints:
        ckpt_lib.prune(run_dir)
