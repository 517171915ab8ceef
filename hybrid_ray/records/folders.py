"""Run folders: what their files hold (results.json in strict JSON, spec.yaml), listing and removing runs. Where
each file lies is hybrid_ray/layout.py's (RunLayout).

    spec.yaml            what the run is (relaunching the same name must not change it once a checkpoint exists)
    checkpoint_*/        everything that reads or writes one is train/checkpoint.py
    results.json         spec, parameters, metric history, best/final validation, tokens, time, versions
    launches.json        how many launches trained (interrupted ones too; results.json's `launches` copies it)
    curves.png, tensorboard/, model/ (a Hugging Face-style folder), diverged.json (when the loss stopped being finite)
"""

from __future__ import annotations

import json
import math
import shlex
import warnings
from dataclasses import dataclass
from typing import Any

import yaml

from hybrid_ray import storage
from hybrid_ray.errors import HybridRayError, SpecError, first_line, suggest
from hybrid_ray.layout import SweepLayout, RunLayout, checkpoint_order, is_checkpoint, step_of
from hybrid_ray.spec import RunSpec

# Settings that may change between launches of one run (hardware, cadence); everything else defines the run.
MUTABLE = {"storage_path", "scale", "train.eval_every", "train.log_every", "train.checkpoint_every", "train.keep",
           "train.micro_batch_size", "train.compile", "train.eval_tokens", "data.cache_dir"}


def finite(value: Any) -> Any:
    """The same structure with NaN and infinities replaced by None, so that it is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Strict JSON (no NaN/Infinity, which strict parsers reject); non-JSON values become strings."""
    return json.dumps(finite(value), indent=2, default=str, allow_nan=False)


def read_json(path: str) -> dict[str, Any]:
    """A JSON object file hybrid-ray wrote (results.json, sweep.json, ...); a damaged one is one HybridRayError."""
    try:
        value = json.loads(storage.read_bytes(path))
    except ValueError as e:
        raise HybridRayError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise HybridRayError(f"{path} is damaged: a JSON object is needed, got {type(value).__name__}")
    return value


def read_results(run: RunLayout) -> dict[str, Any] | None:
    path = run.results
    return read_json(path) if storage.exists(path) else None


def read_spec(run: RunLayout) -> dict[str, Any]:
    """A run's spec.yaml as a mapping; a damaged file is one HybridRayError naming it."""
    path = run.spec
    try:
        spec = yaml.safe_load(storage.read_bytes(path))
    except yaml.YAMLError as e:
        raise HybridRayError(f"{path} is damaged: {first_line(e)}") from e
    if not isinstance(spec, dict):
        raise HybridRayError(f"{path} is damaged: a mapping is needed, got {type(spec).__name__}")
    return spec


def set_aside_damaged(run: RunLayout) -> list[str]:
    """Move results.json and launches.json aside (as `.damaged`) when they cannot be read (a full disk, a hand edit),
    with a warning: every launch writes them again, so the run resumes instead of failing once it has trained (or a
    sweep at its end). Returns where they went."""
    moved = []
    for path, lost in ((run.results, "the run's wall time"), (run.launches, "the count of launches")):
        try:
            if storage.exists(path):
                read_json(path)
        except HybridRayError as e:
            moved.append(storage.move_aside(path))
            warnings.warn(f"{e}; kept as {moved[-1]}: the run goes on and writes it again ({lost} starts over)")
    return moved


def write_results(run: RunLayout, results: dict[str, Any]) -> None:
    storage.write_bytes(run.results, dumps(results).encode())


def launch_count(run: RunLayout) -> int:
    """Launches of a run that trained (see count_launch); runs from before launches.json carry it in results.json."""
    if storage.exists(run.launches):
        return int(read_json(run.launches).get("launches", 0))
    return int((read_results(run) or {}).get("launches", 0))


def count_launch(run: RunLayout) -> int:
    """Record one more launch that trained. Kept beside results.json because an interrupted launch writes no results
    but still counts."""
    count = launch_count(run) + 1
    storage.write_bytes(run.launches, dumps({"launches": count}).encode())
    return count


def list_checkpoints(run: RunLayout) -> list[str]:
    """The run's checkpoint folder names, oldest first."""
    return sorted((n for n in storage.list_dirs(run.dir) if is_checkpoint(n)), key=checkpoint_order)


