"""AdamW with parameter groups, and the learning-rate schedule (warmup, decay, extension without a jump)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from hybrid_ray.spec import OptimSpec
from hybrid_ray.train import parallelize

NO_DECAY_SUFFIXES = ("A_log", "dt_bias", "bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on norms, biases, embeddings, A_log or dt_bias."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.dim() < 2 or name.endswith(NO_DECAY_SUFFIXES) or "embeddings" in name
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class ShardLocalAdamW(torch.optim.AdamW):
    """AdamW whose update runs on each parameter's local tensor when parameters are DTensors (FSDP2).

    AdamW is elementwise, so the shard's update is the DTensor's update: the same fused kernel on the same numbers,
    without DTensor's dispatch of the step (host time, which bounds the transformer arm's step on an H100). The state
    stays DTensors, so checkpoints do not change. Used when train/parallelize.py's HOST_WORK.shard_local_step is on.
    """

    def _init_group(self, group, *lists):  # noqa: D102 (its arguments are torch's, which moved between versions)
        has_complex = super()._init_group(group, *lists)
        for tensors in lists:  # params, grads, exp_avgs, ... (state_steps are plain tensors)
            if isinstance(tensors, list):
                tensors[:] = [getattr(t, "_local_tensor", t) for t in tensors]
        return has_complex


def build_optimizer(model: nn.Module, spec: OptimSpec, device: torch.device) -> torch.optim.Optimizer:
    adamw = ShardLocalAdamW if parallelize.HOST_WORK.shard_local_step else torch.optim.AdamW
    return adamw(
        param_groups(model, spec.weight_decay),
        lr=spec.lr,
        betas=(spec.beta1, spec.beta2),
        eps=spec.eps,
        fused=device.type == "cuda",
    )


@dataclass
class Phase:
    """LR goes from lr_start at step `start` to lr_end at step `end` (linear or cosine)."""

    start: int
    end: int
    lr_start: float
    lr_end: float
    shape: str

    def lr_at(self, step: int) -> float:
        t = min(max((step - self.start) / max(self.end - self.start, 1), 0.0), 1.0)
        if self.shape == "cosine":
            t = 0.5 * (1 - math.cos(math.pi * t))
        return self.lr_start + (self.lr_end - self.lr_start) * t


@dataclass
class LRSchedule:
    """Piecewise schedule over update positions: linear warmup, then decay to lr * min_lr_ratio.

    Position x is "x updates done"; the update at 0-based step s uses the value at s + 1, so the first update
    already has a non-zero LR and the last one lands on the floor. An extension appends a phase that starts at the
    current position with the current value: later phases override earlier ones from their start, so the past is
    unchanged and the LR never jumps.
    """

    phases: list[Phase] = field(default_factory=list)

    @classmethod
    def from_spec(cls, spec: OptimSpec, total_steps: int) -> LRSchedule:
        warmup = min(spec.warmup_steps, total_steps)
        phases = [Phase(0, warmup, 0.0, spec.lr, "linear")] if warmup else []
        phases.append(Phase(warmup, total_steps, spec.lr, spec.lr * spec.min_lr_ratio, spec.schedule))
        return cls(phases)

    @property
    def total_steps(self) -> int:
        return self.phases[-1].end

    def value(self, position: int) -> float:
        for phase in reversed(self.phases):
            if phase.start <= position:
                return phase.lr_at(position)
        return self.phases[0].lr_start

    def lr_at(self, step: int) -> float:
        """The LR of the update made at 0-based `step`."""
        return self.value(step + 1)

    def extend(self, done_steps: int, new_total: int, spec: OptimSpec) -> None:
        """Continue from `done_steps` to `new_total`, from the LR reached so far down to the same floor."""
        if new_total > self.total_steps:
            current = self.value(done_steps)
            self.phases.append(Phase(done_steps, new_total, current, spec.lr * spec.min_lr_ratio, spec.schedule))

    def to_dict(self) -> dict:
        return {"phases": [asdict(p) for p in self.phases]}

    @classmethod
    def from_dict(cls, d: dict) -> LRSchedule:
        return cls([Phase(**p) for p in d["phases"]])

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the schedule (extensions included)."""
        return self.to_dict()

    def load_state_dict(self, state: dict) -> None:
        self.phases = LRSchedule.from_dict(state).phases
