"""The worker loop's components, without Ray: each one's cadence, the report rule, the metrics window, the evaluator's
sample and full split, the checkpointer's components, and the divergence stop."""

import json
import shutil
import time
from types import SimpleNamespace

import pytest
import torch

from hybrid_ray.config.variants import variant_spec
from hybrid_ray.data import Batch
from hybrid_ray.layout import DIVERGED_FILE, RunLayout
from hybrid_ray.model import build_model
from hybrid_ray.train import checkpoint as ckpt
from hybrid_ray.train.cadence import Every, report_due
from hybrid_ray.train.checkpoint import Checkpointer, SaveConfig, TrainerState
from hybrid_ray.train.evaluate import EvalConfig, Evaluator
from hybrid_ray.train.loop import Divergence
from hybrid_ray.train.metrics import LogConfig, MetricsLogger
from hybrid_ray.train.optim import LRSchedule

CPU = torch.device("cpu")
SPEC = variant_spec("h100_hybrid_sparse", "tiny").with_overrides({
    "model.vocab_size": 64, "model.num_layers": 2, "model.attn_layers": [1],
    "train.log_every": 5, "train.eval_every": 10, "train.checkpoint_every": 7})


def test_every_is_due_at_its_multiples_and_at_a_launchs_last_step():
    every = Every(5)
    assert [s for s in range(1, 13) if every.due(s, last=s == 12)] == [5, 10, 12]
    assert [s for s in range(8, 13) if every.due(s, last=False)] == [10]  # a resumed launch keeps the run's steps


def test_reports_happen_at_saves_and_evaluations_only():
    assert [report_due(s, e) for s, e in [(False, False), (True, False), (False, True), (True, True)]] == \
        [False, True, True, True]
    evaluator, saver = Every(SPEC.train.eval_every), Every(SPEC.train.checkpoint_every)
    steps = [s for s in range(1, 24) if report_due(saver.due(s, s == 23), evaluator.due(s, s == 23))]
    assert steps == [7, 10, 14, 20, 21, 23]  # no log-only step reports (a report waits on Ray's 2 s poll)


def test_the_metrics_logger_averages_its_window_and_shows_only_on_rank_0(tmp_path, capsys):
    logger = MetricsLogger(LogConfig.from_spec(SPEC), CPU, rank=0, world_size=1, tensorboard_dir=str(tmp_path / "tb"), echo=True)
    assert [s for s in range(1, 12) if logger.should_log(s, last=s == 11)] == [5, 10, 11]
    state = TrainerState(step=2, total_steps=10, tokens_seen=2 * logger.tokens_per_step, train_seconds=4.0)
    logger.add(torch.tensor(1.0))
    logger.add(torch.tensor(3.0))
    record = logger.record(state, torch.tensor(0.5), lr=1e-3, epoch=0.25)
    assert (record["step"], record["loss"], record["grad_norm"], record["lr"], record["epoch"]) == (2, 2.0, 0.5, 1e-3, 0.25)
    assert record["tokens_seen"] == 2 * SPEC.train.batch_size * SPEC.data.seq_len and record["time_s"] == 4.0
    assert record["tokens_per_s"] > 0 and record["memory_gib"] > 0
    logger.add(torch.tensor(5.0))
    assert logger.record(state, torch.tensor(0.5), lr=1e-3, epoch=0.25)["loss"] == 5.0  # the window restarted
    logger.write(state, {})
    assert state.history == [] and capsys.readouterr().out == ""
    logger.write(state, {**record, "val_loss": 1.5, "val_accuracy": 0.5, "val_perplexity": 4.48, "val_tokens": 1000,
                         "val_split": "sample"})
    out = capsys.readouterr().out.splitlines()
    assert len(state.history) == 1 and out[0].startswith("step 2/10 | loss 2.0000 | lr 1.00e-03")
    assert out[1] == "eval step 2: val_loss 1.5000 | val_acc 0.5000 | val_ppl 4.48 | 1,000 sample validation tokens"
    logger.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))  # rank 0's TensorBoard
    other = MetricsLogger(LogConfig.from_spec(SPEC), CPU, rank=1, world_size=2, tensorboard_dir=str(tmp_path / "tb1"), echo=True)
    other.write(state, record)
    other.close()
    assert capsys.readouterr().out == "" and not (tmp_path / "tb1").exists() and len(state.history) == 2


class Uniform(torch.nn.Module):
    """Equal logits over 4 tokens: a validation loss of ln 4."""

    def forward(self, input_ids, cu_seqlens=None, **_):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 4))


