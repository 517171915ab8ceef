"""A sweep's one plan, the same for a launch, a relaunch and --dry-run: each arm's resource plan (train/plan.py) on
the cluster, trials at once, and the disk its trials take against the free space of the storage path, from what its
trials already hold (a relaunch needs only what remains to be written)."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid_ray import cluster, storage
from hybrid_ray.config.build import warmup_used
from hybrid_ray.config.grid import Arm, expand, match_params, parse_grid
from hybrid_ray.errors import HybridRayError, SpecError
from hybrid_ray.layout import SweepLayout
from hybrid_ray.model import count_params
from hybrid_ray.records.speeds import GpuHours, Speeds, estimate
from hybrid_ray.spec import RunSpec
from hybrid_ray.sweep.asha import asha_line, grace_period
from hybrid_ray.sweep.options import SweepOptions
from hybrid_ray.sweep.status import trial_name
from hybrid_ray.train.plan import ResourcePlan, gb, gpu_memory_bytes, kernel_shape, plan

# --- disk ---------------------------------------------------------------------------------------------------------
# Bytes of one checkpoint beyond 12 per parameter (fp32 weights + AdamW's two fp32 moments): per-tensor pickle
# records of optimizer.pt, RNG states (~16 KB a rank), manifests and config. Measured 50-83 KB on tiny models
# (tests/test_py holds the rule against a real checkpoint); the history in trainer_state.json grows with
# the run, HISTORY_BYTES a record.
CHECKPOINT_OVERHEAD = 256 * 1024


RANK_BYTES = 32 * 1024


HISTORY_BYTES = 200


# model/ holds config.json, the fp32 weights and the tokenizer's files (Tokenizer.save): the byte tokenizer writes
# 5.6 KB; a Hugging Face tokenizer's save_pretrained writes tokenizer.json, vocab and merges, about 60 bytes a token
# (GPT-2's 50257: 3.0 MB) when its folder is not at hand to measure.
MODEL_CONFIG_BYTES = 16 * 1024


BYTE_TOKENIZER_BYTES = 16 * 1024


# What an ended trial that keeps only its records holds: spec.yaml, results.json with its history, logs, Ray's
# record (tens of KB on the tiny preset; a long run's history and event files grow it).
RECORDS_BYTES = 1024 * 1024


TOKENIZER_BYTES_PER_TOKEN = 64


TOKENIZER_FILES = ("token", "vocab", "merges", "special", "added", ".model", ".tiktoken")


class DiskError(HybridRayError):
    """The sweep's checkpoints would not fit the storage path's free space."""

    exit_code = 2


def checkpoint_bytes(spec: RunSpec) -> int:
    """One checkpoint of `spec`: fp32 model, AdamW state (two moments), RNG, loader and trainer state."""
    params = count_params(spec.model)["total"]
    records = spec.train.steps // spec.train.log_every + spec.train.steps // spec.train.eval_every
    return 12 * params + CHECKPOINT_OVERHEAD + RANK_BYTES * spec.scale.num_workers + HISTORY_BYTES * records


def weights_checkpoint_bytes(spec: RunSpec) -> int:
    """A checkpoint without its optimizer state (checkpoint.prune: what an ended trial keeps)."""
    return checkpoint_bytes(spec) - 8 * count_params(spec.model)["total"]


def tokenizer_bytes(spec: RunSpec) -> int:
    """What the tokenizer's files take in model/: the byte tokenizer's, a local tokenizer's files as they are, else an
    estimate from the vocabulary."""
    name = spec.data.tokenizer
    if name == "byte":
        return BYTE_TOKENIZER_BYTES
    path = Path(name).expanduser()
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and any(k in p.name.lower() for k in TOKENIZER_FILES)]
        if files:
            return sum(p.stat().st_size for p in files)
    return TOKENIZER_BYTES_PER_TOKEN * (spec.model.vocab_size or 0) + BYTE_TOKENIZER_BYTES


def model_dir_bytes(spec: RunSpec) -> int:
    """The finished run's model/ folder: config, fp32 weights and the tokenizer."""
    return 4 * count_params(spec.model)["total"] + MODEL_CONFIG_BYTES + tokenizer_bytes(spec)


