"""hybrid_ray.jobs.fla_clone without a cluster or kernels: finding a clone, what ships it, and how a worker tells that the
`fla` it imports is the clone that was shipped (a fake clone: a tiny `fla` package committed with `git init`)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid_ray.errors import EnvironmentProblem
from hybrid_ray.jobs import fla_clone
from hybrid_ray.jobs.submit import measure_upload


def fake_clone(folder: Path) -> Path:
    for name in ("fla/__init__.py", "fla/ops/chunk.py", "fla/ops/notes.txt", "README.md"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"# {name}\n")
    git = ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t"]
    for step in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "clone"]):
        subprocess.run([*git, *step], check=True)
    return folder


def head(folder: Path) -> str:
    return subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def imported_fla(pythonpath: Path, **env: str) -> dict:
    """fla_source() in a fresh process that imports `fla` from `pythonpath` first, as a Ray worker would."""
    code = "import json; from hybrid_ray.node.fla_source import fla_source; print(json.dumps(fla_source()))"
    paths = [str(pythonpath), *filter(None, [os.environ.get("PYTHONPATH")])]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(paths), **env})
    return json.loads(done.stdout)


def test_find_describes_a_clone_and_refuses_what_is_not_one(tmp_path):
    clone = fla_clone.find(fake_clone(tmp_path / "clone"))
    assert clone.root == (tmp_path / "clone").resolve() and clone.package == clone.root / "fla"
    assert clone.to_dict() == {"path": str(clone.root), "commit": head(clone.root), "dirty": False}
    assert clone.describe() == f"{clone.root} @ {head(clone.root)[:12]} (clean)"
    (clone.package / "ops" / "chunk.py").write_text("# edited\n")
    assert fla_clone.find(clone.root).dirty is True

    with pytest.raises(EnvironmentProblem, match=r"^FLA clone .*missing does not exist \(or is not a folder\)$"):
        fla_clone.find(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EnvironmentProblem, match=r"is not an FLA clone: it has no fla/ package folder"):
        fla_clone.find(tmp_path / "empty")
    untracked = tmp_path / "plain" / "fla"
    untracked.mkdir(parents=True)
    (untracked / "__init__.py").write_text("")
    plain = fla_clone.find(tmp_path / "plain")  # not a git work tree: no commit, no dirty state
    assert (plain.commit, plain.dirty) == (None, None) and plain.describe().startswith(f"{plain.root} @ no git comm")


def test_a_worker_knows_the_shipped_clone_by_its_files_not_its_path(tmp_path):
    clone = fla_clone.find(fake_clone(tmp_path / "clone"))
    upload = measure_upload(clone.package)
    shipped = clone.runtime_env(path for path, _ in upload.files)
    assert shipped["py_modules"] == [str(clone.package)] and list(shipped["env_vars"]) == [fla_clone.ENV]

    worker = tmp_path / "unpacked"  # what Ray unpacks on a worker: the uploaded files, no .git
    for path, _ in upload.files:
        (worker / "fla" / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(clone.package / path, worker / "fla" / path)
    fla = imported_fla(worker, **shipped["env_vars"])
    assert fla["kind"] == "submitted clone" and fla["path"] == str(worker / "fla")
    assert fla["clone"] == clone.to_dict() and (fla["commit"], fla["dirty"]) == (head(clone.root), False)

    (worker / "fla" / "ops" / "chunk.py").write_text("# not what was sent\n")  # another fla: not called the clone
    fla = imported_fla(worker, **shipped["env_vars"])
    assert fla["kind"] == "path" and "clone" not in fla and "commit" not in fla
    assert imported_fla(clone.root)["kind"] == "git clone"  # the clone itself, with its .git


def test_a_passing_check_is_reused_for_the_same_sources_only(tmp_path, monkeypatch):
    """The child that checks a clone (a fake one here: its verdict is scripted) runs again unless `reuse` finds a
    passing report for the same key; a failing report is never kept; an edit to the clone changes the key."""
    clone = fake_clone(tmp_path / "clone")
    monkeypatch.setenv("HYBRID_RAY_CACHE", str(tmp_path / "cache"))
    verdicts, runs = [], []

    def child(*args, **kwargs):
        runs.append(args)
        report = {"passed": verdicts.pop(0), "failures": [], "device": "cpu", "fla": {}}
        return subprocess.CompletedProcess(args, 0, stdout=json.dumps(report) + "\n", stderr="")

    monkeypatch.setattr(fla_clone.subprocess, "run", child)
    verdicts.append(False)
    assert fla_clone.verify(clone, reuse=True)["passed"] is False
    verdicts.append(True)
    assert fla_clone.verify(clone, reuse=True)["passed"] is True and len(runs) == 2  # the failure was not kept
    reused = fla_clone.verify(clone, reuse=True)
    assert reused["passed"] and reused["reused"] and len(runs) == 2
    verdicts.append(True)
    assert "reused" not in fla_clone.verify(clone) and len(runs) == 3  # `verify --fla` always checks
    (clone / "fla" / "ops" / "chunk.py").write_text("# edited\n")
    verdicts.append(True)
    assert "reused" not in fla_clone.verify(clone, reuse=True) and len(runs) == 4
