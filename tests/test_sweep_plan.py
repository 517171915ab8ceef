"""What a sweep plans before it starts (concurrency, disk), what its tables say, and what ended trials keep: no Ray
trials here except the refusal, which stops before the first one."""

import json
import os
import re
import signal
from pathlib import Path

import pytest
import torch

from hybrid_ray import layout
from hybrid_ray.layout import RunLayout, SweepLayout
from hybrid_ray.cli import main
from hybrid_ray.config.grid import expand, match_params, parse_grid
from hybrid_ray.config.variants import REFERENCE_VOCAB, VARIANTS, variant_spec
from hybrid_ray.errors import ClusterError
from hybrid_ray.model import build_model, count_params
from hybrid_ray.records import report
from hybrid_ray.records import folders
from hybrid_ray.sweep import plan as sweep_plan
from hybrid_ray.sweep.tuner import _Signals
from hybrid_ray.train import plan as run_plan
from hybrid_ray.train import checkpoint as ckpt
from hybrid_ray.train.checkpoint import TrainerState

TINY = variant_spec("h100_hybrid_sparse", "tiny").with_overrides(
    {"model.vocab_size": 8192, "model.num_layers": 2, "model.attn_layers": [1], "train.steps": 60,
     "train.log_every": 5, "train.eval_every": 20, "train.checkpoint_every": 20, "train.keep": 1})


def test_concurrency_counts_the_trial_itself_and_its_workers():
    one_cpu = TINY.with_overrides({"scale.cpus_per_worker": 1})
    # the README's CPU sweep on a 2-core machine: two trials of 1 CPU + 0.01 do not fit, one does
    footprint = run_plan.trial_footprint(one_cpu, 0.0)
    assert footprint["CPU"] == 1.01 and footprint["GPU"] == 0.0
    assert footprint["memory"] == 2.2e9 + 16 * count_params(one_cpu.model)["total"]
    # many cores, little memory: each run's workers and placement-group cleaner must fit the memory too
    assert run_plan.concurrency(one_cpu, 0.0, {"CPU": 64.0, "memory": 3 * footprint["memory"]}, None) == 3
    assert run_plan.concurrency(one_cpu, 0.0, {"CPU": 2.0}, None) == 1
    assert run_plan.concurrency(one_cpu, 0.0, {"CPU": 4.0}, None) == 3
    assert run_plan.concurrency(one_cpu, 0.0, {"CPU": 2.0}, 2) == 2  # --max-concurrent is the user's call
    # GPUs and CPUs both bound it: 0.25 GPU a trial packs 4 on one GPU only when the CPUs hold 4 trials too
    assert run_plan.concurrency(one_cpu, 0.25, {"CPU": 16.0, "GPU": 1.0}, None) == 4
    assert run_plan.concurrency(one_cpu, 0.25, {"CPU": 3.0, "GPU": 1.0}, None) == 2
    assert run_plan.concurrency(one_cpu, 0.33, {"CPU": 16.0, "GPU": 1.0}, None) == 3
    with pytest.raises(ClusterError, match=r"one trial holds 2.01 CPU .* the cluster has 2 CPU"):
        run_plan.concurrency(TINY.with_overrides({"scale.cpus_per_worker": 2}), 0.0, {"CPU": 2.0}, None)


def test_the_checkpoint_size_rule_holds_against_a_real_checkpoint_and_the_h100_size(tmp_path):
    model = build_model(TINY.model, "torch")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=torch.randint(0, 64, (1, 8)), labels=torch.randint(0, 64, (1, 8))).loss.backward()
    optimizer.step()
    history = [{"step": s, "loss": 1.0, "time_s": 1.0, "tokens_per_s": 1.0} for s in range(0, 60, 5)]
    history += [{"step": s, "val_loss": 1.0, "val_accuracy": 0.1, "val_perplexity": 2.7} for s in (20, 40, 60)]
    ckpt.save(tmp_path, rank=0, world_size=1, state=TrainerState(step=60, total_steps=60, history=history),
              spec=TINY, model_state=model.state_dict(), optimizer_state=optimizer.state_dict())
    real = sum(f.stat().st_size for f in tmp_path.iterdir())
    rule = sweep_plan.checkpoint_bytes(TINY)
    assert real <= rule <= 1.05 * real, (real, rule)  # never under, at most 5% over at ~1M parameters
    # the measurement: a 276M-parameter trial folder with one checkpoint and model/ was 4.2 GB
    h100 = variant_spec("h100_deltanet").with_overrides({"model.vocab_size": REFERENCE_VOCAB, "train.keep": 1})
    assert 270e6 < count_params(h100.model)["total"] < 280e6
    trial = sweep_plan.checkpoint_bytes(h100) + sweep_plan.model_dir_bytes(h100)
    assert 4.2e9 <= trial <= 4.6e9, trial


