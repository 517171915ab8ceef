"""A scheduler's decisions, one JSON line each, in the sweep's folder (layout.SweepLayout.asha_decisions).

One writer: the sweep's scheduler (sweep/asha.py), which adds a line each time it judges a trial at a rung, before
Tune hears of it. Two readers: the trial itself, which waits at each rung for its line and stops there when told
(train/rungs.py), and the sweep, which says what each trial ended as (sweep/status.py) and gives a relaunched
scheduler its rungs back. A line: {"trial", "milestone", "evaluations", "step", "val_loss", "decision"}, where
decision is "stop" or "continue".
"""

from __future__ import annotations

import json
from typing import Any

from hybrid_ray import storage

STOP, CONTINUE = "stop", "continue"


def read(path: str) -> list[dict[str, Any]]:
    """Every decision recorded at `path`, oldest first (none when there is no record; a line that a full disk cut
    short is skipped)."""
    if not storage.exists(path):
        return []
    lines = []
    for line in storage.read_bytes(path).decode(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "trial" in record:
            lines.append(record)
    return lines


def append(path: str, record: dict[str, Any]) -> None:
    """Add one decision to the record at `path`."""
    before = storage.read_bytes(path) if storage.exists(path) else b""
    storage.write_bytes(path, before + json.dumps(record).encode() + b"\n")


def of_trial(path: str, trial: str) -> list[dict[str, Any]]:
    """The decisions taken on one trial, oldest first."""
    return [r for r in read(path) if r["trial"] == trial]
