"""GPU: FLA backend vs the PyTorch twin on the same weights, and training throughput of the H100 variants.

    python benchmarks/bench_model.py --out-dir benchmarks/results

Parity (`hybrid_ray.model.parity`, the same check as the GPU tests and `hybrid-ray verify --fla`): fp32 logits and
gradients of FLA against the twin. Throughput: the hot path of `hybrid-ray train` (its default strategy: FSDP2 with
bf16 compute parameters) at batch 48 x 1024 on random tokens, next to the table of docs/ARCHITECTURE.md, "Measured on
one H100" (`design_tokens_per_s`, `design_peak_gib`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import H100_TABLE, bench_spec, single_process_group, time_training, write_json
from hybrid_ray.model.parity import compare_backends

VARIANTS = ["h100_deltanet", "h100_hybrid_sparse", "h100_hybrid_late", "h100_hybrid_alternating", "h100_transformer"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--variants", nargs="*", default=VARIANTS)
    parser.add_argument("--skip-parity", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda", 0)
    single_process_group(device)
    out = Path(args.out_dir, "model.json")
    results: dict = {"parity": {}, "throughput": {}}
    if not args.skip_parity:
        for variant in ("h100_deltanet", "h100_hybrid_sparse"):
            results["parity"][variant] = compare_backends(bench_spec(variant).model, device).to_dict()
            print(variant, results["parity"][variant], flush=True)
    for variant in args.variants:
        r = time_training(bench_spec(variant), device, steps=args.steps)
        r["design_tokens_per_s"], r["design_peak_gib"] = H100_TABLE.get(variant, (None, None))
        results["throughput"][variant] = r
        write_json(out, results)
        print(f"{variant:<26} {r['params'] / 1e6:6.1f}M {r['tokens_per_s'] / 1e3:7.1f}k tok/s  MFU {r['mfu'] * 100:5.1f}%"
              f"  {r['peak_memory_gib']:5.1f} GiB  (table: {r['design_tokens_per_s'] or 0:.0f} tok/s)", flush=True)
    write_json(out, results)


if __name__ == "__main__":
    main()
