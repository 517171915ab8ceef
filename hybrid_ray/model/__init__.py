"""The hybrid Gated DeltaNet / attention model on two backends: FLA's kernels (GPU) and a pure-PyTorch twin.

The names are imported on first use: the CLI reads parameter counts (`flops`) without loading torch, which alone
takes about a second of each `hybrid-ray` command's start (`jobs`, `submit`, `--help`).
"""

from __future__ import annotations

from hybrid_ray.lazy import exports

_HOMES = {
    "build_model": "build", "init_weights": "build", "load_model": "build", "read_model_spec": "build",
    "resolve_backend": "build", "save_model": "build", "unwrap": "build",
    "count_params": "flops", "flops_per_token": "flops", "peak_flops": "flops",
}
__all__ = sorted(_HOMES)
__getattr__ = exports(__name__, _HOMES)
