"""Training through a real local Ray cluster on CPU workers: the default run, exact resume, fault tolerance,
extension without an LR jump, divergence, broken and planted checkpoints, and bad input."""

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from hybrid_ray.cli import main
from hybrid_ray.config.variants import variant_spec
from hybrid_ray.model import count_params
from hybrid_ray.train import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_run(ray_session, tmp_path_factory):
    """`hybrid-ray train` with no run arguments: the README's main job, on its one CPU worker (DDP across two workers:
    `reference_run` and the two-node test in test_jobs.py)."""
    storage = tmp_path_factory.mktemp("runs")
    rc = main(["train", "--storage-path", str(storage)])
    assert rc == 0
    return storage / "h100_hybrid_sparse-tiny"


def small_spec(storage, name, **overrides):
    """A 2-layer hybrid on 400 documents: seconds per run."""
    spec = variant_spec("h100_hybrid_sparse", "tiny")
    return spec.with_overrides({
        "name": name, "storage_path": str(storage), "scale.num_workers": 2, "data.max_documents": 400,
        "model.num_layers": 2, "model.attn_layers": [1], "train.log_every": 1, "train.eval_every": 10,
        "train.checkpoint_every": 10, "train.eval_tokens": 4096, **overrides,
    })


REFERENCE = {"train.steps": 20, "optim.warmup_steps": 5}  # warms up, then decays to the floor by step 20


@pytest.fixture(scope="module")
def reference_run(ray_session, tmp_path_factory):
    """The 20-step run that the resume, broken-checkpoint and extension tests compare against, trained once (each Ray
    Train launch costs seconds however short the run); a test that changes the run works on `copy_run`."""
    return train(small_spec(tmp_path_factory.mktemp("reference"), "reference", **REFERENCE), progress=False)


@pytest.fixture(scope="module")
def one_worker_run(ray_session, tmp_path_factory):
    """A finished 10-step DDP run on one worker, trained once: the FSDP test's reference, and the run the
    planted-checkpoint tests plant into (each into a copy)."""
    spec = small_spec(tmp_path_factory.mktemp("one-worker"), "one-worker",
                      **{"train.steps": 10, "scale.strategy": "ddp", "scale.num_workers": 1})
    return train(spec, progress=False)


def copy_run(outcome, storage):
    """A copy of a finished run's folder under another storage path, by the same name (spec.yaml pins the name; Ray's
    run snapshot names the checkpoints relative to the run folder): relaunched there, it continues as the original
    would, and the original stays untouched for the other tests."""
    run_dir = Path(outcome.run_dir)
    return Path(shutil.copytree(run_dir, storage / run_dir.name))


def losses(results):
    return [(r["step"], r["loss"]) for r in results["history"] if "loss" in r]


def strict_json(path):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


