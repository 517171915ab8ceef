"""Every path under a storage path, in one place: no other module joins these names.

    <storage>/
      <run>/                      a run (RunLayout)
        spec.yaml  results.json  launches.json  curves.png  diverged.json
        tensorboard/  model/  eval/<task>.json
        checkpoint_<step>[-<n>]/  checkpoint_manager_snapshot.json (Ray Train's record of them)
      <sweep>/                    a sweep (SweepLayout)
        grid.json  sweep.json  sweep.png  asha_decisions.jsonl
        trials/<arm>-s<seed>/     each trial is a run
      .data/                      prepared token shards, shared between the nodes of a cluster
      .kernels/<stack key>/       compiled kernels, shared between the nodes of a cluster
    <folder>/comparison/          what `compare` writes beside what it compared
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hybrid_ray import storage

CHECKPOINT_PREFIX = "checkpoint_"
_CHECKPOINT = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)(?:-(\d+))?$")
TRIALS = "trials"  # a sweep folder holds its trials' run folders here
COMPARISON = "comparison"
DATA_STORE = ".data"
KERNEL_STORE = ".kernels"
DIVERGED_FILE = "diverged.json"  # rank 0 writes it when the loss stops being finite
RAY_RECORD = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints (its CheckpointManager)
MODEL_DIR = "model"  # also the folder `generate` and `eval` load, in a run folder or on its own
OPTIMIZER_FILE = "optimizer.pt"  # in a checkpoint folder: what a finished sweep trial drops (train/checkpoint.py)


def step_of(name: str) -> int | None:
    """The step of a checkpoint folder's name (None: not a checkpoint folder)."""
    match = _CHECKPOINT.match(name)
    return int(match.group(1)) if match else None


def is_checkpoint(name: str) -> bool:
    return _CHECKPOINT.match(name) is not None


def checkpoint_order(name: str) -> tuple[int, int]:
    """Checkpoint folders in the order they were written: by step, then by their `-N` suffix."""
    match = _CHECKPOINT.match(name)
    assert match is not None
    return int(match.group(1)), int(match.group(2) or 0)