def checkpoints_kept(spec: RunSpec) -> int:
    """A run keeps at most `keep` checkpoints, and never more than it writes."""
    return min(spec.train.keep, math.ceil(spec.train.steps / spec.train.checkpoint_every))


@dataclass(frozen=True)
class TrialDisk:
    """The disk one trial of `spec` takes."""

    checkpoint: int  # one checkpoint with its optimizer state
    kept: int  # checkpoints it keeps while it runs
    model_dir: int
    ended: int  # what it keeps once it ended (train/checkpoint.py, settle)
    peak: int  # the most it holds while it runs: its kept checkpoints, one more being written, model/ at its end


def trial_disk(spec: RunSpec, keeps: str = "weights") -> TrialDisk:
    """The disk one trial takes: an ended one what `keeps` says (train/checkpoint.py's ENDED_KEEPS); a running one
    its kept checkpoints, one more while Ray writes the next before it deletes the oldest, and model/ at its end."""
    checkpoint, kept, model = checkpoint_bytes(spec), checkpoints_kept(spec), model_dir_bytes(spec)
    ended = {"checkpoints": kept * checkpoint + model, "weights": weights_checkpoint_bytes(spec) + model,
             "records": RECORDS_BYTES}[keeps]
    return TrialDisk(checkpoint, kept, model, ended, kept * checkpoint + checkpoint + model)


@dataclass
class DiskPlan:
    trials: int
    concurrent: int  # trials running at the sweep's peak
    ended_on_disk: int  # trials that ended already (they hold what they keep)
    sizes: TrialDisk  # the largest trial's sizes
    need: int  # bytes the sweep holds at its peak
    held: int  # bytes its trials hold now
    free: int | None  # None: storage is a URI

    @property
    def to_write(self) -> int:
        return max(0, self.need - self.held)

    def describe(self) -> str:
        s = self.sizes
        ended = f"{self.ended_on_disk} ended on disk, " if self.ended_on_disk else ""
        return (f"{self.trials} trial(s): {ended}each ending with {gb(s.ended)}, {self.concurrent} running at up to "
                f"{gb(s.peak)} ({s.kept} checkpoint(s) of {gb(s.checkpoint)} + 1 being written + model/ "
                f"{gb(s.model_dir)}); {gb(self.need)} at the peak, {gb(self.held)} held, {gb(self.to_write)} to write")


def disk_plan(trials: dict[str, RunSpec], concurrent: int, free: int | None,
              on_disk: dict[str, tuple[int, bool]] | None = None, keeps: str = "weights") -> DiskPlan:
    """The most disk the sweep's `trials` (name: spec) hold at once, given what each holds now (`on_disk`: name:
    (bytes, ended), trials_on_disk): every trial ends holding what it keeps (an ended one: what it holds), and at
    the peak the `concurrent` trials with the most to grow are running at their peak."""
    on_disk = on_disk or {}
    finals, growth = 0, []
    for name, spec in trials.items():
        size = trial_disk(spec, keeps)
        held, ended = on_disk.get(name, (0, False))
        if ended:
            finals += held
        else:
            finals += size.ended
            growth.append(max(size.peak, held) - size.ended)
    running = min(concurrent, len(growth))
    need = finals + sum(sorted(growth, reverse=True)[:running])
    held = sum(on_disk.get(name, (0, False))[0] for name in trials)
    largest = max(trials.values(), key=lambda s: count_params(s.model)["total"])
    ended_count = sum(1 for name in trials if on_disk.get(name, (0, False))[1])
    return DiskPlan(len(trials), running, ended_count, trial_disk(largest, keeps), need, held, free)


