"""train(): the driver side of a run — check everything locally, prepare data, fit a TorchTrainer, write results.

The same function serves the CLI, a Ray job (`ray job submit -- hybrid-ray train ...`) and a Tune trial (which
passes its TuneReportCallback); tests call it directly. Everything that can be checked without a cluster (spec,
storage, data, tokenizer, backend) is checked before Ray starts, so bad input fails in a second, not after Ray's.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import signal
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid_ray import cluster, ray_compat, storage
from hybrid_ray import data as data_lib
from hybrid_ray.config.build import warmup_used
from hybrid_ray.errors import HybridRayError, Interrupted, SpecError, first_line, root_cause
from hybrid_ray.layout import RunLayout, data_store, step_of
from hybrid_ray.model import count_params, flops_per_token
from hybrid_ray.model.build import check_backend
from hybrid_ray.records import folders
from hybrid_ray.records.report import plot_runs, summarize
from hybrid_ray.spec import RunSpec
from hybrid_ray.train import plan
from hybrid_ray.train.checkpoint import CheckpointManager, TrainerState, export_model, read_state
from hybrid_ray.train.loop import LaunchOptions, train_loop_per_worker
from hybrid_ray.train.rungs import RungConfig, stopped_at


class TrainingError(HybridRayError):
    """A run failed on its workers for a reason that is not a known user error."""


class DivergedError(TrainingError):
    """The loss (or gradient norm) stopped being finite; the run stopped there, keeping the checkpoints before."""


@dataclass
class TrainOutcome:
    run_dir: str
    results: dict[str, Any]
    already_done: bool = False  # the relaunch had nothing to train (and wrote nothing)

    @property
    def finished(self) -> bool:
        return self.results["status"] == "finished"


def resolve_vocab(spec: RunSpec, dataset: Any) -> RunSpec:
    """The model's vocabulary follows the tokenizer unless the spec pins a (larger) one."""
    vocab = spec.model.vocab_size
    if vocab is None:
        vocab = dataset.model_vocab_size
    elif vocab < dataset.vocab_size:
        raise SpecError(f"model.vocab_size {vocab} is smaller than the tokenizer's {dataset.vocab_size} tokens; "
                        "leave it unset (--vocab-size auto) to follow the tokenizer")
    return dataclasses.replace(spec, model=spec.model.with_vocab(vocab))


def _scaling(spec: RunSpec) -> tuple[Any, bool]:
    """Ray Train's ScalingConfig for the run's resource plan, and whether its workers use GPUs."""
    from ray.train import ScalingConfig

    run_plan = plan.plan(spec, cluster.resources())
    return ScalingConfig(num_workers=run_plan.num_workers, use_gpu=run_plan.use_gpu,
                         resources_per_worker=run_plan.worker_resources), run_plan.use_gpu


def check_locally(spec: RunSpec, *, address: str | None, extend_steps: int, until_step: int | None,
                  progress: bool, data_origin: str | None = None) -> tuple[RunSpec, Any]:
    """Every check that needs no cluster: launch options, storage, the backend, data and tokenizer. Returns the spec
    with its storage normalized and vocabulary resolved, and the prepared dataset (copied from `data_origin`, when
    given, instead of tokenized here)."""
    if extend_steps < 0 or (until_step is not None and until_step < 1):
        raise SpecError("--extend-steps must be >= 0 and --until-step >= 1")
    root = storage.normalize(spec.storage_path)
    spec = dataclasses.replace(spec, storage_path=root)
    storage.check_writable(root)
    local = not (address or cluster.address_from_env())  # this machine is the cluster: its hardware can be checked
    if local:
        check_backend(spec.scale.backend)
    dataset = data_lib.prepare(spec.data, progress=progress, origin=data_origin)
    spec = resolve_vocab(spec, dataset)
    if local and not spec.scale.gpus_per_worker and not _local_gpus():
        warn_cpu_size(spec)
    total = spec.train.steps + extend_steps
    epochs = dataset.epochs_for(total, seq_len=spec.data.seq_len, global_batch=spec.train.batch_size)
    if epochs > 1:
        warnings.warn(f"{total} steps will read the training data {epochs:.1f} times")
    return spec, dataset


CPU_SIZE_WARNING = 20e6  # parameters above which a CPU run gets a memory and time estimate first


