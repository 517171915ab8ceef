"""Variants, presets and the attention-placement rule."""

import math

import pytest

from hybrid_ray.errors import SpecError
from hybrid_ray.spec import RunSpec
from hybrid_ray.config.variants import (
    GRID_12, PRESETS, REFERENCE_VOCAB, VARIANTS, attention_layers, spread_layers, variant_spec,
)

EXPECTED = {  # docs/ARCHITECTURE.md, "Variants"
    "h100_deltanet": [],
    "h100_transformer": list(range(12)),
    "h100_hybrid_sparse": [5, 11],
    "h100_hybrid_alternating": [1, 3, 5, 7, 9, 11],
    "h100_hybrid_late": [8, 9, 10, 11],
    "h100_hybrid_8pct": [11],
    "h100_hybrid_25pct": [4, 8, 11],
    "h100_hybrid_42pct": [2, 4, 6, 8, 11],
    "h100_hybrid_58pct": [1, 3, 5, 7, 8, 9, 11],
    "h100_hybrid_67pct": [1, 2, 4, 5, 7, 8, 10, 11],
    "h100_hybrid_75pct": [1, 2, 3, 5, 6, 7, 9, 10, 11],
    "h100_hybrid_83pct": [1, 2, 3, 4, 5, 6, 7, 8, 10, 11],
    "h100_hybrid_92pct": list(range(1, 12)),
}


def test_every_named_variant_has_the_original_layers():
    assert set(VARIANTS) == set(EXPECTED)
    for name, layers in EXPECTED.items():
        spec = variant_spec(name)
        assert spec.model.attn_layers == layers, name
        assert spec.model.num_layers == 12 and spec.model.hidden_size == 768


def test_h100_base_hyperparameters():
    spec = variant_spec("h100_deltanet")
    assert spec.optim.lr == 1e-3
    assert variant_spec("h100_transformer").optim.lr == 2e-3
    assert (spec.train.batch_size, spec.data.seq_len, spec.train.steps, spec.optim.warmup_steps) == (48, 1024, 1000, 100)
    assert (spec.optim.beta1, spec.optim.beta2, spec.optim.weight_decay, spec.optim.grad_clip) == (0.9, 0.95, 0.1, 1.0)
    assert spec.model.expand_v == 1.0 and spec.model.head_dim == 256 and spec.model.attn_window == 2048
    assert spec.model.vocab_size is None and spec.optim.min_lr_ratio == 0.1  # the vocabulary follows the tokenizer
    assert REFERENCE_VOCAB == 49152  # the SmolLM tokenizer of the original experiments


def test_ratio_rule_reproduces_the_12_layer_grid_and_is_deterministic():
    for n, layers in GRID_12.items():
        assert attention_layers(n / 12, 12) == layers
    assert attention_layers(1 / 3, 12) == [2, 5, 8, 11]  # 4 of 12 is not in the grid: spread evenly
    assert attention_layers(0.5, 24) == list(range(1, 24, 2))
    assert attention_layers(0.25, 8, "late") == [6, 7]
    for L in range(1, 30):
        for n in range(1, L + 1):
            layers = spread_layers(n, L)
            assert len(set(layers)) == n and layers[-1] == L - 1 and all(0 <= i < L for i in layers)


@pytest.mark.parametrize("bad", [-0.1, 1.01, float("nan")])
def test_ratio_outside_unit_interval_is_rejected(bad):
    with pytest.raises(SpecError, match="between 0 and 1"):
        attention_layers(bad, 12)


def test_presets_set_size_and_keep_the_variant_layout():
    spec = variant_spec("h100_hybrid_alternating", "large")
    assert (spec.model.hidden_size, spec.model.num_layers, spec.model.num_heads) == (512, 12, 8)
    assert spec.model.attn_layers == [1, 3, 5, 7, 9, 11]
    assert variant_spec("h100_hybrid_late", "xlarge").model.attn_layers == list(range(16, 24))  # 8 of 24 at the top
    assert variant_spec("h100_transformer", "rtx4090").optim.lr == 1e-3
    b200 = variant_spec("h100_hybrid_sparse", "b200")
    assert (b200.train.batch_size, b200.optim.lr) == (256, 8.5e-4)
    assert set(PRESETS) >= {"small", "medium", "large", "xlarge", "rtx4090", "h100", "b200"}


def test_every_preset_holds_the_default_17pct_hybrid_and_warns_when_a_share_does_not_fit():
    import warnings

    for preset in PRESETS:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning: the share is exact
            spec = variant_spec("h100_hybrid_sparse", preset)
        assert len(spec.model.attn_layers) * 6 == spec.model.num_layers, preset
    assert variant_spec("h100_hybrid_sparse", "tiny").model.attn_layers == [5]
    with pytest.warns(UserWarning, match="h100_hybrid_8pct has 8% attention, which 6 layers cannot hold: preset tiny "
                                         "gets 1 of 6 \\(17%\\)"):
        variant_spec("h100_hybrid_8pct", "tiny")
    with pytest.warns(UserWarning, match="gets 6 of 6"):
        variant_spec("h100_hybrid_92pct", "tiny")


