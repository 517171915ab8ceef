"""Sweeps on Ray Tune: `sweep(base, SweepOptions)` (tuner.py), `tune_lr` (study.py: each arm at its own learning
rate, then the seeds), its plan (plan.py), ASHA (asha.py) and what each trial ended as (status.py).
The names are imported on first use: the CLI's --dry-run plans without loading Ray Tune."""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"sweep": "tuner", "SweepOptions": "options", "tune_lr": "study"}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