def test_default_run_learns_and_writes_everything(default_run):
    results = strict_json(default_run / "results.json")
    assert results["status"] == "finished" and results["step"] == results["total_steps"] == 200
    train_losses = [loss for _, loss in losses(results)]
    assert train_losses[-1] < train_losses[0] - 2.0  # byte-level text: from ~5.8 nats to well under 3.8
    evals = [r for r in results["history"] if "val_loss" in r]
    assert len(evals) == 4 and evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5
    # evaluations sample 32k tokens spread over the split; the last one scores the whole split
    assert [r["val_split"] for r in evals] == ["sample"] * 3 + ["full"]
    assert 30_000 < evals[0]["val_tokens"] <= 32_768 < evals[-1]["val_tokens"]
    assert results["final"]["val_tokens"] == evals[-1]["val_tokens"]
    assert abs(results["final"]["val_loss"] - results["final_train_loss"]) < 0.5  # validation is representative
    assert 0 < results["final"]["val_accuracy"] <= 1 and results["final"]["val_perplexity"] > 1
    spec = variant_spec("h100_hybrid_sparse", "tiny").model.with_vocab(320)
    assert results["params"]["total"] == count_params(spec)["total"]
    assert results["layer_types"] == ["gdn"] * 5 + ["attn"]  # the 17% hybrid: one attention layer in six
    assert results["tokens_seen"] == 200 * 8 * 128 and results["wall_seconds"] > 0
    # the launch's first step (compiling kernels on a GPU) is kept apart: train_seconds and time_s count training only
    assert 0 < results["compile_seconds"] and 0 < results["train_seconds"]
    assert results["compile_seconds"] + results["train_seconds"] < results["wall_seconds"]
    # and the evaluations too (the dry run's GPU-hours count them at a sweep's own cadence: records/speeds.py)
    assert 0 < results["eval_seconds"] < results["wall_seconds"] - results["train_seconds"] - results["compile_seconds"]
    inside = sum(results[k] for k in ("setup_seconds", "compile_seconds", "train_seconds", "eval_seconds"))
    assert 0 < results["setup_seconds"] and inside < results["wall_seconds"]  # the rest: Ray's start-up, checkpoints
    assert max(r["time_s"] for r in results["history"]) <= results["train_seconds"]
    assert results["versions"]["backend"] == "torch" and "fla" in results["versions"]
    assert results["spec"]["scale"]["strategy"] == "auto" and results["versions"]["strategy"] == "ddp"  # CPU workers
    for name in ("results.json", "curves.png", "spec.yaml", "model/config.json", "model/model.safetensors"):
        assert (default_run / name).stat().st_size > 0, name
    assert (default_run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert list((default_run / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in default_run.glob("checkpoint_0*")) == [
        "checkpoint_00000100", "checkpoint_00000150", "checkpoint_00000200"]  # --keep 3


def test_relaunching_a_finished_run_trains_and_writes_nothing(default_run, capsys):
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in default_run.rglob("*") if p.is_file()}
    assert main(["train", "--storage-path", str(default_run.parent)]) == 0
    out = capsys.readouterr().out
    assert f"{default_run.name} already finished at step 200/200" in out and "--extend-steps" in out, out
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in default_run.rglob("*") if p.is_file()} == files
    assert json.loads((default_run / "results.json").read_text())["launches"] == 1