def three_seeds(specs: list) -> dict:
    """Trial name -> spec for every spec times three seeds."""
    return {f"arm{i}-s{seed}": spec for i, spec in enumerate(specs) for seed in range(3)}


def test_the_disk_plan_refuses_with_the_numbers_and_the_flags_that_fit(tmp_path, monkeypatch):
    h100 = variant_spec("h100_deltanet").with_overrides({"model.vocab_size": REFERENCE_VOCAB, "train.steps": 300,
                                                         "train.checkpoint_every": 100, "train.keep": 3})
    specs = [h100] * 3
    # 9 trials, 3 at a time keeping 3 checkpoints of 3.3 GB: ended trials keep 2.2 GB (weights + model/), running
    # ones up to 3 x 3.3 + 3.3 being written + model/ 1.1 = 14.3 GB: 9 x 2.2 + 3 x 12.1 = 56 GB at the peak
    monkeypatch.setattr(sweep_plan, "free_bytes", lambda path: 64e9)
    assert 54e9 < sweep_plan.check_disk(three_seeds(specs), 3, str(tmp_path)).need < 58e9
    monkeypatch.setattr(sweep_plan, "free_bytes", lambda path: 40e9)
    with pytest.raises(sweep_plan.DiskError) as e:
        sweep_plan.check_disk(three_seeds(specs), 3, str(tmp_path))
    message = str(e.value)
    assert "\n" not in message and "but only 40.0 GB is free" in message and "the sweep needs about 56." in message
    assert "9 trial(s): each ending with 2.2 GB, 3 running at up to 14.3 GB (3 checkpoint(s) of 3.3 GB" in message
    # only what really fits, each alone: --keep 2 does not (46 GB), --max-concurrent 2 does not (44 GB)
    assert "it fits with --keep 1 (or --checkpoint-every 300) or --max-concurrent 1 or 2 trial(s) instead of 9" in message
    assert "--keep 2" not in message and "--max-concurrent 2" not in message
    assert sweep_plan.check_disk(three_seeds([s.with_overrides({"train.keep": 1}) for s in specs]), 3, str(tmp_path))
    assert sweep_plan.check_disk(three_seeds(specs), 1, str(tmp_path))
    monkeypatch.setattr(sweep_plan, "free_bytes", lambda path: 1e9)
    with pytest.raises(sweep_plan.DiskError, match="does not fit even with --keep 1 or --max-concurrent 1 or fewer trials: free some space"):
        sweep_plan.check_disk(three_seeds(specs), 3, str(tmp_path))
    with pytest.raises(sweep_plan.DiskError) as e:  # --keep 1 in effect: never suggested again
        sweep_plan.check_disk(three_seeds([s.with_overrides({"train.keep": 1}) for s in specs]), 3, str(tmp_path))
    assert "--keep" not in str(e.value)
    monkeypatch.setattr(sweep_plan, "free_bytes", lambda path: None)  # a bucket: a warning, not a refusal
    with pytest.warns(UserWarning, match="check that the bucket has room"):
        sweep_plan.check_disk(three_seeds(specs), 3, "s3://bucket/sweeps")
    assert sweep_plan.trials_on_disk(SweepLayout.at("s3://bucket/sweeps"), ["t0"]) == {}


def h100_arms(batch: int = 16, **overrides) -> list:
    """The issue's sweep: --grid attention_ratio --match-params at the H100 base with the GPT-2 vocabulary, as the
    sweep command sizes its trials (keep 1)."""
    base = variant_spec("h100_hybrid_sparse").with_overrides(
        {"model.vocab_size": 50257, "train.batch_size": batch, "train.keep": 1, "data.tokenizer": "gpt2", **overrides})
    return match_params(expand(base, parse_grid(["attention_ratio"])))


GIB = 2**30


