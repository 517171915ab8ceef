"""On a CUDA GPU: the decoding engine on FLA's model, its step captured as a CUDA graph, against FLA's own cached
forward and against recomputing with FLA's kernels. Skipped on CPU-only machines. The shapes are gpu_support's (the
session's warm-up compiled FLA's fp32 decoding kernels for exactly these prompts)."""

import pytest
import torch
from gpu_support import DECODE_PROMPTS, DECODE_SPEC, DECODE_TOKENS

from hybrid_ray.inference.generate import SamplingOptions, decode, decode_reference
from hybrid_ray.model import build_model

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("gpu_kernels")]
CUDA = torch.device("cuda", 0)


@pytest.mark.gpu(budget_s=25)
def test_captured_decoding_on_fla_equals_its_cache_and_recomputing():
    model = build_model(DECODE_SPEC, "fla", device=CUDA, seed=0).eval()
    prompts = [list(p) for p in DECODE_PROMPTS]  # mixed lengths, one past the window
    n = DECODE_TOKENS
    greedy = SamplingOptions(max_new_tokens=n, temperature=0)
    op_by_op = SamplingOptions(max_new_tokens=n, temperature=0, use_graph=False)
    # fp32: the engine (graph and op by op), FLA's own cache and FLA recomputing agree token for token
    captured = decode(model, prompts, greedy, None, CUDA, precision="fp32")
    assert captured == decode(model, prompts, op_by_op, None, CUDA, precision="fp32")
    assert captured == decode_reference(model, prompts, greedy, None, CUDA, precision="fp32").tokens
    recomputed = SamplingOptions(max_new_tokens=n, temperature=0, use_cache=False)
    assert captured == decode_reference(model, prompts, recomputed, None, CUDA, precision="fp32").tokens
    assert captured == [decode(model, [p], greedy, None, CUDA, precision="fp32")[0] for p in prompts]
    # bf16 (the default on GPUs): replaying the graph computes exactly what the same step does op by op
    bf16 = decode(model, prompts, greedy, None, CUDA)
    assert bf16 == decode(model, prompts, op_by_op, None, CUDA)
