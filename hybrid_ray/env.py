"""`hybrid-ray verify`: what this machine can run, and why not when it cannot."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from hybrid_ray.errors import EnvironmentProblem, first_line
from hybrid_ray.model.fla import fla_source, git_info

# FLA 0.6 refuses (rightly: wrong gradients) the gated chunk backward on Hopper with Triton in [3.4.0, 3.7.1).
HOPPER_BAD_TRITON = ((3, 4, 0), (3, 7, 1))


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _triple(v: str) -> tuple[int, ...]:
    parts = []
    for piece in v.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts + [0] * (3 - len(parts)))


def _flash_attn() -> str | None:
    if importlib.util.find_spec("flash_attn") is None:
        return None
    try:
        import flash_attn

        return getattr(flash_attn, "__version__", "unknown")
    except ImportError:
        return None


def hybrid_ray_source() -> dict[str, Any]:
    """hybrid-ray's own version, and its commit when it runs from a git checkout."""
    package = Path(__file__).parent
    info: dict[str, Any] = {"version": _version("hybrid-ray"), "path": str(package)}
    if (package.parent / ".git").exists():
        info.update({k: v for k, v in git_info(package).items() if k != "repo"})
    return info


def collect() -> dict[str, Any]:
    """Versions, GPUs, FLA's origin, the attention kernel, and whether GPU training can work (with reasons)."""
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1)})
    triton_version = _version("triton")
    flash = _flash_attn()
    info: dict[str, Any] = {
        "hybrid_ray": hybrid_ray_source(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "ray": _version("ray"),
        "transformers": _version("transformers"),
        "fla": fla_source(),
        "flash_attn": flash,
        "gpus": gpus,
    }
    if flash:
        info["attention_kernel"] = f"flash-attn {flash}"
    elif gpus:
        info["attention_kernel"] = "torch SDPA (dense) + FLA parallel_attn (packed documents)"
    else:
        info["attention_kernel"] = "torch SDPA"

    problems: list[str] = []
    if gpus:
        if not info["fla"].get("installed"):
            problems.append("FLA (flash-linear-attention) is not installed: GPU workers need its kernels")
        if triton_version is None:
            problems.append("triton is not installed: FLA needs it")
        elif any(g["capability"].startswith("9.") for g in gpus):
            low, high = HOPPER_BAD_TRITON
            if low <= _triple(triton_version) < high and importlib.util.find_spec("tilelang") is None:
                problems.append(
                    f"triton {triton_version} cannot train FLA's gated delta rule on Hopper (wrong gradients, "
                    "FLA refuses it): install triton>=3.7.1 or tilelang"
                )
        if info["fla"].get("installed") and not problems:
            try:
                from hybrid_ray.model.fla import import_fla

                import_fla()
            except Exception as e:  # report, do not crash: this is a diagnostic command
                problems.append(f"FLA does not import: {first_line(e)}")
    info["gpu_training"] = bool(gpus) and not problems
    info["problems"] = problems
    return info


def runtime_versions(device: torch.device, backend: str) -> dict[str, Any]:
    """What a training worker ran with, for results.json."""
    out = {
        "python": sys.version.split()[0], "torch": torch.__version__, "triton": _version("triton"),
        "ray": _version("ray"), "fla": fla_source(), "flash_attn": _flash_attn(), "backend": backend,
        "hybrid_ray": hybrid_ray_source(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
    }
    if backend == "fla":
        from hybrid_ray.model.fla import attention_kernel

        out["attention_kernel"] = attention_kernel()
    return out


def format_report(info: dict[str, Any]) -> str:
    fla = info["fla"]
    if fla.get("installed"):
        where = f"{fla.get('kind')} {fla['path']}"
        if fla.get("commit"):
            where += f" @ {fla['commit'][:12]}{' (dirty)' if fla.get('dirty') else ''}"
        fla_line = f"{fla.get('version') or '?'} from {where}"
    else:
        fla_line = "not installed"
    gpus = ", ".join(f"{g['name']} (sm {g['capability']}, {g['memory_gib']} GiB)" for g in info["gpus"]) or "none"
    if info["gpu_training"]:
        training = "GPU training: ready (FLA backend)"
    elif info["gpus"]:
        training = "GPU training: NOT possible"
    else:
        training = "GPU training: no CUDA GPU here; training runs on CPU with the pure-PyTorch backend"
    own = info["hybrid_ray"]
    commit = f" @ {own['commit'][:12]}{' (dirty)' if own.get('dirty') else ''}" if own.get("commit") else ""
    lines = [
        f"hybrid-ray    {own['version'] or '?'}{commit} ({own['path']})",
        f"python        {info['python']} ({info['platform']})",
        f"torch         {info['torch']} (CUDA {info['cuda'] or 'none'})",
        f"triton        {info['triton'] or 'not installed'}",
        f"ray           {info['ray'] or 'not installed'}",
        f"transformers  {info['transformers'] or 'not installed'}",
        f"fla           {fla_line}",
        f"flash-attn    {info['flash_attn'] or 'not installed'}",
        f"gpus          {gpus}",
        f"attention     {info['attention_kernel']}",
        training,
    ]
    lines += [f"  problem: {p}" for p in info["problems"]]
    return "\n".join(lines)


def clone_root(path: str | Path) -> Path:
    """The folder holding an FLA clone's `fla` package; one-line errors for anything else."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise EnvironmentProblem(f"FLA clone {path} does not exist (or is not a folder)")
    if not (root / "fla" / "__init__.py").is_file():
        raise EnvironmentProblem(f"{path} is not an FLA clone: it has no fla/ package folder (fla/__init__.py)")
    return root


def verify_clone(path: str | Path, timeout: float = 900) -> dict[str, Any]:
    """Check an FLA clone against the pure-PyTorch twin in a fresh process that imports the clone's `fla` first (on a
    GPU: forward and gradients; on a CPU: the forward under Triton's interpreter). Returns the report with 'fla' (where
    the checked FLA came from) and 'passed'."""
    root = clone_root(path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"  # before triton is imported: FLA's kernels run interpreted on the CPU
    try:
        done = subprocess.run([sys.executable, "-m", "hybrid_ray", "verify", "--parity-json"], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise EnvironmentProblem(f"checking {path} took over {timeout:.0f} s") from e
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EnvironmentProblem(f"the FLA in {path} does not run: {last}")
    report = json.loads(lines[-1])
    if "device" in report:
        report["checked"] = checked(report)
    return report


def parity_json() -> str:
    """One JSON line: where FLA comes from and how it compares with the twin (what `verify_clone` reads)."""
    from hybrid_ray.model.parity import check_importable_fla

    try:
        report = check_importable_fla().to_dict()
    except Exception as e:  # a broken clone may fail anywhere: report it as a failure, in one line
        report = {"passed": False, "failures": [f"{type(e).__name__}: {first_line(e)}"]}
    return json.dumps({**report, "fla": fla_source()})


def format_clone_report(report: dict[str, Any]) -> str:
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


def clone_verdict(report: dict[str, Any]) -> str:
    """One line for `submit --fla`: that the clone matched the twin, and on what (never more than was checked)."""
    where = "this GPU" if report.get("device") == "cuda" else "this CPU"
    return f"matches the twin on {where} ({checked(report)}; nothing more was checked)"
