"""Kernel choices on an FLA model that change speed, not the model: the short convolution's backend and the loss.

Both are set on the built model (FLA reads them at each forward), so a checkpoint never records them and a run can
switch them on resume. benchmarks/results/speed/NOTES.md has the measurements behind the defaults.
"""

from __future__ import annotations

import importlib.util

import torch.nn as nn

from hybrid_ray.errors import EnvironmentProblem


def causal_conv1d_installed() -> bool:
    """The causal-conv1d package (CUDA kernels, a source build) is importable."""
    return importlib.util.find_spec("causal_conv1d") is not None


def resolve_conv_backend(choice: str) -> str:
    """'auto' is causal-conv1d's CUDA kernels when that package is installed, else FLA's Triton kernels."""
    if choice != "auto":
        return choice
    return "cuda" if causal_conv1d_installed() else "triton"


def _convolutions(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__ == "ShortConvolution"]


def kernel_choices(model: nn.Module) -> dict[str, str]:
    """The convolution backend and loss kernel an FLA model runs with, read from the model ({} on the twin)."""
    if getattr(model, "hybrid_backend", None) != "fla":
        return {}
    convs = _convolutions(model)
    loss = "fused-linear" if model.config.fuse_linear_cross_entropy else "fused"
    return {**({"conv_backend": convs[0].backend} if convs else {}), "loss_kernel": loss}


def apply_kernel_options(model: nn.Module, conv_backend: str = "auto", loss_kernel: str = "fused") -> dict[str, str]:
    """Set the convolution backend of every FLA ShortConvolution and the loss kernel; returns what was chosen.

    A no-op (returns {}) on the pure-PyTorch twin, which has neither.
    """
    if getattr(model, "hybrid_backend", None) != "fla":
        return {}
    backend = resolve_conv_backend(conv_backend)
    if backend == "cuda" and not causal_conv1d_installed():
        raise EnvironmentProblem("train.conv_backend cuda needs the causal-conv1d package "
                                 "(pip install causal-conv1d --no-build-isolation, a CUDA build)")
    for module in _convolutions(model):
        module.backend = backend
    # FLA picks the loss per forward from its config: fused-linear chunks lm_head + cross-entropy (no full logits)
    model.config.fuse_linear_cross_entropy = loss_kernel == "fused-linear"
    model.config.fuse_cross_entropy = loss_kernel == "fused"
    return kernel_choices(model)


# FLA autotunes its fused SwiGLU kernels (forward, and forward+backward) over 30 block/warp configurations, keyed on
# the MLP width, a compile-time constant: every new width compiles 60 kernels. A parameter-matched ratio sweep gives
# each arm its own width, and each new arm spent 137-146 s compiling before its first step on a warm H100 node. These
# four configurations won, or came within 1.2% of the winner (an elementwise kernel), at every width tuned on an H200
# (2048, 2735 and 6168: the autotuning results in shared/device's kernel cache): 8 compiles a width instead of 60.
SWIGLU_CONFIGS = ((1024, 8), (512, 4), (2048, 16), (2048, 32))  # (block size B, warps)


def narrow_swiglu_autotuning() -> int:
    """Limit FLA's SwiGLU kernels to SWIGLU_CONFIGS (before their first use); returns how many kernels it changed."""
    import triton
    from fla.modules.activations import ops

    changed = 0
    for name in ("swiglu_fwd_kernel", "swiglu_fwdbwd_kernel"):
        kernel = getattr(ops, name, None)
        while kernel is not None and not hasattr(kernel, "configs"):  # under @triton.heuristics
            kernel = getattr(kernel, "fn", None)
        if kernel is not None:
            kernel.configs = [triton.Config({"B": block}, num_warps=warps) for block, warps in SWIGLU_CONFIGS]
            changed += 1
    return changed
