"""Ray jobs: the runtime_env that ships the project (and a local FLA clone) to a cluster; submit, list, status, logs,
stop. Every interaction with Ray's Jobs API is here.

What is uploaded is measured before anything is sent: the project folder as Ray would zip it (its .gitignore and
.rayignore, plus EXCLUDES: checkpoints, caches, virtualenvs, git, and secret files), refused over the job server's
limit with the largest entries named. A local FLA clone travels as `py_modules` (its `fla` folder), so every worker
imports that copy ahead of any installed FLA; its path, commit and local edits go into the job's metadata and, through
HYBRID_RAY_FLA_CLONE, into each run's results.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hybrid_ray import cluster, ray_compat
from hybrid_ray.errors import ClusterError, HybridRayError, SpecError, first_line
from hybrid_ray.model.fla import git_info

UPLOAD_LIMIT = 100 * 2**20  # the job server refuses larger working_dir uploads
DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
CLONE_ENV = "HYBRID_RAY_FLA_CLONE"  # the clone's path/commit/dirty, for workers (the uploaded copy has no .git)
# never uploaded: run outputs, caches and environments, and files that hold secrets
EXCLUDES = [
    ".git/", ".venv/", "venv/", "__pycache__/", "*.egg-info/", ".pytest_cache/", "runs/", ".cache/",
    "benchmarks/results/", ".devbundle/", ".snap/", "*.safetensors", "*.pt", "*.bin", "checkpoint_*/",
    ".env", ".env.*", "*.pem", "*.key", "id_*", "*.p12", ".netrc", ".ssh/", ".aws/", ".azure/", ".kube/",
    ".config/gcloud/", ".gcp/", "credentials*.json", ".ray/", "auth_token",
]


@dataclass
class Upload:
    """What the working_dir upload holds: (relative path, bytes) of every file, and the total."""

    root: Path
    files: list[tuple[str, int]]

    @property
    def total(self) -> int:
        return sum(size for _, size in self.files)

    def summary(self) -> str:
        return f"{len(self.files)} files, {self.total / 2**20:.1f} MiB from {self.root}"


@dataclass
class FlaClone:
    root: Path  # the folder that holds `fla/`
    commit: str | None
    dirty: bool | None

    @property
    def package(self) -> Path:
        return self.root / "fla"

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.root), "commit": self.commit, "dirty": self.dirty}


@dataclass
class Submitted:
    job_id: str
    dashboard: str
    upload: Upload
    status: str | None = None  # the final status when waited for
    metadata: dict[str, str] = field(default_factory=dict)


def measure_upload(working_dir: str | Path, excludes: list[str] | None = None) -> Upload:
    """The files Ray would upload from `working_dir` with EXCLUDES (and `excludes`) and its ignore files."""
    root = Path(working_dir).expanduser().resolve()
    if not root.is_dir():
        raise SpecError(f"working directory {working_dir} is not a folder")
    files = ray_compat.package_files(root, [*EXCLUDES, *(excludes or [])])
    return Upload(root, sorted((str(p.relative_to(root)), p.stat().st_size) for p in files))


def check_upload(upload: Upload, limit: int = UPLOAD_LIMIT) -> None:
    if upload.total <= limit:
        return
    sizes: dict[str, int] = {}
    for path, size in upload.files:
        top = path.split("/", 1)[0]
        sizes[top] = sizes.get(top, 0) + size
    largest = ", ".join(f"{name} ({size / 2**20:.0f} MiB)" for name, size in sorted(sizes.items(), key=lambda kv: -kv[1])[:3])
    raise SpecError(f"the upload would be {upload.total / 2**20:.0f} MiB, over the job server's {limit / 2**20:.0f} MiB: "
                    f"largest {largest}; add them to .rayignore (or .gitignore)")


def fla_clone(path: str | Path) -> FlaClone:
    from hybrid_ray.env import clone_root

    root = clone_root(path)
    git = git_info(root)
    return FlaClone(root, git.get("commit"), git.get("dirty"))


def runtime_env(upload: Upload, clone: FlaClone | None, env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    env = {"RAY_TRAIN_ENABLE_STATE_TRACKING": "1", **(env_vars or {})}
    if clone is not None:
        env[CLONE_ENV] = json.dumps(clone.to_dict())
    out: dict[str, Any] = {"working_dir": str(upload.root), "excludes": list(EXCLUDES), "env_vars": env}
    if clone is not None:
        out["py_modules"] = [str(clone.package)]
    return out


def entrypoint(args: list[str]) -> str:
    """`python -m hybrid_ray ...`: run from the uploaded working_dir, so the job runs the code that was submitted."""
    if not args or args[0] not in ("train", "sweep", "verify", "eval", "generate"):
        raise SpecError("submit what? give a job file (jobs/NAME.yaml) or a command after --: train ... | sweep ...")
    return "python -m hybrid_ray " + shlex.join(args)


def dashboard_address(address: str | None) -> str:
    """The cluster's dashboard (job server) URL: --address, $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS when it is http(s),
    else the local head's default."""
    for candidate in (address, os.environ.get("RAY_API_SERVER_ADDRESS"), os.environ.get("RAY_ADDRESS")):
        if candidate and candidate.startswith(("http://", "https://")):
            return candidate.rstrip("/")
        if candidate and candidate is address:
            return f"http://{candidate}".rstrip("/")
    return DEFAULT_DASHBOARD


