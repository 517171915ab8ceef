"""A Ray cluster started with `ray start --head` (dashboard on 127.0.0.1): `hybrid-ray train` as a Ray job, and
`hybrid-ray train --address` against it."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hybrid_ray.cli import main

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")
PORT, DASHBOARD = 6390, 8265


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    saved = dict(os.environ)
    env = {**os.environ, "RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}
    subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={PORT}", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={DASHBOARD}", "--num-cpus=2", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=180)
    os.environ["RAY_AUTH_MODE"] = "token"  # the head uses token auth; clients send ~/.ray/auth_token
    yield f"http://127.0.0.1:{DASHBOARD}"
    subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
    os.environ.clear()
    os.environ.update(saved)


def test_train_runs_as_a_ray_job(ray_head, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_head)
    job = client.submit_job(
        entrypoint=f"hybrid-ray train --steps 4 --log-every 2 --eval-every 4 --max-documents 100 "
                   f"--storage-path {tmp_path} --name job",
        runtime_env={"env_vars": {"HYBRID_RAY_CACHE": os.environ["HYBRID_RAY_CACHE"]}},
    )
    deadline = time.time() + 300
    while not (status := client.get_job_status(job)).is_terminal():
        assert time.time() < deadline, "the job did not finish"
        time.sleep(2)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-2000:]
    assert "finished at step 4/4" in logs
    assert json.loads((tmp_path / "job" / "results.json").read_text())["status"] == "finished"


def test_train_connects_to_an_address(ray_head, tmp_path, capsys):
    rc = main(["train", "--steps", "2", "--log-every", "2", "--eval-every", "2", "--max-documents", "100",
               "--storage-path", str(tmp_path), "--name", "addr", "--address", f"127.0.0.1:{PORT}"])
    import ray

    ray.shutdown()
    assert rc == 0, capsys.readouterr().err[-2000:]
    assert (tmp_path / "addr" / "results.json").exists()
