"""Shared by the GPU benchmarks: timing a training step, machine description, JSON results."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from hybrid_ray.data.loader import Batch
from hybrid_ray.model import count_params, flops_per_token, peak_flops
from hybrid_ray.spec import RunSpec
from hybrid_ray.train.loop import setup_model, train_step
from hybrid_ray.train.optim import build_optimizer


def single_process_group(device: torch.device) -> None:
    """A process group of one, as a Ray Train worker has: FSDP2 (the GPU default) needs one."""
    import os

    import torch.distributed as dist

    torch.cuda.set_device(device)  # initialises CUDA: the memory-stat calls do not, and fail before it
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)


def machine() -> dict[str, Any]:
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"gpus": gpus, "torch": torch.__version__, "cuda": torch.version.cuda, "host": platform.node(),
            "cpus": __import__("os").cpu_count()}


def random_batches(spec: RunSpec, accum: int, device: torch.device) -> list[Batch]:
    vocab = spec.model.vocab_size
    ids = torch.randint(0, vocab, (accum, spec.micro_batch_size, spec.data.seq_len), device=device)
    return [Batch(input_ids=ids[i], labels=ids[i], cu_seqlens=None) for i in range(accum)]


def setup_training(spec: RunSpec, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer, list[Batch]]:
    """What `hybrid-ray train` builds on a worker (model, optimizer) and one step's random batches."""
    model = setup_model(spec, device)
    return model, build_optimizer(model, spec.optim, device), random_batches(spec, spec.grad_accum_steps, device)


def time_training(spec: RunSpec, device: torch.device, steps: int = 10, warmup: int = 3) -> dict[str, Any]:
    """The training hot path of `hybrid-ray train` (model setup, train_step) without Ray, on random tokens."""
    torch.cuda.reset_peak_memory_stats(device)
    model, optimizer, batches = setup_training(spec, device)
    for _ in range(warmup):
        train_step(model, optimizer, batches, spec.optim.lr, spec, device)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss, _ = train_step(model, optimizer, batches, spec.optim.lr, spec, device)
    torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    tokens = spec.train.batch_size * spec.data.seq_len
    fpt = flops_per_token(spec.model, spec.data.seq_len)
    peak = peak_flops(torch.cuda.get_device_name(device))
    out = {
        "params": count_params(spec.model)["total"],
        "step_s": seconds,
        "tokens_per_s": tokens / seconds,
        "mfu": tokens / seconds * fpt / peak if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "loss": loss.item(),
    }
    del model, optimizer
    torch.cuda.empty_cache()
    return out


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **payload}, indent=2))