def test_the_gpu_memory_model_holds_against_the_h100_measurements():
    measured = [  # benchmarks/results/train-*-1gpu-*.json and -2gpu-*: batch 48 x 1024 a GPU, max_memory_allocated
        ("h100_deltanet", "auto", 1, 51.02), ("h100_hybrid_sparse", "auto", 1, 45.26),
        ("h100_transformer", "auto", 1, 18.69), ("h100_hybrid_sparse", "ddp", 1, 50.64),
        ("h100_hybrid_sparse", "ddp", 2, 51.59), ("h100_hybrid_sparse", "fsdp", 2, 43.85)]
    for variant, strategy, workers, gib in measured:
        spec = variant_spec(variant).with_overrides({"model.vocab_size": REFERENCE_VOCAB, "scale.strategy": strategy,
                                                     "scale.num_workers": workers, "train.batch_size": 48 * workers})
        memory = run_plan.gpu_memory(spec)
        assert abs(memory.allocated / GIB / gib - 1) < 0.10, (variant, strategy, workers, memory.allocated / GIB, gib)
        assert memory.total > memory.allocated * 1.09  # the allocator's margin and the CUDA context on top
    # the trials at batch 16 x 1024 held 17-25 GiB each (nvidia-smi: the whole process)
    for arm in h100_arms(16):
        assert 17 * 0.9 < run_plan.gpu_memory_bytes(arm.spec) / GIB < 25 * 1.1, arm.id
    # parameter-matched arms with wider MLPs: the MLP's activations grow with its width
    narrow = variant_spec("h100_transformer").with_overrides({"model.vocab_size": 50257})
    wide = narrow.with_overrides({"model.mlp_size": 6168})
    assert run_plan.gpu_memory(wide).activations > run_plan.gpu_memory(narrow).activations * 1.5
    # the micro batch, not the batch, sets the activations; fused-linear never builds the logits
    accumulated = narrow.with_overrides({"train.batch_size": 48, "train.micro_batch_size": 16})
    assert run_plan.gpu_memory(accumulated) == run_plan.gpu_memory(narrow.with_overrides({"train.batch_size": 16}))
    assert run_plan.gpu_memory(narrow.with_overrides({"train.loss_kernel": "fused-linear"})).logits < 1e9


def test_the_13_arm_sweep_fits_one_80_gb_gpu_and_a_64_gb_disk(tmp_path, monkeypatch):
    arms = h100_arms(16)
    assert len(arms) == 13
    have = {"CPU": 16.0, "GPU": 1.0, "memory": 100e9}
    plans = [run_plan.plan(a.spec, have, trial=True, gpu_memory=int(80e9), label=a.id) for a in arms]
    assert all(p.gpu_memory_need * p.per_gpu <= 80e9 for p in plans)
    assert plans[0].per_gpu == 3 and plans[-1].per_gpu == 4  # attn0 (GDN everywhere) is the largest
    concurrent = min(p.concurrent for p in plans)
    assert concurrent == 3
    trials = {f"{a.id}-s0": p.apply(a.spec) for a, p in zip(arms, plans)}
    monkeypatch.setattr(sweep_plan, "free_bytes", lambda path: 64e9 - 2e9)
    disk = sweep_plan.check_disk(trials, concurrent, str(tmp_path))
    assert 40e9 < disk.need < 52e9 and disk.held == 0 and disk.to_write == disk.need
    # the peak: 4 running x 4.4 + 9 ended x 2.1 + 4 being written x 3.3 = 50 GB
    assert sweep_plan.check_disk(trials, 4, str(tmp_path)).need < 52e9
    text = sweep_plan.describe_sweep(arms, plans, disk, int(80e9), 1.0)
    lines = text.splitlines()
    assert len(lines) == 1 + 13 + 3 and lines[1].split()[0] == "attn0" and "3 at a time" in text
    assert "13 distinct shape(s)" in text and "13 MLP width(s)" in text and "0.3333 (3 a GPU)" in lines[1]
    assert "5,11" in next(line for line in lines if line.startswith("attn17 "))
    assert len({line.index("M ") for line in lines[1:14]}) == 1  # aligned columns


def test_a_resume_never_needs_more_than_what_remains_to_be_written(tmp_path, monkeypatch):
    arms = h100_arms(16)
    trials = {f"{a.id}-s0": a.spec for a in arms}
    names = list(trials)
    # half the trials ended (2.1 GB each, as measured), one interrupted with its checkpoint and a partial one
    on_disk = {name: (int(2.1e9), True) for name in names[:6]}
    on_disk[names[6]] = (int(6.0e9), False)
    for free in (30e9, 40e9, 45e9, 48e9, 50e9, 52e9, 60e9, 64e9, 100e9):
        monkeypatch.setattr(sweep_plan, "free_bytes", lambda path, free=free: free)
        try:
            first = sweep_plan.check_disk(trials, 4, str(tmp_path))
        except sweep_plan.DiskError:
            continue
        held = sum(size for size, _ in on_disk.values())
        monkeypatch.setattr(sweep_plan, "free_bytes", lambda path, free=free: free - held)  # they took the space
        resumed = sweep_plan.check_disk(trials, 4, str(tmp_path), on_disk=on_disk)
        assert resumed.held == held and resumed.need <= first.need and resumed.to_write == resumed.need - held
    # the relaunch: 5 trials on disk, 51.3 GB free, once refused for needing 59.8 GB
    on_disk = {name: (int(2.1e9), True) for name in names[:5]}
    monkeypatch.setattr(sweep_plan, "free_bytes", lambda path: 51.3e9)
    assert sweep_plan.check_disk(trials, 4, str(tmp_path), on_disk=on_disk).to_write < 40e9


