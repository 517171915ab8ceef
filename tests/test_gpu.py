"""On a CUDA GPU: FLA's kernels against the twin (forward and gradients), and training steps of the real hot path.

Skipped on CPU-only machines; the device runs of the benchmarks execute them (`python -m pytest -m gpu`).
"""

import pytest
import torch

from hybrid_ray.model.parity import compare_backends
from hybrid_ray.spec import ModelSpec
from hybrid_ray.variants import variant_spec

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda", 0)

# One fp32 shape for the parity check (each distinct shape compiles and tunes its own kernels: minutes on a fresh
# node): the H100 base's head dim (256), both layer types, value heads > key heads, GQA attention and a window shorter
# than the sequence.
HYBRID = ModelSpec(
    hidden_size=768, num_layers=2, num_heads=6, num_v_heads=12, head_dim=256, expand_v=1.0, attn_layers=[1],
    attn_num_heads=12, attn_num_kv_heads=4, attn_window=512, vocab_size=1024,
)


def test_fla_matches_the_twin_forward_and_backward():
    report = compare_backends(HYBRID, CUDA, batch=2, seq=1024)
    assert not report.failures, report.to_dict()
    assert report.loss_fla == pytest.approx(report.loss_twin, rel=1e-3)


# the shapes `hybrid-ray warmup --variant h100_hybrid_sparse` compiles (the byte tokenizer's model vocabulary): a node
# (or a test machine given its cache) that has run it compiles nothing here
WARMUP_VOCAB = 320


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_training_steps_on_the_hot_path_lower_the_loss(strategy):
    """setup_model + train_step as a Ray worker runs them (a process group of one), bf16, on a fixed batch."""
    from hybrid_ray.data import Batch
    from hybrid_ray.train.loop import setup_model, train_step
    from hybrid_ray.train.optim import build_optimizer
    from hybrid_ray.train.parallelize import single_process_group

    single_process_group(CUDA)
    spec = variant_spec("h100_hybrid_sparse").with_overrides({
        "model.vocab_size": WARMUP_VOCAB, "scale.backend": "fla", "scale.strategy": strategy, "train.batch_size": 8,
        "train.micro_batch_size": 8})
    model = setup_model(spec, CUDA)
    optimizer = build_optimizer(model, spec.optim, CUDA)
    ids = torch.randint(0, WARMUP_VOCAB, (8, spec.data.seq_len), device=CUDA,
                        generator=torch.Generator(CUDA).manual_seed(0))
    batch = [Batch(ids, ids)]
    losses = [train_step(model, optimizer, batch, 1e-3, spec, CUDA)[0].item() for _ in range(8)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 0.5, losses


def test_a_second_process_after_warmup_starts_warm(tmp_path):
    """`hybrid-ray warmup` twice: the second process finds the kernels in the node's cache and starts in seconds."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "hybrid_ray", "warmup", "--variant", "h100_hybrid_sparse", "--batch-size", "8",
               "--micro-batch-size", "8"]
    outputs = [subprocess.run(command, capture_output=True, text=True, timeout=600) for _ in range(2)]
    for done in outputs:
        assert done.returncode == 0, done.stderr[-2000:]
    phases = [line for line in outputs[1].stdout.splitlines() if "new cache entries" in line]
    new = [int(line.rsplit(",", 1)[1].split()[0]) for line in phases]
    assert len(phases) == 4 and sum(new) <= 3, outputs[1].stdout  # a stray specialization at most
    train_seconds = float(phases[0].split("train step")[1].split(" s,")[0])
    assert train_seconds < 30, phases  # the target for a first step from the cache
