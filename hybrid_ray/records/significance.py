"""Is an arm's difference from the best arm larger than the seed noise? Welch's t-test over the arms' seeds.

Welch's test (unequal variances, two-sided) compares the mean of one metric over an arm's seeds with the best arm's.
The t distribution's CDF comes from the regularized incomplete beta function (a continued fraction, as in Numerical
Recipes' betacf): no scipy. Verdicts: "best", "within noise" (p >= ALPHA), "worse" (p < ALPHA), or "no claim" when
either arm has fewer than 2 seeds. One test per arm against the best, not corrected for multiple
comparisons: with many arms, read a p just under ALPHA as a hint, not a finding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALPHA = 0.05
METHOD = "Welch's t-test over seeds, two-sided, p < 0.05"


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0 <= x <= 1):
        raise ValueError(f"betainc needs a, b > 0 and 0 <= x <= 1, got a={a} b={b} x={x}")
    if x in (0, 1):
        return float(x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # the continued fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry I_x(a,b) = 1 - I_1-x(b,a)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1 - math.exp(log_front) * _beta_fraction(b, a, 1 - x) / b


def _beta_fraction(a: float, b: float, x: float, eps: float = 1e-15, max_terms: int = 10_000) -> float:
    """The continued fraction of I_x(a, b) by the modified Lentz method."""
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_terms + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= c * d
        if abs(c * d - 1) < eps:
            return h
    raise ArithmeticError(f"betainc's continued fraction did not converge (a={a}, b={b}, x={x})")


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t distribution with `df` (> 0, not necessarily whole) degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1 - tail if t > 0 else tail


@dataclass(frozen=True)
class Welch:
    t: float
    df: float
    p: float  # two-sided
    difference: float  # mean(a) - mean(b)


def _mean_var(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, sum((v - mean) ** 2 for v in values) / (n - 1)


def welch(a: list[float], b: list[float]) -> Welch:
    """Welch's two-sided t-test of mean(a) == mean(b); each sample needs >= 2 values. Two samples without spread
    are equal (p = 1) or different (p = 0) outright."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's t-test needs >= 2 values a sample, got {len(a)} and {len(b)}")
    (ma, va), (mb, vb) = _mean_var(a), _mean_var(b)
    sa, sb = va / len(a), vb / len(b)
    difference = ma - mb
    if sa + sb == 0:
        return Welch(0.0 if difference == 0 else math.copysign(math.inf, difference), math.inf,
                     1.0 if difference == 0 else 0.0, difference)
    t = difference / math.sqrt(sa + sb)
    df = (sa + sb) ** 2 / (sa * sa / (len(a) - 1) + sb * sb / (len(b) - 1))
    return Welch(t, df, 2 * (1 - t_cdf(abs(t), df)), difference)


@dataclass(frozen=True)
class Verdict:
    """One arm against the best arm by a metric."""

    label: str  # best | within noise | worse | no claim
    p: float | None = None

    def __str__(self) -> str:
        return self.label if self.p is None else f"{self.label} (p={self.p:.2g})"


def against_best(arms: dict[str, list[float]], *, higher_is_better: bool) -> dict[str, Verdict]:
    """Each arm's verdict against the best arm: the one with the best mean over seeds among the arms with >= 2 seeds
    (an arm with fewer is "no claim", however good its one number; arms without values are left out)."""
    means = {name: sum(v) / len(v) for name, v in arms.items() if len(v) >= 2}
    out = {name: Verdict("no claim") for name, v in arms.items() if 0 < len(v) < 2}
    if not means:
        return out
    best = (max if higher_is_better else min)(means, key=means.__getitem__)
    for name in means:
        if name == best:
            out[name] = Verdict("best")
        else:
            test = welch(arms[name], arms[best])
            out[name] = Verdict("within noise" if test.p >= ALPHA else "worse", test.p)
    return out