def cpu_estimate(spec: RunSpec) -> tuple[float, float]:
    """(GiB per worker, seconds per step) of training `spec` on CPU workers, by a rough rule: 16 bytes a parameter
    (fp32 weights, gradients, two AdamW moments), activations of ~40 fp32 numbers per token, layer and width, the
    logits twice; time from the model's FLOPs at the speed this machine does a float32 matrix product on one core."""
    import torch

    tokens = spec.micro_batch_size * spec.data.seq_len
    params = count_params(spec.model)["total"]
    memory = 16 * params + 4 * tokens * (40 * spec.model.num_layers * spec.model.hidden_size + 2 * spec.model.vocab_size)
    a = torch.randn(512, 512)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    for _ in range(8):
        a @ a
    rate = 8 * 2 * 512**3 / (time.perf_counter() - start)
    torch.set_num_threads(threads)
    cores = max(1.0, spec.scale.cpus_per_worker)
    work = flops_per_token(spec.model, spec.data.seq_len) * spec.train.batch_size * spec.data.seq_len
    return memory / 2**30, work / (rate * cores * spec.scale.num_workers)


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def warn_cpu_size(spec: RunSpec) -> None:
    """Before a large model trains on CPUs (an H100-size variant on a laptop, say): what it will take."""
    params = count_params(spec.model)["total"]
    if params > CPU_SIZE_WARNING:
        gib, step_s = cpu_estimate(spec)
        warnings.warn(f"{spec.name} has {params / 1e6:.0f}M parameters and trains on CPU workers: about {gib:.0f} GiB "
                      f"per worker and {step_s:.0f} s a step ({step_s * spec.train.steps / 3600:.1f} h for "
                      f"{spec.train.steps} steps) by a rough estimate; --preset tiny is CPU-sized")


def share_data(spec: RunSpec, dataset: Any, nodes: int | None = None) -> str | None:
    """On a cluster of several nodes (`nodes`, asked when None), publish the prepared shards under the run's storage
    (which every node reaches) so that each node copies them once, instead of re-tokenizing or failing; None on one
    node."""
    if dataset.path is None or (cluster.node_count() if nodes is None else nodes) < 2:
        return None
    return data_lib.publish(dataset.path, data_store(spec.storage_path))


def _failure(error: BaseException, run: RunLayout) -> HybridRayError:
    cause = root_cause(error)
    if isinstance(cause, HybridRayError):
        return cause
    if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
        return TrainingError(f"no space left on device while writing {cause.filename or 'the run'}; free some space "
                             f"and relaunch the same command to resume from {CheckpointManager(run).latest() or 'scratch'}")
    return TrainingError(f"training failed: {type(cause).__name__}: {first_line(cause)}")


