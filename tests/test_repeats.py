"""Repeats: shuffled order, the temperature band, and how re-measures combine."""

from __future__ import annotations

import math

import pytest

from carbontop.core.records import PointResult, PointStatus
from carbontop.core.repeats import combine, combine_repeats, in_band, repeat_order, settled


def test_repeats_run_in_a_shuffled_seeded_order() -> None:
    order = repeat_order([1, 2, 4, 8], 3, seed=0)
    assert sorted(order) == [(b, k) for b in (1, 2, 4, 8) for k in (1, 2, 3)]
    assert order == repeat_order([8, 4, 2, 1], 3, seed=0)  # the seed alone decides
    assert order != sorted(order) and order != sorted(order, key=lambda p: (p[1], p[0]))
    assert repeat_order([1, 2, 4, 8], 3, seed=1) != order
    assert repeat_order([1, 2], 0, seed=0) == []


def test_settled_and_band() -> None:
    steady = [(t, 45.0 + (0.5 if t % 2 else 0.0)) for t in range(0, 21)]
    assert settled(steady, now_s=20)
    cooling = [(t, 60.0 - t) for t in range(0, 21)]
    assert not settled(cooling, now_s=20)
    assert not settled([(15.0, 45.0), (20.0, 45.0)], now_s=20)  # does not cover the span yet
    assert in_band(47.0, 45.0) and not in_band(48.5, 45.0)


def pr(b: int, repeat: int, jpt: float, tps: float, status: PointStatus = PointStatus.OK) -> PointResult:
    return PointResult(batch_size=b, status=status, j_per_token=jpt, tokens_per_s=tps,
                       gco2e_per_token=jpt / 3.6e6 * 400, output_tokens=100, n_requests=10,
                       duration_s=20.0, repeat=repeat, j_per_token_ci95=0.001)


def test_combining_re_measures_by_hand() -> None:
    rows = [pr(4, 0, 0.50, 100.0), pr(2, 0, 0.80, 60.0), pr(4, 2, 0.42, 110.0),
            pr(4, 1, 0.40, 100.0), pr(4, 3, 0.44, 105.0)]
    combined = combine(rows)
    assert [p.batch_size for p in combined] == [4, 2]
    c4 = combined[0]
    # the search's 0.50 is left out: mean of 0.42, 0.40, 0.44 = 0.42, s = 0.02,
    # half-width t(0.975, 2) = 4.303 x 0.02 / sqrt(3)
    assert c4.j_per_token == pytest.approx(0.42)
    assert c4.j_per_token_ci95 == pytest.approx(4.303 * 0.02 / math.sqrt(3))
    assert c4.j_per_token_cv == pytest.approx(0.02 / 0.42)
    assert c4.repeats == 3 and c4.ci_batches == 3
    assert c4.output_tokens == 300 and c4.duration_s == pytest.approx(20.0)
    assert c4.tokens_per_s == pytest.approx(105.0)
    assert combined[1] is rows[1]  # never re-measured: its one measurement stands


def test_failed_re_measures_do_not_count() -> None:
    rows = [pr(8, 0, 0.3, 200.0), pr(8, 1, 0.31, 199.0), pr(8, 2, 0.0, 0.0, PointStatus.OOM)]
    assert combine(rows)[0] is rows[1]
    assert combine_repeats([rows[1]]) is rows[1]
