from __future__ import annotations

import pytest

from carbontop.core import metrics
from carbontop.core.modelspec import resolve_model
from carbontop.core.records import EnergyReading, RequestRecord


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
    lat = metrics.latency_figures(RECORDS, duration_s=4.4)
    assert lat.tokens_per_s == pytest.approx(12 / 4.4)
    # mean of e2e/out: 2/4, 1/2, 2.4/5, 0.4/1
    assert lat.s_per_token == pytest.approx((0.5 + 0.5 + 0.48 + 0.4) / 4)
    assert lat.ttft_p50_s == pytest.approx(0.45)
    # TPOT: (2-0.5)/3 = 0.5, (1-0.5)/1 = 0.5, (2.4-0.4)/4 = 0.5; one-token request excluded
    assert lat.tpot_p50_s == pytest.approx(0.5) and lat.tpot_p90_s == pytest.approx(0.5)


def test_mfu_by_hand() -> None:
    spec = resolve_model("gpt2")
    flops = sum(spec.request_flops(r.input_tokens, r.output_tokens) for r in RECORDS)
    assert metrics.mfu(RECORDS, spec, 4.4, 1e12, 2) == pytest.approx(flops / (4.4 * 1e12 * 2))
    assert metrics.mfu(RECORDS, spec, 4.4, None, 1) is None


def test_decode_traffic_static_batches_by_hand() -> None:
    spec = resolve_model("gpt2")
    t = metrics.decode_traffic(RECORDS, spec, "fp16")
    # batch 0 runs max(4,2)-1 = 3 steps, batch 1 max(5,1)-1 = 4 steps
    assert t.steps == 7 and t.exact
    # decode time: batch 0 from 100.5 to 102.0, batch 1 from 102.4 to 104.4
    assert t.decode_time_s == pytest.approx(1.5 + 2.0)
    kv = spec.kv_bytes_per_token("fp16")
    # KV contexts read: r0: 11,12,13; r1: 13; r2: 9,10,11,12; r3: none
    kv_tokens = (11 + 12 + 13) + 13 + (9 + 10 + 11 + 12)
    assert t.bytes_read == pytest.approx(7 * spec.weight_bytes_per_step("fp16") + kv * kv_tokens)
    assert metrics.mbu(t, 1e12, 1) == pytest.approx(t.bytes_read / (3.5 * 1e12))


def test_decode_traffic_continuous_is_inferred() -> None:
    spec = resolve_model("gpt2")
    recs = [rec(2, i, -1, 10, 11, 100.0 + i, 0.5, 1.5) for i in range(3)]
    t = metrics.decode_traffic(recs, spec, "fp16")
    assert not t.exact
    # window 100 -> 103.5, minus median TTFT 0.5 = 3.0 s; TPOT = 1.0/10 = 0.1 -> 30 steps
    assert t.decode_time_s == pytest.approx(3.0) and t.steps == pytest.approx(30)


def test_idle_corrected_energy() -> None:
    e = EnergyReading(energy_j=500.0, source="nvml-counter", integrated_j=495.0)
    assert metrics.idle_corrected_energy_j(e, 70.0, 4.0) == pytest.approx(220.0)
    assert metrics.idle_corrected_energy_j(e, None, 4.0) is None
