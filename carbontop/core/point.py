"""One sweep point's figures, from what the engine recorded and what telemetry measured.

Pure arithmetic: the runner gathers the readings (sampler, intensity source) and hands them here,
so every figure can be checked by hand from plain numbers. Everything is counted inside the
point's steady-state window W (core/window.py) only.

Error bars come from sub-windows of W bounded by real energy-counter readings: the readings
inside W are split into about `TARGET_SUB_WINDOWS` runs of consecutive readings, and each run is
one batch of the batch-means interval (core/stats.py). The slivers between W's edges and the
first and last reading inside it count toward the point's figures but not toward the interval,
since their energy rests on an interpolated edge.

Static batches are not exchangeable within a batch (a batch starts full and ends with one long
request decoding alone), so there the unit is whole batches: W is cut at batch starts into about
`TARGET_SUB_WINDOWS` runs of consecutive batches, and each run's energy is the sampler's over its
span (edges between counter readings split by power, as for W itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from carbontop.core import carbon, metrics
from carbontop.core.hardware import GpuSpec
from carbontop.core.modelspec import ModelSpec
from carbontop.core.records import (
    Batching,
    EnergyReading,
    EngineRun,
    PointResult,
    PointStatus,
    RequestRecord,
)
from carbontop.core.stats import Estimate, ratio_ci, slope_ci
from carbontop.core.window import Window, tokens_between

# Batch means want enough batches for the t interval to be tight and few enough for each to hold
# many steps: 10 is the usual choice (Schmeiser, "Batch Size Effects in the Analysis of Simulation
# Output", Operations Research 30(3), 1982, finds little gained beyond 10 to 30 batches).
TARGET_SUB_WINDOWS = 10


def sub_window_bounds(reading_times_s: Sequence[float], window: Window,
                      target: int = TARGET_SUB_WINDOWS) -> list[tuple[float, float]]:
    """Sub-windows of W, each spanning consecutive counter readings inside W.

    The m readings inside W make m - 1 intervals; they are grouped, in order, into
    min(target, m - 1) runs of as equal a count as integers allow. Empty where fewer than two
    readings fall inside W.
    """
    inside = sorted({t for t in reading_times_s if window.start_s <= t <= window.end_s})
    return _runs(inside, target)


def _runs(edges: Sequence[float], target: int) -> list[tuple[float, float]]:
    """The len(edges) - 1 intervals between consecutive edges, grouped in order into
    min(target, intervals) runs of as equal a count as integers allow."""
    n_intervals = len(edges) - 1
    if n_intervals < 1:
        return []
    k = min(target, n_intervals)
    cuts = [round(i * n_intervals / k) for i in range(k + 1)]
    return [(edges[a], edges[b]) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def batch_sub_window_bounds(records: Sequence[RequestRecord], window: Window,
                            target: int = TARGET_SUB_WINDOWS) -> list[tuple[float, float]]:
    """Sub-windows of W for static batches: runs of consecutive whole batches.

    W is cut at each batch's start (the first batch's start is W's); the n batches are grouped,
    in order, into min(target, n) runs of as equal a count as integers allow, the last run ending
    at W's end. Empty where W holds fewer than two batches.
    """
    starts: dict[int, float] = {}
    for r in records:
        if window.start_s <= r.start_s < window.end_s:
            starts[r.batch_index] = min(starts.get(r.batch_index, r.start_s), r.start_s)
    edges = sorted(starts.values())
    if len(edges) < 2:
        return []
    return _runs([window.start_s, *edges[1:], window.end_s], target)


@dataclass(frozen=True)
class SubWindow:
    """What the meter saw over one sub-window: two counter readings apart (in flight), or a run
    of whole static batches."""

    start_s: float
    end_s: float
    energy_j: float
    gco2e: float  # operational, PUE included


@dataclass(frozen=True)
class PointEnergy:
    """Telemetry over one point's window, gathered by the runner."""

    reading: EnergyReading  # energy over W
    gco2e: float  # operational grams over W, PUE included
    intensity_gco2e_per_kwh: float | None  # energy-weighted mean over W
    sub_windows: tuple[SubWindow, ...]
    end_read: bool = True  # False: no counter reading came after W's end (energy cut short)
    peak_mem_bytes: int | None = None


