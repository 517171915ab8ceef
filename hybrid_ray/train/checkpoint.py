"""Checkpoints, the only module that reads or writes them: the trainer state, what each rank writes and restores (the
worker's Checkpointer), and the run's checkpoints on the driver (the CheckpointManager: where a launch resumes, what
the run keeps while it trains and once it has ended, the latest good one), and what a finished run exports.

Layout of one checkpoint folder (Ray Train merges the ranks' local folders into it):
    config.json, model.safetensors   rank 0: the model, a Hugging Face-style folder that `generate` can load
    optimizer.pt                     rank 0: the full AdamW state (tensors and numbers only)
    trainer_state.json               rank 0: TrainerState, the spec and the format version
    rng_rank{R}.pt                   every rank: its torch / CUDA / numpy / python RNG states (tensors and numbers)
    manifest_rank{R}.json            every rank, written last: size and CRC32 of each of its files (rank 0's also
                                     records the world size, so a folder missing a rank's files is incomplete)

Loading never runs code from the folder: `.pt` files are read with `torch.load(weights_only=True)`, which builds
tensors and plain containers only, so anyone able to write a run's folder cannot make a resume execute anything.
A folder whose manifests are missing or do not match its files is corrupt: `verify` raises CheckpointError, and
`latest` skips it for the newest good one.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import random
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn
from ray.train import UserCallback

from hybrid_ray import ray_compat, storage
from hybrid_ray.errors import CheckpointError, first_line
from hybrid_ray.layout import OPTIMIZER_FILE, RunLayout, checkpoint_name, optimizer_file, step_of
from hybrid_ray.model import unwrap
from hybrid_ray.model.build import WEIGHTS_FILE, load_state, save_model
from hybrid_ray.records.folders import list_checkpoints, rm_command
from hybrid_ray.spec import RunSpec
from hybrid_ray.train.cadence import Every
from hybrid_ray.train.parallelize import in_process_group

FORMAT = 2
STATE_FILE = "trainer_state.json"
MODEL_FILES = ("config.json", WEIGHTS_FILE)  # a Hugging Face-style model folder, which `generate` loads


@dataclass
class TrainerState:
    """Everything besides model and optimizer that a resumed run needs to continue exactly."""

    step: int = 0
    total_steps: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0
    compile_seconds: float = 0.0  # the first step of every launch (compiling and tuning kernels), apart from training
    eval_seconds: float = 0.0  # the evaluations (validation loss, recall probes), apart from training
    setup_seconds: float = 0.0  # every launch's worker set-up before its first step (data, model, optimizer, restore)
    # the state_dict() of each of the Checkpointer's components (the LR schedule, the loader), under its name
    schedule: dict = field(default_factory=dict)
    loader: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    last_eval: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    resumed_at: list[int] = field(default_factory=list)  # the step of every restore (relaunch or worker restart)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainerState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Restored:
    """What `load` reads back from a checkpoint folder for one rank."""

    state: TrainerState
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    rng: dict[str, Any] | None


# --- the run's checkpoints: one owner of resume and retention -----------------------------------------------------

# Ray Train's record of a run's checkpoints (Ray 2.60), in the run folder
_RECORDED_NAMES = ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                   "failed_validation_checkpoint_dir_names")


@dataclass(frozen=True)
class Resume:
    """Where a launch starts: the newest good checkpoint (None: from scratch), every checkpoint folder at launch, and
    those of them that count toward `train.keep` (the ones Ray's record lists, as Ray's own retention counted)."""

    checkpoint: str | None
    known: list[str]
    counted: list[str]


# What an ended sweep trial keeps (CheckpointManager.settle): every checkpoint with its optimizer state (--keep-
# checkpoints: resumable, --extend-steps), model/ and its newest checkpoint's weights (the default: generate, eval), or
# only its records (a --tune-lr search's trials: the 13-arm study's 91 would otherwise keep ~146 GB of weights nobody
# reads, more than an H100 node's disk).
ENDED_KEEPS = ("checkpoints", "weights", "records")


class CheckpointManager:
    """A run's checkpoints on the driver, the one owner of their lifecycle: where a launch resumes from (`at_launch`),
    what the run keeps while it trains (the newest `keep`: `for_ray` hands Ray Train a CheckpointConfig that deletes
    nothing and a callback that its controller runs after each checkpoint it registers) and once it has ended
    (`settle`, `prune`), and which checkpoint is the newest good one (`latest`). The workers' side is the
    Checkpointer."""

    def __init__(self, run: RunLayout, keep: int | None = None):
        self.run, self.keep = run, keep

    def names(self) -> list[str]:
        """The run's checkpoint folders, oldest first."""
        return list_checkpoints(self.run)

    def newest_good(self) -> tuple[str | None, list[CheckpointError]]:
        """The newest checkpoint that verifies (None when there is none), and why each newer one was skipped."""
        skipped = []
        for name in reversed(self.names()):
            path = self.run.checkpoint(name)
            try:
                verify(path)
                return path, skipped
            except CheckpointError as e:
                skipped.append(e)
        return None, skipped

    def latest(self) -> str | None:
        """The newest checkpoint that verifies; newer broken ones are skipped with a warning naming them (and left in
        place: Ray's own record of the run still lists them)."""
        path, skipped = self.newest_good()
        for error in skipped:
            warnings.warn(f"{error}; skipping it for an older checkpoint")
        return path

    def resume_point(self) -> int | None:
        """The step a relaunch would continue from (the newest good checkpoint's), or None."""
        path = self.latest()
        return step_of(storage.name(path)) if path else None

    def settled_resume_point(self, quiet_s: float = 1.0, timeout_s: float = 30.0) -> int | None:
        """resume_point once no checkpoint file has changed for `quiet_s` (at most `timeout_s`): after a run is
        stopped, a checkpoint its workers were writing may still be finished (or cut short) before Ray ends them, and
        the relaunch resumes from what is there then."""
        deadline = time.monotonic() + timeout_s
        seen = None
        while (now := {name: storage.file_sizes(self.run.checkpoint(name)) for name in self.names()}) != seen:
            if time.monotonic() > deadline:
                break
            seen = now
            time.sleep(quiet_s)
        return self.resume_point()

    def at_launch(self) -> Resume:
        """Where this launch resumes (a record of Ray's that Ray cannot load is set aside). A run whose checkpoints
        are all damaged is refused rather than silently started over."""
        name = self.run.name
        known = self.names()
        damaged = self.set_aside_damaged_record()
        if damaged:
            aside, problem = damaged
            warnings.warn(f"Ray Train's record of run {name} was damaged ({problem}) and is kept as {aside}; the run "
                          "resumes from its checkpoint folders, and --keep counts only the checkpoints written from now "
                          "on")
        newest, skipped = self.newest_good()
        if known and newest is None:
            raise CheckpointError(f"every checkpoint of run {name} is damaged (newest: {skipped[0]}); remove the run "
                                  f"with `{rm_command(self.run.storage_path, name)}` to start it over")
        for error in skipped:
            warnings.warn(f"{error}; skipping it for an older checkpoint")
        if newest is not None:
            check_pickles(newest)
        return Resume(newest, known, self.recorded())

    def recorded(self) -> list[str]:
        """The checkpoint folders Ray's record of the run lists (none without a readable record)."""
        path = self.run.ray_record
        if not storage.exists(path):
            return []
        try:
            return [r["checkpoint_dir_name"] for r in json.loads(storage.read_bytes(path))["checkpoint_results"]]
        except (ValueError, KeyError, TypeError):
            return []

    def set_aside_damaged_record(self) -> tuple[str, str] | None:
        """Move Ray's record of the run aside when Ray could not load it (a write a full disk cut short, a hand edit,
        a record an older Ray wrote in another shape): Ray would refuse the relaunch from inside its controller; it
        starts a new one instead. Returns (where the damaged record now is, what is wrong with it), or None."""
        path = self.run.ray_record
        if not storage.exists(path):
            return None
        problem = ray_compat.run_record_problem(storage.read_bytes(path))
        return None if problem is None else (storage.move_aside(path), problem)

    def forget_deleted(self, folders: list[str]) -> list[str]:
        """Drop the checkpoint folders deleted since Ray recorded them (by hand, to free a disk, or by `retention`)
        from Ray's record of the run, which Ray otherwise refuses to relaunch ("a corrupted run directory");
        `folders`: the run's checkpoint folders on disk. Returns the names dropped. Runs resume from the folders on
        disk (at_launch), never from Ray's record; at_launch has already set aside a record that Ray cannot load.
        Only a launch that trains mends it (`for_ray`): a relaunch with nothing to train writes nothing."""
        path = self.run.ray_record
        if not storage.exists(path):
            return []
        on_disk = set(folders)
        try:
            record = json.loads(storage.read_bytes(path))
            results = record["checkpoint_results"]
            gone = [r["checkpoint_dir_name"] for r in results if r["checkpoint_dir_name"] not in on_disk]
        except (ValueError, KeyError, TypeError):
            return []
        if not gone:
            return []
        kept = [i for i, r in enumerate(results) if r["checkpoint_dir_name"] in on_disk]
        record["checkpoint_results"] = [results[i] for i in kept]
        record["checkpoint_report_indices"] = [record["checkpoint_report_indices"][i] for i in kept]
        latest_result = record.get("latest_checkpoint_result")
        if latest_result and latest_result["checkpoint_dir_name"] not in on_disk:
            record["latest_checkpoint_result"] = record["checkpoint_results"][-1] if kept else None
        pending = [i for i, r in enumerate(record.get("pending_training_results", []))
                   if r["checkpoint_dir_name"] in on_disk]
        for key in ("pending_training_results", "pending_validation_specs"):
            record[key] = [record[key][i] for i in pending]
        for key in _RECORDED_NAMES:
            record[key] = [name for name in record.get(key, []) if name in on_disk]
        storage.write_bytes(path, json.dumps(record).encode())
        return gone

    # --- retention: what the run keeps ---

    def for_ray(self, resume: Resume) -> tuple[Any, KeepNewest]:
        """What Ray Train gets for a launch that trains: a CheckpointConfig under which Ray keeps every checkpoint it
        registers, and the callback that keeps the newest `keep`. Ray's record of the run first forgets the
        checkpoints deleted since Ray wrote it (by that callback or by hand)."""
        from ray.train import CheckpointConfig

        assert self.keep is not None
        self.forget_deleted(resume.known)
        return CheckpointConfig(num_to_keep=None), KeepNewest(self, resume.counted, resume.known)

    def keep_newest(self, written: str, counted: list[str], known: list[str]) -> list[str]:
        """After `written` was saved: delete the checkpoints beyond the newest `keep` of those that count (the ones
        `counted` at launch and every one written since, never `written` itself). Returns the names deleted."""
        on_disk = self.names()
        counts = [n for n in on_disk if n in set(counted) or n not in set(known)]
        gone = [n for n in counts[:-self.keep] if n != written] if len(counts) > self.keep else []
        for name in gone:
            storage.remove_dir(self.run.checkpoint(name))
        return gone

    def settle(self, keeps: str = "weights") -> None:
        """Free what an ended sweep trial no longer needs (`keeps`, one of ENDED_KEEPS): nothing ("checkpoints"), its
        optimizer state and older checkpoints ("weights": model/ and the newest checkpoint's weights stay), or every
        checkpoint and model/ ("records": its results, history and spec stay)."""
        if keeps not in ENDED_KEEPS:
            raise ValueError(f"keeps must be one of {ENDED_KEEPS}, got {keeps!r}")
        if keeps == "weights":
            self.prune()
        elif keeps == "records":
            for name in self.names():
                storage.remove_dir(self.run.checkpoint(name))
            if storage.exists(self.run.model):
                storage.remove_dir(self.run.model)

    def prune(self) -> None:
        """Keep only the newest good checkpoint of a run, weights only (what an ended sweep trial keeps); nothing when
        the run has no good checkpoint."""
        names = self.names()
        newest = self.latest()
        if newest is None:
            return
        for name in names:
            path = self.run.checkpoint(name)
            if path != newest:
                storage.remove_dir(path)
        if not weights_only(newest):
            drop_optimizer(newest)


