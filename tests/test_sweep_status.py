"""What a sweep's trials ended as: ASHA's own record, not Tune's TERMINATED, says which ASHA stopped; ASHA's default
grace period never judges an arm inside its learning-rate warm-up."""

import json
import pickle

import pytest

from hybrid_ray.config.grid import expand, parse_grid
from hybrid_ray.config.variants import variant_spec
from hybrid_ray.errors import Interrupted, SpecError
from hybrid_ray.layout import SweepLayout
from hybrid_ray.records import decisions
from hybrid_ray.sweep import status
from hybrid_ray.sweep.asha import RecordedASHA, asha_line, grace_period, launch_order, rung_steps
from hybrid_ray.sweep.options import SweepOptions

FINISHED = {"status": "finished", "step": 60, "total_steps": 60}
CUT = {"status": "stopped", "step": 20, "total_steps": 60}
TERM = status.TuneOutcome("TERMINATED", seconds=12.0)


def test_only_asha_s_record_makes_a_trial_stopped_by_asha():
    stop = {"step": 20, "evaluations": 2, "val_loss": 3.1}
    assert status.trial_status(FINISHED, 60, TERM) == ("finished", None)
    assert status.trial_status(FINISHED, 60, TERM, stop) == ("finished", None)  # ran all its steps: not ASHA
    assert status.trial_status(CUT, 20, TERM, stop) == ("stopped by ASHA", "at step 20")
    # Ctrl-C: Tune ends the running trials as TERMINATED, like ASHA's stops; without ASHA's record they resume
    assert status.trial_status(CUT, 20, TERM) == ("interrupted", "at step 20; relaunch to resume")
    assert status.trial_status(None, None, TERM)[0] == "not started"  # cut before its first checkpoint
    assert status.trial_status(CUT, 20, status.TuneOutcome("RUNNING"))[0] == "interrupted"
    assert status.trial_status(CUT, 20, status.TuneOutcome("ERROR", "boom")) == ("failed", "boom")
    # Ctrl-C that reached the trial's own process is an interruption, not a failure
    cut = status.TuneOutcome("ERROR", "interrupted at step 20", interrupted=True)
    assert status.trial_status(CUT, 20, cut)[0] == "interrupted"
    assert status.is_interruption(Interrupted("interrupted at step 20"))
    assert status.trial_status(None, None, status.TuneOutcome("PENDING")) == ("not started", None)
    # ended and reported, then its run folder deleted (`runs rm`): Tune will not run it again
    state, reason = status.trial_status(None, None, TERM, gone=True)
    assert state == "removed" and state in status.ENDED
    assert reason.startswith("after it finished (its run folder is gone)") and "relaunch the sweep" in reason
    state, reason = status.trial_status(None, None, TERM, stop, gone=True)
    assert state == "removed" and "a sweep under a new --name" in reason
    # cut before it wrote anything (no report to Tune): not a removed trial
    assert status.trial_status(None, None, status.TuneOutcome("TERMINATED"), gone=True)[0] == "not started"


def _trial(arm: str, seed: int = 0):
    return type("T", (), {"config": {"arm": arm, "seed": seed}, "trial_id": f"id-{arm}-{seed}"})()


def _asha(folder) -> RecordedASHA:
    return RecordedASHA(SweepLayout.at(str(folder)), time_attr="evaluations", metric="val_loss", mode="min", max_t=8,
                        grace_period=1, reduction_factor=2, stop_last_trials=False)


def test_asha_records_every_judgement_and_never_stops_a_trial_itself(tmp_path):
    """Each rung judgement is written before Tune hears of it; the trial reads it and stops itself at that rung
    (train/rungs.py), so the scheduler always answers CONTINUE and never touches a run folder."""
    sweep = SweepLayout.at(str(tmp_path))
    asha = _asha(tmp_path)
    assert asha.on_trial_result(None, _trial("lr1"), {"step": 25, "evaluations": 1, "val_loss": 3.0}) == "CONTINUE"
    assert status.read_stops(sweep) == {}
    assert asha.on_trial_result(None, _trial("lr2"), {"step": 25, "evaluations": 1, "val_loss": 4.0}) == "CONTINUE"
    assert status.read_stops(sweep) == {"lr2-s0": {"step": 25, "evaluations": 1, "val_loss": 4.0}}
    lines = decisions.read(sweep.asha_decisions)
    assert [(r["trial"], r["step"], r["milestone"], r["decision"]) for r in lines] == [
        ("lr1-s0", 25, 1, "continue"), ("lr2-s0", 25, 1, "stop")]
    # a report between rungs, or one that repeats a rung already judged (a resumed trial), judges nothing
    asha.on_trial_result(None, _trial("lr1"), {"step": 25, "evaluations": 1, "val_loss": 3.0})
    asha.on_trial_result(None, _trial("lr1"), {"step": 30, "evaluations": 1, "val_loss": 2.0})
    assert len(decisions.read(sweep.asha_decisions)) == 2
    # the last evaluation is no rung: the trial ends there by itself
    assert asha.on_trial_result(None, _trial("lr1"), {"step": 200, "evaluations": 8, "val_loss": 9.0}) == "CONTINUE"
    assert len(decisions.read(sweep.asha_decisions)) == 2
    assert not list(tmp_path.glob("trials"))  # nothing of a trial touched


