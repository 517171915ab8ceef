"""The model on both backends: structure, numerics against FLA itself, packed documents, save/load."""

import dataclasses

import pytest
import torch

from hybrid_ray.config.variants import REFERENCE_VOCAB, VARIANTS, variant_spec
from hybrid_ray.model import build_model, count_params, flops_per_token, load_model, save_model
from hybrid_ray.model.delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule
from hybrid_ray.spec import ModelSpec

TINY_GDN = ModelSpec(hidden_size=64, num_layers=1, num_heads=2, head_dim=32, vocab_size=100)
TINY_HYBRID = ModelSpec(  # GQA, a window shorter than the sequence, value heads > key heads
    hidden_size=64, num_layers=2, num_heads=1, num_v_heads=2, head_dim=32, expand_v=2.0,
    attn_layers=[1], attn_num_heads=4, attn_num_kv_heads=2, attn_window=8, vocab_size=100,
)


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_twin_has_fla_state_dict_for_every_variant(variant, fla_interpreted):
    spec = variant_spec(variant).model.with_vocab(REFERENCE_VOCAB)
    with torch.device("meta"):
        fla_model = build_model(spec, "fla", seed=None)
        twin = build_model(spec, "torch", seed=None)
    assert _shapes(twin) == _shapes(fla_model)
    assert sum(p.numel() for p in twin.parameters()) == count_params(spec)["total"]


@pytest.mark.parametrize("spec", [TINY_GDN, TINY_HYBRID], ids=["deltanet", "hybrid-gqa-window"])
def test_twin_matches_fla_logits(spec, fla_interpreted):
    """FLA's own forward (Triton interpreted on CPU) vs the twin on the same weights, fp32."""
    fla_model = build_model(spec, "fla", fuse_cross_entropy=False, use_cache=False).eval()
    twin = build_model(spec, "torch").eval()
    assert torch.equal(fla_model.lm_head.weight, twin.lm_head.weight)  # same seed -> same weights
    x = torch.randint(0, 100, (2, 40), generator=torch.Generator().manual_seed(0))
    cu = torch.tensor([0, 7, 30, 50, 64], dtype=torch.int32)
    packed = torch.randint(0, 100, (1, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense_diff = (fla_model(input_ids=x, use_cache=False).logits - twin(input_ids=x).logits).abs().max()
        packed_fla = fla_model(input_ids=packed, cu_seqlens=cu, use_cache=False).logits
        packed_diff = (packed_fla - twin(input_ids=packed, cu_seqlens=cu).logits).abs().max()
    assert dense_diff < 1e-5 and packed_diff < 1e-5


def test_chunked_delta_rule_equals_recurrence():
    g = torch.Generator().manual_seed(0)
    B, T, H, HV, K, V = 2, 150, 2, 4, 16, 24
    q = torch.randn(B, T, H, K, generator=g)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g), dim=-1)
    v = torch.randn(B, T, HV, V, generator=g)
    decay = -torch.rand(B, T, HV, generator=g)
    beta = torch.rand(B, T, HV, generator=g)
    o_ref, s_ref = recurrent_gated_delta_rule(q, k, v, decay, beta, scale=K**-0.5)
    for chunk in (16, 64):
        o, s = chunk_gated_delta_rule(q, k, v, decay, beta, scale=K**-0.5, chunk_size=chunk)
        assert (o - o_ref).abs().max() < 1e-5 and (s - s_ref).abs().max() < 1e-5


def test_packed_documents_do_not_see_each_other():
    model = build_model(TINY_HYBRID, "torch").eval()
    cu = torch.tensor([0, 20, 45, 64], dtype=torch.int32)
    a = torch.randint(0, 100, (1, 64), generator=torch.Generator().manual_seed(2))
    b = a.clone()
    b[0, 20:45] = torch.randint(0, 100, (25,), generator=torch.Generator().manual_seed(3))  # change document 2
    with torch.no_grad():
        la, lb = model(input_ids=a, cu_seqlens=cu).logits, model(input_ids=b, cu_seqlens=cu).logits
        alone = model(input_ids=a[:, 45:]).logits  # document 3 on its own
    assert torch.allclose(la[:, :20], lb[:, :20]) and torch.allclose(la[:, 45:], lb[:, 45:])
    assert not torch.allclose(la[:, 20:45], lb[:, 20:45])
    assert (la[:, 45:] - alone).abs().max() < 1e-5


@pytest.mark.parametrize("spec", [TINY_GDN, TINY_HYBRID, dataclasses.replace(TINY_HYBRID, attn_layers=[0, 1])])
def test_forward_backward_and_loss_convention(spec):
    model = build_model(spec, "torch")
    x = torch.randint(0, 100, (2, 33))
    labels = x.clone()
    labels[:, :5] = -100
    out = model(input_ids=x, labels=labels)
    manual = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 100), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(out.loss, manual)
    out.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_save_load_round_trip_across_backends(tmp_path, fla_interpreted):
    twin = build_model(TINY_HYBRID, "torch", seed=7)
    save_model(twin, TINY_HYBRID, tmp_path / "m")
    loaded, spec = load_model(tmp_path / "m", "fla", fuse_cross_entropy=False)  # strict
    assert spec == TINY_HYBRID
    for key, value in twin.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    save_model(loaded, spec, tmp_path / "back")
    again, _ = load_model(tmp_path / "back", "torch")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in twin.state_dict().items())


def test_saved_folder_loads_with_fla_auto_classes(tmp_path, fla_interpreted):
    from transformers import AutoModelForCausalLM

    twin = build_model(TINY_GDN, "torch", seed=3).eval()
    save_model(twin, TINY_GDN, tmp_path / "m")
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert type(auto).__name__ == "GatedDeltaNetForCausalLM"
    x = torch.randint(0, 100, (1, 24))
    with torch.no_grad():
        assert (auto(input_ids=x, use_cache=False).logits - twin(input_ids=x).logits).abs().max() < 1e-5


def test_corrupt_weights_raise_a_checkpoint_error(tmp_path):
    from hybrid_ray.errors import CheckpointError

    save_model(build_model(TINY_GDN, "torch"), TINY_GDN, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path, "torch")


def test_flops_count_matrix_products_attention_and_delta_rule():
    transformer = variant_spec("h100_transformer").model
    params = count_params(transformer)
    matmul = params["total"] - params["embedding"] - 12 * 2 * 768 - 768  # minus embeddings and norms
    attention = 12 * 4 * 768 * (1024 + 1) / 2
    assert flops_per_token(transformer, 1024) == pytest.approx(3 * (2 * matmul + attention))
    deltanet = variant_spec("h100_deltanet").model
    assert flops_per_token(deltanet, 1024) > 6 * (count_params(deltanet)["total"] - count_params(deltanet)["embedding"])
