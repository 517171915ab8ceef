"""`sweep --tune-lr` (sweep/study.py): stage 1 chooses each arm's learning rate, stage 2 trains every arm at it with
the seeds, the report holds the trials' numbers; a relaunch never searches a chosen arm again."""

import json
import math

import pytest

from hybrid_ray.cli import main
from hybrid_ray.config.variants import variant_spec
from hybrid_ray.records.report import _mean_std
from hybrid_ray.sweep.options import SweepOptions

TINY = {"data.max_documents": 200, "model.num_layers": 2, "model.attn_layers": [1], "train.steps": 12,
        "train.eval_every": 4, "train.checkpoint_every": 4, "train.log_every": 4, "train.eval_tokens": 2048,
        "optim.warmup_steps": 2, "scale.cpus_per_worker": 0.5, "train.eval_recall": False}


@pytest.mark.parametrize("args, fragment", [
    (["--grid", "attention_ratio", "--tune-lr", "--grid", "lr"], "drop --grid lr"),
    (["--grid", "attention_ratio", "--tune-lr", "--seeds", "0"], "--seeds must be >= 1"),
    (["--grid", "attention_ratio", "--lr-grid", "1e-3,2e-3"], "go with --tune-lr"),
    (["--grid", "attention_ratio", "--tune-lr", "--lr-grid", "1e-3"], "two or more distinct"),
    (["--grid", "attention_ratio", "--tune-lr", "--scheduler", "fifo"], "drop --scheduler"),
])
def test_bad_tune_lr_combinations_are_one_line(tmp_path, capsys, args, fragment):
    assert main(["sweep", "--preset", "tiny", "--name", "s", "--storage-path", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not (tmp_path / "s").exists()


def _finished_search_trial(study) -> bool:
    """Whether a stage-1 trial has run all its steps (a results.json that says `stopped` may be a trial the sweep
    cut, which resumes)."""
    for results in (study / "lr" / "trials").glob("*/results.json"):
        try:
            if json.loads(results.read_text())["status"] == "finished":
                return True
        except (OSError, ValueError, KeyError):  # being written
            pass
    return False


@pytest.mark.slow
@pytest.mark.timeout(2400)  # 15 trials, a Ctrl-C and two relaunches on a shared 2-CPU machine
def test_each_arm_is_compared_at_the_lr_its_search_chose_and_the_report_holds_the_trials_numbers(ray_head,
                                                                                                  tmp_path):
    """The README's study command at the tiny size (3 arms, 2 seeds), on a head, as a user runs it: Ctrl-C during
    stage 1 once a trial has ended says interrupted with the command to relaunch (exit 130); the relaunch trains no
    ended LR trial again and ends the study; each arm's choice is its best finished LR trial, stage 2 trains each arm
    at it, report.md holds the trials' numbers; a second relaunch searches nothing and `compare` reads stage 2."""
    import signal
    import subprocess
    import time

    from ray_procs import HYBRID_RAY

    from hybrid_ray.layout import StudyLayout
    from hybrid_ray.sweep.study import read_choices

    config = tmp_path / "tiny.yaml"
    config.write_text(variant_spec("h100_hybrid_sparse", "tiny").with_overrides(TINY).to_yaml())
    args = [HYBRID_RAY, "sweep", "--config", str(config), "--grid", "attention_ratio=0,0.5,1", "--seeds", "2",
            "--tune-lr", "--lr-grid", "1e-2,3e-2,1e-1", "--tune-steps", "8", "--storage-path", str(tmp_path),
            "--name", "study", "--address", ray_head.address]
    study_dir = tmp_path / "study"
    proc = subprocess.Popen(args, env=ray_head.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not _finished_search_trial(study_dir):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (out + err)[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: sweep lr interrupted after ") and "relaunch the same command" in last, last
    assert "--tune-lr" in last and "stage 2" not in out
    # what the cut search recorded as ended for good (finished or stopped by ASHA; a trial it cut is `interrupted`)
    rows = json.loads((study_dir / "lr" / "sweep.json").read_text())["trials"]
    ended = {r["name"]: (study_dir / "lr" / "trials" / r["name"] / "results.json").read_bytes() for r in rows
             if r["status"] in ("finished", "stopped by ASHA")}
    assert ended and not (study_dir / "lr_choices.jsonl").exists()  # no decision from a cut search

    again = subprocess.run(args, env=ray_head.env, capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "resuming lr" in again.stdout
    for name, before in ended.items():  # an LR trial that ended before the cut is not trained again
        trial = study_dir / "lr" / "trials" / name
        assert (trial / "results.json").read_bytes() == before, name
        assert json.loads((trial / "launches.json").read_text())["launches"] == 1, name
    study = StudyLayout(str(tmp_path), "study")
    choices = read_choices(study)
    assert sorted(choices) == ["attn0", "attn100", "attn50"]
    # stage 1: each arm's choice is its best finished LR trial's final loss, read back from the trials themselves
    for arm, choice in choices.items():
        finished = {}
        for sweep in ("lr", "lr-extend"):
            for trial in (study_dir / sweep / "trials").glob(f"{arm}-lr*-s0"):
                results = json.loads((trial / "results.json").read_text())
                assert results["total_steps"] == 8  # --tune-steps
                # an ended LR trial keeps its records, not its weights (91 would not fit an H100 node's disk)
                assert not (trial / "model").exists() and not list(trial.glob("checkpoint_0*")), trial
                if results["status"] == "finished":
                    finished[results["spec"]["optim"]["lr"]] = results["final"]["val_loss"]
        best = min(finished, key=finished.get)
        assert choice["lr"] == pytest.approx(best) and choice["val_loss"] == pytest.approx(finished[best])
        assert choice["extended"] == (choice["edge"] is not None)
        assert choice["lr"] == pytest.approx(3e-2)  # the tiny model at 8 steps: x3 either side is worse (no extension)
    # ASHA judged an LR trial only against its own arm's
    judged = [json.loads(line) for line in (study_dir / "lr" / "asha_decisions.jsonl").read_text().splitlines()]
    for arm in choices:
        mine = [d for d in judged if d["trial"].startswith(f"{arm}-lr")]
        assert mine and any(d["decision"] == "continue" for d in mine), (arm, judged)
    # stage 2: every arm at its chosen LR, every seed to the full length, FIFO
    trials = {}
    for arm, choice in choices.items():
        for seed in (0, 1):
            run = study_dir / "compare" / "trials" / f"{arm}-s{seed}"
            results = json.loads((run / "results.json").read_text())
            assert results["status"] == "finished" and results["step"] == 12
            assert (run / "model").is_dir()
            assert results["spec"]["optim"]["lr"] == pytest.approx(choice["lr"])
            trials.setdefault(arm, []).append(results["best"]["val_loss"])
    assert not (study_dir / "compare" / "asha_decisions.jsonl").exists()
    # the report's numbers are the trials' numbers
    report = (study_dir / "report.md").read_text()
    for arm, losses in trials.items():
        mean, std = _mean_std(losses)
        assert f"{mean:.4f} ± {std:.4f}" in report, (arm, report)
        assert f"| {arm} | {choices[arm]['lr']:.3g} | {choices[arm]['val_loss']:.4f} |" in report
    assert "Welch" in report and "trial-steps" in report and (study_dir / "study.png").exists()
    compared = json.loads((study_dir / "compare" / "sweep.json").read_text())["trials"]
    assert {r["name"] for r in compared} == {f"{a}-s{s}" for a in choices for s in (0, 1)}
    # a relaunch reads the choices and searches nothing again; `compare` reads stage 2 like any sweep
    before = (study_dir / "lr_choices.jsonl").read_text()
    third = subprocess.run(args, env=ray_head.env, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0 and "stage 1" not in third.stdout, (third.stdout + third.stderr)[-3000:]
    assert (study_dir / "lr_choices.jsonl").read_text() == before
    assert main(["compare", str(study_dir / "compare"), "--out", str(tmp_path / "cmp")]) == 0
    assert all(math.isfinite(l) for losses in trials.values() for l in losses)


def test_the_dry_run_shows_both_stages_and_the_saving_against_the_full_product(tmp_path, capsys):
    assert main(["sweep", "--preset", "tiny", "--grid", "attention_ratio=0,0.5,1", "--tune-lr", "--seeds", "2",
                 "--tune-steps", "100", "--steps", "400", "--dry-run", "--assume-gpus", "1", "--assume-gpu-memory", "80",
                 "--assume-free-disk", "100", "--name", "s", "--storage-path", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "stage 1, the LR search: 3 arm(s) x 7 LR(s) x 1 seed = 21 trial(s) of 100 steps" in out
    assert "then at most 6 more, FIFO" in out
    assert "stage 2, the comparison: 3 arm(s) x 2 seed(s) = 6 trial(s) of 400 steps" in out
    assert "trials: 21 arm(s) x 1 seed(s) = 21" in out and "trials: 3 arm(s) x 2 seed(s) = 6" in out
    # 21 x 100 + 6 x 100 (extensions) + 6 x 400 trial-steps, against 21 arms x 2 seeds x 400
    assert "at most 5100 trial-steps" in out and "against 16800" in out
    assert not (tmp_path / "s").exists()  # a plan writes nothing


def test_an_arm_s_choice_is_its_best_finished_lr_an_edge_extends_once_and_is_written_once(tmp_path):
    """What stage 1 decides from an arm's LR curve: trials ASHA stopped are never chosen (they saw fewer steps), a
    best finished LR at the grid's highest asks for two values past it, an arm whose every LR diverged searches lower,
    and the choice is written once (a second write is refused: a relaunch reads it, never redoes it)."""
    from hybrid_ray.errors import HybridRayError
    from hybrid_ray.layout import StudyLayout
    from hybrid_ray.sweep.study import best_point, edge_of, read_choices, record_choice

    def point(lr, status, loss):
        return {"lr": lr, "status": status, "step": 8, "val_loss": loss, "trial": f"a-lr{lr}-s0"}

    curve = [point(1e-3, "stopped by ASHA", 2.0), point(2e-3, "finished", 3.0), point(4e-3, "finished", 2.5)]
    assert best_point(curve)["lr"] == 4e-3  # the stopped trial's lower loss was at an earlier step
    edge = edge_of(curve)
    assert edge.side == "highest" and edge.extend == (8e-3, 1.6e-2)
    assert edge_of([point(1e-3, "finished", 3.0), point(2e-3, "finished", 2.5), point(4e-3, "finished", 2.9)]) is None
    diverged = [point(1e-3, "diverged", None), point(2e-3, "diverged", None)]
    assert best_point(diverged) is None and edge_of(diverged).extend == (5e-4, 2.5e-4)
    study = StudyLayout(str(tmp_path), "s")
    (tmp_path / "s").mkdir()
    record = record_choice(study, "a", curve + [point(8e-3, "finished", 2.4)], edge, extended=True)
    assert record["lr"] == 8e-3 and read_choices(study) == {"a": record}
    assert record["still_at_edge"].startswith("best lr 8e-3 is the grid's highest")  # bounded: said, not searched
    with pytest.raises(HybridRayError, match="already chosen"):
        record_choice(study, "a", curve, None, extended=False)
    with pytest.raises(HybridRayError, match="every one diverged"):
        record_choice(study, "b", diverged, None, extended=True)
    assert list(read_choices(study)) == ["a"]
