"""Validation during training (Evaluator): when it is due, which blocks, and what it records; the loss itself is
evals/loss.py's `evaluate`, the recall probes (with `train.eval_recall`) evals/recall.py's `score_recall`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from hybrid_ray.evals import recall
from hybrid_ray.evals.loss import evaluate
from hybrid_ray.spec import RunSpec
from hybrid_ray.train.cadence import Every

if TYPE_CHECKING:
    from hybrid_ray.train.checkpoint import TrainerState


@dataclass(frozen=True)
class EvalConfig:
    every: int  # train.eval_every
    sample_tokens: int  # train.eval_tokens: the sample scored at each evaluation but the run's last
    precision: str
    recall: bool  # train.eval_recall: score the recall probes at each evaluation
    seq_len: int  # the probes' context

    @classmethod
    def from_spec(cls, spec: RunSpec) -> EvalConfig:
        return cls(spec.train.eval_every, spec.train.eval_tokens, spec.train.precision, spec.train.eval_recall,
                   spec.data.seq_len)


class Evaluator:
    """Validation during training: due every `eval_every` steps and at a launch's last step; scores a sample of the
    validation split (`eval_tokens`, the same blocks every time), or the whole split at the end of the run."""

    def __init__(self, config: EvalConfig, dataset: Any, model: torch.nn.Module, device: torch.device, layout: dict):
        self.every = Every(config.every)
        self.dataset, self.model, self.device, self.layout = dataset, model, device, layout
        self.precision = config.precision
        self.sample = dataset.val_batches(max_tokens=config.sample_tokens, **layout)
        # the probes' examples are made once: every evaluation scores the same ones
        self.recall = recall.settings(recall.RecallProbes(), dataset, config.seq_len) if config.recall else []

    def should_evaluate(self, step: int, last: bool) -> bool:
        return self.every.due(step, last)

    def run(self, state: TrainerState, last: bool) -> dict[str, Any]:
        """Evaluate now (a collective: every rank calls it at the same steps); returns the evaluation's record."""
        final = last and state.step == state.total_steps  # the end of the run: score the full split
        batches = self.dataset.val_batches(**self.layout) if final else self.sample
        out = {"step": state.step, **evaluate(self.model, batches, self.device, self.precision, self.dataset.task),
               "val_split": "full" if final else "sample", "time_s": state.train_seconds}
        if self.recall:
            out.update(recall_record(recall.score_recall(
                self.model, self.dataset, self.device, seq_len=self.layout["seq_len"], precision=self.precision,
                tokens=self.layout["micro_batch"] * self.layout["seq_len"], rank=self.layout["rank"],
                world_size=self.layout["world_size"], prepared=self.recall)))
        return out


def recall_record(result: dict[str, Any]) -> dict[str, Any]:
    """An evaluation record's recall entries: the summary numbers as val_recall* (so the best and final evaluations
    carry them), the per-setting accuracies under recall_settings, the probes' seconds."""
    out = {f"val_recall{'' if key == 'score' else '_' + key.removeprefix('score_')}": result[key]
           for key in ("score", "score_stderr", "mqar", "mqar_stderr", "copy", "copy_stderr") if result[key] is not None}
    return {**out, "recall_settings": {name: {"accuracy": r["accuracy"], "stderr": r["stderr"]}
                                       for name, r in result["settings"].items()},
            "recall_seconds": result["seconds"]}
