"""Training metrics: throughput and MFU, memory, and the progress line."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field

import torch

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
