"""Append-only JSON-lines records (a scheduler's decisions, a study's LR choices and stage costs): one writer each,
a line per record; a line a full disk cut short is skipped when read."""

from __future__ import annotations

import json
from typing import Any

from hybrid_ray import storage


def append(path: str, record: dict[str, Any]) -> None:
    """Add one record (a line) to the file at `path`."""
    before = storage.read_bytes(path) if storage.exists(path) else b""
    storage.write_bytes(path, before + json.dumps(record).encode() + b"\n")


def read(path: str) -> list[dict[str, Any]]:
    """Every whole record at `path`, oldest first (none when there is no file)."""
    if not storage.exists(path):
        return []
    out = []
    for line in storage.read_bytes(path).decode(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out
