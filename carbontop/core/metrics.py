"""Per-point figures, exactly as DESIGN.md defines them, from request records and energy.

Everything here is arithmetic on plain numbers so that each figure can be checked by hand.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from carbontop.core.modelspec import ModelSpec, sum_range
from carbontop.core.records import EnergyReading, RequestRecord, StepTimeline
from carbontop.core.window import Window


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


def _inside(t: float, window: Window) -> bool:
    return window.start_s < t <= window.end_s


def finished_inside(records: Sequence[RequestRecord], window: Window) -> list[RequestRecord]:
    """Requests that finished inside the window."""
    return [r for r in records if r.finished and _inside(r.start_s + r.e2e_s, window)]


def span(records: Sequence[RequestRecord]) -> Window:
    """First admission to last token: the window of engines that report none of their own."""
    return Window(min(r.start_s for r in records), max(r.start_s + r.e2e_s for r in records))


@dataclass(frozen=True)
class LatencyFigures:
    tokens_per_s: float
    s_per_token: float | None
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    tpot_p50_s: float | None
    tpot_p90_s: float | None


def latency_figures(records: Sequence[RequestRecord], window: Window,
                    tokens: float) -> LatencyFigures:
    """tokens/s = output tokens made inside W / W; s/token = mean over requests finished inside
    W of end-to-end time / output tokens (the paper's user-perceived figure); TPOT = (e2e - TTFT)
    / (output tokens - 1) over the same requests (two or more tokens); TTFT over the requests
    whose first token came inside W, its opening instant included: W opens at the first token
    that puts b requests in flight with a token each, and where every first token of a short
    point falls there, an open start would leave TTFT empty. (Token counts keep (start, end]:
    a token ready at the opening was made before it.)"""
    done = finished_inside(records, window)
    per_req = [r.e2e_s / r.output_tokens for r in done if r.output_tokens > 0]
    ttfts = [r.ttft_s for r in records
             if window.start_s <= r.start_s + r.ttft_s <= window.end_s]
    tpots = tpots_s(done)
    return LatencyFigures(
        tokens_per_s=tokens / window.length_s if window.length_s > 0 else 0.0,
        s_per_token=sum(per_req) / len(per_req) if per_req else None,
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p90_s=percentile(ttfts, 90),
        tpot_p50_s=percentile(tpots, 50),
        tpot_p90_s=percentile(tpots, 90),
    )


def decode_steps_inside(r: RequestRecord, window: Window) -> tuple[int, int]:
    """The request's decode steps j_lo..j_hi (1-based) whose tokens were ready inside W, with its
    O - 1 decode tokens placed evenly over (first token, last token]: step j at first + j x
    (last - first) / (O - 1). An empty range has j_hi < j_lo."""
    steps = r.output_tokens - 1
    if steps < 1:
        return 1, 0
    first = r.start_s + r.ttft_s
    dt = (r.e2e_s - r.ttft_s) / steps
    if dt <= 0:  # every token at once
        return (1, steps) if _inside(first, window) else (1, 0)
    eps = 1e-9  # a window edge on a token's time: float rounding must not move it across
    j_lo = max(1, math.floor((window.start_s - first) / dt + eps) + 1)
    j_hi = min(steps, math.floor((window.end_s - first) / dt + eps))
    return j_lo, j_hi


def model_flops(records: Sequence[RequestRecord], spec: ModelSpec,
                window: Window | None = None) -> float:
    """Useful FLOPs done inside W: a request's prefill where its first token came inside W, and
    its decode steps whose tokens were ready inside W (decode_steps_inside). Without a window,
    every request whole."""
    if window is None:
        return sum(spec.request_flops(r.input_tokens, r.output_tokens) for r in records)
    total = 0.0
    for r in records:
        if _inside(r.start_s + r.ttft_s, window):
            total += spec.prefill_flops(r.input_tokens)
        j_lo, j_hi = decode_steps_inside(r, window)
        total += spec.decode_flops(r.input_tokens, j_lo, j_hi)
    return total


def mfu(
    records: Sequence[RequestRecord],
    spec: ModelSpec,
    duration_s: float,
    peak_flops_per_gpu: float | None,
    n_gpus: int,
    window: Window | None = None,
) -> float | None:
    """Model FLOPs done inside W / (W x dense peak FLOP/s x GPUs)."""
    if not peak_flops_per_gpu or duration_s <= 0 or n_gpus < 1:
        return None
    return model_flops(records, spec, window) / (duration_s * peak_flops_per_gpu * n_gpus)


@dataclass(frozen=True)
class DecodeTraffic:
    bytes_read: float
    decode_time_s: float
    steps: float
    exact: bool  # False where steps or the cache read were inferred rather than reported


def _timeline_steps(timeline: StepTimeline, window: Window) -> list[int]:
    """Indices of the timeline's decode steps (all steps where it does not say) ready inside W."""
    return [k for k, t in enumerate(timeline.end_s) if _inside(t, window)
            and (timeline.decode is None or timeline.decode[k])]


def _live_kv_tokens(records: Sequence[RequestRecord], window: Window) -> float:
    """Cached tokens read by the decode steps inside W, each request reading only its own live
    length: step j of a request of I prompt tokens attends to I + j tokens."""
    total = 0.0
    for r in records:
        j_lo, j_hi = decode_steps_inside(r, window)
        total += sum_range(r.input_tokens + j_lo, r.input_tokens + j_hi)
    return total


def _static_batches(records: Sequence[RequestRecord]) -> dict[int, list[RequestRecord]]:
    batches: dict[int, list[RequestRecord]] = defaultdict(list)
    for r in records:
        batches[r.batch_index].append(r)
    return batches


def decode_traffic(records: Sequence[RequestRecord], spec: ModelSpec, dtype: str,
                   window: Window | None = None,
                   timeline: StepTimeline | None = None) -> DecodeTraffic:
    """Bytes the decode steps inside W read, and the time they took.

    Each decode step reads every weight once (weight_bytes_per_step) and the KV cache its
    attention reads. Where the engine reports its steps (a timeline with decode flags): the decode
    steps ready inside W, each timed from the previous step's end, with the cache it reports
    (kv_tokens_read). Static batches without a timeline (batch_index >= 0): a batch runs
    max(output) - 1 decode steps over the whole batch, timed from its first token to its last, and
    with left padding every row of step j reads max(input) + j cached tokens: the padded cache.
    In-flight batching without reported steps: the steps are inferred as W / median TPOT over W,
    each request reading its own live length (input + j at its step j).
    """
    w = spec.weight_bytes_per_step(dtype)
    kv_tok = spec.kv_bytes_per_token(dtype)
    static = bool(records) and all(r.batch_index >= 0 for r in records)
    if window is None:
        window = span(records) if records else Window(0.0, 0.0)
    if timeline is not None and timeline.decode is not None:
        ks = [k for k in _timeline_steps(timeline, window) if k > 0]
        decode_s = sum(timeline.end_s[k] - timeline.end_s[k - 1] for k in ks)
        if timeline.kv_tokens_read is not None:
            kv = float(sum(timeline.kv_tokens_read[k] for k in ks))
            return DecodeTraffic(len(ks) * w + kv * kv_tok, decode_s, len(ks), exact=True)
        kv = _live_kv_tokens(records, window)
        return DecodeTraffic(len(ks) * w + kv * kv_tok, decode_s, len(ks), exact=False)
    if static:
        steps = 0.0
        decode_s = 0.0
        kv = 0.0
        for group in _static_batches(records).values():
            n_steps = max(r.output_tokens for r in group) - 1
            max_in = max(r.input_tokens for r in group)
            steps += n_steps
            kv += len(group) * sum_range(max_in + 1, max_in + n_steps)
            first = min(r.start_s + r.ttft_s for r in group)
            last = max(r.start_s + r.e2e_s for r in group)
            decode_s += max(last - first, 0.0)
        return DecodeTraffic(steps * w + kv * kv_tok, decode_s, steps, exact=True)
    tpot_med = percentile(tpots_s(finished_inside(records, window)) or tpots_s(records), 50)
    decode_s = window.length_s
    steps = decode_s / tpot_med if tpot_med else 0.0
    kv = _live_kv_tokens(records, window)
    return DecodeTraffic(steps * w + kv * kv_tok, decode_s, steps, exact=False)


def slot_occupancy(records: Sequence[RequestRecord], batch_size: int, window: Window | None,
                   timeline: StepTimeline | None = None) -> float | None:
    """Useful decode slot-steps / (decode steps x b): the share of the decode slots that served a
    live request. From the timeline's steps inside W where there is one; for static batches
    without one, (output - 1) useful steps per request over (max(output) - 1) x b per batch.
    None where the steps are not known (in-flight batching without a timeline)."""
    if timeline is not None and window is not None:
        ks = _timeline_steps(timeline, window)
        if not ks or timeline.slots < 1:
            return None
        return sum(timeline.live[k] for k in ks) / (len(ks) * timeline.slots)
    if records and all(r.batch_index >= 0 for r in records):
        useful = sum(max(r.output_tokens - 1, 0) for r in records)
        slots = sum((max(r.output_tokens for r in g) - 1) * batch_size
                    for g in _static_batches(records).values())
        return useful / slots if slots > 0 else None
    return None


def mbu(traffic: DecodeTraffic, peak_bw_bytes_s: float | None, n_gpus: int) -> float | None:
    """Bytes the decode steps read / (decode time x peak memory bandwidth x GPUs)."""
    if not peak_bw_bytes_s or traffic.decode_time_s <= 0 or n_gpus < 1:
        return None
    return traffic.bytes_read / (traffic.decode_time_s * peak_bw_bytes_s * n_gpus)


def idle_corrected_energy_j(
    energy: EnergyReading, idle_power_w: float | None, duration_s: float
) -> float | None:
    """Energy above what the idle devices, with the model loaded, would have drawn over the same
    time; shown beside the measured energy, never instead of it."""
    if idle_power_w is None:
        return None
    return energy.energy_j - idle_power_w * duration_s
