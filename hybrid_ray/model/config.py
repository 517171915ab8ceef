"""ModelSpec <-> FLA's GatedDeltaNetConfig (the content of a saved config.json).

This is the one place that knows FLA's config keys and defaults; spec.py only describes the model.
"""

from __future__ import annotations

from typing import Any

from hybrid_ray.errors import SpecError
from hybrid_ray.spec import ModelSpec

# What hybrid-ray's models always are; a config.json that says otherwise describes a model neither backend builds.
FIXED = {
    "use_short_conv": True, "tie_word_embeddings": False, "attnres_block_size": None, "use_l2warp": False,
    "output_gate_activation": "swish",
}
SAME_ACTIVATION = {"swish", "silu"}


def fla_config(spec: ModelSpec) -> dict[str, Any]:
    """The keyword arguments of FLA's GatedDeltaNetConfig (and the content of a saved config.json)."""
    if spec.vocab_size is None:
        raise SpecError("model.vocab_size is unresolved: build the tokenizer first")
    attn = None
    if spec.attn_layers:
        attn = {
            "layers": list(spec.attn_layers),
            "num_heads": spec.attn_num_heads,
            "num_kv_heads": spec.attn_num_kv_heads or spec.attn_num_heads,
            "qkv_bias": False,
            "window_size": spec.attn_window,
            "rope_theta": spec.rope_theta,
        }
    return {
        "model_type": "gated_deltanet",
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_heads": spec.num_heads,
        "num_v_heads": spec.num_v_heads,
        "head_dim": spec.head_dim,
        "expand_v": spec.expand_v,
        "attn": attn,
        "hidden_ratio": spec.hidden_ratio,
        "intermediate_size": spec.mlp_size,
        "conv_size": spec.conv_size,
        "use_gate": spec.use_gate,
        "use_short_conv": True,
        "allow_neg_eigval": spec.allow_neg_eigval,
        "vocab_size": spec.vocab_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "norm_eps": spec.norm_eps,
        "initializer_range": spec.initializer_range,
        "tie_word_embeddings": False,
        "hidden_act": "swish",
    }


def spec_from_fla_config(cfg: dict[str, Any]) -> ModelSpec:
    """Inverse of fla_config; accepts any GatedDeltaNet config.json this model family can express.

    Missing keys take FLA 0.6's own defaults, so a config written by FLA itself reads back as the model it builds.
    """
    if cfg.get("model_type", "gated_deltanet") != "gated_deltanet":
        raise SpecError(f"config.json describes a {cfg.get('model_type')!r} model, not gated_deltanet")
    for key, expected in FIXED.items():
        value = cfg.get(key, expected)
        if value != expected and not (key == "output_gate_activation" and value in SAME_ACTIVATION):
            raise SpecError(f"config.json sets {key}={value!r}; hybrid-ray models need {expected!r}")
    attn = cfg.get("attn")
    if isinstance(attn, list):
        if len(attn) != 1:
            raise SpecError("config.json has several attention specifications; hybrid-ray supports one")
        attn = attn[0]
    attn = attn or {}
    if attn.get("qkv_bias"):
        raise SpecError("config.json sets attn.qkv_bias; hybrid-ray models have no attention biases")
    num_heads = cfg.get("num_heads", 6)
    return ModelSpec(
        hidden_size=cfg.get("hidden_size", 2048),
        num_layers=cfg.get("num_hidden_layers", 21),
        num_heads=num_heads,
        num_v_heads=cfg.get("num_v_heads"),
        head_dim=cfg.get("head_dim", 256),
        expand_v=cfg.get("expand_v", 2.0),
        attn_layers=list(attn.get("layers", [])),
        attn_num_heads=attn.get("num_heads", num_heads),
        attn_num_kv_heads=attn.get("num_kv_heads"),
        attn_window=attn.get("window_size"),
        rope_theta=attn.get("rope_theta", 10000.0),
        hidden_ratio=cfg.get("hidden_ratio", 4),
        mlp_size=cfg.get("intermediate_size"),
        conv_size=cfg.get("conv_size", 4),
        use_gate=cfg.get("use_gate", True),
        allow_neg_eigval=cfg.get("allow_neg_eigval", False),
        vocab_size=cfg.get("vocab_size", 32000),
        max_position_embeddings=cfg.get("max_position_embeddings", 2048),
        norm_eps=cfg.get("norm_eps", 1e-6),
        initializer_range=cfg.get("initializer_range", 0.02),
    )
