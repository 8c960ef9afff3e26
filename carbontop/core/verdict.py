"""What a saved run concluded, for every view that shows it: its memory boundary and its
recommended batch.

A sweep records both when it ends. One that ended without its closing record (killed, or copied
off its machine while it ran) has points but neither: they are then made from the saved points,
by the sweep's own rules (a point that did not fit bounds the search, core/records.PointStatus;
the recommendation, core/carbon.py), and the recommendation's line says so, rather than claiming
that no batch met the latency target or that nothing failed.
"""

from __future__ import annotations

from typing import NamedTuple

from carbontop.core.carbon import DEFAULT_SLO_S_PER_TOKEN, recommend
from carbontop.core.records import PointStatus
from carbontop.core.repeats import combine
from carbontop.core.store import SavedRun


class Boundary(NamedTuple):
    largest_ok: int | None  # the largest batch that ran
    smallest_failed: int | None  # the smallest above it that did not fit (None: none failed)


def boundary(run: SavedRun) -> Boundary:
    """The run's memory boundary: as recorded, else from its points."""
    status = run.meta.status
    if status.largest_ok_batch is not None or status.smallest_failed_batch is not None:
        return Boundary(status.largest_ok_batch, status.smallest_failed_batch)
    ok = [p.batch_size for p in run.points if p.status is PointStatus.OK]
    largest = max(ok) if ok else None
    failed = [p.batch_size for p in run.points if p.status.is_boundary
              and (largest is None or p.batch_size > largest)]
    return Boundary(largest, min(failed) if failed else None)


class SavedRecommendation(NamedTuple):
    batch_size: int | None
    line: str  # the summary's sentence for it ("" where the run has no points)


def recommendation(run: SavedRun) -> SavedRecommendation:
    """The recommended batch and the summary's line for it. A sweep that ended without its
    closing record (killed, or copied while it ran) saved no recommendation: it is made from the
    saved points by the sweep's own rule (core/carbon.py), and the line says so."""
    status, settings = run.meta.status, run.meta.settings
    slo = settings.slo_s_per_token if settings.slo_s_per_token is not None else DEFAULT_SLO_S_PER_TOKEN
    if status.recommendation:
        return SavedRecommendation(status.recommended_batch, f"recommended {status.recommendation} *")
    if status.recommended_batch is not None:  # a run made before reasons were kept
        return SavedRecommendation(status.recommended_batch, (
            f"recommended batch (lowest total gCO2e/token within {slo} s/token): "
            f"{status.recommended_batch} *"))
    if not run.points:
        return SavedRecommendation(None, "")
    if run.state == "done":
        return SavedRecommendation(None, "no batch met the latency target: none recommended")
    ok = [p for p in combine(run.points) if p.status is PointStatus.OK]
    rec = recommend(ok, slo, settings.slo_tpot_p90_s) if ok else None
    if rec is None:
        return SavedRecommendation(
            None, "no recommendation was recorded, and no saved point meets the latency target")
    return SavedRecommendation(
        rec.batch_size, f"recommended {rec.reason} * (made from the saved points: the sweep recorded none)")
