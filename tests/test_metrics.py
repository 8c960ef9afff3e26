from __future__ import annotations

import pytest

from carbontop.core import metrics
from carbontop.core.modelspec import resolve_model
from carbontop.core.records import Batching, EnergyReading, RequestRecord, StepTimeline
from carbontop.core.window import Window, steady_window


def rec(b: int, i: int, batch: int, n_in: int, n_out: int, start: float, ttft: float, e2e: float) -> RequestRecord:
    return RequestRecord(b, i, batch, n_in, n_out, start, ttft, e2e)


RECORDS = [
    rec(2, 0, 0, 10, 4, 100.0, 0.5, 2.0),
    rec(2, 1, 0, 12, 2, 100.0, 0.5, 1.0),
    rec(2, 2, 1, 8, 5, 102.0, 0.4, 2.4),
    rec(2, 3, 1, 6, 1, 102.0, 0.4, 0.4),
]


def test_percentile_is_linear_interpolation() -> None:
    assert metrics.percentile([1, 2, 3, 4], 50) == 2.5
    assert metrics.percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)
    assert metrics.percentile([], 50) is None


def test_latency_figures_by_hand() -> None:
    lat = metrics.latency_figures(RECORDS, Window(100.0, 104.4), tokens=12)
    assert lat.tokens_per_s == pytest.approx(12 / 4.4)
    # mean of e2e/out: 2/4, 1/2, 2.4/5, 0.4/1
    assert lat.s_per_token == pytest.approx((0.5 + 0.5 + 0.48 + 0.4) / 4)
    assert lat.ttft_p50_s == pytest.approx(0.45)
    # TPOT: (2-0.5)/3 = 0.5, (1-0.5)/1 = 0.5, (2.4-0.4)/4 = 0.5; one-token request excluded
    assert lat.tpot_p50_s == pytest.approx(0.5) and lat.tpot_p90_s == pytest.approx(0.5)


def test_latency_counts_only_requests_inside_the_window() -> None:
    # W = (101, 103]: requests 0 (ends 102.0) and 3 (ends 102.4) finished inside it; the first
    # tokens inside it are those of requests 2 and 3 (102.4)
    lat = metrics.latency_figures(RECORDS, Window(101.0, 103.0), tokens=5)
    assert lat.tokens_per_s == pytest.approx(2.5)
    assert lat.s_per_token == pytest.approx((2.0 / 4 + 0.4 / 1) / 2)
    assert lat.ttft_p50_s == pytest.approx(0.4)


def test_ttft_counts_first_tokens_at_the_windows_opening() -> None:
    # batch 2, in flight: both first tokens come at 100.5, which is where the steady window
    # opens (2 in flight, each with a token); a short point has no refill inside it
    records = [rec(2, 0, -1, 10, 4, 100.0, 0.5, 2.0), rec(2, 1, -1, 12, 4, 100.0, 0.5, 2.5)]
    window = steady_window(records, 2, Batching.INFLIGHT)
    assert window == Window(100.5, 102.0)
    lat = metrics.latency_figures(records, window, tokens=3)
    assert lat.ttft_p50_s == pytest.approx(0.5) and lat.ttft_p90_s == pytest.approx(0.5)
    # a first token before the opening stays out
    late = Window(100.6, 102.0)
    assert metrics.latency_figures(records, late, tokens=3).ttft_p50_s is None


def test_mfu_by_hand() -> None:
    spec = resolve_model("gpt2")
    flops = sum(spec.request_flops(r.input_tokens, r.output_tokens) for r in RECORDS)
    assert metrics.mfu(RECORDS, spec, 4.4, 1e12, 2) == pytest.approx(flops / (4.4 * 1e12 * 2))
    assert metrics.mfu(RECORDS, spec, 4.4, None, 1) is None
    # the whole span as the window counts every request whole
    assert metrics.model_flops(RECORDS, spec, Window(100.0, 104.4)) == pytest.approx(flops)


def test_flops_inside_a_window_by_hand() -> None:
    spec = resolve_model("gpt2")
    # 10 prompt tokens; first token at 1, decode step j's token at 1 + j (j = 1..10)
    r = rec(1, 0, -1, 10, 11, 0.0, 1.0, 11.0)
    assert metrics.decode_steps_inside(r, Window(0.5, 5.0)) == (1, 4)
    assert metrics.decode_steps_inside(r, Window(3.0, 11.0)) == (3, 10)
    assert metrics.model_flops([r], spec, Window(0.5, 5.0)) == pytest.approx(
        spec.prefill_flops(10) + spec.decode_flops(10, 1, 4))
    # the prefill's token at 1 came before W = (3, 11]: its FLOPs are not counted
    assert metrics.model_flops([r], spec, Window(3.0, 11.0)) == pytest.approx(
        spec.decode_flops(10, 3, 10))


