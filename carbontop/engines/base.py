"""The contract between the engine host (parent side) and an engine (child side).

An engine lives in a child process. The host constructs it with an `EngineSpec`, calls `load()`
once, then `run_point()` once per sweep point. It reports what it is doing through `emit`
(phases and progress), and signals a batch that does not fit by raising `EngineOOM`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from carbontop.core.records import EngineRun, PointPlan

# emit(kind, payload): kind is "phase" ({"phase": str, "detail": str}) or
# "progress" ({"done": int, "total": int}). Emitting is cheap; engines emit per batch, not per token.
Emit = Callable[[str, dict[str, Any]], None]


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
    gpus: tuple[int, ...] = ()
    compile: bool = False
    url: str | None = None
    kv_cache_fraction: float = 0.9
    max_input_len: int = 1024
    max_output_len: int = 1024
    seed: int = 0
    quant: str = "none"  # "none", "int4-wo" or "int8-wo": weight-only quantisation of the linears
    extra: dict[str, Any] = field(default_factory=dict)


class EngineOOM(Exception):
    """The batch does not fit in memory (the engine's own report, normalised).

    `recovered` says the engine freed everything the failed batch took, so the same process can
    run the next (smaller) point; otherwise the host replaces the process before going on.
    """

    def __init__(self, message: str, recovered: bool = False) -> None:
        super().__init__(message)
        self.recovered = recovered


class EngineKVBound(Exception):
    """The engine ran fewer requests at once than asked; carries the concurrency reached."""

    def __init__(self, message: str, concurrency_reached: int) -> None:
        super().__init__(message)
        self.concurrency_reached = concurrency_reached


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
        the engine has steps, their timeline. (The host still hands an engine whose run_point
        takes (batch_size, prompts) one pass over the stream.)"""
        ...

    def close(self) -> None: ...
