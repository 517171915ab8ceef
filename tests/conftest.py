"""Test environment: offline, hermetic (own shard cache, own Ray on free ports, nothing written to ~/.ray), FLA's Triton
kernels interpreted on CPU-only machines, GPU tests skipped there."""

import os
import secrets
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# token shards of this test session only (Ray workers inherit the variable); removed when the session ends
USER_CACHE = os.environ.get("HYBRID_RAY_CACHE")
CACHE = tempfile.mkdtemp(prefix="hybrid-ray-test-cache-")
os.environ["HYBRID_RAY_CACHE"] = CACHE
# Ray turns token authentication on for local clusters and writes ~/.ray/auth_token when it finds no token: give it
# one, so the tests never write into the user's home (tests of the token file use their own HOME)
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(16)
# Ray Train's controller polls its workers every 0.5 s under hybrid-ray (2 s in Ray); a tiny test run's end waits for
# the next poll (a missed poll is harmless: a worker counts as lost after 10 minutes of them)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
# Ray's log monitor lists its session's log folder every 0.1 s while it holds fewer than this many files; a session
# that lives through the suite collects hundreds (every actor's worker leaves two), and its monitor was a steady CPU
# load on a 2-core machine. At 0: a new worker's log is found within 0.5 s (LOG_NAME_UPDATE_INTERVAL_S)
os.environ.setdefault("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # must happen before triton is imported: FLA's kernels then run in Triton's interpreter on the CPU
    os.environ["TRITON_INTERPRET"] = "1"
else:
    # the GPU tests compile into (and start warm from) the node's kernel cache, not the session's temporary one
    from hybrid_ray import kernels  # noqa: E402

    if "HYBRID_RAY_KERNEL_CACHE" not in os.environ:
        os.environ["HYBRID_RAY_CACHE"] = USER_CACHE or ""
        os.environ["HYBRID_RAY_KERNEL_CACHE"] = str(kernels.root())
        os.environ["HYBRID_RAY_CACHE"] = CACHE
    print(kernels.activate().line())


# the files that train through Ray, slowest first (each 2-4 minutes on 2 cores; the rest take seconds): the two test
# processes (setup.cfg) start on them and the short files fill in at the end, instead of one long file starting last
SLOWEST_FIRST = ("test_cluster.py", "test_train.py", "test_jobs.py", "test_sweep.py", "test_submit.py", "test_model.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOWEST_FIRST)))  # stable: a file's order is kept
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def fla_interpreted():
    """FLA importable on CPU: its kernels interpreted, autotuning reduced to the first config (no timing)."""
    pytest.importorskip("triton")
    import triton.runtime.autotuner as autotuner

    if not HAS_CUDA:
        autotuner.Autotuner._bench = lambda self, *a, config=None, **k: [0.0, 0.0, 0.0]
    from hybrid_ray.model.fla import import_fla

    return import_fla()


_ray_session_started: list[bool] = []


@pytest.fixture(autouse=True)
def no_stray_ray():
    """Fails the test that leaves a Ray of its own in the test process (ray.data, ray.get and Tune start one
    silently): the ray_session fixture of whichever test comes next in that process would then fail instead."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized() and not _ray_session_started:
        ray.shutdown()
        pytest.fail("the test started Ray in the test process: take the ray_session fixture instead")


@pytest.fixture(scope="session")
def ray_session():
    """One in-process local Ray for the tests that call the library directly: 2 CPUs, the dashboard (Tune's early
    stopping needs it) on a free port of 127.0.0.1, its own temp folder; shut down at the end of the session."""
    import ray
    from ray_procs import free_port, short_tmpdir

    from hybrid_ray import cluster, ray_compat

    temp = short_tmpdir()
    # as `hybrid-ray` starts its local Ray: a new one (never another Ray of this machine), every process pinned to it
    cluster.start_local(num_cpus=2, dashboard=True, dashboard_port=free_port(), logging_level="WARNING", _temp_dir=temp)
    ray_compat.show_only_training_output()  # what `hybrid-ray` shows on its console
    _ray_session_started.append(True)
    yield ray
    ray.shutdown()
    _ray_session_started.clear()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """The session's `ray start --head` (127.0.0.1, dashboard, token authentication, 2 CPUs), started as
    cluster/local-head.sh does for a user whose home the test made, in that user's default Ray temp folder
    ($TMPDIR/ray, whose ray_current_cluster names it: where a plain ray.init() or Ray's own auto-discovery finds it).
    Shared by every test that only needs a head (each costs seconds to start and to stop); stopped by pid at the end
    of the session, with nothing left behind. Every process of it imports tests/faults first, which fails one
    checkpoint write when the file `head.enospc` names holds `<run> <step>` (no file: no fault)."""
    from ray_procs import short_tmpdir

    system_tmp = short_tmpdir()  # this machine's temp folder for the test's user
    home = tmp_path_factory.mktemp("home")
    plan = home / "enospc"
    faults = os.path.join(os.path.dirname(__file__), "faults")
    yield from _head(home, temp_dir=f"{system_tmp}/ray", enospc=plan, extra_env={
        "TMPDIR": system_tmp, "HYBRID_RAY_TEST_ENOSPC": str(plan),
        "PYTHONPATH": os.pathsep.join(p for p in (faults, os.environ.get("PYTHONPATH")) if p)})
    shutil.rmtree(system_tmp, ignore_errors=True)


@pytest.fixture()
def fresh_head(tmp_path_factory):
    """A head of this test's own, just started (for what a head does in its first seconds)."""
    yield from _head(tmp_path_factory.mktemp("home"))


def _head(home, enospc=None, **options):
    from ray_procs import start_head

    node = start_head(home, **options)
    node.enospc = enospc
    yield node
    node.stop()
    assert not node.processes(), "a Ray process of the test's head outlived it"
    assert not os.path.exists(node.temp_dir), "the test's head left its temp folder"
