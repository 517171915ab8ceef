"""Where the `fla` this process imports comes from: site-packages, a git clone, or the clone `hybrid-ray submit --fla`
shipped (ENV); git_info and fingerprint describe a folder. A leaf: the model, the kernel cache, verify and the FLA
clone (jobs/fla_clone.py) all read it, and it imports none of them."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ENV = "HYBRID_RAY_FLA_CLONE"  # the shipped clone's path/commit/dirty/fingerprint, for workers


def git_info(folder: Path) -> dict[str, Any]:
    """Commit and dirty state of the git work tree that holds `folder` ({} when it is not in one)."""
    try:
        top = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.split()
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"repo": top[0], "commit": top[1], "dirty": bool(dirty)}


def fingerprint(package: Path, files: Iterable[str] | None = None) -> str:
    """A digest of the package's Python sources (relative path and content): those in `files` (paths relative to
    `package`, e.g. what an upload takes), else every one under it outside __pycache__."""
    if files is None:
        names = [p.relative_to(package).as_posix() for p in package.rglob("*.py") if "__pycache__" not in p.parts]
    else:
        names = [name for name in files if name.endswith(".py")]
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode() + b"\0" + (package / name).read_bytes() + b"\0")
    return digest.hexdigest()


def shipped() -> dict[str, Any] | None:
    """The clone `hybrid-ray submit --fla` shipped to this process (ENV), or None."""
    value = os.environ.get(ENV)
    return json.loads(value) if value else None


def fla_source() -> dict[str, Any]:
    """Where FLA is imported from: version, path, and for a git clone (or the clone a job shipped) its commit and
    whether it has local edits. Worked out once per process for each place `fla` comes from (git and the shipped
    clone's fingerprint, which hashes every source file, are not asked again on each model build)."""
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.origin:
        return {"installed": False}
    key = (spec.origin, os.environ.get(ENV))
    if key not in _sources:
        _sources[key] = _describe(Path(spec.origin).parent)
    return json.loads(json.dumps(_sources[key]))  # a copy: callers may add to it


_sources: dict[tuple[str, str | None], dict[str, Any]] = {}


def _describe(package_dir: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"installed": True, "path": str(package_dir)}
    try:
        from importlib.metadata import version

        info["version"] = version("flash-linear-attention")
    except Exception:
        info["version"] = None
    git = git_info(package_dir) if (package_dir.parent / ".git").exists() else {}
    sent = None if git else shipped()
    if git:
        info.update(kind="git clone", commit=git["commit"], dirty=git["dirty"])
    elif sent and sent.get("fingerprint") == fingerprint(package_dir):
        clone = {k: v for k, v in sent.items() if k != "fingerprint"}
        info.update(kind="submitted clone", clone=clone, commit=clone.get("commit"), dirty=clone.get("dirty"))
    else:
        info["kind"] = "site-packages" if "site-packages" in str(package_dir) else "path"
    return info
