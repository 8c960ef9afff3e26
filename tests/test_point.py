"""A point's figures over its window, with the sub-window intervals, checked by hand."""

from __future__ import annotations

import math

import pytest

from carbontop.core.point import (
    PointEnergy,
    RunConditions,
    SubWindow,
    batch_sub_window_bounds,
    point_figures,
    sub_window_bounds,
)
from carbontop.core.records import Batching, EnergyReading, EngineRun, RequestRecord, StepTimeline
from carbontop.core.window import Window


def test_sub_windows_span_consecutive_readings_inside_the_window() -> None:
    readings = [0.5 * k for k in range(0, 40)]  # every 0.5 s from 0 to 19.5
    w = Window(2.0, 12.0)
    bounds = sub_window_bounds(readings, w)
    # readings 2.0 .. 12.0 inside: 20 intervals in 10 runs of 2
    assert len(bounds) == 10
    assert bounds[0] == (2.0, 3.0) and bounds[-1] == (11.0, 12.0)
    assert all(b0 == a1 for (_, b0), (a1, _) in zip(bounds, bounds[1:], strict=False))
    # fewer readings than sub-windows: one interval each
    assert sub_window_bounds([2.5, 3.0, 4.0], w) == [(2.5, 3.0), (3.0, 4.0)]
    assert sub_window_bounds([2.5], w) == []
    # 25 intervals into 10 runs of 2 or 3, none empty, covering all of them
    many = sub_window_bounds([2.0 + 0.4 * k for k in range(26)], w)
    assert len(many) == 10 and many[0][0] == 2.0 and many[-1][1] == pytest.approx(12.0)


def test_static_sub_windows_are_runs_of_whole_batches() -> None:
    # five static batches of two requests, starting at 0, 4, 9, 13 and 18 s; W = [0, 22]
    starts = [0.0, 4.0, 9.0, 13.0, 18.0]
    records = [RequestRecord(2, 2 * k + j, k, 10, 5, t, 0.5, 3.5 + j * 0.4)
               for k, t in enumerate(starts) for j in range(2)]
    w = Window(0.0, 22.0)
    assert batch_sub_window_bounds(records, w) == [
        (0.0, 4.0), (4.0, 9.0), (9.0, 13.0), (13.0, 18.0), (18.0, 22.0)]
    # two runs: cut at round(5 / 2) = 2 (half to even), so batches {0, 1} and {2, 3, 4}
    assert batch_sub_window_bounds(records, w, target=2) == [(0.0, 9.0), (9.0, 22.0)]
    # one batch has nothing to compare it with
    assert batch_sub_window_bounds(records[:2], Window(0.0, 3.9)) == []


def _run() -> EngineRun:
    # b = 2, one decode step a second, each making 2 tokens with both slots live
    ends = tuple(float(t) for t in range(1, 21))
    tl = StepTimeline(end_s=ends, tokens=(2,) * 20, live=(2,) * 20, slots=2,
                      kv_tokens_read=(100,) * 20, decode=(False,) + (True,) * 19)
    records = (
        RequestRecord(2, 0, -1, 10, 12, 0.0, 1.0, 11.0),
        RequestRecord(2, 1, -1, 10, 20, 0.0, 1.0, 19.0),
        RequestRecord(2, 2, -1, 10, 9, 11.0, 1.0, 9.0, finished=False),
    )
    return EngineRun(2, 2.0, 12.0, records, batching=Batching.INFLIGHT, timeline=tl)


def _cond() -> RunConditions:
    return RunConditions(model=None, dtype="bf16", gpu_specs=(), n_gpus=1, peak_flops_per_gpu=None,
                         peak_bw_bytes_s=None, loaded_idle_power_w=40.0, lifetime_years=5.0)


