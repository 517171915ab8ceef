"""A scheduler's decisions, one JSON line each, in the sweep's folder (layout.SweepLayout.asha_decisions).

One writer: the sweep's scheduler (sweep/asha.py), which adds a line each time it judges a trial at a rung, before
Tune hears of it. Two readers: the trial itself, which waits at each rung for its line and stops there when told
(train/rungs.py), and the sweep, which says what each trial ended as (sweep/status.py) and gives a relaunched
scheduler its rungs back. A line: {"trial", "milestone", "evaluations", "step", "val_loss", "decision"}, where
decision is "stop" or "continue".
"""

from __future__ import annotations

from typing import Any

from hybrid_ray.records import jsonl

STOP, CONTINUE = "stop", "continue"


def read(path: str) -> list[dict[str, Any]]:
    """Every decision recorded at `path`, oldest first (none when there is no record; a line that a full disk cut
    short is skipped)."""
    return [record for record in jsonl.read(path) if "trial" in record]


def append(path: str, record: dict[str, Any]) -> None:
    """Add one decision to the record at `path`."""
    jsonl.append(path, record)


def of_trial(path: str, trial: str) -> list[dict[str, Any]]:
    """The decisions taken on one trial, oldest first."""
    return [r for r in read(path) if r["trial"] == trial]
