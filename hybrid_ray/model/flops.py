"""Parameter counts and training FLOPs per token, from the spec alone (no model is built).

FLOPs count what the kernels compute, forward x 3 for training (backward = 2 x forward):
- every matrix product with a weight (all projections, MLPs, lm_head): 2 per weight per token;
- causal softmax attention: QK^T and PV, 4 * heads * head_dim per visible key, averaged over the positions;
- the chunked gated delta rule (chunk 64) per value head and token: 6 dk dv (state read, output, state update)
  + 6 C dk + 4 C dv (the intra-chunk products K K^T, Q K^T, the WY transforms and P U);
- the short convolutions: 2 * kernel * channels.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybrid_ray.spec import ModelSpec

CHUNK = 64

# Dense bf16 tensor-core peaks (FLOP/s) by device-name substring, most specific first.
PEAK_BF16 = [
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("H800", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A10G", 125e12),
    ("L40S", 362e12),
    ("RTX 4090", 165e12),
]


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU from its name, or None when unknown (MFU is then not reported)."""
    for key, value in PEAK_BF16:
        if key in device_name:
            return value
    return None


@dataclass(frozen=True)
class _Dims:
    """The widths one layer's parameters and FLOPs are made of."""

    hidden: int
    mlp: int  # SwiGLU intermediate width
    q_dim: int  # attention: query/output width; Gated DeltaNet: key width (num_heads * head_dim)
    kv_dim: int  # attention: key/value width; Gated DeltaNet: value width (value heads * head_v_dim)
    value_heads: int  # Gated DeltaNet only


def _dims(spec: ModelSpec, layer_type: str) -> _Dims:
    h = spec.hidden_size
    if layer_type == "attn":
        return _Dims(h, spec.intermediate_size, h, (spec.attn_num_kv_heads or spec.attn_num_heads) * (h // spec.attn_num_heads), 0)
    return _Dims(h, spec.intermediate_size, spec.num_heads * spec.head_dim, spec.value_heads * spec.head_v_dim,
                 spec.value_heads)


def _projection_weights(spec: ModelSpec, layer_type: str) -> int:
    """Weights of a layer's matrix products (mixer and MLP), each used once per token."""
    d = _dims(spec, layer_type)
    mlp = 3 * d.hidden * d.mlp
    if layer_type == "attn":
        return 2 * d.hidden * d.q_dim + 2 * d.hidden * d.kv_dim + mlp  # q, o; k, v
    gate = d.hidden * d.kv_dim if spec.use_gate else 0
    return 2 * d.hidden * d.q_dim + 2 * d.hidden * d.kv_dim + 2 * d.hidden * d.value_heads + gate + mlp  # q, k; v, o; a, b


def _layer_params(spec: ModelSpec, layer_type: str) -> int:
    norms = 2 * spec.hidden_size
    if layer_type == "attn":
        return _projection_weights(spec, layer_type) + norms
    d = _dims(spec, layer_type)
    conv = (2 * d.q_dim + d.kv_dim) * spec.conv_size
    return _projection_weights(spec, layer_type) + conv + 2 * d.value_heads + spec.head_v_dim + norms  # A_log, dt_bias, o_norm


def count_params(spec: ModelSpec) -> dict[str, int]:
    """total, embedding, lm_head and non_embedding parameter counts."""
    vocab = spec.vocab_size or 0
    layers = sum(_layer_params(spec, t) for t in spec.layer_types())
    embedding = lm_head = vocab * spec.hidden_size
    total = embedding + lm_head + layers + spec.hidden_size
    return {"total": total, "embedding": embedding, "lm_head": lm_head, "non_embedding": total - embedding}


def _mean_context(seq_len: int, window: int | None) -> float:
    """Average number of keys a causal query sees in a sequence of seq_len."""
    if window is None or window >= seq_len:
        return (seq_len + 1) / 2
    w = window
    return (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len


def flops_per_token(spec: ModelSpec, seq_len: int, training: bool = True) -> float:
    """Model FLOPs per token for one forward (x3 with training=True)."""
    forward = 2.0 * (spec.vocab_size or 0) * spec.hidden_size  # lm_head
    for layer_type in spec.layer_types():
        forward += 2.0 * _projection_weights(spec, layer_type)
        d = _dims(spec, layer_type)
        if layer_type == "attn":
            forward += 4.0 * d.q_dim * _mean_context(seq_len, spec.attn_window)  # QK^T and PV over all heads
        else:
            dk, dv = spec.head_dim, spec.head_v_dim
            forward += d.value_heads * (6.0 * dk * dv + 6.0 * CHUNK * dk + 4.0 * CHUNK * dv)
            forward += 2.0 * spec.conv_size * (2 * d.q_dim + d.kv_dim)
    return forward * (3 if training else 1)
