"""The GPU-hours a sweep's dry run prints (#49): the measured speed of earlier runs under the storage path (runs,
sweep trials, a study's stage trials), matched to the planned arms by what sets their speed, GPU runs only. No Ray, no
GPU: the runs are fake results.json files where layout.py puts them."""

import pytest

from hybrid_ray.cli import main
from hybrid_ray.config.build import sweep_base
from hybrid_ray.layout import RunLayout, StudyLayout, SweepLayout
from hybrid_ray.records import folders
from hybrid_ray.sweep.options import SweepOptions
from hybrid_ray.sweep.plan import Assumed, dry_run

H100 = "NVIDIA H100 80GB HBM3"
ASSUME = ["--assume-gpus", "1", "--assume-gpu-memory", "80", "--assume-free-disk", "500"]
GRID = "attention_ratio=0,0.5"


def planned_arms(tmp_path, capsys):
    """The H100 base's two arms as the dry run plans them (vocabulary, warm-up and GPU share resolved)."""
    base = sweep_base(variant="h100_deltanet", overrides={"storage_path": str(tmp_path), "name": "sw"})
    plan = dry_run(base, SweepOptions(grid=[GRID], seeds=2), assume=Assumed(1, 80, 500))
    capsys.readouterr()
    return {a.id: a.spec for a in plan.arms}


def measured(run: RunLayout, spec, *, wall, step, train=None, compile=7.0, launches=1, device=H100, share=None,
             **changes):
    """A results.json of `spec` trained elsewhere: another name, seed, LR and storage path, which set no speed.
    `train`: its train_seconds (None: a results.json from before them, which has none)."""
    record = spec.with_overrides({"name": run.name, "train.seed": 7, "optim.lr": 3e-4, "storage_path": "/elsewhere",
                                  **changes}).to_dict()
    record["scale"]["gpus_per_worker"] = share  # None: a run alone, one GPU a worker on a GPU node
    timed = {} if train is None else {"train_seconds": train, "compile_seconds": compile, "launches": launches}
    folders.write_results(run, {"name": run.name, "status": "finished", "step": step, "total_steps": step,
                                "spec": record, "wall_seconds": wall, **timed, "mean_tokens_per_s": 1e5,
                                "tokens_seen": step * 49152,
                                "versions": {"device": device, "backend": "fla" if "NVIDIA" in device else "torch"}})


def sweep_dry_run(tmp_path, capsys, *more):
    rc = main(["sweep", "--variant", "h100_deltanet", "--grid", GRID, "--seeds", "2", "--dry-run", *ASSUME,
               "--name", "sw", "--storage-path", str(tmp_path), *more])
    out = capsys.readouterr().out
    assert rc == 0, out
    return [line for line in out.splitlines() if line.startswith("GPU-hours: ")], out


def test_the_dry_run_shows_the_gpu_hours_at_the_arms_measured_speed(tmp_path, capsys):
    arms = planned_arms(tmp_path, capsys)
    assert list(arms) == ["attn0", "attn50"]
    # attn0: a run alone on 1 GPU in 2 launches (1500 GPU-s training 1000 steps; (1600 - 1500) / 2 = 50 GPU-s a
    # launch) and a study's stage-1 trial on half a GPU (250 s x 0.5 = 125 GPU-s training 250 steps; (500 - 250) x 0.5
    # = 125 GPU-s its launch), pooled: (1500 + 125) / 1250 = 1.3 GPU-s a step, (50 + 125) / 2 = 87.5 a launch
    measured(RunLayout.named(str(tmp_path), "solo"), arms["attn0"], wall=1600.0, train=1500.0, step=1000, launches=2)
    study = StudyLayout(str(tmp_path), "st")
    measured(study.lr_search.trial("attn0-lr0.004-s0"), arms["attn0"], wall=500.0, train=250.0, step=250, share=0.5)
    # a run from before train_seconds: its wall time a step would count only where no later run measured attn0
    measured(RunLayout.named(str(tmp_path), "older"), arms["attn0"], wall=10.0, step=1000)
    # attn50: a sweep's trial on half a GPU: 1800 s x 0.5 / 1000 steps = 0.9 GPU-s a step, (2000 - 1800) x 0.5 = 100
    # GPU-s its launch
    old = SweepLayout(str(tmp_path), "old")
    measured(old.trial("attn50-s1"), arms["attn50"], wall=2000.0, train=1800.0, step=1000, share=0.5,
             **{"scale.backend": "fla", "scale.strategy": "fsdp"})  # what `auto` is on a GPU
    # never counted: a CPU run of attn50, a run at another batch size, a diverged run
    measured(old.trial("attn50-s2"), arms["attn50"], wall=10.0, train=5.0, step=1000, device="x86_64")
    measured(old.trial("attn50-s3"), arms["attn50"], wall=10.0, train=5.0, step=1000, **{"train.batch_size": 32})
    measured(RunLayout.named(str(tmp_path), "bad"), arms["attn0"], wall=10.0, train=5.0, step=1000)
    bad = folders.read_results(RunLayout.named(str(tmp_path), "bad"))
    folders.write_results(RunLayout.named(str(tmp_path), "bad"), {**bad, "status": "diverged"})
    # 2 arms x 2 seeds x 1000 steps: attn0 2 x 87.5 + 2 x 1000 x 1.3 = 2775, attn50 2 x 100 + 2 x 1000 x 0.9 = 2000:
    # 4775 GPU-s = 1.33 h, 375 GPU-s = 0.10 h of it the launches; ASHA may stop trials: at most
    lines, out = sweep_dry_run(tmp_path, capsys)
    assert lines == [f"GPU-hours: at most about 1.3 (4 trials x 1000 steps at the speed measured on {H100} for 2 of 2 "
                     "arms; 0.1 of it trial start-up and end)"], out
    # 600 steps: 175 + 1200 x 1.3 + 200 + 1200 x 0.9 = 3015 GPU-s = 0.84 h
    lines, _ = sweep_dry_run(tmp_path, capsys, "--scheduler", "fifo", "--steps", "600")
    assert lines == [f"GPU-hours: about 0.84 (4 trials x 600 steps at the speed measured on {H100} for 2 of 2 arms; "
                     "0.1 of it trial start-up and end)"]
    assert not (tmp_path / "sw").exists()  # a dry run writes nothing


