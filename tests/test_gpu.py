"""On a CUDA GPU: FLA's kernels against the twin (forward and gradients), and training steps of the real hot path.

Skipped on CPU-only machines; the device runs of the benchmarks execute them (`python -m pytest -m gpu`, one process).
Every test runs gpu_support's small shape (hidden 256, head dim 64, one Gated DeltaNet and one attention layer, 256
tokens), whose kernels the session's warm-up (conftest.py's `gpu_kernels`) compiles once, with FLA's autotuning
narrowed to one configuration a kernel; each test has a budget in seconds (`gpu(budget_s=...)`) and fails past it.
"""

import json
import subprocess

import pytest
import torch
from gpu_support import PARITY_BATCH, SEQ, SPEC, run_spec, train_steps, warmup_command

from hybrid_ray.model.parity import compare_backends

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("gpu_kernels")]
CUDA = torch.device("cuda", 0)


@pytest.mark.gpu(budget_s=5)
def test_the_session_warm_up_stays_within_its_budget(gpu_kernels):
    """The shared kernels (every family of training: chunk forward and backward, short convolution, norms, loss; and
    those of evaluation, scoring and FLA's own decoding) compile in the session's warm-up: its share of the suite's
    5 minutes on a fresh node."""
    assert gpu_kernels["wall_s"] <= gpu_kernels["budget_s"], (
        f"the session's warm-up took {gpu_kernels['wall_s']:.1f} s (compile {gpu_kernels['compile_s']:.1f} s, "
        f"{gpu_kernels['new_cache_entries']} new kernel cache entries), over its budget of {gpu_kernels['budget_s']} s")


@pytest.mark.gpu(budget_s=15)
def test_fla_matches_the_twin_forward_and_backward():
    """fp32, FLA's chunk (training) kernels: both layer types, value heads > key heads, GQA attention and a window
    shorter than the sequence, within model.parity's tolerances."""
    report = compare_backends(SPEC, CUDA, batch=PARITY_BATCH, seq=SEQ)
    assert not report.failures, report.to_dict()
    assert report.loss_fla == pytest.approx(report.loss_twin, rel=1e-3)


@pytest.mark.gpu(budget_s=30)
@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_training_steps_on_the_hot_path_lower_the_loss(strategy):
    """setup_model + train_step as a Ray worker runs them (a process group of one), bf16 (FSDP2's bf16 compute
    parameters; DDP's autocast over fp32 weights), 8 steps on a fixed batch."""
    losses = train_steps(strategy, CUDA, 8)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 0.5, losses


@pytest.mark.gpu(budget_s=30)
def test_the_host_work_cuts_train_like_the_default(monkeypatch):
    """parallelize.HostWork's two cuts (one rank keeps each block's gathered parameters; AdamW and the gradient clip on
    the local shards) on FLA's kernels, bf16 FSDP2: the same losses as without them, step for step (FLA's backward is
    not bit-deterministic, so within 0.01)."""
    from hybrid_ray.train import parallelize

    monkeypatch.setattr(parallelize, "HOST_WORK", parallelize.HostWork(False, False))
    default = train_steps("fsdp", CUDA, 8)
    monkeypatch.setattr(parallelize, "HOST_WORK", parallelize.HostWork(True, True))
    cut = train_steps("fsdp", CUDA, 8)
    assert cut == pytest.approx(default, abs=1e-2), (default, cut)
    assert cut[-1] < cut[0] - 0.5, cut


@pytest.mark.gpu(budget_s=40)
def test_a_second_process_after_warmup_starts_warm(tmp_path):
    """The session's warm-up ran `hybrid-ray warmup`'s work (hybrid_ray.train.warmup.warm_device) on run_spec() in this
    process; `hybrid-ray warmup` of the same spec in a new process finds its kernels in the node's cache and starts in
    seconds."""
    config = tmp_path / "gpu-tests.json"
    config.write_text(json.dumps(run_spec().to_dict()))
    done = subprocess.run(warmup_command(str(config)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    phases = [line for line in done.stdout.splitlines() if "new cache entries" in line]
    new = [int(line.rsplit(",", 1)[1].split()[0]) for line in phases]
    assert len(phases) == 4 and sum(new) <= 3, done.stdout  # a stray specialization at most
    train_seconds = float(phases[0].split("train step")[1].split(" s,")[0])
    assert train_seconds < 30, phases  # the target for a first step from the cache
