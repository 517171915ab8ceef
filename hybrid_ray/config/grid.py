"""Sweep grids as data: axes (`--grid lr`, `--grid attention_ratio=0,0.17,1`, `--grid train.batch_size=16,32`), their
product as arms, and `--match-params`, which sizes every arm to a reference arm's parameter count.

An arm is one point of the grid: a RunSpec that differs from the base only along the swept axes. Seeds are not an
axis: every arm runs `--seeds` times (train.seed = base seed + k).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any

from hybrid_ray.config.build import arm_spec
from hybrid_ray.config.variants import VARIANTS, attention_layers, get_variant
from hybrid_ray.errors import SpecError, suggest
from hybrid_ray.model.flops import count_params
from hybrid_ray.spec import SECTIONS, RunSpec

# The 13-arm ratio ablation: every named variant's layout, from pure DeltaNet to the transformer
RATIO_ARMS = ["h100_deltanet", "h100_hybrid_8pct", "h100_hybrid_sparse", "h100_hybrid_25pct", "h100_hybrid_late",
              "h100_hybrid_42pct", "h100_hybrid_alternating", "h100_hybrid_58pct", "h100_hybrid_67pct",
              "h100_hybrid_75pct", "h100_hybrid_83pct", "h100_hybrid_92pct", "h100_transformer"]
LR_ARMS = [2e-4, 3e-4, 4e-4, 5e-4, 5.8e-4, 7e-4, 1e-3]  # the original learning-rate ablation
NAMED_AXES = {"attention_ratio": RATIO_ARMS, "lr": LR_ARMS, "variant": None}
PARAM_TOLERANCE = 0.02


@dataclass(frozen=True)
class Axis:
    name: str  # attention_ratio | lr | variant | a dotted spec field
    values: tuple[Any, ...]  # variant names (attention_ratio's defaults and variant), numbers, or field values


@dataclass
class Arm:
    id: str  # unique within a sweep, e.g. "attn17" or "attn17-lr0.001"
    settings: dict[str, Any]  # axis name -> value
    spec: RunSpec


def _ratio(value: Any) -> float:
    return get_variant(value).ratio if isinstance(value, str) else float(value)


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
        if NAMED_AXES.get(name) is None:
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
    --attention-ratio or --variant beside an axis that sets the layers, --lr beside --grid lr or --grid variant
    (each variant trains at its own learning rate), a spec flag beside the axis of its own field."""
    names = [a.name for a in axes]
    layers = next((n for n in names if n in ("attention_ratio", "variant")), None)
    if attention_ratio is not None and layers:
        raise SpecError(f"--attention-ratio {attention_ratio:g} would be replaced in every arm by --grid {layers}: "
                        "drop one of them")
    if variant is not None and "variant" in names:
        raise SpecError(f"--variant {variant} would be replaced in every arm by --grid variant: drop one of them")
    for key, value in (overrides or {}).items():
        if key == "optim.lr" and "lr" in names:
            raise SpecError(f"--lr {value:g} would be replaced in every arm by --grid lr: drop one of them")
        if key == "optim.lr" and "variant" in names:
            raise SpecError(f"--lr {value:g} would be ignored: --grid variant trains each variant at its own learning "
                            "rate (`hybrid-ray variants` lists them); drop --lr, or add --grid lr=... to sweep it too")
        if key in names:
            raise SpecError(f"--{key.rsplit('.', 1)[-1].replace('_', '-')} {value} would be replaced in every arm by "
                            f"--grid {key}: drop one of them")


def expand(base: RunSpec, axes: list[Axis]) -> list[Arm]:
    """The product of the axes, one Arm per point, in grid order."""
    arms = []
    for point in itertools.product(*(axis.values for axis in axes)):
        spec, labels = base, []
        for axis, value in zip(axes, point):
            label, spec = arm_spec(spec, axis.name, value)
            labels.append(label)
        arm_id = "-".join(labels)
        arms.append(Arm(arm_id, {axis.name: value for axis, value in zip(axes, point)}, spec))
    ids = [a.id for a in arms]
    if len(set(ids)) != len(ids):
        raise SpecError(f"two grid points would get the same name ({ids}); give distinct values")
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
    """The first swept value of an arm as a number (attention share or learning rate), for plots; None otherwise."""
    for name, value in arm.settings.items():
        if name == "attention_ratio":
            return _ratio(value)
        if name == "variant":
            return VARIANTS[value].ratio
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None
