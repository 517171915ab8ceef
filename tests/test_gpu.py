"""On a CUDA GPU: FLA's kernels against the twin (forward and gradients), and training steps of the real hot path.

Skipped on CPU-only machines; the device runs of the benchmarks execute them (`python -m pytest -m gpu`).
"""

import pytest
import torch

from hybrid_ray.model.parity import compare_backends
from hybrid_ray.spec import ModelSpec
from hybrid_ray.variants import REFERENCE_VOCAB, variant_spec

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda", 0)

HYBRID = ModelSpec(  # both layer types, GQA attention, value heads > key heads, a window shorter than the sequence
    hidden_size=256, num_layers=2, num_heads=2, num_v_heads=4, head_dim=64, expand_v=1.0, attn_layers=[1],
    attn_num_heads=4, attn_num_kv_heads=2, attn_window=512, vocab_size=1024,
)


@pytest.mark.parametrize("spec", [HYBRID, variant_spec("h100_hybrid_sparse").model.with_vocab(REFERENCE_VOCAB)],
                         ids=["small-gqa-window", "h100-hybrid-sparse"])
def test_fla_matches_the_twin_forward_and_backward(spec):
    report = compare_backends(spec, CUDA, batch=2, seq=1024)
    assert not report.failures, report.to_dict()
    assert report.loss_fla == pytest.approx(report.loss_twin, rel=1e-3)


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_training_steps_on_the_hot_path_lower_the_loss(strategy):
    """setup_model + train_step as a Ray worker runs them (a process group of one), bf16, on a fixed batch."""
    import os

    import torch.distributed as dist

    from hybrid_ray.data import Batch
    from hybrid_ray.train.loop import setup_model, train_step
    from hybrid_ray.train.optim import build_optimizer

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29531")
        torch.cuda.set_device(CUDA)
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=CUDA)
    spec = variant_spec("h100_hybrid_sparse", "small").with_overrides({
        "model.vocab_size": 1024, "scale.backend": "fla", "scale.strategy": strategy, "train.batch_size": 8})
    model = setup_model(spec, CUDA)
    optimizer = build_optimizer(model, spec.optim, CUDA)
    ids = torch.randint(0, 1024, (8, spec.data.seq_len), device=CUDA, generator=torch.Generator(CUDA).manual_seed(0))
    batch = [Batch(ids, ids)]
    losses = [train_step(model, optimizer, batch, 1e-3, spec, CUDA)[0].item() for _ in range(8)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 0.5, losses