def checkpoint_name(step: int, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """`checkpoint_<step>`, with a `-N` suffix when a folder of that name exists (a broken checkpoint is never
    overwritten in place: Ray would later delete the shared folder when it evicts the broken entry)."""
    name, n = f"{CHECKPOINT_PREFIX}{step:08d}", 0
    while (candidate := name if n == 0 else f"{name}-{n}") in taken:
        n += 1
    return candidate


def optimizer_file(checkpoint: str) -> str:
    """The optimizer state in a checkpoint folder (a path): what a finished sweep trial drops, and what tells a dry run
    that a trial has been settled without loading torch."""
    return storage.join(checkpoint, OPTIMIZER_FILE)


def comparison_dir(home: str) -> str:
    """`compare`'s default folder beside what it compares."""
    return storage.join(home, COMPARISON)


@dataclass(frozen=True)
class ComparisonLayout:
    """What `compare` writes into a folder."""

    dir: str

    @property
    def results(self) -> str:
        return storage.join(self.dir, "comparison.json")

    @property
    def figure(self) -> str:
        return storage.join(self.dir, "comparison.png")


@dataclass(frozen=True)
class RunLayout:
    """One run's folder and every file in it."""

    dir: str

    @classmethod
    def named(cls, storage_path: str, name: str) -> RunLayout:
        """The run `name` under a storage path: `<storage_path>/<name>`."""
        return cls(storage.join(storage_path, name))

    @classmethod
    def of(cls, spec) -> RunLayout:
        """The folder of the run a spec names."""
        return cls.named(spec.storage_path, spec.name)

    @property
    def name(self) -> str:
        """The run's name: its folder's."""
        return storage.name(self.dir)

    @property
    def storage_path(self) -> str:
        """The storage path that holds the run (a sweep's trials/ folder for a trial)."""
        return storage.parent(self.dir)

    def file(self, name: str) -> str:
        return storage.join(self.dir, name)

    @property
    def spec(self) -> str:
        return self.file("spec.yaml")

    @property
    def results(self) -> str:
        return self.file("results.json")

    @property
    def launches(self) -> str:
        return self.file("launches.json")

    @property
    def curves(self) -> str:
        return self.file("curves.png")

    @property
    def diverged(self) -> str:
        return self.file(DIVERGED_FILE)

    @property
    def tensorboard(self) -> str:
        return self.file("tensorboard")

    @property
    def model(self) -> str:
        return self.file(MODEL_DIR)

    @property
    def ray_record(self) -> str:
        return self.file(RAY_RECORD)

    def eval(self, task: str) -> str:
        """A downstream task's score of the run's model."""
        return self.file(f"eval/{task}.json")

    def checkpoint(self, name: str) -> str:
        return self.file(name)

    def optimizer(self, checkpoint: str) -> str:
        """The optimizer state in the checkpoint folder `checkpoint` (a name)."""
        return optimizer_file(self.checkpoint(checkpoint))


@dataclass(frozen=True)
class SweepLayout:
    """One sweep's folder: its records and its trials' run folders."""

    storage_path: str  # holds the sweep: its trials share its .data/ and .kernels/
    name: str

    @classmethod
    def of(cls, spec) -> SweepLayout:
        """The sweep a base spec names: `<spec.storage_path>/<spec.name>`."""
        return cls(spec.storage_path, spec.name)

    @classmethod
    def at(cls, folder: str) -> SweepLayout:
        """The sweep whose folder is `folder`."""
        return cls(storage.parent(folder), storage.name(folder))

    def exists(self) -> bool:
        """Whether `dir` is a sweep's folder: it holds the sweep's grid or its results."""
        return storage.exists(self.results) or storage.exists(self.grid)

    @property
    def dir(self) -> str:
        return storage.join(self.storage_path, self.name)

    @property
    def grid(self) -> str:
        return storage.join(self.dir, "grid.json")

    @property
    def results(self) -> str:
        return storage.join(self.dir, "sweep.json")

    @property
    def figure(self) -> str:
        return storage.join(self.dir, "sweep.png")

    @property
    def asha_decisions(self) -> str:
        """ASHA's judgement of every trial at every rung (records/decisions.py)."""
        # not *.json: Tune copies every top-level .json of its experiment folder (the sweep folder) to its staging
        # folder when it restores a sweep, and back at its end, which put back the first launch's record over the
        # relaunch's decisions
        return storage.join(self.dir, "asha_decisions.jsonl")

    @property
    def legacy_asha_stops(self) -> str:
        """Where sweeps before asha_decisions.jsonl recorded ASHA's stops alone (read, never written)."""
        return storage.join(self.dir, "asha_stops.jsonl")

    @property
    def trials(self) -> str:
        return storage.join(self.dir, TRIALS)

    def trial(self, name: str) -> RunLayout:
        return RunLayout(storage.join(self.trials, name))


@dataclass(frozen=True)
class StudyLayout:
    """A tune-lr study's folder (sweep/study.py): stage 1's LR search and its extension, each an ordinary sweep
    folder, the record of each arm's chosen learning rate, stage 2's comparison (an ordinary sweep folder, which
    `hybrid-ray compare` reads), and the report."""

    storage_path: str
    name: str

    @property
    def dir(self) -> str:
        return storage.join(self.storage_path, self.name)

    @property
    def study(self) -> str:
        """What defines the study (its options and arms): a relaunch with anything else is refused."""
        return storage.join(self.dir, "study.json")

    @property
    def lr_search(self) -> SweepLayout:
        return SweepLayout(self.dir, "lr")

    @property
    def lr_extension(self) -> SweepLayout:
        """The LR values past the grid's edge, for arms whose best LR was at one (one extension, bounded)."""
        return SweepLayout(self.dir, "lr-extend")

    @property
    def lr_choices(self) -> str:
        """Each arm's chosen learning rate and the curve that chose it, one line an arm, written once."""
        return storage.join(self.dir, "lr_choices.jsonl")  # not *.json: see SweepLayout.asha_decisions

    @property
    def comparison(self) -> SweepLayout:
        return SweepLayout(self.dir, "compare")

    @property
    def report(self) -> str:
        return storage.join(self.dir, "report.md")

    @property
    def figure(self) -> str:
        return storage.join(self.dir, "study.png")

    @property
    def costs(self) -> str:
        """Each stage's wall seconds, summed over launches (the report's cost of each stage)."""
        return storage.join(self.dir, "stage_seconds.jsonl")


def data_store(storage_path: str) -> str:
    """Where prepared shards are published for the other nodes of a cluster."""
    return storage.join(storage_path, DATA_STORE)


def kernel_store(storage_path: str, key: str | None = None) -> str:
    """Where compiled kernels are published for the other nodes of a cluster (one folder per software stack key)."""
    store = storage.join(storage_path, KERNEL_STORE)
    return storage.join(store, key) if key else store
