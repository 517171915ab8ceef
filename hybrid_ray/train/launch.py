"""train(): the driver side of a run — check, prepare data, fit a TorchTrainer, write results.

The same function serves the CLI, a Ray job (`ray job submit -- hybrid-ray train ...`) and a Tune trial (which
passes its TuneReportCallback); tests call it directly.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hybrid_ray import cluster, storage
from hybrid_ray import data as data_lib
from hybrid_ray.errors import HybridRayError, SpecError
from hybrid_ray.model import count_params
from hybrid_ray.report import plot_runs, summarize
from hybrid_ray.spec import RunSpec
from hybrid_ray.train import checkpoint as ckpt_lib
from hybrid_ray.train.loop import LaunchOptions, train_loop_per_worker

SPEC_FILE = "spec.yaml"
RESULTS_FILE = "results.json"
CURVES_FILE = "curves.png"
MODEL_DIR = "model"
# Settings that may change between launches of one run (hardware, cadence); everything else defines the run.
MUTABLE = {"storage_path", "scale", "train.eval_every", "train.log_every", "train.checkpoint_every", "train.keep",
           "train.micro_batch_size", "train.compile", "train.eval_batches", "data.cache_dir"}


class TrainingError(HybridRayError):
    """A run failed on its workers for a reason that is not a known user error."""


@dataclass
class TrainOutcome:
    run_dir: str
    results: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.results["status"] == "finished"


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        out.update(_flatten(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return out


def check_same_run(previous: dict, spec: RunSpec) -> None:
    """Relaunching a run name must not silently change what the run is."""
    old, new = _flatten(previous), _flatten(spec.to_dict())
    for key in sorted(set(old) | set(new)):
        if any(key == m or key.startswith(m + ".") for m in MUTABLE):
            continue
        if old.get(key) != new.get(key):
            raise SpecError(
                f"run {spec.name!r} already exists with {key}={old.get(key)!r} (now {new.get(key)!r}); "
                "relaunch it unchanged to resume, use --extend-steps to train longer, or pick a new --name"
            )


def resolve_vocab(spec: RunSpec, dataset: Any) -> RunSpec:
    """The model's vocabulary follows the tokenizer unless the spec pins a (larger) one."""
    vocab = spec.model.vocab_size
    if vocab is None:
        vocab = dataset.model_vocab_size
    elif vocab < dataset.vocab_size:
        raise SpecError(f"model.vocab_size {vocab} is smaller than the tokenizer's {dataset.vocab_size} tokens")
    return dataclasses.replace(spec, model=spec.model.with_vocab(vocab))


def absolute_source(spec: RunSpec) -> RunSpec:
    """Local data paths made absolute: workers may run from another directory (a Ray job's working_dir)."""
    source = spec.data.source
    if source == "stdlib" or source.startswith(("mqar", "hf:")) or "://" in source:
        return spec
    return dataclasses.replace(spec, data=dataclasses.replace(spec.data, source=str(Path(source).expanduser().absolute())))


def _root_cause(error: BaseException) -> BaseException:
    """The user-facing exception inside Ray's wrappers (TrainingFailedError -> worker error -> cause)."""
    failures = getattr(error, "worker_failures", None)
    candidates = list(failures.values()) if failures else [error]
    for candidate in candidates:
        seen = candidate
        while seen is not None:
            if isinstance(seen, HybridRayError):
                return seen
            seen = getattr(seen, "cause", None) or seen.__cause__
    return candidates[0]


def _scaling(spec: RunSpec) -> tuple[Any, bool]:
    from ray.train import ScalingConfig

    gpus = spec.scale.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if cluster.resources().get("GPU", 0) >= spec.scale.num_workers else 0.0
    cluster.check_resources(spec.scale.num_workers, spec.scale.cpus_per_worker, gpus)
    resources = {"CPU": spec.scale.cpus_per_worker}
    if gpus:
        resources["GPU"] = gpus
    return ScalingConfig(num_workers=spec.scale.num_workers, use_gpu=gpus > 0, resources_per_worker=resources), gpus > 0