def free_bytes(path: str) -> int | None:
    """Free space of the file system that holds `path` (the nearest existing folder above it); None for URIs."""
    if storage.is_uri(path):
        return None
    folder = Path(path)
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def trials_on_disk(sweep: SweepLayout, trial_names: Sequence[str]) -> dict[str, tuple[int, bool]]:
    """What each trial of the sweep holds now in its run folder: (bytes, ended). A trial has ended when its
    results.json says it finished all its steps or diverged, or when every one of its checkpoints is weights only
    (only checkpoint.settle, on an ended trial, drops optimizer state); a trial ASHA stopped that was not settled yet
    counts as not ended (sized at its peak: never under). Trials without a folder are left out; URIs: {}."""
    if storage.is_uri(sweep.dir):
        return {}
    from hybrid_ray.records import folders  # (it reads spec files: only when there is a local folder to read)

    out = {}
    for name in trial_names:
        run = sweep.trial(name)
        folder = Path(run.dir)
        if not folder.is_dir():
            continue
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
        try:
            results = folders.read_results(run) or {}
        except Exception:  # a damaged results.json: the sweep sets it aside; its size is counted all the same
            results = {}
        finished = results.get("status") == "finished" and results.get("step", 0) >= results.get("total_steps", 1)
        finished = finished or results.get("status") == "diverged"  # a relaunch trains it no more
        checkpoints = folders.list_checkpoints(run)
        settled = bool(checkpoints) and not any(Path(run.optimizer(c)).exists() for c in checkpoints)
        settled = settled or (bool(results) and not checkpoints and not storage.exists(run.model))  # records only
        out[name] = (size, finished or settled)
    return out


def _fits(trials: dict[str, RunSpec], concurrent: int, free: int, on_disk: dict, keeps: str) -> bool:
    return disk_plan(trials, concurrent, free, on_disk, keeps).to_write <= free


def _what_fits(trials: dict[str, RunSpec], concurrent: int, free: int, on_disk: dict,
               keeps: str) -> list[str]:
    """The flags that make the sweep fit `free`, each alone (only ones that really do)."""
    fits = []
    kept = max(checkpoints_kept(s) for s in trials.values())
    for keep in range(kept - 1, 0, -1):
        smaller = {n: s.with_overrides({"train.keep": keep}) for n, s in trials.items()}
        if _fits(smaller, concurrent, free, on_disk, keeps):
            every = math.ceil(max(s.train.steps for s in trials.values()) / keep)
            fits.append(f"--keep {keep} (or --checkpoint-every {every})")
            break
    for fewer in range(concurrent - 1, 0, -1):
        if _fits(trials, fewer, free, on_disk, keeps):
            fits.append(f"--max-concurrent {fewer}")
            break
    if keeps == "checkpoints" and _fits(trials, concurrent, free, on_disk, "weights"):
        fits.append("no --keep-checkpoints")
    started = [n for n in trials if n in on_disk]
    rest = [n for n in trials if n not in on_disk]
    for count in range(len(rest) - 1, 0, -1):
        subset = {n: trials[n] for n in started + rest[:count]}
        if _fits(subset, concurrent, free, on_disk, keeps):
            fits.append(f"{len(subset)} trial(s) instead of {len(trials)} (fewer arms or --seeds)")
            break
    return fits


def check_disk(trials: dict[str, RunSpec], concurrent: int, path: str, *,
               on_disk: dict[str, tuple[int, bool]] | None = None, keeps: str = "weights",
               free: int | None = None) -> DiskPlan:
    """Refuse (one line: the numbers and the flags that make it fit) a sweep whose trials would fill the disk under
    `path`, counting only what remains to be written (a relaunch never needs the space its trials hold already); for
    URI storage, warn with the size it will take. `trials`: trial name -> spec; `on_disk`: trials_on_disk();
    `free`: the free bytes to plan against (default: the file system's under `path`; a dry run assumes one)."""
    on_disk = on_disk or {}
    plan = disk_plan(trials, concurrent, free if free is not None else free_bytes(path), on_disk, keeps)
    if plan.free is None:
        warnings.warn(f"the sweep will store about {gb(plan.need)} under {path} ({plan.describe()}); "
                      "check that the bucket has room")
        return plan
    if plan.to_write <= plan.free:
        return plan
    fits = _what_fits(trials, concurrent, plan.free, on_disk, keeps)
    tried = [lever for lever, ok in (("--keep 1", max(checkpoints_kept(s) for s in trials.values()) > 1),
                                     ("--max-concurrent 1", concurrent > 1),
                                     ("fewer trials", len([n for n in trials if n not in on_disk]) > 1)) if ok]
    hint = (f"it fits with {' or '.join(fits)}, or " if fits else
            f"it does not fit even with {' or '.join(tried)}: " if tried else "")
    raise DiskError(f"the sweep needs about {gb(plan.to_write)} more on {path} ({plan.describe()}) but only "
                    f"{gb(plan.free)} is free; {hint}free some space or use another --storage-path")


