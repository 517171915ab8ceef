"""GPU: FLA backend vs the PyTorch twin on the same weights, and training throughput of the H100 variants.

    python benchmarks/bench_model.py --out benchmarks/results/model-h100.json

Parity: fp32 logits max abs diff, bf16 (autocast) relative error of each backend against the fp32 twin, and the
relative error of the gradients. Throughput: tokens/s, MFU and peak memory at batch 48 x 1024 (bf16 autocast,
fused AdamW, no compile, random tokens), next to DESIGN.md's table.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from benchmarks.common import time_training, write_json
from hybrid_ray.model import build_model
from hybrid_ray.variants import variant_spec

DESIGN_TABLE = {  # tokens/s and peak GiB measured before on one H100 (DESIGN.md)
    "h100_deltanet": (112e3, 58), "h100_hybrid_sparse": (128e3, 53),
    "h100_hybrid_alternating": (176e3, 42), "h100_transformer": (415e3, 26),
}
VARIANTS = ["h100_deltanet", "h100_hybrid_sparse", "h100_hybrid_late", "h100_hybrid_alternating", "h100_transformer"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def parity(variant: str, device: torch.device, batch: int = 2, seq: int = 1024) -> dict:
    spec = variant_spec(variant).model
    fla = build_model(spec, "fla", device=device, fuse_cross_entropy=False)
    twin = build_model(spec, "torch", device=device)
    x = torch.randint(0, spec.vocab_size, (batch, seq), device=device, generator=torch.Generator(device).manual_seed(0))
    with torch.no_grad():
        ref = twin(input_ids=x).logits.float()
        fla32 = fla(input_ids=x).logits.float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fla16 = fla(input_ids=x).logits
            twin16 = twin(input_ids=x).logits
    out = {
        "fp32_logits_max_abs_diff": (fla32 - ref).abs().max().item(),
        "fp32_logits_rel_err": rel(fla32, ref),
        "bf16_fla_rel_err": rel(fla16, ref),
        "bf16_twin_rel_err": rel(twin16, ref),
    }
    for model in (fla, twin):
        model(input_ids=x, labels=x).loss.backward()
    grads = {name: p.grad for name, p in twin.named_parameters()}
    errors = [rel(p.grad, grads[name]) for name, p in fla.named_parameters() if grads[name].norm() > 0]
    out["fp32_grad_rel_err_max"] = max(errors)
    out["fp32_grad_rel_err_median"] = sorted(errors)[len(errors) // 2]
    del fla, twin
    torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/model.json")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--variants", nargs="*", default=VARIANTS)
    parser.add_argument("--skip-parity", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda")
    results: dict = {"parity": {}, "throughput": {}}
    if not args.skip_parity:
        for variant in ("h100_deltanet", "h100_hybrid_sparse"):
            results["parity"][variant] = parity(variant, device)
            print(variant, results["parity"][variant], flush=True)
    for variant in args.variants:
        spec = variant_spec(variant)
        spec = dataclasses.replace(spec, scale=dataclasses.replace(spec.scale, backend="fla"))
        r = time_training(spec, device, steps=args.steps)
        r["design_tokens_per_s"], r["design_peak_gib"] = DESIGN_TABLE.get(variant, (None, None))
        results["throughput"][variant] = r
        write_json(args.out, results)
        print(f"{variant:<26} {r['params'] / 1e6:6.1f}M {r['tokens_per_s'] / 1e3:7.1f}k tok/s  MFU {r['mfu'] * 100:5.1f}%"
              f"  {r['peak_memory_gib']:5.1f} GiB  (DESIGN: {r['design_tokens_per_s'] or 0:.0f} tok/s)", flush=True)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
