"""The measured speed of earlier runs under a storage path (their results.json), and the GPU-hours a sweep's trials
will take at it: the line `sweep --dry-run` prints for each sweep or stage (sweep/plan.py, sweep/study.py)."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from hybrid_ray import storage
from hybrid_ray.layout import RunLayout, StudyLayout, SweepLayout
from hybrid_ray.records import folders
from hybrid_ray.spec import RunSpec

# What torch.cuda.get_device_name calls a GPU (NVIDIA's and ROCm's cards); a CPU worker records platform.processor()
# ("x86_64", "arm", ...) or "cpu". A name this does not know only leaves its runs unmeasured, never counts a CPU.
GPU_NAME = re.compile(r"nvidia|tesla|geforce|quadro|titan|radeon|instinct", re.IGNORECASE)


# What `auto` is on a GPU worker (model/build.py resolve_backend, train/parallelize.py resolve_strategy,
# model/precision.py): every run measured here and every trial estimated trains on one, so `auto` and its choice match.
ON_GPU = {"backend": "fla", "strategy": "fsdp", "precision": "bf16"}


def speed_key(spec: RunSpec) -> str:
    """What sets a trial's speed: its model (every field), batch, micro batch, sequence length, workers, strategy,
    model backend, and the kernel choices of its step (compile, precision, conv backend, loss kernel); never its
    name, seed, learning rate, steps, storage path or GPU share (GPU-seconds a step do not depend on the share)."""
    train, scale = spec.train, spec.scale
    chosen = {"backend": scale.backend, "strategy": scale.strategy, "precision": train.precision}
    return json.dumps({"model": dataclasses.asdict(spec.model), "batch_size": train.batch_size,
                       "micro_batch_size": spec.micro_batch_size, "seq_len": spec.data.seq_len,
                       "num_workers": scale.num_workers, "compile": train.compile, "conv_backend": train.conv_backend,
                       "loss_kernel": train.loss_kernel,
                       **{k: ON_GPU[k] if v == "auto" else v for k, v in chosen.items()}}, sort_keys=True)


@dataclass(frozen=True)
class Measured:
    """One run's measurement on one kind of GPU: GPU-seconds over the steps it trained, and GPU-seconds of each of its
    launches outside them."""

    run: str  # its folder
    device: str
    step_seconds: float  # GPU-seconds of its training clock (train_seconds x GPU share)
    steps: int
    launch_seconds: float | None  # GPU-seconds a launch besides its steps; None: a run from before train_seconds
    eval_seconds: float | None = None  # GPU-seconds an evaluation; None: a run from before eval_seconds (in launch)


@dataclass(frozen=True)
class Speed:
    """An arm's measured speed on one kind of GPU: GPU-seconds a step and GPU-seconds a trial launch."""

    step: float
    launch: float
    evaluation: float = 0.0  # GPU-seconds an evaluation; 0: unmeasured, the measured runs' evaluations are in `launch`

    def seconds(self, trials: int, steps: int, evaluations: int = 0) -> float:
        return trials * (self.launch + steps * self.step + evaluations * self.evaluation)


