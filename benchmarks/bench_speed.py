"""GPU speed work: the training hot path of `hybrid-ray train` under named settings, and a kernel profile.

    python benchmarks/bench_speed.py --variants h100_deltanet --settings ddp fsdp fsdp+compile --profile fsdp

Settings combine with '+': `ddp` (autocast over fp32 parameters), `fsdp` (FSDP2 on one GPU: bf16 parameters in
compute, fp32 master weights), `compile` (torch.compile per block), `triton` / `cuda` (the short convolution's
kernels: FLA's Triton, causal-conv1d's CUDA), `flce` (fused linear cross-entropy), `gluonce` (FLA's Gluon
cross-entropy, FLA_CE_GLUON=1), `hd128` (a different model: 2x the Gated DeltaNet heads at half the head dim, the same
parameter count). Each setting runs the same loop as
`hybrid-ray train` (setup_model + train_step, batch 48 x 1024, random tokens) without Ray, and one JSON line per
result goes to --out-dir/speed.jsonl. --profile writes the top CUDA kernels of two steps there too.
benchmarks/results/speed/NOTES.md keeps what was tried and what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from benchmarks.common import bench_spec, hot_path, single_process_group, step_times, time_training
from hybrid_ray.spec import RunSpec


PARTS = {"ddp", "fsdp", "compile", "triton", "cuda", "flce", "gluonce", "hd128"}


def spec_for(variant: str, setting: str) -> RunSpec:
    parts = set(setting.split("+"))
    unknown = parts - PARTS
    if unknown:
        raise SystemExit(f"unknown setting part(s) {sorted(unknown)}")
    overrides = {"scale.strategy": "fsdp" if "fsdp" in parts else "ddp", "train.compile": "compile" in parts,
                 "train.loss_kernel": "fused-linear" if "flce" in parts else "fused"}
    for backend in {"triton", "cuda"} & parts:
        overrides["train.conv_backend"] = backend
    if "hd128" in parts:
        base = bench_spec(variant).model
        overrides.update({"model.num_heads": base.num_heads * 2, "model.head_dim": base.head_dim // 2})
    return bench_spec(variant, **overrides)


def set_env(setting: str) -> None:
    """Settings that FLA reads from the environment at each call."""
    os.environ["FLA_CE_GLUON"] = "1" if "gluonce" in setting.split("+") else "0"


def profile_step(spec: RunSpec, device: torch.device, path: Path) -> None:
    from torch.profiler import ProfilerActivity, profile

    model, optimizer, batches = hot_path(spec, device)
    step_times(model, optimizer, batches, spec, device, steps=0)  # warm-up only
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step_times(model, optimizer, batches, spec, device, steps=2, warmup=0)
    events = prof.key_averages()
    sort = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(events.table(sort_by=sort, row_limit=45, max_name_column_width=90))
    del model, optimizer
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", nargs="*", default=["h100_deltanet"])
    parser.add_argument("--settings", nargs="*", default=["ddp", "fsdp"])
    parser.add_argument("--profile", nargs="*", default=[], help="settings to profile (first variant only)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out-dir", default="benchmarks/results/speed", help="speed.jsonl and profiles go here")
    args = parser.parse_args()
    device = torch.device("cuda", 0)
    single_process_group(device)
    out = Path(args.out_dir, "speed.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)

    def emit(record: dict) -> None:
        record["time"] = time.strftime("%H:%M:%S")
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)

    for setting in args.profile:
        name = setting.replace("+", "-")  # the device tool brings back plain file names only
        path = Path(args.out_dir, f"profile-{args.variants[0]}-{name}.txt")
        set_env(setting)
        profile_step(spec_for(args.variants[0], setting), device, path)
        emit({"profiled": setting})
    for variant in args.variants:
        for setting in args.settings:
            spec = spec_for(variant, setting)
            set_env(setting)
            start = time.perf_counter()
            try:
                r = time_training(spec, device, steps=args.steps)
            except Exception as e:  # keep going: one broken setting must not cost the others' numbers
                emit({"variant": variant, "setting": setting, "error": f"{type(e).__name__}: {e}"[:500]})
                continue
            emit({"variant": variant, "setting": setting, "tokens_per_s": round(r["tokens_per_s"]),
                  "mfu": round(r["mfu"], 4), "step_ms": round(r["step_s"] * 1e3, 1),
                  "peak_gib": round(r["peak_memory_gib"], 1), "loss": round(r["loss"], 4),
                  "wall_s": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    main()
