"""Named variants (attention layouts) and presets (model sizes), and the rule that places attention layers.

A variant fixes where the softmax-attention layers go and the hyper-parameters that the original experiments used
with it; a preset fixes the size (width, depth, heads, sequence, batch). `variant_spec(variant, preset)` combines
the two into a RunSpec. Every other setting comes from the H100 base configuration below.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

from hybrid_ray.errors import SpecError, suggest
from hybrid_ray.model.flops import count_params
from hybrid_ray.spec import DataSpec, ModelSpec, OptimSpec, RunSpec, TrainSpec

# Attention layers for each attention-layer count at 12 layers, exactly as in the original experiments
# (0-based). Counts missing here (4) and every other depth use `spread_layers`.
GRID_12: dict[int, list[int]] = {
    0: [],
    1: [11],
    2: [5, 11],
    3: [4, 8, 11],
    5: [2, 4, 6, 8, 11],
    6: [1, 3, 5, 7, 9, 11],
    7: [1, 3, 5, 7, 8, 9, 11],
    8: [1, 2, 4, 5, 7, 8, 10, 11],
    9: [1, 2, 3, 5, 6, 7, 9, 10, 11],
    10: [1, 2, 3, 4, 5, 6, 7, 8, 10, 11],
    11: list(range(1, 12)),
    12: list(range(12)),
}


def spread_layers(n_attn: int, n_layers: int) -> list[int]:
    """n_attn layers spread evenly, always ending at the top layer: layer_i = round((i + 1) * L / n) - 1."""
    return [math.floor((i + 1) * n_layers / n_attn + 0.5) - 1 for i in range(n_attn)]


def late_layers(n_attn: int, n_layers: int) -> list[int]:
    """The top n_attn layers."""
    return list(range(n_layers - n_attn, n_layers))


PLACEMENTS = {"spread": spread_layers, "late": late_layers}


def share_percent(ratio: float) -> int:
    """An attention share in whole percent, as every label shows it (`attn17`, `runs list`'s `attn17%`)."""
    return round(100 * ratio)


def _twelfths(ratio: float) -> int | None:
    """The twelfths a share names when it is one to the percent (0.08, 0.17, 0.42, 1/12: the labels of the 12-layer
    ratio arms), else None."""
    k = math.floor(ratio * 12 + 0.5)
    return k if share_percent(k / 12) == share_percent(ratio) else None


def attention_count(ratio: float, n_layers: int) -> int:
    """How many of n_layers become attention for a share: round(ratio * n_layers), halves up. A share that reads as a
    twelfth to the percent counts as that twelfth exactly, so 0.08, 0.083 and 1/12 (the sweep's attn8) build the same
    layers at every depth (1 of 6 at 6 layers, where 0.08 * 6 = 0.48 would round to none and 1/12 * 6 = 0.5 up)."""
    k = _twelfths(ratio)
    if k is not None:
        return (2 * k * n_layers + 12) // 24  # k * n_layers / 12, halves up, in integers
    return math.floor(ratio * n_layers + 0.5)


def layout(n_attn: int, n_layers: int, placement: str = "spread") -> list[int]:
    """Where n_attn attention layers go at a depth: GRID_12's lists at 12 layers ("spread"), else the placement's
    rule."""
    if n_attn == 0:
        return []
    if placement == "spread" and n_layers == 12 and n_attn in GRID_12:
        return list(GRID_12[n_attn])
    return PLACEMENTS[placement](n_attn, n_layers)


def attention_layers(ratio: float, n_layers: int, placement: str = "spread") -> list[int]:
    """The attention layers for an attention share in [0, 1]: the one rule from a share to layers, for
    --attention-ratio, ratio sweeps and named variants at any depth.

    n = attention_count(ratio, n_layers) layers become attention. With the default "spread" placement and 12 layers
    the lists of the original experiments are reproduced (GRID_12); otherwise they are spread evenly, always
    including the top layer. "late" puts them at the top.
    """
    if not isinstance(ratio, (int, float)) or math.isnan(ratio) or not 0.0 <= ratio <= 1.0:
        raise SpecError(f"attention ratio must be between 0 and 1, got {ratio}")
    if n_layers < 1:
        raise SpecError(f"number of layers must be >= 1, got {n_layers}")
    if placement not in PLACEMENTS:
        raise SpecError(f"unknown placement {placement!r}{suggest(placement, PLACEMENTS)}")
    return layout(attention_count(ratio, n_layers), n_layers, placement)


def share_label(layers: list[int], n_layers: int) -> str:
    """`attnNN`, NN the share of `layers` in percent: a ratio sweep's arm id and an --attention-ratio run's suffix,
    always the share the arm trains; `late` marks the top layers where they differ from the spread layout."""
    n = len(layers)
    late = 0 < n < n_layers and list(layers) == late_layers(n, n_layers) and list(layers) != layout(n, n_layers)
    return f"attn{share_percent(n / n_layers)}" + ("late" if late else "")


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    attn_layers_12: tuple[int, ...]
    placement: str = "spread"
    lr: float = 2e-3

    @property
    def ratio(self) -> float:
        return len(self.attn_layers_12) / 12

    def layers_for(self, n_layers: int) -> list[int]:
        """The variant's layout at a depth: its share placed by attention_layers (at 12 layers, attn_layers_12)."""
        return attention_layers(self.ratio, n_layers, self.placement)


def _grid_variant(pct: int, n: int) -> Variant:
    return Variant(f"h100_hybrid_{pct}pct", f"{n} of 12 layers attention ({pct}%)", tuple(GRID_12[n]))


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("h100_deltanet", "pure Gated DeltaNet", (), lr=1e-3),
        Variant("h100_transformer", "pure softmax attention", tuple(range(12))),
        Variant("h100_hybrid_sparse", "attention at layers 5 and 11 (17%)", (5, 11)),
        Variant("h100_hybrid_alternating", "attention at every odd layer (50%)", tuple(range(1, 12, 2))),
        Variant("h100_hybrid_late", "attention at the top four layers (33%)", (8, 9, 10, 11), placement="late"),
        _grid_variant(8, 1),
        _grid_variant(25, 3),
        _grid_variant(42, 5),
        _grid_variant(58, 7),
        _grid_variant(67, 8),
        _grid_variant(75, 9),
        _grid_variant(83, 10),
        _grid_variant(92, 11),
    ]
}


