"""`--strategy auto`: FSDP2 on GPU workers in a process group, DDP everywhere else; explicit choices stand."""

import pytest
import torch

from hybrid_ray.errors import SpecError
from hybrid_ray.spec import RunSpec
from hybrid_ray.train.parallelize import resolve_strategy


def test_auto_is_ddp_on_cpu_and_without_a_process_group():
    assert resolve_strategy("auto", torch.device("cpu")) == "ddp"
    assert resolve_strategy("auto", torch.device("cuda", 0)) == "ddp"  # no process group in this test process


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_explicit_strategy_is_kept(strategy):
    assert resolve_strategy(strategy, torch.device("cpu")) == strategy


def test_unknown_strategies_fail():
    with pytest.raises(SpecError, match="scale.strategy must be one of auto, ddp, fsdp"):
        RunSpec.from_dict({"scale": {"strategy": "zero3"}})


@pytest.fixture
def one_rank_group():
    """A gloo process group of one in this test process (as a lone Ray Train worker has), removed afterwards."""
    import torch.distributed as dist

    from hybrid_ray.train.parallelize import single_process_group

    single_process_group(torch.device("cpu"))
    yield
    dist.destroy_process_group()


def test_shard_local_optimizer_and_clip_match_torch_under_fsdp2(one_rank_group, monkeypatch):
    """The host-work cuts of issue 39 (off by default) are exact: AdamW and the gradient clip on each rank's local
    shards give torch's numbers bit for bit on one rank (norms and weights after three clipped steps of a tiny FSDP2
    model whose blocks keep their gathered parameters), and the optimizer state stays DTensors (checkpoints)."""
    from torch.distributed.fsdp import fully_shard

    from hybrid_ray.config.variants import variant_spec
    from hybrid_ray.model import build_model
    from hybrid_ray.train import parallelize
    from hybrid_ray.train.optim import ShardLocalAdamW, build_optimizer

    assert parallelize.HOST_WORK == parallelize.HostWork(True, True)  # on by default (issue 48)
    monkeypatch.setattr(parallelize, "HOST_WORK", parallelize.HostWork(False, False))
    assert parallelize.reshard_after_forward(1) is True and type(build_optimizer(
        torch.nn.Linear(2, 2), variant_spec().optim, torch.device("cpu"))) is torch.optim.AdamW
    monkeypatch.setattr(parallelize, "HOST_WORK", parallelize.HostWork(True, True))
    assert parallelize.reshard_after_forward(1) is False and parallelize.reshard_after_forward(2) is True
    spec = variant_spec("h100_hybrid_sparse").with_overrides({
        "scale.backend": "torch", "model.hidden_size": 32, "model.num_heads": 2, "model.head_dim": 16,
        "model.attn_num_heads": 2, "model.vocab_size": 64, "model.num_layers": 2, "model.attn_layers": [1]})
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    runs = []
    for local in (True, False):
        model = build_model(spec.model, "torch", device=torch.device("cpu"), seed=0)
        for block in model.model.layers:
            fully_shard(block, reshard_after_forward=parallelize.reshard_after_forward(1))
        fully_shard(model)
        optimizer = build_optimizer(model, spec.optim, torch.device("cpu"))
        if not local:
            optimizer = torch.optim.AdamW(optimizer.param_groups, lr=spec.optim.lr, betas=(0.9, 0.95))
        assert isinstance(optimizer, ShardLocalAdamW) == local
        norms = []
        for _ in range(3):
            model(input_ids=ids, labels=ids).loss.backward()
            if local:
                norms.append(parallelize.clip_grad_norm(model.parameters(), 0.5).item())
            else:
                norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5).full_tensor().item())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        state = {k: v.full_tensor() for k, v in model.state_dict().items()}
        runs.append((norms, state, type(next(iter(optimizer.state.values()))["exp_avg"]).__name__))
    (norms, state, moment_type), (torch_norms, torch_state, _) = runs
    assert norms == torch_norms and norms[0] > 0.5  # the clip acted
    assert moment_type == "DTensor"
    for name, value in state.items():
        torch.testing.assert_close(value, torch_state[name], rtol=0, atol=0, msg=name)
