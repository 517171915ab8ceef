"""FLA's kernels against the pure-PyTorch twin on the same weights: forward logits and, where it can run, backward.

Used by the GPU tests, `benchmarks/bench_model.py` and `hybrid-ray verify --fla` (`fla_clone.check_importable_fla`).
On a GPU both directions run in fp32 (FLA's Triton dots use TF32, hence the tolerances); on a CPU only FLA's inference
path runs, under Triton's interpreter (eval mode, no gradients, sequences of at most 64 tokens: FLA's fused-recurrent
kernels).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from hybrid_ray.model.build import build_model
from hybrid_ray.spec import ModelSpec

# Relative errors (‖fla − twin‖ / ‖twin‖) a correct FLA reaches against the fp32 twin: near zero on a CPU (exact fp32),
# a few 1e-3 on a GPU (TF32 dots in FLA's kernels). A broken kernel is off by orders of magnitude more.
TOLERANCE = {"cpu": {"logits": 1e-4}, "cuda": {"logits": 2e-2, "grad_max": 1e-1, "grad_median": 2e-2}}


# Points compared between the two models, in execution order within a layer: (op, module name pattern, what).
# FLA's delta-rule kernel is a function, not a module: its output is what the output norm receives.
POINTS = [
    ("RMS norm", r"model\.layers\.\d+\.attn_norm$", "output"),
    ("short convolution", r"model\.layers\.\d+\.attn\.[qkv]_conv1d$", "output"),
    ("gated delta rule", r"model\.layers\.\d+\.attn\.o_norm$", "input"),
    ("gated RMS norm / softmax attention", r"model\.layers\.\d+\.attn\.o_proj$", "input"),
    ("RMS norm", r"model\.layers\.\d+\.mlp_norm$", "output"),
    ("SwiGLU MLP", r"model\.layers\.\d+\.mlp$", "output"),
    ("RMS norm", r"model\.norm$", "output"),
]


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
    first_divergence: str | None = None  # "op (module): relative error" of the first point off tolerance

    @property
    def failures(self) -> list[str]:
        """What is outside the tolerance, one phrase each (empty: passed)."""
        limits = TOLERANCE[self.device]
        out = []
        if not self.logits_rel_err <= limits["logits"]:  # written so that NaN fails
            where = f" (first off: {self.first_divergence})" if self.first_divergence else ""
            out.append(f"logits relative error {self.logits_rel_err:.2e} > {limits['logits']:.0e}{where}")
        if self.grad_rel_err_max is not None:
            if not self.grad_rel_err_max <= limits["grad_max"]:
                name, err = self.worst_grads[0]
                out.append(f"gradient of {name} ({op_of(name)} backward): relative error {err:.2e} > "
                           f"{limits['grad_max']:.0e}")
            if not self.grad_rel_err_median <= limits["grad_median"]:
                out.append(f"median gradient relative error {self.grad_rel_err_median:.2e} > {limits['grad_median']:.0e}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failures": self.failures, "passed": not self.failures}


def op_of(parameter: str) -> str:
    """The op a parameter's gradient comes through, for messages."""
    leaf = parameter.rsplit(".", 2)
    name = leaf[-2] if leaf[-1] == "weight" else leaf[-1]
    return {"A_log": "gated delta rule", "dt_bias": "gated delta rule", "a_proj": "gated delta rule",
            "b_proj": "gated delta rule", "q_conv1d": "short convolution", "k_conv1d": "short convolution",
            "v_conv1d": "short convolution", "o_norm": "gated RMS norm", "g_proj": "gated RMS norm",
            "mlp_norm": "RMS norm", "attn_norm": "RMS norm", "norm": "RMS norm", "lm_head": "cross entropy",
            "embeddings": "embedding"}.get(name, "matrix product")


class _Probe:
    """Forward hooks that keep the first input and the output of the modules POINTS names."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.values: dict[str, torch.Tensor] = {}
        self.order: list[str] = []
        self.handles = []
        for name, module in model.named_modules():
            for _, pattern, what in POINTS:
                if re.match(pattern, name):
                    self.handles.append(module.register_forward_hook(self._hook(name, what)))

    def _hook(self, name: str, what: str):
        def hook(module, inputs, output):
            value = inputs[0] if what == "input" else (output[0] if isinstance(output, tuple) else output)
            if name not in self.values:
                self.order.append(name)
            self.values[name] = value.detach().float().reshape(value.shape[0], -1)

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _first_divergence(fla: _Probe, twin: _Probe, limit: float) -> str | None:
    for name in twin.order:
        if name in fla.values and fla.values[name].shape == twin.values[name].shape:
            err = rel_err(fla.values[name], twin.values[name])
            if not err <= limit:
                op = next(op for op, pattern, _ in POINTS if re.match(pattern, name))
                return f"{op} ({name}): relative error {err:.2e}"
    return None


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
    probes = _Probe(fla), _Probe(twin)
    with torch.set_grad_enabled(on_gpu):
        out_fla = fla(input_ids=x, labels=x, use_cache=False)
        out_twin = twin(input_ids=x, labels=x)
    for probe in probes:
        probe.close()
    report = ParityReport(
        device=device.type,
        logits_rel_err=rel_err(out_fla.logits, out_twin.logits),
        logits_max_abs_diff=(out_fla.logits.float() - out_twin.logits.float()).abs().max().item(),
        loss_fla=out_fla.loss.item(),
        loss_twin=out_twin.loss.item(),
        first_divergence=_first_divergence(*probes, TOLERANCE[device.type]["logits"]),
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
