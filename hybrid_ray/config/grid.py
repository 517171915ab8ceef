"""Sweep grids as data: axes (`--grid lr`, `--grid attention_ratio=0,0.17,1`, `--grid train.batch_size=16,32`), their
product as arms, and `--match-params`, which sizes every arm to a reference arm's parameter count.

An arm is one point of the grid: a RunSpec that differs from the base only along the swept axes. Seeds are not an
axis: every arm runs `--seeds` times (train.seed = base seed + k).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

from hybrid_ray.config.build import arm_spec
from hybrid_ray.config.variants import attention_layers, get_variant, ratio_label, rounded_share, share_percent
from hybrid_ray.errors import SpecError, suggest
from hybrid_ray.model.flops import count_params
from hybrid_ray.spec import SECTIONS, RunSpec

# The 13-arm ratio ablation: every named variant's layout, from pure DeltaNet to the transformer
RATIO_ARMS = ["h100_deltanet", "h100_hybrid_8pct", "h100_hybrid_sparse", "h100_hybrid_25pct", "h100_hybrid_late",
              "h100_hybrid_42pct", "h100_hybrid_alternating", "h100_hybrid_58pct", "h100_hybrid_67pct",
              "h100_hybrid_75pct", "h100_hybrid_83pct", "h100_hybrid_92pct", "h100_transformer"]
# `--grid lr`'s default: values around each arm's own learning rate (lr_around), so the axis is empty until expand
NAMED_AXES = {"attention_ratio": RATIO_ARMS, "lr": (), "variant": None}
LAYER_AXES = ("attention_ratio", "variant")
PARAM_TOLERANCE = 0.02


def lr_around(lr: float, span: float = 4.0, points: int = 7) -> tuple[float, ...]:
    """`points` learning rates log-spaced from lr / span to lr * span with lr itself in the middle, the others to two
    significant digits (1e-3: 2.5e-4, 4e-4, 6.3e-4, 1e-3, 1.6e-3, 2.5e-3, 4e-3): `--grid lr`'s default, which brackets
    a variant's own learning rate on both sides."""
    if not (math.isfinite(lr) and lr > 0) or not span > 1 or points < 3 or points % 2 == 0:
        raise SpecError(f"a learning-rate grid needs lr > 0, span > 1 and an odd number of points >= 3, got lr {lr:g}, "
                        f"span {span:g}, {points} points")
    half = points // 2
    values = tuple(lr if k == 0 else float(f"{lr * span ** (k / half):.2g}") for k in range(-half, half + 1))
    if len(set(values)) < points:
        raise SpecError(f"{points} learning rates around {lr:g} within x{span:g} repeat at two digits: widen the span")
    return values


@dataclass(frozen=True)
class Axis:
    name: str  # attention_ratio | lr | variant | a dotted spec field
    # variant names (attention_ratio's defaults and variant), numbers, or field values; () for `lr` alone: lr_around
    # each arm's own learning rate
    values: tuple[Any, ...]


@dataclass
class Arm:
    id: str  # unique within a sweep, e.g. "attn17" or "attn17-lr0.001"
    settings: dict[str, Any]  # axis name -> value
    spec: RunSpec