@dataclass(frozen=True)
class Preset:
    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    seq_len: int
    batch_size: int
    description: str
    head_dim: int | None = None
    lr: float | None = None
    steps: int | None = None
    warmup_steps: int | None = None
    eval_every: int | None = None
    eval_tokens: int | None = None
    checkpoint_every: int | None = None


# Depths are multiples of 6 so that the default 17% hybrid (one attention layer in six) exists at every preset;
# at 12 and 24 layers every named share exists. The old scripts' single-architecture sizes had 4, 8 and 16 layers.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("tiny", 64, 6, 2, 128, 8, "CPU debug size: trains in about a minute on 2 cores", head_dim=32, steps=200,
               warmup_steps=20, eval_every=50, eval_tokens=32_768, checkpoint_every=50),
        Preset("small", 128, 6, 4, 128, 2, "single-architecture experiment, small"),
        Preset("medium", 256, 12, 8, 256, 4, "single-architecture experiment, medium"),
        Preset("large", 512, 12, 8, 512, 8, "single-architecture experiment, large"),
        Preset("xlarge", 1024, 24, 16, 1024, 4, "single-architecture experiment, xlarge"),
        Preset("rtx4090", 768, 12, 12, 1024, 32, "one RTX 4090", lr=1e-3),
        Preset("h100", 768, 12, 12, 1024, 120, "one H100, the original scripts' long run", steps=10_000),
        Preset("b200", 768, 12, 12, 1024, 256, "one B200, long run", lr=8.5e-4, steps=10_000),
    ]
}

DEFAULT_VARIANT = "h100_hybrid_sparse"
DEFAULT_PRESET = "tiny"
# The vocabulary of the original experiments (the SmolLM tokenizer). Models follow their tokenizer's vocabulary
# unless model.vocab_size pins one; parameter tables and GPU benchmarks quote this one.
REFERENCE_VOCAB = 49152