@dataclass(frozen=True)
class RunConditions:
    """What stays the same across a run's points."""

    model: ModelSpec | None
    dtype: str
    gpu_specs: tuple[GpuSpec | None, ...]
    n_gpus: int
    peak_flops_per_gpu: float | None  # dense peak at the run's dtype
    peak_bw_bytes_s: float | None
    loaded_idle_power_w: float | None  # idle with the model loaded and clocks settled
    lifetime_years: float


# A drift smaller than this share of J/token is left unremarked even where its interval excludes
# zero: the window is steady enough for the figure to be read as one number.
DRIFT_NOTE_SHARE = 0.05


@dataclass(frozen=True)
class Intervals:
    j_per_token: Estimate | None
    tokens_per_s: Estimate | None
    gco2e_per_token: Estimate | None
    # J/token's fitted change across W, relative to J/token over W, with its 95% half-width
    j_per_token_drift: Estimate | None = None


def sub_window_intervals(run: EngineRun, subs: Sequence[SubWindow]) -> Intervals:
    """J/token, tokens/s and gCO2e/token over the sub-windows, each with its interval."""
    if len(subs) < 1:
        return Intervals(None, None, None)
    tokens = [tokens_between(s.start_s, s.end_s, run.timeline, run.records) for s in subs]
    if sum(tokens) <= 0:
        return Intervals(None, None, None)
    j_per_token = ratio_ci([s.energy_j for s in subs], tokens)
    return Intervals(
        j_per_token=j_per_token,
        tokens_per_s=ratio_ci(tokens, [s.end_s - s.start_s for s in subs]),
        gco2e_per_token=ratio_ci([s.gco2e for s in subs], tokens),
        j_per_token_drift=_drift(subs, tokens, j_per_token.value),
    )


def _drift(subs: Sequence[SubWindow], tokens: Sequence[float], j_per_token: float) -> Estimate | None:
    """J/token's least-squares change from the first sub-window's middle to the last's, relative
    to the point's J/token (sub-windows without tokens carry no ratio and are left out)."""
    pairs = [((s.start_s + s.end_s) / 2, s.energy_j / n) for s, n in zip(subs, tokens, strict=True)
             if n > 0]
    if len(pairs) < 3 or j_per_token <= 0:
        return None
    span_s = pairs[-1][0] - pairs[0][0]
    slope = slope_ci([t for t, _ in pairs], [j for _, j in pairs])
    scale = span_s / j_per_token
    return Estimate(slope.value * scale,
                    slope.half_width * scale if slope.half_width is not None else None, None, slope.n)


def _hw(e: Estimate | None) -> float | None:
    return e.half_width if e is not None else None


def _cv(e: Estimate | None) -> float | None:
    return e.cv if e is not None else None