def test_a_short_run_s_start_up_is_counted_once_a_trial_not_once_a_step(tmp_path, capsys):
    from hybrid_ray.records.speeds import Speeds, estimate

    arms = planned_arms(tmp_path, capsys)
    # A 40-step trial of the 13-arm study on an H100, 3 trials sharing the GPU: 78.3 s on the wall, 12.6 s training,
    # 7.1 s its first step (within the 65.7 s besides training: Ray Train's workers, model, data, export).
    study = StudyLayout(str(tmp_path), "st")
    for arm in arms:
        measured(study.lr_search.trial(f"{arm}-lr0.001-s0"), arms[arm], wall=78.3, train=12.6, compile=7.1, step=40,
                 share=1 / 3)
    # a 1000-step trial: 65.7 / 3 = 21.9 GPU-s its launch + 1000 x 12.6 / 3 / 40 = 105 GPU-s its steps = 126.9;
    # 2 arms x 2 seeds = 507.6 GPU-s = 0.14 h, 87.6 GPU-s of it launches (wall / steps would say 2610 GPU-s)
    hours = estimate(list(arms.values()), 2, Speeds.read(str(tmp_path)))
    assert hours.seconds == pytest.approx(4 * (65.7 / 3 + 1000 * 12.6 / 3 / 40)) == pytest.approx(507.6)
    assert hours.launch_seconds == pytest.approx(4 * 65.7 / 3) == pytest.approx(87.6)
    assert hours.hours == pytest.approx(0.141)
    lines, _ = sweep_dry_run(tmp_path, capsys, "--scheduler", "fifo")
    assert lines == [f"GPU-hours: about 0.14 (4 trials x 1000 steps at the speed measured on {H100} for 2 of 2 arms; "
                     "0.024 of it trial start-up and end)"]


def test_evaluations_are_counted_at_the_planned_cadence_not_the_measured_one(tmp_path, capsys):
    """A run that records eval_seconds: its evaluations come out of the launch part and are counted per evaluation
    the planned trials make (every --eval-every steps and at the end), not at the measured run's cadence."""
    from hybrid_ray.records.speeds import Speeds, estimate, evaluations

    arms = planned_arms(tmp_path, capsys)
    study = StudyLayout(str(tmp_path), "st")
    for arm in arms:  # the 40-step H100 trial again, evaluated 4 times in 8.0 s of its 65.7 s besides training
        run = study.lr_search.trial(f"{arm}-lr0.001-s0")
        measured(run, arms[arm], wall=78.3, train=12.6, compile=7.1, step=40, share=1 / 3)
        folders.write_results(run, {**folders.read_results(run), "eval_seconds": 8.0,
                                    "history": [{"step": s, "loss": 3.0, "val_loss": 2.0} for s in (10, 20, 30, 40)]})
    speed = Speeds.read(str(tmp_path)).devices(arms["attn0"])[H100]
    assert speed.launch == pytest.approx((78.3 - 12.6 - 8.0) / 3) and speed.evaluation == pytest.approx(2.0 / 3)
    assert speed.step == pytest.approx(12.6 / 3 / 40)
    # the H100 base evaluates every 100 steps: 10 evaluations in 1000 steps, 11 in 1050 (one at the end)
    assert arms["attn0"].train.eval_every == 100 and evaluations(arms["attn0"]) == 10
    assert evaluations(arms["attn0"].with_overrides({"train.steps": 1050})) == 11
    hours = estimate(list(arms.values()), 2, Speeds.read(str(tmp_path)))
    assert hours.seconds == pytest.approx(4 * ((78.3 - 12.6 - 8.0) / 3 + 1000 * 12.6 / 3 / 40 + 10 * 2.0 / 3))


