"""`hybrid-ray submit` against real heads (conftest's): the first test submits to a head of its own as soon as
`ray start --head` has returned and the dashboard answers (the job agent may not be up yet); the others use the
session's `ray_head`. What the job's working_dir holds on the cluster is exactly what --dry-run lists; a job file's
env_vars reach the job; a job whose `python` lacks the project's packages names that python; the console shows only
hybrid-ray's lines. Without a head: a wrong forwarded command fails before anything is uploaded, and --dry-run with
--fla shows the clone's commit and counts its files."""

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml
from ray_procs import hybrid_ray

from hybrid_ray.cli import main
from test_jobs import commit_of

ROOT = Path(__file__).resolve().parent.parent
RAY_LINES = ("packaging.py", "dashboard_sdk.py", "sdk.py:", "working_dir.py", "Ignoring upload", "job_manager.py")
LISTER = ("import json, os; print('WORKING_DIR', json.dumps(sorted(os.path.relpath(os.path.join(d, f)) "
          "for d, _, fs in os.walk('.') for f in fs)), os.environ.get('HR_PROBE'))")


@pytest.mark.slow
def test_submit_right_after_the_head_starts_succeeds_and_shows_only_its_own_lines(fresh_head):
    result = hybrid_ray("submit", "--address", fresh_head.dashboard, "--", "verify", env=fresh_head.env, cwd=str(ROOT))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "No available agent" not in out and "python -m hybrid_ray verify" in out
    assert [line for line in out.splitlines() if line.startswith("job ")][-1].split()[2] == "SUCCEEDED"
    assert not [noise for noise in RAY_LINES if noise in out], out


def project(folder: Path) -> Path:
    """A project folder with a file the user excludes (--exclude), one the job file excludes, and one the built-in
    list excludes."""
    for name, text in {"keep.py": "x", "configs/run.yaml": "a: 1", "secret.txt": "password", "dump/data.csv": "1,2",
                       ".env": "TOKEN=1"}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


@pytest.mark.slow
def test_the_jobs_working_dir_holds_exactly_what_dry_run_lists(ray_head, tmp_path):
    root = project(tmp_path / "project")
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump({"working_dir": str(root), "excludes": ["dump/"],
                                        "env_vars": {"HR_PROBE": "from-the-job-file"},
                                        "hybrid_ray": {"command": "train", "preset": "tiny"}}))
    listed = hybrid_ray("submit", "--dry-run", "--exclude", "secret.txt", str(job_file), env=ray_head.env)
    assert listed.returncode == 0, listed.stderr[-3000:]
    dry_run = sorted(line.split()[1] for line in listed.stdout.splitlines() if line.startswith("  "))
    assert dry_run == ["configs/run.yaml", "keep.py"] and "upload: 2 files" in listed.stdout
    # the same plan, run by a script as a user would: the job lists the working_dir it got and prints HR_PROBE
    script = ("import shlex, sys; from hybrid_ray.jobs import submit\n"
              f"plan = submit.plan([{str(job_file)!r}], excludes=['secret.txt'])\n"
              f"plan.command = 'python -c ' + shlex.quote({LISTER!r})\n"
              f"done = submit.submit(plan, address={ray_head.dashboard!r})\n"
              "sys.exit(done.status != 'SUCCEEDED')\n")
    result = subprocess.run([sys.executable, "-c", script], env=ray_head.env, capture_output=True, text=True,
                            timeout=600, cwd=str(tmp_path))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    seen = next(line for line in result.stdout.splitlines() if line.startswith("WORKING_DIR "))
    files, probe = seen.split(" ", 1)[1].rsplit(" ", 1)
    assert sorted(json.loads(files)) == dry_run and probe == "from-the-job-file"


@pytest.mark.slow
def test_a_job_whose_python_lacks_the_project_names_that_python(ray_head, tmp_path):
    """The head's PATH decides the job's `python`: here a job file puts a bare virtualenv's python first."""
    venv.create(tmp_path / "bare", with_pip=False)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump({"working_dir": str(ROOT),
                                        "env_vars": {"PATH": f"{tmp_path / 'bare' / 'bin'}:/usr/bin:/bin"},
                                        "hybrid_ray": {"command": "train", "preset": "tiny"}}))
    result = hybrid_ray("submit", "--address", ray_head.dashboard, str(job_file), env=ray_head.env, cwd=str(ROOT))
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert "ModuleNotFoundError" in out
    last = [line for line in result.stdout.splitlines() if line.startswith("job ")][-1]
    assert " FAILED " in last and f"it ran {tmp_path / 'bare' / 'bin' / 'python'}, the first `python` on the head's PATH" in last


