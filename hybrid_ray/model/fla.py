"""FLA's own model (GPU backend): import FLA, give its Attention layer a kernel, build GatedDeltaNetForCausalLM.

flash-attn is optional: FLA's `Attention` refuses to build without it, so when it is missing this module installs
the SDPA / Triton kernels of `hybrid_ray.model.attention` in its place (docs/ARCHITECTURE.md, "FLA facts").
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import torch.nn as nn

from hybrid_ray.errors import EnvironmentProblem
from hybrid_ray.model.config import fla_config
from hybrid_ray.spec import ModelSpec

_state: dict[str, Any] = {}


def attention_kernel() -> str:
    """Which kernel FLA's attention layers run: 'flash-attn' or 'sdpa (hybrid-ray)'."""
    import_fla()
    return _state["kernel"]


def import_fla() -> Any:
    """Import `fla` once, patching its attention kernel when flash-attn is absent; clear error when FLA is missing."""
    if "fla" in _state:
        return _state["fla"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FLA warns about flash-attn and CPU-only triton at import
            import fla
            import fla.layers.attn as fla_attn
            import fla.models  # noqa: F401  (registers the models with transformers' Auto classes)
    except ImportError as e:
        raise EnvironmentProblem(
            f"cannot import FLA ({e}); install flash-linear-attention and triton, or use --backend torch"
        ) from e
    if fla_attn.flash_attn_func is None:
        from hybrid_ray.model import attention

        fla_attn.flash_attn_func = attention.flash_attn_func
        fla_attn.flash_attn_varlen_func = attention.flash_attn_varlen_func
        _state["kernel"] = "sdpa (hybrid-ray)"
    else:
        _state["kernel"] = "flash-attn"
    from hybrid_ray.model.speed import narrow_swiglu_autotuning

    _state["swiglu_kernels_narrowed"] = narrow_swiglu_autotuning()  # one compile per MLP width, not 30
    _state["fla"] = fla
    return fla


def fla_available() -> bool:
    return importlib.util.find_spec("fla") is not None and importlib.util.find_spec("triton") is not None


def build_fla_model(spec: ModelSpec, **config_overrides: Any) -> nn.Module:
    """FLA's GatedDeltaNetForCausalLM for `spec` (weights uninitialised by us: call `init_weights`)."""
    import_fla()
    from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM

    cfg = {k: v for k, v in fla_config(spec).items() if k != "model_type"}
    cfg.update(config_overrides)
    return GatedDeltaNetForCausalLM(GatedDeltaNetConfig(**cfg))
