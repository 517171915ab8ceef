"""A --tune-lr study's `stage_seconds.jsonl`: the wall seconds of each launch of each stage, appended by the study
(sweep/study.py) and summed for its report (records/study_report.py)."""

from __future__ import annotations

from hybrid_ray.layout import StudyLayout
from hybrid_ray.records import jsonl

STAGES = ("lr", "lr-extend", "compare")  # the LR search, its one extension, the comparison


def add(study: StudyLayout, stage: str, seconds: float) -> None:
    """Append one launch's seconds of `stage`."""
    jsonl.append(study.costs, {"stage": stage, "seconds": round(seconds, 3)})


def stage_seconds(study: StudyLayout) -> dict[str, float]:
    """Wall seconds of each stage, summed over the launches that ran it."""
    out = dict.fromkeys(STAGES, 0.0)
    for record in jsonl.read(study.costs):
        out[record["stage"]] = out.get(record["stage"], 0.0) + float(record["seconds"])
    return out
