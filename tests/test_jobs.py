"""Ray jobs against a real `ray start --head` (127.0.0.1, dashboard, token authentication) that the tests start and
stop: `hybrid-ray submit` with a local FLA clone, `hybrid-ray jobs`, `ray job submit` with a job file, two nodes
sharing prepared data, `verify --fla`, uploads without secrets, and one-line errors before anything is sent."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from ray_procs import RAY, hybrid_ray, one_error_line, start_head, start_worker_node, user_env

from hybrid_ray.cli import main
from hybrid_ray.jobs.submit import EXCLUDES, measure_upload

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--steps", "4", "--log-every", "2", "--eval-every", "4", "--max-documents", "100", "--eval-tokens", "2048"]


def make_clone(folder: Path, break_kernel: bool = False) -> Path:
    """A folder shaped like an FLA git clone: the installed fla package, committed; optionally with a broken kernel."""
    import fla

    shutil.copytree(Path(fla.__file__).parent, folder / "fla", ignore=shutil.ignore_patterns("__pycache__"))
    if break_kernel:  # the fused-recurrent gated delta rule returns 1% too much
        kernel = folder / "fla" / "ops" / "gated_delta_rule" / "fused_recurrent.py"
        kernel.write_text(kernel.read_text().replace("return o, final_state", "return o * 1.01, final_state", 1))
    git = ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "clone"], check=True)
    return folder


def commit_of(folder: Path) -> str:
    return subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


@pytest.mark.slow
def test_verify_fla_passes_a_faithful_clone_and_names_the_broken_op(tmp_path, capsys):
    """(First in this file: the submit test after it reuses this passing check of the same sources.)"""
    good = make_clone(tmp_path / "good")
    assert main(["verify", "--fla", str(good)]) == 0
    out = capsys.readouterr().out
    assert f"fla           {good.resolve() / 'fla'} @ {commit_of(good)[:12]}" in out and "parity        PASS" in out
    if "device        cpu" in out:  # the verdict says what a CPU checks: not the chunk (training) kernels
        assert "parity        PASS (forward, fused-recurrent kernels only: the chunk/training kernels need a GPU)" in out
    bad = make_clone(tmp_path / "bad", break_kernel=True)
    assert main(["verify", "--fla", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match the twin" in err[0] and "gated delta rule" in err[0], err


@pytest.mark.slow
def test_submit_with_a_local_fla_clone_reports_it_and_leaks_no_token(ray_head, tmp_path):
    clone = make_clone(tmp_path / "clone")
    runs = tmp_path / "runs"
    result = hybrid_ray("submit", "--address", ray_head.dashboard, "--fla", str(clone), "--", "train", *SMALL,
                        "--storage-path", str(runs), "--name", "job", env=ray_head.env, cwd=str(ROOT))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "checking the FLA clone" in out and "upload: " in out and "finished at step 4/4" in out
    assert "verified" not in out and "FLA clone matches the twin on this " in out  # and says on what, no more
    job_id = next(line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("submitted "))
    assert f"{ray_head.dashboard}/#/jobs/{job_id}" in out and f"job {job_id}: SUCCEEDED" in out
    fla = json.loads((runs / "job" / "results.json").read_text())["versions"]["fla"]
    assert fla["kind"] == "submitted clone" and fla["clone"]["path"] == str(clone.resolve())
    assert fla["commit"] == commit_of(clone) and fla["dirty"] is False

    status = hybrid_ray("jobs", "status", job_id, "--address", ray_head.dashboard, env=ray_head.env)
    assert status.returncode == 0 and f"{job_id}: SUCCEEDED ({ray_head.dashboard}/#/jobs/{job_id})" in status.stdout
    logs = hybrid_ray("jobs", "logs", job_id, "--address", ray_head.dashboard, env=ray_head.env)
    assert logs.returncode == 0 and "finished at step 4/4" in logs.stdout
    listed = hybrid_ray("jobs", "list", "--address", ray_head.dashboard, "--json", env=ray_head.env)
    job = next(j for j in json.loads(listed.stdout) if j["job_id"] == job_id)
    assert job["status"] == "SUCCEEDED" and job["entrypoint"].startswith("python -m hybrid_ray train")

    token = (Path(ray_head.home) / ".ray" / "auth_token").read_text().strip()
    written = [p for p in runs.rglob("*") if p.is_file()]
    assert written and not [p for p in written if token.encode() in p.read_bytes()]
    info = hybrid_ray("jobs", "status", job_id, "--address", ray_head.dashboard, "--json", env=ray_head.env)
    metadata = json.loads(info.stdout)["metadata"]
    assert json.loads(metadata["fla_clone"])["commit"] == commit_of(clone)  # the clone is in the job's metadata
    assert token not in out + logs.stdout + listed.stdout + info.stdout + info.stderr


@pytest.mark.slow
def test_stop_stops_a_long_job(ray_head, tmp_path):
    result = hybrid_ray("submit", "--address", ray_head.dashboard, "--no-wait", "--", "train", "--steps", "100000",
                        "--max-documents", "100", "--storage-path", str(tmp_path), "--name", "long",
                        env=ray_head.env, cwd=str(ROOT))
    assert result.returncode == 0, result.stderr[-3000:]
    job_id = next(line.split()[1].rstrip(":") for line in result.stdout.splitlines() if line.startswith("submitted "))
    deadline = time.time() + 120
    while "RUNNING" not in hybrid_ray("jobs", "status", job_id, "--address", ray_head.dashboard, env=ray_head.env).stdout:
        assert time.time() < deadline
        time.sleep(2)
    stopped = hybrid_ray("jobs", "stop", job_id, "--address", ray_head.dashboard, env=ray_head.env)
    assert stopped.returncode == 0 and f"{job_id}: STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr


@pytest.mark.slow
def test_ray_job_submit_reads_a_job_file_as_its_runtime_env(ray_head, tmp_path):
    """README: `ray job submit --runtime-env jobs/NAME.yaml -- python -m hybrid_ray train --config jobs/NAME.yaml`."""
    command = [RAY, "job", "submit", "--address", ray_head.dashboard, "--runtime-env", "jobs/tiny_local.yaml", "--",
               "python", "-m", "hybrid_ray", "train", "--config", "jobs/tiny_local.yaml", *SMALL,
               "--storage-path", str(tmp_path), "--name", "from-ray-cli"]
    for _ in range(30):  # a head that has just started may not have its job agent yet
        result = subprocess.run(command, env={**ray_head.env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True,
                                timeout=600, cwd=str(ROOT))
        if "No available agent" not in result.stderr:
            break
        time.sleep(2)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    results = json.loads((tmp_path / "from-ray-cli" / "results.json").read_text())
    assert results["status"] == "finished" and results["spec"]["variant"] == "h100_hybrid_sparse"


@pytest.mark.slow
def test_two_nodes_read_the_same_shards_and_resume_exactly(ray_head, tmp_path):
    """A run resumed across two 1-CPU nodes trains as the same run straight through on one 2-CPU node (the session's
    head: this file's other runs use it too)."""
    caches = {name: tmp_path / f"cache-{name}" for name in ("driver", "head", "node")}
    head = start_head(tmp_path / "home", num_cpus=1, extra_env={"HYBRID_RAY_CACHE": str(caches["head"])})
    node = None
    try:
        node = start_worker_node(head, tmp_path / "home", num_cpus=1,
                                 extra_env={"HYBRID_RAY_CACHE": str(caches["node"])})
        args = ["train", "--num-workers", "2", "--steps", "10", "--log-every", "1", "--eval-every", "10",
                "--checkpoint-every", "5", "--max-documents", "200", "--eval-tokens", "2048",
                "--storage-path", str(tmp_path / "runs"), "--name", "two", "--address", head.address]
        env = {**head.env, "HYBRID_RAY_CACHE": str(caches["driver"])}
        first = hybrid_ray(*args, "--until-step", "5", env=env)
        assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
        second = hybrid_ray(*args, env=env)
        assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    finally:
        if node is not None:
            node.stop()
        head.stop()
    prepared = [p.name for p in caches["driver"].iterdir() if (p / "manifest.json").exists()]
    assert len(prepared) == 1
    for name in ("head", "node"):  # each node copied the driver's shards once, byte for byte
        for shard in ("train.bin", "val.bin"):
            assert (caches[name] / prepared[0] / shard).read_bytes() == (caches["driver"] / prepared[0] / shard).read_bytes()
    two = json.loads((tmp_path / "runs" / "two" / "results.json").read_text())
    single = hybrid_ray(*args[:-6], "--storage-path", str(tmp_path / "runs-one"), "--name", "one",
                        "--address", ray_head.address, env=ray_head.env)
    assert single.returncode == 0, (single.stdout + single.stderr)[-3000:]
    one = json.loads((tmp_path / "runs-one" / "one" / "results.json").read_text())
    assert two["resumed_at"] == [5]
    got = [(r["step"], r["loss"]) for r in two["history"] if "loss" in r]
    want = [(r["step"], r["loss"]) for r in one["history"] if "loss" in r]
    assert [s for s, _ in got] == list(range(1, 11))
    for (step, a), (_, b) in zip(got, want, strict=True):
        assert a == pytest.approx(b, rel=1e-5), step


@pytest.mark.slow
def test_bad_input_is_one_line_and_nothing_is_sent(ray_head, tmp_path):
    before = hybrid_ray("jobs", "list", "--address", ray_head.dashboard, "--json", env=ray_head.env).stdout
    train = ["--", "train", *SMALL, "--storage-path", str(tmp_path)]
    line = one_error_line(hybrid_ray("submit", "--address", "http://127.0.0.1:9", *train, env=ray_head.env, cwd=str(ROOT)))
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in line
    (tmp_path / "none").mkdir()
    line = one_error_line(hybrid_ray("submit", "--address", ray_head.dashboard, *train, env=user_env(tmp_path / "none"),
                                     cwd=str(ROOT)))
    assert "authentication failed" in line and "auth_token" in line
    (tmp_path / "wrong" / ".ray").mkdir(parents=True)
    (tmp_path / "wrong" / ".ray" / "auth_token").write_text("not-the-token")
    line = one_error_line(hybrid_ray("submit", "--address", ray_head.dashboard, *train, env=user_env(tmp_path / "wrong"),
                                     cwd=str(ROOT)))
    assert "authentication failed" in line
    (tmp_path / "not-a-clone").mkdir()
    line = one_error_line(hybrid_ray("submit", "--address", ray_head.dashboard, "--fla", str(tmp_path / "not-a-clone"),
                                     *train, env=ray_head.env, cwd=str(ROOT)))
    assert "is not an FLA clone: it has no fla/ package folder" in line
    big = tmp_path / "project"
    big.mkdir()
    with open(big / "weights.npy", "wb") as f:
        f.truncate(101 * 2**20)  # sparse: 101 MiB as the upload sees it
    line = one_error_line(hybrid_ray("submit", "--address", ray_head.dashboard, "--working-dir", str(big), *train,
                                     env=ray_head.env, cwd=str(ROOT)))
    assert "over the job server's 100 MiB" in line and "weights.npy (101 MiB)" in line
    assert hybrid_ray("jobs", "list", "--address", ray_head.dashboard, "--json", env=ray_head.env).stdout == before


def test_the_upload_leaves_out_secrets_caches_and_checkpoints(tmp_path, capsys):
    for name in (".env", ".env.local", "secrets/id_rsa", "secrets/id_ed25519.pub", ".aws/credentials", "tls/server.key",
                 "tls/cert.pem", ".ray/auth_token", "runs/x/checkpoint_00000010/optimizer.pt", ".venv/bin/python",
                 ".git/config", "model.safetensors", "train.py", "configs/run.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert {path for path, _ in measure_upload(tmp_path).files} == {"train.py", "configs/run.yaml"}
    assert main(["submit", "--dry-run", "--working-dir", str(tmp_path), "--", "train"]) == 0
    out = capsys.readouterr().out
    assert "upload: 2 files" in out and "train.py" in out and "id_rsa" not in out and ".env" not in out
    assert ".env" in EXCLUDES and "id_*" in EXCLUDES


def test_the_cluster_configs_hold_what_ray_and_kuberay_need():
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster" / "h100-aws.yaml").read_text())
    validate_config(config)  # Ray's own cluster-config schema
    validate_config(prepare_config(config))
    assert config["available_node_types"]["h100"]["node_config"]["InstanceType"] == "p5.48xlarge"
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    assert any("hybrid-ray" in c for c in config["setup_commands"])
    manifest = yaml.safe_load((ROOT / "cluster" / "kuberay-h100.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    assert manifest["spec"]["rayVersion"] == ray.__version__
    assert manifest["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    worker = manifest["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "8"
