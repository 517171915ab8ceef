"""A local FLA clone, in one place: find it, check it against the pure-PyTorch twin, describe it, and ship it.

- find: `find(path)` (the folder holding the clone's `fla/` package, its git commit and local edits).
- check: `verify(path)` imports the clone's `fla` in a fresh process (`python -m hybrid_ray.jobs.fla_clone`, which prints
  `check_json()`) and compares its model with the twin (on a CPU: the forward under Triton's interpreter); a passing
  check is kept in the node's cache, and `jobs.submit.submit` (which refuses a job whose clone fails it) reuses it for
  the same sources, torch, triton and device.
- describe: `fla_source()` says where the `fla` this process imports comes from: site-packages, a git clone, or the
  clone `hybrid-ray submit --fla` shipped; `format_report`, `verdict` and `checked` word a check.
- ship: `FlaClone.runtime_env(files)` is what a Ray job needs for it: the `fla` folder as `py_modules` (workers import
  it ahead of any installed FLA) and the variable ENV with its path, commit, local edits and a fingerprint of the files
  sent. The uploaded copy has no .git: a worker calls its `fla` the submitted clone only when that fingerprint matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid_ray.errors import EnvironmentProblem, first_line
from hybrid_ray.node.fla_source import ENV, fingerprint, fla_source, git_info
from hybrid_ray.spec import ModelSpec


@dataclass
class FlaClone:
    root: Path  # the folder that holds `fla/`
    commit: str | None
    dirty: bool | None
    given: str = ""  # the path as the user gave it (what messages name)

    @property
    def package(self) -> Path:
        return self.root / "fla"

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.root), "commit": self.commit, "dirty": self.dirty}

    def describe(self) -> str:
        state = " (dirty)" if self.dirty else " (clean)" if self.dirty is False else ""
        return f"{self.root} @ {self.commit[:12] if self.commit else 'no git commit'}{state}"

    def runtime_env(self, files: Iterable[str]) -> dict[str, Any]:
        """The runtime_env pieces that ship this clone when `files` (relative to `package`) of its package are
        uploaded: the package as py_modules, and ENV for the workers' `fla_source`."""
        shipped = {**self.to_dict(), "fingerprint": fingerprint(self.package, files)}
        return {"py_modules": [str(self.package)], "env_vars": {ENV: json.dumps(shipped)}}


def clone_root(path: str | Path) -> Path:
    """The folder holding an FLA clone's `fla` package; one-line errors for anything else."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise EnvironmentProblem(f"FLA clone {path} does not exist (or is not a folder)")
    if not (root / "fla" / "__init__.py").is_file():
        raise EnvironmentProblem(f"{path} is not an FLA clone: it has no fla/ package folder (fla/__init__.py)")
    return root


def find(path: str | Path) -> FlaClone:
    """The FLA clone at `path` with its commit and local edits (None when it is not a git work tree)."""
    root = clone_root(path)
    git = git_info(root)
    return FlaClone(root, git.get("commit"), git.get("dirty"), str(path))


# the model `hybrid-ray verify --fla` checks: both layer types, GQA attention, value heads > key heads
CHECK_SPEC = {
    "cpu": (ModelSpec(hidden_size=64, num_layers=2, num_heads=2, num_v_heads=4, head_dim=32, attn_layers=[1],
                      attn_num_heads=4, attn_num_kv_heads=2, vocab_size=128), 1, 48),
    "cuda": (ModelSpec(hidden_size=256, num_layers=2, num_heads=2, num_v_heads=4, head_dim=64, attn_layers=[1],
                       attn_num_heads=4, attn_num_kv_heads=2, vocab_size=1024), 2, 512),
}


def check_importable_fla() -> Any:
    """The FLA this process imports (an installed one, or a clone put first on PYTHONPATH) against the twin: forward
    and gradients on a GPU, the forward under Triton's interpreter on a CPU (set TRITON_INTERPRET=1 before triton is
    imported; FLA's training kernels do not run there). Returns model.parity's ParityReport."""
    import torch

    from hybrid_ray.model.parity import compare_backends

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        import triton.runtime.autotuner as autotuner

        autotuner.Autotuner._bench = lambda self, *a, config=None, **k: [0.0, 0.0, 0.0]  # the interpreter cannot time
    spec, batch, seq = CHECK_SPEC[device]
    return compare_backends(spec, device, batch=batch, seq=seq)


def check_json() -> str:
    """One JSON line: where FLA comes from and how it compares with the twin (what `verify` reads from its child)."""
    try:
        report = check_importable_fla().to_dict()
    except Exception as e:  # a broken clone may fail anywhere: report it as a failure, in one line
        report = {"passed": False, "failures": [f"{type(e).__name__}: {first_line(e)}"]}
    return json.dumps({**report, "fla": fla_source()})


def check_key(root: Path) -> str:
    """What a check's verdict depends on: the clone's sources, the twin's and the check's code, the Python, torch and
    triton that run it, and the device."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from hybrid_ray import model

    try:
        triton = version("triton")
    except PackageNotFoundError:
        triton = None
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    what = [fingerprint(root / "fla"), fingerprint(Path(model.__file__).parent),
            hashlib.sha256(Path(__file__).read_bytes()).hexdigest(), sys.version, torch.__version__, triton, device]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:24]


