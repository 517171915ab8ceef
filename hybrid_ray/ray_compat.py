"""The one place that reaches into Ray's private modules (Ray 2.60): Train's report logger, the token-auth config and
the GCS client, the trainer's default callbacks, Train's record of a run's checkpoints, Tune's trials and the job
upload's file walk.
tests/test_ray_compat.py fails loudly when a Ray upgrade moves what this relies on."""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any


def report_logger() -> logging.Logger:
    """The logger Ray Train 2.60 writes one INFO line to per `ray.train.report`: it is named after its module's file,
    so `LoggingConfig(log_level=...)` does not reach it."""
    from ray.train.v2._internal.execution import context

    return logging.getLogger(context.__file__)


def quiet_report_logs() -> None:
    """Keep one line per report out of the progress lines."""
    report_logger().setLevel(logging.WARNING)


def _refresh_auth_mode(mode: str) -> None:
    """Set RAY_AUTH_MODE for this process and its children, and make an already imported Ray see it (Ray reads the
    variable once, at import, into a cached config that `Config.initialize` refreshes)."""
    os.environ["RAY_AUTH_MODE"] = mode
    from ray._raylet import Config

    Config.initialize("")


def token_available() -> bool:
    """Whether Ray would find a token: $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH names, or ~/.ray/auth_token."""
    from ray._raylet import AuthenticationTokenLoader

    return AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)


def use_token_if_available() -> None:
    """Before connecting to an existing cluster: send the token when one is found and RAY_AUTH_MODE is unset
    (Ray 2.60 clients send it only in token mode, and `ray start` heads use token auth once a token exists)."""
    if "RAY_AUTH_MODE" not in os.environ and token_available():
        _refresh_auth_mode("token")


def check_gcs_token(address: str) -> None:
    """One call to the GCS at `address` (host:port): Ray's AuthenticationError at once when it refuses this machine's
    token (the GCS client is private: ray._raylet)."""
    from ray._raylet import GcsClient

    GcsClient(address=address)


def enable_token_auth() -> None:
    """Before starting a local cluster: token mode, as `ray.init()` turns on by default, minus its console warning."""
    if "RAY_AUTH_MODE" not in os.environ:
        _refresh_auth_mode("token")


def show_only_training_output() -> None:
    """Forward to this console only what Ray Train workers print on stdout (hybrid-ray's progress lines, without
    Ray's "(RayTrainWorker pid=...)" prefix). Ray's own lines from its actors and raylets (deprecation warnings, the
    core worker's notices) stay in its log files under the session folder. Call after `ray.init`."""
    import sys

    from ray._private import worker

    def handler(data: dict) -> None:
        if data.get("is_err") or data.get("actor_name") != "RayTrainWorker":
            return
        for line in data.get("lines", []):
            print(line, file=sys.stdout, flush=True)

    worker.global_worker_stdstream_dispatcher.remove_handler("ray_print_logs")
    worker.global_worker_stdstream_dispatcher.add_handler("ray_print_logs", handler)


@functools.cache
def torch_trainer(placement_group_cleaner: bool = True) -> type:
    """TorchTrainer without the DatasetManager actor that Ray Train 2.60 starts for every run, Ray Datasets or not
    (hybrid-ray's workers read their own token shards): one process less to start and stop per launch, ~2 CPU-seconds
    and ~1 s of a small run's start on 2 cores. Without `placement_group_cleaner`, also without the detached actor
    that frees the run's placement group should its controller die: one more process less, for a run whose Ray ends
    with the process that launched it (launch.py says when)."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self) -> list:
            dropped = (() if self.datasets else (DatasetsCallback,)) + (
                () if placement_group_cleaner else (PlacementGroupCleanerCallback,))
            return [c for c in super()._create_default_callbacks() if not isinstance(c, dropped)]

    return Trainer


def run_record_problem(text: bytes) -> str | None:
    """Why Ray Train 2.60 would refuse to relaunch a run over this record of its checkpoints
    (checkpoint_manager_snapshot.json; its CheckpointManager._load_state fails inside the run's controller), or None
    when Ray can load it. Checkpoint folders the record names but the disk lacks are not looked at here."""
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import _CheckpointManagerState

    state_class = _CheckpointManagerState
    validate = getattr(state_class, "model_validate", None) or state_class.parse_obj  # pydantic 2, or 1
    try:
        record = json.loads(text)
    except ValueError as e:
        return f"not JSON: {e}"
    try:
        state = validate(record)
    except Exception as e:  # noqa: BLE001 (pydantic's ValidationError, of pydantic 1 or 2)
        errors = e.errors() if callable(getattr(e, "errors", None)) else [{"loc": (), "msg": str(e)}]
        where = ".".join(str(part) for part in errors[0]["loc"]) or "the record"
        return f"not in Ray's format: {where}: {errors[0]['msg']}" + (
            f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
    if (len(state.checkpoint_results) != len(state.checkpoint_report_indices)
            or len(state.pending_training_results) != len(state.pending_validation_specs)):
        return "its lists of checkpoints and of their reports differ in length"
    named = [*state.pending_training_results, *filter(None, [state.latest_checkpoint_result])]
    missing = sorted({r.checkpoint_dir_name for r in named} - {r.checkpoint_dir_name for r in state.checkpoint_results})
    return f"it names checkpoints it does not list ({', '.join(missing)})" if missing else None


def package_files(root: Path, excludes: list[str]) -> list[Path]:
    """The files Ray's job upload takes from `root` (working_dir): it walks the folder the same way, honouring
    .gitignore and .rayignore at every level and `excludes` (gitignore syntax)."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    found: list[Path] = []
    _dir_travel(root, [_get_excludes(root, excludes)], lambda p: found.append(p) if p.is_file() else None,
                include_gitignore=True, logger=logging.getLogger("hybrid_ray.upload"))
    return found


def tune_trials(grid: Any) -> list[Any]:
    """The Trial objects behind a Tune ResultGrid (their `status`, `config`, `last_result`): the public Result has no
    status, and a sweep must tell a trial ASHA stopped from one an interruption cut short."""
    return list(grid._experiment_analysis.trials)


def trial_error(trial: Any) -> BaseException | None:
    """A failed Tune trial's exception (the original one when Tune could pickle it, else its recorded traceback).

    Tune writes both files in the driver's staging folder and syncs them to storage later, while its getters read
    storage: a callback's `on_trial_error` saw none (the console said `failed NAME: None`), so the staging copies
    come first."""
    from ray import cloudpickle
    from ray.tune.error import TuneError

    try:
        if trial.pickled_error_file and os.path.exists(trial.pickled_error_file):
            with open(trial.pickled_error_file, "rb") as f:
                return cloudpickle.load(f)
        if trial.error_file and os.path.exists(trial.error_file):
            with open(trial.error_file) as f:
                return TuneError(f.read())
        error = trial.get_pickled_error() or trial.get_error()
        return TuneError(error) if isinstance(error, str) else error
    except Exception:  # noqa: BLE001 (an unreadable error file: the status still says the trial failed)
        return None
