"""`hybrid-ray warmup`: compile and tune every kernel a run spec needs (train step, evaluation, decoding) on this
node's GPUs, into the node's kernel cache (hybrid_ray/node/kernels.py), and optionally publish it for a cluster's nodes.

One process per distinct GPU model (the same model compiles the same kernels): this one for the first, a spawned
one, limited to its GPU, for each other.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from hybrid_ray.errors import EnvironmentProblem, SpecError
from hybrid_ray.layout import kernel_store
from hybrid_ray.node import kernels
from hybrid_ray.spec import RunSpec
from hybrid_ray.train.plan import kernel_shape

DECODE_PROMPTS = (8, 100)  # prompt lengths: a short prefill runs FLA's recurrent kernels, a longer one its chunked ones
DECODE_TOKENS = 4
# `eval` scores padded batches of many lengths on FLA's own forward: up to 64 tokens it runs FLA's fused-recurrent
# kernels, longer its chunked ones, and Triton specializes on lengths divisible by 16 or not
SCORING_LENGTHS = (40, 48, 100, 336)


@dataclass
class Phase:
    gpu: str
    name: str
    seconds: float
    new_entries: int

    def line(self) -> str:
        return f"{self.gpu}: {self.name:<10} {self.seconds:7.1f} s, {self.new_entries} new cache entries"


def distinct_gpus() -> dict[str, int]:
    """The first device index of every GPU model on this node, by name."""
    found: dict[str, int] = {}
    for i in range(torch.cuda.device_count()):
        found.setdefault(torch.cuda.get_device_name(i), i)
    return found


def _batch(spec: RunSpec, device: torch.device) -> Any:
    """A micro batch of the run's shape (packed: one row of documents with their boundaries)."""
    from hybrid_ray.data import Batch

    ids = torch.randint(0, spec.model.vocab_size, (spec.micro_batch_size, spec.data.seq_len), device=device)
    if not spec.data.packed:
        return Batch(input_ids=ids, labels=ids)
    total = ids.numel()
    cu = torch.arange(0, total + 1, max(1, spec.data.seq_len // 2), dtype=torch.int32, device=device)
    cu = torch.unique(torch.cat([cu, torch.tensor([total], dtype=torch.int32, device=device)]))
    return Batch(input_ids=ids.view(1, -1), labels=ids.view(1, -1), cu_seqlens=cu)


def warm_device(spec: RunSpec, device: torch.device, say: Callable[[str], None] = print,
                training_only: bool = False) -> list[Phase]:
    """Run the spec's train step, evaluation forward, decoding and downstream scoring once on `device` (FLA backend),
    each timed, with the cache entries it added; `training_only`: the train step and evaluation alone."""
    from hybrid_ray.evals.loss import evaluate
    from hybrid_ray.inference.generate import SamplingOptions, decode
    from hybrid_ray.model import build_model
    from hybrid_ray.model.precision import autocast
    from hybrid_ray.train.loop import setup_model, train_step
    from hybrid_ray.train.optim import build_optimizer
    from hybrid_ray.train.parallelize import single_process_group

    spec = spec.with_overrides({"scale.backend": "fla"})
    single_process_group(device)
    status = kernels.activate()
    gpu = f"{torch.cuda.get_device_name(device)} ({status.stack['arch']})"
    say(f"{gpu}: {status.line()}")
    phases: list[Phase] = []

    def timed(name: str, work: Callable[[], Any]) -> None:
        before, start = kernels.count_entries(status.folder), time.perf_counter()
        work()
        torch.cuda.synchronize(device)
        phases.append(Phase(gpu, name, time.perf_counter() - start, kernels.count_entries(status.folder) - before))
        say(phases[-1].line())

    torch.manual_seed(spec.train.seed)
    model = setup_model(spec, device)
    optimizer = build_optimizer(model, spec.optim, device)
    batch = _batch(spec, device)
    timed("train step", lambda: train_step(model, optimizer, [batch], spec.optim.lr, spec, device))
    timed("evaluation", lambda: evaluate(model, [batch], device, spec.train.precision))
    del model, optimizer
    torch.cuda.empty_cache()
    if training_only:
        return phases
    inference = build_model(spec.model, "fla", device=device).eval()
    prompts = [[i % spec.model.vocab_size for i in range(n)] for n in DECODE_PROMPTS]
    options = SamplingOptions(max_new_tokens=DECODE_TOKENS, temperature=0)
    timed("decoding", lambda: decode(inference, prompts, options, None, device))

    @torch.no_grad()
    def score() -> None:
        for n in SCORING_LENGTHS:
            ids = torch.randint(0, spec.model.vocab_size, (2, n), device=device)
            with autocast(device, spec.train.precision):
                inference(input_ids=ids, use_cache=False)

    timed("scoring", score)
    return phases


def distinct_shapes(specs: list[RunSpec]) -> list[RunSpec]:
    """The first spec of each kernel shape, those with both layer kinds first (they compile the most)."""
    seen: dict[tuple, RunSpec] = {}
    for spec in sorted(specs, key=lambda s: not (0 < len(s.model.attn_layers) < s.model.num_layers)):
        seen.setdefault(kernel_shape(spec), spec)
    return list(seen.values())


def _warm_other(specs: list[dict], index: int, storage_path: str | None, queue: Any) -> None:
    """A spawned process warming GPU `index` alone (and publishing its own stack's entries)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = str(index)  # before CUDA starts in this process
    phases = _warm_all([RunSpec.from_dict(s) for s in specs], torch.device("cuda", 0), print)
    _publish(storage_path, print)
    queue.put([dataclasses.asdict(p) for p in phases])


def _warm_all(specs: list[RunSpec], device: torch.device, say: Callable[[str], None]) -> list[Phase]:
    """Every kernel of the first spec; of the others, what their train step and evaluation add (their MLP widths)."""
    phases = []
    for i, spec in enumerate(specs):
        if len(specs) > 1:
            say(f"shape {i + 1}/{len(specs)}: {len(spec.model.attn_layers)} attention layer(s) of "
                f"{spec.model.num_layers}, MLP width {spec.model.intermediate_size}")
        phases += warm_device(spec, device, say, training_only=i > 0)
    return phases


def _publish(storage_path: str | None, say: Callable[[str], None]) -> None:
    if storage_path:
        say(f"published {kernels.publish(storage_path)} cache entries to {kernel_store(storage_path)}")


def grid_specs(spec: RunSpec, grid: list[str], match_params: bool = False) -> list[RunSpec]:
    """The arms of a sweep grid (as `hybrid-ray sweep` builds them from the same flags), one spec each."""
    from hybrid_ray.config.grid import expand, parse_grid
    from hybrid_ray.config.grid import match_params as matched

    arms = expand(spec, parse_grid(grid))
    return [a.spec for a in (matched(arms) if match_params else arms)]


def warmup(spec: RunSpec, *, storage_path: str | None = None, say: Callable[[str], None] = print,
           grid: list[str] | None = None, match_params: bool = False) -> list[Phase]:
    """Compile and tune `spec`'s kernels on every distinct GPU model of this node; publish them under `storage_path`
    when given. With `grid` (and `match_params`), every distinct kernel shape of that sweep grid's arms, so none of
    its trials compiles. A vocabulary that follows the tokenizer is resolved by preparing the spec's data, as
    `train` does."""
    if match_params and not grid:
        raise SpecError("--match-params goes with --grid (the arms it sizes)")
    if not torch.cuda.is_available():
        raise EnvironmentProblem("warmup needs a CUDA GPU: it compiles FLA's Triton kernels for the GPUs it finds, "
                                 "and this machine has none")
    if spec.model.vocab_size is None:  # it follows the tokenizer, as in `train`
        from hybrid_ray import data as data_lib
        from hybrid_ray.train.launch import resolve_vocab

        spec = resolve_vocab(spec, data_lib.prepare(spec.data, progress=True))
    specs = distinct_shapes(grid_specs(spec, grid, match_params)) if grid else [spec]
    if grid:
        say(f"{len(specs)} distinct kernel shape(s) in the grid")
    (_, first), *others = distinct_gpus().items()
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    children = [context.Process(target=_warm_other, args=([s.to_dict() for s in specs], index, storage_path, queue))
                for _, index in others]
    for child in children:
        child.start()
    phases = _warm_all(specs, torch.device("cuda", first), say)
    _publish(storage_path, say)
    for (name, _), child in zip(others, children):
        child.join()
        if child.exitcode != 0:
            raise EnvironmentProblem(f"warming up the {name} failed (exit code {child.exitcode}); its output is above")
        phases += [Phase(**p) for p in queue.get()]
    return phases