def test_point_figures_by_hand() -> None:
    w = Window(2.0, 12.0)
    # ten 1-second sub-windows alternating 90 J and 110 J, 2 tokens each; 1000 J over W
    subs = tuple(SubWindow(float(t), float(t + 1), 90.0 if t % 2 else 110.0,
                           (90.0 if t % 2 else 110.0) / 3.6e6 * 400) for t in range(2, 12))
    energy = PointEnergy(EnergyReading(1000.0, "nvml-counter", 990.0), 1000.0 / 3.6e6 * 400,
                         400.0, subs)
    p = point_figures(_run(), w, energy, _cond(), window_target_s=10.0)
    # steps ready in (2, 12]: at 3 .. 12, 10 steps x 2 tokens
    assert p.output_tokens == 20 and p.duration_s == 10.0
    assert p.tokens_per_s == 2.0 and p.j_per_token == 50.0
    assert p.avg_power_w == 100.0 and p.idle_corrected_energy_j == 1000.0 - 40.0 * 10
    # only request 0 finished inside W (at 11); its e2e 11 s over 12 tokens
    assert p.n_requests == 1 and p.s_per_token == pytest.approx(11 / 12)
    # per-sub-window J/token 45 / 55 alternating: mean 50, s = sqrt(10 x 25 / 9),
    # half-width t(0.975, 9) = 2.262 x s / sqrt(10)
    s = math.sqrt(10 * 25 / 9)
    assert p.ci_batches == 10
    assert p.j_per_token_ci95 == pytest.approx(2.262 * s / math.sqrt(10))
    assert p.j_per_token_cv == pytest.approx(s / 50)
    assert p.gco2e_per_token == pytest.approx(50 / 3.6e6 * 400)
    assert p.gco2e_per_token_ci95 == pytest.approx(2.262 * s / math.sqrt(10) / 3.6e6 * 400)
    # every sub-window made 2 tokens a second: no spread at all
    assert p.tokens_per_s_ci95 == pytest.approx(0.0) and p.tokens_per_s_cv == pytest.approx(0.0)
    assert p.slot_occupancy == 1.0 and p.batching == "inflight"
    assert p.point_s == 20.0 and p.window_target_s == 10.0
    assert not p.energy_incomplete and "no interval" not in p.message
    # J/token 55, 45, 55, ... at sub-window middles 2.5 .. 11.5: slope -25 / 82.5 per second,
    # over the 9 s between the first and last middle, over 50 J/token; its interval, t(0.975, 8)
    # x sqrt((250 - 25^2 / 82.5) / 8 / 82.5) x 9 / 50, holds zero: steady, no note
    assert p.j_per_token_drift == pytest.approx(-25 / 82.5 * 9 / 50)
    assert p.j_per_token_drift_ci95 == pytest.approx(
        2.306 * math.sqrt((250 - 25 ** 2 / 82.5) / 8 / 82.5) * 9 / 50)
    assert "not steady" not in p.message


def test_a_window_whose_j_per_token_climbs_says_it_was_not_steady() -> None:
    # J/token 45, 46, ... 54 over ten 1-second sub-windows of 2 tokens: 49.5 over W, a slope of
    # 1 J/token a second, 9 J/token from the first middle to the last: +18%, an exact line
    subs = tuple(SubWindow(float(t), float(t + 1), 2.0 * (43 + t), 0.0) for t in range(2, 12))
    energy = PointEnergy(EnergyReading(990.0, "nvml-counter", None), 0.0, None, subs)
    p = point_figures(_run(), Window(2.0, 12.0), energy, _cond())
    assert p.j_per_token_drift == pytest.approx(9 / 49.5)
    assert p.j_per_token_drift_ci95 == pytest.approx(0.0, abs=1e-9)
    assert "not steady: J/token rose 18% across the window" in p.message


def test_missing_end_reading_is_flagged_never_reported_whole() -> None:
    energy = PointEnergy(EnergyReading(900.0, "nvml-counter", None), 0.0, None, (), end_read=False)
    p = point_figures(_run(), Window(2.0, 12.0), energy, _cond())
    assert p.energy_incomplete
    assert "no energy-counter reading came after the window's end" in p.message
    assert "no interval" in p.message and p.j_per_token_ci95 is None