def train(
    spec: RunSpec,
    *,
    address: str | None = None,
    extend_steps: int = 0,
    until_step: int | None = None,
    callbacks: list | None = None,
    progress: bool = True,
    verbose: bool = False,
    kernel_cache: str | None = None,
    data_origin: str | None = None,
    rungs: RungConfig | None = None,
) -> TrainOutcome:
    """Train (or resume, or extend) the run `spec.name` under `spec.storage_path` on a Ray cluster.

    `progress` prints what the run does, here and on its workers; `verbose` also lets Ray's own log lines through;
    `kernel_cache` is the storage path whose `.kernels/` folder shares compiled kernels between the nodes of a cluster
    (default: the run's; a sweep passes its own storage path, so its trials share theirs); `data_origin`
    is a dataset already published to shared storage (a sweep publishes once for all its trials); `rungs` are where
    a sweep's scheduler judges the run: it saves there, waits for the judgement and stops there when told.
    """
    started = time.time()
    spec, warmup = warmup_used(spec)  # the warm-up it trains with, before spec.yaml records it
    if extend_steps > 0:
        check_extendable(spec)
    spec, dataset = check_locally(spec, address=address, extend_steps=extend_steps, until_step=until_step,
                                  progress=progress, data_origin=data_origin)
    run = RunLayout.of(spec)
    folders.claim(run, spec)
    folders.set_aside_damaged(run)
    checkpoints = CheckpointManager(run, spec.train.keep)
    resume = checkpoints.at_launch()
    reached = read_state(resume.checkpoint) if resume.checkpoint else None
    if until_step is not None:
        last = (reached.total_steps if reached else spec.train.steps) + extend_steps
        if until_step > last:
            warnings.warn(f"--until-step {until_step} is past the run's last step ({last}): the run trains to {last}")
    if reached and not extend_steps and reached.step >= min(until_step or reached.total_steps, reached.total_steps):
        return _already_done(spec, run, dataset, reached.step)
    told = stopped_at(rungs, spec.name)
    if reached and told is not None and reached.step >= told:  # its scheduler stopped it at a rung it had reached
        return _already_done(spec, run, dataset, reached.step)

    where = cluster.connect(address, verbose=verbose)
    scaling, use_gpu = _scaling(spec)
    if not use_gpu and (address or cluster.address_from_env()):
        warn_cpu_size(spec)  # a local run was warned before Ray started
    nodes = cluster.node_count()
    if data_origin is None:
        data_origin = share_data(spec, dataset, nodes)
    kernel_store = (kernel_cache or spec.storage_path) if nodes >= 2 else None
    if progress and warmup and reached is None and not extend_steps:
        warnings.warn(warmup)  # said once the run is sure to start, so that a refusal stays its one line
    if progress:
        print(f"training {spec.name} on {where}: {spec.scale.num_workers} worker(s), "
              f"{'GPU' if use_gpu else 'CPU'}, {count_params(spec.model)['total'] / 1e6:.1f}M parameters", flush=True)
        print(f"  run folder: {run.dir}", flush=True)
        if not storage.is_uri(run.dir):
            print(f"  watch: tensorboard --logdir {run.tensorboard}", flush=True)
        if dashboard := cluster.dashboard_url():
            print(f"  Ray dashboard: {dashboard}", flush=True)

    storage.delete_file(run.diverged)
    ray_checkpoints = checkpoints.for_ray(resume)
    launch = LaunchOptions(
        run_dir=run.dir,
        extend_steps=extend_steps,
        until_step=until_step,
        tensorboard_dir=None if storage.is_uri(run.dir) else run.tensorboard,
        resume_from=resume.checkpoint,
        known_checkpoints=resume.known,
        kernel_store=kernel_store,
        echo=progress,
        data_origin=data_origin,
        rung_steps=list(rungs.steps) if rungs else [],
        decisions=rungs.decisions if rungs else None,
    )
    try:
        _fit(spec, launch, scaling, use_gpu, ray_checkpoints, callbacks)
    except KeyboardInterrupt:
        step = checkpoints.settled_resume_point()
        if step is None:
            raise Interrupted("interrupted before the first checkpoint; relaunch the same command to start again") from None
        raise Interrupted(f"interrupted at step {step} (the newest checkpoint); relaunch the same command to resume") from None
    except Exception as e:
        raise _failure(e, run) from e
    finally:
        if _trained(run, reached.step if reached else 0, resume.known):
            folders.count_launch(run)
    outcome = finalize(spec, run, dataset, time.time() - started)
    if outcome.results["status"] == "diverged":
        d = outcome.results["diverged"]
        kept = f"checkpoints up to step {outcome.results['step']} are kept" if outcome.results["step"] else "no checkpoint"
        raise DivergedError(f"the loss stopped being finite at step {d['step']} (lr {d['lr']:.3g}); training stopped "
                            f"there and {kept}; lower --lr or lengthen the warmup")
    return outcome


def check_extendable(spec: RunSpec) -> None:
    """--extend-steps lengthens a run that has a checkpoint; for a new name (or a run that never reached its first
    checkpoint) there is nothing to extend, and training it anyway ran a schedule whose learning rate only rose.
    Checked before anything is written."""
    root = storage.normalize(spec.storage_path)
    run = RunLayout.named(root, spec.name)
    if folders.list_checkpoints(run):
        return
    what = (f"run {spec.name} under {root} has no checkpoint yet" if storage.exists(run.spec)
            else f"there is no run {spec.name} under {root}")
    raise SpecError(f"--extend-steps lengthens a run that has trained: {what}, so there is nothing to extend; "
                    "train it without --extend-steps (--steps sets its length)")


def _already_done(spec: RunSpec, run: RunLayout, dataset: Any, step: int) -> TrainOutcome:
    """A relaunch with nothing to train counts no launch and rewrites nothing; it only writes the results a launch
    that ended between its last checkpoint and results.json left unwritten."""
    results = folders.read_results(run)
    if results is None or results.get("step") != step:
        return dataclasses.replace(finalize(spec, run, dataset, 0.0), already_done=True)
    return TrainOutcome(run.dir, results, already_done=True)


def _trained(run: RunLayout, start: int, known: list[str]) -> bool:
    """Whether this launch, which started at step `start` with the checkpoint folders `known`, trained: it wrote a
    checkpoint past that step (a new folder: a broken one of the same step stays), or it stopped at a diverging step."""
    new = set(folders.list_checkpoints(run)) - set(known)
    return any(step_of(name) > start for name in new) or storage.exists(run.diverged)


