"""Diagnose a throughput drop: per-step times of one variant without Ray, then tokens/s of every step through Ray.

    python benchmarks/diag_steps.py h100_transformer --steps 60 --out-dir /tmp/diag

Found the stall in ray.train.report described in benchmarks/results/speed/NOTES.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.common import bench_spec, hot_path, single_process_group, step_times
from hybrid_ray.train import train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variant")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out-dir", required=True, help="the Ray run's storage and diag.json go here")
    args = parser.parse_args()
    device = torch.device("cuda", 0)
    single_process_group(device)
    spec = bench_spec(args.variant)
    model, optimizer, batches = hot_path(spec, device)
    times, _ = step_times(model, optimizer, batches, spec, device, args.steps, warmup=0)
    print("no-ray step ms:", " ".join(f"{x * 1e3:.0f}" for x in times), flush=True)
    del model, optimizer
    torch.cuda.empty_cache()
    spec = spec.with_overrides({"name": "diag", "storage_path": str(Path(args.out_dir, "runs")), "train.steps": args.steps,
                                "train.log_every": 1, "train.eval_every": 10 * args.steps,
                                "train.checkpoint_every": 10 * args.steps})
    history = train(spec, progress=False).results["history"]
    ray_tokens = [r["tokens_per_s"] for r in history if "tokens_per_s" in r]
    print("ray tok/s:", " ".join(f"{x / 1e3:.0f}" for x in ray_tokens))
    Path(args.out_dir, "diag.json").write_text(json.dumps({"variant": args.variant, "no_ray_step_s": times,
                                                           "ray_tokens_per_s": ray_tokens}, indent=2))


if __name__ == "__main__":
    main()