def test_trials_on_disk_reads_sizes_and_which_trials_ended(tmp_path):
    from test_checkpoint import write

    trials = tmp_path / "trials"
    for name, steps in (("settled-s0", (10, 20)), ("running-s0", (10,)), ("finished-s0", (10,))):
        for step in steps:
            write(trials / name / layout.checkpoint_name(step), step=step)
    (trials / "empty-s0").mkdir()
    ckpt.CheckpointManager(layout.RunLayout(str(trials / "settled-s0"))).settle("weights")
    folders.write_results(RunLayout(str(trials / "finished-s0")), {"status": "finished", "step": 10, "total_steps": 10})
    # diverged before its first checkpoint: a relaunch trains it no more, so it writes nothing more either
    folders.write_results(RunLayout(str(trials / "diverged-s0")), {"status": "diverged", "step": 0, "total_steps": 10})
    names = ["settled-s0", "running-s0", "finished-s0", "empty-s0", "gone-s0", "diverged-s0"]
    found = sweep_plan.trials_on_disk(SweepLayout.at(str(tmp_path)), names)
    assert set(found) == {"settled-s0", "running-s0", "finished-s0", "empty-s0", "diverged-s0"}
    assert found["settled-s0"][1] and found["finished-s0"][1] and found["diverged-s0"][1]
    assert not found["running-s0"][1] and found["empty-s0"] == (0, False)  # no checkpoint yet: not ended
    size = sum(p.stat().st_size for p in (trials / "running-s0").rglob("*") if p.is_file())
    assert found["running-s0"][0] == size > 0


def test_a_trial_that_keeps_only_records_drops_every_checkpoint_and_its_model_and_counts_as_ended(tmp_path):
    from test_checkpoint import write

    run = RunLayout(str(tmp_path / "trials" / "searched-s0"))
    for step in (10, 20):
        write(Path(run.dir) / layout.checkpoint_name(step), step=step)
    Path(run.model).mkdir()
    (Path(run.model) / "model.safetensors").write_bytes(b"x" * 1000)
    folders.write_results(run, {"status": "stopped", "step": 20, "total_steps": 40})
    ckpt.CheckpointManager(run).settle("records")
    assert ckpt.list_checkpoints(run) == [] and not Path(run.model).exists()
    assert folders.read_results(run)["step"] == 20  # its numbers stay
    [(size, ended)] = sweep_plan.trials_on_disk(SweepLayout.at(str(tmp_path)), ["searched-s0"]).values()
    assert ended and size < sweep_plan.RECORDS_BYTES
    spec = h100_arms(16)[0].spec
    disk = {k: sweep_plan.trial_disk(spec, k) for k in ("checkpoints", "weights", "records")}
    assert disk["records"].ended == sweep_plan.RECORDS_BYTES < disk["weights"].ended < disk["checkpoints"].ended
    assert disk["records"].peak == disk["weights"].peak  # it writes the same while it runs
    with pytest.raises(ValueError, match="keeps must be one of"):
        ckpt.CheckpointManager(run).settle("nothing")


