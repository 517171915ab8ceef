"""train_loop_per_worker: what every Ray Train worker runs, top to bottom.

The components each own one concern and decide their own cadence (metrics.py's MetricsLogger: the loss window,
throughput and progress lines; evaluate.py's Evaluator: validation; checkpoint.py's Checkpointer: save and restore,
with the LR schedule's and the loader's state_dict()); the loop only sequences them. Every worker calls
`ray.train.report` at the same steps (cadence.report_due says why); rank 0 writes the model, optimizer, history and
TensorBoard logs, every rank writes its RNG state.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from hybrid_ray import data as data_lib
from hybrid_ray import storage
from hybrid_ray.errors import first_line
from hybrid_ray.layout import RunLayout
from hybrid_ray.model import build_model, unwrap
from hybrid_ray.model.build import resolve_backend
from hybrid_ray.model.precision import autocast
from hybrid_ray.model.speed import kernel_choices
from hybrid_ray.model.stack import runtime_versions
from hybrid_ray.node import kernels
from hybrid_ray.ray_compat import quiet_report_logs
from hybrid_ray.spec import RunSpec
from hybrid_ray.train.cadence import report_due
from hybrid_ray.train.checkpoint import Checkpointer, SaveConfig, TrainerState
from hybrid_ray.train.evaluate import EvalConfig, Evaluator
from hybrid_ray.train.metrics import LogConfig, MetricsLogger, say
from hybrid_ray.train.optim import LRSchedule, build_optimizer
from hybrid_ray.train.rungs import RungConfig, Rungs
from hybrid_ray.train.parallelize import (clip_grad_norm, gradient_sync, in_process_group, parallelize,
                                          resolve_strategy)

@dataclass
class LaunchOptions:
    """Per-launch settings that are not part of the run's identity."""

    run_dir: str  # the run folder (layout.RunLayout)
    extend_steps: int = 0  # lengthen a (finished) run by this many steps, without an LR jump
    until_step: int | None = None  # stop this launch at this step (with a checkpoint); the run stays resumable
    tensorboard_dir: str | None = None
    resume_from: str | None = None  # the newest good checkpoint the driver found (None: start from scratch)
    known_checkpoints: list[str] = field(default_factory=list)  # checkpoint folders that existed at launch
    kernel_store: str | None = None  # storage whose .kernels/ shares compiled kernels between nodes (None: one node)
    echo: bool = True  # rank 0 prints progress lines (a sweep's trials do not: the sweep prints its own events)
    data_origin: str | None = None  # the prepared dataset in shared storage, for nodes that do not have it yet
    rung_steps: list[int] = field(default_factory=list)  # where a sweep's scheduler judges the run (train/rungs.py)
    decisions: str | None = None  # the scheduler's record of its judgements (None: no scheduler judges this run)


