"""Every interaction with the Ray cluster itself: connect (or start a local one) and check resources."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from hybrid_ray.errors import ClusterError

# The dashboard's Train tab needs this before Ray starts (DESIGN.md, "Ray 2.60 facts").
os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on host:port addresses that nothing listens on (ray.init would retry for a minute)."""
    target = address if "://" in address else f"tcp://{address}"
    parsed = urlparse(target)
    if not parsed.hostname or not parsed.port:
        return
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from e


def _use_token_auth() -> None:
    """Ray 2.60 clusters started with `ray start` use token auth; a client sends the token it finds in
    ~/.ray/auth_token only when RAY_AUTH_MODE=token, so opt in when that file exists and nothing else is set."""
    if "RAY_AUTH_MODE" not in os.environ and Path("~/.ray/auth_token").expanduser().exists():
        os.environ["RAY_AUTH_MODE"] = "token"


def connect(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = True) -> str:
    """Connect to `address` (host:port, ray://..., 'auto'), to $RAY_ADDRESS, or start a local Ray in-process.

    Returns a short description of what it connected to. A no-op when Ray is already initialised (inside a
    Ray job or a Tune trial).
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if address and address not in ("auto", "local"):
        _reachable(address)  # also inside an existing session: an explicit address must not be silently ignored
    if ray.is_initialized():
        return "the current Ray session"
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address and address != "local":
        _use_token_auth()
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ClusterError(f"cannot connect to the Ray cluster at {address}: {str(e).splitlines()[0]}") from e
        return f"Ray cluster at {address}"
    try:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=dashboard,
            dashboard_host="127.0.0.1",
            **kwargs,
        )
    except Exception as e:
        raise ClusterError(f"cannot start a local Ray instance: {str(e).splitlines()[0]}") from e
    return "a local Ray instance (stops when this command ends)"


def resources() -> dict[str, float]:
    import ray

    return ray.cluster_resources()


def check_resources(num_workers: int, cpus_per_worker: float, gpus_per_worker: float) -> None:
    """Raise ClusterError now, instead of letting Ray wait forever for resources that do not exist."""
    have = resources()
    cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    if gpus_per_worker > 0 and gpus < num_workers * gpus_per_worker:
        raise ClusterError(
            f"asked for {num_workers} worker(s) x {gpus_per_worker:g} GPU but the cluster has {gpus:g} GPU(s)"
            + ("; drop --gpus-per-worker to train on CPUs" if gpus == 0 else "")
        )
    if cpus < num_workers * cpus_per_worker:
        raise ClusterError(
            f"asked for {num_workers} worker(s) x {cpus_per_worker:g} CPU but the cluster has {cpus:g} CPU(s)"
        )