def test_a_wrong_forwarded_command_fails_before_anything_is_sent(capsys):
    # an address nothing listens on: the command is refused before the cluster is asked anything
    assert main(["submit", "--address", "http://127.0.0.1:9", "--", "train", "--max-steps", "30"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: hybrid-ray train: No such option '--max-steps'"), err
    assert "nothing was submitted" in err[0]


def test_the_upload_carries_every_module_of_the_package():
    """A package named like a default exclude (`runs/`) was left out of the job's working_dir: its imports then failed
    on the cluster, or silently took an installed copy's."""
    from hybrid_ray.jobs.submit import measure_upload

    uploaded = {name for name, _ in measure_upload(ROOT).files}
    package = {str(p.relative_to(ROOT)) for p in (ROOT / "hybrid_ray").rglob("*.py")}
    assert package - uploaded == set()


def test_dry_run_with_a_clone_shows_its_commit_and_counts_its_files(tmp_path, capsys):
    clone = tmp_path / "clone"  # shaped like an FLA git clone (the dry run imports nothing from it)
    for name in ("fla/__init__.py", "fla/ops/gated_delta_rule/chunk.py", "README.md"):
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        (clone / name).write_text(f"# {name}\n" * 50)
    git = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t"]
    for step in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "clone"]):
        subprocess.run([*git, *step], check=True)
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "train.py").write_text("x" * 1000)
    assert main(["submit", "--dry-run", "--fla", str(clone), "--working-dir", str(tmp_path / "project"), "--",
                 "train"]) == 0
    out = capsys.readouterr().out
    shipped = [p for p in (clone / "fla").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    total = 1000 + sum(p.stat().st_size for p in shipped)
    assert f"@ {commit_of(clone)[:12]} (clean)" in out and "@ ?" not in out
    assert f"upload: {len(shipped) + 1} files, {total / 2**20:.1f} MiB" in out
    assert "FLA clone not checked (--dry-run)" in out and "  fla/__init__.py  (py_modules" in out
    (clone / "fla" / "__init__.py").write_text("# edited\n")
    assert main(["submit", "--dry-run", "--fla", str(clone), "--working-dir", str(tmp_path / "project"), "--",
                 "train"]) == 0
    assert f"@ {commit_of(clone)[:12]} (dirty)" in capsys.readouterr().out


def test_job_calls_wait_for_the_job_agent_then_give_up_in_one_line(monkeypatch):
    from hybrid_ray.errors import ClusterError
    from hybrid_ray.jobs import submit

    monkeypatch.setattr(submit.time, "sleep", lambda s: None)
    calls, said = [], []

    def submit_job():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("Request failed with status code 500: No available agent to submit job, please try "
                               "again later..")
        return "raysubmit_1"

    assert submit._with_agent(submit_job, "http://head:8265", said.append) == "raysubmit_1"
    assert len(calls) == 3 and len(said) == 1 and said[0].startswith("waiting for the job agent of http://head:8265")
    def fails(message):
        def call():
            raise RuntimeError(message)
        return call

    with pytest.raises(ClusterError, match="still has no job agent after 0 s: see dashboard_agent.log"):
        submit._with_agent(fails("No available agent to submit job"), "http://head:8265", said.append, timeout=0)
    with pytest.raises(RuntimeError, match="401"):  # any other failure is not waited on
        submit._with_agent(fails("401 Unauthorized"), "http://head:8265", said.append)


def test_the_library_submit_checks_a_clone_before_sending_anything(tmp_path, monkeypatch):
    """Issue 46: only the CLI checked --fla's clone, so `jobs.submit.submit()` called from Python shipped an unchecked
    one. The library refuses a clone that fails its check, in one line, before it asks the cluster anything; it ships
    one unchecked only when told to (check_clone=False), and says so."""
    from hybrid_ray.errors import HybridRayError
    from hybrid_ray.jobs import submit
    from test_fla_clone import fake_clone

    monkeypatch.setenv("HYBRID_RAY_CACHE", str(tmp_path / "cache"))  # no earlier check of this clone to reuse
    clone = fake_clone(tmp_path / "clone")  # an `fla` package without FLA's model: it cannot match the twin
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "train.py").write_text("x")
    job = submit.plan(["train", "--preset", "tiny"], fla=str(clone), working_dir=tmp_path / "project")
    asked, said = [], []

    class Client:
        def submit_job(self, **job):
            asked.append(job)
            return "raysubmit_1"

    monkeypatch.setattr(submit, "_client", lambda address: asked.append(address) or Client())
    with pytest.raises(HybridRayError) as refused:
        submit.submit(job, address="http://127.0.0.1:9", echo=said.append)
    message = str(refused.value)
    assert message.startswith(f"the FLA in {clone} does not match the twin: ") and "\n" not in message
    assert message.endswith("(nothing was submitted; --no-check skips this)")
    assert asked == []  # the cluster was never asked
    assert said[-1] == f"checking the FLA clone {clone} against the pure-PyTorch twin on this machine..."

    said.clear()
    done = submit.submit(job, address="http://127.0.0.1:9", echo=said.append, wait=False, check_clone=False)
    assert done.job_id == "raysubmit_1" and "FLA clone not checked (--no-check)" in said
    shipped = asked[-1]["runtime_env"]
    assert shipped["py_modules"] == [str(clone.resolve() / "fla")]  # the unchecked clone, as asked
    said.clear()
    submit.submit(job, dry_run=True, echo=said.append)
    assert "FLA clone not checked (--dry-run)" in said and len(asked) == 2  # a dry run sends nothing


def test_the_library_plan_refuses_a_train_job_of_a_sweep_file(tmp_path):
    """`train --config` of a sweep job file trains one run of the grid's base spec: `jobs.submit.plan` refuses it as
    the CLI does (issue 36), whether the command names the file as `--config F` or `--config=F`."""
    from hybrid_ray.errors import SpecError
    from hybrid_ray.jobs import submit

    job = ROOT / "jobs" / "ratio_ablation_small.yaml"
    for args in (["train", "--config", str(job)], ["train", f"--config={job}", "--steps", "4"]):
        with pytest.raises(SpecError, match=r"is a sweep job file \(command: sweep\).*\(nothing was submitted\)$"):
            submit.plan(args, working_dir=tmp_path)
    assert submit.plan(["sweep", "--config", str(job)], working_dir=tmp_path).args[0] == "sweep"
    assert submit.plan(["train", "--config", str(job.with_name("tiny_local.yaml"))], working_dir=tmp_path).command
