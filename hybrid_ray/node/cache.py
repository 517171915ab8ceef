"""The node's cache folder (spec.cache_dir, $HYBRID_RAY_CACHE or ~/.cache/hybrid-ray: token shards, compiled kernels,
passed FLA checks) and the file lock under which one process at a time writes an entry of it."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hybrid_ray.spec import DataSpec


def cache_root(spec: DataSpec | None = None) -> Path:
    """spec.cache_dir, else $HYBRID_RAY_CACHE, else ~/.cache/hybrid-ray (the node's cache: shards, kernels)."""
    root = (spec.cache_dir if spec else None) or os.environ.get("HYBRID_RAY_CACHE") or "~/.cache/hybrid-ray"
    return Path(root).expanduser()


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
