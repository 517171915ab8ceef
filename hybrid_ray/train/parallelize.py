"""Parallelism on a worker: the DDP / FSDP2 choice and wrapping, gradient sync, reductions over ranks.

Under FSDP2 the bf16 rule (model/precision.py) sets the `MixedPrecisionPolicy`: bf16 compute parameters with fp32
master weights and fp32 gradient reduction. `HOST_WORK` holds two exact ways to cut the FSDP2 step's host time (the
transformer arm's step is host-bound on an H100), off until an H100 A/B shows a win (benchmarks/results/speed/NOTES.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from hybrid_ray.model.precision import uses_bf16
from hybrid_ray.model.speed import apply_kernel_options
from hybrid_ray.spec import RunSpec


@dataclass
class HostWork:
    """Exact cuts of the FSDP2 step's host work (issue 39), on by default since issue 48: on one H100 at the H100 base
    size (benchmarks/device/c2.sh, 48 x 1024, warm cache) they trained 1.0-1.2% faster (transformer 443.5k -> 449.1k
    tokens/s, pure DeltaNet 115.9k -> 117.1k, 17% hybrid 132.1k -> 133.2k) with the same losses step for step
    (tests/test_gpu.py, test_the_host_work_cuts_train_like_the_default, passed again on 2026-12-07).

    `one_rank_keeps_gathered`: on one rank, keep each block's gathered bf16 parameters from its forward to its backward
    (nothing is sharded there; 0.3-0.6 GB at the H100 base size) instead of gathering them again.
    `shard_local_step`: AdamW (train/optim.py ShardLocalAdamW) and the gradient clip on each rank's local shards,
    without DTensor's dispatch of every foreach op.
    """

    one_rank_keeps_gathered: bool = True
    shard_local_step: bool = True


HOST_WORK = HostWork()


def in_process_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def distributed() -> bool:
    """True when there are other ranks to talk to."""
    return in_process_group() and dist.get_world_size() > 1


def resolve_strategy(strategy: str, device: torch.device) -> str:
    """'auto' is FSDP2 on GPU workers (in a process group) and DDP elsewhere.

    On an H100, FSDP2's bf16 compute parameters (fp32 master weights, fp32 gradient reduction) trained 5% (Gated
    DeltaNet) to 12% (transformer) faster than DDP + autocast, on one GPU and on two (benchmarks/results).
    """
    if strategy != "auto":
        return strategy
    return "fsdp" if device.type == "cuda" and in_process_group() else "ddp"


def parallelize(model: nn.Module, spec: RunSpec, device: torch.device) -> nn.Module:
    """Pick FLA's kernels, optionally compile each block, then wrap for FSDP2 or DDP (a single process stays unwrapped)."""
    apply_kernel_options(model, spec.train.conv_backend, spec.train.loss_kernel)
    if spec.train.compile:
        # FLA's chunk kernels are excluded from compilation, so compile per block: the glue around them fuses
        for block in model.model.layers:
            block.compile()
    if resolve_strategy(spec.scale.strategy, device) == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy()
        if uses_bf16(device, spec.train.precision):
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        reshard = reshard_after_forward(dist.get_world_size())
        for block in model.model.layers:
            fully_shard(block, mp_policy=policy, reshard_after_forward=reshard)
        fully_shard(model, mp_policy=policy)
        return model
    if distributed():
        import ray.train.torch

        return ray.train.torch.prepare_model(model, move_to_device=False)
    return model


def reshard_after_forward(world_size: int) -> bool:
    """Whether FSDP2 frees a block's gathered bf16 parameters after its forward and gathers them again for its
    backward: across ranks that saves memory; on one rank it only costs a second gather (see HostWork)."""
    return world_size > 1 or not HOST_WORK.one_rank_keeps_gathered


def _all_sharded(grads: list[torch.Tensor]) -> bool:
    from torch.distributed.tensor import DTensor, Shard

    return bool(grads) and all(isinstance(g, DTensor) and all(isinstance(p, Shard) for p in g.placements)
                               for g in grads)


def clip_grad_norm(
    parameters: Iterable[nn.Parameter], max_norm: float, shard_local: bool | None = None
) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` (2-norm, `max_norm` may be inf): the total norm before clipping, as a tensor.

    With `shard_local` (default: HOST_WORK.shard_local_step) and FSDP2's sharded DTensor gradients, the norm is taken
    over each rank's local shard and the squares summed over ranks: the same number (bit for bit on one rank) without
    DTensor's dispatch of every foreach op.
    """
    params = list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    local_step = HOST_WORK.shard_local_step if shard_local is None else shard_local
    if not (local_step and _all_sharded(grads)):
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    local = [g._local_tensor for g in grads]
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(local)))
    if distributed():
        square = total.square()
        dist.all_reduce(square)
        total = square.sqrt()
    torch._foreach_mul_(local, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


def gradient_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce on all but the last micro batch of an accumulation."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if not sync and hasattr(model, "no_sync"):  # DDP
        return model.no_sync()
    return contextlib.nullcontext()


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """In-place mean of a tensor over all ranks (a no-op for a single process)."""
    if distributed():
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def single_process_group(device: torch.device) -> None:
    """A process group of one, as a lone Ray Train worker has (FSDP2, the GPU default, needs one); no port needed."""
    if device.type == "cuda":
        torch.cuda.set_device(device)  # initialises CUDA: the memory-stat calls do not, and fail before it
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                device_id=device if device.type == "cuda" else None)
