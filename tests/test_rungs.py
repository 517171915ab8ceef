"""The worker's side of ASHA's rungs (train/rungs.py): save at a rung, wait there for the judgement, stop when told."""

import threading
import time

import torch

from hybrid_ray.records import decisions
from hybrid_ray.train.rungs import RungConfig, Rungs, stopped_at


def rungs(tmp_path, wait_s=30.0):
    config = RungConfig((20, 60), str(tmp_path / "asha_decisions.jsonl"))
    return Rungs(config, "attn25-s0", 0, torch.device("cpu"), wait_s=wait_s), config


def judge(config, step, decision, trial="attn25-s0", after=0.0):
    def write():
        time.sleep(after)
        decisions.append(config.decisions, {"trial": trial, "milestone": step // 20, "evaluations": step // 20,
                                            "step": step, "val_loss": 2.5, "decision": decision})
    if after:
        threading.Thread(target=write).start()
    else:
        write()


def test_a_rung_waits_for_its_judgement_and_stops_the_run_only_when_told(tmp_path):
    gate, config = rungs(tmp_path)
    assert gate.due(20) and gate.due(60) and not gate.due(40)
    assert not gate.stop(10)  # between rungs: a look at the record, no wait
    judge(config, 20, "stop", trial="attn0-s0")  # another trial's judgement is not this one's
    started = time.monotonic()
    judge(config, 20, "continue", after=0.5)
    assert not gate.stop(20) and time.monotonic() - started >= 0.45  # it waited for its own line
    assert not gate.stop(40) and stopped_at(config, "attn25-s0") is None
    judge(config, 60, "stop", after=0.3)
    assert gate.stop(60) and stopped_at(config, "attn25-s0") == 60
    assert gate.stop(80)  # a later report (a judgement read late) stops it too
    assert gate.late == []


def test_a_resumed_run_at_an_unjudged_rung_is_pending_and_a_missing_judgement_does_not_hang(tmp_path):
    gate, config = rungs(tmp_path, wait_s=0.3)
    assert gate.pending(20) and not gate.pending(30)
    assert not gate.stop(20) and gate.late == [20]  # no judgement within wait_s: it trains on, and says so
    judge(config, 20, "continue")
    assert not gate.pending(20)
    free = Rungs(None, "run", 0, torch.device("cpu"))  # a run no scheduler judges: nothing is read or awaited
    assert not free.due(20) and not free.pending(20) and not free.stop(20) and stopped_at(None, "run") is None
