"""What a run or a sweep needs before anything starts: its resource plan (the Train workers and what each holds, what
one run or trial holds on the cluster, so how many run at once, checked against the cluster), and the disk a sweep's
trials' checkpoints and model folders take against the free space of the storage path."""

from __future__ import annotations

import math
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from hybrid_ray import storage
from hybrid_ray.errors import ClusterError, HybridRayError, SpecError
from hybrid_ray.model import count_params
from hybrid_ray.spec import RunSpec

# The Tune trial itself only waits on its TorchTrainer, but it holds this much CPU for as long as it runs; its
# workers hold their own CPUs and GPUs in a placement group of their own (docs/ARCHITECTURE.md, "Ray facts").
TRIAL_CPU = 0.01
# Host memory of one running trial, which Ray does not reserve but the machine must hold: the Tune trial, its Train
# controller and placement-group cleaner (~600 MB each run), and per worker a torch process plus, on CPU workers,
# 16 bytes a parameter (weights, gradients, AdamW's moments).
TRIAL_MEMORY = 1.2e9
WORKER_MEMORY = 1.0e9

# Bytes of one checkpoint beyond 12 per parameter (fp32 weights + AdamW's two fp32 moments): per-tensor pickle
# records of optimizer.pt, RNG states (~16 KB a rank), manifests and config. Measured 50-83 KB on tiny models
# (tests/test_sweep_plan.py holds the rule against a real checkpoint); the history in trainer_state.json grows with
# the run, HISTORY_BYTES a record.
CHECKPOINT_OVERHEAD = 256 * 1024
RANK_BYTES = 32 * 1024
HISTORY_BYTES = 200
TOKENIZER_BYTES = 8 * 2**20  # tokenizer files in model/ (a BPE tokenizer.json is a few MB)


class DiskError(HybridRayError):
    """The sweep's checkpoints would not fit the storage path's free space."""

    exit_code = 2


@dataclass(frozen=True)
class ResourcePlan:
    """How one run (or one trial of a sweep) sits on the cluster: its Train workers and what each holds, everything
    the run holds while it runs, and how many such runs go at once."""

    num_workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    holds: dict[str, float]  # CPU and GPU of the whole run (a trial: with its own share and host memory)
    concurrent: int = 1  # a sweep's trials at a time; a single run is one

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    @property
    def worker_resources(self) -> dict[str, float]:
        """Ray resources of one Train worker (ScalingConfig's resources_per_worker)."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.gpus_per_worker else {})}

    def apply(self, spec: RunSpec) -> RunSpec:
        """`spec` with the GPUs this plan gives its workers, as its trial will train it."""
        return spec.with_overrides({"scale.gpus_per_worker": self.gpus_per_worker})


def plan(spec: RunSpec, have: dict[str, float], *, trial: bool = False, gpus_per_trial: float | None = None,
         max_concurrent: int | None = None) -> ResourcePlan:
    """The one place a run is sized: `spec` on a cluster of `have` (ray.cluster_resources()), as a run of its own or,
    with `trial`, as one trial of a sweep (--gpus-per-trial, --max-concurrent). Refuses, in one line, what the
    cluster cannot hold, instead of letting Ray wait forever for resources that do not exist."""
    workers, cpus = spec.scale.num_workers, spec.scale.cpus_per_worker
    cluster_gpus = have.get("GPU", 0.0)
    if trial:
        gpus_total = gpus_per_trial
        if gpus_total is None:
            gpus_total = (spec.scale.gpus_per_worker or 1.0) * workers if cluster_gpus else 0.0
        if gpus_total > cluster_gpus:
            raise SpecError(f"--gpus-per-trial {gpus_total:g} is more than the cluster's {cluster_gpus:g} GPU(s)")
        gpus = gpus_total / workers
    else:
        gpus = spec.scale.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if cluster_gpus >= workers else 0.0
        gpus_total = workers * gpus
    if gpus > 0 and cluster_gpus < workers * gpus:
        raise ClusterError(f"asked for {workers} worker(s) x {gpus:g} GPU but the cluster has {cluster_gpus:g} GPU(s)"
                           + ("; drop --gpus-per-worker to train on CPUs" if cluster_gpus == 0 else ""))
    if have.get("CPU", 0.0) < workers * cpus:
        raise ClusterError(f"asked for {workers} worker(s) x {cpus:g} CPU but the cluster has "
                           f"{have.get('CPU', 0.0):g} CPU(s)")
    if spec.scale.backend == "fla" and not gpus:
        raise SpecError("--backend fla needs GPU workers (FLA's Triton kernels do not run on CPUs); "
                        "use --backend torch or --gpus-per-worker 1")
    if not trial:
        return ResourcePlan(workers, cpus, gpus, {"CPU": workers * cpus, "GPU": gpus_total})
    return ResourcePlan(workers, cpus, gpus, trial_footprint(spec, gpus_total),
                        concurrency(spec, gpus_total, have, max_concurrent))


def trial_footprint(spec: RunSpec, gpus_per_trial: float) -> dict[str, float]:
    """Everything one trial holds while it runs: its own CPU share plus its Train workers' CPUs and GPUs, and the
    host memory all of that takes."""
    workers = spec.scale.num_workers
    per_worker = WORKER_MEMORY + (0 if gpus_per_trial else 16 * count_params(spec.model)["total"])
    return {"CPU": TRIAL_CPU + workers * spec.scale.cpus_per_worker, "GPU": gpus_per_trial,
            "memory": TRIAL_MEMORY + workers * per_worker}


def trials_that_fit(footprint: dict[str, float], have: dict[str, float]) -> int:
    """How many trials of this footprint the cluster holds at once (0: not even one)."""
    counts = [math.floor(have.get(k, 0.0) / need + 1e-6) for k, need in footprint.items()
              if need > 0 and (k != "memory" or k in have)]
    return min(counts) if counts else 1


def concurrency(spec: RunSpec, gpus_per_trial: float, have: dict[str, float], asked: int | None) -> int:
    """Trials at a time: `asked` (--max-concurrent), else as many as fit; a trial that cannot fit at all is an error
    now rather than a worker group that retries its start forever."""
    footprint = trial_footprint(spec, gpus_per_trial)
    fit = trials_that_fit(footprint, have)
    if fit < 1:
        holds = " + ".join(f"{v:g} {k}" for k, v in footprint.items() if v > 0 and k != "memory")
        raise ClusterError(f"one trial holds {holds} ({spec.scale.num_workers} worker(s) x "
                           f"{spec.scale.cpus_per_worker:g} CPU + {TRIAL_CPU:g} CPU for the trial itself) but the "
                           f"cluster has {have.get('CPU', 0.0):g} CPU(s) and {have.get('GPU', 0.0):g} GPU(s); "
                           f"and {have.get('memory', 0.0) / 1e9:.1f} GB of memory for Ray; lower "
                           "--cpus-per-worker or --num-workers")
    return asked or fit


def checkpoint_bytes(spec: RunSpec) -> int:
    """One checkpoint of `spec`: fp32 model, AdamW state (two moments), RNG, loader and trainer state."""
    params = count_params(spec.model)["total"]
    records = spec.train.steps // spec.train.log_every + spec.train.steps // spec.train.eval_every
    return 12 * params + CHECKPOINT_OVERHEAD + RANK_BYTES * spec.scale.num_workers + HISTORY_BYTES * records


def model_dir_bytes(spec: RunSpec) -> int:
    """The finished run's model/ folder: fp32 weights and the tokenizer."""
    return 4 * count_params(spec.model)["total"] + TOKENIZER_BYTES


