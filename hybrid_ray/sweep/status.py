"""A sweep trial: its name and run, and what it ended as, honestly (what an ended trial keeps: train/checkpoint.py).

A trial is finished (it ran all its steps), stopped by ASHA (only a trial that ASHA's own decision, recorded in the
sweep's `asha_decisions.jsonl` as it was taken, stopped; never one that ran all its steps), diverged (its loss stopped
being finite: a result of the grid, an LR too high, not a failure of the sweep; it is never trained again), failed
(with the first line of its error), interrupted (Ctrl-C, SIGTERM or a lost node stopped it: Tune ends such a trial
like one ASHA stopped, but saved it as running, so relaunching resumes it), not started, or removed (Tune ran it to
its end, but its run folder was deleted since; Tune never runs an ended trial again, so under FIFO the sweep trains
such trials in a new Tuner, and under ASHA, whose stops cannot be replayed, it reports them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hybrid_ray.errors import HybridRayError, Interrupted, first_line, root_cause
from hybrid_ray.layout import SweepLayout
from hybrid_ray.records import decisions, edge, report
from hybrid_ray.spec import RunSpec

FINISHED = "finished"
STOPPED = "stopped by ASHA"
FAILED = "failed"
INTERRUPTED = "interrupted"
NOT_STARTED = "not started"
REMOVED = "removed"
DIVERGED = "diverged"
ENDED = (FINISHED, STOPPED, DIVERGED, FAILED, REMOVED)


@dataclass
class TuneOutcome:
    """What Tune knows of one trial once fit() returns."""

    state: str  # Tune's trial status: TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    error: str | None = None  # the first line of its error
    seconds: float | None = None  # Tune's time_total_s: wall seconds the trial ran
    interrupted: bool = False  # its error was an interruption (Ctrl-C reached the trial's own process)


def is_interruption(error: BaseException | None) -> bool:
    """Whether a trial's error is a Ctrl-C or SIGTERM that reached its process, not a failure of the trial."""
    if error is None:
        return False
    cause = root_cause(error)
    return isinstance(cause, (Interrupted, KeyboardInterrupt)) or "KeyboardInterrupt" in error_line(error)


def error_line(error: BaseException | None) -> str | None:
    """The user-facing line of a trial's error: the hybrid-ray error inside Ray's wrappers, else the last line of
    the traceback Ray recorded (`Type: message`)."""
    if error is None:
        return None
    cause = root_cause(error)
    if isinstance(cause, HybridRayError):
        return first_line(cause)
    if cause is not error:
        return f"{type(cause).__name__}: {first_line(cause)}"
    # a traceback Ray recorded as text: its last "Type: message" line, the message's first line (a CUDA
    # out-of-memory message goes on for several lines)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    typed = [i for i, line in enumerate(lines) if _exception_line(line)]
    return lines[typed[-1]] if typed else (lines[-1] if lines else type(error).__name__)


def _exception_line(line: str) -> bool:
    head = line.split(":", 1)[0]
    return ":" in line and " " not in head and (head.endswith("Error") or head.endswith("Exception")
                                                 or head.endswith("Interrupt"))


def read_stops(sweep: SweepLayout) -> dict[str, dict[str, Any]]:
    """ASHA's decisions to stop so far: the trials it stopped, each with the step and evaluation it judged (from
    records/decisions.py's record, and from the record of stops alone that sweeps kept before it)."""
    stops = {}
    for record in decisions.read(sweep.legacy_asha_stops):
        stops[record.pop("trial")] = record
    for record in decisions.read(sweep.asha_decisions):
        if record.get("decision") == decisions.STOP:
            stops[record["trial"]] = {k: record.get(k) for k in ("step", "evaluations", "val_loss")}
    return stops


def trial_status(results: dict[str, Any] | None, newest_step: int | None, outcome: TuneOutcome | None,
                 asha_stop: dict[str, Any] | None = None, gone: bool = False) -> tuple[str, str | None]:
    """(status, reason) of one trial from its results.json, its newest checkpoint, Tune's record of it, ASHA's
    recorded decision to stop it (None: ASHA never stopped it) and whether its run folder is `gone` (no spec.yaml:
    every trial that started wrote one).

    Tune ends a trial that Ctrl-C cut like one ASHA stopped (TERMINATED): only ASHA's own record tells them apart."""
    step = max((results or {}).get("step", 0), newest_step or 0)
    total = (results or {}).get("total_steps")
    if results is not None and total and results.get("step", 0) >= total and results.get("status") == FINISHED:
        return FINISHED, None
    if results is not None and results.get("status") == DIVERGED:  # before ERROR: earlier sweeps failed such a trial
        return DIVERGED, report.diverged_at(results.get("diverged") or {})
    if outcome is not None and outcome.state == "ERROR" and not outcome.interrupted:
        return FAILED, outcome.error
    ended = outcome is not None and outcome.state == "TERMINATED"
    if ended and newest_step is None and results is None and gone and outcome.seconds is not None:
        if asha_stop is not None:  # ASHA's stops cannot be replayed in a new Tuner
            return REMOVED, "after ASHA stopped it (its run folder is gone); a sweep under a new --name trains it again"
        return REMOVED, "after it finished (its run folder is gone); relaunch the sweep to train it again"
    if asha_stop is not None:
        return STOPPED, f"at step {asha_stop.get('step')}"
    if newest_step is None and results is None:
        return NOT_STARTED, None
    return INTERRUPTED, f"at step {step}; relaunch to resume"


def divergence_line(rows: list[dict[str, Any]]) -> str | None:
    """The sweep's closing line on its diverged trials (None when none diverged): how many, at which learning rates,
    and, when they are the grid's highest, that the LR grid's top is too high."""
    diverged = [r for r in rows if r["status"] == DIVERGED]
    if not diverged:
        return None
    lr = {r["name"]: _lr(r) for r in rows}
    high = sorted({lr[r["name"]] for r in diverged if lr[r["name"]] is not None})
    line = f"{len(diverged)} of {len(rows)} trials diverged"
    line += f" (lr {', '.join(map(edge.number, high))})" if high else f" ({', '.join(r['name'] for r in diverged)})"
    finite = [lr[r["name"]] for r in rows if r["status"] != DIVERGED and lr[r["name"]] is not None]
    if high and any("lr" in (r.get("settings") or {}) for r in rows):  # an LR grid
        if not finite:
            return line + ": every LR of the grid is too high"
        if min(high) > max(finite):
            return line + ": the LR grid's top is too high"
    return line + ": lower their LR or lengthen the warm-up"


def _lr(row: dict[str, Any]) -> float | None:
    return ((row.get("spec") or {}).get("optim") or {}).get("lr")


def trial_name(arm_id: str, seed: int) -> str:
    return f"{arm_id}-s{seed}"


def trial_spec(arm_spec: RunSpec, arm_id: str, seed: int, sweep: SweepLayout) -> RunSpec:
    """The run a trial trains: its arm's spec, named <arm>-s<seed> under the sweep's trials folder, seed + k, with the
    recall probes unless the sweep turned them off (they cost ~2% of training at the H100 base: README)."""
    recall = arm_spec.train.eval_recall is not False
    return arm_spec.with_overrides({"name": trial_name(arm_id, seed), "storage_path": sweep.trials,
                                    "train.seed": arm_spec.train.seed + seed, "train.eval_recall": recall})
