"""The hybrid Gated DeltaNet / attention model on two backends: FLA's kernels (GPU) and a pure-PyTorch twin.

The names are imported on first use: the CLI reads parameter counts (`flops`) without loading torch, which alone
takes about a second of each `hybrid-ray` command's start (`jobs`, `submit`, `--help`).
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "build_model": "build", "init_weights": "build", "load_model": "build", "read_model_spec": "build",
    "resolve_backend": "build", "save_model": "build", "unwrap": "build",
    "count_params": "flops", "flops_per_token": "flops", "peak_flops": "flops",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
