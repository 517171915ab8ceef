"""Training metrics: throughput and MFU, memory, the progress lines, and the worker's MetricsLogger."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from hybrid_ray.model.flops import flops_per_token, peak_flops
from hybrid_ray.spec import RunSpec
from hybrid_ray.train.cadence import Every
from hybrid_ray.train.parallelize import mean_over_ranks

if TYPE_CHECKING:
    from hybrid_ray.train.checkpoint import TrainerState


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
        """Per-worker and total tokens/s and MFU (none when no step was timed); synchronises the GPU so the clock is
        honest."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # a CPU-GPU sync point: only at log intervals
        if not self.tokens:
            return {}
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
    if "tokens_per_s" in record:
        parts.append(f"{_si(record['tokens_per_s'])} tok/s ({_si(record['tokens_per_s_per_worker'])}/worker)")
    if "mfu" in record:
        parts.append(f"MFU {record['mfu'] * 100:.1f}%")
    parts.append(f"mem {record['memory_gib']:.1f} GiB")
    if eta_s is not None:
        parts.append(f"eta {_duration(eta_s)}")
    return " | ".join(parts)


def eval_line(record: dict) -> str:
    return (f"eval step {record['step']}: val_loss {record['val_loss']:.4f} | val_acc {record['val_accuracy']:.4f}"
            f" | val_ppl {record['val_perplexity']:.2f} | {record['val_tokens']:,} {record['val_split']}"
            " validation tokens" + (f" | recall {record['val_recall']:.3f} ± {record['val_recall_stderr']:.3f}"
                                    if "val_recall" in record else ""))


def say(line: str) -> None:
    """A progress line on the worker's stdout, which Ray forwards to the driver's console. Not print(): Ray Train
    patches it to also log each line, which would show every line twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class TensorBoard:
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


@dataclass(frozen=True)
class LogConfig:
    every: int  # train.log_every
    tokens_per_step: int  # the global batch's tokens
    flops_per_token: float  # of the model at the run's sequence length, for the MFU

    @classmethod
    def from_spec(cls, spec: RunSpec) -> LogConfig:
        return cls(spec.train.log_every, spec.train.batch_size * spec.data.seq_len,
                   flops_per_token(spec.model, spec.data.seq_len))


class MetricsLogger:
    """A worker's training metrics: the loss since the last log record (kept on the device: no sync per step), the
    throughput clock, and the records of the run's history, which rank 0 also writes to TensorBoard and (with
    `echo`) to the console."""

    def __init__(self, config: LogConfig, device: torch.device, rank: int, world_size: int, tensorboard_dir: str | None,
                 echo: bool):
        self.every = Every(config.every)
        self.tokens_per_step = config.tokens_per_step
        self.meter = Throughput(config.flops_per_token, device, world_size)
        self.board = TensorBoard(tensorboard_dir, rank)
        self.device, self.world_size, self.echo = device, world_size, echo and rank == 0
        self.window_loss, self.window_steps = torch.zeros((), device=device), 0

    def should_log(self, step: int, last: bool) -> bool:
        return self.every.due(step, last)

    def add(self, loss: torch.Tensor, timed: bool = True) -> None:
        """One step's mean loss and, when it counts as throughput (`timed`), this worker's share of its tokens; an
        untimed step (a launch's first, which compiles) restarts the throughput clock after it."""
        self.window_loss += loss
        self.window_steps += 1
        if timed:
            self.meter.add(self.tokens_per_step // self.world_size)
        else:
            self.meter.reset()

    def record(self, state: TrainerState, grad_norm: torch.Tensor, lr: float, epoch: float) -> dict[str, Any]:
        """The log record of this step: loss and gradient norm averaged over ranks (a collective: every rank calls
        it at the same steps), the loss also over the steps since the last record."""
        mean = mean_over_ranks(torch.stack([self.window_loss / self.window_steps, grad_norm.float()]))
        record = {
            "step": state.step, "time_s": state.train_seconds, "loss": mean[0].item(), "grad_norm": mean[1].item(),
            "lr": lr, "epoch": epoch, "tokens_seen": state.tokens_seen, **self.meter.read(),
            "memory_gib": memory_gib(self.device),
        }
        self.meter.reset()
        self.window_loss.zero_()
        self.window_steps = 0
        return record

    def restart_clock(self) -> None:
        """Evaluation and checkpoint time is not training throughput."""
        self.meter.reset()

    def write(self, state: TrainerState, record: dict[str, Any]) -> None:
        """Add a record (if any) to the run's history and TensorBoard, and show it."""
        if not record:
            return
        state.history.append(record)
        self.board.log(record)
        if self.echo and "loss" in record:
            eta = state.train_seconds / max(state.step, 1) * (state.total_steps - state.step)
            say(progress_line(record, state.total_steps, eta))
        if self.echo and "val_loss" in record:
            say(eval_line(record))

    def close(self) -> None:
        self.board.close()