class KeepNewest(UserCallback):
    """Run by Ray Train's controller after every report: once a checkpoint is registered (uploaded), the run's
    CheckpointManager deletes what `train.keep` no longer keeps."""

    def __init__(self, manager: CheckpointManager, counted: list[str], known: list[str]):
        self.manager, self.counted, self.known = manager, counted, known

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if checkpoint is not None:
            self.manager.keep_newest(storage.name(checkpoint.path), self.counted, self.known)


# --- RNG state, as tensors and numbers ---------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                       numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# --- writing -----------------------------------------------------------------------------------------------------

def _full_state_options(cpu_offload: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)


def gather(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded, unwrapped) model and optimizer states keyed by parameter name, the same for DDP, FSDP2 and
    one worker. A collective in a process group: every rank calls it; rank 0 gets the states."""
    if in_process_group():
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        opts = _full_state_options(cpu_offload=True)
        return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)
    return unwrap(model).state_dict(), optimizer.state_dict()


def save(folder: str | Path, *, rank: int, world_size: int, state: TrainerState, spec: RunSpec,
         model_state: dict[str, torch.Tensor] | None = None, optimizer_state: dict[str, Any] | None = None) -> None:
    """Write this rank's files of a checkpoint; rank 0 passes the full model and optimizer states. The manifest is
    written last, so a write that fails part-way leaves a folder that `verify` rejects."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = [f"rng_rank{rank}.pt"]
    try:
        torch.save(rng_state(), folder / files[0])
        if rank == 0:
            save_model(model_state, spec.model, folder)
            torch.save(optimizer_state, folder / OPTIMIZER_FILE)
            payload = {"format": FORMAT, **state.to_dict(), "spec": spec.to_dict()}
            (folder / STATE_FILE).write_text(json.dumps(payload))
            files += [*MODEL_FILES, OPTIMIZER_FILE, STATE_FILE]
        entries = {name: {"bytes": (folder / name).stat().st_size, "crc32": storage.crc32(folder / name)} for name in files}
        manifest = {"files": entries, **({"world_size": world_size} if rank == 0 else {})}
        (folder / f"manifest_rank{rank}.json").write_text(json.dumps(manifest, indent=1))
    except OSError as e:
        raise CheckpointError(f"cannot write the step-{state.step} checkpoint in {folder}: {e.strerror or e}") from e