def test_gpu_packing_fills_each_gpu_and_refuses_a_share_that_does_not_fit():
    arms = h100_arms(16)
    attn0 = arms[0].spec
    have = {"CPU": 16.0, "GPU": 1.0}
    with pytest.raises(run_plan.GpuMemoryError) as e:
        run_plan.plan(attn0, have, trial=True, gpus_per_trial=0.25, gpu_memory=int(80e9), label="attn0")
    message = str(e.value)
    assert e.value.exit_code == 2 and "\n" not in message
    assert message.startswith("--gpus-per-trial 0.25 puts 4 trials on each 80.0 GB GPU, but one trial of attn0 needs "
                              "about 25.6 GB at micro-batch 16 x 1024: use --gpus-per-trial 0.3333 (3 trials a GPU) "
                              "or --micro-batch-size 8"), message
    for share in (0.3333, 0.5):  # what it names, and a looser one, are taken as asked
        p = run_plan.plan(attn0, have, trial=True, gpus_per_trial=share, gpu_memory=int(80e9))
        assert p.gpus_per_worker == share and p.concurrent == int(1 / share + 1e-6)
    fits = run_plan.plan(attn0.with_overrides({"train.micro_batch_size": 8}), have, trial=True, gpus_per_trial=0.25,
                           gpu_memory=int(80e9))
    assert fits.concurrent == 4
    # a trial that fits no GPU names the micro batch that does
    with pytest.raises(run_plan.GpuMemoryError, match="more than a 24.0 GB GPU holds; use --micro-batch-size 8"):
        run_plan.plan(attn0, have, trial=True, gpu_memory=int(24e9), label="attn0")
    # without the GPU's memory: the old default, one GPU a worker, nothing checked
    assert run_plan.plan(attn0, have, trial=True).gpus_per_worker == 1.0
    assert run_plan.plan(attn0, have, trial=True, gpus_per_trial=0.25).gpus_per_worker == 0.25
    # default packing: a trial per share of each GPU; more memory packs more
    for gpus in (1, 2, 4, 8):
        cluster = {"CPU": 64.0, "GPU": float(gpus)}
        small = run_plan.plan(attn0, cluster, trial=True, gpu_memory=int(80e9))
        large = run_plan.plan(attn0, cluster, trial=True, gpu_memory=int(141e9))
        assert (small.per_gpu, large.per_gpu) == (3, 5)
        assert (small.concurrent, large.concurrent) == (3 * gpus, 5 * gpus)
        assert small.gpu_memory_need * small.per_gpu <= 80e9 and large.gpu_memory_need * large.per_gpu <= 141e9
        batch48 = run_plan.plan(h100_arms(48)[0].spec, cluster, trial=True, gpu_memory=int(80e9))
        assert batch48.gpus_per_worker == 1.0 and batch48.concurrent == gpus
    # two workers of one trial never share a GPU (NCCL refuses two ranks on one device)
    two = attn0.with_overrides({"scale.num_workers": 2})
    p = run_plan.plan(two, {"CPU": 64.0, "GPU": 2.0}, trial=True, gpu_memory=int(80e9))
    assert p.gpus_per_worker == 1.0 and p.holds["GPU"] == 2.0 and p.concurrent == 1


def test_the_model_folder_estimate_holds_against_a_real_one_at_the_tiny_size(tmp_path):
    from hybrid_ray.data.tokenizer import ByteTokenizer
    from hybrid_ray.model.build import save_model

    tiny = variant_spec("h100_hybrid_sparse", "tiny").with_overrides({"model.vocab_size": 320})
    save_model(build_model(tiny.model, "torch"), tiny.model, tmp_path)
    ByteTokenizer().save(tmp_path)
    real = sum(f.stat().st_size for f in tmp_path.iterdir())
    assert 1.5e6 < real < 2.5e6  # the 1.9 MB
    assert real <= sweep_plan.model_dir_bytes(tiny) <= 1.1 * real
    # a local tokenizer folder: its files as they are (not a model's weights beside them)
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes(b"x" * 1000)
    (folder / "model.safetensors").write_bytes(b"x" * 10**6)
    assert sweep_plan.tokenizer_bytes(tiny.with_overrides({"data.tokenizer": str(folder)})) == 1000


@pytest.mark.slow
def test_a_sweep_that_would_fill_the_disk_is_refused_before_anything_starts(ray_session, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep_plan, "free_bytes", lambda path: 20e6)  # keep 2: 23 MB; keep 1: 17 MB
    rc = main(["sweep", "--grid", "lr=1e-3,2e-3", "--steps", "20", "--max-documents", "100", "--keep", "2",
               "--checkpoint-every", "10", "--storage-path", str(tmp_path), "--name", "full"])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]  # the rest: the data's tokenizing progress
    assert rc == 2 and len(errors) == 1 and err[-1].startswith("error: the sweep needs about "), err
    assert "but only 20.0 MB is free" in err[-1] and "2 trial(s): each ending with" in err[-1]
    assert "it fits with --keep 1" in err[-1]
    assert not (tmp_path / "full").exists()  # nothing started: no grid, no trial, not even an empty sweep folder


