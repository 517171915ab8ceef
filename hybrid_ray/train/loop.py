"""train_loop_per_worker: what every Ray Train worker runs, top to bottom.

The helpers each own one concern (parallelize.py: wrapping and precision; checkpoint.py: save and restore;
evaluate.py: validation; metrics.py: throughput and the progress line); the loop only sequences them. Every worker
calls `ray.train.report` at the same steps (it is a barrier); rank 0 writes the model, optimizer, history and
TensorBoard logs, every rank writes its RNG state.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from hybrid_ray import data as data_lib
from hybrid_ray import kernels, storage
from hybrid_ray.env import runtime_versions
from hybrid_ray.errors import first_line
from hybrid_ray.model import build_model, flops_per_token, unwrap
from hybrid_ray.model.build import resolve_backend
from hybrid_ray.spec import RunSpec
from hybrid_ray.train import checkpoint as ckpt_lib
from hybrid_ray.train.checkpoint import TrainerState
from hybrid_ray.train.evaluate import evaluate
from hybrid_ray.train.metrics import Throughput, memory_gib, progress_line
from hybrid_ray.train.optim import LRSchedule, build_optimizer
from hybrid_ray.train.parallelize import (
    autocast, gradient_sync, in_process_group, mean_over_ranks, parallelize, resolve_strategy,
)
from hybrid_ray.ray_compat import quiet_report_logs

DIVERGED_FILE = "diverged.json"  # rank 0 writes it into the run folder when the loss stops being finite


@dataclass
class LaunchOptions:
    """Per-launch settings that are not part of the run's identity."""

    extend_steps: int = 0  # lengthen a (finished) run by this many steps, without an LR jump
    until_step: int | None = None  # stop this launch at this step (with a checkpoint); the run stays resumable
    tensorboard_dir: str | None = None
    resume_from: str | None = None  # the newest good checkpoint the driver found (None: start from scratch)
    known_checkpoints: list[str] = field(default_factory=list)  # checkpoint folders that existed at launch
    kernel_store: str | None = None  # storage whose .kernels/ shares compiled kernels between nodes (None: one node)
    echo: bool = True  # rank 0 prints progress lines (a sweep's trials do not: the sweep prints its own events)
    data_origin: str | None = None  # the prepared dataset in shared storage, for nodes that do not have it yet


def _publish_kernels(store: str | None, tag: str) -> None:
    """Rank 0 shares what its node compiled with the other nodes; a failure to do so does not stop the run."""
    if store:
        try:
            kernels.publish(store)
        except Exception as e:
            _say(f"{tag}warning: could not publish compiled kernels to {store}: {first_line(e)}")


def _say(line: str) -> None:
    """A progress line on the worker's stdout, which Ray forwards to the driver's console. Not print(): Ray Train
    patches it to also log each line, which would show every line twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def setup_model(spec: RunSpec, device: torch.device) -> nn.Module:
    """Build on the worker's device (initialised from the seed), then compile and wrap as the spec says."""
    return parallelize(build_model(spec.model, spec.scale.backend, device=device, seed=spec.train.seed), spec, device)


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: list, lr: float, spec: RunSpec, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over this rank's micro batches; returns (mean loss, pre-clip grad norm) as tensors."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=device)
    for i, batch in enumerate(batches):
        batch = batch.to(device, non_blocking=True)
        with gradient_sync(model, sync=i == len(batches) - 1), autocast(device, spec.train.precision):
            out = model(input_ids=batch.input_ids, labels=batch.labels, cu_seqlens=batch.cu_seqlens)
            loss = out.loss / len(batches)
            loss.backward()
        loss_sum += loss.detach()
    clip = spec.optim.grad_clip if spec.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns the norm as a DTensor
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm


class _TensorBoard:
    """Rank 0's TensorBoard writer; a no-op elsewhere or when tensorboard is not installed."""

    def __init__(self, log_dir: str | None, rank: int):
        self.writer = None
        if log_dir and rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir)
            except ImportError:
                pass

    def log(self, record: dict) -> None:
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _Divergence:
    """The first step whose loss or gradient norm was not finite, tracked on the device (no sync per step) and
    agreed on by every rank when `check` is called, so all ranks stop at the same point."""

    NONE = 2**62

    def __init__(self, device: torch.device):
        self.first = torch.full((), self.NONE, dtype=torch.long, device=device)

    def track(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        self.first = torch.where(finite | (self.first < self.NONE), self.first, torch.full_like(self.first, step))

    def check(self) -> int | None:
        """The first bad step over all ranks, or None; a collective."""
        first = self.first.clone()
        if in_process_group():
            import torch.distributed as dist

            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        value = int(first.item())
        return None if value == self.NONE else value


def _report(state: TrainerState, record: dict, spec: RunSpec, model: nn.Module, optimizer: Any, schedule: Any,
            loader: Any, rank: int, world: int, launch: LaunchOptions, checkpoint: bool) -> None:
    """Report to Ray: with a checkpoint (every rank writes its part), or evaluation metrics alone."""
    import ray.train
    from ray.train import Checkpoint
    from ray.train.v2.api.report_config import CheckpointUploadMode

    evaluations = sum("val_loss" in r for r in state.history)
    # `evaluations` is the clock of Tune's schedulers (ASHA counts in evaluations); `evaluated` marks a fresh one
    metrics = {**state.last_eval, **record, "step": state.step, "evaluations": evaluations,
               "evaluated": "val_loss" in record}
    if not checkpoint:
        # Each report waits until Ray Train's controller has taken the previous one, which it polls every 2 s: a
        # report per log line stalled a fast model 4x, so only evaluations (for Tune's schedulers) go without one
        ray.train.report(metrics)
        return
    state.schedule, state.loader = schedule.to_dict(), loader.state_dict()
    folder = ckpt_lib.write(model, optimizer, state, spec, rank, world)
    ray.train.report(
        metrics,
        checkpoint=Checkpoint.from_directory(folder),
        checkpoint_dir_name=ckpt_lib.folder_name(state.step, set(launch.known_checkpoints)),
        checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
    )


def _write_divergence(spec: RunSpec, step: int, lr: float) -> None:
    info = {"step": step, "lr": lr}
    storage.write_bytes(storage.join(spec.storage_path, spec.name, DIVERGED_FILE), json.dumps(info).encode())


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: config = {"spec": RunSpec.to_dict(), "launch": LaunchOptions as a dict}."""
    import ray.train
    import ray.train.torch

    spec = RunSpec.from_dict(config["spec"])
    launch = LaunchOptions(**config.get("launch", {}))
    quiet_report_logs()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    fla = resolve_backend(spec.scale.backend, device) == "fla"
    # before anything compiles: this node's kernel cache, with what other nodes published that this one lacks
    kernel_cache = kernels.activate(launch.kernel_store) if fla else None
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(spec.scale.cpus_per_worker)))
    torch.manual_seed(spec.train.seed + rank)

    # a cache hit on the driver's node; other nodes copy what the driver published, once per node
    dataset = data_lib.prepare(spec.data, origin=launch.data_origin)
    model = setup_model(spec, device)
    optimizer = build_optimizer(model, spec.optim, device)
    layout = dict(seq_len=spec.data.seq_len, micro_batch=spec.micro_batch_size, rank=rank, world_size=world,
                  packed=spec.data.packed)
    loader = dataset.train_loader(global_batch=spec.train.batch_size, seed=spec.train.seed, **layout)
    val_batches = dataset.val_batches(max_tokens=spec.train.eval_tokens, **layout)

    state = ckpt_lib.restore(model, optimizer, loader, rank, resume_from=launch.resume_from,
                             known=launch.known_checkpoints)
    if state is None:
        schedule = LRSchedule.from_spec(spec.optim, spec.train.steps)
        state = TrainerState(total_steps=spec.train.steps)
    else:
        schedule = LRSchedule.from_dict(state.schedule)
    state.env = {**runtime_versions(device, unwrap(model).hybrid_backend),
                 "strategy": resolve_strategy(spec.scale.strategy, device)}
    if launch.extend_steps:
        schedule.extend(state.step, state.total_steps + launch.extend_steps, spec.optim)
        state.total_steps = schedule.total_steps
    stop_at = min(state.total_steps, launch.until_step or state.total_steps)

    tokens_per_step = spec.train.batch_size * spec.data.seq_len
    meter = Throughput(flops_per_token(spec.model, spec.data.seq_len), device, world)
    board = _TensorBoard(launch.tensorboard_dir, rank)
    divergence = _Divergence(device)
    window_loss = torch.zeros((), device=device)
    window_steps = 0
    launch_compile = state.compile_seconds
    if rank == 0 and launch.echo and state.step:
        _say(f"resumed at step {state.step}/{state.total_steps}")

    first_step = state.step < stop_at  # a launch's first step compiles (and tunes) kernels: not training time
    tag = "" if launch.echo else f"[{spec.name}] "  # a sweep's trials say this much too: minutes of silence look like a hang
    if rank == 0 and first_step and kernel_cache is not None:
        _say(f"{tag}{kernel_cache.line()}")
    while state.step < stop_at:
        step_start = time.perf_counter()
        lr = schedule.lr_at(state.step)
        loss, grad_norm = train_step(model, optimizer, loader.next_step(), lr, spec, device)
        if first_step:
            first_step = False
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            state.compile_seconds += time.perf_counter() - step_start
            step_start = time.perf_counter()  # the rest of this iteration counts as training
            if rank == 0 and fla:
                _say(f"{tag}first step done after {state.compile_seconds - launch_compile:.0f} s")
                _publish_kernels(launch.kernel_store, tag)
        state.step += 1
        divergence.track(state.step, loss, grad_norm)
        state.tokens_seen += tokens_per_step
        window_loss += loss
        window_steps += 1
        meter.add(tokens_per_step // world)

        done = state.step == stop_at
        log_due = state.step % spec.train.log_every == 0 or done
        eval_due = state.step % spec.train.eval_every == 0 or done
        checkpoint_due = state.step % spec.train.checkpoint_every == 0 or done
        record: dict[str, Any] = {}
        if log_due:
            mean = mean_over_ranks(torch.stack([window_loss / window_steps, grad_norm.float()]))
            record = {
                "step": state.step, "time_s": state.train_seconds, "loss": mean[0].item(),
                "grad_norm": mean[1].item(), "lr": lr,
                "epoch": loader.epoch, "tokens_seen": state.tokens_seen, **meter.read(),
                "memory_gib": memory_gib(device),
            }
            meter.reset()
            window_loss.zero_()
            window_steps = 0
        if log_due or eval_due or checkpoint_due:
            bad_step = divergence.check()
            if bad_step is not None:  # stop before anything of a broken model is evaluated or saved
                if rank == 0:
                    _write_divergence(spec, bad_step, schedule.lr_at(bad_step - 1))
                break
        state.train_seconds += time.perf_counter() - step_start
        if eval_due:
            final = done and state.step == state.total_steps  # the end of the run: score the full split
            batches = dataset.val_batches(**layout) if final else val_batches
            state.last_eval = {"step": state.step, **evaluate(model, batches, device, spec.train.precision, dataset.task),
                               "val_split": "full" if final else "sample", "time_s": state.train_seconds}
            record = {**record, **state.last_eval, "step": state.step}
            meter.reset()  # evaluation time is not training throughput
        if record:
            state.history.append(record)
            board.log(record)
            if rank == 0 and launch.echo and "loss" in record:
                eta = state.train_seconds / max(state.step, 1) * (state.total_steps - state.step)
                _say(progress_line(record, state.total_steps, eta))
            if rank == 0 and launch.echo and "val_loss" in record:
                _say(f"eval step {state.step}: val_loss {record['val_loss']:.4f} | val_acc {record['val_accuracy']:.4f}"
                     f" | val_ppl {record['val_perplexity']:.2f} | {record['val_tokens']:,} {record['val_split']}"
                     " validation tokens")
        if checkpoint_due or "val_loss" in record:
            _report(state, record, spec, model, optimizer, schedule, loader, rank, world, launch, checkpoint_due)
            meter.reset()
    board.close()
    if rank == 0 and fla:
        _publish_kernels(launch.kernel_store, tag)  # with the evaluation's kernels
