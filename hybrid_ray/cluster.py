"""Every interaction with the Ray cluster itself: connect (or start a local one), authenticate, read its resources
(train/plan.py sizes a run against them)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any
from pathlib import Path
from urllib.parse import urlparse

from hybrid_ray import ray_compat
from hybrid_ray.errors import ClusterError, first_line

# The dashboard's Train tab needs this before Ray starts (docs/ARCHITECTURE.md, "Ray facts").
os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
# Ray Train's controller notices that its workers finished (or failed) at its next poll, every 2 s by default: every
# launch and every sweep trial ended up to 2 s late. Ray passes the variable on from the driver to its controller.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

_session: dict[str, str | None] = {}
# The GCS address of the local Ray this process tree started itself (start_local): $RAY_ADDRESS then names it for
# Ray's own subprocesses, but it is not a cluster the user chose.
OWN_CLUSTER = "HYBRID_RAY_OWN_CLUSTER"
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"  # Ray Train 2.60 passes it from the driver to its controller
GCS_PORT = "RAY_GCS_SERVER_PORT"  # read by Ray 2.60's head node when it starts its GCS (ray/_private/node.py)


def address_from_env() -> str | None:
    """The cluster the user chose through $RAY_ADDRESS (not the local one hybrid-ray pinned it to)."""
    address = os.environ.get("RAY_ADDRESS") or None
    return None if address and address == os.environ.get(OWN_CLUSTER) else address


def reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on host:port addresses that nothing listens on (ray.init would retry for a minute)."""
    target = address if "://" in address else f"tcp://{address}"
    parsed = urlparse(target)
    if not parsed.hostname or not parsed.port:
        return
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from e


def authenticate(address: str) -> None:
    """One call to the GCS at `address` (host:port) with this machine's token: a refused token raises Ray's
    AuthenticationError at once, where ray.init retries it for ~20 s. Any other failure is left to ray.init."""
    if "://" in address:
        return  # a Ray Client address: its server authenticates
    from ray.exceptions import AuthenticationError

    try:
        ray_compat.check_gcs_token(address)
    except AuthenticationError:
        raise
    except Exception:
        return


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local(*, num_cpus: int | None = None, dashboard: bool = True, **init_kwargs: Any) -> Any:
    """Start a NEW local Ray (never join another one of this machine, such as a `ray start` head or another sweep)
    and pin every process of it to it: its GCS port is chosen first and exported as $RAY_ADDRESS before its raylet
    starts, so that Ray's own processes that find "the" cluster by auto-discovery (Ray Train's placement-group
    cleaner, the state API in workers) reach this one. Returns Ray's context."""
    import ray

    port = free_port()
    gcs = f"127.0.0.1:{port}"
    previous = os.environ.get("RAY_ADDRESS")
    api = os.environ.pop("RAY_API_SERVER_ADDRESS", None)  # would override $RAY_ADDRESS in Ray's own processes
    os.environ.update({"RAY_ADDRESS": gcs, OWN_CLUSTER: gcs, GCS_PORT: str(port)})
    # one node that lives and dies with this process: Ray Train's preemption watcher, an actor process per run that
    # watches for nodes about to be preempted, has nothing to watch (a user's own setting wins)
    watcher_set = PREEMPTION_WATCHER not in os.environ
    if watcher_set:
        os.environ[PREEMPTION_WATCHER] = "0"
    try:
        return ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                        **init_kwargs)
    except BaseException:
        os.environ.pop(OWN_CLUSTER, None)
        if watcher_set:
            os.environ.pop(PREEMPTION_WATCHER, None)
        if previous is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = previous
        raise
    finally:
        os.environ.pop(GCS_PORT, None)  # only for this start
        if api is not None:
            os.environ["RAY_API_SERVER_ADDRESS"] = api


def ends_with_this_process() -> bool:
    """Whether the Ray this process uses ends when it does: this process started it (start_local) and is its driver,
    not an actor on it (such as a Tune trial, whose sweep driver outlives it)."""
    import ray

    return bool(os.environ.get(OWN_CLUSTER)) and ray.get_runtime_context().get_actor_id() is None


def _connected(context: Any, verbose: bool) -> None:
    """What every new connection of this process sets up: the dashboard to name, the console, SIGTERM."""
    _session["dashboard"] = context.dashboard_url
    if not verbose:
        ray_compat.show_only_training_output()
    # Ray's core worker, started by ray.init, puts a crash handler in front of Python's SIGTERM handler (ray.init's
    # own, which ends the run resumably): it printed a native stack dump above the command's one `interrupted` line
    # when a scheduler or `timeout` stopped it. Python's handler alone again
    if threading.current_thread() is threading.main_thread():
        handler = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_DFL if handler is None else handler)


