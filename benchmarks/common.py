"""Shared by the GPU benchmarks: the reference numbers, the hot path of `hybrid-ray train`, the one timing loop, JSON.

Every benchmark builds the model the way a Ray Train worker does (`setup_model`, inside a process group, so
`--strategy auto` resolves to FSDP2 on a GPU exactly as in `hybrid-ray train`) and times `train_step` with
`step_times`. Results go to a folder the caller names (`--out-dir`).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from hybrid_ray.data.loader import Batch
from hybrid_ray.model import count_params, flops_per_token, peak_flops
from hybrid_ray.node import kernels
from hybrid_ray.spec import RunSpec
from hybrid_ray.train.loop import setup_model, train_step
from hybrid_ray.train.optim import build_optimizer
from hybrid_ray.train.parallelize import single_process_group  # noqa: F401 (the benchmarks' import)
from hybrid_ray.config.variants import REFERENCE_VOCAB, variant_spec

if torch.cuda.is_available():  # every benchmark reads and fills the node's kernel cache (`hybrid-ray warmup` fills it)
    print(kernels.activate().line(), flush=True)

# tokens/s on one H100 at the H100 base size, batch 48 x 1024: the single-GPU scripts hybrid-ray replaces, and the
# first measurements of hybrid-ray (docs/ARCHITECTURE.md, "Measured on one H100": bf16 autocast, fused AdamW, no
# compile, FLA 0.6 + triton 3.7.1)
OLD_SCRIPTS = {"h100_deltanet": 102e3, "h100_hybrid_sparse": 118e3, "h100_transformer": 282e3}
H100_TABLE = {  # tokens/s, peak GiB
    "h100_deltanet": (112e3, 58), "h100_hybrid_sparse": (128e3, 53),
    "h100_hybrid_alternating": (176e3, 42), "h100_transformer": (415e3, 26),
}


def bench_spec(variant: str, **overrides: Any) -> RunSpec:
    """A variant at the H100 base size on FLA's kernels, with the original experiments' vocabulary."""
    return variant_spec(variant).with_overrides({"scale.backend": "fla", "model.vocab_size": REFERENCE_VOCAB,
                                                 **overrides})


def machine() -> dict[str, Any]:
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"gpus": gpus, "torch": torch.__version__, "cuda": torch.version.cuda, "host": platform.node(),
            "cpus": os.cpu_count()}


def random_batches(spec: RunSpec, accum: int, device: torch.device) -> list[Batch]:
    ids = torch.randint(0, spec.model.vocab_size, (accum, spec.micro_batch_size, spec.data.seq_len), device=device)
    return [Batch(input_ids=ids[i], labels=ids[i]) for i in range(accum)]


def hot_path(spec: RunSpec, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer, list[Batch]]:
    """What `hybrid-ray train` builds on a worker (model, optimizer) and one step's random batches."""
    model = setup_model(spec, device)
    return model, build_optimizer(model, spec.optim, device), random_batches(spec, spec.grad_accum_steps, device)


def step_times(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list[Batch], spec: RunSpec,
               device: torch.device, steps: int, warmup: int = 3) -> tuple[list[float], float]:
    """The one timing loop: `warmup` untimed steps, then each step's seconds (synchronised); and the last loss."""
    for _ in range(warmup):
        train_step(model, optimizer, batches, spec.optim.lr, spec, device)
    times, loss = [], torch.zeros(())
    for _ in range(steps):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss, _ = train_step(model, optimizer, batches, spec.optim.lr, spec, device)
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times, loss.item()


def time_training(spec: RunSpec, device: torch.device, steps: int = 10, warmup: int = 3) -> dict[str, Any]:
    """The training hot path of `hybrid-ray train` without Ray, on random tokens: tokens/s, MFU, memory."""
    torch.cuda.reset_peak_memory_stats(device)
    model, optimizer, batches = hot_path(spec, device)
    times, loss = step_times(model, optimizer, batches, spec, device, steps, warmup)
    seconds = sorted(times)[len(times) // 2]  # the median step
    tokens = spec.train.batch_size * spec.data.seq_len
    peak = peak_flops(torch.cuda.get_device_name(device))
    out = {
        "params": count_params(spec.model)["total"],
        "step_s": seconds,
        "tokens_per_s": tokens / seconds,
        "mfu": tokens / seconds * flops_per_token(spec.model, spec.data.seq_len) / peak if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "loss": loss,
    }
    del model, optimizer
    torch.cuda.empty_cache()
    return out


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **payload},
                                     indent=2))


def gpt2_style_tokenizer(folder: str | Path, vocab_size: int = 50257, max_bytes: int | None = None) -> Path:
    """A GPT-2-style tokenizer folder made offline (the hub is unreachable from the benchmark machines): byte-level BPE
    trained on this Python's standard library (its first `max_bytes` of text; None: all of it) to GPT-2's 50257 ids,
    <|endoftext|> the last one, written as the hub's gpt2 folder is (tokenizer.json, vocab.json, merges.txt, and a
    tokenizer_config.json naming GPT2Tokenizer). Made once per folder; 70-130 s on 2 busy cores at the full size."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from hybrid_ray.data.sources import iter_documents
    from hybrid_ray.spec import DataSpec

    folder = Path(folder)
    if (folder / "tokenizer_config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    eos = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    def documents() -> Any:
        seen = 0
        for text in iter_documents(DataSpec(source="stdlib")):
            if max_bytes is not None and seen >= max_bytes:
                return
            seen += len(text)
            yield text

    tok.train_from_iterator(documents(), trainer)
    tok.add_special_tokens([eos])
    tok.save(str(folder / "tokenizer.json"))
    tok.model.save(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "bos_token": eos, "eos_token": eos,
        "unk_token": eos, "model_max_length": 1024}, indent=2))
    return folder