# The H100 base configuration every variant starts from (docs/ARCHITECTURE.md, "Variants").
BASE_MODEL = ModelSpec(
    hidden_size=768, num_layers=12, num_heads=12, head_dim=256, expand_v=1.0, attn_num_heads=12, attn_window=2048,
)


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise SpecError(f"unknown variant {name!r}{suggest(name, VARIANTS)}; `hybrid-ray variants` lists them")
    return VARIANTS[name]


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise SpecError(f"unknown preset {name!r}{suggest(name, PRESETS)}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def size_line(spec: RunSpec) -> str:
    """Which size `spec` has, in words: the variants' H100 base size or the preset whose width, depth, sequence and
    batch it has. The `h100` preset (the original scripts' long run) is not the H100 base size: the line says so."""

    def shape(s: RunSpec) -> tuple[int, ...]:
        return s.model.hidden_size, s.model.num_layers, s.data.seq_len, s.train.batch_size

    def numbers(s: RunSpec) -> str:
        return f"{s.train.batch_size} x {s.data.seq_len} tokens a step, {s.train.steps:,} steps"

    here = f"{spec.model.hidden_size} wide, {spec.model.num_layers} layers, {numbers(spec)}"
    base, h100 = variant_spec(DEFAULT_VARIANT), variant_spec(DEFAULT_VARIANT, "h100")
    if shape(spec) == shape(base):
        return (f"size: the variants' H100 base size ({here}; no --preset), not --preset h100 (the original scripts' "
                f"long run: {numbers(h100)})")
    for name, preset in PRESETS.items():
        if shape(spec) == shape(variant_spec(DEFAULT_VARIANT, name)):
            line = f"size: preset {name}, {preset.description} ({here})"
            if name == "h100":
                line += f"; not the variants' H100 base size ({numbers(base)}: no --preset)"
            return line
    return f"size: no preset's ({here})"


def variant_spec(variant: str = DEFAULT_VARIANT, preset: str | None = None) -> RunSpec:
    """The RunSpec of a named variant at the H100 base size, or at a preset's size.

    Warns when the preset's depth cannot hold the variant's attention share exactly (8% at 6 layers, say).
    """
    v = get_variant(variant)
    model = dataclasses.replace(BASE_MODEL, attn_layers=list(v.attn_layers_12))
    data = DataSpec(seq_len=1024)
    optim = OptimSpec(lr=v.lr, warmup_steps=100)
    train = TrainSpec(steps=1000, batch_size=48)
    name = variant
    if preset is not None:
        p = get_preset(preset)
        model = dataclasses.replace(
            model,
            hidden_size=p.hidden_size,
            num_layers=p.num_layers,
            num_heads=p.num_heads,
            attn_num_heads=p.num_heads,
            head_dim=p.head_dim or model.head_dim,
            attn_layers=v.layers_for(p.num_layers),
        )
        if abs(model.attention_ratio - v.ratio) > 1e-9:
            warnings.warn(f"{variant} has {v.ratio:.0%} attention, which {p.num_layers} layers cannot hold: preset "
                          f"{preset} gets {len(model.attn_layers)} of {p.num_layers} ({model.attention_ratio:.0%})")
        data = dataclasses.replace(data, seq_len=p.seq_len)
        optim = dataclasses.replace(
            optim, lr=p.lr or optim.lr, warmup_steps=optim.warmup_steps if p.warmup_steps is None else p.warmup_steps
        )
        train = dataclasses.replace(
            train,
            batch_size=p.batch_size,
            steps=p.steps or train.steps,
            eval_every=p.eval_every or train.eval_every,
            eval_tokens=p.eval_tokens or train.eval_tokens,
            checkpoint_every=p.checkpoint_every or train.checkpoint_every,
        )
        name = f"{variant}-{preset}"
    return RunSpec(name=name, variant=variant, model=model, data=data, optim=optim, train=train)


def asked_ratio(value: float | str) -> float:
    """The attention share a grid value or an --attention-ratio asks for (a named variant's: its 12-layer share)."""
    return get_variant(value).ratio if isinstance(value, str) else float(value)


def layers_of(value: float | str, n_layers: int, placement: str = "spread") -> list[int]:
    """The attention layers of a share, or of a named variant's layout, at a depth (attention_layers for both)."""
    if isinstance(value, str):
        return get_variant(value).layers_for(n_layers)
    return attention_layers(value, n_layers, placement)


def rounded_share(value: float | str, layers: list[int], n_layers: int) -> str | None:
    """What a depth made of a share it cannot hold to the percent (`25% is 2 of 6 layers (33%)`); None when the
    layers have the share asked for."""
    asked, built = share_percent(asked_ratio(value)), share_percent(len(layers) / n_layers)
    if asked == built:
        return None
    return f"{asked}% is {len(layers)} of {n_layers} layers ({built}%)"


def with_attention(base: RunSpec, value: float | str, variant_lr: bool = False) -> tuple[str, RunSpec]:
    """A grid arm of `base` with the attention layers of a share, or of a named variant's layout, at base's depth, and
    its label. The arm keeps base's name (the arm id carries the label). A `--grid variant=...` arm (`variant_lr`) is
    that variant, at its learning rate, labelled by its name; any other is labelled by the share it trains
    (share_label: at 6 layers the 25% value trains 2 of 6 layers and is attn33) and is a named variant only when it
    has that variant's share (config/grid.py's expand warns, once for the grid, of the shares a depth rounds)."""
    n_layers = base.model.num_layers
    layers = layers_of(value, n_layers)
    exact = rounded_share(value, layers, n_layers) is None
    named = value if isinstance(value, str) and (variant_lr or exact) else None
    arm = dataclasses.replace(base, variant=named, model=dataclasses.replace(base.model, attn_layers=layers))
    if variant_lr:
        arm = dataclasses.replace(arm, optim=dataclasses.replace(arm.optim, lr=get_variant(value).lr))
        return str(value), arm
    return share_label(layers, n_layers), arm


def ratio_label(value: float | str) -> str:
    """`attnNN` for the share a value asks for, or for a named variant's share (`attn33late` for the late layout): the
    name a grid point has before a depth rounds it (share_label names what it trains)."""
    if isinstance(value, str):
        v = get_variant(value)
        return f"attn{share_percent(v.ratio)}" + ("late" if v.placement == "late" else "")
    return f"attn{share_percent(value)}"


def ratio_spec(ratio: float | str, base: RunSpec, placement: str = "spread") -> RunSpec:
    """`base` with its attention layers replaced by those of an attention share (or of a named variant's layout) at
    its depth, named `<base>-attnNN` by the share it trains (share_label): --attention-ratio's spec, the same layers
    as a ratio sweep's arm for that share. Warns when the depth cannot hold the share to the percent."""
    n_layers = base.model.num_layers
    layers = layers_of(ratio, n_layers, placement)
    if note := rounded_share(ratio, layers, n_layers):
        what = ratio if isinstance(ratio, str) else f"attention ratio {ratio:g}"
        warnings.warn(f"{what}: {note}, layers {layers}")
    return dataclasses.replace(base, model=dataclasses.replace(base.model, attn_layers=layers),
                               name=f"{base.name}-{share_label(layers, n_layers)}")


def variant_table(preset: str | None = None) -> list[dict]:
    """One row per named variant at a preset's size: attention layers and share, parameters at REFERENCE_VOCAB,
    hyper-parameters; `share_differs` marks a depth that cannot hold the named share exactly."""
    rows = []
    for name, v in VARIANTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the table marks it instead
            spec = variant_spec(name, preset)
        rows.append({
            "name": name, "description": v.description, "attention_ratio": round(spec.model.attention_ratio, 4),
            "share_differs": abs(spec.model.attention_ratio - v.ratio) > 1e-9,
            "attention_layers": spec.model.attn_layers, "vocab_size": REFERENCE_VOCAB,
            "params": count_params(spec.model.with_vocab(REFERENCE_VOCAB)), "lr": spec.optim.lr,
            "batch_size": spec.train.batch_size, "seq_len": spec.data.seq_len, "steps": spec.train.steps,
            "warmup_steps": spec.optim.warmup_steps,
        })
    return rows
