"""CPU: the host time of one FSDP2 training step under bench_speed's settings, on a model too small to compute.

    python -m benchmarks.bench_host --settings fsdp fsdp+noreshard+shardlocal fsdp+noreshard fsdp+shardlocal

The transformer arm's step is host-bound on an H100 (benchmarks/results/speed/NOTES.md): this measures what a setting
does to the host's share without a GPU. It runs `hybrid-ray train`'s hot path (setup_model + train_step, FSDP2 in a
gloo process group of one) on a 12-layer, 64-wide copy of a variant on the PyTorch twin, one thread, the settings
interleaved over --rounds rounds; per setting the fastest step of each round. On CPUs AdamW runs its foreach
implementation, not the fused CUDA kernel, so the optimizer's share here is larger than on a GPU node.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.bench_speed import PARTS, set_env
from hybrid_ray.config.variants import variant_spec
from hybrid_ray.data.loader import Batch
from hybrid_ray.train.loop import setup_model, train_step
from hybrid_ray.train.optim import build_optimizer
from hybrid_ray.train.parallelize import single_process_group

TINY = {"scale.backend": "torch", "scale.strategy": "fsdp", "model.hidden_size": 64, "model.num_heads": 2,
        "model.head_dim": 32, "model.attn_num_heads": 2, "model.vocab_size": 256, "data.seq_len": 8,
        "train.batch_size": 1}


def step_ms(variant: str, setting: str, steps: int) -> float:
    """The fastest of `steps` steps (after 3 untimed ones) of a fresh tiny model under `setting`, in ms."""
    unknown = set(setting.split("+")) - PARTS
    if unknown:
        raise SystemExit(f"unknown setting part(s) {sorted(unknown)}")
    set_env(setting)
    device = torch.device("cpu")
    spec = variant_spec(variant).with_overrides(TINY)
    model = setup_model(spec, device)
    optimizer = build_optimizer(model, spec.optim, device)
    ids = torch.randint(0, spec.model.vocab_size, (1, spec.data.seq_len))
    batches = [Batch(input_ids=ids, labels=ids)]
    times = []
    for i in range(steps + 3):
        start = time.perf_counter()
        train_step(model, optimizer, batches, spec.optim.lr, spec, device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="h100_transformer")
    parser.add_argument("--settings", nargs="*", default=["fsdp", "fsdp+noreshard+shardlocal"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    single_process_group(torch.device("cpu"))
    results: dict[str, list[float]] = {s: [] for s in args.settings}
    for _ in range(args.rounds):
        for setting in args.settings:
            results[setting].append(step_ms(args.variant, setting, args.steps))
    for setting, values in results.items():
        print(f"{args.variant} {setting:28s} host ms a step: best {min(values):6.1f}, rounds "
              f"{', '.join(f'{v:.1f}' for v in values)}")


if __name__ == "__main__":
    main()