def write(model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainerState, spec: RunSpec, rank: int,
          world_size: int) -> str:
    """Gather the full states (all ranks) and write this rank's part into a fresh local folder for Ray to upload."""
    model_state, optimizer_state = gather(model, optimizer)
    folder = tempfile.mkdtemp(prefix=f"hybrid-ray-ckpt-{state.step}-")
    save(folder, rank=rank, world_size=world_size, state=state, spec=spec,
         model_state=model_state if rank == 0 else None, optimizer_state=optimizer_state if rank == 0 else None)
    return folder


def drop_optimizer(folder: str) -> None:
    """Make a checkpoint weights-only (a finished sweep trial's): delete its optimizer state and take it out of rank
    0's manifest, which then says `weights_only`, so the folder still verifies (and `generate`/`eval` still load it)
    but a resume from it is refused by name."""
    manifest_path = storage.join(folder, "manifest_rank0.json")
    manifest = json.loads(storage.read_bytes(manifest_path))
    _manifest_files(manifest).pop(OPTIMIZER_FILE, None)
    manifest["weights_only"] = True
    storage.write_bytes(manifest_path, json.dumps(manifest, indent=1).encode())
    storage.delete_file(optimizer_file(folder))


def weights_only(folder: str) -> bool:
    manifest = json.loads(storage.read_bytes(storage.join(folder, "manifest_rank0.json")))
    return bool(manifest.get("weights_only"))


