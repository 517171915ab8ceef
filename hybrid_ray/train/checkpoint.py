"""Checkpoint folders: written by every rank into a local folder that Ray Train uploads, verified on load.

Layout (Ray merges the ranks' folders into one):
    config.json, model.safetensors   rank 0: the model, a Hugging Face-style folder that `generate` can load
    optimizer.pt                     rank 0: the full AdamW state
    trainer_state.json               rank 0: step, LR schedule, data-loader position, history, spec, environment
    rng_rank{R}.pt                   every rank: its torch / CUDA / numpy / python RNG states
    manifest_rank{R}.json            every rank, written last: size and CRC32 of each of its files
A folder whose manifests are missing or do not match its files is corrupt: loading it raises CheckpointError.
"""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybrid_ray.errors import CheckpointError
from hybrid_ray.model.build import load_state, save_model
from hybrid_ray.spec import ModelSpec

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def _write_manifest(folder: Path, rank: int, files: list[str]) -> None:
    entries = {name: {"bytes": (folder / name).stat().st_size, "crc32": _crc32(folder / name)} for name in files}
    (folder / f"manifest_rank{rank}.json").write_text(json.dumps(entries, indent=1))


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(
    folder: str | Path,
    *,
    rank: int,
    trainer_state: dict[str, Any],
    model_spec: ModelSpec,
    model_state: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> None:
    """Write this rank's part of a checkpoint; rank 0 passes the (full) model and optimizer states."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = [f"rng_rank{rank}.pt"]
    torch.save(rng_state(), folder / files[0])
    if rank == 0:
        save_model(model_state, model_spec, folder)
        torch.save(optimizer_state, folder / OPTIMIZER_FILE)
        (folder / STATE_FILE).write_text(json.dumps(trainer_state))
        files += ["config.json", "model.safetensors", OPTIMIZER_FILE, STATE_FILE]
    _write_manifest(folder, rank, files)


def verify(folder: str | Path) -> None:
    """Raise CheckpointError unless every manifest's files exist with the recorded size and CRC32."""
    folder = Path(folder)
    manifests = sorted(folder.glob("manifest_rank*.json"))
    if not (folder / "manifest_rank0.json").exists():
        raise CheckpointError(f"checkpoint {folder} is incomplete: manifest_rank0.json is missing")
    for manifest in manifests:
        try:
            entries = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"checkpoint {folder} is corrupt: {manifest.name} is unreadable") from e
        for name, meta in entries.items():
            path = folder / name
            if not path.exists():
                raise CheckpointError(f"checkpoint {folder} is incomplete: {name} is missing")
            if path.stat().st_size != meta["bytes"] or _crc32(path) != meta["crc32"]:
                raise CheckpointError(f"checkpoint {folder} is corrupt: {name} does not match its checksum")


def load(folder: str | Path, rank: int) -> dict[str, Any]:
    """Verify, then read: trainer_state, model_state, optimizer_state and this rank's rng (when present)."""
    folder = Path(folder)
    verify(folder)
    try:
        out: dict[str, Any] = {
            "trainer_state": json.loads((folder / STATE_FILE).read_text()),
            "model_state": load_state(folder),
            "optimizer_state": torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=False),
        }
        rng = folder / f"rng_rank{rank}.pt"
        out["rng"] = torch.load(rng, weights_only=False) if rng.exists() else None
    except (OSError, ValueError, RuntimeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {folder} cannot be read: {str(e).splitlines()[0]}") from e
    return out
