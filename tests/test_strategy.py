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