def _fit(spec: RunSpec, launch: LaunchOptions, scaling: Any, use_gpu: bool, checkpoints: tuple[Any, Any],
         callbacks: list | None) -> None:
    """Fit the TorchTrainer; `checkpoints`: the run's CheckpointManager.for_ray (Ray's CheckpointConfig, the callback
    that keeps the newest `train.keep`)."""
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchConfig
    from ray.train.v2.api.config import LoggingConfig

    # Ray Train's placement-group cleaner frees a run's resources should its controller die while the cluster lives
    # on; a Ray that ends with this driver frees them anyway, so that actor would only cost a process start per launch
    trainer = ray_compat.torch_trainer(placement_group_cleaner=not cluster.ends_with_this_process())(
        train_loop_per_worker,
        train_loop_config={"spec": spec.to_dict(), "launch": dataclasses.asdict(launch)},
        scaling_config=scaling,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=spec.name,
            storage_path=spec.storage_path,
            failure_config=FailureConfig(max_failures=spec.scale.max_failures),
            checkpoint_config=checkpoints[0],
            callbacks=[*(callbacks or []), checkpoints[1]],
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    # Ray Train's SIGINT handler (installed by fit) holds the run's controller and is never taken back: in a driver
    # that lives on (a notebook, a test session) the finished run's controller stayed alive, polling, and a later
    # Ctrl-C aborted that finished run instead of interrupting the driver
    main = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main else None
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    if main:
        # SIGTERM (a scheduler, `timeout`) stops the run as Ctrl-C does, through Ray Train's SIGINT handler, which
        # aborts its workers: ray.init's own handler exited the driver with the workers still training, so the step
        # said was not where a relaunch resumed (a checkpoint written after it)
        signal.signal(signal.SIGTERM, _as_sigint)
    try:
        trainer.fit()
    except SystemExit as e:
        # Ray Train's own SIGINT handler aborts the run and then exits the driver: an interruption like any other
        raise KeyboardInterrupt from e
    finally:
        for signum, handler in ((signal.SIGINT, sigint), (signal.SIGTERM, sigterm)):
            if handler is not None:
                signal.signal(signum, handler)


def _as_sigint(signum: int, frame: Any) -> None:
    """SIGTERM handled by the SIGINT handler in place (Ray Train's, once fit has installed it)."""
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)


def finalize(spec: RunSpec, run: RunLayout, dataset: Any, wall_s: float) -> TrainOutcome:
    """Write results.json, curves.png and the model folder from the newest good checkpoint."""
    checkpoint = CheckpointManager(run).latest()
    diverged_path = run.diverged
    diverged = json.loads(storage.read_bytes(diverged_path)) if storage.exists(diverged_path) else None
    if checkpoint is None and diverged is None:
        raise TrainingError(f"run {spec.name} produced no checkpoint")
    previous = folders.read_results(run) or {}
    results: dict[str, Any] = {"name": spec.name}
    state = TrainerState(total_steps=spec.train.steps)
    with tempfile.TemporaryDirectory(prefix="hybrid-ray-final-") as tmp:
        if checkpoint is not None:
            model_dir = Path(tmp, storage.name(run.model))
            state = export_model(checkpoint, model_dir)
            dataset.tokenizer.save(model_dir)
            storage.copy_dir(str(model_dir), run.model)
        status = "finished" if state.step >= state.total_steps else "stopped"
        results.update({
            "status": "diverged" if diverged else status,
            "step": state.step,
            "total_steps": state.total_steps,
            "spec": spec.to_dict(),
            "params": count_params(spec.model),
            "layer_types": spec.model.layer_types(),
            "attention_layers": spec.model.attn_layers,
            "attention_ratio": spec.model.attention_ratio,
            **summarize(state.history),
            "tokens_seen": state.tokens_seen,
            "train_seconds": state.train_seconds,  # training only: each launch's first step is compile_seconds
            "compile_seconds": state.compile_seconds,
            "eval_seconds": state.eval_seconds,
            "setup_seconds": state.setup_seconds,  # the workers' set-up; the wall time's rest is Ray's and the I/O's
            "wall_seconds": previous.get("wall_seconds", 0.0) + wall_s,
            "launches": folders.launch_count(run),
            "resumed_at": state.resumed_at,
            "versions": state.env,
            "data": {k: dataset.manifest.get(k) for k in ("source", "tokenizer", "vocab_size", "splits") if k in dataset.manifest},
            "checkpoint": checkpoint,
            "model_dir": run.model if checkpoint else None,
            "history": state.history,
        })
        if diverged:
            results["diverged"] = diverged
        folders.write_results(run, results)
        curves = Path(tmp, storage.name(run.curves))
        plot_runs({spec.name: state.history}, str(curves), title=f"{spec.name} ({spec.variant or 'custom'})")
        storage.write_bytes(run.curves, curves.read_bytes())
    return TrainOutcome(run_dir=run.dir, results=results)
