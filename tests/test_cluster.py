"""`hybrid-ray` run as a user runs it, against a real `ray start --head` with token authentication (as
cluster/local-head.sh starts it): no variable set but HOME, a clean console, one-line errors, Ctrl-C, `ray job submit`."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray_procs import HYBRID_RAY, RAY, hybrid_ray, one_error_line, user_env

from hybrid_ray.config.variants import variant_spec
from hybrid_ray.layout import SweepLayout
from hybrid_ray.records import decisions
from hybrid_ray.records import report
from hybrid_ray.sweep import status

pytestmark = pytest.mark.slow
SMALL = ["--steps", "4", "--log-every", "2", "--eval-every", "4", "--max-documents", "100"]
RAY_NOISE = ("core_worker.cc", "RayDeprecationWarning", "(raylet)", "PreemptionWatcher", "Traceback",
             "Token authentication is enabled")




def test_train_connects_through_ray_address_with_the_token_file_alone_and_keeps_the_console_clean(ray_head, tmp_path):
    """$RAY_ADDRESS works as --address does (the Ctrl-C, wrong-token and two-node tests pass --address)."""
    result = hybrid_ray("train", *SMALL, "--storage-path", str(tmp_path), "--name", "addr",
                        env={**ray_head.env, "RAY_ADDRESS": ray_head.address})
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert f"on Ray cluster at {ray_head.address}" in out and f"Ray dashboard: {ray_head.dashboard}" in out
    assert f"tensorboard --logdir {tmp_path / 'addr' / 'tensorboard'}" in out
    assert "step 4/4 | loss" in out and "finished at step 4/4" in out
    assert not [noise for noise in RAY_NOISE if noise in out], out
    assert json.loads((tmp_path / "addr" / "results.json").read_text())["status"] == "finished"


def test_train_without_an_address_starts_its_own_ray_beside_a_running_head(ray_head, tmp_path):
    assert Path(ray_head.temp_dir, "ray_current_cluster").exists()  # where a plain ray.init() would find the head
    result = hybrid_ray("train", *SMALL, "--storage-path", str(tmp_path), "--name", "own", env=ray_head.env)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "on a new local Ray instance" in out and ray_head.dashboard not in out, out[-3000:]
    assert "finished at step 4/4" in out


def test_an_asha_ratio_sweep_beside_a_running_head_stops_weak_arms_frees_their_trials_and_writes_everything(
        ray_head, tmp_path):
    """`hybrid-ray sweep` without an address, beside a head that Ray's auto-discovery would find, at the default
    concurrency (one trial at a time on 2 CPUs): every trial after one that ASHA stops waits for the stopped one's
    placement group, which Ray Train's cleaner frees only when it reaches this sweep's own Ray; so a trial that starts
    after ASHA stopped one, and the sweep's end, prove the stopped trials left no resources held. Ctrl-C once ASHA has
    stopped a trial and a later one, judged to go on at its rung, has its rung's checkpoint: that trial is
    interrupted, not stopped by ASHA (Tune ends both alike), keeps its optimizer state, and the relaunch finishes it.
    (Its CI flake: a trial cut while ASHA was judging it could end either way, and on main a trial whose stop the
    scheduler's settle failed with FileNotFoundError was retried and finished by the relaunch, so ASHA's record
    named it stopped and sweep.json did not.)"""
    config = tmp_path / "asha.yaml"  # 4 layers: attention ratios 0, 0.25, 0.5 and 1 are 0, 1, 2 and 4 of them
    config.write_text(variant_spec("h100_hybrid_sparse", "tiny").with_overrides({
        "data.max_documents": 400, "model.num_layers": 4, "model.attn_layers": [3], "train.steps": 40,
        "train.eval_every": 10, "train.checkpoint_every": 10, "train.log_every": 5, "train.eval_tokens": 4096,
        "name": "asha"}).to_yaml())
    args = [HYBRID_RAY, "sweep", "--config", str(config), "--grid", "attention_ratio=0,0.25,0.5,1", "--match-params",
            "--reduction-factor", "2", "--storage-path", str(tmp_path)]
    sweep, trials = tmp_path / "asha", tmp_path / "asha" / "trials"
    proc = subprocess.Popen(args, env=ray_head.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def running() -> list[Path]:
        """Once ASHA has stopped a trial: trials past their rung (step 20, the only one) that ASHA let go on, with
        that rung's checkpoint, and no results yet (20 steps before they end: nothing can judge them meanwhile)."""
        layout = SweepLayout.at(str(sweep))
        if not status.read_stops(layout):
            return []
        going_on = {r["trial"] for r in decisions.read(layout.asha_decisions) if r["decision"] == "continue"}
        return [t for t in trials.glob("*-s0") if t.name in going_on and not (t / "results.json").exists()
                and (t / "checkpoint_00000020" / "manifest_rank0.json").exists()]

    deadline = time.time() + 500
    while not running():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    cut = running()[0].name
    proc.send_signal(signal.SIGINT)
    first_out, first_err = proc.communicate(timeout=180)
    assert proc.returncode == 130, (first_out + first_err)[-3000:]
    assert "relaunch the same command" in first_err.strip().splitlines()[-1]
    rows = {r["name"]: r for r in json.loads((sweep / "sweep.json").read_text())["trials"]}
    assert rows[cut]["status"] == "interrupted", rows[cut]  # not "stopped by ASHA"
    assert list((trials / cut).glob("checkpoint_0*/optimizer.pt"))  # nothing it needs to resume was pruned
    stops = status.read_stops(SweepLayout.at(str(sweep)))
    assert {n for n, r in rows.items() if r["status"] == "stopped by ASHA"} == set(stops)

    result = hybrid_ray(*args[1:], env=ray_head.env, timeout=600)  # the relaunch finishes every arm
    out = first_out + result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "on a new local Ray instance" in out and ray_head.dashboard not in out, out[-3000:]
    assert "1 at a time" in out and "by ASHA" in out, out[-3000:]
    assert "ASHA: no trial stopped before step 20 (2 evaluation(s)" in first_out  # the tiny warm-up is 20 steps
    events = [line.split("] ", 1)[1].split()[:4] for line in (first_out + result.stdout).splitlines() if "s] " in line]
    first_stop = next(i for i, (what, *_) in enumerate(events) if what == "stopped")
    assert ["started"] in [e[:1] for e in events[first_stop:]]  # a trial waited for the stopped one's resources
    rows = json.loads((tmp_path / "asha" / "sweep.json").read_text())["trials"]
    assert len(rows) == 4 and {r["arm"] for r in rows} == {"attn0", "attn25", "attn50", "attn100"}
    assert all(r["status"] in ("finished", "stopped by ASHA") for r in rows), rows
    assert {r["name"] for r in rows if r["status"] == "stopped by ASHA"} == set(status.read_stops(SweepLayout.at(str(sweep))))
    resumed = json.loads((trials / cut / "results.json").read_text())
    assert resumed["resumed_at"][:1] in ([20], [30]) and resumed["launches"] == 2  # it went on from where it was cut
    reference = next(r["params"] for r in rows if r["arm"] == "attn0")
    assert all(abs(r["params"] / reference - 1) <= 0.02 for r in rows)  # --match-params, through the whole sweep
    stopped = [r for r in rows if r["status"] == "stopped by ASHA"]
    assert stopped and any(r["status"] == "finished" for r in rows)
    consoled = {name: int(step) for name, step in re.findall(r"stopped +(\S+) by ASHA after step (\d+)",
                                                           first_out + result.stdout)}
    for row in rows:  # every trial ended with its own run folder, results and checkpoints
        results = json.loads((tmp_path / "asha" / "trials" / row["name"] / "results.json").read_text())
        assert results["best"] == row["best"] and results["final"] == row["final"]
        assert results["tokens_seen"] == row["tokens_seen"] and results["params"]["total"] == row["params"]
        assert list((tmp_path / "asha" / "trials" / row["name"]).glob("checkpoint_0*"))
    for row in stopped:
        assert row["stopped_at_step"] == 20 and row["step"] == row["stopped_at_step"]
        assert row["reason"] == f"at step {row['step']}"
        assert consoled[row["name"]] == row["step"]  # the step of ASHA's stop is the one the console said
    assert all(r["wall_seconds"] > 0 and r["compile_seconds"] >= 0 for r in rows)  # real, also for stopped trials
    lines = result.stdout.splitlines()
    header = max(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "arm"])
    table = [line.split()[1] for line in lines[header + 1:header + 5]]
    assert table == [a["arm"] for a in report.arm_summary(rows)]  # the printed table ranks as sweep.json does
    complete = [a for a in report.arm_summary(rows) if a["complete"]]
    assert complete and table[0] == min(complete, key=lambda a: a["best_val_loss"])["arm"]
    assert (tmp_path / "asha" / "sweep.png").read_bytes()[:4] == b"\x89PNG"


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


