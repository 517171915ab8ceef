"""The learning-rate schedule (warmup, decay, the step convention, extension) and AdamW's parameter groups."""

import math

import pytest

from hybrid_ray.config.variants import variant_spec
from hybrid_ray.model import build_model
from hybrid_ray.spec import OptimSpec
from hybrid_ray.train.optim import LRSchedule, param_groups

LR, FLOOR = 1e-3, 1e-4  # min_lr_ratio 0.1


def schedule(total=100, warmup=10, shape="linear"):
    return LRSchedule.from_spec(OptimSpec(lr=LR, warmup_steps=warmup, schedule=shape), total)


def test_warmup_is_linear_and_the_first_update_already_has_a_learning_rate():
    s = schedule()
    # the update made at 0-based step t uses the value at position t + 1 ("t + 1 updates done")
    assert s.lr_at(0) == pytest.approx(LR / 10)
    assert s.lr_at(4) == pytest.approx(LR / 2)
    assert s.lr_at(9) == pytest.approx(LR)


def test_linear_decay_reaches_the_floor_on_the_last_update():
    s = schedule()
    assert s.lr_at(54) == pytest.approx(LR + (FLOOR - LR) * 45 / 90)  # halfway through the 90 decay steps
    assert s.lr_at(99) == pytest.approx(FLOOR)
    lrs = [s.lr_at(t) for t in range(10, 100)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_cosine_decay_and_no_warmup():
    s = schedule(warmup=0, shape="cosine")
    assert s.lr_at(49) == pytest.approx(FLOOR + (LR - FLOOR) * 0.5)  # position 50 of 100: half-way down
    assert s.lr_at(0) == pytest.approx(FLOOR + (LR - FLOOR) * 0.5 * (1 + math.cos(math.pi / 100)))
    assert s.lr_at(99) == pytest.approx(FLOOR)


def test_warmup_longer_than_the_run_is_cut_to_it():
    s = schedule(total=5, warmup=10)
    assert s.total_steps == 5 and s.lr_at(4) == pytest.approx(LR)


def test_the_warm_up_a_spec_records_is_the_one_its_schedule_uses():
    """Issue 46: `train --steps 10` under the tiny preset's 20-step warm-up trained a rising LR, silently, and its
    spec.yaml said 20. warmup_used cuts the spec's warm-up to the run (the same schedule, step for step) and says so in
    one line; a warm-up over more than half the run is said too; the tiny preset's own 200 steps say nothing."""
    from hybrid_ray.config.build import build_spec, warmup_used

    tiny = build_spec()  # a user's defaults: the tiny preset, 200 steps, 20 of warm-up
    assert (tiny.train.steps, tiny.optim.warmup_steps) == (200, 20) and warmup_used(tiny) == (tiny, None)
    short = tiny.with_overrides({"train.steps": 10})
    used, note = warmup_used(short)
    assert used.optim.warmup_steps == 10 and used.with_overrides({"optim.warmup_steps": 20}) == short
    assert note.startswith("the 20-step learning-rate warm-up is longer than the 10-step run: it is cut to the run's "
                           "10 steps (spec.yaml records 10), so the LR only rises") and "never decays" in note
    assert warmup_used(used) == (used, "the 10-step learning-rate warm-up is as long as the 10-step run, so the LR "
                                       "only rises, to its peak at the last step, and never decays; --warmup-steps "
                                       "sets the warm-up")  # said, with nothing to cut
    lrs = [LRSchedule.from_spec(s.optim, 10) for s in (short, used)]
    assert [lrs[0].lr_at(t) for t in range(10)] == [lrs[1].lr_at(t) for t in range(10)]
    assert lrs[1].lr_at(9) == pytest.approx(tiny.optim.lr) and lrs[1].lr_at(8) < lrs[1].lr_at(9)
    close = tiny.with_overrides({"train.steps": 30})
    assert warmup_used(close) == (close, "the 20-step learning-rate warm-up takes 67% of the 30-step run: the LR "
                                         "decays over its last 10 step(s) only; --warmup-steps sets the warm-up")
    assert warmup_used(tiny.with_overrides({"train.steps": 40}))[1] is None  # half the run: said by nothing


def test_extending_keeps_the_past_and_continues_without_a_jump():
    s = schedule()
    before = [s.lr_at(t) for t in range(100)]
    s.extend(100, 150, OptimSpec(lr=LR, warmup_steps=10))
    assert s.total_steps == 150 and [s.lr_at(t) for t in range(100)] == before
    assert all(s.lr_at(t) == pytest.approx(FLOOR) for t in range(100, 150))  # finished: already on the floor

    early = schedule()
    early.extend(60, 150, OptimSpec(lr=LR, warmup_steps=10))  # a run stopped at step 60 (--until-step), then lengthened
    reached = schedule().lr_at(59)
    assert early.lr_at(59) == pytest.approx(reached)
    assert early.lr_at(60) == pytest.approx(reached - (reached - FLOOR) / 90)  # 90 steps from there to the floor
    assert early.lr_at(149) == pytest.approx(FLOOR)


def test_schedule_round_trips_through_a_dict():
    s = schedule()
    s.extend(100, 120, OptimSpec(lr=LR))
    again = LRSchedule.from_dict(s.to_dict())
    assert [again.lr_at(t) for t in range(120)] == [s.lr_at(t) for t in range(120)]


def test_weight_decay_only_on_matrices():
    spec = variant_spec("h100_hybrid_sparse", "tiny").model.with_vocab(64)
    model = build_model(spec, "torch")
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 and "embeddings" not in names[id(p)] for p in decay["params"])
    skipped = {names[id(p)].rsplit(".", 1)[-1] for p in no_decay["params"]}
    assert {"A_log", "dt_bias", "weight"} <= skipped  # norms' weights are 1-d
    assert any("embeddings" in names[id(p)] for p in no_decay["params"])