def test_an_ended_trial_keeps_the_newest_weights_and_drops_optimizer_state(tmp_path):
    from test_checkpoint import write

    for step in (10, 20):
        write(tmp_path / layout.checkpoint_name(step), step=step)
    ckpt.CheckpointManager(layout.RunLayout(str(tmp_path))).settle("checkpoints")
    assert len(ckpt.list_checkpoints(RunLayout(str(tmp_path)))) == 2
    ckpt.CheckpointManager(layout.RunLayout(str(tmp_path))).settle("weights")
    newest = tmp_path / layout.checkpoint_name(20)
    assert ckpt.list_checkpoints(RunLayout(str(tmp_path))) == [newest.name]
    assert not (newest / ckpt.OPTIMIZER_FILE).exists() and (newest / "model.safetensors").exists()
    assert ckpt.CheckpointManager(layout.RunLayout(str(tmp_path))).latest() == str(newest)  # it still verifies (generate and eval load it)
    with pytest.raises(Exception, match="holds weights only .* --keep-checkpoints"):
        ckpt.load(newest, 0)


def row(arm, seed, status, loss, value=None, reason=None, step=60):
    return {"arm": arm, "seed": seed, "status": status, "reason": reason, "value": value, "settings": {},
            "best": {"val_loss": loss} if loss is not None else {}, "stopped_at_step": step if step < 60 else None,
            "params": 1e6, "tokens_seen": 1000, "evals": {}, "history": []}


def test_the_table_says_seeds_finished_and_gives_no_deviation_for_one_seed():
    rows = [row("a", 0, "finished", 4.1), row("a", 1, "interrupted", None, reason="at step 20; relaunch to resume"),
            row("a", 2, "not started", None),
            row("b", 0, "finished", 4.0), row("b", 1, "finished", 4.2),
            row("c", 0, "failed", None, reason="cannot write the step-20 checkpoint: No space left on device", step=10)]
    table = report.ranked_table(rows).splitlines()
    b = next(line for line in table if line.split()[1] == "b")
    a = next(line for line in table if line.split()[1] == "a")
    c = next(line for line in table if line.split()[1] == "c")
    assert "4.1000 ± 0.1414" in b and " 2/2 " in b
    assert "4.1000" in a and "±" not in a and " 1/3 " in a and "interrupted at step 20; relaunch to resume" in a
    assert " 0/1 " in c and "failed cannot write the step-20 checkpoint: No space left on device" in c


def test_sweep_figure_positions_keep_values_when_some_arms_have_no_results():
    rows = [row("attn0", 0, "finished", 4.1, value=0.0), row("attn17", 0, "not started", None, value=0.17),
            row("attn100", 0, "finished", 4.3, value=1.0)]
    positions, ticks = report.value_positions(report.arm_summary(rows))
    assert positions == {"attn0": 0.0, "attn17": 0.17, "attn100": 1.0} and ticks is None
    rows.append(row("custom", 0, "finished", 4.2))  # an arm without a number: a categorical axis, in value order
    positions, ticks = report.value_positions(report.arm_summary(rows))
    assert ticks == {"attn0": 0, "attn17": 1, "attn100": 2, "custom": 3} and positions["attn100"] == 2.0
    report.plot_sweep([{**r, "history": [{"step": 60, "val_loss": 4.0, "time_s": 1.0}]} for r in rows],
                      os.devnull)


def test_sigterm_stops_a_sweep_like_ctrl_c():
    seen = []
    previous = signal.signal(signal.SIGINT, lambda *a: seen.append("SIGINT"))
    try:
        with _Signals(verbose=False):
            assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"  # Tune's banner and hints stay off the console
            os.kill(os.getpid(), signal.SIGTERM)
        assert seen == ["SIGINT"]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_runs_list_and_compare_include_sweep_folders(tmp_path, capsys):
    results = {"name": "attn0-s0", "status": "finished", "step": 60, "total_steps": 60,
               "best": {"step": 60, "val_loss": 4.1}, "final": {"step": 60, "val_loss": 4.1}, "history": []}
    trial = tmp_path / "sw" / "trials" / "attn0-s0"
    trial.mkdir(parents=True)
    (trial / "spec.yaml").write_text(TINY.with_overrides({"name": "attn0-s0"}).to_yaml())
    folders.write_results(RunLayout(str(trial)), results)
    (tmp_path / "sw" / "sweep.json").write_text(json.dumps({"trials": [report.trial_row(
        "attn0", {"attention_ratio": 0.0}, 0, "attn0-s0", RunLayout(str(trial)), results, 0.0)]}))
    single = tmp_path / "single"
    single.mkdir()
    (single / "spec.yaml").write_text(TINY.with_overrides({"name": "single"}).to_yaml())
    folders.write_results(RunLayout(str(single)), {**results, "name": "single"})
    assert [r.name for r in folders.list_runs(str(tmp_path))] == ["single", "sw/attn0-s0"]
    assert main(["runs", "list", "--storage-path", str(tmp_path)]) == 0
    assert "sw/attn0-s0" in capsys.readouterr().out
    assert sorted(r["name"] for r in report.comparison_rows([str(tmp_path)])) == ["attn0-s0", "single"]
    assert folders.remove_run(str(tmp_path), "sw/attn0-s0") == str(trial) and not trial.exists()


