"""What a running sweep tells its viewer (the TUI, the headless CLI). Sent on the sweep's thread.

Kept with the runner (not in core): only the runner emits these, only the layers above the sweep
read them.

The viewer must not block in its handler: the TUI posts each event on as a Textual message.
"""

from __future__ import annotations

from dataclasses import dataclass

from carbontop.core.records import PointResult
from carbontop.engines.base import Phase


@dataclass(frozen=True)
class SweepStarted:
    run_dir: str
    planned: tuple[int, ...]  # batch sizes known up front (the list, or the first of the search)
    auto: bool  # True when the search decides the next size from each result
    devices: tuple[str, ...]  # GPU names in use (or the CPU's), for the telemetry pane
    energy_estimated: bool


@dataclass(frozen=True)
class PhaseChanged:
    phase: Phase
    batch_size: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class PointStarted:
    batch_size: int
    n_requests: int


@dataclass(frozen=True)
class PointProgress:
    batch_size: int
    done: int  # requests finished
    total: int | None  # None: the engine runs until its window is long enough
    elapsed_s: float
    eta_s: float | None
    window_s: float | None = None  # how long the steady-state window has been open
    window_target_s: float | None = None  # the minimum window the point runs to
    tokens: int = 0  # output tokens made in the measured stream so far


@dataclass(frozen=True)
class PointFinished:
    point: PointResult


@dataclass(frozen=True)
class BoundaryChanged:
    """The automatic search's knowledge of the memory boundary: largest good, smallest failed."""

    largest_ok: int | None
    smallest_failed: int | None
    next_batch: int | None


@dataclass(frozen=True)
class SweepFinished:
    run_dir: str
    status: str  # "done", "cancelled", "error"
    message: str = ""
    recommended_batch: int | None = None


SweepEvent = (
    SweepStarted
    | PhaseChanged
    | PointStarted
    | PointProgress
    | PointFinished
    | BoundaryChanged
    | SweepFinished
)
