"""GPU: `hybrid-ray train` throughput through Ray Train, the same hot path without Ray, and data-parallel scaling.

    python benchmarks/bench_train.py --variants h100_deltanet h100_hybrid_sparse h100_transformer --gpus 1 2

Each run trains the H100 base config (batch 48 x 1024 per GPU) on the embedded corpus for --steps steps and writes
one JSON into --out-dir: tokens/s (total and per GPU, mean over the log windows after the first two), MFU, peak
memory per GPU, scaling efficiency against the 1-GPU run, and for 1 GPU the same loop without Ray (same strategy,
a process group of one), Ray's overhead against it, and the speed-up over the old single-GPU scripts.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.common import OLD_SCRIPTS, bench_spec, single_process_group, time_training, write_json
from hybrid_ray.train import train


def steady(history: list[dict], key: str, skip: int = 2) -> float | None:
    values = [r[key] for r in history if key in r][skip:]
    return sum(values) / len(values) if values else None


def run(variant: str, gpus: int, strategy: str, steps: int, storage: str) -> dict:
    spec = bench_spec(variant, **{
        "name": f"bench-{variant}-{gpus}gpu-{strategy}", "storage_path": storage,
        "scale.num_workers": gpus, "scale.gpus_per_worker": 1, "scale.strategy": strategy,
        "train.batch_size": 48 * gpus, "train.steps": steps, "train.log_every": 5,
        "train.eval_every": 10 * steps, "train.checkpoint_every": 10 * steps, "train.eval_tokens": 48 * 1024,
    })
    outcome = train(spec, progress=False)
    history = outcome.results["history"]
    per_gpu = steady(history, "tokens_per_s_per_worker")
    return {
        "variant": variant, "gpus": gpus, "strategy": strategy,
        "strategy_used": outcome.results["versions"].get("strategy"), "steps": steps,
        "batch_per_gpu": 48, "seq_len": spec.data.seq_len, "params": outcome.results["params"]["total"],
        "tokens_per_s": steady(history, "tokens_per_s"), "tokens_per_s_per_gpu": per_gpu,
        "mfu": steady(history, "mfu"), "peak_memory_gib_per_gpu": outcome.results.get("peak_memory_gib"),
        "final_train_loss": outcome.results.get("final_train_loss"),
        "command": f"hybrid-ray train --variant {variant} --num-workers {gpus} --gpus-per-worker 1 "
                   + ("" if strategy == "auto" else f"--strategy {strategy} ")
                   + f"--batch-size {48 * gpus} --steps {steps}",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", nargs="*", default=["h100_hybrid_sparse"])
    parser.add_argument("--gpus", nargs="*", type=int, default=[1])
    parser.add_argument("--strategies", nargs="*", default=["auto"], help="auto (fsdp on GPUs), ddp, fsdp")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--no-baseline", action="store_true", help="skip the 1-GPU run without Ray")
    parser.add_argument("--out-dir", default="benchmarks/results")
    args = parser.parse_args()
    storage = tempfile.mkdtemp(prefix="hybrid-ray-bench-")
    device = torch.device("cuda", 0)
    single_process_group(device)
    for variant in args.variants:
        for strategy in args.strategies:
            baseline = None
            if not args.no_baseline and 1 in args.gpus:
                baseline = time_training(bench_spec(variant, **{"scale.strategy": strategy}), device, steps=10)
                print(f"{variant} {strategy} without Ray: {baseline['tokens_per_s'] / 1e3:.1f}k tok/s", flush=True)
            one_gpu = None
            for gpus in sorted(args.gpus):
                r = run(variant, gpus, strategy, args.steps, storage)
                if gpus == 1:
                    one_gpu = r["tokens_per_s_per_gpu"]
                    if baseline:
                        r["no_ray_tokens_per_s"] = baseline["tokens_per_s"]
                        r["ray_overhead"] = 1 - r["tokens_per_s"] / baseline["tokens_per_s"]
                    if variant in OLD_SCRIPTS:
                        r["old_scripts_tokens_per_s"] = OLD_SCRIPTS[variant]
                        r["speedup_vs_old_scripts"] = r["tokens_per_s"] / OLD_SCRIPTS[variant]
                if one_gpu:
                    r["scaling_efficiency"] = r["tokens_per_s_per_gpu"] / one_gpu
                write_json(Path(args.out_dir, f"train-{variant}-{gpus}gpu-{strategy}.json"), r)
                print(f"{variant} {strategy} {gpus} GPU: {r['tokens_per_s'] / 1e3:.1f}k tok/s total, "
                      f"{r['tokens_per_s_per_gpu'] / 1e3:.1f}k/GPU, MFU {(r['mfu'] or 0) * 100:.1f}%, "
                      f"{r['peak_memory_gib_per_gpu']:.1f} GiB, efficiency {r.get('scaling_efficiency', 1):.3f}, "
                      f"overhead {r.get('ray_overhead', float('nan')):.4f}, "
                      f"x{r.get('speedup_vs_old_scripts', float('nan')):.2f} old scripts", flush=True)


if __name__ == "__main__":
    main()