def test_a_relaunched_scheduler_gets_its_rungs_back_so_the_same_losses_give_the_same_stops(tmp_path):
    """The LR grid stopped lr 1e-3 when run straight through and finished it after Ctrl-C and a relaunch: the
    relaunch's scheduler (Tune unpickles the one built at the first launch) had empty rungs."""
    results = [("lr0.002", 2.5), ("lr0.0005", 2.9), ("lr0.001", 3.1)]
    straight = _asha(tmp_path / "straight")
    for arm, loss in results:
        straight.on_trial_result(None, _trial(arm), {"step": 40, "evaluations": 1, "val_loss": loss})
    first = _asha(tmp_path / "cut")
    for arm, loss in results[:2]:
        first.on_trial_result(None, _trial(arm), {"step": 40, "evaluations": 1, "val_loss": loss})
    relaunched = pickle.loads(pickle.dumps(_asha(tmp_path / "cut")))  # what Tuner.restore hands back
    relaunched.on_trial_result(None, _trial(*results[2][:1]), {"step": 40, "evaluations": 1, "val_loss": results[2][1]})
    assert status.read_stops(SweepLayout.at(str(tmp_path / "cut"))) == status.read_stops(
        SweepLayout.at(str(tmp_path / "straight")))
    assert set(status.read_stops(SweepLayout.at(str(tmp_path / "cut")))) == {"lr0.0005-s0", "lr0.001-s0"}


def test_a_grouped_asha_judges_a_trial_only_against_its_own_group_and_a_relaunch_gets_each_group_back(tmp_path):
    """--tune-lr's stage 1 (sweep/study.py): one ASHA per arm, so an LR trial of arm A is never stopped for being
    worse than arm B's. Ungrouped, B's worse LR trial is stopped against A's; grouped, it is its group's first and goes
    on, and the second of each group is judged against its own."""
    results = [("a-lr1", 2.0), ("b-lr1", 3.0), ("a-lr2", 2.5), ("b-lr2", 2.8)]
    groups = {"a-lr1": "a", "a-lr2": "a", "b-lr1": "b", "b-lr2": "b"}

    def grouped(folder):
        return RecordedASHA(SweepLayout.at(str(folder)), groups, time_attr="evaluations", metric="val_loss",
                            mode="min", max_t=8, grace_period=1, reduction_factor=2, stop_last_trials=False)

    plain, apart = _asha(tmp_path / "plain"), grouped(tmp_path / "apart")
    for arm, loss in results:
        for asha in (plain, apart):
            asha.on_trial_result(None, _trial(arm), {"step": 10, "evaluations": 1, "val_loss": loss})
    assert "b-lr1-s0" in status.read_stops(SweepLayout.at(str(tmp_path / "plain")))
    assert set(status.read_stops(SweepLayout.at(str(tmp_path / "apart")))) == {"a-lr2-s0"}  # b-lr2 beat b-lr1
    # a relaunch: the groups' rungs come back from the record, each to its own group
    cut = grouped(tmp_path / "cut")
    for arm, loss in results[:3]:
        cut.on_trial_result(None, _trial(arm), {"step": 10, "evaluations": 1, "val_loss": loss})
    relaunched = pickle.loads(pickle.dumps(grouped(tmp_path / "cut")))
    relaunched.on_trial_result(None, _trial("b-lr2"), {"step": 10, "evaluations": 1, "val_loss": 2.8})
    assert status.read_stops(SweepLayout.at(str(tmp_path / "cut"))) == status.read_stops(
        SweepLayout.at(str(tmp_path / "apart")))