class Splits:
    """A dataset's validation split of two batches; a sample of it is the first batch."""

    task = "lm"

    def __init__(self):
        self.full = [Batch(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 2]])),
                     Batch(torch.tensor([[3, 2, 1]]), torch.tensor([[3, 2, 1]]))]

    def val_batches(self, max_tokens=None, **layout):
        return self.full[:1] if max_tokens else self.full


def test_the_evaluator_scores_its_sample_and_the_whole_split_at_the_runs_end():
    evaluator = Evaluator(EvalConfig.from_spec(SPEC), Splits(), Uniform(), CPU, layout={})
    assert [s for s in range(1, 26) if evaluator.should_evaluate(s, last=s == 25)] == [10, 20, 25]
    mid = evaluator.run(TrainerState(step=10, total_steps=30, train_seconds=2.0), last=True)  # --until-step 10
    assert (mid["step"], mid["val_split"], mid["val_tokens"], mid["time_s"]) == (10, "sample", 2, 2.0)
    assert mid["val_loss"] == pytest.approx(torch.log(torch.tensor(4.0)).item())
    end = evaluator.run(TrainerState(step=30, total_steps=30), last=True)
    assert (end["val_split"], end["val_tokens"]) == ("full", 4)


class Counter:
    def __init__(self):
        self.count = 0

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def test_the_checkpointer_saves_its_components_state_dicts_without_touching_the_live_state():
    model = build_model(SPEC.model, "torch")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule, loader = LRSchedule.from_spec(SPEC.optim, 20), Counter()
    schedule.extend(10, 30, SPEC.optim)
    loader.count = 10
    checkpointer = Checkpointer(SaveConfig.from_spec(SPEC), model, optimizer, {"schedule": schedule, "loader": loader}, rank=0,
                                world_size=1, known=["checkpoint_00000010"])
    assert [s for s in range(1, 16) if checkpointer.should_save(s, last=s == 15)] == [7, 14, 15]
    state = TrainerState(step=10, total_steps=30)
    folder, name = checkpointer.save(state)
    try:
        assert name == "checkpoint_00000010-1"  # a folder of that step exists: never overwritten in place
        saved = ckpt.load(folder, rank=0).state
        assert saved.schedule == schedule.state_dict() and saved.loader == {"count": 10}
        assert (state.schedule, state.loader) == ({}, {})
        again = LRSchedule.from_spec(SPEC.optim, 20)
        again.load_state_dict(saved.schedule)
        assert again == schedule and again.total_steps == 30
    finally:
        shutil.rmtree(folder)


def test_a_divergence_stops_at_its_first_bad_step_and_records_it(tmp_path):
    spec = SPEC.with_overrides({"storage_path": str(tmp_path), "name": "run"})
    schedule = LRSchedule.from_spec(spec.optim, 20)
    divergence = Divergence(CPU, RunLayout.of(spec).diverged, rank=0)
    divergence.track(1, torch.tensor(1.0), torch.tensor(1.0))
    assert not divergence.stop(schedule) and not (tmp_path / "run" / DIVERGED_FILE).exists()
    divergence.track(2, torch.tensor(float("nan")), torch.tensor(1.0))
    divergence.track(3, torch.tensor(1.0), torch.tensor(float("inf")))
    assert divergence.stop(schedule)
    assert json.loads((tmp_path / "run" / DIVERGED_FILE).read_text()) == {"step": 2, "lr": schedule.lr_at(1)}


def test_a_launchs_compiling_first_step_is_not_throughput(capsys):
    logger = MetricsLogger(LogConfig.from_spec(SPEC), CPU, rank=0, world_size=1, tensorboard_dir=None, echo=True)
    state = TrainerState(step=1, total_steps=10, tokens_seen=logger.tokens_per_step)
    before = time.perf_counter()
    logger.add(torch.tensor(2.0), timed=False)  # the loop's first step of a launch: the clock restarts after it
    assert logger.meter.start >= before and logger.meter.tokens == 0
    record = logger.record(state, torch.tensor(0.5), lr=1e-3, epoch=0.0)
    assert record["loss"] == 2.0 and not {"tokens_per_s", "tokens_per_s_per_worker", "mfu"} & record.keys()
    logger.write(state, record)
    assert "tok/s" not in capsys.readouterr().out  # a window of only that step shows no rate rather than a wrong one
    logger.add(torch.tensor(1.0))
    assert logger.record(state, torch.tensor(0.5), lr=1e-3, epoch=0.0)["tokens_per_s"] > 0
    logger.close()