def measure(results: dict[str, Any], run: str) -> tuple[str, Measured] | None:
    """A results.json's (speed key, measurement), or None when it says nothing of a GPU's speed: a CPU run, a run
    that trained no step, a diverged run (its step is its last checkpoint's, before the steps its wall time counts)."""
    device = str((results.get("versions") or {}).get("device") or "")
    steps, wall = results.get("step"), results.get("wall_seconds")
    if (not GPU_NAME.search(device) or results.get("status") == "diverged" or not isinstance(steps, int)
            or steps <= 0 or not isinstance(wall, (int, float)) or wall <= 0):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec = RunSpec.from_dict(results.get("spec"))
    except Exception:  # an older or damaged spec: this run is not measured
        return None
    per_worker = spec.scale.gpus_per_worker
    share = spec.scale.num_workers * (1.0 if per_worker is None else per_worker)  # None: one GPU each on a GPU node
    if share <= 0:
        return None
    # Two parts, since a short run's wall time is mostly its launch: the training clock (train_seconds: the steps but
    # each launch's first, which is compile_seconds), a cost per step; and the rest of the wall time (every launch's,
    # summed by finalize), a cost per launch: Ray Train's worker group, model, data, the first step's compile,
    # evaluations and checkpoints, the model's export. A trial holds its GPU share all along, so both count. Per step
    # it trained, so a trial ASHA stopped measures the same speed as one that finished.
    train = results.get("train_seconds")
    if not isinstance(train, (int, float)) or train <= 0:
        # A results.json from before train_seconds: its wall time a step, start-up and all (an estimate too high for
        # longer trials than it ran), and no launch part.
        return speed_key(spec), Measured(run, device, wall * share, steps, None)
    launches = results.get("launches")
    launches = max(launches, 1) if isinstance(launches, int) else 1
    # evaluations apart (eval_seconds, each one's GPU-seconds), since a sweep's evaluation cadence is its own; a run
    # from before eval_seconds leaves its evaluations in the launch part, at its own cadence
    evals = results.get("eval_seconds")
    count = sum("val_loss" in record for record in results.get("history") or [])
    per_eval = evals * share / count if isinstance(evals, (int, float)) and evals > 0 and count else None
    outside = wall - train - (evals if per_eval is not None else 0.0)
    return speed_key(spec), Measured(run, device, train * share, steps, max(outside, 0.0) * share / launches, per_eval)


def result_runs(storage_path: str) -> Iterator[RunLayout]:
    """Every run folder under a storage path that may hold a results.json: runs, sweeps' trials, and the trials of a
    --tune-lr study's stages."""
    root = storage.normalize(storage_path)
    for name in storage.list_dirs(root):
        if name.startswith("."):  # .data/, .kernels/
            continue
        yield RunLayout.named(root, name)
        study = StudyLayout(root, name)
        for sweep in (SweepLayout(root, name), study.lr_search, study.lr_extension, study.comparison):
            for trial in storage.list_dirs(sweep.trials):
                yield sweep.trial(trial)


@dataclass
class Speeds:
    """The GPU measurements under a storage path, by speed key."""

    storage_path: str
    by_key: dict[str, list[Measured]] = field(default_factory=dict)

    @classmethod
    def read(cls, storage_path: str) -> Speeds:
        """Every measured run under `storage_path` (one that cannot be read is passed over: a dry run refuses nothing
        for it)."""
        speeds = cls(storage.normalize(storage_path))
        try:
            for run in result_runs(storage_path):
                try:
                    results = folders.read_results(run)
                except Exception:
                    continue
                found = measure(results, run.dir) if results else None
                if found:
                    speeds.by_key.setdefault(found[0], []).append(found[1])
        except OSError:  # storage that cannot be listed (a bucket out of reach): what was read so far
            pass
        return speeds

    def devices(self, spec: RunSpec) -> dict[str, Speed]:
        """The measured speed of `spec` on each device it was measured on: a step's GPU-seconds pooled over its runs
        there (total seconds over total steps, so a long run weighs more than a short one), a launch's their mean.
        Runs from before train_seconds count only where no later run measured the arm on that device."""
        by_device: dict[str, list[Measured]] = {}
        for m in self.by_key.get(speed_key(spec), []):
            by_device.setdefault(m.device, []).append(m)
        speeds = {}
        for device, runs in by_device.items():
            timed = [m for m in runs if m.launch_seconds is not None]
            runs = timed or runs
            launch = sum(m.launch_seconds for m in timed) / len(timed) if timed else 0.0
            evaluated = [m.eval_seconds for m in timed if m.eval_seconds is not None]
            evaluation = sum(evaluated) / len(evaluated) if evaluated else 0.0
            speeds[device] = Speed(sum(m.step_seconds for m in runs) / sum(m.steps for m in runs), launch, evaluation)
        return speeds


def hours_text(hours: float) -> str:
    return f"{hours:.1f}" if hours >= 0.95 else f"{hours:.2g}"


