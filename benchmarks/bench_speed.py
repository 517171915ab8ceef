"""GPU speed work: the training hot path of `hybrid-ray train` under named settings, and a kernel profile.

    python -m benchmarks.bench_speed --variants h100_deltanet --settings ddp fsdp fsdp+compile --profile fsdp
    python -m benchmarks.bench_speed --variants h100_transformer --settings fsdp fsdp+attn_cudnn --launch fsdp

Settings combine with '+': `ddp` (autocast over fp32 parameters), `fsdp` (FSDP2 on one GPU: bf16 parameters in
compute, fp32 master weights), `compile` (torch.compile per block), `triton` / `cuda` (the short convolution's
kernels: FLA's Triton, causal-conv1d's CUDA), `flce` (fused linear cross-entropy), `gluonce` (FLA's Gluon
cross-entropy, FLA_CE_GLUON=1), `hd128` (a different model: 2x the Gated DeltaNet heads at half the head dim, the same
parameter count), `attn_auto` / `attn_flash` / `attn_cudnn` / `attn_efficient` / `attn_triton` (the dense attention
kernel of FLA's attention layers, `hybrid_ray.model.attention.DENSE_KERNELS`; none named: the default),
`noreshard` (on one GPU, FSDP2 keeps each block's gathered parameters from forward to backward) and `shardlocal`
(AdamW and the gradient clip on the local shards, not DTensors): `hybrid_ray.train.parallelize.HostWork`, on by
default since issue #48 (a setting that does not name them runs without them). Each setting
runs the same loop as
`hybrid-ray train` (setup_model + train_step, batch 48 x 1024, random tokens) without Ray, and one JSON line per
result goes to --out-dir/speed.jsonl. --profile writes the top CUDA kernels of two steps there too; --launch measures
launch overhead (two profiled steps: GPU busy time against the step, kernels a step, the idle gaps between them).
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
from hybrid_ray.model import attention
from hybrid_ray.spec import RunSpec
from hybrid_ray.train import parallelize


ATTN_PARTS = {f"attn_{k}": k for k in attention.DENSE_KERNELS}
PARTS = {"ddp", "fsdp", "compile", "triton", "cuda", "flce", "gluonce", "hd128", "noreshard", "shardlocal", *ATTN_PARTS}
DEFAULT_ATTENTION = attention.dense_kernel()


def spec_for(variant: str, setting: str, batch: int | None = None) -> RunSpec:
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
    if batch:
        overrides["train.batch_size"] = batch
    return bench_spec(variant, **overrides)


def set_env(setting: str) -> None:
    """Settings read at each call: FLA's from the environment, the attention kernel and the host work from hybrid-ray's
    switches."""
    parts = setting.split("+")
    os.environ["FLA_CE_GLUON"] = "1" if "gluonce" in parts else "0"
    attention.set_dense_kernel(next((ATTN_PARTS[p] for p in parts if p in ATTN_PARTS), DEFAULT_ATTENTION))
    parallelize.HOST_WORK = parallelize.HostWork(one_rank_keeps_gathered="noreshard" in parts,
                                                 shard_local_step="shardlocal" in parts)


def _busy(intervals: list[tuple[float, float]]) -> tuple[float, list[float]]:
    """Total covered time of (start, end) intervals and the gaps between them (same units)."""
    busy, gaps, end = 0.0, [], None
    for s, e in sorted(intervals):
        if end is None or s > end:
            if end is not None:
                gaps.append(s - end)
            busy += e - s
            end = e
        elif e > end:
            busy += e - end
            end = e
    return busy, gaps


def launch_overhead(spec: RunSpec, device: torch.device, trace: Path, steps: int = 2) -> dict:
    """Launch overhead of a training step: GPU busy time (kernels, copies) against the step's span, kernels and
    launch calls a step, CPU time inside launch calls, and the idle gaps between kernels."""
    from torch.profiler import ProfilerActivity, profile

    model, optimizer, batches = hot_path(spec, device)
    times, _ = step_times(model, optimizer, batches, spec, device, steps=3)  # warm-up, then unprofiled step times
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step_times(model, optimizer, batches, spec, device, steps=steps, warmup=0)
    trace.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    trace.unlink()
    gpu = [(e["ts"], e["ts"] + e["dur"]) for e in events
           if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
    kernels = sum(1 for e in events if e.get("cat") == "kernel")
    launches = [e["dur"] for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver")
                and "Launch" in e.get("name", "") and "dur" in e]
    busy, gaps = _busy(gpu)
    span = max(e for _, e in gpu) - min(s for s, _ in gpu)
    del model, optimizer
    torch.cuda.empty_cache()
    return {"step_ms_unprofiled": round(sorted(times)[len(times) // 2] * 1e3, 1),
            "gpu_span_ms_per_step": round(span / steps / 1e3, 1), "gpu_busy_ms_per_step": round(busy / steps / 1e3, 1),
            "gpu_idle_pct": round(100 * (1 - busy / span), 1), "kernels_per_step": kernels // steps,
            "launch_calls_per_step": len(launches) // steps,
            "launch_cpu_ms_per_step": round(sum(launches) / steps / 1e3, 1),
            "gaps_over_20us_per_step": sum(g > 20 for g in gaps) // steps,
            "gap_ms_over_20us_per_step": round(sum(g for g in gaps if g > 20) / steps / 1e3, 1),
            "largest_gaps_ms": [round(g / 1e3, 2) for g in sorted(gaps)[-5:]]}


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
    parser.add_argument("--launch", nargs="*", default=[], help="settings whose launch overhead to measure (each variant)")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default: the variant's, 48)")
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
        profile_step(spec_for(args.variants[0], setting, args.batch), device, path)
        emit({"profiled": setting})
    for variant in args.variants:
        for setting in args.launch:
            spec = spec_for(variant, setting, args.batch)
            set_env(setting)
            trace = Path(args.out_dir, f"trace-{variant}-{setting.replace('+', '-')}.json")
            try:
                r = launch_overhead(spec, device, trace)
            except Exception as e:
                emit({"variant": variant, "launch": setting, "error": f"{type(e).__name__}: {e}"[:500]})
                continue
            emit({"variant": variant, "launch": setting, "batch": spec.train.batch_size, **r})
    for variant in args.variants:
        for setting in args.settings:
            spec = spec_for(variant, setting, args.batch)
            set_env(setting)
            start = time.perf_counter()
            try:
                r = time_training(spec, device, steps=args.steps)
            except Exception as e:  # keep going: one broken setting must not cost the others' numbers
                emit({"variant": variant, "setting": setting, "error": f"{type(e).__name__}: {e}"[:500]})
                continue
            emit({"variant": variant, "setting": setting, "batch": spec.train.batch_size,
                  "tokens_per_s": round(r["tokens_per_s"]),
                  "mfu": round(r["mfu"], 4), "step_ms": round(r["step_s"] * 1e3, 1),
                  "peak_gib": round(r["peak_memory_gib"], 1), "loss": round(r["loss"], 4),
                  "wall_s": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    main()
