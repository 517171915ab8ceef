"""On a CUDA GPU: the decoding engine on FLA's model, its step captured as a CUDA graph, against FLA's own cached
forward and against recomputing with FLA's kernels. Skipped on CPU-only machines."""

import dataclasses

import pytest
import torch
from test_gpu import HYBRID as PARITY_SPEC

from hybrid_ray.generate import SamplingOptions, decode, decode_reference
from hybrid_ray.model import build_model

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda", 0)

# the fp32 parity shape of test_gpu.py (its kernels are compiled once for both files): both layer types, GQA, value
# heads > key heads, and here a window shorter than what is decoded
SPEC = dataclasses.replace(PARITY_SPEC, attn_window=32)


def test_captured_decoding_on_fla_equals_its_cache_and_recomputing():
    model = build_model(SPEC, "fla", device=CUDA, seed=0).eval()
    prompts = [[5], list(range(10, 30)), list(range(100, 140))]  # mixed lengths, one past the window
    greedy = SamplingOptions(max_new_tokens=24, temperature=0)
    # fp32: the engine (graph and op by op), FLA's own cache and FLA recomputing agree token for token
    captured = decode(model, prompts, greedy, None, CUDA, precision="fp32")
    assert captured == decode(model, prompts, SamplingOptions(max_new_tokens=24, temperature=0, use_graph=False), None,
                              CUDA, precision="fp32")
    assert captured == decode_reference(model, prompts, greedy, None, CUDA, precision="fp32").tokens
    recomputed = SamplingOptions(max_new_tokens=24, temperature=0, use_cache=False)
    assert captured == decode_reference(model, prompts, recomputed, None, CUDA, precision="fp32").tokens
    assert captured == [decode(model, [p], greedy, None, CUDA, precision="fp32")[0] for p in prompts]
    # bf16 (the default on GPUs): replaying the graph computes exactly what the same step does op by op
    bf16 = decode(model, prompts, greedy, None, CUDA)
    assert bf16 == decode(model, prompts, SamplingOptions(max_new_tokens=24, temperature=0, use_graph=False), None, CUDA)