@dataclass(frozen=True)
class GpuHours:
    """The GPU-hours of a sweep's trials at their arms' measured speed."""

    arms: int
    measured: int  # arms with a measured speed
    trials: int  # trials of the measured arms
    trial_steps: tuple[int, ...]  # the steps of each measured arm's trials
    seconds: float  # GPU-seconds of the measured arms' trials
    devices: dict[str, int]  # the GPUs the speeds were measured on: arms each
    storage_path: str
    at_most: bool = False  # the full budget, which a scheduler's stops make shorter
    launch_seconds: float = 0.0  # of `seconds`, the trials' launches (start-up, compile, first step, end)

    @property
    def complete(self) -> bool:
        return self.arms > 0 and self.measured == self.arms

    @property
    def hours(self) -> float:
        return self.seconds / 3600

    def line(self) -> str:
        """`GPU-hours: about 3.1 (26 trials x 80 steps at the speed measured on ... for 13 of 13 arms; 0.42 of it
        trial start-up and end)`, the measured arms' hours and how many are not measured yet, or `not known`."""
        if not self.measured:
            return (f"GPU-hours: not known (no run of these arms has been measured on a GPU under "
                    f"{self.storage_path})")
        steps = set(self.trial_steps)
        how = (f"{self.trials} trials x {steps.pop()} steps" if len(steps) == 1 else
               f"{self.trials} trials, {sum(self.trial_steps)} trial-steps")
        on = (next(iter(self.devices)) if len(self.devices) == 1 else
              ", ".join(f"{d} ({n} arm(s))" for d, n in self.devices.items()))
        size = f"{'at most about' if self.at_most else 'about'} {hours_text(self.hours)}"
        launches = (f"; {hours_text(self.launch_seconds / 3600)} of it trial start-up and end" if self.launch_seconds
                    else "")
        if self.complete:
            return (f"GPU-hours: {size} ({how} at the speed measured on {on} for {self.measured} of {self.arms} "
                    f"arms{launches})")
        return (f"GPU-hours: {size} for the {self.measured} measured arm(s) ({how} at the speed measured on {on}"
                f"{launches}); {self.arms - self.measured} arm(s) not measured yet")


def evaluations(spec: RunSpec) -> int:
    """The evaluations a run of `spec` makes: every `eval_every` steps and at its last (train/evaluate.py)."""
    every, steps = spec.train.eval_every, spec.train.steps
    return steps // every + (1 if steps % every else 0)


def estimate(specs: Sequence[RunSpec], seeds: int, speeds: Speeds, *, at_most: bool = False) -> GpuHours:
    """The GPU-hours of `seeds` trials of each arm (`specs`: their specs, each to its own steps) at the speeds
    measured under the storage path: trials x (GPU-seconds a launch + steps x GPU-seconds a step + its evaluations x
    GPU-seconds an evaluation). Where an
    arm was measured on several GPUs, the GPU that measured most of the arms is used, so one sweep's hours are of one
    kind of GPU where they can be."""
    found = [speeds.devices(spec) for spec in specs]
    coverage: dict[str, int] = {}
    for devices in found:
        for device in devices:
            coverage[device] = coverage.get(device, 0) + 1
    preferred = sorted(coverage, key=lambda d: (-coverage[d], d))
    seconds, launch_seconds, steps, used = 0.0, 0.0, [], {}
    for spec, devices in zip(specs, found):
        device = next((d for d in preferred if d in devices), None)
        if device is None:
            continue
        seconds += devices[device].seconds(seeds, spec.train.steps, evaluations(spec))
        launch_seconds += devices[device].launch * seeds
        steps += [spec.train.steps] * seeds
        used[device] = used.get(device, 0) + 1
    used = dict(sorted(used.items(), key=lambda kv: (-kv[1], kv[0])))
    measured = sum(used.values())
    return GpuHours(len(specs), measured, measured * seeds, tuple(steps), seconds, used, speeds.storage_path,
                    at_most, launch_seconds)