# --- the dry run ----------------------------------------------------------------------------------------------------

def describe_sweep(arms: Sequence[Any], plans: Sequence[ResourcePlan], disk: DiskPlan | None,
                   gpu_memory: int | None, gpus: float, seeds: int = 1) -> str:
    """What `hybrid-ray sweep --dry-run` prints: one line per arm (its id, attention layers, parameters, MLP width,
    GPU memory of one worker against its GPU share), the trials at once, the disk plan and the kernel shapes the
    sweep compiles. `arms`: grid.Arm (.id, .spec); `plans`: plan() of each arm; `gpus`: the cluster's GPUs."""
    header = ("arm", "attention layers", "params", "MLP", "GPU memory a worker", "GPU share")
    rows = []
    for arm, p in zip(arms, plans):
        m, spec = arm.spec.model, arm.spec
        layers = ",".join(map(str, m.attn_layers)) or "-"
        need = p.gpu_memory_need if p.gpu_memory_need is not None else gpu_memory_bytes(spec)
        room = f" of {gb(gpu_memory * min(p.gpus_per_worker, 1.0))}" if gpu_memory and p.gpus_per_worker else ""
        share = f"{p.gpus_per_worker:g} ({p.per_gpu} a GPU)" if p.gpus_per_worker else "CPU"
        memory = f"{gb(need)}{room} at {spec.micro_batch_size} x {spec.data.seq_len}" if p.gpus_per_worker else "-"
        rows.append((arm.id, layers, f"{count_params(m)['total'] / 1e6:.1f}M", str(m.intermediate_size), memory, share))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    concurrent = min((p.concurrent for p in plans), default=1)
    memory = f"{gb(gpu_memory)} each" if gpu_memory else "memory unknown: not checked"
    lines.append(f"trials: {len(arms)} arm(s) x {seeds} seed(s) = {len(arms) * seeds}, {concurrent} at a time on "
                 f"{gpus:g} GPU(s) ({memory})")
    if disk is not None:
        free = gb(disk.free) if disk.free is not None else "unknown (a URI)"
        lines.append(f"disk: need {gb(disk.need)} at the peak, {gb(disk.held)} held, {gb(disk.to_write)} to write, "
                     f"{free} free ({disk.describe()})")
    shapes = {kernel_shape(a.spec): a.spec.model for a in arms}
    mlps = sorted({m.intermediate_size for m in shapes.values()})
    gdn = sum("gdn" in m.layer_types() for m in shapes.values())
    attention = sum(bool(m.attn_layers) for m in shapes.values())
    lines.append(f"kernels: {len(shapes)} distinct shape(s) to compile: {len(mlps)} MLP width(s) "
                 f"({', '.join(map(str, mlps))}; FLA's SwiGLU kernels autotune per width), Gated DeltaNet in "
                 f"{gdn}, attention in {attention}; the rest is shared by arms "
                 f"of one hidden size")
    return "\n".join(lines)


def on_resolved_base(arms: list[Arm], base: RunSpec, options: SweepOptions) -> list[Arm]:
    """Arms expanded before check_locally, given what it resolved for the base: the normalized storage path and,
    where the arm does not set its own, the tokenizer's vocabulary (so --match-params counts the embeddings)."""
    arms = [dataclasses.replace(a, spec=dataclasses.replace(
        a.spec, storage_path=base.storage_path,
        model=a.spec.model if a.spec.model.vocab_size is not None else a.spec.model.with_vocab(base.model.vocab_size)))
        for a in arms]
    return match_params(arms, options.reference_arm) if options.match_params else arms