def _publish_kernels(store: str | None, tag: str) -> None:
    """Rank 0 shares what its node compiled with the other nodes; a failure to do so does not stop the run."""
    if store:
        try:
            kernels.publish(store)
        except Exception as e:
            say(f"{tag}warning: could not publish compiled kernels to {store}: {first_line(e)}")


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
    grad_norm = clip_grad_norm(model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm


class Divergence:
    """The first step whose loss or gradient norm was not finite, tracked on the device (no sync per step) and
    agreed on by every rank when `check` is called, so all ranks stop at the same point."""

    NONE = 2**62

    def __init__(self, device: torch.device, path: str, rank: int):
        self.first = torch.full((), self.NONE, dtype=torch.long, device=device)
        self.path, self.rank = path, rank  # rank 0 records the step and LR in `path` (layout.RunLayout.diverged)

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

    def stop(self, schedule: LRSchedule) -> bool:
        """Whether to stop here (a collective): rank 0 then records where the run diverged, and at which LR."""
        bad_step = self.check()
        if bad_step is not None and self.rank == 0:
            info = {"step": bad_step, "lr": schedule.lr_at(bad_step - 1)}
            storage.write_bytes(self.path, json.dumps(info).encode())
        return bad_step is not None


@dataclass
class _Worker:
    """This worker: its place in the group, its device, and its console lines."""

    rank: int
    world: int
    device: torch.device
    fla: bool  # FLA's kernels compile (and tune) on the first step; nodes share them through `kernel_store`
    kernel_cache: Any
    kernel_store: str | None
    tag: str  # a sweep's trials name themselves too: minutes of silence look like a hang

    @classmethod
    def start(cls, spec: RunSpec, launch: LaunchOptions) -> _Worker:
        import ray.train
        import ray.train.torch

        quiet_report_logs()
        context = ray.train.get_context()
        device = ray.train.torch.get_device()
        fla = resolve_backend(spec.scale.backend, device) == "fla"
        # before anything compiles: this node's kernel cache, with what other nodes published that this one lacks
        kernel_cache = kernels.activate(launch.kernel_store) if fla else None
        if device.type == "cpu":
            torch.set_num_threads(max(1, int(spec.scale.cpus_per_worker)))
        torch.manual_seed(spec.train.seed + context.get_world_rank())
        return cls(context.get_world_rank(), context.get_world_size(), device, fla, kernel_cache, launch.kernel_store,
                   "" if launch.echo else f"[{spec.name}] ")

    def layout(self, spec: RunSpec) -> dict[str, Any]:
        return dict(seq_len=spec.data.seq_len, micro_batch=spec.micro_batch_size, rank=self.rank,
                    world_size=self.world, packed=spec.data.packed)

    def say(self, line: str) -> None:
        if self.rank == 0:
            say(f"{self.tag}{line}")

    def first_step_done(self, state: TrainerState, started: float) -> float:
        """A launch's first step compiles (and tunes) kernels: its time is compile time, not training time. Returns
        when the rest of the iteration, which counts as training, started."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        state.compile_seconds += seconds
        started = time.perf_counter()
        if self.fla:
            self.say(f"first step done after {seconds:.0f} s")
            if self.rank == 0:
                _publish_kernels(self.kernel_store, self.tag)
        return started

    def finish(self) -> None:
        if self.rank == 0 and self.fla:
            _publish_kernels(self.kernel_store, self.tag)  # with the evaluation's kernels


def _start(state: TrainerState, schedule: LRSchedule, spec: RunSpec, launch: LaunchOptions, model: nn.Module,
           worker: _Worker) -> int:
    """Record this launch's environment, apply --extend-steps, say where training starts; returns the step this
    launch stops at."""
    state.env = {**runtime_versions(worker.device, unwrap(model).hybrid_backend),
                 "strategy": resolve_strategy(spec.scale.strategy, worker.device), **kernel_choices(unwrap(model))}
    if launch.extend_steps:
        schedule.extend(state.step, state.total_steps + launch.extend_steps, spec.optim)
        state.total_steps = schedule.total_steps
    stop_at = min(state.total_steps, launch.until_step or state.total_steps)
    if launch.echo and state.step:
        worker.say(f"resumed at step {state.step}/{state.total_steps}")
    if state.step < stop_at and worker.kernel_cache is not None:
        worker.say(worker.kernel_cache.line())
    return stop_at


def _report(state: TrainerState, record: dict, saved: tuple[str, str] | None) -> None:
    """Report to Ray Train (cadence.report_due says when): the metrics, with this rank's part of the checkpoint
    `saved` (its local folder and its name in the run folder) when there is one."""
    import ray.train
    from ray.train import Checkpoint
    from ray.train.v2.api.report_config import CheckpointUploadMode

    evaluations = sum("val_loss" in r for r in state.history)
    # `evaluations` is the clock of Tune's schedulers (ASHA counts in evaluations); `evaluated` marks a fresh one
    metrics = {**state.last_eval, **record, "step": state.step, "evaluations": evaluations,
               "evaluated": "val_loss" in record}
    if saved is None:
        ray.train.report(metrics)
        return
    folder, name = saved
    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder), checkpoint_dir_name=name,
                     checkpoint_upload_mode=CheckpointUploadMode.ASYNC)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: config = {"spec": RunSpec.to_dict(), "launch": LaunchOptions as a dict}."""
    set_up = time.perf_counter()
    spec, launch = RunSpec.from_dict(config["spec"]), LaunchOptions(**config.get("launch", {}))
    worker = _Worker.start(spec, launch)
    device, layout = worker.device, worker.layout(spec)
    # a cache hit on the driver's node; other nodes copy what the driver published, once per node
    dataset = data_lib.prepare(spec.data, origin=launch.data_origin)
    model = setup_model(spec, device)
    optimizer = build_optimizer(model, spec.optim, device)
    loader = dataset.train_loader(global_batch=spec.train.batch_size, seed=spec.train.seed, **layout)
    evaluator = Evaluator(EvalConfig.from_spec(spec), dataset, model, device, layout)
    schedule = LRSchedule.from_spec(spec.optim, spec.train.steps)
    checkpointer = Checkpointer(SaveConfig.from_spec(spec), model, optimizer, {"schedule": schedule, "loader": loader}, worker.rank,
                                worker.world, launch.known_checkpoints)
    state = checkpointer.restore(launch.resume_from) or TrainerState(total_steps=spec.train.steps)
    stop_at, first_step = _start(state, schedule, spec, launch, model, worker), state.step
    config = RungConfig(tuple(launch.rung_steps), launch.decisions) if launch.decisions else None
    rungs = Rungs(config, spec.name, worker.rank, device)
    if rungs.pending(state.step):  # resumed at a rung cut before its judgement: report it again, to be judged
        _report(state, {**state.last_eval, "step": state.step}, None)
    if state.step and rungs.stop(state.step):
        stop_at = state.step  # told to stop at a rung before this launch: nothing to train
    metrics = MetricsLogger(LogConfig.from_spec(spec), device, worker.rank, worker.world, launch.tensorboard_dir, launch.echo)
    divergence = Divergence(device, RunLayout(launch.run_dir).diverged, worker.rank)
    state.setup_seconds += time.perf_counter() - set_up
    while state.step < stop_at:
        started = time.perf_counter()
        lr = schedule.lr_at(state.step)
        loss, grad_norm = train_step(model, optimizer, loader.next_step(), lr, spec, device)
        compiled = state.step == first_step  # its time is compile time: neither training time nor throughput
        if compiled:
            started = worker.first_step_done(state, started)
        state.step += 1
        state.tokens_seen += metrics.tokens_per_step
        divergence.track(state.step, loss, grad_norm)
        metrics.add(loss, timed=not compiled)
        last = state.step == stop_at
        logging, evaluating = metrics.should_log(state.step, last), evaluator.should_evaluate(state.step, last)
        saving = checkpointer.should_save(state.step, last) or rungs.due(state.step)  # keep what is judged
        record = metrics.record(state, grad_norm, lr, loader.epoch) if logging else {}
        if (logging or evaluating or saving) and divergence.stop(schedule):
            break  # before anything of a broken model is evaluated or saved
        state.train_seconds += time.perf_counter() - started
        if evaluating:
            evaluated = time.perf_counter()
            state.last_eval = evaluator.run(state, last)
            state.eval_seconds += time.perf_counter() - evaluated
            record = {**record, **state.last_eval, "step": state.step}
            metrics.restart_clock()
        metrics.write(state, record)
        if report_due(saving, evaluating):  # every rank at the same steps: Ray Train's report is a barrier
            _report(state, record, checkpointer.save(state) if saving else None)
            if rungs.stop(state.step):  # the sweep's console says so
                break
            metrics.restart_clock()
    for step in rungs.late:
        worker.say(f"warning: no judgement of step {step} came from the sweep's scheduler; trained on")
    metrics.close()
    worker.finish()
