"""FLA's kernels against the pure-PyTorch twin on the same weights: forward logits and, where it can run, backward.

Used by the GPU tests, `benchmarks/bench_model.py` and `hybrid-ray verify --fla`. On a GPU both directions run in
fp32 (FLA's Triton dots use TF32, hence the tolerances); on a CPU only FLA's inference path runs, under Triton's
interpreter (eval mode, no gradients, sequences of at most 64 tokens: FLA's fused-recurrent kernels).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from hybrid_ray.model.build import build_model
from hybrid_ray.spec import ModelSpec

# Relative errors (‖fla − twin‖ / ‖twin‖) a correct FLA reaches against the fp32 twin: near zero on a CPU (exact fp32),
# a few 1e-3 on a GPU (TF32 dots in FLA's kernels). A broken kernel is off by orders of magnitude more.
TOLERANCE = {"cpu": {"logits": 1e-4}, "cuda": {"logits": 2e-2, "grad_max": 1e-1, "grad_median": 2e-2}}


@dataclass
class ParityReport:
    device: str
    logits_rel_err: float
    logits_max_abs_diff: float
    loss_fla: float
    loss_twin: float
    grad_rel_err_max: float | None = None
    grad_rel_err_median: float | None = None
    worst_grads: list[tuple[str, float]] = field(default_factory=list)  # the parameters with the largest errors

    @property
    def failures(self) -> list[str]:
        """What is outside the tolerance, one phrase each (empty: passed)."""
        limits = TOLERANCE[self.device]
        out = []
        if not self.logits_rel_err <= limits["logits"]:  # written so that NaN fails
            out.append(f"logits relative error {self.logits_rel_err:.2e} > {limits['logits']:.0e}")
        if self.grad_rel_err_max is not None:
            if not self.grad_rel_err_max <= limits["grad_max"]:
                name, err = self.worst_grads[0]
                out.append(f"gradient of {name}: relative error {err:.2e} > {limits['grad_max']:.0e}")
            if not self.grad_rel_err_median <= limits["grad_median"]:
                out.append(f"median gradient relative error {self.grad_rel_err_median:.2e} > {limits['grad_median']:.0e}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failures": self.failures, "passed": not self.failures}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-30)).item()


def compare_backends(spec: ModelSpec, device: torch.device | str, *, batch: int = 2, seq: int | None = None,
                     seed: int = 0) -> ParityReport:
    """Build both backends from the same seed on `device`, run the same tokens, compare logits (and gradients on a
    GPU). `seq` defaults to 1024 on a GPU and 48 on a CPU (the interpreter's fused-recurrent path)."""
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    seq = seq or (1024 if on_gpu else 48)
    fla = build_model(spec, "fla", device=device, seed=seed, fuse_cross_entropy=False, use_cache=False)
    twin = build_model(spec, "torch", device=device, seed=seed)
    generator = torch.Generator(device).manual_seed(seed)
    x = torch.randint(0, spec.vocab_size, (batch, seq), device=device, generator=generator)
    if not on_gpu:
        fla.eval()
        twin.eval()
    with torch.set_grad_enabled(on_gpu):
        out_fla = fla(input_ids=x, labels=x, use_cache=False)
        out_twin = twin(input_ids=x, labels=x)
    report = ParityReport(
        device=device.type,
        logits_rel_err=rel_err(out_fla.logits, out_twin.logits),
        logits_max_abs_diff=(out_fla.logits.float() - out_twin.logits.float()).abs().max().item(),
        loss_fla=out_fla.loss.item(),
        loss_twin=out_twin.loss.item(),
    )
    if on_gpu:
        out_fla.loss.backward()
        out_twin.loss.backward()
        reference = dict(twin.named_parameters())
        errors = sorted(((name, rel_err(p.grad, reference[name].grad)) for name, p in fla.named_parameters()
                         if reference[name].grad is not None and reference[name].grad.norm() > 0),
                        key=lambda item: -item[1] if item[1] == item[1] else -float("inf"))
        values = sorted(err for _, err in errors)
        report.grad_rel_err_max = errors[0][1] if errors else 0.0
        report.grad_rel_err_median = values[len(values) // 2] if values else 0.0
        report.worst_grads = errors[:3]
    return report
