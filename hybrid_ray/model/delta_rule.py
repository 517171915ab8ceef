"""The gated delta rule in pure PyTorch: a chunked form for speed and a per-token recurrence as the reference.

Per value head, with state S of shape [dk, dv] (fp32):
    S <- exp(g_t) S;  u_t = beta_t (v_t - S^T k_t);  S <- S + k_t u_t^T;  o_t = S^T (q_t * scale)
Inputs are laid out as in FLA: q, k [B, T, H, dk]; v [B, T, HV, dv]; g, beta [B, T, HV]; HV is a multiple of H
(value head h uses key head h // (HV // H)).
"""

from __future__ import annotations

import torch


def _expand_heads(q: torch.Tensor, k: torch.Tensor, value_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    groups = value_heads // q.shape[2]
    if groups == 1:
        return q, k
    return q.repeat_interleave(groups, dim=2), k.repeat_interleave(groups, dim=2)


def recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token recurrence; returns (o [B, T, HV, dv], final state [B, HV, dk, dv])."""
    q, k = _expand_heads(q, k, v.shape[2])
    q, k, v, g, beta = (t.transpose(1, 2).float() for t in (q, k, v, g, beta))  # [B, H, T, ...]
    B, H, T, K = k.shape
    S = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.float().clone()
    outputs = []
    for t in range(T):
        S = S * g[:, :, t].exp()[..., None, None]
        u = beta[:, :, t, None] * (v[:, :, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, :, t]))
        S = S + k[:, :, t, :, None] * u[:, :, None, :]
        outputs.append(torch.einsum("bhkv,bhk->bhv", S, q[:, :, t] * scale))
    o = torch.stack(outputs, dim=2) if outputs else v.new_zeros(B, H, 0, v.shape[-1])
    return o.transpose(1, 2), S


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same recurrence in chunks (WY representation): matrix products inside a chunk, a loop across chunks.

    Within a chunk with cumulative log decay G_t, the updates u solve (I + A) u = beta * (v - exp(G) * S0^T k),
    A_tj = beta_t exp(G_t - G_j) k_t.k_j for j < t; so u = U - W S0 with U = T beta v, W = T beta exp(G) k and
    T = (I + A)^-1 (a unit lower-triangular solve).
    """
    q, k = _expand_heads(q, k, v.shape[2])
    B, T, H, K = k.shape
    V = v.shape[-1]
    C = chunk_size
    pad = (-T) % C
    q, k, v, g, beta = (t.transpose(1, 2).float() for t in (q, k, v, g, beta))
    if pad:
        # zero k and beta in the padding leave the state untouched; padded outputs are dropped
        q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        g, beta = (torch.nn.functional.pad(t, (0, pad)) for t in (g, beta))
    n = (T + pad) // C
    q = q.reshape(B, H, n, C, K) * scale
    k = k.reshape(B, H, n, C, K)
    v = v.reshape(B, H, n, C, V)
    G = g.reshape(B, H, n, C).cumsum(-1)
    beta = beta.reshape(B, H, n, C)

    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    # exp(G_i - G_j) for j <= i; masking before exp keeps the upper triangle from overflowing
    decay = (G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    k_beta = k * beta[..., None]
    eye = torch.eye(C, device=q.device, dtype=q.dtype)
    A = (k_beta @ k.transpose(-1, -2) * decay).tril(-1)
    T_inv = torch.linalg.solve_triangular(eye + A, eye.expand_as(A), upper=False, unitriangular=True)
    W = T_inv @ (k_beta * G.exp()[..., None])
    U = T_inv @ (v * beta[..., None])
    qk = q @ k.transpose(-1, -2) * decay
    q_decay = q * G.exp()[..., None]
    k_decay = k * (G[..., -1:] - G).exp()[..., None]

    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    outputs = []
    for i in range(n):
        u = U[:, :, i] - W[:, :, i] @ S
        outputs.append(q_decay[:, :, i] @ S + qk[:, :, i] @ u)
        S = S * G[:, :, i, -1, None, None].exp() + k_decay[:, :, i].transpose(-1, -2) @ u
    o = torch.stack(outputs, dim=2).reshape(B, H, n * C, V)[:, :, :T]
    return o.transpose(1, 2), S
