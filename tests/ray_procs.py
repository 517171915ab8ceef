"""Real Ray processes for tests: a `ray start --head` (or worker node) on free 127.0.0.1 ports with its own temp folder
and HOME, stopped by pid; and the `hybrid-ray` command run as a user would run it, in a subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from hybrid_ray.cluster import free_port  # noqa: F401  (the tests' fixtures import it from here)

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
HYBRID_RAY = str(BIN / "hybrid-ray")
# what a test harness sets that a user would not: a subprocess "as a user would" runs without these
TEST_ONLY_VARS = ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "TRITON_INTERPRET",
                  "PYTEST_CURRENT_TEST", "HYBRID_RAY_OWN_CLUSTER")


def short_tmpdir(prefix: str = "hr-") -> str:
    """A temp folder with a short path: Ray's unix sockets live under it (at most ~107 characters)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def user_env(home: str | Path, **extra: str) -> dict[str, str]:
    """The environment of a user whose home is `home`: none of the variables the test session sets for itself."""
    env = {k: v for k, v in os.environ.items() if k not in TEST_ONLY_VARS}
    path = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # as after `. .venv/bin/activate`
    return {**env, "HOME": str(home), "PATH": path, **extra}


@dataclass
class RayNode:
    """A Ray node started with `ray start`; `stop` ends exactly its processes."""

    temp_dir: str
    home: str
    port: int | None = None  # GCS port (head only)
    dashboard_port: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    _seen: dict[int, psutil.Process] = field(default_factory=dict, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def processes(self) -> list[psutil.Process]:
        """Every live process of this node: those whose command line names its temp folder (gcs, raylet, dashboard),
        their descendants (agents and workers, whose titles Ray rewrites; job drivers), and any seen before that
        still run (orphans of a process that already ended)."""
        found = {p.pid: p for p in self._known() if _alive(p)}
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if proc.pid != os.getpid() and any(self.temp_dir in part for part in proc.info["cmdline"] or []):
                    found[proc.pid] = proc
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        for proc in list(found.values()):
            try:
                found.update({child.pid: child for child in proc.children(recursive=True)})
            except psutil.NoSuchProcess:
                continue
        self._seen.update(found)
        return list(found.values())

    def wait_until_gone(self, *titles: str, timeout: float = 120) -> None:
        """Wait until no process of this node runs under a title that starts with one of `titles` (Ray renames its
        workers `ray::<actor class>...`): e.g. until the actors of a killed driver's job have ended."""
        deadline = time.time() + timeout
        while busy := [p for p in self.processes() if _title(p).startswith(titles)]:
            assert time.time() < deadline, f"still running: {[_title(p) for p in busy]}"
            time.sleep(0.2)

    def _known(self) -> list[psutil.Process]:
        return list(self._seen.values())

    def stop(self) -> None:
        """End every process of the node (frozen first, so that none starts another meanwhile), then remove its temp
        folder. Killed outright: a test's node has nothing to save, and a graceful Ray shutdown takes seconds."""
        procs: dict[int, psutil.Process] = {}
        while new := [p for p in self.processes() if p.pid not in procs]:
            for proc in new:
                _signal(proc, signal.SIGSTOP)
                procs[proc.pid] = proc
        for proc in procs.values():
            _signal(proc, signal.SIGKILL)
        psutil.wait_procs(list(procs.values()), timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _title(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()) if _alive(proc) else ""
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)  # psutil checks the pid still names the same process
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


def start_head(home: str | Path, *, num_cpus: int = 2, token: bool = True, extra_env: dict | None = None,
               temp_dir: str | None = None) -> RayNode:
    """`ray start --head` on 127.0.0.1 with the dashboard, as cluster/local-head.sh does, for a user whose home is
    `home`. With `token`, the user has a token file first, so the head uses token authentication. `temp_dir`: Ray's
    temp folder (it writes ray_current_cluster there) [default: a new one of its own]."""
    home = Path(home)
    if token:
        (home / ".ray").mkdir(parents=True, exist_ok=True)
        (home / ".ray" / "auth_token").write_text(os.urandom(16).hex())
    for attempt in (1, 2):
        node = RayNode(temp_dir=temp_dir or short_tmpdir("hr-head-"), home=str(home), port=free_port(),
                       dashboard_port=free_port())
        node.env = user_env(home, RAY_TRAIN_ENABLE_STATE_TRACKING="1", **(extra_env or {}))
        cmd = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={node.port}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={node.dashboard_port}", f"--num-cpus={num_cpus}",
               f"--temp-dir={node.temp_dir}", f"--ray-client-server-port={free_port()}", *_agent_ports(),
               "--disable-usage-stats"]
        try:
            _start(cmd, node)
            break
        except RuntimeError:
            # once in CI, while the other test process started its own Ray: "the current node timed out during
            # startup" (Ray waits 30 s for its raylet; a port that free_port chose may also be taken meanwhile)
            if attempt == 2:
                raise
    _wait_for_dashboard(node)
    return node


def start_worker_node(head: RayNode, home: str | Path, *, num_cpus: int, extra_env: dict | None = None) -> RayNode:
    """A second node joining `head` (same machine, its own temp folder and environment)."""
    node = RayNode(temp_dir=short_tmpdir("hr-node-"), home=str(home))
    node.env = user_env(home, RAY_AUTH_MODE="token", **(extra_env or {}))  # a joining node must send the token
    cmd = [RAY, "start", f"--address={head.address}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
           f"--temp-dir={node.temp_dir}", *_agent_ports(), "--disable-usage-stats"]
    _start(cmd, node)
    return node


def _agent_ports() -> list[str]:
    # the dashboard agent's HTTP port is fixed (52365) by default: a second Ray on the machine (the test session's
    # own, or the user's) would leave this node without a job agent
    return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]


def _start(cmd: list[str], node: RayNode) -> None:
    try:
        subprocess.run(cmd, check=True, env=node.env, capture_output=True, text=True, timeout=180)
    except subprocess.CalledProcessError as e:
        node.stop()
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{e.stdout[-2000:]}\n{e.stderr[-2000:]}") from e


def _wait_for_dashboard(node: RayNode, timeout: float = 120) -> None:
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{node.dashboard}/api/version", timeout=5).read()
            return
        except urllib.error.HTTPError:  # it answers (401 without the token): it is up
            return
        except OSError:
            time.sleep(0.25)
    node.stop()
    raise RuntimeError(f"the dashboard at {node.dashboard} did not come up")


def hybrid_ray(*args: str, env: dict[str, str], timeout: float = 600, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run the `hybrid-ray` command as a user would."""
    return subprocess.run([HYBRID_RAY, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single `error:` line of a failed command (tqdm's progress lines aside); fails the test otherwise."""
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines()
             if line.strip() and not line.startswith("tokenizing")]
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]