def test_sigterm_after_connecting_reaches_python_alone(ray_head):
    """A scheduler's or `timeout`'s SIGTERM ends a command in its one `interrupted` line: Ray's core worker's crash
    handler, which printed a native stack dump above it, no longer sees the signal once hybrid-ray has connected."""
    script = ("import os, signal\nfrom hybrid_ray import cluster\n"
              f"cluster.connect({ray_head.address!r})\nprint('connected', flush=True)\n"
              "os.kill(os.getpid(), signal.SIGTERM)\n")
    result = subprocess.run([sys.executable, "-c", script], env=ray_head.env, capture_output=True, text=True,
                            timeout=120)
    assert result.stdout == "connected\n", result.stderr[-3000:]
    assert result.returncode == signal.SIGTERM  # ray.init's handler: sys.exit(15), which hybrid-ray's commands catch
    assert "SIGTERM received" not in result.stderr and "@ " not in result.stderr, result.stderr[-3000:]


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


def _listening(port: int) -> bool:
    """Whether something listens on `port` (of 127.0.0.1 or of every address), as local-head.sh checks it."""
    import socket

    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return True
    return False


@pytest.mark.soak  # a deployment script, two Ray heads at once
def test_two_heads_of_local_head_sh_start_beside_each_other_and_stop_apart(tmp_path):
    """Issue 46: cluster/local-head.sh hard-coded ports 6379/8265 and one Ray folder, so a second head (or a user's
    own Ray) collided, and `stop` left the head's Ray client server (port 10001) running. Two heads at a user's
    defaults: the second takes free ports and says so; `stop` without a port, with two running, names both; stopping
    one frees its GCS, dashboard and client server ports and leaves the other serving jobs; then the other stops."""
    script = str(Path(__file__).parent.parent / "cluster" / "local-head.sh")
    env = user_env(tmp_path)
    heads = []

    def start() -> dict[str, int]:
        for attempt in (1, 2):  # Ray's raylet may time out starting on a loaded machine: the script stops what it started
            result = subprocess.run(["bash", script, "--num-cpus=1", "--disable-usage-stats"], env=env,
                                    capture_output=True, text=True, timeout=300)
            if "error: ray start failed (above); what it started is stopped" not in result.stderr:
                break
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        line = next(line for line in result.stdout.splitlines() if line.startswith("train/sweep: "))
        ports = dict(zip(("gcs", "dashboard", "client"), map(int, re.fullmatch(
            r"train/sweep: --address 127\.0\.0\.1:(\d+)   submit/jobs: --address http://127\.0\.0\.1:(\d+)   "
            r"Ray client server: port (\d+)", line).groups())))
        heads.append(ports)
        assert f"stop it: bash {script} stop {ports['gcs']}" in result.stdout
        return ports | {"stderr": result.stderr}

    def stop(*port: int) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", script, "stop", *map(str, port)], env=env, capture_output=True, text=True,
                              timeout=300)

    try:
        first = start()
        second = start()
        for what, default in (("gcs", 6379), ("dashboard", 8265), ("client", 10001)):
            assert first[what] != second[what] and _listening(first[what]) and _listening(second[what]), what
            # a head that moves off a default port says so; under the full suite another test's Ray may hold a
            # default when the first head starts and free it before the second does, so the second may take it
            if second[what] != default:
                assert f"port {default} (" in second["stderr"] and f"using {second[what]} " in second["stderr"]
        assert any(second[w] != d for w, d in (("gcs", 6379), ("dashboard", 8265), ("client", 10001)))
        both = stop()
        assert both.returncode == 2 and f"{first['gcs']}" in both.stderr and f"{second['gcs']}" in both.stderr
        assert stop(second["gcs"]).returncode == 0
        assert not [p for what, p in second.items() if what != "stderr" and _listening(p)]  # the client server too
        assert not Path(f"/tmp/ray-local-head-{os.getuid()}-{second['gcs']}").exists()
        listed = hybrid_ray("jobs", "--address", f"http://127.0.0.1:{first['dashboard']}", "list", env=env)
        assert listed.returncode == 0, listed.stderr[-3000:]  # the other head still serves jobs
        assert stop(first["gcs"]).returncode == 0
        assert not [p for what, p in first.items() if what != "stderr" and _listening(p)]
    finally:
        for ports in heads:
            stop(ports["gcs"])
