"""Plain records that flow between the workload, the engines, telemetry, metrics and the store.

They are dataclasses of built-in types so that they cross the process boundary to the engine
child (pickled through a pipe) and land in CSV files without conversion code.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True)
class Prompt:
    """One request of the workload: what goes in and exactly how many tokens must come out."""

    prompt_id: str
    input_tokens: int
    output_tokens: int
    text: str | None = None  # None for synthetic prompts; engines then make token ids themselves
    token_ids: tuple[int, ...] | None = None  # set when a real tokenizer counted the input


@dataclass(frozen=True)
class Workload:
    prompts: tuple[Prompt, ...]
    source: str  # "sharegpt:<path>", "synthetic", or a file path
    lengths_exact: bool  # False when token counts are the documented estimate, not a tokenizer's
    tokenizer: str | None = None  # what counted the tokens
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RequestRecord:
    """What the engine saw of one request. Times are seconds; absolute times are Unix epoch."""

    batch_size: int
    request_index: int  # position in the point's request list
    batch_index: int  # which static batch ran it; -1 where the engine batches continuously
    input_tokens: int
    output_tokens: int
    start_s: float  # Unix time the request was admitted to a slot (or sent to the server)
    ttft_s: float  # time to first token, from start_s
    e2e_s: float  # time to last token, from start_s
    # False: still generating when the point stopped; output_tokens then counts the tokens it made
    finished: bool = True


class Batching(str, Enum):
    """How an engine fills its b slots."""

    INFLIGHT = "inflight"  # at most b sequences in flight; a freed slot is refilled at once
    STATIC = "static"  # batches of b, each running until its longest request ends


@dataclass(frozen=True)
class PointPlan:
    """What the runner asks of an engine for one sweep point."""

    batch_size: int
    batching: Batching
    prompts: tuple[Prompt, ...]  # the request stream in order; engines wrap around it for more
    min_window_s: float  # keep admitting until the steady-state window has lasted this long
    max_point_s: float  # cap from the first admission: stop admitting then, whatever the window
    # in flight only: the first b requests, already part-way through (core/warm_start.py), so
    # that the slots start in their steady mix; `prompts` follow them
    warm_start: tuple[Prompt, ...] = ()

    def request(self, k: int) -> Prompt:
        """The k-th request admitted: the warm start, then the stream, wrapped around."""
        if k < len(self.warm_start):
            return self.warm_start[k]
        return self.prompts[(k - len(self.warm_start)) % len(self.prompts)]

    def stream(self) -> Iterator[Prompt]:
        """Every request in admission order, without end."""
        return itertools.chain(self.warm_start, itertools.cycle(self.prompts))


@dataclass(frozen=True)
class StepTimeline:
    """One entry per engine step (or per streamed chunk): when its tokens were ready."""

    end_s: tuple[float, ...]  # Unix time the step's tokens were ready
    tokens: tuple[int, ...]  # output tokens the step made
    live: tuple[int, ...]  # sequences holding a slot and doing useful work in the step
    slots: int  # b: slots available in each step
    kv_tokens_read: tuple[int, ...] | None = None  # cached tokens the step's attention read
    decode: tuple[bool, ...] | None = None  # True for decode steps, False for prefill steps


@dataclass
class StepRecorder:
    """A StepTimeline's per-step facts, kept one step at a time while an engine runs; the times
    come at the end (a GPU engine resolves them from CUDA events once the point is over)."""

    slots: int
    tokens: list[int] = field(default_factory=list)
    live: list[int] = field(default_factory=list)
    kv_tokens_read: list[int] = field(default_factory=list)
    decode: list[bool] = field(default_factory=list)

    def add(self, tokens: int, live: int, kv_tokens_read: int, decode: bool) -> int:
        """Record one step; returns its index."""
        self.tokens.append(tokens)
        self.live.append(live)
        self.kv_tokens_read.append(kv_tokens_read)
        self.decode.append(decode)
        return len(self.tokens) - 1

    def timeline(self, end_s: list[float] | tuple[float, ...]) -> StepTimeline:
        if len(end_s) != len(self.tokens):
            raise ValueError(f"{len(end_s)} step times for {len(self.tokens)} steps")
        return StepTimeline(end_s=tuple(end_s), tokens=tuple(self.tokens), live=tuple(self.live),
                            slots=self.slots, kv_tokens_read=tuple(self.kv_tokens_read),
                            decode=tuple(self.decode))


class PointStatus(str, Enum):
    OK = "ok"
    OOM = "oom"
    KV_BOUND = "kv_bound"  # ran, but the engine kept fewer requests in flight than asked
    CRASHED = "crashed"
    HUNG = "hung"  # the engine sent nothing for the stall timeout (twice) and was killed
    CANCELLED = "cancelled"
    ERROR = "error"  # the engine reported a failure that is not memory (server error, bad reply)

    @property
    def is_boundary(self) -> bool:
        """True where the batch size did not fit: the sweep narrows the search below it."""
        return self in (PointStatus.OOM, PointStatus.KV_BOUND, PointStatus.CRASHED, PointStatus.HUNG)


@dataclass(frozen=True)
class EngineRun:
    """What the engine child returns for one sweep point that ran to the end."""

    batch_size: int
    window_start_s: float  # steady-state window the engine saw (core/window.py), Unix time
    window_end_s: float
    records: tuple[RequestRecord, ...]
    concurrency_reached: int | None = None  # engines that schedule themselves report this
    notes: tuple[str, ...] = ()
    batching: Batching = Batching.STATIC
    timeline: StepTimeline | None = None


@dataclass(frozen=True)
class Sample:
    """One telemetry reading of one device."""

    t_s: float  # Unix time of the reading
    gpu_index: int  # NVML index; -1 for the CPU package
    power_w: float | None  # instant power
    energy_j: float | None  # cumulative energy counter (NVML total energy, RAPL), in joules
    mem_used_bytes: int | None = None
    mem_total_bytes: int | None = None
    util_pct: float | None = None
    temp_c: float | None = None
    sm_clock_mhz: float | None = None
    # the GPU's own rail where a board reports it beside the total (Jetson); power_w is the total
    gpu_rail_power_w: float | None = None


@dataclass(frozen=True)
class EnergyReading:
    """Energy over one time window, from the counter where there is one."""

    energy_j: float
    source: str  # "nvml-counter", "nvml-power-integrated", "rapl", "estimate"
    integrated_j: float | None  # trapezoid of instant power over the same window, as a check
    per_gpu_j: dict[int, float] = field(default_factory=dict)
    estimated: bool = False  # True when no hardware measured it (TDP x load model)
    n_samples: int = 0


@dataclass
class PointResult:
    """Every figure of one sweep point, as points.csv holds it. None means 'not measurable here'."""

    batch_size: int
    status: PointStatus
    message: str = ""
    n_requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    duration_s: float | None = None
    window_start_s: float | None = None
    window_end_s: float | None = None
    tokens_per_s: float | None = None
    s_per_token: float | None = None
    ttft_p50_s: float | None = None
    ttft_p90_s: float | None = None
    tpot_p50_s: float | None = None
    tpot_p90_s: float | None = None
    energy_j: float | None = None
    energy_source: str = ""
    energy_integrated_j: float | None = None
    idle_corrected_energy_j: float | None = None
    j_per_token: float | None = None
    intensity_gco2e_per_kwh: float | None = None  # energy-weighted mean over the window
    gco2e_per_token: float | None = None  # operational, PUE included
    embodied_gco2e_per_token: float | None = None
    total_gco2e_per_token: float | None = None
    mfu: float | None = None
    mbu: float | None = None
    peak_mem_gb: float | None = None
    avg_power_w: float | None = None
    concurrency_reached: int | None = None
    # the method: how the slots were filled, the window asked for, what the point took in all
    # (first admission to last token: ramp-up and drain included, outside W)
    batching: str = ""
    window_target_s: float | None = None
    point_s: float | None = None
    # 95% confidence half-widths (value +- half-width, in the figure's unit) and coefficients of
    # variation, over `ci_batches` sub-windows of W (or over `repeats` measurements)
    ci_batches: int = 0
    j_per_token_ci95: float | None = None
    j_per_token_cv: float | None = None
    tokens_per_s_ci95: float | None = None
    tokens_per_s_cv: float | None = None
    gco2e_per_token_ci95: float | None = None
    gco2e_per_token_cv: float | None = None
    slot_occupancy: float | None = None  # useful decode slot-steps / (decode steps x b)
    # True where no energy-counter reading came after W's end: the energy is cut short
    energy_incomplete: bool = False
    repeat: int = 0  # 0: the search's measurement; 1..N: re-measures in shuffled order
    repeats: int = 1  # measurements these figures combine
    start_temp_c: float | None = None  # hottest GPU when the point started
    # how far J/token moved across W: the least-squares line through the sub-windows' J/token,
    # its change from W's start to its end over the point's J/token, with that change's 95%
    # half-width; a drift whose interval excludes 0 means W was not yet steady (the row says so)
    j_per_token_drift: float | None = None
    j_per_token_drift_ci95: float | None = None
    # energy_j split by GPU over the same window, "index=joules" joined by ";" in NVML's order
    # (empty where nothing was read per GPU): several GPUs in use sum to energy_j
    energy_per_gpu_j: str = ""