def test_trained_model_generates_and_loads_in_fla(default_run, capsys, fla_interpreted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert main(["generate", str(default_run), "--prompt", "def main(", "--max-new-tokens", "12", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("def main(")
    model = AutoModelForCausalLM.from_pretrained(default_run / "model")
    assert type(model).__name__ == "GatedDeltaNetForCausalLM"
    tokenizer = AutoTokenizer.from_pretrained(default_run / "model")  # the byte tokenizer, for transformers too
    assert tokenizer.encode("héllo\n") == list("héllo\n".encode())
    assert tokenizer.decode(list("wörld".encode())) == "wörld"


def test_resume_is_exact_also_through_a_storage_uri(reference_run, tmp_path):
    """Resumed from its step-10 checkpoint, a run trains exactly as straight through; its storage is a pyarrow
    filesystem URI (file:// here; s3:// and gs:// take the same code path)."""
    from ray.util.state import list_actors

    straight = reference_run
    spec = small_spec(f"file://{tmp_path}", "resumed", **REFERENCE)
    ctrl_c = signal.getsignal(signal.SIGINT)
    first = train(spec, until_step=10, progress=False)
    assert first.run_dir == f"file://{tmp_path}/resumed"
    # Ctrl-C is the driver's again, and the launch's controller (which Ray Train's handler held) ends
    assert signal.getsignal(signal.SIGINT) is ctrl_c
    deadline = time.time() + 30
    while list_actors(filters=[("class_name", "=", "TrainController"), ("state", "=", "ALIVE")]):
        assert time.time() < deadline, "the finished launch's controller lives on"
        time.sleep(0.2)
    assert first.results["status"] == "stopped" and first.results["step"] == 10
    (tmp_path / "resumed" / "results.json").unlink()  # what a launch interrupted after its checkpoint leaves
    second = train(spec, progress=False)
    assert second.results["status"] == "finished" and second.results["launches"] == 2  # the interrupted one counts
    assert losses(second.results) == losses(straight.results)
    assert [s for s, _ in losses(straight.results)] == list(range(1, 21))
    evals = [(r["step"], r["val_loss"]) for r in straight.results["history"] if "val_loss" in r]
    assert [(r["step"], r["val_loss"]) for r in second.results["history"] if "val_loss" in r] == evals
    for name in ("results.json", "curves.png", "spec.yaml", "model/config.json", "model/model.safetensors"):
        assert (tmp_path / "resumed" / name).exists(), name


def test_fsdp_trains_like_ddp_and_resumes_exactly(one_worker_run, tmp_path):
    """FSDP2 (the GPU default) on 2 gloo workers: the losses of DDP on one worker (the loader and the validation
    blocks do not depend on the world size), and a resume that continues exactly."""
    ddp = one_worker_run
    fsdp = small_spec(tmp_path, "fsdp", **{"train.steps": 10, "scale.strategy": "fsdp", "train.checkpoint_every": 5})
    straight = train(fsdp, progress=False)
    assert straight.results["versions"]["strategy"] == "fsdp" and ddp.results["versions"]["strategy"] == "ddp"
    for (step, a), (_, b) in zip(losses(straight.results), losses(ddp.results), strict=True):
        assert a == pytest.approx(b, rel=1e-4), step  # fp32 on CPU: only the reduction order differs
    # the full validation split on 2 ranks scores the same tokens as on 1 rank
    assert straight.results["final"]["val_tokens"] == ddp.results["final"]["val_tokens"]
    assert straight.results["final"]["val_loss"] == pytest.approx(ddp.results["final"]["val_loss"], rel=1e-4)
    resumed = fsdp.with_overrides({"name": "fsdp-resumed"})
    assert train(resumed, until_step=5, progress=False).results["step"] == 5
    second = train(resumed, progress=False)
    assert second.results["launches"] == 2 and losses(second.results) == losses(straight.results)
    state = (tmp_path / "fsdp-resumed" / "model" / "model.safetensors")
    assert state.stat().st_size > 0  # the full (unsharded) model folder is written under FSDP2 too


def test_killed_worker_restarts_from_its_checkpoint(ray_session, tmp_path):
    from ray.util.state import list_actors

    spec = small_spec(tmp_path, "ft", **{"train.steps": 150, "train.log_every": 5, "scale.max_failures": 1})
    run_dir = tmp_path / "ft"
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(train(spec, progress=False)))
    thread.start()
    deadline = time.time() + 240
    while not (run_dir / "checkpoint_00000020" / "manifest_rank0.json").exists():
        assert time.time() < deadline and thread.is_alive(), "the run never reached its step-20 checkpoint"
        time.sleep(0.2)
    spec_before = (run_dir / "spec.yaml").read_bytes()
    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    assert workers, "no training worker found"
    os.kill(workers[0].pid, signal.SIGKILL)  # a real crash of one worker process
    thread.join(timeout=300)
    assert outcome, "training did not finish after the worker was killed"
    results = outcome[0].results
    assert results["status"] == "finished" and results["step"] == 150
    steps = [s for s, _ in losses(results)]
    assert steps == list(range(5, 151, 5))  # restored history, then the rest, with no duplicate or gap
    assert (run_dir / "spec.yaml").read_bytes() == spec_before


def test_a_diverging_run_stops_at_the_step_and_keeps_earlier_checkpoints(ray_session, tmp_path, capsys):
    rc = main(["train", "--lr", "1e6", "--steps", "30", "--max-documents", "400",
               "--checkpoint-every", "1", "--eval-every", "100", "--storage-path", str(tmp_path), "--name", "nan"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err, err
    results = strict_json(tmp_path / "nan" / "results.json")  # no bare NaN
    bad_step = results["diverged"]["step"]
    assert f"stopped being finite at step {bad_step}" in lines[0] and results["status"] == "diverged"
    kept = sorted(int(p.name.split("_")[1]) for p in (tmp_path / "nan").glob("checkpoint_0*"))
    assert all(step < bad_step for step in kept)  # nothing of the broken model was saved
    if kept:
        from safetensors.torch import load_file

        weights = load_file(tmp_path / "nan" / f"checkpoint_{kept[-1]:08d}" / "model.safetensors")
        assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_broken_newest_checkpoint_is_skipped_with_a_warning_and_extend_continues_without_an_lr_jump(reference_run,
                                                                                                     tmp_path, recwarn):
    """A copy of the reference whose newest checkpoint (and results.json) a full disk broke resumes from the one
    before; the repaired run, finished again, is then extended (one copy and one launch for both)."""
    done = reference_run
    run_dir = copy_run(done, tmp_path)
    spec = small_spec(tmp_path, run_dir.name, **REFERENCE)
    newest = run_dir / "checkpoint_00000020"
    for file in [*newest.iterdir(), run_dir / "results.json"]:
        file.write_bytes(b"")  # what a full disk leaves behind
    again = train(spec, progress=False)  # relaunched unchanged: continues from step 10, the newest good checkpoint
    assert any("checkpoint_00000020" in str(w.message) and "older checkpoint" in str(w.message) for w in recwarn)
    # results.json, which the launch writes again, was kept aside rather than failing the launch once it had trained
    assert any("results.json is not valid JSON" in str(w.message) and "results.json.damaged" in str(w.message)
               for w in recwarn)
    assert (run_dir / "results.json.damaged").read_bytes() == b""
    assert again.results["step"] == 20 and again.results["launches"] == 2
    assert losses(again.results) == losses(done.results)  # resumed exactly from step 10, not from scratch
    assert (run_dir / "checkpoint_00000020-1").is_dir()  # the broken folder was not written into
    assert newest.is_dir() and (newest / "model.safetensors").stat().st_size == 0

    floor = spec.optim.lr * spec.optim.min_lr_ratio
    with pytest.warns(UserWarning, match="--until-step 25 is past the run's last step \\(20\\)"):
        train(spec, until_step=25, progress=False)
    extended = train(spec, extend_steps=10, progress=False)
    assert extended.results["step"] == extended.results["total_steps"] == 30
    lrs = {r["step"]: r["lr"] for r in extended.results["history"] if "lr" in r}
    assert lrs[20] == pytest.approx(floor) and all(lrs[s] == pytest.approx(floor) for s in range(21, 31))
    assert losses(extended.results)[:20] == losses(done.results)


@pytest.mark.parametrize("planted", ["optimizer.pt", "rng_rank0.pt"])
def test_a_planted_pickle_in_a_checkpoint_is_refused_and_never_runs(one_worker_run, tmp_path, capsys, planted):
    """Someone who can write the run folder replaces a checkpoint file (and fixes the manifest to match): refused
    before any worker starts (the workers check again as they load: test_checkpoint.py)."""
    from hybrid_ray.storage import crc32

    run_dir = copy_run(one_worker_run, tmp_path)
    marker = tmp_path / "pwned"
    folder = run_dir / "checkpoint_00000010"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state": Exploit()}, folder / planted)
    manifest = json.loads((folder / "manifest_rank0.json").read_text())
    manifest["files"][planted] = {"bytes": (folder / planted).stat().st_size, "crc32": crc32(folder / planted)}
    (folder / "manifest_rank0.json").write_text(json.dumps(manifest))
    rc = main(["train", "--config", str(run_dir / "spec.yaml"), "--storage-path", str(tmp_path), "--extend-steps", "5"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc != 0 and len(lines) == 1 and f"refusing to load {folder / planted}" in lines[0], err
    assert not marker.exists()


def test_bad_training_input_is_one_line(ray_session, default_run, tmp_path, capsys):
    def run(*args):
        rc = main(["train", *args])
        err = capsys.readouterr().err
        lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
        assert rc != 0 and len(lines) == 1 and "Traceback" not in err, err
        return lines[0]

    storage = str(tmp_path)
    assert "0 GPU(s)" in run("--gpus-per-worker", "1", "--storage-path", storage)
    assert "not divisible by 3 workers" in run("--num-workers", "3", "--storage-path", storage)
    (tmp_path / "a-file").write_text("x")
    assert "is not writable" in run("--storage-path", str(tmp_path / "a-file" / "runs"))
    assert "cannot reach the Ray cluster" in run("--address", "127.0.0.1:9", "--storage-path", storage)
    assert "already exists with train.steps=200" in run("--num-workers", "2", "--storage-path", str(default_run.parent),
                                                         "--steps", "300")
    assert "optim.lr must be a finite number > 0" in run("--lr", "inf")
    assert "optim.lr must be a finite number > 0" in run("--lr", "-1")

    copy = tmp_path / "copy"
    shutil.copytree(default_run, copy / default_run.name)
    for checkpoint in (copy / default_run.name).glob("checkpoint_0*"):  # every checkpoint damaged: nothing to resume
        weights = checkpoint / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100] + b"\x00" * 100)
    results_before = (copy / default_run.name / "results.json").read_bytes()
    line = run("--num-workers", "2", "--storage-path", str(copy), "--extend-steps", "10")
    assert "every checkpoint of run" in line and "is damaged" in line and f"runs rm {default_run.name} --storage-path {copy}`" in line
    assert (copy / default_run.name / "results.json").read_bytes() == results_before
    assert Path(copy / default_run.name / "checkpoint_00000150" / "model.safetensors").exists()


def test_only_a_driver_of_its_own_ray_goes_without_the_placement_group_cleaner(ray_session):
    """The session's Ray ends with this process (its driver): a run launched here needs no cleaner; one launched from
    an actor on it (a Tune trial) does."""
    from hybrid_ray import cluster

    @ray_session.remote(num_cpus=0)
    class Trial:
        def ends_with_this_process(self):
            return cluster.ends_with_this_process()

    assert cluster.ends_with_this_process()
    trial = Trial.remote()
    assert ray_session.get(trial.ends_with_this_process.remote()) is False
    ray_session.kill(trial)


def test_input_is_checked_before_any_cluster_is_contacted(tmp_path, capsys):
    """Data, tokenizer and backend errors come first: the unreachable address is never reached."""
    unreachable = ["--address", "127.0.0.1:9", "--storage-path", str(tmp_path)]
    for args, fragment in [
        (["--data", str(tmp_path / "missing")], "data source not found"),
        (["--tokenizer", str(tmp_path / "no-tokenizer")], "could not load tokenizer"),
        (["--seq-len", "1000000", "--max-documents", "50"], "fewer than one global batch"),
    ]:
        assert main(["train", *args, *unreachable]) != 0
        assert fragment in capsys.readouterr().err
    assert main(["train", "--backend", "fla", "--storage-path", str(tmp_path)]) == 2
    assert "--backend fla needs a CUDA GPU" in capsys.readouterr().err


def test_an_h100_size_variant_on_cpu_is_estimated_before_it_starts(ray_session, tmp_path, capsys, recwarn):
    from hybrid_ray.train.launch import cpu_estimate

    rc = main(["train", "--variant", "h100_transformer", "--max-documents", "50", "--cpus-per-worker", "64",
               "--storage-path", str(tmp_path)])  # stops at the resource check, after the estimate
    err = capsys.readouterr().err
    assert rc != 0 and "asked for 1 worker(s) x 64 CPU" in err
    warning = next(str(w.message) for w in recwarn if "trains on CPU workers" in str(w.message))
    assert warning.startswith("h100_transformer has 85M parameters") and "GiB per worker" in warning
    spec = variant_spec("h100_transformer").with_overrides({"model.vocab_size": 320})
    gib, seconds = cpu_estimate(spec)
    small = cpu_estimate(spec.with_overrides({"train.batch_size": 8}))
    assert gib > 10 and seconds > 1 and small[0] < gib and small[1] < seconds


def test_sigterm_says_the_step_the_relaunch_resumes_from(tmp_path):
    """Issue 46: SIGTERM of `train` printed `interrupted at step 100 (the newest checkpoint)` while checkpoint 150
    existed and the relaunch resumed at 150: ray.init's handler exited the driver with its workers still training.
    `hybrid-ray train` at a user's defaults (its own local Ray, ~/hybrid-ray-runs), a checkpoint at every step so
    that one is always being written; SIGTERM once a few exist: one line, exit 130, and the step it names is the
    newest good checkpoint afterwards and the step the relaunch resumes from."""
    from ray_procs import HYBRID_RAY, hybrid_ray, one_error_line, user_env

    from hybrid_ray.layout import RunLayout
    from hybrid_ray.train.checkpoint import CheckpointManager

    env = user_env(tmp_path)
    args = ["train", "--steps", "1500", "--checkpoint-every", "1", "--eval-every", "1500", "--log-every", "100",
            "--max-documents", "100", "--name", "term"]
    run = tmp_path / "hybrid-ray-runs" / "term"
    proc = subprocess.Popen([HYBRID_RAY, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while len(list(run.glob("checkpoint_0*/manifest_rank0.json"))) < 3 and not list(run.glob("checkpoint_0000001*")):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    line = one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    assert proc.returncode == 130 and "relaunch the same command to resume" in line, err[-3000:]
    step = int(re.fullmatch(r"error: interrupted at step (\d+) \(the newest checkpoint\); .*", line).group(1))
    time.sleep(3)  # a worker left training (before the fix) writes on
    assert CheckpointManager(RunLayout(str(run))).resume_point() == step
    relaunch = hybrid_ray(*args, "--until-step", str(step + 1), env=env)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["resumed_at"] == [step] and results["step"] == step + 1


def test_a_run_shorter_than_its_warm_up_says_so_and_records_the_warm_up_it_used(tmp_path):
    """Issue 46: `hybrid-ray train --steps 10` at a user's defaults (the tiny preset's 20-step warm-up) trained a
    learning rate that only rose, with no word, and spec.yaml said 20. Now: one warning line, spec.yaml and
    results.json hold the 10-step warm-up it used, and the LR rises to the preset's peak at the last step."""
    from ray_procs import hybrid_ray, user_env

    result = hybrid_ray("train", "--steps", "10", "--log-every", "1", "--max-documents", "100", env=user_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines()
             if line.strip() and not line.startswith("tokenizing")]
    assert lines == ["warning: the 20-step learning-rate warm-up is longer than the 10-step run: it is cut to the run's "
                     "10 steps (spec.yaml records 10), so the LR only rises, to its peak at the last step, and never "
                     "decays; --warmup-steps sets the warm-up"], result.stderr[-3000:]
    run = tmp_path / "hybrid-ray-runs" / "h100_hybrid_sparse-tiny"
    import yaml

    spec = yaml.safe_load((run / "spec.yaml").read_text())
    results = json.loads((run / "results.json").read_text())
    assert spec["optim"]["warmup_steps"] == results["spec"]["optim"]["warmup_steps"] == 10
    lrs = [r["lr"] for r in results["history"] if "lr" in r]
    assert len(lrs) == 10 and lrs == sorted(lrs) and lrs[-1] == pytest.approx(spec["optim"]["lr"])
