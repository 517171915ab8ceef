"""The hybrid Gated DeltaNet / attention model on two backends: FLA's kernels (GPU) and a pure-PyTorch twin."""

from hybrid_ray.model.build import (
    build_model,
    init_weights,
    load_model,
    read_model_spec,
    resolve_backend,
    save_model,
    unwrap,
)
from hybrid_ray.model.flops import count_params, flops_per_token, peak_flops

__all__ = [
    "build_model",
    "count_params",
    "flops_per_token",
    "init_weights",
    "load_model",
    "peak_flops",
    "read_model_spec",
    "resolve_backend",
    "save_model",
    "unwrap",
]