def newest_step(run: RunLayout) -> int | None:
    """The step of a run's newest checkpoint folder, good or not (None when it has none)."""
    names = list_checkpoints(run)
    return step_of(names[-1]) if names else None


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        out.update(_flatten(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return out


def check_same_run(previous: dict, spec: RunSpec, spec_path: str) -> None:
    """Relaunching a run name must not silently change what the run is (`spec_path`: the run's spec.yaml)."""
    old, new = _flatten(RunSpec.from_dict(previous).to_dict()), _flatten(spec.to_dict())
    for key in sorted(set(old) | set(new)):
        if any(key == m or key.startswith(m + ".") for m in MUTABLE):
            continue
        if old.get(key) != new.get(key):
            raise SpecError(
                f"run {spec.name!r} already exists with {key}={old.get(key)!r} (now {new.get(key)!r}); relaunch "
                f"it unchanged (--config {spec_path} repeats its spec) to resume it, or with --extend-steps to train "
                "it longer, or pick a new --name"
            )


def claim(run: RunLayout, spec: RunSpec) -> bool:
    """Record the spec of a new run, or check a relaunch against it. A run with no checkpoint yet (it failed before
    its first) takes the new settings. Returns True when the run already has checkpoints to resume from."""
    spec_path = run.spec
    has_checkpoints = bool(list_checkpoints(run))
    if storage.exists(spec_path) and has_checkpoints:
        try:
            previous = read_spec(run)
        except HybridRayError as e:
            results = run.results
            how = f"--config {results} (its spec)" if storage.exists(results) else "the arguments that started it"
            raise HybridRayError(f"{e}; to resume the run from its checkpoints, move that file aside and relaunch with "
                                 f"{how}") from e
        check_same_run(previous, spec, spec_path)
    else:
        storage.write_bytes(spec_path, spec.to_yaml().encode())
    return has_checkpoints


@dataclass
class RunInfo:
    """One line of `hybrid-ray runs list`."""

    name: str
    variant: str | None
    status: str  # finished | stopped | diverged | running or interrupted | not started
    step: int | None
    total_steps: int | None
    best_val_loss: float | None
    path: str
    problem: str | None = None  # why a damaged run's spec.yaml or results.json could not be read
    attention: str | None = None  # the attention layout, e.g. `attn17% [5,11]` (what names a run without a variant)
    diverged_at: int | None = None  # the step its loss stopped being finite (`step`: its last good checkpoint's)


def layout_label(model: dict[str, Any]) -> str | None:
    """A spec's attention share and layers as `runs list` shows them where no variant names the run (a trial of a
    ratio sweep over shares, an --attention-ratio run): `attn17% [5,11]`, `attn83% [1-8,10,11]`, `attn0%`."""
    layers, depth = model.get("attn_layers"), model.get("num_layers")
    if not isinstance(layers, list) or not isinstance(depth, int) or depth < 1:
        return None
    share = f"attn{round(100 * len(layers) / depth)}%"
    if not layers or len(layers) == depth:
        return share
    spans: list[list[int]] = []
    for layer in sorted(layers):
        if spans and layer == spans[-1][-1] + 1:
            spans[-1].append(layer)
        else:
            spans.append([layer])
    parts = [f"{s[0]}-{s[-1]}" if len(s) > 2 else ",".join(map(str, s)) for s in spans]
    return f"{share} [{','.join(parts)}]"


def run_info(run: RunLayout, name: str) -> RunInfo:
    """A run's line; a run whose files are damaged is still listed (status 'damaged', `problem` says why)."""
    try:
        return _read_info(run, name)
    except HybridRayError as e:
        return RunInfo(name, None, "damaged", None, None, None, run.dir, problem=str(e))


def _read_info(run: RunLayout, name: str) -> RunInfo:
    results = read_results(run)
    if results is not None:
        best = (results.get("best") or {}).get("val_loss")
        spec = results.get("spec") or {}
        diverged = results.get("diverged") if isinstance(results.get("diverged"), dict) else {}
        return RunInfo(name, spec.get("variant"), results.get("status", "?"), results.get("step"),
                       results.get("total_steps"), best, run.dir, attention=layout_label(spec.get("model") or {}),
                       diverged_at=diverged.get("step"))
    spec = read_spec(run)
    step = newest_step(run)
    status = "not started" if step is None else "running or interrupted"
    return RunInfo(name, spec.get("variant"), status, step, spec.get("train", {}).get("steps"), None, run.dir,
                   attention=layout_label(spec.get("model") or {}))


def run_dirs(storage_path: str) -> dict[str, str]:
    """Every run folder under a storage path (folders holding a spec.yaml) by name, read no further; a sweep's trials
    are named `<sweep>/<trial>`."""
    root = storage.normalize(storage_path)
    found = {}
    for name in storage.list_dirs(root):
        run = RunLayout.named(root, name)
        if storage.exists(run.spec):
            found[name] = run.dir
            continue
        sweep = SweepLayout(root, name)
        trials = {t: sweep.trial(t) for t in storage.list_dirs(sweep.trials)}
        found |= {f"{name}/{t}": trial.dir for t, trial in trials.items() if storage.exists(trial.spec)}
    return found


def list_runs(storage_path: str) -> list[RunInfo]:
    """Every run under a storage path, by name (see run_dirs)."""
    return [run_info(RunLayout(path), name) for name, path in run_dirs(storage_path).items()]


def rm_command(storage_path: str, name: str) -> str:
    """The `hybrid-ray runs rm` command that removes exactly this run (its --storage-path unless the default)."""
    command = f"hybrid-ray runs rm {shlex.quote(name)}"
    if storage.normalize(storage_path) != storage.normalize(RunSpec.storage_path):
        command += f" --storage-path {shlex.quote(storage_path)}"
    return command


def find_run(storage_path: str, name: str) -> str:
    """The folder of run `name` (a sweep's trial: `<sweep>/<trial>`) under `storage_path`; one line naming the
    nearest names when there is none."""
    root = storage.normalize(storage_path)
    runs = run_dirs(root)
    if name not in runs:
        raise HybridRayError(f"no run {name!r} under {root}{suggest(name, runs)}")
    return runs[name]


def remove_run(storage_path: str, name: str) -> str:
    """Delete a run's folder (checkpoints, results, model), also a damaged one's; returns its path."""
    path = find_run(storage_path, name)
    storage.remove_dir(path)
    return path

