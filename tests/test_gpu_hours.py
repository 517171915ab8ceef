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


def measured(run: RunLayout, spec, *, wall, step, device=H100, share=None, **changes):
    """A results.json of `spec` trained elsewhere: another name, seed, LR and storage path, which set no speed."""
    record = spec.with_overrides({"name": run.name, "train.seed": 7, "optim.lr": 3e-4, "storage_path": "/elsewhere",
                                  **changes}).to_dict()
    record["scale"]["gpus_per_worker"] = share  # None: a run alone, one GPU a worker on a GPU node
    folders.write_results(run, {"name": run.name, "status": "finished", "step": step, "total_steps": step,
                                "spec": record, "wall_seconds": wall, "train_seconds": wall * 0.8,
                                "compile_seconds": 20.0, "mean_tokens_per_s": 1e5, "tokens_seen": step * 49152,
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
    # attn0: a run alone (1 GPU: 1700 GPU-s over 1000 steps) and a study's stage-1 trial on half a GPU (350 s x 0.5
    # over 250 steps), pooled: (1700 + 175) / 1250 = 1.5 GPU-s a step
    measured(RunLayout.named(str(tmp_path), "solo"), arms["attn0"], wall=1700.0, step=1000)
    study = StudyLayout(str(tmp_path), "st")
    measured(study.lr_search.trial("attn0-lr0.004-s0"), arms["attn0"], wall=350.0, step=250, share=0.5)
    # attn50: a sweep's trial on half a GPU, 2000 s x 0.5 over 1000 steps = 1.0 GPU-s a step
    old = SweepLayout(str(tmp_path), "old")
    measured(old.trial("attn50-s1"), arms["attn50"], wall=2000.0, step=1000, share=0.5,
             **{"scale.backend": "fla", "scale.strategy": "fsdp"})  # what `auto` is on a GPU
    # never counted: a CPU run of attn50, a run at another batch size, a diverged run
    measured(old.trial("attn50-s2"), arms["attn50"], wall=10.0, step=1000, device="x86_64")
    measured(old.trial("attn50-s3"), arms["attn50"], wall=10.0, step=1000, **{"train.batch_size": 32})
    measured(RunLayout.named(str(tmp_path), "bad"), arms["attn0"], wall=10.0, step=1000)
    bad = folders.read_results(RunLayout.named(str(tmp_path), "bad"))
    folders.write_results(RunLayout.named(str(tmp_path), "bad"), {**bad, "status": "diverged"})
    # 2 arms x 2 seeds x 1000 steps: (1.5 + 1.0) x 2 x 1000 = 5000 GPU-s = 1.39 h; ASHA may stop trials: at most
    lines, out = sweep_dry_run(tmp_path, capsys)
    assert lines == [f"GPU-hours: at most about 1.4 (4 trials x 1000 steps at the speed measured on {H100} for 2 of 2 "
                     "arms)"], out
    lines, _ = sweep_dry_run(tmp_path, capsys, "--scheduler", "fifo", "--steps", "600")
    assert lines == [f"GPU-hours: about 0.83 (4 trials x 600 steps at the speed measured on {H100} for 2 of 2 arms)"]
    assert not (tmp_path / "sw").exists()  # a dry run writes nothing


def test_arms_not_measured_yet_are_counted_apart(tmp_path, capsys):
    arms = planned_arms(tmp_path, capsys)
    measured(RunLayout.named(str(tmp_path), "solo"), arms["attn0"], wall=1500.0, step=1000)
    # attn0 alone: 1.5 GPU-s a step x 2 seeds x 1000 steps = 3000 GPU-s = 0.83 h
    lines, _ = sweep_dry_run(tmp_path, capsys)
    assert lines == [f"GPU-hours: at most about 0.83 for the 1 measured arm(s) (2 trials x 1000 steps at the speed "
                     f"measured on {H100}); 1 arm(s) not measured yet"]


def test_runs_on_a_cpu_never_estimate_gpu_hours(tmp_path, capsys):
    arms = planned_arms(tmp_path, capsys)
    measured(RunLayout.named(str(tmp_path), "cpu"), arms["attn0"], wall=100.0, step=1000, device="x86_64")
    measured(RunLayout.named(str(tmp_path), "cpu2"), arms["attn50"], wall=100.0, step=1000, device="cpu")
    measured(RunLayout.named(str(tmp_path), "none"), arms["attn50"], wall=100.0, step=1000, share=0.0)
    lines, _ = sweep_dry_run(tmp_path, capsys)
    assert lines == [f"GPU-hours: not known (no run of these arms has been measured on a GPU under {tmp_path})"]


def test_the_study_s_dry_run_gives_each_stage_its_gpu_hours_and_the_total(tmp_path, capsys):
    arms = planned_arms(tmp_path, capsys)
    measured(RunLayout.named(str(tmp_path), "a"), arms["attn0"], wall=1500.0, step=1000)  # 1.5 GPU-s a step
    measured(RunLayout.named(str(tmp_path), "b"), arms["attn50"], wall=1000.0, step=1000)  # 1.0 GPU-s a step
    rc = main(["sweep", "--variant", "h100_deltanet", "--grid", GRID, "--tune-lr", "--seeds", "2",
               "--tune-steps", "200", "--dry-run", *ASSUME, "--name", "st", "--storage-path", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    # stage 1: 2 arms x 7 LRs x 200 steps: 7 x 200 x (1.5 + 1.0) = 3500 GPU-s = 0.97 h, at most (ASHA)
    # stage 2: 2 arms x 2 seeds x 1000 steps: 2 x 1000 x 2.5 = 5000 GPU-s = 1.39 h
    # extensions: at most 2 LRs x 200 steps x 2.5 = 1000 GPU-s = 0.28 h; in all 9500 GPU-s = 2.64 h
    assert [line for line in out.splitlines() if line.startswith("GPU-hours: ")] == [
        f"GPU-hours: at most about 1.0 (14 trials x 200 steps at the speed measured on {H100} for 14 of 14 arms)",
        f"GPU-hours: about 1.4 (4 trials x 1000 steps at the speed measured on {H100} for 2 of 2 arms)"]
    in_all = next(line for line in out.splitlines() if line.startswith("in all: "))
    assert in_all.endswith("; GPU-hours: at most about 2.6 (stage 1 1.0, its extensions 0.28, stage 2 1.4)"), in_all
    assert not (tmp_path / "st").exists()


@pytest.mark.parametrize("device, gpu", [("NVIDIA H100 80GB HBM3", True), ("Tesla V100-SXM2-16GB", True),
                                         ("AMD Instinct MI300X", True), ("x86_64", False), ("cpu", False),
                                         ("arm", False), ("", False)])
def test_a_gpu_is_told_from_a_cpu_by_the_device_name(device, gpu):
    from hybrid_ray.records.speeds import measure
    from hybrid_ray.spec import RunSpec

    results = {"step": 10, "wall_seconds": 5.0, "spec": RunSpec().to_dict(), "versions": {"device": device}}
    assert (measure(results, "r") is not None) == gpu
