"""Training through a real local Ray cluster on CPU workers: the default run, exact resume, fault tolerance,
extension without an LR jump, and bad input."""

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from hybrid_ray.cli import main
from hybrid_ray.model import count_params
from hybrid_ray.train import train
from hybrid_ray.variants import variant_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def default_run(ray_cluster, tmp_path_factory):
    """`hybrid-ray train` with no run arguments, on 2 CPU workers."""
    storage = tmp_path_factory.mktemp("runs")
    rc = main(["train", "--num-workers", "2", "--storage-path", str(storage)])
    assert rc == 0
    return storage / "h100_hybrid_sparse-tiny"


def small_spec(storage, name, **overrides):
    spec = variant_spec("h100_hybrid_sparse", "tiny")
    return spec.with_overrides({
        "name": name, "storage_path": str(storage), "scale.num_workers": 2, "data.max_documents": 400,
        "train.log_every": 1, "train.eval_every": 10, "train.checkpoint_every": 10, **overrides,
    })


def losses(results):
    return [(r["step"], r["loss"]) for r in results["history"] if "loss" in r]


def test_default_run_learns_and_writes_everything(default_run):
    results = json.loads((default_run / "results.json").read_text())
    assert results["status"] == "finished" and results["step"] == results["total_steps"] == 200
    train_losses = [loss for _, loss in losses(results)]
    assert train_losses[-1] < train_losses[0] - 2.0  # byte-level text: from ~5.8 nats to well under 3.8
    evals = [r for r in results["history"] if "val_loss" in r]
    assert len(evals) == 4 and evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5
    assert 0 < results["final"]["val_accuracy"] <= 1 and results["final"]["val_perplexity"] > 1
    spec = variant_spec("h100_hybrid_sparse", "tiny").model.with_vocab(320)
    assert results["params"]["total"] == count_params(spec)["total"]
    assert results["layer_types"] == ["gdn", "gdn", "gdn", "attn"]
    assert results["tokens_seen"] == 200 * 8 * 128 and results["wall_seconds"] > 0
    assert results["versions"]["backend"] == "torch" and "fla" in results["versions"]
    assert results["spec"]["scale"]["strategy"] == "auto" and results["versions"]["strategy"] == "ddp"  # CPU workers
    for name in ("results.json", "curves.png", "spec.yaml", "model/config.json", "model/model.safetensors"):
        assert (default_run / name).stat().st_size > 0, name
    assert (default_run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert list((default_run / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in default_run.glob("checkpoint_0*")) == [
        "checkpoint_00000100", "checkpoint_00000150", "checkpoint_00000200"]  # --keep 3


def test_trained_model_generates_and_loads_in_fla(default_run, capsys, fla_interpreted):
    from transformers import AutoModelForCausalLM

    assert main(["generate", str(default_run), "--prompt", "def main(", "--max-new-tokens", "12", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("def main(")
    model = AutoModelForCausalLM.from_pretrained(default_run / "model")
    assert type(model).__name__ == "GatedDeltaNetForCausalLM"


def test_resume_is_exact(ray_cluster, tmp_path):
    straight = train(small_spec(tmp_path, "straight", **{"train.steps": 20}), progress=False)
    first = train(small_spec(tmp_path, "resumed", **{"train.steps": 20}), until_step=10, progress=False)
    assert first.results["status"] == "stopped" and first.results["step"] == 10
    second = train(small_spec(tmp_path, "resumed", **{"train.steps": 20}), progress=False)
    assert second.results["status"] == "finished" and second.results["launches"] == 2
    assert losses(second.results) == losses(straight.results)
    assert [s for s, _ in losses(straight.results)] == list(range(1, 21))


def test_fsdp_trains_like_ddp_and_resumes_exactly(ray_cluster, tmp_path):
    """FSDP2 (the GPU default) on 2 gloo workers: the same losses as DDP, and a resume that continues exactly."""
    ddp = train(small_spec(tmp_path, "ddp", **{"train.steps": 10, "scale.strategy": "ddp"}), progress=False)
    fsdp = small_spec(tmp_path, "fsdp", **{"train.steps": 10, "scale.strategy": "fsdp"})
    straight = train(fsdp, progress=False)
    assert straight.results["versions"]["strategy"] == "fsdp" and ddp.results["versions"]["strategy"] == "ddp"
    for (step, a), (_, b) in zip(losses(straight.results), losses(ddp.results), strict=True):
        assert a == pytest.approx(b, rel=1e-4), step  # fp32 on CPU: only the reduction order differs
    resumed = fsdp.with_overrides({"name": "fsdp-resumed"})
    assert train(resumed, until_step=5, progress=False).results["step"] == 5
    second = train(resumed, progress=False)
    assert second.results["launches"] == 2 and losses(second.results) == losses(straight.results)
    state = (tmp_path / "fsdp-resumed" / "model" / "model.safetensors")
    assert state.stat().st_size > 0  # the full (unsharded) model folder is written under FSDP2 too


def test_extend_continues_without_an_lr_jump(ray_cluster, tmp_path):
    spec = small_spec(tmp_path, "extend", **{"train.steps": 20, "optim.warmup_steps": 5})
    done = train(spec, progress=False)
    floor = spec.optim.lr * spec.optim.min_lr_ratio
    extended = train(spec, extend_steps=10, progress=False)
    assert extended.results["step"] == extended.results["total_steps"] == 30
    lrs = {r["step"]: r["lr"] for r in extended.results["history"] if "lr" in r}
    assert lrs[20] == pytest.approx(floor) and all(lrs[s] == pytest.approx(floor) for s in range(21, 31))
    assert losses(extended.results)[:20] == losses(done.results)


def test_killed_worker_restarts_from_its_checkpoint(ray_cluster, tmp_path):
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


def test_bad_training_input_is_one_line(ray_cluster, default_run, tmp_path, capsys):
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

    copy = tmp_path / "copy"
    shutil.copytree(default_run, copy / default_run.name)
    weights = copy / default_run.name / "checkpoint_00000200" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100] + b"\x00" * 100)
    results_before = (copy / default_run.name / "results.json").read_bytes()
    line = run("--num-workers", "2", "--storage-path", str(copy), "--extend-steps", "10")
    assert "checkpoint" in line and "corrupt" in line and "model.safetensors" in line
    assert (copy / default_run.name / "results.json").read_bytes() == results_before
    assert Path(copy / default_run.name / "checkpoint_00000150" / "model.safetensors").exists()


def test_uri_storage_writes_and_resumes_through_pyarrow(ray_cluster, tmp_path):
    """Any pyarrow filesystem URI works as storage (file:// here; s3:// and gs:// take the same code path)."""
    spec = small_spec(f"file://{tmp_path}", "uri", **{"train.steps": 4, "scale.num_workers": 1,
                                                      "train.checkpoint_every": 2, "train.eval_every": 4})
    first = train(spec, until_step=2, progress=False)
    assert first.run_dir == f"file://{tmp_path}/uri" and first.results["status"] == "stopped"
    done = train(spec, progress=False)
    assert done.results["step"] == 4 and done.results["launches"] == 2
    for name in ("results.json", "curves.png", "spec.yaml", "model/config.json", "model/model.safetensors"):
        assert (tmp_path / "uri" / name).exists(), name