def _passed_checks() -> Path:
    from hybrid_ray.node.cache import cache_root

    return cache_root() / "fla-checks"


def verify(path: str | Path, timeout: float = 900, reuse: bool = False) -> dict[str, Any]:
    """Check an FLA clone against the pure-PyTorch twin in a fresh process that imports the clone's `fla` first (on a
    GPU: forward and gradients; on a CPU: the forward under Triton's interpreter). Returns the report with 'fla' (where
    the checked FLA came from) and 'passed'. A passing report is kept in the node's cache; with `reuse`, one kept for
    the same `check_key` is returned (with 'reused': True) instead of checking again (on a GPU that is minutes of
    kernel compiling)."""
    import torch

    root = clone_root(path)
    kept = _passed_checks() / f"{check_key(root)}.json"
    if reuse:
        try:
            return {**json.loads(kept.read_text()), "reused": True}
        except (OSError, ValueError):
            pass
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"  # before triton is imported: FLA's kernels run interpreted on the CPU
    try:
        done = subprocess.run([sys.executable, "-m", "hybrid_ray.jobs.fla_clone"], env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise EnvironmentProblem(f"checking {path} took over {timeout:.0f} s") from e
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EnvironmentProblem(f"the FLA in {path} does not run: {last}")
    report = json.loads(lines[-1])
    if "device" in report:
        report["checked"] = checked(report)
    if report.get("passed"):
        from hybrid_ray import storage  # pyarrow: only here, not for every importer of this module (Ray workers)

        try:
            storage.write_bytes(str(kept), json.dumps(report).encode())  # atomic: a concurrent reader sees one whole
        except OSError:
            pass  # a cache that cannot be written only means the next submit checks again
    return report


def format_report(report: dict[str, Any]) -> str:
    """`verify --fla`'s report: where the checked FLA came from, the errors against the twin, the verdict."""
    fla = report.get("fla", {})
    where = fla.get("path", "?") + (f" @ {fla['commit'][:12]}{' (dirty)' if fla.get('dirty') else ''}"
                                    if fla.get("commit") else "")
    lines = [f"fla           {where}"]
    if "logits_rel_err" in report:
        what = ("forward and gradients" if report["device"] == "cuda"
                else "forward under Triton's interpreter; gradients need a GPU")
        lines.append(f"device        {report['device']} ({what})")
        lines.append(f"logits        relative error {report['logits_rel_err']:.2e} (max abs {report['logits_max_abs_diff']:.2e})")
        if report.get("grad_rel_err_max") is not None:
            worst = ", ".join(f"{n} {e:.2e}" for n, e in report["worst_grads"])
            lines.append(f"gradients     relative error max {report['grad_rel_err_max']:.2e}, median "
                         f"{report['grad_rel_err_median']:.2e} (worst: {worst})")
    lines.append("parity        " + ("PASS" if report["passed"] else "FAIL: " + "; ".join(report["failures"]))
                 + (f" ({checked(report)})" if "device" in report else ""))
    return "\n".join(lines)


def checked(report: dict[str, Any]) -> str:
    """What a clone check covered: on a CPU only the forward through FLA's fused-recurrent (inference) kernels."""
    if report.get("device") == "cuda":
        return "forward and gradients, chunk (training) kernels"
    return "forward, fused-recurrent kernels only: the chunk/training kernels need a GPU"


def verdict(report: dict[str, Any]) -> str:
    """One line for `submit --fla`: that the clone matched the twin, and on what (never more than was checked)."""
    where = "this GPU" if report.get("device") == "cuda" else "this CPU"
    return f"matches the twin on {where} ({checked(report)}; nothing more was checked)"


if __name__ == "__main__":  # the child `verify` starts, with the clone first on PYTHONPATH
    print(check_json())
