"""`hybrid-ray` run as a user runs it, against a real `ray start --head` with token authentication (as
cluster/local-head.sh starts it): no variable set but HOME, a clean console, one-line errors, Ctrl-C, `ray job submit`."""

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from ray_procs import HYBRID_RAY, RAY, hybrid_ray, one_error_line, short_tmpdir, start_head, user_env

pytestmark = pytest.mark.slow
SMALL = ["--steps", "4", "--log-every", "2", "--eval-every", "4", "--max-documents", "100"]
RAY_NOISE = ("core_worker.cc", "RayDeprecationWarning", "(raylet)", "PreemptionWatcher", "Traceback",
             "Token authentication is enabled")




def test_train_connects_with_the_token_file_alone_and_keeps_the_console_clean(ray_head, tmp_path):
    result = hybrid_ray("train", *SMALL, "--storage-path", str(tmp_path), "--name", "addr", "--address", ray_head.address,
                        env=ray_head.env)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert f"on Ray cluster at {ray_head.address}" in out and f"Ray dashboard: {ray_head.dashboard}" in out
    assert f"tensorboard --logdir {tmp_path / 'addr' / 'tensorboard'}" in out
    assert "step 4/4 | loss" in out and "finished at step 4/4" in out
    assert not [noise for noise in RAY_NOISE if noise in out], out
    assert json.loads((tmp_path / "addr" / "results.json").read_text())["status"] == "finished"


@pytest.fixture(scope="module")
def default_head(tmp_path_factory):
    """A head started as cluster/local-head.sh does, in Ray's default temp folder (<the system temp folder>/ray), whose
    ray_current_cluster names it: where a plain ray.init() (or Ray's own auto-discovery) finds it."""
    system_tmp = short_tmpdir()  # this machine's temp folder for the test's user ($TMPDIR)
    head = start_head(tmp_path_factory.mktemp("home"), temp_dir=f"{system_tmp}/ray", extra_env={"TMPDIR": system_tmp})
    assert Path(system_tmp, "ray", "ray_current_cluster").exists()
    yield head
    head.stop()
    shutil.rmtree(system_tmp, ignore_errors=True)
    assert not head.processes()


def test_train_without_an_address_starts_its_own_ray_beside_a_running_head(default_head, tmp_path):
    result = hybrid_ray("train", *SMALL, "--storage-path", str(tmp_path), "--name", "own", env=default_head.env)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "on a new local Ray instance" in out and default_head.dashboard not in out, out[-3000:]
    assert "finished at step 4/4" in out


def test_an_asha_sweep_beside_a_running_head_frees_the_trials_it_stops(default_head, tmp_path):
    """One trial at a time: the trial after one that ASHA stops waits for the stopped one's placement group, which
    Ray Train's cleaner frees only when it reaches this sweep's own Ray."""
    result = hybrid_ray("sweep", "--grid", "lr=3e-3,1e-6,1e-7", "--reduction-factor", "2", "--max-concurrent", "1",
                        "--steps", "8", "--eval-every", "4", "--checkpoint-every", "4", "--log-every", "4",
                        "--max-documents", "100", "--eval-tokens", "2048", "--storage-path", str(tmp_path),
                        env=default_head.env, timeout=400)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "on a new local Ray instance" in out and "by ASHA" in out, out[-3000:]


def test_ray_address_from_the_environment_works_the_same(ray_head, tmp_path):
    result = hybrid_ray("train", *SMALL, "--storage-path", str(tmp_path), "--name", "env",
                        env={**ray_head.env, "RAY_ADDRESS": ray_head.address})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def test_a_missing_or_wrong_token_is_one_line(ray_head, tmp_path):
    (tmp_path / "wrong" / ".ray").mkdir(parents=True)
    (tmp_path / "wrong" / ".ray" / "auth_token").write_text("not-the-token")
    for home in (tmp_path / "none", tmp_path / "wrong"):
        home.mkdir(exist_ok=True)
        result = hybrid_ray("train", *SMALL, "--storage-path", str(tmp_path), "--address", ray_head.address,
                            env=user_env(home), timeout=180)
        line = one_error_line(result)
        assert f"cannot connect to the Ray cluster at {ray_head.address}: authentication failed" in line
        assert "RAY_AUTH_TOKEN" in line


def test_ctrl_c_says_where_the_run_resumes_and_exits_130(ray_head, tmp_path):
    run = tmp_path / "long"
    proc = subprocess.Popen([HYBRID_RAY, "train", "--steps", "1500", "--checkpoint-every", "5", "--log-every", "5",
                             "--max-documents", "100", "--storage-path", str(tmp_path), "--name", "long",
                             "--address", ray_head.address], env=ray_head.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 240
    while not list(run.glob("checkpoint_0*/manifest_rank0.json")):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("tokenizing")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: interrupted at step ") and "relaunch the same command to resume" in lines[0]


def test_ray_job_submit_as_the_readme_writes_it(ray_head, tmp_path):
    """README: `RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 -- hybrid-ray train ...`."""
    entry = f"hybrid-ray train {' '.join(SMALL)} --storage-path {tmp_path} --name job"
    for _ in range(30):  # a head that has just started may not have its job agent yet
        result = subprocess.run([RAY, "job", "submit", "--address", ray_head.dashboard, "--", *entry.split()],
                                env={**ray_head.env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=600)
        if "No available agent" not in result.stderr:
            break
        time.sleep(2)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "finished at step 4/4" in result.stdout
    assert json.loads(Path(tmp_path, "job", "results.json").read_text())["status"] == "finished"