def connect(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = True,
            verbose: bool = False) -> str:
    """Connect to `address` (host:port, ray://..., 'auto'), to $RAY_ADDRESS, or start a local Ray in-process.

    Returns a short description of what it connected to. A no-op when Ray is already initialised (inside a
    Ray job or a Tune trial). Unless `verbose`, the console shows only what training workers print, not Ray's own
    lines (they stay in Ray's log files). Clusters with token authentication get the token Ray finds ($RAY_AUTH_TOKEN,
    $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token) without any variable to set; a local Ray listens on 127.0.0.1 only.
    """
    address = address or address_from_env()
    if address and address not in ("auto", "local"):
        reachable(address)  # also inside an existing session: an explicit address must not be silently ignored
    import ray

    if ray.is_initialized():
        return "the current Ray session"
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address and address != "local":
        ray_compat.use_token_if_available()
        with _stderr_captured() as captured:  # Ray's C++ client repeats each failed attempt on stderr for ~20 s
            try:
                authenticate(address)
                context = ray.init(address=address, **kwargs)
            except Exception as e:  # ConnectionError, AuthenticationError, RuntimeError, ... (one line either way)
                raise ClusterError(f"cannot connect to the Ray cluster at {address}: "
                                   f"{auth_hint(e, captured.read_text(errors='replace'))}") from e
        if verbose:
            sys.stderr.write(captured.read_text(errors="replace"))
        _connected(context, verbose)
        return f"Ray cluster at {address}"
    ray_compat.enable_token_auth()  # what Ray does for a new local cluster anyway, without its warning
    try:
        context = start_local(num_cpus=num_cpus, dashboard=dashboard, **kwargs)
    except Exception as e:
        raise ClusterError(f"cannot start a local Ray instance: {first_line(e)}") from e
    _connected(context, verbose)
    return "a new local Ray instance (stops when this command ends; --address joins a running cluster)"


@contextlib.contextmanager
def _stderr_captured() -> Iterator[Path]:
    """Send this process's stderr (file descriptor 2, where Ray's C++ code writes) to a temporary file meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.NamedTemporaryFile(prefix="hybrid-ray-stderr-") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield Path(f.name)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def auth_hint(error: BaseException, stderr: str = "") -> str:
    message = first_line(error)
    text = f"{message}\n{stderr}".lower()
    if "token" in text or "authenticat" in text:
        return ("authentication failed: the cluster uses token authentication and this machine's token is missing or "
                "wrong; copy the head's ~/.ray/auth_token here or set RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH")
    return message


def dashboard_url() -> str | None:
    """The dashboard of the cluster `connect` reached (None when unknown or disabled)."""
    url = _session.get("dashboard")
    return None if not url else url if "://" in url else f"http://{url}"


def node_count() -> int:
    """Alive nodes of the connected cluster."""
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def resources() -> dict[str, float]:
    import ray

    return ray.cluster_resources()


# GPU memory by Ray's accelerator type (the `accelerator_type:X` resource of a node), for clusters whose GPUs this
# process cannot see; the smallest card of that name where Ray's name covers several
ACCELERATOR_MEMORY_GB = {"H100": 80, "H200": 141, "B200": 180, "GH200": 96, "A100-80G": 80, "A100-40G": 40,
                         "A100": 40, "L40S": 48, "L4": 24, "A10G": 24, "V100": 16, "T4": 16}


def local_gpu_memory() -> list[int]:
    """Total memory of each GPU of this machine, in bytes, read with nvidia-smi (no CUDA context in this process,
    which would hold a GPU's memory for the driver's whole life); [] without NVIDIA GPUs."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(float(line)) * 2**20 for line in out.split() if line.strip()]


def gpu_memory(have: dict[str, float], local: bool) -> int | None:
    """The smallest GPU's memory on the cluster (bytes): this machine's cards when the cluster is this machine, else
    by the nodes' accelerator type; None when unknown (GPU memory is then not planned)."""
    if local and (cards := local_gpu_memory()):
        return min(cards)
    sizes = [gb for key, gb in ACCELERATOR_MEMORY_GB.items() if have.get(f"accelerator_type:{key}")]
    return int(min(sizes) * 1e9) if sizes else None