# --- reading -----------------------------------------------------------------------------------------------------

def _manifest_files(manifest: dict) -> dict[str, dict]:
    return manifest["files"] if "files" in manifest else manifest  # format 1: the entries themselves


def verify(folder: str) -> None:
    """Raise CheckpointError unless every rank's manifest is there and its files have the recorded size (and, on
    local disks, CRC32). Works on URIs too, where only sizes are compared (no download)."""
    name = f"checkpoint {folder}"
    manifests = [n for n in storage.list_files(folder) if n.startswith("manifest_rank")]
    if "manifest_rank0.json" not in manifests:
        raise CheckpointError(f"{name} is incomplete: manifest_rank0.json is missing")
    parsed = {}
    for manifest in sorted(manifests):
        try:
            parsed[manifest] = json.loads(storage.read_bytes(storage.join(folder, manifest)))
            files = _manifest_files(parsed[manifest])
            assert isinstance(files, dict) and all(isinstance(m, dict) for m in files.values())
        except (OSError, ValueError, AssertionError) as e:
            raise CheckpointError(f"{name} is corrupt: {manifest} is unreadable") from e
    world = parsed["manifest_rank0.json"].get("world_size", 1)
    missing = [r for r in range(world) if f"manifest_rank{r}.json" not in parsed]
    if missing:
        raise CheckpointError(f"{name} is incomplete: manifest_rank{missing[0]}.json is missing")
    sizes = storage.file_sizes(folder)
    for manifest in parsed.values():
        for file, meta in _manifest_files(manifest).items():
            if file not in sizes:
                raise CheckpointError(f"{name} is incomplete: {file} is missing")
            local = not storage.is_uri(folder)
            if sizes[file] != meta["bytes"] or (local and storage.crc32(Path(folder, file)) != meta["crc32"]):
                raise CheckpointError(f"{name} is corrupt: {file} does not match its checksum")


