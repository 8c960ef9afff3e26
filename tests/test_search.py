from __future__ import annotations

import pytest

from carbontop.core.search import BatchPlanner


def drive(planner: BatchPlanner, boundary: int | None, limit: int = 100) -> list[int]:
    """Run the planner against a GPU where batches up to `boundary` fit (None: all fit)."""
    tried = []
    while (b := planner.next()) is not None and len(tried) < limit:
        tried.append(b)
        planner.report(b, fits=boundary is None or b <= boundary)
    return tried


def test_doubling_then_bisection_finds_exact_boundary() -> None:
    planner = BatchPlanner(max_batch=1024)
    tried = drive(planner, boundary=22)  # the paper's A100 boundary for Llama-2-7B
    assert tried[:6] == [1, 2, 4, 8, 16, 32]
    assert planner.largest_ok == 22 and planner.smallest_failed == 23
    # bisection between 16 and 32: 24, 20, 22, 23
    assert tried[6:] == [24, 20, 22, 23]


@pytest.mark.parametrize("boundary", [1, 2, 3, 5, 7, 64, 100, 255, 511])
def test_boundary_found_in_logarithmic_points(boundary: int) -> None:
    planner = BatchPlanner(max_batch=4096)
    tried = drive(planner, boundary)
    assert planner.largest_ok == boundary
    assert planner.smallest_failed == boundary + 1
    assert len(tried) <= 2 * (boundary.bit_length() + 1)


def test_nothing_fits() -> None:
    planner = BatchPlanner()
    assert drive(planner, boundary=0) == [1]
    assert planner.largest_ok is None and planner.smallest_failed == 1
    assert "even batch size 1" in planner.describe()


def test_stops_at_max_batch_when_everything_fits() -> None:
    planner = BatchPlanner(max_batch=48)
    assert drive(planner, boundary=None) == [1, 2, 4, 8, 16, 32, 48]
    assert planner.smallest_failed is None


def test_oom_in_the_middle_of_an_explicit_list_skips_larger_sizes() -> None:
    planner = BatchPlanner([1, 4, 8, 16, 32])
    assert drive(planner, boundary=10) == [1, 4, 8, 16]
    assert planner.largest_ok == 8 and planner.smallest_failed == 16


def test_planned_ladder_and_describe() -> None:
    planner = BatchPlanner(max_batch=20)
    assert planner.planned() == (1, 2, 4, 8, 16, 20)
    planner.report(1, True)
    planner.report(2, True)
    planner.report(4, False)
    assert planner.next() == 3
    assert planner.planned() == (3,)
    assert "bisecting between 2" in planner.describe()