def test_arms_not_measured_yet_are_counted_apart(tmp_path, capsys):
    arms = planned_arms(tmp_path, capsys)
    # a results.json from before train_seconds: its wall time a step, 1.5 GPU-s, and no launch part
    measured(RunLayout.named(str(tmp_path), "solo"), arms["attn0"], wall=1500.0, step=1000)
    # attn0 alone: 1.5 GPU-s a step x 2 seeds x 1000 steps = 3000 GPU-s = 0.83 h
    lines, _ = sweep_dry_run(tmp_path, capsys)
    assert lines == [f"GPU-hours: at most about 0.83 for the 1 measured arm(s) (2 trials x 1000 steps at the speed "
                     f"measured on {H100}); 1 arm(s) not measured yet"]
    measured(RunLayout.named(str(tmp_path), "solo"), arms["attn0"], wall=1500.0, train=1200.0, step=1000)
    # 2 x 300 + 2 x 1000 x 1.2 = 3000 GPU-s again, 600 of it the launches
    lines, _ = sweep_dry_run(tmp_path, capsys)
    assert lines == [f"GPU-hours: at most about 0.83 for the 1 measured arm(s) (2 trials x 1000 steps at the speed "
                     f"measured on {H100}; 0.17 of it trial start-up and end); 1 arm(s) not measured yet"]


def test_runs_on_a_cpu_never_estimate_gpu_hours(tmp_path, capsys):
    arms = planned_arms(tmp_path, capsys)
    measured(RunLayout.named(str(tmp_path), "cpu"), arms["attn0"], wall=100.0, train=90.0, step=1000, device="x86_64")
    measured(RunLayout.named(str(tmp_path), "cpu2"), arms["attn50"], wall=100.0, train=90.0, step=1000, device="cpu")
    measured(RunLayout.named(str(tmp_path), "none"), arms["attn50"], wall=100.0, train=90.0, step=1000, share=0.0)
    lines, _ = sweep_dry_run(tmp_path, capsys)
    assert lines == [f"GPU-hours: not known (no run of these arms has been measured on a GPU under {tmp_path})"]


def test_the_study_s_dry_run_gives_each_stage_its_gpu_hours_and_the_total(tmp_path, capsys):
    arms = planned_arms(tmp_path, capsys)
    # attn0: 1.4 GPU-s a step, 100 a launch; attn50: 0.9 GPU-s a step, 100 a launch
    measured(RunLayout.named(str(tmp_path), "a"), arms["attn0"], wall=1500.0, train=1400.0, step=1000)
    measured(RunLayout.named(str(tmp_path), "b"), arms["attn50"], wall=1000.0, train=900.0, step=1000)
    rc = main(["sweep", "--variant", "h100_deltanet", "--grid", GRID, "--tune-lr", "--seeds", "2",
               "--tune-steps", "200", "--dry-run", *ASSUME, "--name", "st", "--storage-path", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    # stage 1: 2 arms x 7 LRs x 200 steps: 14 x 100 + 7 x 200 x (1.4 + 0.9) = 4620 GPU-s = 1.28 h, at most (ASHA);
    # 1400 GPU-s = 0.39 h of it launches
    # stage 2: 2 arms x 2 seeds x 1000 steps: 4 x 100 + 2 x 1000 x 2.3 = 5000 GPU-s = 1.39 h, 0.11 h of it launches
    # extensions: at most 2 LRs x 2 arms: 4 x 100 + 2 x 200 x 2.3 = 1320 GPU-s = 0.37 h; in all 10940 GPU-s = 3.04 h
    assert [line for line in out.splitlines() if line.startswith("GPU-hours: ")] == [
        f"GPU-hours: at most about 1.3 (14 trials x 200 steps at the speed measured on {H100} for 14 of 14 arms; "
        "0.39 of it trial start-up and end)",
        f"GPU-hours: about 1.4 (4 trials x 1000 steps at the speed measured on {H100} for 2 of 2 arms; 0.11 of it "
        "trial start-up and end)"]
    in_all = next(line for line in out.splitlines() if line.startswith("in all: "))
    assert in_all.endswith("; GPU-hours: at most about 3.0 (stage 1 1.3, its extensions 0.37, stage 2 1.4)"), in_all
    assert not (tmp_path / "st").exists()


@pytest.mark.parametrize("device, gpu", [("NVIDIA H100 80GB HBM3", True), ("Tesla V100-SXM2-16GB", True),
                                         ("AMD Instinct MI300X", True), ("x86_64", False), ("cpu", False),
                                         ("arm", False), ("", False)])
def test_a_gpu_is_told_from_a_cpu_by_the_device_name(device, gpu):
    from hybrid_ray.records.speeds import measure
    from hybrid_ray.spec import RunSpec

    results = {"step": 10, "wall_seconds": 5.0, "spec": RunSpec().to_dict(), "versions": {"device": device}}
    assert (measure(results, "r") is not None) == gpu
