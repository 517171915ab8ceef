"""The validation loss: loss, next-token accuracy and perplexity (and MQAR's exact match) over fixed validation blocks.
Training's Evaluator (train/evaluate.py), `hybrid-ray eval --task perplexity` and warmup score a model with it.

Which blocks are evaluated is decided by the data layer (`Dataset.eval_batches`): spread evenly over the whole
validation split and the same for every world size, so every run of a comparison is scored on the same tokens.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from hybrid_ray.data.loader import IGNORE, Batch
from hybrid_ray.model.precision import autocast


# fp32 logits of a whole batch can take tens of GiB at a 49k vocabulary: score this many positions at a time
SPAN = 8192


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[Batch], device: torch.device, precision: str,
             task: str = "lm") -> dict[str, float]:
    """Validation metrics over this rank's batches, summed over ranks before dividing.

    Returns val_loss (mean over predicted tokens), val_accuracy, val_perplexity and val_tokens; for the MQAR task
    also val_exact_match, the share of sequences with every answer right.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(5, dtype=torch.float64, device=device)  # loss sum, correct, tokens, exact, sequences
    for batch in batches:
        batch = batch.to(device)
        with autocast(device, precision):
            logits = model(input_ids=batch.input_ids, cu_seqlens=batch.cu_seqlens).logits
        target = batch.labels[:, 1:]  # the model's shift: logits at j predict labels at j + 1
        mask = target != IGNORE
        right = torch.zeros_like(mask)
        for row in range(logits.shape[0]):
            for i in range(0, target.shape[1], SPAN):
                end = min(i + SPAN, target.shape[1])  # logits at the last position have no target
                lg, tg = logits[row, i:end].float(), target[row, i:end]
                totals[0] += F.cross_entropy(lg, tg, ignore_index=IGNORE, reduction="sum")
                right[row, i:end] = lg.argmax(-1) == tg
        right &= mask
        totals[1] += right.sum()
        totals[2] += mask.sum()
        totals[3] += ((right | ~mask).all(-1) & mask.any(-1)).sum()
        totals[4] += mask.any(-1).sum()
    sum_over_ranks(totals)
    model.train(was_training)
    loss = (totals[0] / totals[2].clamp(min=1)).item()
    out = {
        "val_loss": loss,
        "val_accuracy": (totals[1] / totals[2].clamp(min=1)).item(),
        "val_perplexity": math.exp(min(loss, 50.0)),
        "val_tokens": int(totals[2].item()),
    }
    if task == "mqar":
        out["val_exact_match"] = (totals[3] / totals[4].clamp(min=1)).item()
    return out


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """In-place sum of a tensor over all ranks (a no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
    return values
