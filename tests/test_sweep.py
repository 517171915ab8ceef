"""Sweeps on Ray Tune through a real local Ray (with its dashboard), tiny models on CPU workers; the ASHA ratio
sweep runs through the CLI beside a running head (test_cluster.py)."""

import json
import os
import signal
import subprocess
import time

import pytest
from ray_procs import HYBRID_RAY

from hybrid_ray.cli import main
from hybrid_ray.config.grid import RATIO_ARMS, expand, match_params, parse_grid
from hybrid_ray.config.variants import REFERENCE_VOCAB, variant_spec
from hybrid_ray.model import count_params
from hybrid_ray.sweep.options import SweepOptions
from hybrid_ray.sweep.tuner import sweep

TINY = {"data.max_documents": 400, "model.num_layers": 2, "model.attn_layers": [1], "train.steps": 30,
        "train.eval_every": 10, "train.checkpoint_every": 10, "train.log_every": 5, "train.eval_tokens": 4096}


def base(storage, name, **overrides):
    return variant_spec("h100_hybrid_sparse", "tiny").with_overrides(
        {**TINY, "name": name, "storage_path": str(storage), **overrides})


def losses(results):
    return [(r["step"], r["loss"]) for r in results["history"] if "loss" in r]


@pytest.mark.slow
def test_seeds_differ_and_the_same_seed_repeats_exactly(ray_session, tmp_path, capsys):
    from test_evals import arc_file

    arc = arc_file(tmp_path / "arc.jsonl", n=4)
    first = sweep(base(tmp_path, "fifo-a", **{"train.steps": 20}),
                  SweepOptions(grid=["lr=2e-3"], seeds=2, scheduler="fifo", eval_tasks=["arc_easy"], eval_data=str(arc)),
                  progress=False)
    assert all(r["evals"]["arc_easy"]["examples"] == 4 for r in first.rows)  # every finished trial was scored
    assert "arc_easy" in first.table.splitlines()[0]
    again = sweep(base(tmp_path, "fifo-b", **{"train.steps": 20}), SweepOptions(grid=["lr=2e-3"], seeds=1, scheduler="fifo"),
                  progress=False)
    run = {r["name"]: json.loads((tmp_path / d / "trials" / r["name"] / "results.json").read_text())
           for d, outcome in (("fifo-a", first), ("fifo-b", again)) for r in outcome.rows}
    assert all(r["status"] == "finished" for r in first.rows + again.rows)
    a0 = losses(json.loads((tmp_path / "fifo-a" / "trials" / "lr0.002-s0" / "results.json").read_text()))
    a1 = losses(json.loads((tmp_path / "fifo-a" / "trials" / "lr0.002-s1" / "results.json").read_text()))
    b0 = losses(json.loads((tmp_path / "fifo-b" / "trials" / "lr0.002-s0" / "results.json").read_text()))
    assert a0 == b0 and a0 != a1 and len(run) == 2
    # compare: the same table from the run folders and from the sweep folder
    assert main(["compare", str(tmp_path / "fifo-a"), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "lr0.002" in out and "± " in out and (tmp_path / "cmp" / "comparison.png").exists()
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["trials"]
    assert [r["name"] for r in rows] == ["lr0.002-s0", "lr0.002-s1"]
    assert main(["compare", str(tmp_path / "fifo-a" / "trials"), "--out", str(tmp_path / "cmp2")]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[1] == "lr0.002"
    # on a local Ray (one node, gone with its driver) no trial started Ray Train's preemption watcher, an actor process
    # per run with nothing to watch
    from ray.util.state import list_actors

    assert list_actors(filters=[("class_name", "=", "TrainController")])
    assert not list_actors(filters=[("class_name", "=", "PreemptionWatcher")])
    # but each trial started Ray Train's placement-group cleaner: a trial's controller can die (ASHA stops it) while
    # the sweep's Ray lives on
    assert list_actors(filters=[("class_name", "=", "PlacementGroupCleaner")])
    # a finished trial's run folder deleted (`runs rm`): Tune never runs an ended trial again, so the relaunch trains
    # it in a new Tuner, exactly as before (it said "interrupted, relaunch to resume" on every relaunch)
    assert main(["runs", "rm", "fifo-b/lr0.002-s0", "--storage-path", str(tmp_path), "--yes"]) == 0
    capsys.readouterr()
    redone = sweep(base(tmp_path, "fifo-b", **{"train.steps": 20}), SweepOptions(grid=["lr=2e-3"], seeds=1,
                                                                                 scheduler="fifo"))
    assert [r["status"] for r in redone.rows] == ["finished"]
    assert "training again the trial(s) whose run folder was deleted: lr0.002-s0" in capsys.readouterr().out
    assert losses(json.loads((tmp_path / "fifo-b" / "trials" / "lr0.002-s0" / "results.json").read_text())) == a0


def checkpoint_steps(trial) -> list[int]:
    return sorted(int(p.parent.name.split("_")[1]) for p in trial.glob("checkpoint_0*/manifest_rank0.json"))


def wait_for_checkpoint(proc: subprocess.Popen, trial, after: int = 0) -> None:
    """Wait (400 s at most) until `trial` has written a checkpoint past step `after`."""
    deadline = time.time() + 400
    while not [step for step in checkpoint_steps(trial) if step > after]:
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.2)


# the actors of a sweep's trials, as Ray names their processes
TRIAL_PROCESSES = ("ray::ImplicitFunc", "ray::TrainController", "ray::RayTrainWorker")


@pytest.mark.slow
def test_an_interrupted_or_killed_sweep_resumes_without_rerunning_trials_and_a_full_disk_fails_one_trial(ray_head,
                                                                                                       tmp_path):
    """Through the CLI at its defaults (concurrency, --keep), on a 2-CPU head, one sweep launched three times: Ctrl-C
    says interrupted, prints the relaunch command and exits 130; a relaunch resumes and its driver is killed; the
    next relaunch resumes again (a finished trial is never rerun, a resumed one has no gap or repeat); a trial whose
    checkpoint hits ENOSPC fails alone."""
    head, plan = ray_head, ray_head.enospc
    config = tmp_path / "two-layers.yaml"  # the tiny size with 2 of its 6 layers: the same trials, a third of the work
    config.write_text(variant_spec("h100_hybrid_sparse", "tiny").with_overrides({
        "model.num_layers": 2, "model.attn_layers": [1]}).to_yaml())
    try:
        args = [HYBRID_RAY, "sweep", "--grid", "lr=2e-3,1e-3,5e-4", "--scheduler", "fifo", "--steps", "40",
                "--eval-every", "20", "--checkpoint-every", "10", "--max-documents", "400", "--eval-tokens", "4096",
                "--config", str(config), "--storage-path", str(tmp_path), "--name", "ctrlc", "--address", head.address]
        trials = tmp_path / "ctrlc" / "trials"
        started = time.time()
        proc = subprocess.Popen(args, env=head.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_checkpoint(proc, trials / "lr0.001-s0")  # the second trial is under way
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=180)
        first_launch = time.time() - started
        assert proc.returncode == 130, (out + err)[-3000:]
        assert "sweeping ctrlc" in out and "1 at a time" in out  # the default concurrency on 2 CPUs
        assert f"watch: tensorboard --logdir {trials}" in out  # the sweep's own TensorBoard logs
        for banner in ("Configuration for experiment", "View detailed results here", "driver_artifacts"):
            assert banner not in out + err
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: sweep ctrlc interrupted after ") and "relaunch the same command" in last
        assert " ".join(args[1:4]) in last  # the command to relaunch
        assert "sweep finished" not in out
        saved = {r["name"]: r for r in json.loads((tmp_path / "ctrlc" / "sweep.json").read_text())["trials"]}
        assert {n: r["status"] for n, r in saved.items()} == {
            "lr0.002-s0": "finished", "lr0.001-s0": "interrupted", "lr0.0005-s0": "not started"}
        assert saved["lr0.002-s0"]["wall_seconds"] > 0
        assert "1/1" in next(line for line in out.splitlines() if " lr0.002 " in line)
        finished = trials / "lr0.002-s0"
        # an ended trial keeps model/ and its newest checkpoint's weights (--keep defaults to 1 in a sweep)
        assert [p.name for p in finished.glob("checkpoint_0*")] == ["checkpoint_00000040"]
        assert not (finished / "checkpoint_00000040" / "optimizer.pt").exists() and (finished / "model").is_dir()
        before = (finished / "results.json").read_bytes()
        assert json.loads(before)["status"] == "finished"

        # relaunched, its driver killed once the interrupted trial has gone on past where it stopped
        reached = max(checkpoint_steps(trials / "lr0.001-s0"))
        proc = subprocess.Popen(args, env=head.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for_checkpoint(proc, trials / "lr0.001-s0", after=reached)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        head.wait_until_gone(*TRIAL_PROCESSES)  # the cluster notices the dead driver and frees its trials
        assert (finished / "results.json").read_bytes() == before  # not rerun

        plan.write_text("lr0.0005-s0 20")  # the disk fills when the third trial writes its step-20 checkpoint
        again = subprocess.run(args, env=head.env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 1, (again.stdout + again.stderr)[-3000:]  # a trial failed: a script sees it
        assert "resuming ctrlc" in again.stdout and "sweep finished in " in again.stdout
        last = again.stderr.strip().splitlines()[-1]
        assert last.startswith("error: 1 trial(s) of sweep ctrlc failed (lr0.0005-s0: ") and "No space left" in last
        assert "relaunching the same command retries them" in last
        failed = next(line for line in again.stdout.splitlines() if "] failed    lr0.0005-s0: " in line)
        assert "No space left on device" in failed and ": None" not in failed  # the console names the error
        clock = int(again.stdout.split("] started", 1)[0].rsplit("[", 1)[1].strip().rstrip("s"))
        assert clock < min(30, first_launch)  # the console's clock counts from this launch
        assert (finished / "results.json").read_bytes() == before  # not rerun
        resumed = json.loads((trials / "lr0.001-s0" / "results.json").read_text())
        assert resumed["status"] == "finished" and resumed["resumed_at"] and resumed["resumed_at"][0] >= 10
        assert [r["step"] for r in resumed["history"] if "loss" in r] == list(range(10, 41, 10))  # no gap, no repeat
        rows = {r["name"]: r for r in json.loads((tmp_path / "ctrlc" / "sweep.json").read_text())["trials"]}
        assert [rows[n]["status"] for n in ("lr0.002-s0", "lr0.001-s0", "lr0.0005-s0")] == [
            "finished", "finished", "failed"]
        assert "No space left on device" in rows["lr0.0005-s0"]["reason"]
        assert "\n" not in rows["lr0.0005-s0"]["reason"]
        line = next(line for line in again.stdout.splitlines() if " lr0.0005 " in line)
        assert "0/1" in line and "failed" in line and "No space left on device" in line
        kept = trials / "lr0.0005-s0" / "checkpoint_00000010"  # what it wrote before the disk filled is kept
        assert (kept / "optimizer.pt").exists()
        from hybrid_ray.layout import RunLayout
        from hybrid_ray.train import checkpoint as ckpt

        assert ckpt.CheckpointManager(RunLayout(str(trials / "lr0.0005-s0"))).latest() == str(kept)
    finally:
        plan.unlink(missing_ok=True)


@pytest.mark.parametrize("args, fragment", [
    (["--grid", "atention_ratio"], "unknown grid axis 'atention_ratio' (did you mean 'attention_ratio'?)"),
    (["--grid", "lr="], "--grid lr= has an empty value list"),
    (["--grid", "attention_ratio=0,1.5"], "attention ratio must be between 0 and 1, got 1.5"),
    (["--grid", "lr", "--seeds", "0"], "--seeds must be >= 1"),
    (["--grid", "train.bach_size=4"], "did you mean 'train.batch_size'"),
    # a flag that an axis replaces in every arm is refused, not dropped (issue 46)
    (["--grid", "attention_ratio=0,1", "--attention-ratio", "0.5"],
     "--attention-ratio 0.5 would be replaced in every arm by --grid attention_ratio"),
    (["--grid", "variant=h100_deltanet,h100_transformer", "--lr", "1e-5"],
     "--lr 1e-05 would be ignored: --grid variant trains each variant at its own learning rate"),
    (["--grid", "lr=1e-3,2e-3", "--lr", "1e-5"], "--lr 1e-05 would be replaced in every arm by --grid lr"),
    (["--grid", "variant=h100_deltanet", "--variant", "h100_transformer"],
     "--variant h100_transformer would be replaced in every arm by --grid variant"),
    (["--grid", "train.batch_size=16,32", "--batch-size", "8"],
     "--batch-size 8 would be replaced in every arm by --grid train.batch_size"),
    (["--grid", "attention_ratio", "--dry-run", "--assume-gpu-memory", "-5"], "--assume-gpu-memory must be > 0 GB"),
    (["--grid", "attention_ratio", "--dry-run", "--assume-free-disk", "-1"], "--assume-free-disk must be >= 0 GB"),
])
def test_bad_grids_are_one_line_before_anything_starts(tmp_path, capsys, args, fragment):
    assert main(["sweep", *args, "--storage-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not list(tmp_path.iterdir())


def test_a_relaunch_with_another_grid_is_refused_before_ray_starts(tmp_path, monkeypatch, capsys):
    """Issue 46: relaunching a sweep's name with another grid was refused only after Ray had started (seconds, and
    a local Ray's processes). grid.json as a launch on this 2-CPU machine writes it (arms planned: GPU shares set); the
    same grid passes the early check, another is refused in one line with no Ray started (connect would fail)."""
    from hybrid_ray import cluster
    from hybrid_ray.layout import SweepLayout
    from hybrid_ray.sweep import tuner
    from hybrid_ray.sweep.asha import launch_order
    from hybrid_ray.sweep.plan import on_resolved_base, plan_sweep, with_warmup_used
    from hybrid_ray.train.launch import check_locally

    monkeypatch.setenv("HOME", str(tmp_path))  # a user's defaults: ~/hybrid-ray-runs
    common = ["--steps", "10", "--max-documents", "100", "--name", "s"]
    options = SweepOptions(grid=["lr=1e-3,2e-3"])
    from hybrid_ray.cli import sweep_base  # the base as the command builds it

    base_spec = sweep_base(None, None, None, grid=options.grid, steps=10, max_documents=100, name="s")
    arms = expand(base_spec, parse_grid(options.grid))
    base_spec, _ = check_locally(base_spec, address=None, extend_steps=0, until_step=None, progress=False)
    arms, _ = with_warmup_used(on_resolved_base(arms, base_spec, options))
    layout = SweepLayout.of(base_spec)
    planned = plan_sweep(arms, options, {"CPU": 2.0}, None, layout)
    assert planned.arms[0].spec.scale.gpus_per_worker == 0 != arms[0].spec.scale.gpus_per_worker  # set by the plan
    assert not tuner._claim(layout, tuner._grid_record(options, planned.arms), launch_order(options, [a.id for a in arms]))
    tuner.check_relaunch(layout, options, arms)  # the same grid, before its plan: not refused

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(cluster, "connect", no_ray)
    started = time.time()
    assert main(["sweep", "--grid", "lr=1e-3,5e-4", *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: sweep 's' already exists with another grid (differs in: "
                                               "lr0.0005, lr0.002)"), err
    assert time.time() - started < 30  # a data check, no Ray start
    assert sorted(p.name for p in (tmp_path / "hybrid-ray-runs" / "s").iterdir()) == ["grid.json"]  # untouched


@pytest.mark.slow
def test_cluster_errors_come_before_any_trial(ray_session, tmp_path, capsys):
    common = ["--steps", "4", "--max-documents", "100", "--storage-path", str(tmp_path), "--name", "s"]
    assert main(["sweep", "--grid", "lr=1e-3", "--gpus-per-trial", "1", *common]) == 2
    assert "--gpus-per-trial 1 is more than the cluster's 0 GPU(s)" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # a refused sweep leaves no (empty) sweep folder behind
    (tmp_path / "s").mkdir(exist_ok=True)
    (tmp_path / "s" / "grid.json").write_text(json.dumps({"options": {}, "arms": {"lr0.002": {}}}))
    assert main(["sweep", "--grid", "lr=1e-3", *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sweep 's' already exists with another grid" in err[0], err
    assert not (tmp_path / "s" / "trials").exists()


def test_match_params_sizes_every_arm_within_2_percent_of_pure_deltanet():
    arms = expand(variant_spec("h100_hybrid_sparse").with_overrides({"model.vocab_size": REFERENCE_VOCAB}),
                  parse_grid(["attention_ratio"]))
    assert [a.spec.variant for a in arms] == RATIO_ARMS
    raw = {a.id: count_params(a.spec.model)["total"] for a in arms}
    assert raw["attn100"] < 0.65 * raw["attn0"]  # unmatched: the transformer is far smaller (161M vs 274M)
    matched = match_params(arms)
    target = raw["attn0"]  # the reference: pure DeltaNet, the largest
    for arm in matched:
        total = count_params(arm.spec.model)["total"]
        assert abs(total / target - 1) <= 0.02, (arm.id, total, target)
        assert arm.spec.model.attn_layers == next(a for a in arms if a.id == arm.id).spec.model.attn_layers
    widths = [a.spec.model.intermediate_size for a in matched]
    assert widths == sorted(widths)  # more attention, wider MLPs
    with pytest.raises(Exception, match="not an arm of this grid"):
        match_params(arms, "attn55")


def test_the_grid_expanded_before_the_local_checks_is_the_grid_of_the_resolved_base():
    """sweep() expands the grid once, before check_locally (grid errors first), then gives the arms what the checks
    resolved: the same arms, ids and specs (so grid.json, which a relaunch compares) as expanding the resolved base."""
    import dataclasses

    from hybrid_ray.sweep.options import SweepOptions
    from hybrid_ray.sweep.plan import on_resolved_base

    raw = variant_spec("h100_hybrid_sparse", "tiny").with_overrides({"storage_path": "~/sweeps"})
    resolved = dataclasses.replace(raw, storage_path="/abs/sweeps", model=raw.model.with_vocab(320))
    for grid, matched in [(["attention_ratio=0,0.5,1"], True), (["lr", "train.batch_size=8,16"], False),
                          (["model.vocab_size=512,1024"], False), (["variant=h100_deltanet,h100_transformer"], True)]:
        expected = expand(resolved, parse_grid(grid))
        expected = match_params(expected) if matched else expected
        arms = on_resolved_base(expand(raw, parse_grid(grid)), resolved, SweepOptions(grid=grid, match_params=matched))
        assert [(a.id, a.spec.to_dict()) for a in arms] == [(a.id, a.spec.to_dict()) for a in expected], grid


@pytest.mark.slow
def test_asha_stops_many_short_trials_at_once_and_every_number_reported_is_the_one_judged(ray_session, tmp_path,
                                                                                            monkeypatch):
    """The deletion race of the H100 study (4 of 13 trials failed by `FileNotFoundError: Cannot delete directory
    ...checkpoint_...` inside Tune's stop_trial, where the scheduler settled a trial whose checkpoint callback was
    still deleting): many short trials, a checkpoint at every evaluation, three at once, ASHA stopping. The sweep's
    process checksums a checkpoint as slowly as a 3 GB one on the H100 (the scheduler's settle verified the newest
    checkpoint between listing the folders and deleting them: that was the race's window); on 3d7d472 this failed
    trials with that FileNotFoundError. No trial fails; each one ASHA stopped ended at the very evaluation it judged,
    and that evaluation is its results, its row and its kept model."""
    from hybrid_ray import storage
    from hybrid_ray.layout import SweepLayout, is_checkpoint
    from hybrid_ray.records import decisions
    from hybrid_ray.sweep import status
    from hybrid_ray.train.checkpoint import read_state, weights_only

    crc32 = storage.crc32
    monkeypatch.setattr(storage, "crc32", lambda path: time.sleep(0.2) or crc32(path))
    lrs = "lr=5e-3,3e-3,2e-3,1e-3,5e-4,2e-4"
    spec = base(tmp_path, "race", **{"train.steps": 24, "train.eval_every": 4, "train.checkpoint_every": 4,
                                     "train.log_every": 4, "optim.warmup_steps": 4, "scale.cpus_per_worker": 0.5,
                                     "train.eval_recall": False})
    outcome = sweep(spec, SweepOptions(grid=[lrs], reduction_factor=2), progress=False)
    sweep_dir = SweepLayout.of(spec)
    rows = {r["name"]: r for r in outcome.rows}
    assert len(rows) == 6 and not [r for r in rows.values() if r["status"] not in ("finished", "stopped by ASHA")], rows
    stops = status.read_stops(sweep_dir)
    stopped = {n for n, r in rows.items() if r["status"] == "stopped by ASHA"}
    assert stopped == set(stops) and len(stopped) >= 2, stops
    judged = decisions.read(sweep_dir.asha_decisions)
    assert {r["decision"] for r in judged} <= {"stop", "continue"}
    assert len({(r["trial"], r["milestone"]) for r in judged}) == len(judged)  # each trial judged once a rung
    for name in stopped:
        row, stop, run = rows[name], stops[name], sweep_dir.trial(name)
        results = json.loads(open(run.results).read())
        assert row["step"] == row["stopped_at_step"] == results["step"] == stop["step"], (name, row, stop)
        assert results["history"][-1]["step"] == stop["step"]  # nothing past the judged evaluation
        assert results["final"]["val_loss"] == pytest.approx(stop["val_loss"])
        kept = [p for p in os.listdir(run.dir) if is_checkpoint(p)]
        assert kept == [f"checkpoint_{stop['step']:08d}"]  # the model kept is the one judged, weights only
        assert read_state(run.checkpoint(kept[0])).step == stop["step"] and weights_only(run.checkpoint(kept[0]))
    assert json.loads(open(sweep_dir.results).read())["launch_order"] == json.loads(open(sweep_dir.grid).read())[
        "launch_order"]


@pytest.mark.slow
@pytest.mark.soak  # the benchmark's CPU twin; Ctrl-C in an ASHA search: test_study.py, the relaunch's judgements: test_sweep_status.py
def test_the_study_benchmark_s_cpu_twin_interrupted_and_relaunched_reports_what_asha_judged(tmp_path, monkeypatch):
    """benchmarks/bench_study.py as on the GPU (the 13-arm study, Ctrl-C once, relaunch), at a CPU size: no trial
    fails, and each stopped trial reports the step and loss ASHA judged (a relaunch's decisions against a straight
    run's: test_sweep_status.py, on the scheduler itself)."""
    from benchmarks import bench_study

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    results = bench_study.main(["--out-dir", str(tmp_path / "out"), "--storage", str(tmp_path / "sweeps"), "--cpu",
                                "--layers", "2", "--ratios", "0,0.5,1", "--steps", "40", "--interrupt-after", "240"])
    checks = results["checks"]
    assert results["interrupted"]["exit_code"] == 130 and results["relaunch"]["exit_code"] == 0, results
    assert checks["no_trial_failed"] and checks["every_interrupted_trial_resumed"], checks
    assert checks["stopped_only_by_recorded_decisions"] and checks["every_stop_reports_what_asha_judged"], checks
    assert results["judgements"] and all(j["decision"] in ("stop", "continue") for j in results["judgements"].values())
    saved = json.loads((tmp_path / "out" / "bench_study.json").read_text())
    assert saved["checks"]["judged_against_reported"] == checks["judged_against_reported"]


def test_the_default_lr_grid_brackets_each_variant_s_own_lr_on_both_sides(tmp_path, capsys):
    """Issue 46: pure DeltaNet's default grid (2e-4 ... 1e-3) topped out at its own LR, where its best was on the
    H100. `--grid lr` alone is seven LRs log-spaced from x1/4 to x4 each arm's own, the LR itself in the middle."""
    from hybrid_ray.config.grid import lr_around
    from hybrid_ray.config.variants import VARIANTS

    assert lr_around(1e-3) == (2.5e-4, 4e-4, 6.3e-4, 1e-3, 1.6e-3, 2.5e-3, 4e-3)
    for preset in (None, "tiny", "b200"):
        for name, v in VARIANTS.items():
            spec = variant_spec(name, preset)
            lrs = [a.spec.optim.lr for a in expand(spec, parse_grid(["lr"]))]
            own = spec.optim.lr
            assert len(lrs) == 7 and lrs == sorted(lrs) and lrs[3] == own, (preset, name, lrs)
            assert lrs[0] < own < lrs[-1] and abs(lrs[-1] / lrs[0] - 16) < 0.5, (preset, name, lrs)
    # beside --grid variant each variant's grid is around its own LR, and an lr axis sets the variant arms' LR in
    # whatever order the axes come (it was silently replaced by the variant's LR when given first)
    arms = expand(variant_spec("h100_hybrid_sparse"), parse_grid(["variant=h100_deltanet,h100_transformer", "lr"]))
    by = {n: [a.spec.optim.lr for a in arms if a.spec.variant == n] for n in ("h100_deltanet", "h100_transformer")}
    assert by == {"h100_deltanet": list(lr_around(1e-3)), "h100_transformer": list(lr_around(2e-3))}
    for grid in (["lr=1e-4", "variant=h100_deltanet,h100_transformer"], ["variant=h100_deltanet,h100_transformer",
                                                                          "lr=1e-4"]):
        assert [a.spec.optim.lr for a in expand(variant_spec("h100_hybrid_sparse"), parse_grid(grid))] == [1e-4] * 2
    # --lr beside a bare --grid lr is its centre (honoured), beside --grid lr=... refused (above)
    assert main(["sweep", "--grid", "lr", "--lr", "1e-3", "--dry-run", "--storage-path", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[1:8]] == [f"lr{x:g}" for x in lr_around(1e-3)]


@pytest.mark.slow
def test_a_diverging_arm_is_a_result_ranked_last_and_never_trained_again(ray_session, tmp_path, capsys):
    """An LR grid whose top values diverge (issue 46: a bare `--grid lr` reaches 4x each arm's LR), at ASHA's
    defaults: lr 30 breaks at step 14, after two checkpoints, lr 1e6 at step 2, before any. The sweep exits 0, each
    diverged trial says where its loss broke, the finite arm ranks first, and relaunching the same command trains
    nothing (Tune failed such a trial, the sweep exited 1, and resume_errored trained it again, to diverge again).
    A checkpoint every 5 steps reports before the first evaluation (step 10): Tune's strict metric check failed the
    whole sweep on that report, as on a trial that diverged before it evaluated."""
    from hybrid_ray.layout import SweepLayout
    from hybrid_ray.records import decisions
    from hybrid_ray.train.checkpoint import weights_only

    args = ["sweep", "--grid", "lr=2e-3,30,1e6", "--steps", "30", "--max-documents", "400", "--eval-every", "10",
            "--checkpoint-every", "5", "--storage-path", str(tmp_path), "--name", "div"]
    assert main(args) == 0
    out = capsys.readouterr().out
    sweep_dir = SweepLayout.at(str(tmp_path / "div"))
    where = {}
    for name in ("lr30-s0", "lr1e+06-s0"):
        run = sweep_dir.trial(name)
        broke = json.loads(open(run.diverged).read())
        results = json.loads(open(run.results).read())
        assert results["status"] == "diverged" and results["diverged"] == broke
        where[name] = f"diverged at step {broke['step']}"
        assert f"] diverged  {name} at step {broke['step']} (lr " in out, out
    kept = checkpoint_steps(tmp_path / "div" / "trials" / "lr30-s0")
    bad = json.loads(open(sweep_dir.trial("lr30-s0").diverged).read())["step"]
    assert kept and kept[-1] < bad and weights_only(sweep_dir.trial("lr30-s0").checkpoint(f"checkpoint_{kept[-1]:08d}"))
    assert "2 of 3 trials diverged (lr 30, 1000000): the LR grid's top is too high" in out
    table = out[out.index("rank"):].splitlines()
    assert table[1].split()[:2] == ["1", "lr0.002"] and "diverged" not in table[1]
    for line in table[2:4]:
        arm = line.split()[1]
        assert "diverged" in line.split()[2:4] and where[f"{arm}-s0"] in line, table
        assert "inf" not in line and "nan" not in line
    written = json.loads(open(sweep_dir.results).read())
    assert [a["arm"] for a in written["arms"]][0] == "lr0.002"  # the arms as the table ranks them
    assert [a["best_val_loss"] for a in written["arms"]][1:] == [None, None]
    assert all(a["diverged"] for a in written["arms"][1:])
    assert {r["name"]: r["status"] for r in written["trials"]} == {
        "lr0.002-s0": "finished", "lr30-s0": "diverged", "lr1e+06-s0": "diverged"}
    # a divergence is no judgement of ASHA's: its record stops nothing
    assert all(r["decision"] == "continue" for r in decisions.read(sweep_dir.asha_decisions))
    assert main(["runs", "list", "--storage-path", str(tmp_path)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert where["lr30-s0"] in next(line for line in listed if line.startswith("div/lr30-s0"))
    # the relaunch trains nothing: no launch counted, no file of a trial written, and exit 0 again
    trials = tmp_path / "div" / "trials"
    before = {p: p.stat().st_mtime_ns for p in trials.rglob("*") if p.is_file()}
    assert main(args) == 0
    again = capsys.readouterr().out
    assert "2 of 3 trials diverged" in again and "failed" not in again and "started" not in again
    assert {p: p.stat().st_mtime_ns for p in trials.rglob("*") if p.is_file()} == before
    assert json.loads(open(sweep_dir.trial("lr30-s0").launches).read())["launches"] == 1
