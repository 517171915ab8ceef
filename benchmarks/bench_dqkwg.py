"""The Gated DeltaNet backward's largest kernel alone: FLA's `chunk_bwd_kernel_dqkwg` beyond FLA 0.6's tuning space.

    python -m benchmarks.bench_dqkwg --budget-s 200

At the H100 base size (K = V = 256) FLA 0.6 launches it with 128 x 128 tiles of K and V (fixed by the wrapper) and
autotunes only 2 or 4 warps x 2-4 pipeline stages on Hopper. This times FLA's own call (its tuned choice), then the
kernel under other tiles, warps (8 included) and stages, each checked against FLA's outputs, at one layer's shape of
a step (batch 48 x 1024, 12 heads, gated, with the delta rule's dw). One JSON line per configuration goes to
--out-dir/dqkwg.jsonl; configurations are tried in order until --budget-s (compiles dominate) runs out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

# (BK, BV, num_warps, num_stages), the likeliest first (compiles dominate the budget): 8 warps, outside FLA's Hopper
# space, at FLA's own 128 x 128 tiles; FLA's usual choice as a check; then smaller tiles; then the rest
CANDIDATES = [(128, 128, 8, 2), (128, 128, 8, 1), (128, 128, 8, 3), (128, 128, 4, 2), (64, 128, 4, 2), (64, 128, 8, 2),
              (128, 64, 4, 2), (128, 64, 8, 2), (64, 64, 4, 2), (64, 64, 8, 2), (64, 64, 4, 3), (128, 128, 4, 3),
              (128, 128, 2, 2), (128, 128, 8, 4), (64, 128, 8, 3), (128, 64, 8, 3)]


def inputs(batch: int, seq: int, heads: int, dim: int, device: torch.device) -> dict[str, torch.Tensor]:
    """One layer's backward inputs at this shape: bf16 activations and states, fp32 chunk-local log2 gates."""
    gen = torch.Generator(device).manual_seed(0)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, device=device) * scale).to(torch.bfloat16)

    chunks = seq // 64
    q = torch.nn.functional.normalize(randn(batch, seq, heads, dim).float(), dim=-1).to(torch.bfloat16)
    k = torch.nn.functional.normalize(randn(batch, seq, heads, dim).float(), dim=-1).to(torch.bfloat16)
    decay = -0.05 * torch.rand(batch, chunks, 64, heads, generator=gen, device=device)
    g = decay.cumsum(2).reshape(batch, seq, heads).contiguous()
    token, state = (batch, seq, heads, dim), (batch, chunks, heads, dim, dim)
    return {"q": q, "k": k, "g": g, **{name: randn(*token, scale=0.1) for name in ("v", "do", "dv", "w")},
            **{name: randn(*state, scale=0.1) for name in ("h", "dh")}}


def launch(x: dict[str, torch.Tensor], bk: int, bv: int) -> tuple[torch.Tensor, ...]:
    """`fla.ops.common.chunk_o.chunk_bwd_dqkwg` (no varlen, H == HV) with the tiles given instead of the wrapper's."""
    import triton
    from fla.ops.common.chunk_o import chunk_bwd_kernel_dqkwg

    q, k, v, w, g = x["q"], x["k"], x["v"], x["w"], x["g"]
    batch, seq, heads, dim = k.shape
    nk, nt = triton.cdiv(dim, bk), triton.cdiv(seq, 64)
    dq, dk, dw = torch.empty_like(q), torch.empty_like(k), torch.empty_like(w)
    dg = torch.empty(nk, *g.shape, dtype=torch.float32, device=g.device)
    chunk_bwd_kernel_dqkwg[(nk * nt, batch * heads)](
        q=q, k=k, v=v, g=g, g_gamma=None, h=x["h"], do=x["do"], dh=x["dh"], dq=dq, dk=dk, dw=dw, dv=x["dv"], dg=dg,
        cu_seqlens=None, chunk_indices=None, scale=dim ** -0.5, B=batch, T=seq, H=heads, HV=heads, K=dim, V=dim,
        BT=64, BK=bk, BV=bv, STATE_V_FIRST=False)
    return dq, dk, dw, dg.sum(0)


def fla_call(x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    from fla.ops.common.chunk_o import chunk_bwd_dqkwg

    dq, dk, dw, dg = chunk_bwd_dqkwg(q=x["q"], k=x["k"], v=x["v"], do=x["do"], h=x["h"], dh=x["dh"], w=x["w"], g=x["g"],
                                     dv=x["dv"], scale=x["k"].shape[-1] ** -0.5)
    return dq, dk, dw, dg


def autotuner():
    from fla.ops.common.chunk_o import chunk_bwd_kernel_dqkwg

    tuner = chunk_bwd_kernel_dqkwg
    while not hasattr(tuner, "configs"):  # under @triton.heuristics
        tuner = tuner.fn
    return tuner


def main() -> None:
    import triton
    from triton.testing import do_bench

    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--budget-s", type=float, default=200.0, help="stop trying configurations after this long")
    parser.add_argument("--out-dir", default="benchmarks/results/speed")
    args = parser.parse_args()
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    out = Path(args.out_dir, "dqkwg.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    shape = {"batch": args.batch, "seq": args.seq, "heads": args.heads, "dim": args.dim,
             "gpu": torch.cuda.get_device_name(device)}

    def emit(record: dict) -> None:
        record = {**shape, **record, "time": time.strftime("%H:%M:%S")}
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)

    x = inputs(args.batch, args.seq, args.heads, args.dim, device)
    tuner = autotuner()
    fla_space = list(tuner.configs)
    start = time.perf_counter()
    reference = fla_call(x)  # FLA's own tiles and its tuned (or cached) choice
    chosen = tuner.cache.get(next(iter(tuner.cache), None))
    first_call_s = time.perf_counter() - start
    emit({"config": "fla", "chosen": str(chosen), "space": [str(c) for c in fla_space],
          "ms": round(do_bench(lambda: fla_call(x), warmup=25, rep=200), 3), "first_call_s": round(first_call_s, 1)})
    rows = []
    for bk, bv, warps, stages in CANDIDATES:
        if time.perf_counter() - start > args.budget_s:
            emit({"stopped": "budget", "untried": len(CANDIDATES) - len(rows)})
            break
        tuner.configs, tuner.cache = [triton.Config({}, num_warps=warps, num_stages=stages)], {}
        name = f"BK{bk}-BV{bv}-w{warps}-s{stages}"
        t0 = time.perf_counter()
        try:
            got = launch(x, bk, bv)
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - t0
            err = max((a.float() - b.float()).abs().max().item() for a, b in zip(got, reference))
            ms = do_bench(lambda: launch(x, bk, bv), warmup=25, rep=200)
        except Exception as e:  # out of shared memory or registers: record and go on
            emit({"config": name, "error": f"{type(e).__name__}: {e}"[:300]})
            rows.append((name, None, None))
            continue
        emit({"config": name, "ms": round(ms, 3), "max_abs_diff_vs_fla": err, "compile_s": round(compile_s, 1)})
        rows.append((name, ms, err))
    tuner.configs, tuner.cache = fla_space, {}
    print(f"\nchunk_bwd_kernel_dqkwg at B={args.batch} T={args.seq} H={args.heads} K=V={args.dim} on {shape['gpu']}")
    for name, ms, err in sorted(rows, key=lambda r: r[1] or 1e9):
        print(f"{name:24s} {'error' if ms is None else f'{ms:8.3f} ms  max diff {err:.3g}'}")


if __name__ == "__main__":
    main()
