"""What each chart draws, reduced to plain numbers from sweep points and telemetry samples.

Three charts, the same in the app, in `carbontop compare` and in `carbontop plot`'s files:

- efficiency: J/token and gCO2e/token against batch size (drawn on a log2 axis), with the
  measurement's confidence interval as an error bar where a point carries one;
- trade-off: the latency a user feels (s/token, or TPOT p90) against gCO2e/token, with the latency
  target and the recommended and lowest-carbon points;
- power trace: each GPU's power over the sweep, with every point's measured window.

Only points that ran to the end at the batch size asked (status ok) are drawn: an OOM point has
no figures, and a KV-bound point ran fewer requests at once than its batch size says.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from carbontop.core.carbon import lowest_carbon_batch
from carbontop.core.records import PointResult, PointStatus, Sample
from carbontop.core.repeats import combine
from carbontop.core.verdict import recommendation

if TYPE_CHECKING:
    from carbontop.core.store import SavedRun


class Metric(Enum):
    """A figure a chart can draw: its points.csv column and how an axis names it."""

    J_PER_TOKEN = ("j_per_token", "J/token")
    TOTAL_GCO2E_PER_TOKEN = ("total_gco2e_per_token", "gCO2e/token")
    OPERATIONAL_GCO2E_PER_TOKEN = ("gco2e_per_token", "operational gCO2e/token")
    S_PER_TOKEN = ("s_per_token", "s/token")
    TPOT_P90_S = ("tpot_p90_s", "TPOT p90 s")

    def __init__(self, column: str, axis_label: str) -> None:
        self.column = column
        self.axis_label = axis_label


@dataclass(frozen=True)
class Series:
    """One line of a chart: (x, y) per measured point, each point's batch size beside it."""

    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    # per point, the (low, high) bounds of y's confidence interval; None where it has none
    y_interval: tuple[tuple[float, float] | None, ...] = ()

    def __len__(self) -> int:
        return len(self.x)

    @property
    def has_intervals(self) -> bool:
        return any(i is not None for i in self.y_interval)

    def y_errors(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(below, above) distances from y to its bounds, 0 where a point has no interval."""
        below, above = [], []
        for y, interval in zip(self.y, self.y_interval or (None,) * len(self.y), strict=True):
            below.append(0.0 if interval is None else max(0.0, y - interval[0]))
            above.append(0.0 if interval is None else max(0.0, interval[1] - y))
        return tuple(below), tuple(above)


class MarkKind(Enum):
    RECOMMENDED = "recommended"
    LOWEST_CARBON = "lowest carbon"


@dataclass(frozen=True)
class Mark:
    kind: MarkKind
    batch_size: int
    x: float
    y: float


@dataclass(frozen=True)
class TradeoffChart:
    series: Series  # x: gCO2e/token, y: the latency metric
    carbon: Metric
    latency: Metric
    target: float | None  # the latency target on the y axis, None where the run set none
    marks: tuple[Mark, ...]


@dataclass(frozen=True)
class Window:
    """A point's measured window, in seconds from the trace's start."""

    batch_size: int
    start_s: float
    end_s: float
    status: str


@dataclass(frozen=True)
class PowerTrace:
    """Power per GPU (seconds from the first sample, W) and the windows the points measured."""

    t0_s: float  # Unix time of the trace's first sample
    gpus: tuple[Series, ...]  # one per device; label "GPU 0" (or "CPU"); batch_sizes empty
    windows: tuple[Window, ...]

    @property
    def duration_s(self) -> float:
        ends = [s.x[-1] for s in self.gpus if s.x] + [w.end_s for w in self.windows]
        return max(ends, default=0.0)


@dataclass(frozen=True)
class ChartRun:
    """What the charts need of one run, live or saved."""

    label: str
    points: tuple[PointResult, ...] = ()
    samples: Sequence[Sample] = ()
    recommended: int | None = None
    slo_s_per_token: float | None = None
    t0_s: float | None = None  # where the power trace's clock starts (default: first sample)


def chart_run(saved: SavedRun, label: str = "") -> ChartRun:
    """A saved run as the charts read it."""
    return ChartRun(
        label=label or Path(saved.path).name,
        points=saved.points,
        samples=saved.samples,
        recommended=recommendation(saved).batch_size,
        slo_s_per_token=saved.meta.settings.slo_s_per_token,
    )


# ---- points -------------------------------------------------------------------------------


def _value(point: PointResult, column: str) -> float | None:
    value = getattr(point, column, None)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def measured(points: Iterable[PointResult]) -> list[PointResult]:
    """Points that ran to the end at their batch size, one per batch size, smallest first; a
    batch size measured again (repeats) is their combination, as the table shows it."""
    ok = [p for p in combine(list(points)) if p.status == PointStatus.OK]
    return sorted(ok, key=lambda p: int(p.batch_size))


def carbon_metric(points: Sequence[PointResult]) -> Metric:
    """Total gCO2e/token where every measured point has it (a GPU with a published embodied
    footprint), otherwise operational for all, so points are never drawn on different bases
    (the rule carbon.recommend_batch applies)."""
    ok = measured(points)
    if ok and all(_value(p, Metric.TOTAL_GCO2E_PER_TOKEN.column) is not None for p in ok):
        return Metric.TOTAL_GCO2E_PER_TOKEN
    return Metric.OPERATIONAL_GCO2E_PER_TOKEN


def _interval(point: PointResult, column: str) -> tuple[float, float] | None:
    """The 95% confidence interval of `column` where the point carries one (`<column>_ci95`, a
    half-width: J/token, tokens/s and operational gCO2e/token have them); None for the others
    (total gCO2e/token has none of its own) and for runs recorded before points carried them."""
    value, half = _value(point, column), _value(point, f"{column}_ci95")
    if value is None or half is None:
        return None
    return (value - abs(half), value + abs(half))


def batch_series(points: Sequence[PointResult], metric: Metric, label: str = "") -> Series:
    """`metric` against batch size, over the measured points that have it."""
    xs, ys, batches, intervals = [], [], [], []
    for p in measured(points):
        y = _value(p, metric.column)
        if y is None:
            continue
        xs.append(float(p.batch_size))
        ys.append(y)
        batches.append(int(p.batch_size))
        intervals.append(_interval(p, metric.column))
    return Series(label or metric.axis_label, tuple(xs), tuple(ys), tuple(batches), tuple(intervals))


def tradeoff(
    points: Sequence[PointResult],
    *,
    latency: Metric = Metric.S_PER_TOKEN,
    target: float | None = None,
    recommended: int | None = None,
    label: str = "",
) -> TradeoffChart:
    """Latency against carbon per token, one dot per measured point (batch size beside it)."""
    carbon = carbon_metric(points)
    xs, ys, batches = [], [], []
    for p in measured(points):
        x, y = _value(p, carbon.column), _value(p, latency.column)
        if x is None or y is None:
            continue
        xs.append(x)
        ys.append(y)
        batches.append(int(p.batch_size))
    series = Series(label or latency.axis_label, tuple(xs), tuple(ys), tuple(batches),
                    (None,) * len(xs))
    marks = []
    at = {b: (x, y) for b, x, y in zip(batches, xs, ys, strict=True)}
    for kind, batch in ((MarkKind.LOWEST_CARBON, lowest_carbon_batch(points)),
                        (MarkKind.RECOMMENDED, recommended)):
        if batch is not None and batch in at:
            marks.append(Mark(kind, batch, *at[batch]))
    return TradeoffChart(series, carbon, latency, target, tuple(marks))


# ---- telemetry ----------------------------------------------------------------------------


def device_label(index: int) -> str:
    return "CPU" if index < 0 else f"GPU {index}"


def power_trace(
    samples: Iterable[Sample],
    points: Sequence[PointResult] = (),
    *,
    t0_s: float | None = None,
) -> PowerTrace:
    """Each device's power readings and each point's window, on one clock starting at `t0_s`
    (default: the first sample). Samples with no power reading are left out of the line."""
    by_device: dict[int, list[tuple[float, float]]] = {}
    first: float | None = None
    for s in samples:
        first = s.t_s if first is None else min(first, s.t_s)
        if s.power_w is not None:
            by_device.setdefault(s.gpu_index, []).append((s.t_s, s.power_w))
    windows_abs = [
        (int(p.batch_size), float(p.window_start_s), float(p.window_end_s), p.status.value)
        for p in points
        if p.window_start_s is not None and p.window_end_s is not None
    ]
    if t0_s is None:
        starts = [w[1] for w in windows_abs] + ([first] if first is not None else [])
        t0_s = min(starts, default=0.0)
    gpus = []
    for index in sorted(by_device):
        readings = sorted(by_device[index])
        gpus.append(Series(device_label(index), tuple(t - t0_s for t, _ in readings),
                           tuple(w for _, w in readings), ()))
    windows = tuple(Window(b, start - t0_s, end - t0_s, status)
                    for b, start, end, status in sorted(windows_abs, key=lambda w: w[1]))
    return PowerTrace(t0_s, tuple(gpus), windows)


def thin(series: Series, max_points: int) -> Series:
    """At most about `max_points` points, keeping each bucket's highest reading (a power spike
    must survive being drawn on 80 columns), in time order, ending on the last reading."""
    n = len(series.x)
    if max_points <= 0 or n <= max_points:
        return series
    step = math.ceil(n / max_points)
    xs, ys = [], []
    for start in range(0, n, step):
        chunk = range(start, min(n, start + step))
        peak = max(chunk, key=lambda i: series.y[i])
        xs.append(series.x[peak])
        ys.append(series.y[peak])
    if xs[-1] != series.x[-1]:
        xs.append(series.x[-1])
        ys.append(series.y[-1])
    return Series(series.label, tuple(xs), tuple(ys), (), ())