def test_unknown_names_suggest_a_close_match():
    with pytest.raises(SpecError, match="did you mean 'h100_hybrid_sparse'"):
        variant_spec("h100_hybrid_spares")
    with pytest.raises(SpecError, match="did you mean 'small'"):
        variant_spec("h100_deltanet", "smal")


def test_spec_round_trips_and_rejects_bad_fields(tmp_path):
    spec = variant_spec("h100_hybrid_sparse", "tiny")
    path = tmp_path / "spec.yaml"
    spec.save(path)
    assert RunSpec.load(path) == spec
    with pytest.raises(SpecError, match="did you mean 'steps'"):
        RunSpec.from_dict({"train": {"stpes": 3}})
    with pytest.raises(SpecError, match="out of range"):
        spec.with_overrides({"model.attn_layers": [7]})
    with pytest.raises(SpecError, match="divisible"):
        spec.with_overrides({"model.attn_num_heads": 3})
    with pytest.raises(SpecError, match="not divisible by 3 workers"):
        spec.with_overrides({"scale.num_workers": 3})
    assert RunSpec.from_dict({"optim": {"lr": "1e-3"}}).optim.lr == 1e-3  # YAML reads 1e-3 as a string


DEPTHS = {"tiny": 6, "small": 6, None: 12, "xlarge": 24}  # None: the H100 base size (--variant without --preset)


@pytest.mark.parametrize("preset", list(DEPTHS))
def test_train_attention_ratio_builds_the_layers_of_the_sweeps_arm_for_that_share(preset, capsys):
    """Issue 46: `train --attention-ratio 0.08` built [] at 6 layers while the sweep's attn8 trained [5]. For every
    default ratio value, written as its arm's name says (0.08) or exactly (1/12), the train command builds the layers
    of the sweep arm that value became, which is named (run name and arm id) by the share those layers have."""
    import warnings

    from hybrid_ray.cli import main
    from hybrid_ray.config.build import sweep_base
    from hybrid_ray.config.grid import RATIO_ARMS, expand, parse_grid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arms = {a.id: a for a in expand(sweep_base(variant="h100_hybrid_sparse", preset=preset),
                                        parse_grid(["attention_ratio"]))}
    depth = DEPTHS[preset]
    flags = ["--variant", "h100_hybrid_sparse", *(["--preset", preset] if preset else [])]
    for name in RATIO_ARMS:
        v = VARIANTS[name]
        if v.placement == "late":  # --attention-ratio places spread layers; the late layout is a variant's
            continue
        for ratio in (f"{round(v.ratio * 100) / 100:g}", repr(v.ratio)):
            assert main(["train", "--dry-run", *flags, "--attention-ratio", ratio]) == 0
            spec = RunSpec.from_dict(__import__("yaml").safe_load(capsys.readouterr().out))
            layers = spec.model.attn_layers
            arm_id = f"attn{round(100 * len(layers) / depth)}"
            assert spec.name.endswith(f"-{arm_id}"), (ratio, spec.name)
            assert arms[arm_id].spec.model.attn_layers == layers, (preset, name, ratio)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert variant_spec(name, preset).model.attn_layers == layers  # `train --variant NAME` too
    assert len(arms) == {6: 8, 12: 13, 24: 13}[depth]


def test_one_rule_places_every_share_and_variant_at_every_depth():
    from hybrid_ray.config.variants import attention_count, share_label

    for name, v in VARIANTS.items():
        assert v.layers_for(12) == list(v.attn_layers_12), name  # the rule reproduces the original experiments
    for depth in range(1, 49):
        for k in range(13):  # a twelfth written to the percent or exactly: the same layers
            assert attention_layers(round(k / 12, 2), depth) == attention_layers(k / 12, depth), (k, depth)
            assert attention_count(k / 12, depth) == math.floor(k * depth / 12 + 0.5)  # halves up
    assert attention_layers(0.08, 6) == attention_layers(1 / 12, 6) == [5]
    assert attention_layers(0.58, 6) == [1, 2, 4, 5] and attention_layers(0.125, 8) == [7]
    assert share_label([2, 5], 6) == "attn33" and share_label([4, 5], 6) == "attn33late"
    assert share_label([5], 6) == "attn17" and share_label([8, 9, 10, 11], 12) == "attn33late"
    assert share_label([2], 3) == "attn33"  # one top layer is the spread layout too: no "late"


def test_attention_ratio_warns_when_the_depth_rounds_the_share():
    import warnings

    from hybrid_ray.config.build import build_spec

    with pytest.warns(UserWarning, match=r"attention ratio 0.25: 25% is 2 of 6 layers \(33%\), layers \[2, 5\]"):
        spec = build_spec(preset="tiny", attention_ratio=0.25)
    assert spec.name == "h100_hybrid_sparse-tiny-attn33" and spec.model.attention_ratio == 2 / 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exact shares say nothing
        assert build_spec(preset="tiny", attention_ratio=0.17).model.attn_layers == [5]
        assert build_spec(variant="h100_deltanet", attention_ratio=0.25).name == "h100_deltanet-attn25"
