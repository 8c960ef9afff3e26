"""Confidence intervals and spread for a point's figures: plain arithmetic, checkable by hand.

A point's window W is cut into k sub-windows (batches, in the batch-means sense), each bounded by
real energy-counter readings. A figure such as J/token is a ratio of two sums over W
(energy / tokens), so its interval is the ratio estimator's: with per-batch numerators x_i and
denominators y_i, R = sum x / sum y, residuals d_i = x_i - R y_i, and

    standard error  se = sqrt(sum d_i^2 / (k (k - 1))) / mean(y)
    95% half-width  h  = t(0.975, k - 1) x se

(Cochran, "Sampling Techniques", 3rd ed., Wiley 1977, section 6.4, with the batches as the
sample). Where every batch has the same denominator this is the textbook batch-means interval of
the per-batch ratios. Repeats of a point use the plain mean's interval, t x s / sqrt(n).
The coefficient of variation (CV) is the sample standard deviation over the mean of the per-batch
(or per-repeat) values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Two-sided 95% critical values of Student's t, t(0.975, df): NIST/SEMATECH e-Handbook of
# Statistical Methods, section 1.3.6.7.2, "Critical Values of the Student's t Distribution",
# https://www.itl.nist.gov/div898/handbook/eda/section3/eda3672.htm (column 0.975).
_T975: dict[int, float] = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
    10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
    18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
    26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042, 40: 2.021, 50: 2.009, 60: 2.000,
    80: 1.990, 100: 1.984,
}
_Z975 = 1.960  # the same table's infinite-df row (the normal quantile)


def t_quantile_975(df: int) -> float:
    """t(0.975, df). Between tabulated rows, linear in 1/df (the usual interpolation, good to
    about 0.001 here); past df 100, toward the normal quantile."""
    if df < 1:
        raise ValueError("a t interval needs at least one degree of freedom (two values)")
    if df in _T975:
        return _T975[df]
    rows = sorted(_T975)
    if df > rows[-1]:
        lo_df, lo_t, inv_hi, hi_t = rows[-1], _T975[rows[-1]], 0.0, _Z975
    else:
        hi_df = next(r for r in rows if r > df)
        lo_df = max(r for r in rows if r < df)
        lo_t, hi_t, inv_hi = _T975[lo_df], _T975[hi_df], 1.0 / hi_df
    inv_lo = 1.0 / lo_df
    frac = (inv_lo - 1.0 / df) / (inv_lo - inv_hi)
    return lo_t + (hi_t - lo_t) * frac


@dataclass(frozen=True)
class Estimate:
    """A figure with its 95% confidence interval: value +- half_width; None where n < 2."""

    value: float
    half_width: float | None
    cv: float | None  # sample standard deviation / mean of the per-batch (per-repeat) values
    n: int  # batches (or repeats) the interval rests on

    @property
    def rel_half_width(self) -> float | None:
        if self.half_width is None or self.value == 0:
            return None
        return self.half_width / abs(self.value)

    def overlaps(self, other: Estimate) -> bool:
        """True where the two intervals share a point (an unknown interval counts as overlapping:
        without one, no difference can be called real)."""
        if self.half_width is None or other.half_width is None:
            return True
        return abs(self.value - other.value) <= self.half_width + other.half_width


def _cv(values: Sequence[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    if mean == 0:
        return None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return math.sqrt(var) / abs(mean)


def mean_ci(values: Sequence[float]) -> Estimate:
    """Mean of independent values (repeats) with t(0.975, n-1) x s / sqrt(n)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n < 2:
        return Estimate(mean, None, None, n)
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Estimate(mean, t_quantile_975(n - 1) * s / math.sqrt(n), _cv(values), n)


def ratio_ci(numerators: Sequence[float], denominators: Sequence[float]) -> Estimate:
    """sum(numerators) / sum(denominators) over k batches, with the ratio estimator's batch-means
    interval (see the module's docstring). Batches with a zero denominator carry no ratio and
    are dropped from the interval and the CV, not from the sums."""
    if len(numerators) != len(denominators):
        raise ValueError("one numerator per denominator")
    total_y = sum(denominators)
    if total_y == 0:
        raise ValueError("the denominators sum to zero")
    ratio = sum(numerators) / total_y
    pairs = [(x, y) for x, y in zip(numerators, denominators, strict=True) if y != 0]
    k = len(pairs)
    if k < 2:
        return Estimate(ratio, None, None, k)
    mean_y = sum(y for _x, y in pairs) / k
    se = math.sqrt(sum((x - ratio * y) ** 2 for x, y in pairs) / (k * (k - 1))) / abs(mean_y)
    return Estimate(ratio, t_quantile_975(k - 1) * se, _cv([x / y for x, y in pairs]), k)


def slope_ci(xs: Sequence[float], ys: Sequence[float]) -> Estimate:
    """The least-squares slope of ys on xs with its 95% interval, t(0.975, k - 2) x se, where
    se = sqrt(sum of squared residuals / (k - 2) / sum (x - mean x)^2) (any regression text, e.g.
    NIST/SEMATECH e-Handbook, section 4.4.4.2). A batch-means interval assumes the batches are
    alike; a slope whose interval excludes 0 says they are not (the window was not yet steady).
    `cv` is None: a slope has no spread of its own."""
    k = len(xs)
    if k != len(ys):
        raise ValueError("one y per x")
    if k < 2:
        raise ValueError("a slope needs two points")
    mx, my = sum(xs) / k, sum(ys) / k
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("the xs are all equal")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    if k < 3:
        return Estimate(slope, None, None, k)
    rss = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys, strict=True))
    se = math.sqrt(rss / (k - 2) / sxx)
    return Estimate(slope, t_quantile_975(k - 2) * se, None, k)
