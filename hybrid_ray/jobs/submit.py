"""Ray jobs: the runtime_env that ships the project (and a local FLA clone) to a cluster; submit, list, status, logs,
stop. Every interaction with Ray's Jobs API is here.

What is uploaded is measured before anything is sent (`plan`): the project folder and local py_modules as Ray would
zip them (their .gitignore and .rayignore, plus EXCLUDES: checkpoints, caches, virtualenvs, git, and secret files,
plus --exclude and the job file's excludes), refused over the job server's limit with the largest entries named; the
runtime_env sent is built from that same plan, so what --dry-run lists is what is uploaded. A local FLA clone travels
as `py_modules` (its `fla` folder), so every worker imports that copy ahead of any installed FLA; its path, commit and
local edits go into the job's metadata and, through the runtime_env `fla_clone` builds, into each run's results.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from hybrid_ray import cluster, ray_compat
from hybrid_ray.config import build
from hybrid_ray.errors import ClusterError, HybridRayError, SpecError, first_line
from hybrid_ray.jobs import fla_clone

UPLOAD_LIMIT = 100 * 2**20  # the job server refuses larger working_dir uploads
DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
# never uploaded: run outputs, caches and environments, and files that hold secrets
EXCLUDES = [
    ".git", ".venv/", "venv/", "__pycache__/", "*.egg-info/", ".pytest_cache/", "runs/", ".cache/",
    "benchmarks/results/", ".devbundle/", ".snap/", "*.safetensors", "*.pt", "*.bin", "checkpoint_*/",
    ".env", ".env.*", "*.pem", "*.key", "id_*", "*.p12", ".netrc", ".ssh/", ".aws/", ".azure/", ".kube/",
    ".config/gcloud/", ".gcp/", "credentials*.json", ".ray/", "auth_token",
]


@dataclass
class Upload:
    """What one uploaded folder holds: (relative path, bytes) of every file Ray takes from `root` with `excludes`."""

    root: Path
    files: list[tuple[str, int]]
    excludes: list[str] = field(default_factory=lambda: list(EXCLUDES))

    @property
    def total(self) -> int:
        return sum(size for _, size in self.files)

    def summary(self) -> str:
        return f"{len(self.files)} files, {self.total / 2**20:.1f} MiB from {self.root}"


@dataclass
class JobPlan:
    """What a job runs and ships, built once: the --dry-run list, the size check and the runtime_env all read it."""

    command: str
    project: Upload  # the working_dir
    modules: list[Upload] = field(default_factory=list)  # local py_modules folders (the FLA clone's `fla/` among them)
    clone: fla_clone.FlaClone | None = None
    env_vars: dict[str, str] = field(default_factory=dict)
    other: dict[str, Any] = field(default_factory=dict)  # a job file's other runtime_env keys (pip, conda, ...), as is
    args: list[str] = field(default_factory=list)  # the hybrid-ray command the job runs: ["train", ...]

    @property
    def uploads(self) -> list[Upload]:
        return [self.project, *self.modules]

    @property
    def total(self) -> int:
        return sum(upload.total for upload in self.uploads)

    def summary(self) -> str:
        files = sum(len(upload.files) for upload in self.uploads)
        line = f"{files} files, {self.total / 2**20:.1f} MiB from {self.project.root}"
        line += "".join(f" + {m.root}" for m in self.modules)
        return line + (f"; FLA clone {self.clone.describe()}" if self.clone else "")

    def listing(self) -> list[str]:
        """Every uploaded file with its size, as --dry-run prints it (py_modules under their folder's name)."""
        out = [f"  {size:>10,}  {path}" for path, size in self.project.files]
        for module in self.modules:
            out += [f"  {size:>10,}  {module.root.name}/{path}  (py_modules {module.root})" for path, size in module.files]
        return out

    def runtime_env(self) -> dict[str, Any]:
        """The runtime_env Ray uploads from: the same folders and excludes that were measured."""
        env = {"RAY_TRAIN_ENABLE_STATE_TRACKING": "1", **self.env_vars}
        modules = [*self.other.get("py_modules", [])]
        for module in self.modules:
            paths = [str(module.root)]
            if self.clone is not None and module.root == self.clone.package:  # with what workers need to know it
                shipped = self.clone.runtime_env(path for path, _ in module.files)
                env.update(shipped["env_vars"])
                paths = shipped["py_modules"]
            modules += [path for path in paths if path not in modules]
        out: dict[str, Any] = {**self.other, "working_dir": str(self.project.root),
                               "excludes": list(self.project.excludes), "env_vars": env}
        if modules:
            out["py_modules"] = modules
        return out


@dataclass
class Submitted:
    job_id: str
    dashboard: str
    plan: JobPlan
    status: str | None = None  # the final status when waited for
    metadata: dict[str, str] = field(default_factory=dict)
    python: str | None = None  # the `python` a failed job ran ("none": there was none), from its log

    @property
    def upload(self) -> Upload:
        return self.plan.project


def measure_upload(working_dir: str | Path, excludes: list[str] | None = None) -> Upload:
    """The files Ray would upload from `working_dir` with EXCLUDES (and `excludes`) and its ignore files."""
    root = Path(working_dir).expanduser().resolve()
    if not root.is_dir():
        raise SpecError(f"working directory {working_dir} is not a folder")
    every = [*EXCLUDES, *[e for e in excludes or [] if e not in EXCLUDES]]
    files = ray_compat.package_files(root, every)
    return Upload(root, sorted((str(p.relative_to(root)), p.stat().st_size) for p in files), every)


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


def plan(what: list[str], *, fla: str | None = None, working_dir: str | Path | None = None,
         excludes: list[str] | None = None) -> JobPlan:
    """The job `what` names (a command after --, or a job file) with everything it uploads measured: the working_dir
    (--working-dir, else the job file's, else .), py_modules (the job file's local folders, `fla`'s clone) and the
    excludes (EXCLUDES, `excludes`, the job file's) that Ray applies to all of them; the job file's env_vars and
    other runtime_env keys go with it."""
    args, runtime = list(what), {}
    if len(args) == 1 and args[0].endswith((".yaml", ".yml", ".json")):
        job = build.load(args[0])
        runtime = dict(job.runtime_env)
        args = [job.command, "--config", args[0]]
    command = entrypoint(args)
    config = _option(args, "--config")
    if args[0] == "train" and config and Path(config).is_file():  # the file as uploaded from here
        try:
            build.refuse_sweep_file(config)
        except SpecError as e:
            raise SpecError(f"{e} (nothing was submitted)") from e
    root = working_dir if working_dir is not None else runtime.pop("working_dir", None) or "."
    runtime.pop("working_dir", None)
    extra = [*(excludes or []), *_strings(runtime.pop("excludes", None) or [], "excludes")]
    env_vars = runtime.pop("env_vars", None) or {}
    if not isinstance(env_vars, dict):
        raise SpecError("the job file's env_vars must be a mapping of names to strings")
    project = measure_upload(root, extra)
    modules, remote = [], []
    for module in _strings(runtime.pop("py_modules", None) or [], "py_modules"):
        (modules if Path(module).expanduser().is_dir() else remote).append(module)
    uploads = [measure_upload(module, extra) for module in modules]
    clone = fla_clone.find(fla) if fla else None
    if clone is not None:
        uploads.append(measure_upload(clone.package, extra))
    other = {**runtime, **({"py_modules": remote} if remote else {})}
    return JobPlan(command, project, uploads, clone, {str(k): str(v) for k, v in env_vars.items()}, other, args)


def _option(args: list[str], name: str) -> str | None:
    """The value of option `name` in a command line (`--name V` or `--name=V`), or None."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def _strings(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(f"the job file's {key} must be a list of strings")
    return value


# Printed by the job's shell when its command fails: which `python` the head's PATH gave it (a head started from a
# virtualenv that is not on its PATH runs the system Python, which lacks the project's packages).
PYTHON_MARK = "hybrid-ray job: the first python on the head's PATH was"


def entrypoint(args: list[str]) -> str:
    """`python -m hybrid_ray ...`: run from the uploaded working_dir, so the job runs the code that was submitted. The
    job's `python` is the first on the head's PATH; when the command fails, the job's log says which one it was."""
    if not args or args[0] not in ("train", "sweep", "verify", "eval", "generate"):
        raise SpecError("submit what? give a job file (jobs/NAME.yaml) or a command after --: train ... | sweep ...")
    tell = f'echo "{PYTHON_MARK} $(command -v python || echo none)" >&2'
    return f"python -m hybrid_ray {shlex.join(args)} || {{ s=$?; {tell}; exit $s; }}"


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


AGENT_WAIT_S = 60.0  # a head that has just started takes a few seconds (25 s on a loaded laptop) to run its job agent


def _with_agent(call: Callable[[], Any], url: str, echo: Any, timeout: float = AGENT_WAIT_S) -> Any:
    """`call()`, retried while the job server has no job agent yet (HTTP 500 "No available agent"), saying so once."""
    deadline = time.monotonic() + timeout
    waiting = False
    while True:
        try:
            return call()
        except Exception as e:
            if "No available agent" not in str(e):
                raise
            if time.monotonic() > deadline:
                raise ClusterError(f"the job server at {url} still has no job agent after {timeout:.0f} s: see "
                                   "dashboard_agent.log in the head's Ray logs (another Ray on that machine may hold "
                                   "the agent's port, 52365 unless `ray start --dashboard-agent-listen-port` says "
                                   "otherwise)") from e
            if not waiting:
                echo(f"waiting for the job agent of {url} (a head that has just started needs a few seconds)...")
                waiting = True
            time.sleep(1)


def submit(job: JobPlan, *, address: str | None = None, wait: bool = True, dry_run: bool = False,
           echo: Any = print, verbose: bool = False, check_clone: bool = True) -> Submitted:
    """Submit the planned job (`plan`) as a Ray job: uploads exactly what `job` measured. A job with an FLA clone is
    submitted only once the clone matches the twin on this machine (`check_clone=False` ships it unchecked; a dry run
    checks nothing). While it waits it streams the job's log, Ray's own INFO lines only when `verbose`."""
    echo(f"upload: {job.summary()}")
    for upload in job.uploads:
        check_upload(upload)
    if job.clone is not None:
        if check_clone and not dry_run:
            _check_clone(job.clone, echo)
        else:
            echo(f"FLA clone not checked ({'--dry-run' if dry_run else '--no-check'})")
    if dry_run:
        for line in job.listing():
            echo(line)
        return Submitted("", dashboard_address(address), job)
    client = _client(address)
    dashboard = dashboard_address(address)
    metadata = {"hybrid_ray_command": "python -m hybrid_ray " + shlex.join(job.args)}
    if job.clone is not None:
        metadata["fla_clone"] = json.dumps(job.clone.to_dict())
    try:
        job_id = _with_agent(lambda: client.submit_job(entrypoint=job.command, runtime_env=job.runtime_env(),
                                                       metadata=metadata), dashboard, echo)
    except ClusterError:
        raise
    except Exception as e:
        raise ClusterError(f"the job server refused the job: {first_line(e)}") from e
    echo(f"submitted {job_id}: {job_url(dashboard, job_id)}")
    submitted = Submitted(job_id, dashboard, job, metadata=metadata)
    if wait:
        submitted.status = follow(client, job_id, echo, ray_info=verbose)
        if submitted.status == "FAILED":
            submitted.python = job_python(client, job_id)
    return submitted


def _check_clone(clone: fla_clone.FlaClone, echo: Any) -> None:
    """Refuse a clone that does not match the pure-PyTorch twin here, before anything is sent (a passing check of the
    same sources, torch, triton and device is reused)."""
    where = clone.given or str(clone.root)
    echo(f"checking the FLA clone {where} against the pure-PyTorch twin on this machine...")
    report = fla_clone.verify(where, reuse=True)
    if not report["passed"]:
        raise HybridRayError(f"the FLA in {where} does not match the twin: {report['failures'][0]} "
                             "(nothing was submitted; --no-check skips this)")
    again = " (an earlier check of the same sources, torch, triton and device)" if report.get("reused") else ""
    echo(f"FLA clone {fla_clone.verdict(report)}{again}")


def job_python(client: Any, job_id: str) -> str | None:
    """The `python` a failed job ran (what its entrypoint printed), or None when its log does not say."""
    try:
        text = client.get_job_logs(job_id)
    except Exception:
        return None
    lines = [line for line in text.splitlines() if line.startswith(PYTHON_MARK)]
    return lines[-1][len(PYTHON_MARK):].strip() if lines else None


# Ray's own INFO lines in a job's log ("2026-01-02 03:04:05,678\tINFO job_manager.py:581 -- Runtime env is setting up.")
RAY_INFO = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+INFO \S+\.py:\d+ -- ")


def follow(client: Any, job_id: str, echo: Any = print, *, ray_info: bool = True) -> str:
    """Stream a job's logs until it ends (without Ray's own INFO lines unless `ray_info`); returns its final status."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            lines = chunk.rstrip("\n").split("\n")
            kept = [line for line in lines if ray_info or not RAY_INFO.match(line)]
            if kept:
                echo("\n".join(kept))

    try:
        asyncio.run(tail())
    except Exception:  # the stream can end abruptly when the job stops; the status below says how it ended
        pass
    return _final_status(client, job_id, timeout=30)  # the end of the log stream and the final status are moments apart


def _final_status(client: Any, job_id: str, timeout: float) -> str:
    """The job's status once it has ended (or what it is after `timeout` seconds)."""
    deadline = time.time() + timeout
    while not (status := client.get_job_status(job_id)).is_terminal() and time.time() < deadline:
        time.sleep(0.25)
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
    _with_agent(lambda: client.stop_job(job_id), dashboard_address(address), print)
    return _final_status(client, job_id, timeout=60)
