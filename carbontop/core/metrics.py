"""Per-point figures, exactly as DESIGN.md defines them, from request records and energy.

Everything here is arithmetic on plain numbers so that each figure can be checked by hand.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from carbontop.core.modelspec import ModelSpec
from carbontop.core.records import EnergyReading, RequestRecord


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def tpots_s(records: Sequence[RequestRecord]) -> list[float]:
    """Time per output token after the first, for every request of two or more tokens."""
    return [(r.e2e_s - r.ttft_s) / (r.output_tokens - 1) for r in records if r.output_tokens > 1]


@dataclass(frozen=True)
class LatencyFigures:
    tokens_per_s: float
    s_per_token: float
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    tpot_p50_s: float | None
    tpot_p90_s: float | None


def latency_figures(records: Sequence[RequestRecord], duration_s: float) -> LatencyFigures:
    """tokens/s = all output tokens / T; s/token = mean of e2e / output tokens (the paper's
    user-perceived figure); TPOT = (e2e - TTFT) / (output tokens - 1) for requests of 2+ tokens."""
    out_tokens = sum(r.output_tokens for r in records)
    per_req = [r.e2e_s / r.output_tokens for r in records if r.output_tokens > 0]
    ttfts = [r.ttft_s for r in records]
    tpots = tpots_s(records)
    return LatencyFigures(
        tokens_per_s=out_tokens / duration_s if duration_s > 0 else 0.0,
        s_per_token=sum(per_req) / len(per_req) if per_req else 0.0,
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p90_s=percentile(ttfts, 90),
        tpot_p50_s=percentile(tpots, 50),
        tpot_p90_s=percentile(tpots, 90),
    )


def model_flops(records: Sequence[RequestRecord], spec: ModelSpec) -> float:
    return sum(spec.request_flops(r.input_tokens, r.output_tokens) for r in records)


def mfu(
    records: Sequence[RequestRecord],
    spec: ModelSpec,
    duration_s: float,
    peak_flops_per_gpu: float | None,
    n_gpus: int,
) -> float | None:
    """Model FLOPs done / (T x dense peak FLOP/s x GPUs)."""
    if not peak_flops_per_gpu or duration_s <= 0 or n_gpus < 1:
        return None
    return model_flops(records, spec) / (duration_s * peak_flops_per_gpu * n_gpus)


@dataclass(frozen=True)
class DecodeTraffic:
    bytes_read: float
    decode_time_s: float
    steps: float
    exact: bool  # False where decode steps were inferred from TPOT (continuous batching)


def decode_traffic(records: Sequence[RequestRecord], spec: ModelSpec, dtype: str) -> DecodeTraffic:
    """Bytes read by the decode steps and the time they took.

    Static batches (batch_index >= 0): a batch runs max(output) - 1 decode steps, each reading
    all weights once plus the KV cache of the requests still generating (request r at decode
    step j attends to input + j cached tokens). Decode time = last token - first token of the
    batch. Continuous batching (batch_index -1): the steps are not visible from outside, so they are
    inferred as decode time / median TPOT, with decode time = window - median TTFT.
    """
    w = spec.weight_bytes_per_step(dtype)
    kv_tok = spec.kv_bytes_per_token(dtype)
    kv_bytes = 0.0
    for r in records:
        # sum over decode steps j = 1 .. O-1 of (input + j) cached tokens
        o, i = r.output_tokens, r.input_tokens
        kv_bytes += kv_tok * (i * max(o - 1, 0) + (o - 1) * o / 2 if o > 1 else 0.0)
    batches: dict[int, list[RequestRecord]] = defaultdict(list)
    for r in records:
        batches[r.batch_index].append(r)
    if -1 not in batches:
        steps = 0.0
        decode_s = 0.0
        for group in batches.values():
            steps += max(r.output_tokens for r in group) - 1
            first = min(r.start_s + r.ttft_s for r in group)
            last = max(r.start_s + r.e2e_s for r in group)
            decode_s += max(last - first, 0.0)
        return DecodeTraffic(steps * w + kv_bytes, decode_s, steps, exact=True)
    start = min(r.start_s for r in records)
    end = max(r.start_s + r.e2e_s for r in records)
    ttft_med = percentile([r.ttft_s for r in records], 50) or 0.0
    tpots = tpots_s(records)
    tpot_med = percentile(tpots, 50)
    decode_s = max(end - start - ttft_med, 0.0)
    steps = decode_s / tpot_med if tpot_med else 0.0
    return DecodeTraffic(steps * w + kv_bytes, decode_s, steps, exact=False)


def mbu(traffic: DecodeTraffic, peak_bw_bytes_s: float | None, n_gpus: int) -> float | None:
    """Bytes read / (decode time x peak memory bandwidth x GPUs)."""
    if not peak_bw_bytes_s or traffic.decode_time_s <= 0 or n_gpus < 1:
        return None
    return traffic.bytes_read / (traffic.decode_time_s * peak_bw_bytes_s * n_gpus)


def idle_corrected_energy_j(
    energy: EnergyReading, idle_power_w: float | None, duration_s: float
) -> float | None:
    """Energy above what the idle devices would have drawn over the same time; shown beside the
    measured energy, never instead of it."""
    if idle_power_w is None:
        return None
    return energy.energy_j - idle_power_w * duration_s
