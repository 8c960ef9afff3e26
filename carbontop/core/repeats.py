"""Repeated measurements of a point: their order, the temperature they start at, and how they
combine into one row.

A sweep's search runs batch sizes in increasing order while the GPU warms, so heat and batch size
are confounded. `--repeats N` re-measures every batch that fit N more times, all (batch, repeat)
pairs in one shuffled, seeded order, each starting only once the GPU is inside a temperature
band; the combined row then gives the mean over the re-measures, with a 95% interval and CV
across them.
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Sequence

from carbontop.core.point import parse_per_gpu, per_gpu_text
from carbontop.core.records import PointResult, PointStatus
from carbontop.core.stats import mean_ci

# The band. The GPU has settled when its temperature moved by at most SETTLE_TOL_C over the last
# SETTLE_SPAN_S (idle, model loaded); that temperature is the band's centre. A measurement starts
# once the hottest GPU is within BAND_HALF_WIDTH_C of the centre, waiting at most BAND_WAIT_S (the
# row keeps its start temperature either way). 3 C is narrow beside the rise from batch 1 to batch
# 128 in carbontop's H100 sample run (about 40 C to 60 C), and wide enough for NVML's whole-degree
# readings to settle inside it.
SETTLE_SPAN_S = 10.0
SETTLE_TOL_C = 1.0
SETTLE_MAX_WAIT_S = 120.0
BAND_HALF_WIDTH_C = 3.0
BAND_WAIT_S = 60.0


def repeat_order(batch_sizes: Sequence[int], repeats: int, seed: int) -> list[tuple[int, int]]:
    """Every (batch size, repeat 1..N) pair once, in an order shuffled by `seed`."""
    pairs = [(b, k) for k in range(1, repeats + 1) for b in sorted(set(batch_sizes))]
    random.Random(seed).shuffle(pairs)
    return pairs


def settled(readings: Sequence[tuple[float, float]], now_s: float,
            span_s: float = SETTLE_SPAN_S, tol_c: float = SETTLE_TOL_C) -> bool:
    """True where the (time, temperature) readings of the last span_s moved by at most tol_c and
    cover that span (a reading at or before now - span_s is among them)."""
    recent = [temp for t, temp in readings if t >= now_s - span_s]
    older = [t for t, _ in readings if t <= now_s - span_s]
    if not recent or not older:
        return False
    return max(recent) - min(recent) <= tol_c


def in_band(temp_c: float, centre_c: float, half_width_c: float = BAND_HALF_WIDTH_C) -> bool:
    return abs(temp_c - centre_c) <= half_width_c


_SUMMED = {"n_requests", "input_tokens", "output_tokens"}
_COMBINED = {"j_per_token": ("j_per_token_ci95", "j_per_token_cv"),
             "tokens_per_s": ("tokens_per_s_ci95", "tokens_per_s_cv"),
             "gco2e_per_token": ("gco2e_per_token_ci95", "gco2e_per_token_cv")}


def combine_repeats(measures: Sequence[PointResult]) -> PointResult:
    """One row from several measurements of one batch size: sums of the counts, means of every
    other figure, and for J/token, tokens/s and gCO2e/token the 95% interval and CV across the
    measurements (replacing the sub-window ones)."""
    if not measures:
        raise ValueError("nothing to combine")
    if len(measures) == 1:
        return measures[0]
    first = measures[0]
    changes: dict[str, object] = {}
    for f in dataclasses.fields(PointResult):
        values = [getattr(m, f.name) for m in measures]
        if f.name in _SUMMED:
            changes[f.name] = sum(values)
        elif all(isinstance(v, float) for v in values) and f.name not in ("window_start_s",
                                                                          "window_end_s"):
            changes[f.name] = sum(values) / len(values)
    for figure, (ci_name, cv_name) in _COMBINED.items():
        values = [getattr(m, figure) for m in measures]
        if all(v is not None for v in values):
            est = mean_ci(values)
            changes.update({figure: est.value, ci_name: est.half_width, cv_name: est.cv})
    per_gpu = [parse_per_gpu(m.energy_per_gpu_j) for m in measures]
    if per_gpu[0] and all(p.keys() == per_gpu[0].keys() for p in per_gpu):
        changes["energy_per_gpu_j"] = per_gpu_text(
            {gpu: sum(p[gpu] for p in per_gpu) / len(per_gpu) for gpu in per_gpu[0]})
    messages = list(dict.fromkeys(m.message for m in measures if m.message))
    changes.update(ci_batches=len(measures), repeats=len(measures), repeat=0,
                   message="; ".join(messages),
                   energy_incomplete=any(m.energy_incomplete for m in measures),
                   window_start_s=min((m.window_start_s for m in measures
                                       if m.window_start_s is not None), default=None),
                   window_end_s=max((m.window_end_s for m in measures
                                     if m.window_end_s is not None), default=None))
    return dataclasses.replace(first, **changes)


def combine(points: Sequence[PointResult]) -> list[PointResult]:
    """One row per batch size, in the order sizes were first measured. Where a size was
    re-measured (repeat >= 1, status ok), its re-measures combine (combine_repeats) and the
    search's own measurement, taken in increasing-size order as the GPU warmed, is left out;
    otherwise its one measurement stands."""
    by_size: dict[int, list[PointResult]] = defaultdict(list)
    for p in points:
        by_size[p.batch_size].append(p)
    out = []
    for measures in by_size.values():
        again = [m for m in measures if m.repeat >= 1 and m.status is PointStatus.OK]
        out.append(combine_repeats(again) if again else measures[0])
    return out