def test_decode_traffic_static_reads_the_padded_cache() -> None:
    spec = resolve_model("gpt2")
    t = metrics.decode_traffic(RECORDS, spec, "fp16")
    # batch 0 runs max(4,2)-1 = 3 steps, batch 1 max(5,1)-1 = 4 steps
    assert t.steps == 7 and t.exact
    # decode time: batch 0 from 100.5 to 102.0, batch 1 from 102.4 to 104.4
    assert t.decode_time_s == pytest.approx(1.5 + 2.0)
    kv = spec.kv_bytes_per_token("fp16")
    # left-padded to the longest prompt, both rows read it every step, finished or not:
    # batch 0 (max input 12): 2 x (13 + 14 + 15); batch 1 (max input 8): 2 x (9 + 10 + 11 + 12)
    kv_tokens = 2 * (13 + 14 + 15) + 2 * (9 + 10 + 11 + 12)
    assert t.bytes_read == pytest.approx(7 * spec.weight_bytes_per_step("fp16") + kv * kv_tokens)
    assert metrics.mbu(t, 1e12, 1) == pytest.approx(t.bytes_read / (3.5 * 1e12))


TIMELINE = StepTimeline(
    end_s=(1.0, 2.0, 3.0, 4.0, 5.0), tokens=(2, 2, 2, 1, 2), live=(2, 2, 2, 1, 1), slots=2,
    kv_tokens_read=(0, 20, 22, 0, 30), decode=(False, True, True, False, True))


def test_decode_traffic_from_the_engine_steps() -> None:
    spec = resolve_model("gpt2")
    t = metrics.decode_traffic([], spec, "fp16", Window(1.5, 5.0), TIMELINE)
    # decode steps ready in (1.5, 5]: at 2, 3 and 5, each timed from the step before it
    assert t.exact and t.steps == 3
    assert t.decode_time_s == pytest.approx(1 + 1 + 1)
    w, kv = spec.weight_bytes_per_step("fp16"), spec.kv_bytes_per_token("fp16")
    assert t.bytes_read == pytest.approx(3 * w + (20 + 22 + 30) * kv)


def test_decode_traffic_in_flight_is_inferred_from_live_lengths() -> None:
    spec = resolve_model("gpt2")
    # first tokens at 100.5, 101.5, 102.5; ten decode steps 0.1 s apart each
    recs = [rec(2, i, -1, 10, 11, 100.0 + i, 0.5, 1.5) for i in range(3)]
    t = metrics.decode_traffic(recs, spec, "fp16", Window(100.5, 103.5))
    assert not t.exact
    # W = 3.0 s, TPOT = 1.0 / 10 = 0.1 -> 30 steps
    assert t.decode_time_s == pytest.approx(3.0) and t.steps == pytest.approx(30)
    # each request reads its own live length: 11 + 12 + ... + 20 = 155 cached tokens
    w, kv = spec.weight_bytes_per_step("fp16"), spec.kv_bytes_per_token("fp16")
    assert t.bytes_read == pytest.approx(30 * w + 3 * 155 * kv)


def test_slot_occupancy_by_hand() -> None:
    # timeline, W = (1.5, 5]: decode steps at 2, 3, 5 with 2, 2, 1 live of 2 slots
    assert metrics.slot_occupancy([], 2, Window(1.5, 5.0), TIMELINE) == pytest.approx(5 / 6)
    # static: batch 0 uses 3 + 1 of 3 x 2 decode slot-steps, batch 1 uses 4 + 0 of 4 x 2
    assert metrics.slot_occupancy(RECORDS, 2, None) == pytest.approx(8 / 14)
    recs = [rec(2, i, -1, 10, 11, 100.0 + i, 0.5, 1.5) for i in range(3)]
    assert metrics.slot_occupancy(recs, 2, Window(100.5, 103.5)) is None


def test_idle_corrected_energy() -> None:
    e = EnergyReading(energy_j=500.0, source="nvml-counter", integrated_j=495.0)
    assert metrics.idle_corrected_energy_j(e, 70.0, 4.0) == pytest.approx(220.0)
    assert metrics.idle_corrected_energy_j(e, None, 4.0) is None
