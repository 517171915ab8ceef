"""Training metrics: throughput and MFU, memory, validation loss / accuracy / perplexity, the progress line."""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

from hybrid_ray.model.flops import peak_flops


@dataclass
class Throughput:
    """Tokens per second over the steps since the last `reset`, excluding evaluation and checkpoint time."""

    flops_per_token: float
    device: torch.device
    world_size: int
    start: float = field(default_factory=time.perf_counter)
    tokens: int = 0

    def reset(self) -> None:
        self.start, self.tokens = time.perf_counter(), 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def read(self) -> dict[str, float]:
        """Per-worker and total tokens/s and MFU; synchronises the GPU so the clock is honest."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # a CPU-GPU sync point: only at log intervals
        seconds = max(time.perf_counter() - self.start, 1e-9)
        per_worker = self.tokens / seconds
        out = {"tokens_per_s": per_worker * self.world_size, "tokens_per_s_per_worker": per_worker}
        peak = peak_flops(torch.cuda.get_device_name(self.device)) if self.device.type == "cuda" else None
        if peak:
            out["mfu"] = per_worker * self.flops_per_token / peak
        return out


def memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated (CUDA) or peak resident memory of the process (CPU), in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_kib / 2**20 if sys.platform != "darwin" else rss_kib / 2**30


def uses_bf16(device: torch.device, precision: str) -> bool:
    """'auto' precision is bf16 on GPUs and fp32 on CPUs."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPUs (fp32 master weights stay in the optimizer), full fp32 on CPUs unless asked."""
    if not uses_bf16(device, precision):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list, device: torch.device, precision: str, task: str) -> dict[str, float]:
    """Validation loss, next-token accuracy and perplexity over this rank's fixed batches, summed over ranks.

    For the MQAR task the fraction of sequences with every answer right is reported as exact_match.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(5, dtype=torch.float64, device=device)  # loss sum, correct, tokens, exact, sequences
    for batch in batches:
        input_ids, labels = batch.input_ids.to(device), batch.labels.to(device)
        cu = batch.cu_seqlens.to(device) if batch.cu_seqlens is not None else None
        with autocast(device, precision):
            logits = model(input_ids=input_ids, cu_seqlens=cu).logits
        target = labels[:, 1:]
        mask = target != -100
        right = torch.zeros_like(mask)
        span = 8192  # fp32 logits of a whole batch can take tens of GiB: convert a slice at a time
        for row in range(logits.shape[0]):
            for i in range(0, target.shape[1], span):
                end = min(i + span, target.shape[1])  # logits at the last position have no target
                lg, tg = logits[row, i:end].float(), target[row, i:end]
                totals[0] += F.cross_entropy(lg, tg, ignore_index=-100, reduction="sum")
                right[row, i:end] = lg.argmax(-1) == tg
        right &= mask
        totals[1] += right.sum()
        totals[2] += mask.sum()
        totals[3] += ((right | ~mask).all(-1) & mask.any(-1)).sum()
        totals[4] += mask.any(-1).sum()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
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


def _si(x: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def progress_line(record: dict, total_steps: int, eta_s: float | None) -> str:
    parts = [f"step {record['step']}/{total_steps}", f"loss {record['loss']:.4f}", f"lr {record['lr']:.2e}"]
    parts.append(f"gnorm {record['grad_norm']:.2f}")
    parts.append(f"{_si(record['tokens_per_s'])} tok/s ({_si(record['tokens_per_s_per_worker'])}/worker)")
    if "mfu" in record:
        parts.append(f"MFU {record['mfu'] * 100:.1f}%")
    parts.append(f"mem {record['memory_gib']:.1f} GiB")
    if eta_s is not None:
        parts.append(f"eta {_duration(eta_s)}")
    return " | ".join(parts)