def checkpoints_kept(spec: RunSpec) -> int:
    """A run keeps at most `keep` checkpoints, and never more than it writes."""
    return min(spec.train.keep, math.ceil(spec.train.steps / spec.train.checkpoint_every))


@dataclass
class DiskPlan:
    trials: int
    concurrent: int
    checkpoint: int  # bytes of one checkpoint
    kept: int  # checkpoints a trial keeps
    model_dir: int
    need: int  # bytes at the sweep's peak
    free: int | None  # None: storage is a URI

    def describe(self) -> str:
        return (f"{self.trials} trial(s) x ({self.kept} checkpoint(s) of {gb(self.checkpoint)} + model/ "
                f"{gb(self.model_dir)}) + {self.concurrent} checkpoint(s) being written = {gb(self.need)}")


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def disk_plan(specs: list[RunSpec], seeds: int, concurrent: int, free: int | None) -> DiskPlan:
    """The most disk the sweep holds at once: every trial's kept checkpoints and model folder (the largest arm's
    sizes), plus one more checkpoint for each running trial (Ray writes the new one before it deletes the oldest)."""
    largest = max(specs, key=lambda s: count_params(s.model)["total"])
    trials = len(specs) * seeds
    checkpoint, model, kept = checkpoint_bytes(largest), model_dir_bytes(largest), checkpoints_kept(largest)
    need = trials * (kept * checkpoint + model) + min(concurrent, trials) * checkpoint
    return DiskPlan(trials, min(concurrent, trials), checkpoint, kept, model, need, free)


def free_bytes(path: str) -> int | None:
    """Free space of the file system that holds `path` (the nearest existing folder above it); None for URIs."""
    if storage.is_uri(path):
        return None
    folder = Path(path)
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def check_disk(specs: list[RunSpec], seeds: int, concurrent: int, path: str) -> DiskPlan:
    """Refuse (one line: the numbers and the flags that fit) a sweep whose checkpoints would fill the disk under
    `path`; for URI storage, warn with the size it will take."""
    plan = disk_plan(specs, seeds, concurrent, free_bytes(path))
    if plan.free is None:
        warnings.warn(f"the sweep will store about {gb(plan.need)} under {path} ({plan.describe()}); "
                      "check that the bucket has room")
        return plan
    if plan.need <= plan.free:
        return plan
    fits = []
    for keep in range(plan.kept - 1, 0, -1):
        smaller = [s.with_overrides({"train.keep": keep}) for s in specs]
        if disk_plan(smaller, seeds, concurrent, plan.free).need <= plan.free:
            every = math.ceil(specs[0].train.steps / keep)
            fits.append(f"--keep {keep} (or --checkpoint-every {every}, {keep} checkpoint(s) a run)")
            break
    hint = (f"it fits with {fits[0]}" if fits else
            "it does not fit even with --keep 1: free some space, sweep fewer arms or seeds, or use another --storage-path")
    raise DiskError(f"the sweep needs about {gb(plan.need)} on {path} ({plan.describe()}) but only {gb(plan.free)} "
                    f"is free; {hint}")