def resume_checkpoint(run_dir: str) -> str | None:
    """The checkpoint Ray Train will resume from: the last one its snapshot registered (else the newest folder)."""
    snapshot = storage.join(run_dir, "checkpoint_manager_snapshot.json")
    try:
        registered = json.loads(storage.read_bytes(snapshot))["checkpoint_results"]
        if registered:
            return storage.join(run_dir, registered[-1]["checkpoint_dir_name"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    names = [n for n in storage.list_dirs(run_dir) if n.startswith("checkpoint_")]
    return storage.join(run_dir, names[-1]) if names else None


def train(
    spec: RunSpec,
    *,
    address: str | None = None,
    extend_steps: int = 0,
    until_step: int | None = None,
    callbacks: list | None = None,
    progress: bool = True,
) -> TrainOutcome:
    """Train (or resume, or extend) the run `spec.name` under `spec.storage_path` on a Ray cluster."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.v2.api.config import LoggingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if extend_steps < 0 or (until_step is not None and until_step < 1):
        raise SpecError("--extend-steps must be >= 0 and --until-step >= 1")
    started = time.time()
    root = storage.normalize(spec.storage_path)
    spec = absolute_source(dataclasses.replace(spec, storage_path=root))
    run_dir = storage.join(root, spec.name)
    storage.check_writable(root)

    where = cluster.connect(address)
    scaling, use_gpu = _scaling(spec)
    dataset = data_lib.prepare(spec.data, progress=progress)
    spec = resolve_vocab(spec, dataset)
    spec_path = storage.join(run_dir, SPEC_FILE)
    if storage.exists(spec_path):
        check_same_run(yaml.safe_load(storage.read_bytes(spec_path)), spec)
    else:
        storage.write_bytes(spec_path, spec.to_yaml().encode())
    previous = resume_checkpoint(run_dir)
    if previous and not storage.is_uri(previous):
        ckpt_lib.verify(previous)  # fail here with one line rather than in every worker
    epochs = dataset.epochs_for(spec.train.steps + extend_steps, seq_len=spec.data.seq_len, global_batch=spec.train.batch_size)
    if epochs > 1:
        warnings.warn(f"{spec.train.steps + extend_steps} steps will read the training data {epochs:.1f} times")
    if progress:
        print(f"training {spec.name} on {where}: {spec.scale.num_workers} worker(s), "
              f"{'GPU' if use_gpu else 'CPU'}, {count_params(spec.model)['total'] / 1e6:.1f}M parameters", flush=True)

    launch = LaunchOptions(
        extend_steps=extend_steps,
        until_step=until_step,
        tensorboard_dir=None if storage.is_uri(root) else storage.join(run_dir, "tensorboard"),
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec.to_dict(), "launch": dataclasses.asdict(launch)},
        scaling_config=scaling,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=spec.name,
            storage_path=root,
            failure_config=FailureConfig(max_failures=spec.scale.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.train.keep),
            callbacks=callbacks,
            logging_config=LoggingConfig(log_level="WARNING"),
            # Train's print patch tees our progress lines to the console twice; plain stdout reaches the driver once
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
    )
    try:
        trainer.fit()
    except Exception as e:
        cause = _root_cause(e)
        if isinstance(cause, HybridRayError):
            raise cause from e
        message = str(cause).strip().splitlines()
        raise TrainingError(f"training failed: {type(cause).__name__}: {message[-1] if message else ''}") from e
    # Ray's Result.checkpoint.path drops the URI scheme (s3://...), so read the run's snapshot instead; it also
    # names the latest checkpoint when a finished run was relaunched and reported nothing new
    return finalize(spec, run_dir, resume_checkpoint(run_dir), dataset, time.time() - started)


def finalize(spec: RunSpec, run_dir: str, checkpoint: str | None, dataset: Any, wall_s: float) -> TrainOutcome:
    """Write results.json, curves.png and the model folder from the latest checkpoint."""
    if checkpoint is None:
        raise TrainingError(f"run {spec.name} produced no checkpoint")
    with tempfile.TemporaryDirectory(prefix="hybrid-ray-final-") as tmp:
        local = checkpoint
        if storage.is_uri(checkpoint):
            local = str(Path(tmp, "checkpoint"))
            storage.copy_dir(checkpoint, local)
        state = json.loads(Path(local, ckpt_lib.STATE_FILE).read_text())
        model_dir = Path(tmp, MODEL_DIR)
        model_dir.mkdir()
        for name in ("config.json", "model.safetensors"):
            Path(model_dir, name).write_bytes(Path(local, name).read_bytes())
        dataset.tokenizer.save(model_dir)
        storage.copy_dir(str(model_dir), storage.join(run_dir, MODEL_DIR))

        previous = {}
        results_path = storage.join(run_dir, RESULTS_FILE)
        if storage.exists(results_path):
            previous = json.loads(storage.read_bytes(results_path))
        history = state["history"]
        results = {
            "name": spec.name,
            "status": "finished" if state["step"] >= state["total_steps"] else "stopped",
            "step": state["step"],
            "total_steps": state["total_steps"],
            "spec": spec.to_dict(),
            "params": count_params(spec.model),
            "layer_types": spec.model.layer_types(),
            "attention_layers": spec.model.attn_layers,
            "attention_ratio": spec.model.attention_ratio,
            **summarize(history),
            "tokens_seen": state["tokens_seen"],
            "train_seconds": state["train_seconds"],
            "wall_seconds": previous.get("wall_seconds", 0.0) + wall_s,
            "launches": previous.get("launches", 0) + 1,
            "versions": state["env"],
            "data": {k: dataset.manifest.get(k) for k in ("source", "tokenizer", "vocab_size", "splits") if k in dataset.manifest},
            "checkpoint": checkpoint,
            "model_dir": storage.join(run_dir, MODEL_DIR),
            "history": history,
        }
        storage.write_bytes(results_path, json.dumps(results, indent=2, default=str).encode())
        curves = Path(tmp, CURVES_FILE)
        plot_runs({spec.name: history}, str(curves), title=f"{spec.name} ({spec.variant or 'custom'})")
        storage.write_bytes(storage.join(run_dir, CURVES_FILE), curves.read_bytes())
    return TrainOutcome(run_dir=run_dir, results=results)