def _client(address: str | None) -> Any:
    from ray.job_submission import JobSubmissionClient

    url = dashboard_address(address)
    parsed = urlparse(url)
    cluster.reachable(f"{parsed.hostname}:{parsed.port or 80}")
    ray_compat.use_token_if_available()
    try:
        client = JobSubmissionClient(url)
        client.list_jobs()  # one authenticated request: a missing or wrong token fails here, before anything is sent
    except Exception as e:
        raise ClusterError(f"cannot use the job server at {url}: {cluster.auth_hint(e)}") from e
    return client


def job_url(dashboard: str, job_id: str) -> str:
    return f"{dashboard}/#/jobs/{job_id}"


def submit(args: list[str], *, address: str | None = None, fla: str | None = None, working_dir: str | Path = ".",
           excludes: list[str] | None = None, wait: bool = True, dry_run: bool = False, echo: Any = print) -> Submitted:
    """Submit `hybrid-ray <args>` as a Ray job with the project (and `fla`'s clone) as its runtime_env."""
    command = entrypoint(args)
    clone = fla_clone(fla) if fla else None
    upload = measure_upload(working_dir, excludes)
    echo(f"upload: {upload.summary()}" + (f"; FLA clone {clone.root} @ {(clone.commit or '?')[:12]}"
                                            f"{' (dirty)' if clone.dirty else ''}" if clone else ""))
    check_upload(upload)
    if dry_run:
        for path, size in upload.files:
            echo(f"  {size:>10,}  {path}")
        return Submitted("", dashboard_address(address), upload)
    client = _client(address)
    metadata = {"hybrid_ray_command": command}
    if clone is not None:
        metadata["fla_clone"] = json.dumps(clone.to_dict())
    try:
        job_id = client.submit_job(entrypoint=command, runtime_env=runtime_env(upload, clone), metadata=metadata)
    except Exception as e:
        raise ClusterError(f"the job server refused the job: {first_line(e)}") from e
    dashboard = dashboard_address(address)
    echo(f"submitted {job_id}: {job_url(dashboard, job_id)}")
    submitted = Submitted(job_id, dashboard, upload, metadata=metadata)
    if wait:
        submitted.status = follow(client, job_id, echo)
    return submitted


def follow(client: Any, job_id: str, echo: Any = print) -> str:
    """Stream a job's logs until it ends; returns its final status."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            echo(chunk.rstrip("\n"))

    try:
        asyncio.run(tail())
    except Exception:  # the stream can end abruptly when the job stops; the status below says how it ended
        pass
    deadline = time.time() + 30
    while not (status := client.get_job_status(job_id)).is_terminal() and time.time() < deadline:
        time.sleep(1)
    return str(status.value if hasattr(status, "value") else status)


def list_jobs(address: str | None = None) -> list[dict[str, Any]]:
    client = _client(address)
    rows = []
    for job in client.list_jobs():
        rows.append({"job_id": job.submission_id or job.job_id, "status": str(job.status.value), "entrypoint": job.entrypoint,
                     "start_time": job.start_time, "url": job_url(dashboard_address(address), job.submission_id or "")})
    return sorted(rows, key=lambda r: r["start_time"] or 0)


def status(job_id: str, address: str | None = None) -> dict[str, Any]:
    client = _client(address)
    try:
        info = client.get_job_info(job_id)
    except Exception as e:
        raise HybridRayError(f"no job {job_id} on {dashboard_address(address)}: {first_line(e)}") from e
    return {"job_id": job_id, "status": str(info.status.value), "message": info.message, "entrypoint": info.entrypoint,
            "metadata": info.metadata, "url": job_url(dashboard_address(address), job_id)}


def logs(job_id: str, address: str | None = None, *, follow_logs: bool = False, echo: Any = print) -> str | None:
    client = _client(address)
    status(job_id, address)  # one line for an unknown job
    if follow_logs:
        return follow(client, job_id, echo)
    echo(client.get_job_logs(job_id).rstrip("\n"))
    return None


def stop(job_id: str, address: str | None = None) -> str:
    client = _client(address)
    status(job_id, address)
    client.stop_job(job_id)
    deadline = time.time() + 60
    while not (state := client.get_job_status(job_id)).is_terminal() and time.time() < deadline:
        time.sleep(1)
    return str(state.value)
