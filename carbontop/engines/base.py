"""The contract between the engine host (parent side) and an engine (child side).

An engine lives in a child process. The host constructs it with an `EngineSpec`, calls `load()`
once, then `run_point()` once per sweep point. It reports what it is doing through `emit`
(a `PhaseUpdate` or a `Progress`), and signals a batch that does not fit by raising `EngineOOM`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from carbontop.core.records import Batching, EngineRun, PointPlan

# How running out of memory is worded, wherever an engine meets it: torch ("CUDA out of memory"),
# the CUDA runtime and driver (cudaErrorMemoryAllocation, CUDA_ERROR_OUT_OF_MEMORY), torch's
# asynchronous allocator (cudaMallocAsync), TensorRT-LLM's executor ("insufficient GPU memory"),
# and servers that pass these on.
_OOM_TEXT = re.compile(
    r"out of memory|outofmemory|insufficient (?:gpu )?memory|cudaErrorMemoryAllocation"
    r"|CUDA_ERROR_OUT_OF_MEMORY|cudamallocasync",
    re.IGNORECASE,
)


def says_oom(text: str) -> bool:
    """True where an error's text says memory ran out (the one test every engine and the host use)."""
    return _OOM_TEXT.search(text) is not None


class Phase(str, Enum):
    """Where a sweep is, in one vocabulary for the runner and every engine.

    The runner starts a point's progress clock (its ETA) at MEASURING, so every engine emits
    MEASURING when it admits the first request of the measured stream: after loading, building,
    compiling and warm-up, which are never part of a point's time.
    """

    IDLE_POWER = "idle-power"  # runner: the GPUs' idle power, before the model loads
    STARTING = "starting"  # runner: the engine's child process starts
    RESTARTING = "restarting"  # runner: a fresh child after one was lost
    SETTLING = "settling"  # runner: waiting for the GPU's temperature to settle before a point
    LOADING = "loading"  # engine: its library, the weights, or the server's first answers
    BUILDING = "building"  # engine: an executor sized for this batch (TensorRT-LLM)
    COMPILING = "compiling"  # engine: compiling and capturing the decode step (hf on CUDA)
    WARMUP = "warmup"  # engine: requests run outside the window
    MEASURING = "measuring"  # engine: the measured stream has begun


@dataclass(frozen=True)
class PhaseUpdate:
    """An engine (or the runner) entered `phase`; `detail` says more in a few words."""

    phase: Phase
    detail: str = ""


@dataclass(frozen=True)
class Progress:
    """How far the running point is. Engines send it per batch or per step, never per token."""

    done: int  # requests finished
    total: int | None = None  # requests the point will run, where known in advance
    tokens: int = 0  # output tokens made so far in the measured stream
    window_s: float | None = None  # how long the steady-state window has been open
    window_target_s: float | None = None  # how long the window is meant to last


EngineNote = PhaseUpdate | Progress
Emit = Callable[[EngineNote], None]


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine needs, resolved by the parent (plain data: it is pickled)."""

    engine: str  # "hf", "trtllm", "openai"
    model: str  # preset name, model folder, or the server's model name
    model_config: dict[str, Any] | None  # HF-style architecture config for presets and dummy weights
    model_path: str | None  # local folder with config/weights/tokenizer, if any
    weights: str  # "dummy" or "auto"
    dtype: str  # "bf16", "fp16", "fp32" (resolved, never "auto")
    device: str  # "cpu" or "cuda" (resolved)
    gpus: tuple[int, ...] = ()  # trtllm shards over all of them (tensor parallel = their count)
    # hf: tensor-parallel ranks, one process each (rank r on the r-th GPU of `gpus`); the host
    # starts the other ranks beside the engine it talks to (engines/ranks.py)
    tp: int = 1
    max_input_len: int = 1024
    max_output_len: int = 1024
    seed: int = 0
    quant: str = "none"  # "none", "int4-wo" or "int8-wo": weight-only quantisation of the linears
    # hf: compile the decode step; `compile_mode` is --compile's policy ("auto": autotune small
    # batches, "default", "max-autotune"); `cuda_graphs` False replays eagerly, which only the
    # engine benchmark asks for, to measure what the graphs are worth.
    compile: bool = False
    compile_mode: str = "auto"
    cuda_graphs: bool = True
    # trtllm: the KV cache's share of free GPU memory, and the executor's token budget per
    # scheduler step (None: TensorRT-LLM's own default). KV-block reuse stays off: the prompts
    # are cycled through a point's batches, and reuse would measure a cache instead of the model.
    kv_cache_fraction: float = 0.9
    max_num_tokens: int | None = None
    # openai: the server, and the longest one request may take. An API key is read from the
    # CARBONTOP_API_KEY environment variable by the engine, never carried in the spec.
    url: str | None = None
    request_timeout_s: float = 600.0
    # where torch.compile keeps its compiled graphs and autotuning results: kept across engine
    # processes, so a fresh child after an OOM loads the decode step instead of compiling it again
    compile_cache_dir: str | None = None


class EngineOOM(Exception):
    """The batch does not fit in memory (the engine's own report, normalised).

    `recovered` says the engine freed everything the failed batch took, so the same process can
    run the next (smaller) point; otherwise the host replaces the process before going on.
    """

    def __init__(self, message: str, recovered: bool = False) -> None:
        super().__init__(message)
        self.recovered = recovered


class EngineKVBound(Exception):
    """The engine ran fewer requests at once than asked; carries the concurrency reached, and
    what it measured meanwhile (a KV-bound point keeps its figures)."""

    def __init__(self, message: str, concurrency_reached: int, run: EngineRun | None = None) -> None:
        super().__init__(message)
        self.concurrency_reached = concurrency_reached
        self.run = run


def check_kv_bound(plan: PointPlan, run: EngineRun, steady: bool, why: Callable[[int], str]) -> EngineRun:
    """The one rule for engines that schedule requests themselves: a point run in flight whose
    window of a full batch never opened, because the engine kept fewer than b requests in flight,
    is KV-bound (raised, with `why(reached)` as its sentence); otherwise its run is returned."""
    reached = run.concurrency_reached
    if plan.batching is Batching.INFLIGHT and not steady and reached is not None and reached < plan.batch_size:
        raise EngineKVBound(why(reached), reached, run)
    return run


class EngineFailure(Exception):
    """A failure that is not memory: a server error, a bad reply, a broken model."""


class Engine(Protocol):
    def __init__(self, spec: EngineSpec, emit: Emit) -> None: ...

    def load(self) -> dict[str, Any]:
        """Load the model (outside every measured window); return facts for run.toml."""
        ...

    def run_point(self, plan: PointPlan) -> EngineRun:
        """Run one point (warm-up first, outside the window): admit requests from the plan's
        stream, cycling it, at most `plan.batch_size` in flight (or in static batches), until
        core/window.py's `keep_admitting` says stop; return the records, the window and, where
        the engine has steps, their timeline."""
        ...

    def close(self) -> None: ...
