"""The pure-PyTorch twin of FLA's GatedDeltaNetForCausalLM: same parameter names, shapes and math.

It runs anywhere torch runs (CPU CI, laptops) and is the parity oracle for the FLA backend. Packed documents
(`cu_seqlens`, input of shape [1, total]) reset the convolution, the delta-rule state and attention at every
document start, exactly as FLA's varlen kernels do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from hybrid_ray.model.attention import flash_attn_func, flash_attn_varlen_func
from hybrid_ray.model.delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule
from hybrid_ray.spec import ModelSpec


@dataclass
class LMOutput:
    """What both backends' forward returns (FLA returns a transformers CausalLMOutputWithPast with the same fields)."""

    loss: torch.Tensor | None
    logits: torch.Tensor
    cache: list[dict] | None = None  # with use_cache: one dict per layer, to pass back for the next tokens


def _conv_with_state(x: torch.Tensor, state: torch.Tensor | None, kernel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, T, D] preceded by the last kernel-1 inputs (zeros at the start); returns (that input, the new state)."""
    if state is None:
        state = x.new_zeros(x.shape[0], kernel - 1, x.shape[2])
    full = torch.cat([state.to(x.dtype), x], dim=1)
    return full, full[:, -(kernel - 1):]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return y.to(x.dtype)


class ShortConvolution(nn.Conv1d):
    """Causal depthwise convolution followed by SiLU; weight [D, 1, K] as in FLA."""

    def __init__(self, dim: int, kernel_size: int):
        super().__init__(dim, dim, kernel_size, groups=dim, padding=kernel_size - 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D]
        y = F.conv1d(x.transpose(1, 2), self.weight.to(x.dtype), padding=self.kernel_size[0] - 1, groups=self.groups)
        return F.silu(y[..., : x.shape[1]]).transpose(1, 2)

    def step(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The same convolution continued from `state` (the previous kernel-1 inputs); returns (y, new state)."""
        full, state = _conv_with_state(x, state, self.kernel_size[0])
        y = F.conv1d(full.transpose(1, 2), self.weight.to(x.dtype), groups=self.groups)
        return F.silu(y).transpose(1, 2), state


class GatedMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _unpack(x: torch.Tensor, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
    """[1, total, ...] packed documents -> [N, longest, ...] zero-padded at the end (a no-op without cu_seqlens)."""
    if cu_seqlens is None:
        return x
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    return nn.utils.rnn.pad_sequence(list(x[0].split(lengths)), batch_first=True)


def _repack(x: torch.Tensor, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
    """Inverse of _unpack."""
    if cu_seqlens is None:
        return x
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    return torch.cat([x[i, :n] for i, n in enumerate(lengths)])[None]


def _positions(batch: int, length: int, cu_seqlens: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Token positions, restarting at 0 at every document start."""
    pos = torch.arange(length, device=device)
    if cu_seqlens is None:
        return pos.expand(batch, length)
    starts = torch.zeros(length, dtype=torch.long, device=device)
    starts[cu_seqlens[:-1].long()] = cu_seqlens[:-1].long()
    return (pos - starts.cummax(0).values)[None]


class GatedDeltaNet(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.num_heads, self.num_v_heads = spec.num_heads, spec.value_heads
        self.head_k_dim, self.head_v_dim = spec.head_dim, spec.head_v_dim
        self.allow_neg_eigval = spec.allow_neg_eigval
        self.use_gate = spec.use_gate
        key_dim, value_dim, hidden = spec.num_heads * spec.head_dim, self.num_v_heads * self.head_v_dim, spec.hidden_size
        self.q_proj = nn.Linear(hidden, key_dim, bias=False)
        self.k_proj = nn.Linear(hidden, key_dim, bias=False)
        self.v_proj = nn.Linear(hidden, value_dim, bias=False)
        self.a_proj = nn.Linear(hidden, self.num_v_heads, bias=False)
        self.b_proj = nn.Linear(hidden, self.num_v_heads, bias=False)
        self.A_log = nn.Parameter(torch.zeros(self.num_v_heads))
        self.dt_bias = nn.Parameter(torch.zeros(self.num_v_heads))
        self.q_conv1d = ShortConvolution(key_dim, spec.conv_size)
        self.k_conv1d = ShortConvolution(key_dim, spec.conv_size)
        self.v_conv1d = ShortConvolution(value_dim, spec.conv_size)
        if spec.use_gate:
            self.g_proj = nn.Linear(hidden, value_dim, bias=False)
        self.o_norm = RMSNorm(self.head_v_dim, spec.norm_eps)
        self.o_proj = nn.Linear(value_dim, hidden, bias=False)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                cache: dict | None = None) -> tuple[torch.Tensor, dict]:
        """Whole sequences (chunked delta rule), or, with `cache`, a continuation of the sequences it holds (the
        per-token recurrence from its state). Returns the output and the cache after these tokens."""
        B, T, _ = x.shape
        projected = (self.q_proj(x), self.k_proj(x), self.v_proj(x))
        convs = (self.q_conv1d, self.k_conv1d, self.v_conv1d)
        if cache is not None:
            (q, k, v), conv_states = zip(*(c.step(p, state) for c, p, state in zip(convs, projected, cache["conv"])))
        else:
            q, k, v = (c(_unpack(p, cu_seqlens)) for c, p in zip(convs, projected))
            # the inputs the next token's convolution needs (not for packed documents: they are not continued)
            kernel = self.q_conv1d.kernel_size[0]
            conv_states = [None if cu_seqlens is not None else _conv_with_state(p, None, kernel)[1] for p in projected]
        n, length = q.shape[:2]
        q = q.reshape(n, length, self.num_heads, self.head_k_dim).float()
        k = k.reshape(n, length, self.num_heads, self.head_k_dim).float()
        v = v.reshape(n, length, self.num_v_heads, self.head_v_dim)
        q = q * torch.rsqrt(q.pow(2).sum(-1, keepdim=True) + 1e-6)
        k = k * torch.rsqrt(k.pow(2).sum(-1, keepdim=True) + 1e-6)
        beta = self.b_proj(x).float().sigmoid()
        if self.allow_neg_eigval:
            beta = beta * 2
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias.float())
        if cache is not None:
            o, state = recurrent_gated_delta_rule(q, k, v, g, beta, scale=self.head_k_dim**-0.5,
                                                  initial_state=cache["state"])
        else:
            o, state = chunk_gated_delta_rule(
                q, k, v, _unpack(g, cu_seqlens), _unpack(beta, cu_seqlens), scale=self.head_k_dim**-0.5
            )
        o = _repack(o, cu_seqlens).reshape(B, T, self.num_v_heads, self.head_v_dim)
        o = self.o_norm(o)
        if self.use_gate:
            gate = self.g_proj(x).reshape(B, T, self.num_v_heads, self.head_v_dim)
            o = o.float() * F.silu(gate.float())
        return self.o_proj(o.reshape(B, T, -1).to(x.dtype)), {"conv": list(conv_states), "state": state}


class Attention(nn.Module):
    """Softmax attention with NeoX-style rotary embeddings on the whole head dimension."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.num_heads = spec.attn_num_heads
        self.num_kv_heads = spec.attn_num_kv_heads or spec.attn_num_heads
        self.head_dim = spec.hidden_size // self.num_heads
        self.window = spec.attn_window
        self.rope_theta = spec.rope_theta
        hidden, kv_dim = spec.hidden_size, self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, kv_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_dim, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)

    def _rotary(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        half = self.head_dim // 2
        inv_freq = 1.0 / (self.rope_theta ** (torch.arange(0, self.head_dim, 2, device=x.device).float() / self.head_dim))
        angles = positions.float()[..., None] * inv_freq  # [B, T, half]
        cos, sin = angles.cos()[:, :, None, :], angles.sin()[:, :, None, :]
        x1, x2 = x[..., :half].float(), x[..., half:].float()
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                cache: dict | None = None) -> tuple[torch.Tensor, dict]:
        """Whole sequences, or, with `cache`, a continuation attending to the cached keys and values (positions
        continue from there). Returns the output and the cache after these tokens."""
        B, T, _ = x.shape
        q = self.q_proj(x).reshape(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(B, T, self.num_kv_heads, self.head_dim)
        offset = cache["k"].shape[1] if cache is not None else 0
        positions = _positions(B, T, cu_seqlens, x.device) + offset
        q, k = self._rotary(q, positions), self._rotary(k, positions)
        if cache is not None:
            k, v = torch.cat([cache["k"], k], dim=1), torch.cat([cache["v"], v], dim=1)
        window = (-1, -1) if self.window is None else (self.window - 1, 0)
        if cu_seqlens is None:
            o = flash_attn_func(q, k, v, causal=True, window_size=window)
        else:
            o = flash_attn_varlen_func(q[0], k[0], v[0], cu_seqlens, cu_seqlens, causal=True, window_size=window)[None]
        return self.o_proj(o.reshape(B, T, -1)), {"k": k, "v": v}


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, layer_type: str):
        super().__init__()
        self.attn_norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.attn = Attention(spec) if layer_type == "attn" else GatedDeltaNet(spec)
        self.mlp_norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.mlp = GatedMLP(spec.hidden_size, spec.intermediate_size)

    def forward(self, h: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                cache: dict | None = None) -> tuple[torch.Tensor, dict]:
        out, cache = self.attn(self.attn_norm(h), cu_seqlens, cache)
        h = h + out
        return h + self.mlp(self.mlp_norm(h)), cache


class Backbone(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.embeddings = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(Block(spec, t) for t in spec.layer_types())
        self.norm = RMSNorm(spec.hidden_size, spec.norm_eps)

    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                cache: list[dict] | None = None) -> tuple[torch.Tensor, list[dict]]:
        h = self.embeddings(input_ids)
        caches = []
        for i, layer in enumerate(self.layers):
            h, layer_cache = layer(h, cu_seqlens, cache[i] if cache is not None else None)
            caches.append(layer_cache)
        return self.norm(h), caches


class HybridForCausalLM(nn.Module):
    """state_dict keys: model.embeddings/layers.N.{attn_norm,attn,mlp_norm,mlp}/norm, lm_head — FLA's own."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.model = Backbone(spec)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        cache: list[dict] | None = None,
        use_cache: bool = False,
        **_: object,
    ) -> LMOutput:
        """Logits (and the loss with `labels`). With `use_cache`, also the per-layer cache after these tokens; pass it
        back as `cache` with the next tokens to continue the sequences without recomputing them."""
        hidden, caches = self.model(input_ids, cu_seqlens, cache)
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            # the model shifts: position t predicts labels[t + 1]; -100 is ignored
            shifted = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=-100)
        return LMOutput(loss=loss, logits=logits, cache=caches if use_cache or cache is not None else None)
