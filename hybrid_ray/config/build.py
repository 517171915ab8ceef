"""Job files (jobs/*.yaml): one YAML that Ray's own CLI and hybrid-ray both read.

    working_dir: .                 # runtime_env keys: `ray job submit --runtime-env jobs/X.yaml` reads these
    excludes: [...]
    env_vars: {...}
    hybrid_ray:                    # hybrid-ray reads this: `hybrid-ray train|sweep --config jobs/X.yaml`,
      command: sweep               #   `hybrid-ray submit jobs/X.yaml`
      variant: h100_hybrid_sparse  # resolved through the variants registry ...
      preset: tiny                 # ... at a preset's size (omit for the H100 base size)
      overrides: {train.steps: 100}  # only what differs, as dotted spec keys
      sweep: {grid: [attention_ratio], seeds: 2}   # for `command: sweep`: SweepOptions

Ray ignores the `hybrid_ray` key (no runtime_env plugin has that name). A plain run spec (the schema of
results.json's `spec`) works wherever a job file does.

The one spec builder: `build_spec` makes a run spec from the CLI's options or a job file's section, `sweep_base`
adds what a sweep's base spec changes by default, and `arm_spec` moves a spec along one grid axis (config/grid.py
expands a grid with it).
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrid_ray.config.variants import DEFAULT_PRESET, DEFAULT_VARIANT, ratio_spec, variant_spec, with_attention
from hybrid_ray.errors import SpecError, suggest
from hybrid_ray.spec import RunSpec, TrainSpec, read_yaml

KEY = "hybrid_ray"
COMMANDS = ("train", "sweep")
JOB_FIELDS = ("command", "name", "variant", "preset", "overrides", "sweep")
# runtime_env keys a job file may carry for `ray job submit --runtime-env` (Ray validates their values)
RUNTIME_ENV_KEYS = ("working_dir", "py_modules", "excludes", "env_vars", "pip", "uv", "conda", "config")


@dataclass
class JobSpec:
    command: str  # train | sweep
    spec: RunSpec
    sweep: dict[str, Any] = field(default_factory=dict)  # SweepOptions fields
    runtime_env: dict[str, Any] = field(default_factory=dict)


def from_dict(data: dict[str, Any], where: str = "job file") -> JobSpec:
    """A job file's content (the `hybrid_ray` section and the runtime_env keys beside it)."""
    job = data.get(KEY)
    if not isinstance(job, dict):
        raise SpecError(f"{where}: the {KEY!r} section must be a mapping")
    unknown = set(job) - set(JOB_FIELDS)
    if unknown:
        key = sorted(unknown)[0]
        raise SpecError(f"{where}: unknown key {KEY}.{key}{suggest(key, JOB_FIELDS)}")
    extra = set(data) - {KEY, *RUNTIME_ENV_KEYS}
    if extra:
        key = sorted(extra)[0]
        raise SpecError(f"{where}: unknown top-level key {key!r}{suggest(key, RUNTIME_ENV_KEYS)} (runtime_env keys "
                        f"or {KEY!r})")
    command = job.get("command", "train")
    if command not in COMMANDS:
        raise SpecError(f"{where}: {KEY}.command must be train or sweep, got {command!r}")
    overrides = job.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise SpecError(f"{where}: {KEY}.overrides must be a mapping of dotted spec keys")
    spec = build_spec(variant=job.get("variant") or DEFAULT_VARIANT, preset=job.get("preset"),
                      overrides={**overrides, **({"name": job["name"]} if job.get("name") else {})})
    sweep = job.get("sweep") or {}
    if command == "sweep" and not sweep.get("grid"):
        raise SpecError(f"{where}: a sweep job needs {KEY}.sweep.grid")
    return JobSpec(command, spec, dict(sweep), {k: data[k] for k in RUNTIME_ENV_KEYS if k in data})


def load(path: str | Path) -> JobSpec:
    """A job file, or a plain run spec file (YAML/JSON; a results.json works too) as a `train` job."""
    data = read_yaml(path)
    if isinstance(data, dict) and KEY in data:
        return from_dict(data, str(path))
    if isinstance(data, dict) and "spec" in data and "model" not in data:
        data = data["spec"]  # a run's results.json
    return JobSpec("train", RunSpec.from_dict(data))