def with_warmup_used(arms: list[Arm]) -> tuple[list[Arm], list[str]]:
    """The arms with the learning-rate warm-up each trains with (config.build.warmup_used), and one warning line per
    distinct warning, naming its arms unless it is every arm's."""
    used, said = [], {}
    for arm in arms:
        spec, note = warmup_used(arm.spec)
        used.append(dataclasses.replace(arm, spec=spec))
        if note:
            said.setdefault(note, []).append(arm.id)
    return used, [note if len(ids) == len(arms) else f"arm(s) {', '.join(ids)}: {note}" for note, ids in said.items()]


@dataclass
class SweepPlan:
    """How a sweep sits on a cluster: its arms as their trials train them (GPU shares applied), each arm's resource
    plan, trials at once, and the disk it still needs; the same plan for a launch, a relaunch and --dry-run."""

    arms: list[Arm]
    plans: list[ResourcePlan]
    concurrent: int
    disk: DiskPlan
    gpu_memory: int | None
    gpus: float
    disk_bound: bool = False  # fewer trials at once than the cluster holds, because the disk holds no more

    def describe(self, options: SweepOptions) -> str:
        plans = [dataclasses.replace(p, concurrent=self.concurrent) for p in self.plans]
        text = describe_sweep(self.arms, plans, self.disk, self.gpu_memory, self.gpus, options.seeds)
        if self.disk_bound:
            text += (f"\n{self.concurrent} trial(s) at a time, not {min(p.concurrent for p in self.plans)}: the disk "
                     "holds no more (--max-concurrent sets it)")
        return text + (f"\n{asha_line(options, self.arms)}" if options.scheduler == "asha" else "")


def plan_sweep(arms: list[Arm], options: SweepOptions, have: dict[str, float], gpu_memory: int | None,
               sweep: SweepLayout, *, free: int | None = None, check: bool = True) -> SweepPlan:
    """Size every arm on a cluster of `have` (GPUs of `gpu_memory` bytes; None: unknown), then the disk from what the
    sweep's trials hold now (a relaunch needs only what remains to be written). `check`: refuse, in one line, a
    packing or a disk that cannot hold the sweep; `free`: the free bytes to plan against (default: the storage's)."""
    plans = [plan(arm.spec, have, trial=True, gpus_per_trial=options.gpus_per_trial,
                             max_concurrent=options.max_concurrent, gpu_memory=gpu_memory, label=arm.id)
             for arm in arms]
    arms = [dataclasses.replace(arm, spec=p.apply(arm.spec)) for arm, p in zip(arms, plans)]
    concurrent = min(p.concurrent for p in plans)  # the largest arm bounds it
    trials = {trial_name(a.id, seed): a.spec for a in arms for seed in range(options.seeds)}
    on_disk = trials_on_disk(sweep, list(trials))
    kwargs = {"on_disk": on_disk, "keeps": options.ended_keeps}
    free = free if free is not None else free_bytes(sweep.dir)
    fits = concurrent
    if options.max_concurrent is None and free is not None:  # the default runs no more at once than the disk holds
        while fits > 1 and disk_plan(trials, fits, free, **kwargs).to_write > free:
            fits -= 1
    if check:
        disk = check_disk(trials, fits, sweep.dir, free=free, **kwargs)
    else:
        disk = disk_plan(trials, fits, free, **kwargs)
    return SweepPlan(arms, plans, fits, disk, gpu_memory, have.get("GPU", 0.0), disk_bound=fits < concurrent)


@dataclass(frozen=True)
class Assumed:
    """The cluster a dry run plans for instead of the one at hand (None: what this machine or --address has)."""

    gpus: int | None = None
    gpu_memory_gb: float | None = None
    free_disk_gb: float | None = None
    cpus_per_gpu: int = 16  # a GPU node's cores per GPU (an H100 node: 16 a GPU)

    def __post_init__(self) -> None:
        if self.gpus is not None and self.gpus < 0:
            raise SpecError(f"--assume-gpus must be >= 0, got {self.gpus}")
        if self.gpu_memory_gb is not None and not self.gpu_memory_gb > 0:
            raise SpecError(f"--assume-gpu-memory must be > 0 GB, got {self.gpu_memory_gb:g}")
        if self.free_disk_gb is not None and not self.free_disk_gb >= 0:
            raise SpecError(f"--assume-free-disk must be >= 0 GB, got {self.free_disk_gb:g}")


