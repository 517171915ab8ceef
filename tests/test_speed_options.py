"""FLA kernel choices that change speed, not the model: the short convolution's backend and the loss kernel."""

import pytest

from hybrid_ray.errors import EnvironmentProblem, SpecError
from hybrid_ray.model import build_model
from hybrid_ray.model.fla import build_fla_model, fla_available
from hybrid_ray.model.speed import apply_kernel_options, causal_conv1d_installed, kernel_choices, resolve_conv_backend
from hybrid_ray.spec import ModelSpec, TrainSpec

TINY = ModelSpec(hidden_size=64, num_layers=2, num_heads=2, head_dim=16, attn_layers=[1], attn_num_heads=2,
                 vocab_size=128)


def fla_model():
    if not fla_available():
        pytest.skip("FLA is not installed")
    model = build_fla_model(TINY)
    model.hybrid_backend = "fla"
    return model


def convs(model):
    return [m for m in model.modules() if type(m).__name__ == "ShortConvolution"]


def test_triton_convolution_and_fused_linear_loss_are_set_on_every_layer():
    model = fla_model()
    chosen = apply_kernel_options(model, "triton", "fused-linear")
    assert chosen == {"conv_backend": "triton", "loss_kernel": "fused-linear"} == kernel_choices(model)
    assert len(convs(model)) == 3  # q, k, v of the one Gated DeltaNet layer
    assert {m.backend for m in convs(model)} == {"triton"}
    assert model.config.fuse_linear_cross_entropy and not model.config.fuse_cross_entropy
    apply_kernel_options(model, "triton", "fused")
    assert model.config.fuse_cross_entropy and not model.config.fuse_linear_cross_entropy


def test_auto_follows_whether_causal_conv1d_is_installed():
    assert resolve_conv_backend("auto") == ("cuda" if causal_conv1d_installed() else "triton")
    assert resolve_conv_backend("triton") == "triton"


@pytest.mark.skipif(causal_conv1d_installed(), reason="causal-conv1d is installed here")
def test_cuda_convolution_without_causal_conv1d_is_one_clear_error():
    with pytest.raises(EnvironmentProblem, match="causal-conv1d"):
        apply_kernel_options(fla_model(), "cuda")


def test_the_pytorch_twin_has_no_kernels_to_choose():
    twin = build_model(TINY, "torch")
    assert apply_kernel_options(twin, "cuda", "fused-linear") == {} == kernel_choices(twin)


def test_unknown_choices_are_spec_errors():
    with pytest.raises(SpecError, match="train.conv_backend"):
        TrainSpec(conv_backend="cudnn")
    with pytest.raises(SpecError, match="train.loss_kernel"):
        TrainSpec(loss_kernel="chunked")


def test_every_fla_model_tunes_its_swiglu_kernels_over_four_configurations_not_thirty():
    """A parameter-matched sweep gives each arm its own MLP width, which FLA's SwiGLU kernels are tuned for: the
    narrowed space is what keeps a new arm's compile to seconds (8 kernels a width instead of 60)."""
    from hybrid_ray.model.speed import SWIGLU_CONFIGS

    fla_model()
    from fla.modules.activations import ops

    for kernel in (ops.swiglu_fwd_kernel, ops.swiglu_fwdbwd_kernel.fn):  # the second under @triton.heuristics
        assert [(c.kwargs["B"], c.num_warps) for c in kernel.configs] == list(SWIGLU_CONFIGS)


def test_verify_says_which_convolution_auto_runs_and_how_to_get_the_cuda_one():
    from hybrid_ray.model import stack

    info = stack.collect()
    info["gpus"] = [{"name": "NVIDIA H100 80GB HBM3", "capability": "9.0", "memory_gib": 79.1}]
    info["causal_conv1d"] = None
    line = next(l for l in stack.format_report(info).splitlines() if l.startswith("causal-conv1d"))
    assert "FLA Triton kernels under --conv-backend auto" in line and "'hybrid-ray[cuda]'" in line
    info["causal_conv1d"] = "1.7.0"
    line = next(l for l in stack.format_report(info).splitlines() if l.startswith("causal-conv1d"))
    assert line.startswith("causal-conv1d 1.7.0") and "its CUDA kernels" in line and "pip install" not in line
    assert stack.collect()["conv_kernel"] == ("causal-conv1d CUDA" if causal_conv1d_installed() else "FLA Triton")
