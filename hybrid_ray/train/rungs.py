"""A scheduler's rungs, on the worker: the steps where ASHA judges the run, and its judgement.

A rung's evaluation is also a checkpoint, and the run waits there until the scheduler has written its judgement
(records/decisions.py); told to stop, it ends at that very step. So the model a stopped trial keeps, its results and
every number shown of it are those of the evaluation ASHA judged, and the run's own driver finalizes and settles it
(one owner of its folder: no other process deletes its checkpoints while it lives). A relaunch that resumes at a rung
never judged (cut between its report and the judgement) reports that evaluation again before it trains on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from hybrid_ray.records import decisions
from hybrid_ray.train.parallelize import in_process_group

WAIT_S = 600.0  # a judgement comes within seconds (the report's checkpoint upload, two polls); past this, train on


@dataclass(frozen=True)
class RungConfig:
    """Where a scheduler judges the run, and where it writes its judgements."""

    steps: tuple[int, ...]  # each an evaluation step (sweep/asha.py's rung_steps)
    decisions: str  # the record (layout.SweepLayout.asha_decisions)


class Rungs:
    """The worker's side of the scheduler's rungs: `due` at a rung (save there), `stop` (wait for a rung's
    judgement, then whether the run was told to stop), `pending` (a resumed run stands at a rung never judged). Rank 0
    reads the record and tells the other ranks, so that every rank stops at the same step."""

    def __init__(self, config: RungConfig | None, trial: str, rank: int, device: torch.device,
                 wait_s: float = WAIT_S) -> None:
        self.config, self.trial, self.rank, self.device, self.wait_s = config, trial, rank, device, wait_s
        self.late: list[int] = []  # rungs whose judgement did not come within wait_s

    def due(self, step: int) -> bool:
        return self.config is not None and step in self.config.steps

    def _decisions(self) -> list[dict]:
        return decisions.of_trial(self.config.decisions, self.trial)

    def _agree(self, flag: bool) -> bool:
        """Rank 0's answer on every rank (a collective)."""
        value = torch.tensor(int(flag), device=self.device)
        if in_process_group():
            import torch.distributed as dist

            dist.broadcast(value, src=0)
        return bool(value.item())

    def stop(self, step: int) -> bool:
        """Whether the scheduler has told the run to stop at `step` or before; at a rung, after waiting for its
        judgement. A collective: every rank calls it at the same steps."""
        if self.config is None:
            return False
        told = False
        if self.rank == 0:
            deadline = time.monotonic() + (self.wait_s if self.due(step) else 0.0)
            while True:
                records = self._decisions()
                told, judged = _stop_step(records) <= step, _judged(records, step)
                if told or judged or time.monotonic() >= deadline:
                    break
                time.sleep(0.1)
            if self.due(step) and not (told or judged):
                self.late.append(step)
        return self._agree(told)

    def pending(self, step: int) -> bool:
        """Whether the run stands at a rung the scheduler has not judged (a collective)."""
        if not self.due(step):
            return False
        return self._agree(self.rank == 0 and not _judged(self._decisions(), step))


def _stop_step(records: list[dict]) -> float:
    """The first step a trial's decisions told it to stop at (infinity: none did)."""
    return min((r.get("step") or 0 for r in records if r.get("decision") == decisions.STOP), default=math.inf)


def _judged(records: list[dict], step: int) -> bool:
    return any(r.get("step") == step for r in records)


def stopped_at(config: RungConfig | None, trial: str) -> int | None:
    """The step at which the scheduler told `trial` to stop (None: it did not), read on the driver."""
    step = _stop_step(decisions.of_trial(config.decisions, trial)) if config is not None else math.inf
    return None if step == math.inf else int(step)
