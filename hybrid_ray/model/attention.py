"""Softmax-attention kernels with flash-attn's call signature, for machines without flash-attn.

FLA's `Attention` layer calls `flash_attn_func` / `flash_attn_varlen_func`; `hybrid_ray.model.fla` installs these
when flash-attn is not importable, and the pure-PyTorch twin calls them directly. Layouts follow flash-attn:
q [B, Tq, HQ, D], k/v [B, Tk, H, D] (HQ a multiple of H: query head h uses kv head h // (HQ // H)); varlen inputs
are [total, heads, D] with int32 `cu_seqlens`. `window_size=(left, right)` as in flash-attn: (W - 1, 0) keeps the
last W keys; (-1, -1) is unlimited. Causal masks align bottom-right (the last query sees the last key).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

# Which kernel runs dense (unpacked) attention on CUDA: 'auto' (torch's SDPA picks), an SDPA backend chosen explicitly
# ('flash', 'cudnn', 'efficient'), or 'triton' (FLA's parallel_attn). Speed only: outputs agree to bf16 rounding.
# 'auto' (torch 2.11 picks cuDNN) was the fastest on an H100 (benchmarks/results/speed/NOTES.md, issue 39). Read once;
# the benchmarks switch it with `set_dense_kernel`.
DENSE_KERNELS = ("auto", "flash", "cudnn", "efficient", "triton")
_dense = {"kernel": os.environ.get("HYBRID_RAY_ATTENTION", "auto")}


def set_dense_kernel(name: str) -> None:
    """Choose the dense attention kernel on CUDA (one of DENSE_KERNELS)."""
    if name not in DENSE_KERNELS:
        raise ValueError(f"unknown attention kernel {name!r}; one of {', '.join(DENSE_KERNELS)}")
    _dense["kernel"] = name


def dense_kernel() -> str:
    return _dense["kernel"]


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}[name]


def _mask(tq: int, tk: int, causal: bool, window: tuple[int, int], device: torch.device) -> torch.Tensor | None:
    """Boolean [tq, tk] mask (True = may attend), or None when every key is visible."""
    left, right = window
    shift = tk - tq  # query i sits at key position i + shift
    if not causal and left < 0 and right < 0:
        return None
    if causal and tq == tk and (left < 0 or left >= tk - 1):
        return None  # plain causal: SDPA's is_causal path is faster than a mask
    rel = torch.arange(tk, device=device)[None, :] - (torch.arange(tq, device=device)[:, None] + shift)
    allowed = torch.ones(tq, tk, dtype=torch.bool, device=device)
    if causal or right >= 0:
        allowed &= rel <= (0 if causal else right)
    if left >= 0:
        allowed &= rel >= -left
    return allowed


def flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    **_: object,
) -> torch.Tensor:
    """Dense attention on torch's scaled_dot_product_attention (or FLA's Triton kernel, see DENSE_KERNELS)."""
    tq, tk = q.shape[1], k.shape[1]
    kernel = _dense["kernel"] if q.is_cuda else "auto"
    if kernel == "triton" and causal and tq == tk and dropout_p == 0.0 and window_size[1] <= 0:
        from fla.ops.attn.parallel import parallel_attn

        left = window_size[0]  # a window covering the whole sequence is plain causal (no masking work)
        return parallel_attn(q, k, v, scale=softmax_scale, window_size=None if left < 0 or left >= tk - 1 else left + 1)
    mask = _mask(tq, tk, causal, tuple(window_size), q.device)
    plain_causal = causal and mask is None and tq == tk

    def sdpa() -> torch.Tensor:
        return F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=mask,
            dropout_p=dropout_p,
            is_causal=plain_causal,
            scale=softmax_scale,
            enable_gqa=q.shape[2] != k.shape[2],
        )

    if kernel in ("flash", "cudnn", "efficient"):
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(_sdpa_backend(kernel)):
            o = sdpa()
    else:
        o = sdpa()
    return o.transpose(1, 2)


def flash_attn_varlen_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    **_: object,
) -> torch.Tensor:
    """Packed documents: on CUDA FLA's Triton `parallel_attn` (causal self-attention), else one SDPA call per document."""
    same = cu_seqlens_q is cu_seqlens_k or torch.equal(cu_seqlens_q, cu_seqlens_k)
    if q.is_cuda and causal and same and dropout_p == 0.0 and window_size[1] <= 0:
        from fla.ops.attn.parallel import parallel_attn

        left = window_size[0]
        return parallel_attn(
            q[None], k[None], v[None], scale=softmax_scale,
            window_size=None if left < 0 else left + 1, cu_seqlens=cu_seqlens_q.long(),
        )[0]
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outputs = [
        flash_attn_func(
            q[None, bounds_q[i]:bounds_q[i + 1]], k[None, bounds_k[i]:bounds_k[i + 1]], v[None, bounds_k[i]:bounds_k[i + 1]],
            dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal, window_size=window_size,
        )[0]
        for i in range(len(bounds_q) - 1)
    ]
    return torch.cat(outputs, dim=0)
