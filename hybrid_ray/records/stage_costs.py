"""A --tune-lr study's `stage_seconds.jsonl`: the wall seconds of each launch of each stage, appended by the study
(sweep/study.py) and summed for its report (records/study_report.py)."""

from __future__ import annotations

import json

from hybrid_ray import storage
from hybrid_ray.layout import StudyLayout

STAGES = ("lr", "lr-extend", "compare")  # the LR search, its one extension, the comparison


def add(study: StudyLayout, stage: str, seconds: float) -> None:
    """Append one launch's seconds of `stage`."""
    before = storage.read_bytes(study.costs) if storage.exists(study.costs) else b""
    storage.write_bytes(study.costs, before + json.dumps({"stage": stage, "seconds": round(seconds, 3)}).encode()
                        + b"\n")


def stage_seconds(study: StudyLayout) -> dict[str, float]:
    """Wall seconds of each stage, summed over the launches that ran it."""
    out = dict.fromkeys(STAGES, 0.0)
    if storage.exists(study.costs):
        for line in storage.read_bytes(study.costs).decode(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            out[record["stage"]] = out.get(record["stage"], 0.0) + float(record["seconds"])
    return out
