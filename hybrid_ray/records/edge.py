"""Is a grid's best value at the grid's edge? Then the optimum may lie beyond it: name the values that extend it.

`grid_edge` is the one rule (the sweep's table, its figure and an automatic search use it): the best value is the
grid's lowest or highest, the grid has at least two values, and the axis goes on past that edge (an attention share
of 0 or 1 is the end of its axis, not of the grid). The extension continues the grid's own spacing: a constant step
for a grid of three or more equally spaced values or one that holds 0 or a negative value, else (and always for a
learning rate) the ratio between the edge value and its neighbour, rounded to two significant digits; an attention
share steps evenly and stops at 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# where an axis ends: past these no value is suggested
BOUNDS: dict[str, tuple[float, float]] = {"attention_ratio": (0.0, 1.0)}
LOG_AXES = ("lr", "optim.lr")


@dataclass(frozen=True)
class Edge:
    """The best value of one axis at the grid's edge, and the values that would extend the grid there."""

    axis: str
    best: float
    side: str  # "highest" | "lowest"
    extend: tuple[float, ...]

    def __str__(self) -> str:
        return (f"best {self.axis} {number(self.best)} is the grid's {self.side}: the optimum may be "
                f"{'higher' if self.side == 'highest' else 'lower'}; extend the grid with "
                f"{', '.join(map(number, self.extend))}")


def number(value: float) -> str:
    """A grid value as a user would type it: 0.001 -> 1e-3, 0.0014 -> 1.4e-3, 64.0 -> 64, 0.75 -> 0.75."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    if abs(value) < 0.01:
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:.4g}"


def _round(value: float, digits: int = 2) -> float:
    """`value` to `digits` significant digits."""
    if value == 0:
        return 0.0
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def grid_edge(axis: str, values: Iterable[float], best: float, *, count: int = 2) -> Edge | None:
    """The Edge when `best` is the lowest or highest of the grid's `values` along `axis` and the axis goes on past
    it (None otherwise), with `count` values that continue the grid's spacing beyond it."""
    grid = sorted(set(float(v) for v in values))
    if len(grid) < 2 or best not in grid or grid[0] < best < grid[-1]:
        return None
    side, edge, neighbour = (("highest", grid[-1], grid[-2]) if best == grid[-1] else ("lowest", grid[0], grid[1]))
    low, high = BOUNDS.get(axis, (-math.inf, math.inf))
    steps = [b - a for a, b in zip(grid, grid[1:])]
    even = len(grid) >= 3 and max(steps) - min(steps) <= 1e-9 * max(abs(grid[0]), abs(grid[-1]))
    geometric = axis in LOG_AXES or (axis not in BOUNDS and grid[0] > 0 and not even)
    whole = all(v == int(v) for v in grid)
    out: list[float] = []
    for k in range(1, count + 1):
        if geometric:
            exact = edge * (edge / neighbour) ** k
            value = float(round(exact)) if whole else _round(exact)
        else:
            value = round(edge + k * (edge - neighbour), 12)
        if edge not in (low, high) and not low <= value <= high:
            value = low if value < low else high  # the axis's own end, which the grid does not reach
        if not low <= value <= high or (geometric and value <= 0) or value in out or value == edge:
            break
        out.append(value)
    if not out:
        return None  # the grid already reaches the end of its axis
    return Edge(axis, best, side, tuple(out))
