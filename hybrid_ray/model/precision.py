"""The precision rule, in one place: bf16 on GPUs, fp32 on CPUs, unless the spec says otherwise.

Training (the autocast around forward passes, FSDP2's `MixedPrecisionPolicy`), validation, generation and the
downstream evaluations all follow it.
"""

from __future__ import annotations

import contextlib

import torch


def uses_bf16(device: torch.device, precision: str) -> bool:
    """'auto' precision is bf16 on GPUs and fp32 on CPUs."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when the bf16 rule applies (fp32 master weights stay in the optimizer), else nothing."""
    if not uses_bf16(device, precision):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