# numpy's array pickles, which format-1 RNG files hold: array reconstruction only, no other code
_core = getattr(np, "_core", None) or np.core
LEGACY_RNG_GLOBALS = [_core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _load_pt(path: Path, allow: list | None = None, mmap: bool = False) -> Any:
    """torch.load that builds tensors and plain containers only; anything else is refused, naming the file."""
    try:
        with torch.serialization.safe_globals(allow or []):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refusing to load {path}: it holds objects other than tensors and numbers "
                              "(a checkpoint file can only hold those; was it replaced?)") from e


def check_pickles(folder: str) -> None:
    """Refuse a local checkpoint whose .pt files hold anything but tensors and numbers before any worker starts (the
    workers check again as they load). Tensors are memory-mapped, not read: only the pickles are unpickled."""
    if storage.is_uri(folder):
        return  # the workers check what they download
    for path in sorted(Path(folder).glob("*.pt")):
        allow = LEGACY_RNG_GLOBALS if path.name.startswith("rng_rank") else None
        try:  # torch can map only its zip format (all hybrid-ray writes); another pickle is small enough to read whole
            _load_pt(path, allow=allow, mmap=zipfile.is_zipfile(path))
        except (OSError, RuntimeError, ValueError):
            continue  # unreadable rather than unsafe: the loading worker says why


def read_state(folder: str | Path) -> TrainerState:
    """Rank 0's trainer state of a checkpoint folder (local or URI)."""
    try:
        return TrainerState.from_dict(json.loads(storage.read_bytes(storage.join(str(folder), STATE_FILE))))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {folder}: {STATE_FILE} is unreadable: {first_line(e)}") from e


