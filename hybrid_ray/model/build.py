"""build_model / save_model / load_model: one entry point for both backends and the Hugging Face-style folder."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from hybrid_ray.errors import CheckpointError, EnvironmentProblem, SpecError, first_line
from hybrid_ray.model.config import fla_config, spec_from_fla_config
from hybrid_ray.model.fla import build_fla_model, fla_available
from hybrid_ray.model.torch_ref import HybridForCausalLM
from hybrid_ray.spec import ModelSpec
from hybrid_ray.startup import Startup

BACKENDS = ("auto", "fla", "torch")
WEIGHTS_FILE = "model.safetensors"


def resolve_backend(backend: str, device: torch.device | str | None = None) -> str:
    """'auto' means FLA's kernels on a CUDA device when FLA imports, else the pure-PyTorch twin."""
    if backend not in BACKENDS:
        raise SpecError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    return "fla" if on_cuda and fla_available() else "torch"


FLA_NEEDS_GPU = ("--backend fla needs a CUDA GPU (FLA's Triton kernels do not run on CPUs); "
                 "use --backend torch (or auto) here")


def check_device(backend: str, device: torch.device | str) -> None:
    """Refuse FLA's kernels on a non-CUDA device in one line (Triton would end in a 100-line driver traceback)."""
    if resolve_backend(backend, device) == "fla" and torch.device(device).type != "cuda":
        raise SpecError(FLA_NEEDS_GPU)


def check_backend(backend: str) -> None:
    """Fail on the driver, before any cluster starts, when this machine cannot run `backend` for a local run."""
    if backend != "fla":
        return
    if not torch.cuda.is_available():
        raise SpecError(FLA_NEEDS_GPU)
    if not fla_available():
        raise EnvironmentProblem("--backend fla needs flash-linear-attention and triton installed")


def init_weights(model: nn.Module, spec: ModelSpec, seed: int = 0) -> None:
    """FLA's initialisation, drawn per parameter name from a CPU generator.

    Keying the random stream by name (not by construction order) gives both backends, every device and every
    world size bit-identical initial weights for the same seed.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
            if name.endswith("A_log"):
                value = torch.empty(p.shape).uniform_(1e-4, 16, generator=gen).log()
            elif name.endswith("dt_bias"):
                u = torch.rand(p.shape, generator=gen)
                dt = torch.exp(u * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
                value = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
            elif p.dim() == 1:  # RMSNorm weights
                value = torch.ones(p.shape)
            else:  # Linear, Conv1d and Embedding weights
                value = torch.empty(p.shape).normal_(0.0, spec.initializer_range, generator=gen)
            p.copy_(value.to(p.dtype))


def build_model(
    spec: ModelSpec,
    backend: str = "auto",
    *,
    device: torch.device | str | None = None,
    seed: int | None = 0,
    **fla_options: Any,
) -> nn.Module:
    """The hybrid model on `backend` ('fla' | 'torch' | 'auto'), initialised from `seed` (None: leave as built).

    `fla_options` go to FLA's config (e.g. fuse_cross_entropy=False); the twin ignores them.
    """
    if spec.vocab_size is None:
        raise SpecError("model.vocab_size is unresolved: it follows the tokenizer, so prepare the data first")
    backend = resolve_backend(backend, device)
    if backend == "fla":  # every FLA model (training, generate, eval, verify) compiles into the node's kernel cache
        from hybrid_ray.node import kernels

        kernels.ensure_active()
    model = _construct(spec, backend, fla_options)
    if seed is not None:
        init_weights(model, spec, seed)
    model.hybrid_backend = backend
    return model.to(device) if device is not None else model


def _construct(spec: ModelSpec, backend: str, fla_options: dict[str, Any]) -> nn.Module:
    return build_fla_model(spec, **fla_options) if backend == "fla" else HybridForCausalLM(spec)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def save_model(
    model_or_state: nn.Module | dict[str, torch.Tensor],
    spec: ModelSpec,
    folder: str | Path,
    *,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write config.json (FLA's GatedDeltaNetConfig) + model.safetensors: loadable by either backend and by
    `fla` + `transformers.AutoModelForCausalLM.from_pretrained(folder)`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = model_or_state if isinstance(model_or_state, dict) else unwrap(model_or_state).state_dict()
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    config = {**fla_config(spec), "architectures": ["GatedDeltaNetForCausalLM"], **(extra_config or {})}
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / WEIGHTS_FILE)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def read_model_spec(folder: str | Path) -> ModelSpec:
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_bytes())
    except FileNotFoundError as e:
        raise CheckpointError(f"no model in {folder}: config.json is missing") from e
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from e
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for a binary file
        raise CheckpointError(f"{path} is not a valid model config: {first_line(e)}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a valid model config: a JSON object is needed, got {type(config).__name__}")
    try:
        return spec_from_fla_config(config)
    except (TypeError, ValueError, AttributeError) as e:
        if isinstance(e, SpecError):
            raise
        raise CheckpointError(f"{path} is not a valid model config: {first_line(e)}") from e


def load_state(folder: str | Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The weights of a model folder, read straight onto `device` (no host copy first for a GPU)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS_FILE
    if not path.exists():
        raise CheckpointError(f"no weights in {folder}: {WEIGHTS_FILE} is missing")
    try:
        return load_file(str(path), device=str(torch.device(device)))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or unreadable: {first_line(e)}") from e


def load_model(
    folder: str | Path, backend: str = "auto", *, device: torch.device | str | None = None,
    startup: Startup | None = None, **fla_options: Any
) -> tuple[nn.Module, ModelSpec]:
    """Load a saved model folder onto either backend (strict: every key and shape must match). On a GPU the model is
    built there (no initialisation on the host and copy) and the weights are read straight onto it; `startup` times
    each phase (imports, kernel cache, model build, weights read, to device)."""
    startup = startup or Startup()
    if device is not None:
        check_device(backend, device)
    spec = read_model_spec(folder)
    backend = resolve_backend(backend, device)
    if backend == "fla":
        from hybrid_ray.model.fla import import_fla
        from hybrid_ray.node import kernels

        with startup.phase("imports"):
            import_fla()
        with startup.phase("kernel cache"):
            kernels.ensure_active()
    target = torch.device(device) if device is not None else torch.device("cpu")
    with startup.phase("model build"):
        with target:  # parameters allocated (and default-initialised) where they will live
            model = build_model(spec, backend, seed=None, **fla_options)
    with startup.phase("weights read"):
        state = load_state(folder, target)
    with startup.phase("to device"):
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"weights in {folder} do not match its config: {first_line(e)}") from e
        del state
        model = model.to(target) if device is not None else model  # anything built off the device (none expected)
    return model, spec
