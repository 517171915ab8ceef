"""Test environment: offline, hermetic (own shard cache, own Ray on free ports, nothing written to ~/.ray), FLA's Triton
kernels interpreted on CPU-only machines, GPU tests skipped there."""

import os
import secrets
import shutil
import sys
import tempfile
import time

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
    from hybrid_ray.node import kernels

    if "HYBRID_RAY_KERNEL_CACHE" not in os.environ:
        os.environ["HYBRID_RAY_CACHE"] = USER_CACHE or ""
        os.environ["HYBRID_RAY_KERNEL_CACHE"] = str(kernels.root())
        os.environ["HYBRID_RAY_CACHE"] = CACHE
    print(kernels.activate().line())
    import gpu_support  # noqa: E402

    gpu_support.install_compile_clock()  # before any kernel runs: each GPU test's compile seconds


# the files that train through Ray, slowest first (each 2-4 minutes on 2 cores; the rest take seconds): the two test
# processes (setup.cfg) start on them and the short files fill in at the end, instead of one long file starting last
SLOWEST_FIRST = ("test_cluster.py", "test_train.py", "test_jobs.py", "test_sweep.py", "test_study.py", "test_submit.py",
                 "test_model.py", "test_package.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOWEST_FIRST)))  # stable: a file's order is kept
    _leave_out_soak(config, items)
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _leave_out_soak(config, items):
    """The default run (the README's and CI's) leaves out the `soak` tests: long end-to-end scenarios whose every
    check the default run also makes on a cheaper path, or that try a deployment shape (a shell script, a fresh
    process, a benchmark's CPU twin). `-m soak` runs them alone, `-m "soak or not soak"` everything; a test named by
    its node id always runs. A Ray Train launch costs ~20 CPU-s on 2 cores: these three were ~9 of the full suite's
    ~65 minutes of test-process time (2026-12-07)."""
    markexpr = getattr(config.option, "markexpr", "") or ""
    if "soak" in markexpr or any("::" in arg for arg in config.args):
        return
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if not item.get_closest_marker("soak")]


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(CACHE, ignore_errors=True)


# ---- GPU tests: one process, one warmed kernel cache, each test's compile and run seconds against its budget --------

GPU_TARGETS_S = {"fresh node": 300, "again": 120}  # the whole `pytest -m gpu` (issue 35)
_gpu_times: dict[str, dict] = {}  # test (or the session's warm-up) -> seconds, compiles, new kernels, budget, outcome


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """`-m gpu` on a GPU runs in this one process (xdist's workers would each compile the same kernels on one GPU)."""
    markexpr = getattr(config.option, "markexpr", "") or ""
    if HAS_CUDA and "gpu" in markexpr and "not gpu" not in markexpr and hasattr(config.option, "numprocesses"):
        config.option.numprocesses = 0


class _GpuClock:
    """Wall, compile (Triton) and new kernel-cache entries of a stretch of the session."""

    def __init__(self):
        import gpu_support

        from hybrid_ray.node import kernels

        self.clock, self.folder = gpu_support.CompileClock, kernels.ensure_active().folder
        self.entries = kernels.count_entries(self.folder)
        self.compile, self.compiles, self.start = self.clock.seconds, self.clock.compiles, time.perf_counter()

    def record(self, name, budget, outcome):
        from hybrid_ray.node import kernels

        wall = time.perf_counter() - self.start
        compile_s = self.clock.seconds - self.compile
        _gpu_times[name] = {"wall_s": round(wall, 2), "compile_s": round(compile_s, 2),
                            "run_s": round(wall - compile_s, 2), "compiles": self.clock.compiles - self.compiles,
                            "new_cache_entries": kernels.count_entries(self.folder) - self.entries,
                            "budget_s": budget, "outcome": outcome}
        _write_gpu_times()
        return _gpu_times[name]


def _write_gpu_times():
    """$HYBRID_RAY_GPU_TIMES: a JSON file of every GPU test's seconds (benchmarks/bench_warm.py reads it)."""
    path = os.environ.get("HYBRID_RAY_GPU_TIMES")
    if path:
        import json

        import gpu_support

        with open(path, "w") as f:
            json.dump({**_gpu_times, "notes": gpu_support.NOTES}, f, indent=1)


def _over(name, times):
    return (f"{name} took {times['wall_s']:.1f} s (compile {times['compile_s']:.1f} s, run {times['run_s']:.1f} s, "
            f"{times['new_cache_entries']} new kernel cache entries), over its budget of {times['budget_s']} s")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A `gpu` test's compile and run seconds; one over its budget (`@pytest.mark.gpu(budget_s=N)`) fails, saying
    how long it took."""
    marker = item.get_closest_marker("gpu")
    if marker is None or not HAS_CUDA:
        return (yield)
    clock, budget = _GpuClock(), marker.kwargs.get("budget_s")
    try:
        result = yield
    except BaseException:
        clock.record(item.nodeid, budget, "failed")
        raise
    times = clock.record(item.nodeid, budget, "passed")
    if budget is not None and times["wall_s"] > budget:
        times["outcome"] = "over budget"
        _write_gpu_times()
        pytest.fail(_over(item.name, times), pytrace=False)
    return result


GPU_WARMUP_BUDGET_S = 180  # the session's warm-up of the shared kernels, cold (the largest share of the 300 s)


@pytest.fixture(scope="session")
def gpu_kernels():
    """The GPU tests' session: FLA's autotuning narrowed to one configuration a kernel (gpu_support), the node's
    kernel cache active, and the kernels every GPU test runs compiled once, up front, at gpu_support's small shapes
    (its parts compiling side by side in processes of their own). Yields the warm-up's times (the test of its budget
    reads them)."""
    import gpu_support

    gpu_support.narrow_autotuning()
    clock = _GpuClock()
    try:
        parts = gpu_support.warm_shared_kernels(torch.device("cuda", 0), say=lambda line: print(line, flush=True))
    except BaseException:
        clock.record("session warm-up", GPU_WARMUP_BUDGET_S, "failed")
        raise
    times = clock.record("session warm-up", GPU_WARMUP_BUDGET_S, "passed")
    times["parts_s"] = parts  # each part's own process (compiling), then each part again here
    _write_gpu_times()
    yield times


def pytest_terminal_summary(terminalreporter):
    if not _gpu_times:
        return
    write = terminalreporter.write_line
    terminalreporter.section("GPU tests: compile and run seconds")
    write(f"{'wall':>8} {'compile':>8} {'run':>8} {'kernels':>8} {'budget':>7}  test")
    for name, t in _gpu_times.items():
        budget = f"{t['budget_s']} s" if t["budget_s"] is not None else "-"
        write(f"{t['wall_s']:7.1f}s {t['compile_s']:7.1f}s {t['run_s']:7.1f}s {t['new_cache_entries']:8d} {budget:>7}  "
              f"{name}{'' if t['outcome'] == 'passed' else '  (' + t['outcome'] + ')'}")
    import gpu_support

    for line in gpu_support.NOTES:  # what the tests recorded without asserting it
        write(f"note: {line}")
    total = sum(t["wall_s"] for t in _gpu_times.values())
    targets = ", ".join(f"{v} s on {k}" if k == "fresh node" else f"{v} s run {k}" for k, v in GPU_TARGETS_S.items())
    write(f"{total:7.1f}s in all (targets: {targets})")


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

    from hybrid_ray import ray_compat
    from hybrid_ray import cluster

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