def gpu_hours(planned: SweepPlan, options: SweepOptions, speeds: Speeds) -> GpuHours:
    """The GPU-hours of the planned sweep's trials at the speed measured of its arms (records/speeds.py); under ASHA
    the full budget, which its stops make shorter."""
    return estimate([a.spec for a in planned.arms], options.seeds, speeds, at_most=options.scheduler == "asha")


def dry_run(base: RunSpec, options: SweepOptions, *, address: str | None = None,
            assume: Assumed = Assumed(), arms: list[Arm] | None = None, speeds: Speeds | None = None) -> SweepPlan:
    """Print the sweep's plan without training (or tokenizing): arms, parameters, MLP widths, GPU memory per trial
    against its share, trials at once, disk, kernel shapes, the GPU-hours at the arms' measured speed; then refuse,
    in one line, what would be refused at launch. Plans for `assume` where given, else for the cluster at `address`
    (or $RAY_ADDRESS), else for this machine. `arms`: the sweep's arms as given instead of the grid's product
    (sweep/study.py's stages); `speeds`: the measured runs (default: those under the base's storage path)."""
    arms = arms if arms is not None else expand(base, parse_grid(options.grid))
    base = dataclasses.replace(base, storage_path=storage.normalize(base.storage_path))
    base = dataclasses.replace(base, model=base.model.with_vocab(_planned_vocab(base)))
    arms, notes = with_warmup_used(on_resolved_base(arms, base, options))
    if options.scheduler == "asha":
        grace_period(options, arms)
    for note in notes:
        warnings.warn(note)
    have, memory = _cluster_to_plan(address, assume)
    sweep = SweepLayout.of(base)
    free = int(assume.free_disk_gb * 1e9) if assume.free_disk_gb is not None else None
    planned = plan_sweep(arms, options, have, memory, sweep, free=free, check=False)
    speeds = speeds if speeds is not None else Speeds.read(base.storage_path)
    print(planned.describe(options), flush=True)
    print(gpu_hours(planned, options, speeds).line(), flush=True)
    plan_sweep(arms, options, have, memory, sweep, free=free)  # the launch's refusals, after the plan
    return planned


def _planned_vocab(spec: RunSpec) -> int:
    """The model vocabulary a launch would resolve, without tokenizing the corpus (a synthetic task is made, cheaply)."""
    if spec.model.vocab_size is not None:
        return spec.model.vocab_size
    from hybrid_ray import data as data_lib

    if spec.data.parsed.kind == "mqar":
        return data_lib.prepare(spec.data).model_vocab_size
    from hybrid_ray.data.tokenizer import get_tokenizer

    return -(-get_tokenizer(spec.data.tokenizer).vocab_size // 64) * 64


def _cluster_to_plan(address: str | None, assume: Assumed) -> tuple[dict[str, float], int | None]:
    """(Ray resources, GPU memory in bytes) of the cluster a dry run plans for."""
    if assume.gpus is not None:
        memory = int(assume.gpu_memory_gb * 1e9) if assume.gpu_memory_gb else None
        return {"CPU": float(max(1, assume.gpus) * assume.cpus_per_gpu), "GPU": float(assume.gpus)}, memory
    if address or cluster.address_from_env():
        cluster.connect(address)
        have = cluster.resources()
        memory = cluster.gpu_memory(have, local=cluster.node_count() == 1)
    else:  # this machine, as a local Ray would see it, without starting one
        cards = cluster.local_gpu_memory()
        have, memory = {"CPU": float(os.cpu_count() or 1), "GPU": float(len(cards))}, (min(cards) if cards else None)
    if assume.gpu_memory_gb:
        memory = int(assume.gpu_memory_gb * 1e9)
    return have, memory
