"""The dense attention kernels of `hybrid_ray.model.attention` alone, at one layer's training shape: speed and error.

    python -m benchmarks.bench_attention --batch 48 --seq 1024 --heads 12 --head-dim 64 --window 2048

Each kernel of DENSE_KERNELS runs the call FLA's Attention layer makes (`flash_attn_func`, causal, window (W-1, 0),
bf16) forward and backward; the JSON lines give the median milliseconds of both and the max abs difference of the
output and the three input gradients against torch's choice ('auto', today's path) and against an fp32 reference
(SDPA's math backend on fp32 copies), so a kernel is kept only if its error is of the same size as today's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hybrid_ray.model import attention


def fwd_bwd(q, k, v, grad, window: int | None):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    left = -1 if window is None else window - 1
    o = attention.flash_attn_func(q, k, v, causal=True, window_size=(left, 0))
    o.backward(grad)
    return o.detach(), q.grad, k.grad, v.grad


def reference(q, k, v, grad, window: int | None):
    """fp32 math SDPA with the window's mask (None: plain causal)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (t.detach().float().transpose(1, 2).requires_grad_() for t in (q, k, v))
    t = q.shape[2]
    rel = torch.arange(t, device=q.device)[None, :] - torch.arange(t, device=q.device)[:, None]
    mask = (rel <= 0) & ((rel > -window) if window else True)
    with sdpa_kernel(SDPBackend.MATH):
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    o.backward(grad.float().transpose(1, 2))
    return tuple(x.transpose(1, 2) for x in (o.detach(), q.grad, k.grad, v.grad))


def time_ms(fn, iters: int) -> float:
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--window", type=int, default=2048, help="the variants' attention window (0: none)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--kernels", nargs="*", default=list(attention.DENSE_KERNELS))
    parser.add_argument("--out", default="benchmarks/results/speed/attention.jsonl")
    args = parser.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cuda", 0)
    shape = (args.batch, args.seq, args.heads, args.head_dim)
    q, k, v, grad = (torch.randn(shape, device=dev, dtype=torch.bfloat16) for _ in range(4))
    window = args.window or None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def emit(record: dict) -> None:
        record.update(time=time.strftime("%H:%M:%S"), shape=list(shape), window=window,
                      gpu=torch.cuda.get_device_name(dev), torch=torch.__version__)
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)

    ref = reference(q, k, v, grad, window)
    try:  # which backend torch's SDPA picks for this shape by itself (a private helper: report, never fail)
        choice = torch._fused_sdp_choice(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        names = {int(b): b.name for b in torch.nn.attention.SDPBackend.__members__.values()}
        emit({"sdpa_auto_choice": names.get(int(choice), int(choice))})
    except Exception as e:
        emit({"sdpa_auto_choice": f"unknown ({type(e).__name__}: {e})"[:200]})
    base = None
    for name in args.kernels:
        attention.set_dense_kernel(name)
        try:
            res = fwd_bwd(q, k, v, grad, window)
            if base is None:
                base = res
            fwd = time_ms(lambda: attention.flash_attn_func(q, k, v, causal=True,
                                                            window_size=(-1 if window is None else window - 1, 0)),
                          args.iters)
            both = time_ms(lambda: fwd_bwd(q, k, v, grad, window), args.iters)
        except Exception as e:  # one kernel that refuses the shape must not cost the others' numbers
            emit({"kernel": name, "error": f"{type(e).__name__}: {e}"[:400]})
            continue
        err = {f"{which}_vs_fp32": round((a.float() - r).abs().max().item(), 5)
               for which, a, r in zip(("o", "dq", "dk", "dv"), res, ref)}
        err.update({f"{which}_vs_auto": round((a.float() - b.float()).abs().max().item(), 5)
                    for which, a, b in zip(("o", "dq", "dk", "dv"), res, base)})
        emit({"kernel": name, "fwd_ms": round(fwd, 3), "fwd_bwd_ms": round(both, 3), **err})
    attention.set_dense_kernel("auto")


if __name__ == "__main__":
    main()
