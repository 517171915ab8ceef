"""`hybrid-ray verify`: what this machine can run, and why not when it cannot (`verify --fla`: see fla_clone)."""

from __future__ import annotations

import importlib.util
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from hybrid_ray.errors import first_line
from hybrid_ray.node.fla_source import fla_source, git_info

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
    package = Path(__file__).parents[1]
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
        "causal_conv1d": _version("causal-conv1d"),
        "gpus": gpus,
    }
    # what --conv-backend auto runs; causal-conv1d's CUDA kernels measured +5-6% on the Gated DeltaNet arms (H200)
    info["conv_kernel"] = "causal-conv1d CUDA" if info["causal_conv1d"] else "FLA Triton"
    if flash:
        info["attention_kernel"] = f"flash-attn {flash}"
    elif gpus:
        from hybrid_ray.model.attention import dense_kernel

        dense = dense_kernel()
        dense = "torch SDPA" if dense == "auto" else ("FLA parallel_attn" if dense == "triton" else f"torch SDPA {dense}")
        info["attention_kernel"] = f"{dense} (dense) + FLA parallel_attn (packed documents)"
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
        "ray": _version("ray"), "fla": fla_source(), "flash_attn": _flash_attn(),
        "causal_conv1d": _version("causal-conv1d"), "backend": backend,
        "hybrid_ray": hybrid_ray_source(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
    }
    if backend == "fla":
        from hybrid_ray.model.fla import attention_kernel

        out["attention_kernel"] = attention_kernel()
    return out


_CONV_HINT = "; the CUDA kernels are +5-6% on Gated DeltaNet: pip install --no-build-isolation 'hybrid-ray[cuda]'"


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
        f"causal-conv1d {info['causal_conv1d'] or 'not installed'} (the short convolution: "
        f"{'its CUDA kernels' if info['causal_conv1d'] else 'FLA Triton kernels'} under --conv-backend auto"
        f"{'' if info['causal_conv1d'] or not info['gpus'] else _CONV_HINT})",
        f"gpus          {gpus}",
        f"attention     {info['attention_kernel']}",
        training,
    ]
    lines += [f"  problem: {p}" for p in info["problems"]]
    return "\n".join(lines)