def point_figures(run: EngineRun, window: Window, energy: PointEnergy, cond: RunConditions,
                  status: PointStatus = PointStatus.OK, message: str = "",
                  window_target_s: float | None = None) -> PointResult:
    """Every figure of one point over its window W (see README, "What the figures mean")."""
    records = run.records
    w_s = window.length_s
    tokens = tokens_between(window.start_s, window.end_s, run.timeline, records)
    lat = metrics.latency_figures(records, window, tokens)
    e_j = energy.reading.energy_j
    emb_g = (carbon.embodied_gco2e(cond.gpu_specs, w_s, cond.lifetime_years)
             if cond.gpu_specs else None)
    mfu = mbu = None
    if cond.model is not None:
        mfu = metrics.mfu(records, cond.model, w_s, cond.peak_flops_per_gpu, cond.n_gpus, window)
        traffic = metrics.decode_traffic(records, cond.model, cond.dtype, window, run.timeline)
        mbu = metrics.mbu(traffic, cond.peak_bw_bytes_s, cond.n_gpus)
    op_per_tok = energy.gco2e / tokens if tokens else None
    emb_per_tok = emb_g / tokens if emb_g is not None and tokens else None
    ci = sub_window_intervals(run, energy.sub_windows)
    notes = [message] if message else []
    notes.extend(n for n in run.notes if n)
    if not energy.end_read:
        notes.append("no energy-counter reading came after the window's end: the energy stops "
                     "at the last reading, so J/token and carbon are low")
    drift = ci.j_per_token_drift
    if (drift is not None and drift.half_width is not None and abs(drift.value) > drift.half_width
            and abs(drift.value) >= DRIFT_NOTE_SHARE):
        notes.append(f"not steady: J/token {'rose' if drift.value > 0 else 'fell'} "
                     f"{abs(drift.value):.0%} across the window (a linear fit over its "
                     "sub-windows, outside the fit's 95% interval)")
    if ci.j_per_token is None or ci.j_per_token.half_width is None:
        notes.append("fewer than two whole batches inside the window: no interval"
                     if run.batching is Batching.STATIC else
                     "fewer than three energy-counter readings inside the window: no interval")
    finished = metrics.finished_inside(records, window)
    first = min((r.start_s for r in records), default=window.start_s)
    last = max((r.start_s + r.e2e_s for r in records), default=window.end_s)
    return PointResult(
        batch_size=run.batch_size,
        status=status,
        message="; ".join(notes),
        n_requests=len(finished),
        input_tokens=sum(r.input_tokens for r in finished),
        output_tokens=round(tokens),
        duration_s=w_s,
        window_start_s=window.start_s,
        window_end_s=window.end_s,
        tokens_per_s=lat.tokens_per_s,
        s_per_token=lat.s_per_token,
        ttft_p50_s=lat.ttft_p50_s,
        ttft_p90_s=lat.ttft_p90_s,
        tpot_p50_s=lat.tpot_p50_s,
        tpot_p90_s=lat.tpot_p90_s,
        energy_j=e_j,
        energy_source=energy.reading.source,
        energy_integrated_j=energy.reading.integrated_j,
        idle_corrected_energy_j=metrics.idle_corrected_energy_j(
            energy.reading, cond.loaded_idle_power_w, w_s),
        j_per_token=e_j / tokens if tokens else None,
        intensity_gco2e_per_kwh=energy.intensity_gco2e_per_kwh,
        gco2e_per_token=op_per_tok,
        embodied_gco2e_per_token=emb_per_tok,
        total_gco2e_per_token=(op_per_tok + emb_per_tok)
        if op_per_tok is not None and emb_per_tok is not None else op_per_tok,
        mfu=mfu,
        mbu=mbu,
        peak_mem_gb=energy.peak_mem_bytes / 1e9 if energy.peak_mem_bytes is not None else None,
        avg_power_w=e_j / w_s if w_s > 0 else None,
        concurrency_reached=run.concurrency_reached,
        batching=run.batching.value,
        window_target_s=window_target_s,
        point_s=last - first,
        ci_batches=ci.j_per_token.n if ci.j_per_token is not None else 0,
        j_per_token_ci95=_hw(ci.j_per_token),
        j_per_token_cv=_cv(ci.j_per_token),
        tokens_per_s_ci95=_hw(ci.tokens_per_s),
        tokens_per_s_cv=_cv(ci.tokens_per_s),
        gco2e_per_token_ci95=_hw(ci.gco2e_per_token),
        gco2e_per_token_cv=_cv(ci.gco2e_per_token),
        slot_occupancy=metrics.slot_occupancy(records, run.batch_size, window, run.timeline),
        energy_incomplete=not energy.end_read,
        j_per_token_drift=drift.value if drift is not None else None,
        j_per_token_drift_ci95=drift.half_width if drift is not None else None,
        energy_per_gpu_j=per_gpu_text(energy.reading.per_gpu_j),
    )


def per_gpu_text(per_gpu_j: dict[int, float]) -> str:
    """{0: 600.0, 1: 400.0} -> "0=600;1=400" (GPUs only: a CPU's reading has no index >= 0)."""
    return ";".join(f"{gpu}={j:.6g}" for gpu, j in sorted(per_gpu_j.items()) if gpu >= 0)


def parse_per_gpu(text: str) -> dict[int, float]:
    """points.csv's energy_per_gpu_j back as {GPU index: joules}."""
    out: dict[int, float] = {}
    for part in filter(None, str(text or "").split(";")):
        gpu, _, joules = part.partition("=")
        out[int(gpu)] = float(joules)
    return out