def refuse_sweep_file(config: str | Path) -> None:
    """A sweep job file (`command: sweep`) given to `train` would train one run of its base spec, not the grid."""
    if load(config).command == "sweep":
        raise SpecError(f"{config} is a sweep job file (command: sweep), which `train` would run as one run of its "
                        f"base spec: run it with `hybrid-ray sweep --config {shlex.quote(str(config))}`")


def build_spec(*, config: str | Path | None = None, variant: str | None = None, preset: str | None = None,
               attention_ratio: float | None = None, overrides: dict[str, Any] | None = None) -> RunSpec:
    """A run spec: a spec or job file (`config`), else a named variant at a preset's size (neither given: the tiny
    default hybrid); then `attention_ratio`'s layers (ratio_spec); then dotted-key overrides, where None is not given
    and `model.vocab_size: auto` unpins the vocabulary (it follows the tokenizer)."""
    if config:
        if variant or preset:
            raise SpecError("--config already defines the run: drop --variant/--preset or the config file")
        spec = load(config).spec
    else:
        if variant is None and preset is None:
            preset = DEFAULT_PRESET
        spec = variant_spec(variant or DEFAULT_VARIANT, preset)
    if attention_ratio is not None:
        spec = ratio_spec(attention_ratio, spec)
    overrides = dict(overrides or {})
    if overrides.get("model.vocab_size") == "auto":
        del overrides["model.vocab_size"]
        spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, vocab_size=None))
    return spec.with_overrides(overrides)


# a warm-up over more of the run than this leaves the learning rate too little of the run to decay in, unsaid
WARMUP_SHARE = 0.5


def warmup_used(spec: RunSpec) -> tuple[RunSpec, str | None]:
    """The spec with the learning-rate warm-up it trains with, and a one-line warning when that warm-up takes more
    than half the run (None otherwise). The schedule (train/optim.py) cuts a warm-up longer than the run to the run,
    so the LR only rises: the spec then records the warm-up cut to the run's length (spec.yaml says what was used)."""
    steps, warmup = spec.train.steps, spec.optim.warmup_steps
    if warmup <= steps * WARMUP_SHARE:
        return spec, None
    if warmup < steps:
        return spec, (f"the {warmup}-step learning-rate warm-up takes {warmup / steps:.0%} of the {steps}-step run: "
                      f"the LR decays over its last {steps - warmup} step(s) only; --warmup-steps sets the warm-up")
    if warmup > steps:
        how = f"longer than the {steps}-step run: it is cut to the run's {steps} steps (spec.yaml records {steps})"
    else:
        how = f"as long as the {steps}-step run"
    return spec.with_overrides({"optim.warmup_steps": steps}), (
        f"the {warmup}-step learning-rate warm-up is {how}, so the LR only rises, to its peak at the last step, and "
        "never decays; --warmup-steps sets the warm-up")


def sweep_base(*, config: str | Path | None = None, variant: str | None = None, preset: str | None = None,
               attention_ratio: float | None = None, overrides: dict[str, Any] | None = None) -> RunSpec:
    """A sweep's base spec: build_spec's, named `sweep-<name>` unless the overrides or a config file name it, and
    keeping only each trial's newest checkpoint unless the overrides or the spec set train.keep."""
    overrides = dict(overrides or {})
    spec = build_spec(config=config, variant=variant, preset=preset, attention_ratio=attention_ratio,
                      overrides=overrides)
    if overrides.get("name") is None and not config:
        spec = spec.with_overrides({"name": f"sweep-{spec.name}"})
    if overrides.get("train.keep") is None and spec.train.keep == TrainSpec().keep:
        spec = spec.with_overrides({"train.keep": 1})  # a sweep's trials keep their newest checkpoint only
    return spec


def arm_spec(base: RunSpec, axis: str, value: Any) -> tuple[str, RunSpec]:
    """`base` moved along one grid axis (attention_ratio, variant, lr or a dotted spec field) to `value`, with the
    label that this step gives the arm's id (`attn17`, `h100_deltanet`, `lr0.001`, `batch_size32`)."""
    if axis in ("attention_ratio", "variant"):
        return with_attention(base, value, variant_lr=axis == "variant")
    if axis == "lr":
        return f"lr{value:g}", base.with_overrides({"optim.lr": value})
    return f"{axis.rsplit('.', 1)[-1]}{value}", base.with_overrides({axis: value})