def _number(axis: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError as e:
        raise SpecError(f"--grid {axis}: {text!r} is not a number") from e
    if not math.isfinite(value):
        raise SpecError(f"--grid {axis}: {text!r} is not a finite number")
    return value


def parse_axis(text: str) -> Axis:
    """'lr', 'lr=1e-3,2e-3', 'attention_ratio=0,0.17,1', 'variant=a,b' or 'section.field=v1,v2'."""
    name, has_values, raw = text.partition("=")
    name = name.strip()
    fields = {f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    if name not in NAMED_AXES and name not in fields:
        raise SpecError(f"unknown grid axis {name!r}{suggest(name, [*NAMED_AXES, *fields])}; use attention_ratio, lr, "
                        "variant or a spec field such as train.batch_size")
    if not has_values:
        if name not in NAMED_AXES or NAMED_AXES[name] is None:
            raise SpecError(f"--grid {name} needs values: --grid {name}=A,B")
        return Axis(name, tuple(NAMED_AXES[name]))
    items = [v.strip() for v in raw.split(",") if v.strip()]
    if not items:
        raise SpecError(f"--grid {name}= has an empty value list")
    if len(set(items)) != len(items):
        raise SpecError(f"--grid {name} repeats a value: {raw}")
    if name == "attention_ratio":
        values: tuple = tuple(_number(name, v) for v in items)
        for v in values:
            attention_layers(v, 12)  # SpecError outside 0..1
    elif name == "lr":
        values = tuple(_number(name, v) for v in items)
        if any(v <= 0 for v in values):
            raise SpecError(f"--grid lr: learning rates must be > 0, got {raw}")
    elif name == "variant":
        values = tuple(get_variant(v).name for v in items)
    else:
        values = tuple(items)  # the spec coerces and validates them per arm
    return Axis(name, values)


def parse_grid(texts: list[str]) -> list[Axis]:
    if not texts:
        raise SpecError("a sweep needs at least one --grid axis (attention_ratio, lr, variant or a spec field)")
    axes = [parse_axis(t) for t in texts]
    names = [a.name for a in axes]
    if len(set(names)) != len(names):
        raise SpecError(f"--grid names an axis twice: {', '.join(names)}")
    if "attention_ratio" in names and "variant" in names:
        raise SpecError("--grid attention_ratio and --grid variant both set the attention layers: choose one")
    return axes


def check_flags(axes: list[Axis], *, variant: str | None = None, attention_ratio: float | None = None,
                overrides: dict[str, Any] | None = None) -> None:
    """Refuse, in one line, a flag whose setting a grid axis replaces in every arm (it would be silently dropped):
    --attention-ratio or --variant beside an axis that sets the layers, --lr beside --grid lr=... or --grid variant
    (each variant trains at its own learning rate), a spec flag beside the axis of its own field. --lr beside `--grid
    lr` alone is honoured: the default grid is lr_around it."""
    names = [a.name for a in axes]
    layers = next((n for n in names if n in ("attention_ratio", "variant")), None)
    if attention_ratio is not None and layers:
        raise SpecError(f"--attention-ratio {attention_ratio:g} would be replaced in every arm by --grid {layers}: "
                        "drop one of them")
    if variant is not None and "variant" in names:
        raise SpecError(f"--variant {variant} would be replaced in every arm by --grid variant: drop one of them")
    for key, value in (overrides or {}).items():
        if key == "optim.lr" and any(a.name == "lr" and a.values for a in axes):  # `--grid lr` alone centres on it
            raise SpecError(f"--lr {value:g} would be replaced in every arm by --grid lr: drop one of them")
        if key == "optim.lr" and "variant" in names:
            raise SpecError(f"--lr {value:g} would be ignored: --grid variant trains each variant at its own learning "
                            "rate (`hybrid-ray variants` lists them); drop --lr, or add --grid lr=... to sweep it too")
        if key in names:
            raise SpecError(f"--{key.rsplit('.', 1)[-1].replace('_', '-')} {value} would be replaced in every arm by "
                            f"--grid {key}: drop one of them")


def _stage(axis: Axis) -> int:
    """When an axis is applied: spec fields first (the depth that attention layers are placed in), then the layers (a
    variant brings its learning rate), then the learning rate (which overrides the variant's, in whatever order the
    axes were given)."""
    return 1 if axis.name in LAYER_AXES else 2 if axis.name in ("lr", "optim.lr") else 0


@dataclass
class _Point:
    spec: RunSpec
    steps: dict[int, tuple[int, str, str, Any]]  # axis index -> (value's index, label, label asked for, setting)
    exact: bool = True  # every layer axis gave the share it asked for


def expand(base: RunSpec, axes: list[Axis]) -> list[Arm]:
    """The product of the axes, one Arm per point, in grid order (the first axis slowest). An arm is labelled by what
    it trains: a ratio arm by the share of its layers at its depth (share_label). Points that would train the same
    spec (ratios a depth rounds to the same layers: attn8 and attn17 at 6 layers) are one arm, with one warning line
    for the grid (_merge_same)."""
    points = [_Point(base, {})]
    for i in sorted(range(len(axes)), key=lambda i: _stage(axes[i])):
        axis, moved = axes[i], []
        for point in points:
            for k, value in enumerate(axis.values or lr_around(point.spec.optim.lr)):
                label, spec = arm_spec(point.spec, axis.name, value)
                asked, setting, exact = label, value, True
                if axis.name in LAYER_AXES:
                    layers, depth = spec.model.attn_layers, spec.model.num_layers
                    exact = rounded_share(value, layers, depth) is None
                    if axis.name == "attention_ratio":
                        asked, setting = ratio_label(value), round(len(layers) / depth, 4)
                moved.append(_Point(spec, {**point.steps, i: (k, label, asked, setting)}, point.exact and exact))
        points = moved
    points.sort(key=lambda p: [p.steps[i][0] for i in range(len(axes))])
    arms = _merge_same(points, axes)
    ids = [a.id for a in arms]
    if len(set(ids)) != len(ids):
        raise SpecError(f"two grid points would get the same name ({ids}); give distinct values")
    return arms


def _trains(spec: RunSpec) -> str:
    """What a spec trains, whatever variant it names."""
    return json.dumps(dataclasses.replace(spec, variant=None).to_dict(), sort_keys=True, default=str)


def _merge_same(points: list[_Point], axes: list[Axis]) -> list[Arm]:
    """One arm per point, except that points whose layer-axis values build the same layers (all else equal) are one
    arm, at the place of the first: the point whose layers have the share it asked for (at 6 layers attn8 and attn17
    both train [5]: the arm is attn17's, and h100_hybrid_sparse's for `--grid variant`), else the first. A ratio arm's
    id is the share it trains, so it is the same for the whole group. Warns, in one line for the grid, of every point
    whose share its depth rounded or merged."""
    layer = next((i for i, a in enumerate(axes) if a.name in LAYER_AXES), None)
    groups: dict[tuple, list[_Point]] = {}
    for point in points:
        others = tuple(k for i, (k, *_) in sorted(point.steps.items()) if i != layer)
        groups.setdefault((others, _trains(point.spec) if layer is not None else id(point)), []).append(point)
    arms, notes, depths = [], [], set()
    for group in groups.values():
        kept = next((p for p in group if p.exact), group[0])
        arm_id = "-".join(kept.steps[i][1] for i in range(len(axes)))
        arms.append(Arm(arm_id, {a.name: kept.steps[i][3] for i, a in enumerate(axes)}, kept.spec))
        if len(group) > 1 or not kept.exact:
            model = kept.spec.model
            asked = " + ".join(dict.fromkeys(p.steps[layer][2] for p in group))
            layers = ",".join(map(str, model.attn_layers)) or "none"
            share = f" = {share_percent(model.attention_ratio)}%" if axes[layer].name == "variant" else ""
            notes.append(f"{asked} -> {kept.steps[layer][1]} [{layers}]{share}")
            depths.add(model.num_layers)
    if notes:
        named = "plotted at" if axes[layer].name == "variant" else "named and plotted by"
        warnings.warn(f"{' and '.join(map(str, sorted(depths)))} layers cannot hold every attention share of the grid: "
                      f"{'; '.join(dict.fromkeys(notes))}; arms are {named} the share they train, and points with "
                      f"the same layers are one arm ({len(points)} grid points, {len(arms)} arms)")
    return arms


def match_params(arms: list[Arm], reference: str | None = None) -> list[Arm]:
    """Resize every arm's MLPs (FLA's `intermediate_size`, the same in every layer, so FLA can build it) until its
    parameter count is within 2% of the reference arm's: by default the arm with no attention layer (pure DeltaNet),
    else the first arm. Attention layers have fewer parameters than Gated DeltaNet layers of the same width, so arms
    with more attention get wider MLPs; everything else (width, depth, heads, layout) stays as it is."""
    if any(a.spec.model.vocab_size is None for a in arms):
        raise SpecError("--match-params needs the vocabulary resolved first")
    if reference is None:
        ref = next((a for a in arms if not a.spec.model.attn_layers), arms[0])
    else:
        ref = next((a for a in arms if a.id == reference), None)
        if ref is None:
            raise SpecError(f"--match-params {reference!r} is not an arm of this grid{suggest(reference, [a.id for a in arms])}")
    target = count_params(ref.spec.model)["total"]
    out = []
    for arm in arms:
        model = arm.spec.model
        per_width = 3 * model.hidden_size * model.num_layers  # parameters per unit of MLP width, over all layers
        base = count_params(dataclasses.replace(model, mlp_size=1))["total"] - per_width
        width = max(1, round((target - base) / per_width))
        model = dataclasses.replace(model, mlp_size=width)
        if abs(count_params(model)["total"] / target - 1) > PARAM_TOLERANCE:
            raise SpecError(f"arm {arm.id} cannot be sized within {PARAM_TOLERANCE:.0%} of {ref.id}'s "
                            f"{target / 1e6:.1f}M parameters by its MLP width")
        out.append(dataclasses.replace(arm, spec=dataclasses.replace(arm.spec, model=model)))
    return out


def numeric_value(arm: Arm) -> float | None:
    """The first swept value of an arm as a number, for plots: the attention share its layers have (what it trains,
    not what its grid value asked for) or the learning rate; None otherwise."""
    for name, value in arm.settings.items():
        if name in LAYER_AXES:
            return arm.spec.model.attention_ratio
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None