def load(folder: str | Path, rank: int) -> Restored:
    """Verify a local checkpoint folder, then read rank 0's states and this rank's RNG (None when absent)."""
    folder = Path(folder)
    verify(str(folder))
    if weights_only(str(folder)):
        raise CheckpointError(f"checkpoint {folder} holds weights only (a finished sweep trial drops its optimizer "
                              "state unless the sweep ran with --keep-checkpoints): it cannot be resumed")
    try:
        state = read_state(folder)
        model_state = load_state(folder)
        optimizer_state = _load_pt(folder / OPTIMIZER_FILE)
        rng_path = folder / f"rng_rank{rank}.pt"
        rng = _load_pt(rng_path, allow=LEGACY_RNG_GLOBALS) if rng_path.exists() else None
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {folder} cannot be read: {first_line(e)}") from e
    return Restored(state, model_state, optimizer_state, rng)


def apply(model: nn.Module, optimizer: torch.optim.Optimizer, restored: Restored) -> None:
    """Load full states into a (possibly wrapped or sharded) model and its optimizer."""
    if in_process_group():
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        opts = _full_state_options(cpu_offload=False)
        set_model_state_dict(model, restored.model_state, options=opts)
        set_optimizer_state_dict(model, optimizer, restored.optimizer_state, options=opts)
    else:
        unwrap(model).load_state_dict(restored.model_state)
        optimizer.load_state_dict(restored.optimizer_state)


def export_model(checkpoint: str, model_dir: str | Path) -> TrainerState:
    """Copy a checkpoint's model (local or URI) into the local folder `model_dir`; returns its trainer state."""
    state = read_state(checkpoint)
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        Path(model_dir, name).write_bytes(storage.read_bytes(storage.join(checkpoint, name)))
    return state


# --- a worker's checkpoints --------------------------------------------------------------------------------------

class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class SaveConfig:
    every: int  # train.checkpoint_every
    spec: RunSpec  # what every checkpoint records of the run (its state file, the model's config)

    @classmethod
    def from_spec(cls, spec: RunSpec) -> SaveConfig:
        return cls(spec.train.checkpoint_every, spec)


class Checkpointer:
    """A worker's checkpoints: when one is due, writing this rank's part, and restoring a run.

    `components` (the LR schedule, the loader) are saved by their `state_dict()` under their name in TrainerState,
    and given it back by `load_state_dict()` on restore.
    """

    def __init__(self, config: SaveConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
                 components: dict[str, Stateful], rank: int, world_size: int, known: list[str]):
        self.every = Every(config.every)
        self.spec, self.model, self.optimizer, self.components = config.spec, model, optimizer, components
        self.rank, self.world_size, self.known = rank, world_size, known

    def should_save(self, step: int, last: bool) -> bool:
        return self.every.due(step, last)

    def save(self, state: TrainerState) -> tuple[str, str]:
        """Gather the full states (a collective: every rank calls it) and write this rank's part into a fresh local
        folder for Ray to upload; returns (that folder, the checkpoint's name in the run folder)."""
        state = dataclasses.replace(state, **{name: c.state_dict() for name, c in self.components.items()})
        folder = write(self.model, self.optimizer, state, self.spec, self.rank, self.world_size)
        return folder, checkpoint_name(state.step, set(self.known))

    def restore(self, resume_from: str | None) -> TrainerState | None:
        """Continue a run: from the checkpoint Ray hands a restarted worker group when it was written during this
        launch (a retry after a failure), else from `resume_from`, the newest good checkpoint the driver found
        (None: start, returning None)."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None or Path(checkpoint.path).name in self.known:
            # a relaunch: Ray offers the newest checkpoint it registered, which may be a broken one; use the driver's
            checkpoint = ray.train.Checkpoint(resume_from) if resume_from else None
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            restored = load(folder, self.rank)
        apply(self.model, self.optimizer, restored)
        state = restored.state
        state.resumed_at.append(state.step)
        for name, component in self.components.items():
            component.load_state_dict(getattr(state, name))
        state.history = [r for r in state.history if r["step"] <= state.step]
        if restored.rng is not None:
            set_rng_state(restored.rng)
        return state