STUDY = ["sweep", "--preset", "h100", "--batch-size", "16", "--vocab-size", "50257", "--grid", "attention_ratio",
         "--match-params", "--dry-run", "--assume-free-disk", "64"]


@pytest.mark.parametrize("gpus, memory, at_once", [(1, 80, 3), (2, 80, 6), (4, 80, 6), (8, 80, 6),
                                                   (1, 141, 5), (2, 141, 6), (4, 141, 6), (8, 141, 6)])
def test_the_h100_study_is_planned_on_a_cpu_through_dry_run(tmp_path, capsys, gpus, memory, at_once):
    """The mission's headline study at its real size (H100 base, 13 parameter-matched arms, ASHA, batch 16 x 1024)
    on 1-8 GPUs of 80 or 141 GB and a 64 GB disk: it fits, each arm's trial fits its GPU share, and no more trials
    run at once than the GPUs and the disk hold (six at 7.7 GB each at their peak, the ended ones at 2.2 GB)."""
    rc = main([*STUDY, "--assume-gpus", str(gpus), "--assume-gpu-memory", str(memory), "--storage-path", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.splitlines()
    arms = [line.split() for line in lines[1:14]]
    assert [a[0] for a in arms][:3] == ["attn0", "attn8", "attn17"] and arms[-1][0] == "attn100"
    for line in lines[1:14]:  # "<need> GB of <its share of the GPU> GB at 16 x 1024"
        need, share = map(float, re.search(r"([\d.]+) GB of ([\d.]+) GB at 16 x 1024", line).groups())
        assert need <= share <= memory
    assert f"13 arm(s) x 1 seed(s) = 13, {at_once} at a time on {gpus} GPU(s) ({memory:.1f} GB each)" in out
    disk = next(line for line in lines if line.startswith("disk: "))
    need = float(disk.split("need ")[1].split(" GB")[0])
    assert need <= 64 and "64.0 GB free" in disk
    assert ("the disk holds no more" in out) == (at_once < (3 if memory == 80 else 5) * gpus)
    assert "kernels: 13 distinct shape(s) to compile: 13 MLP width(s)" in out
    assert "ASHA: no trial stopped before step 2500" in out  # the h100 preset's 10,000 steps, warm-up 100
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_a_dry_run_refuses_what_the_launch_would_after_printing_the_plan(tmp_path, capsys):
    rc = main([*STUDY, "--assume-gpus", "1", "--assume-gpu-memory", "80", "--gpus-per-trial", "0.25",
               "--storage-path", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "use --gpus-per-trial 0.3333 (3 trials a GPU)" in err[0], err
    rc = main([*STUDY[:-1], "20", "--assume-gpus", "1", "--assume-gpu-memory", "80", "--max-concurrent", "3",
               "--storage-path", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 2 and "arm " in captured.out  # the plan first, then the refusal
    assert captured.err.strip().startswith("error: the sweep needs about 45.3 GB more") and "20.0 GB is free" in captured.err
    rc = main(["sweep", "--grid", "lr", "--assume-gpus", "2"])
    assert rc == 2 and "go with --dry-run" in capsys.readouterr().err


def test_the_readme_s_ratio_sweep_at_the_tiny_default_plans_each_layout_once_under_its_real_share(tmp_path):
    """Issue 46: at the tiny preset's 6 layers `sweep --grid attention_ratio --seeds 3 --match-params` planned 39
    trials over 8 layouts (attn8 = attn17 = [5], ...) without a word, and attn25 trained [2,5] (33%) under its name.
    As a user runs it: one warning line naming what was merged or rounded, the plan's arms each a distinct layout
    named by the share it trains, 8 arms x 3 seeds."""
    from pathlib import Path

    from ray_procs import hybrid_ray, user_env

    result = hybrid_ray("sweep", "--grid", "attention_ratio", "--seeds", "3", "--match-params", "--dry-run",
                        "--storage-path", str(tmp_path), env=user_env(Path.home()), timeout=300)
    assert result.returncode == 0, result.stderr
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: 6 layers cannot hold every attention share of the grid: "), err
    for merged in ("attn8 + attn17 -> attn17 [5]", "attn25 -> attn33 [2,5]", "attn42 + attn50 -> attn50 [1,3,5]",
                   "attn58 + attn67 -> attn67 [1,2,4,5]", "attn75 + attn83 -> attn83 [0,1,3,4,5]",
                   "attn92 + attn100 -> attn100 [0,1,2,3,4,5]", "(13 grid points, 8 arms)"):
        assert merged in err[0], (merged, err[0])
    lines = result.stdout.splitlines()
    table = [line.split() for line in lines[1:lines.index(next(x for x in lines if x.startswith("trials: ")))]]
    layouts = {arm: [] if layers == "-" else [int(i) for i in layers.split(",")] for arm, layers, *_ in table}
    assert list(layouts) == ["attn0", "attn17", "attn33", "attn33late", "attn50", "attn67", "attn83", "attn100"]
    assert len({tuple(v) for v in layouts.values()}) == len(layouts)  # no two arms train the same layers
    for arm, layers in layouts.items():  # each named by the share it trains
        assert arm.removesuffix("late") == f"attn{round(100 * len(layers) / 6)}", (arm, layers)
    assert "trials: 8 arm(s) x 3 seed(s) = 24," in result.stdout
    assert not list(tmp_path.iterdir())


def test_a_ratio_arm_is_plotted_and_recorded_at_the_share_it_trains():
    """sweep.json's `value` (the figure's ratio axis) and `settings` are the share of the layers built, for ratio and
    variant axes, at 6 and 12 layers; the arm's spec names a variant only where it has that variant's share."""
    import warnings

    from hybrid_ray.config.grid import numeric_value

    for preset, variant_axis in [("tiny", False), (None, False), ("tiny", True)]:
        variants = "variant=h100_hybrid_8pct,h100_hybrid_sparse,h100_hybrid_25pct"
        grid = [variants] if variant_axis else ["attention_ratio"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            arms = expand(variant_spec("h100_hybrid_sparse", preset), parse_grid(grid))
        assert len(caught) == (1 if preset else 0), [str(w.message) for w in caught]
        for arm in arms:
            model = arm.spec.model
            share = len(model.attn_layers) / model.num_layers
            assert numeric_value(arm) == share, arm.id
            if not variant_axis:
                assert arm.settings == {"attention_ratio": round(share, 4)} and arm.id.startswith(
                    f"attn{round(100 * share)}")
            if arm.spec.variant:
                assert len(VARIANTS[arm.spec.variant].attn_layers_12) / 12 == share or variant_axis, arm.id
    assert [a.id for a in arms] == ["h100_hybrid_sparse", "h100_hybrid_25pct"]  # 8% and 17% train [5] at 6 layers
    assert "h100_hybrid_8pct + h100_hybrid_sparse -> h100_hybrid_sparse [5] = 17%" in str(caught[0].message)
    assert "h100_hybrid_25pct -> h100_hybrid_25pct [2,5] = 33%" in str(caught[0].message)


def test_a_sweep_shorter_than_its_warm_up_warns_once_and_its_arms_hold_the_warm_up_they_use(tmp_path, capsys, recwarn):
    """Issue 46, for a sweep: `sweep --grid lr=1e-3,2e-3 --steps 10` at the tiny preset's 20-step warm-up warns in one
    line (not one per arm), and its arms train, and record, the warm-up cut to the run; arms of different lengths are
    named."""
    from hybrid_ray.sweep.plan import with_warmup_used

    assert main(["sweep", "--grid", "lr=1e-3,2e-3", "--steps", "10", "--dry-run", "--storage-path", str(tmp_path)]) == 0
    said = [str(w.message) for w in recwarn.list]
    assert len(said) == 1 and said[0].startswith("the 20-step learning-rate warm-up is longer than the 10-step run"), said
    base = variant_spec("h100_hybrid_sparse", "tiny")
    arms, notes = with_warmup_used(expand(base, parse_grid(["train.steps=10,30,200"])))
    assert [a.spec.optim.warmup_steps for a in arms] == [10, 20, 20]
    assert [n.split(":")[0] for n in notes] == ["arm(s) steps10", "arm(s) steps30"]