def test_asha_s_rung_steps_are_where_ray_s_bracket_judges():
    from ray.tune.schedulers import ASHAScheduler

    from hybrid_ray.sweep.asha import rung_evaluations

    for steps, every, rf in [(200, 25, 3), (240, 20, 3), (1000, 50, 2), (120, 10, 3), (30, 10, 2)]:
        grid = arms(**{"train.steps": steps, "train.eval_every": every, "optim.warmup_steps": 20})
        options = SweepOptions(grid=["attention_ratio"], reduction_factor=rf)
        max_t = -(-steps // every)
        ray_rungs = ASHAScheduler(max_t=max_t, grace_period=grace_period(options, grid), reduction_factor=rf,
                                  metric="val_loss", mode="min")._brackets[0]._rungs
        assert rung_evaluations(options, grid) == sorted(int(m) for m, _ in ray_rungs if m < max_t)
        assert rung_steps(options, grid, grid[0]) == [m * every for m in rung_evaluations(options, grid)]
    assert rung_steps(SweepOptions(grid=["attention_ratio"], scheduler="fifo"), grid, grid[0]) == []


def test_launch_order_is_a_seeded_shuffle_under_asha_and_the_grid_s_order_under_fifo():
    ids = [f"lr{i}" for i in range(7)]
    asha = launch_order(SweepOptions(grid=["lr"]), ids)
    assert sorted(asha) == ids and asha != ids and asha == launch_order(SweepOptions(grid=["lr"]), ids)
    assert launch_order(SweepOptions(grid=["lr"], scheduler="fifo"), ids) == ids


def test_a_cuda_out_of_memory_error_is_one_line():
    from ray.tune.error import TuneError

    text = ("Failure # 1\nTraceback (most recent call last):\n  File \"x.py\", line 3, in f\n"
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
            "79.19 GiB of which 1.2 GiB is free.\nOf the allocated memory 70 GiB is allocated by PyTorch.\n"
            "If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")
    line = status.error_line(TuneError(text))
    assert line.startswith("torch.OutOfMemoryError: CUDA out of memory.") and "\n" not in line


def arms(**overrides):
    base = variant_spec("h100_hybrid_sparse").with_overrides({"model.vocab_size": 50257, **overrides})
    return expand(base, parse_grid(["attention_ratio"]))


@pytest.mark.parametrize("steps, every, warmup", [(200, 25, 100), (1000, 100, 100), (300, 10, 100), (30, 10, 20),
                                                  (200, 50, 20), (100, 25, 150)])
def test_default_asha_rungs_never_fall_inside_the_warm_up(steps, every, warmup):
    grid = arms(**{"train.steps": steps, "train.eval_every": every, "optim.warmup_steps": warmup})
    options = SweepOptions(grid=["attention_ratio"])
    grace = grace_period(options, grid)
    evaluations = -(-steps // every)
    assert grace * every >= min(warmup, steps)  # the first rung is at or after the warm-up's end
    assert grace >= -(-evaluations // 4) or grace == evaluations  # and not before a quarter of the run
    assert grace <= evaluations
    line = asha_line(options, grid)
    assert f"no trial stopped before step {grace * every}" in line and f"warm-up {warmup} steps" in line


def test_the_h100_study_s_default_judges_after_the_warm_up_and_an_explicit_early_rung_is_refused():
    grid = arms(**{"train.steps": 200, "train.eval_every": 25, "optim.warmup_steps": 100})
    assert grace_period(SweepOptions(grid=["attention_ratio"]), grid) == 4  # step 100: ASHA stopped the winner at 25
    with pytest.raises(SpecError, match="--grace-period 1 lets ASHA stop trials at step 25, inside the 100-step"):
        grace_period(SweepOptions(grid=["attention_ratio"], grace_period=1), grid)
    assert grace_period(SweepOptions(grid=["attention_ratio"], grace_period=6), grid) == 6


def test_a_trial_asha_stopped_before_its_first_checkpoint_is_ranked_by_the_loss_asha_judged(tmp_path):
    """On the GPU study (checkpoints every 24 steps, evaluations every 12) six arms ASHA stopped at step 12 had no
    results: the table showed '-' for them although ASHA had compared their validation loss."""
    from hybrid_ray.config.grid import Arm
    from hybrid_ray.sweep.tuner import collect

    spec = variant_spec("h100_hybrid_sparse", "tiny").with_overrides({"model.vocab_size": 320})
    (tmp_path / "trials" / "attn0-s0").mkdir(parents=True)
    (tmp_path / "trials" / "attn0-s0" / "spec.yaml").write_text(spec.to_yaml())  # every trial that started has one
    decisions.append(SweepLayout.at(str(tmp_path)).legacy_asha_stops,  # a sweep from before rung checkpoints
                     {"trial": "attn0-s0", "step": 12, "evaluations": 1, "val_loss": 2.92})
    [row] = collect([Arm("attn0", {"attention_ratio": 0.0}, spec)], 1, SweepLayout.at(str(tmp_path)), None, outcomes={"attn0-s0": TERM})
    assert row["status"] == "stopped by ASHA" and row["reason"] == "at step 12"
    assert row["best"] == {"step": 12, "val_loss": 2.92} and row["params"] > 0 and row["stopped_at_step"] == 12


def _row(arm, seed, state, loss, lr, diverged=None):
    """A sweep.json row as collect() makes it."""
    best = {"step": 20, "val_loss": loss, "val_accuracy": 0.3}
    return {"arm": arm, "settings": {"lr": lr}, "seed": seed, "name": f"{arm}-s{seed}", "run_dir": "/x", "value": lr,
            "status": state, "reason": f"at step {diverged['step']} (lr {diverged['lr']:.3g})" if diverged else None,
            "step": 20, "total_steps": 60, "params": 1e6, "best": best, "final": best, "tokens_seen": 1e5,
            "diverged": diverged, "spec": {"optim": {"lr": lr}}, "history": [best]}


def test_a_diverged_trial_is_a_result_ranked_after_every_finite_arm():
    """Its loss before it broke (2.0 here, the lowest) ranks nothing: an arm whose every seed diverged comes last and
    says where; an arm with one seed diverged is ranked on the others, after the complete arms, and says so."""
    from hybrid_ray.records import folders, report

    broke = {"step": 13, "lr": 0.004}
    results = {"status": "diverged", "step": 10, "total_steps": 60, "diverged": broke}
    assert status.trial_status(results, 10, TERM) == ("diverged", "at step 13 (lr 0.004)")
    # a sweep launched before diverged trials ended recorded it as failed: its relaunch settles it as diverged
    assert status.trial_status(results, 10, status.TuneOutcome("ERROR", "the loss stopped"))[0] == "diverged"
    assert status.DIVERGED in status.ENDED
    rows = [_row("lr0.008", 0, "diverged", 2.0, 8e-3, {"step": 9, "lr": 0.008}),
            _row("lr0.004", 0, "diverged", 2.0, 4e-3, broke),
            _row("lr0.002", 0, "finished", 2.5, 2e-3), _row("lr0.002", 1, "diverged", 2.0, 2e-3, broke),
            _row("lr0.001", 0, "finished", 3.5, 1e-3), _row("lr0.001", 1, "finished", 3.4, 1e-3),
            _row("lr0.0005", 0, "finished", 3.0, 5e-4), _row("lr0.0005", 1, "finished", 3.1, 5e-4)]
    ranked = report.arm_summary(rows)
    # complete arms, then the one with a seed left, then those that diverged: the one that trained longest first
    assert [a["arm"] for a in ranked] == ["lr0.0005", "lr0.001", "lr0.002", "lr0.004", "lr0.008"]
    assert [a["diverged"] for a in ranked] == [False, False, False, True, True]
    assert ranked[2]["best_val_loss"] == 2.5 and ranked[2]["scored_seeds"] == 1  # the diverged seed counts in no mean
    table = report.ranked_table(rows).splitlines()
    assert "1 of 2 seeds diverged" in table[3] and "diverged at step 13 (lr 0.004)" in table[3]
    for line in table[4:6]:
        assert "diverged" in line.split()[2:4] and "diverged at step" in line and "inf" not in line, line
    written = json.loads(folders.dumps(ranked))  # sweep.json's arms, as the table ranks them
    assert [a["best_val_loss"] for a in written][3:] == [None, None] and written[3]["diverged_seeds"] == 1
    assert status.divergence_line(rows) == ("3 of 8 trials diverged (lr 2e-3, 4e-3, 8e-3): lower their LR or "
                                            "lengthen the warm-up")  # lr 2e-3 also finished once
    top = [r for r in rows if r["arm"] != "lr0.002"]
    assert status.divergence_line(top) == "2 of 6 trials diverged (lr 4e-3, 8e-3): the LR grid's top is too high"
    assert status.divergence_line(rows[:2]).endswith(": every LR of the grid is too high")
    assert status.divergence_line(rows[4:]) is None
