"""Confidence-interval arithmetic, checked by hand."""

from __future__ import annotations

import math

import pytest

from carbontop.core.stats import Estimate, mean_ci, ratio_ci, slope_ci, t_quantile_975


def _t_central_mass(q: float, df: int, n: int = 4000) -> float:
    """P(-q < T < q) for Student's t by Simpson's rule on its density: an independent check of
    the table."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def pdf(t: float) -> float:
        return c * (1 + t * t / df) ** (-(df + 1) / 2)

    h = q / n
    s = pdf(0) + pdf(q) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, n))
    return 2 * s * h / 3


@pytest.mark.parametrize("df", [1, 2, 3, 5, 8, 9, 15, 30, 35, 60, 100, 150, 1000])
def test_t_table_holds_95_percent(df: int) -> None:
    # tabulated rows to three decimals; interpolated ones (35, 150, 1000) close to them
    assert _t_central_mass(t_quantile_975(df), df) == pytest.approx(0.95, abs=3e-4)


def test_t_needs_two_values() -> None:
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_mean_ci_by_hand() -> None:
    e = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, s = sqrt(10/4) = 1.58114, t(0.975, 4) = 2.776, h = 2.776 x 1.58114 / sqrt(5)
    assert e.value == 3.0
    assert e.half_width == pytest.approx(1.96292, abs=1e-5)
    assert e.cv == pytest.approx(0.527046, abs=1e-6)
    assert e.n == 5


def test_one_value_has_no_interval() -> None:
    e = mean_ci([7.0])
    assert (e.value, e.half_width, e.cv) == (7.0, None, None)


def test_ratio_ci_equal_batches_is_plain_batch_means() -> None:
    # per-batch ratios 2.0, 2.4, 2.8: mean 2.4, s = 0.4, se = 0.4 / sqrt(3), t(0.975, 2) = 4.303
    e = ratio_ci([10.0, 12.0, 14.0], [5.0, 5.0, 5.0])
    assert e.value == pytest.approx(2.4)
    assert e.half_width == pytest.approx(4.303 * 0.4 / math.sqrt(3))
    assert e.cv == pytest.approx(0.4 / 2.4)


def test_ratio_ci_unequal_batches_by_hand() -> None:
    # R = 12 / 5 = 2.4; residuals 3 - 2.4, 5 - 4.8, 4 - 4.8 = 0.6, 0.2, -0.8; sum of squares 1.04
    # se = sqrt(1.04 / (3 x 2)) / (5 / 3) = 0.249800; h = 4.303 x se
    e = ratio_ci([3.0, 5.0, 4.0], [1.0, 2.0, 2.0])
    assert e.value == pytest.approx(2.4)
    assert e.half_width == pytest.approx(4.303 * 0.249800, abs=1e-5)
    assert e.rel_half_width == pytest.approx(4.303 * 0.249800 / 2.4, abs=1e-5)


def test_overlap_rule() -> None:
    a = Estimate(1.00, 0.02, None, 8)
    assert a.overlaps(Estimate(1.03, 0.02, None, 8))
    assert not a.overlaps(Estimate(1.05, 0.02, None, 8))
    assert a.overlaps(Estimate(2.0, None, None, 1))  # no interval: no difference can be called


def test_slope_ci_by_hand() -> None:
    # x 0..3, y 1 3 2 4: sxx = 5, sxy = 4, slope 0.8; residuals -0.3 0.9 -0.9 0.3, rss 1.8;
    # se = sqrt(1.8 / 2 / 5), half-width t(0.975, 2) = 4.303 x se
    est = slope_ci([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 2.0, 4.0])
    assert est.value == pytest.approx(0.8)
    assert est.half_width == pytest.approx(4.303 * math.sqrt(0.18))
    assert est.n == 4 and est.cv is None
    assert slope_ci([0.0, 1.0], [1.0, 2.0]).half_width is None  # two points: a line, no interval
    with pytest.raises(ValueError):
        slope_ci([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
