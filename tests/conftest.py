"""Test environment: offline, FLA's Triton kernels interpreted on CPU-only machines, GPU tests skipped there."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# token shards of this test session only (Ray workers inherit the variable)
os.environ["HYBRID_RAY_CACHE"] = tempfile.mkdtemp(prefix="hybrid-ray-test-cache-")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # must happen before triton is imported: FLA's kernels then run in Triton's interpreter on the CPU
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fla_interpreted():
    """FLA importable on CPU: its kernels interpreted, autotuning reduced to the first config (no timing)."""
    pytest.importorskip("triton")
    import triton.runtime.autotuner as autotuner

    if not HAS_CUDA:
        autotuner.Autotuner._bench = lambda self, *a, config=None, **k: [0.0, 0.0, 0.0]
    from hybrid_ray.model.fla import import_fla

    return import_fla()
