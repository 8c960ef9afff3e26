"""Test doubles and helpers for the TUI tests (no tests here).

The doubles stand in for carbontop.core's SweepRunner and the telemetry sampler so that the pilot
and snapshot tests are fast and deterministic; the real runner has its own tests in test_tui.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from carbontop.core.records import PointResult, PointStatus, Sample
from carbontop.core.store import RunWriter
from carbontop.engines.base import Phase
from carbontop.sweep import events as ev

T0 = 1_700_000_000.0  # fixed clock for deterministic telemetry


class FixedSource:
    kind = "nvml"
    estimated = False

    def __init__(self, names: dict[int, str] | None = None, *, kind: str = "nvml",
                 estimated: bool = False) -> None:
        self._names = names or {0: "NVIDIA H100 80GB HBM3"}
        self.kind = kind
        self.estimated = estimated
        self.closed = False

    def device_names(self) -> dict[int, str]:
        return dict(self._names)

    def close(self) -> None:
        self.closed = True


class FixedSampler:
    """A sampler double with a fixed minute of readings: the same frame every time."""

    def __init__(self, source: FixedSource | None = None, n: int = 120) -> None:
        self.source = source or FixedSource()
        self.stopped = False
        self._samples: dict[int, list[Sample]] = {}
        for index in self.source.device_names():
            self._samples[index] = [
                Sample(
                    t_s=T0 + i * 0.5,
                    gpu_index=index,
                    power_w=80.0 + (i % 40) * 15.0,  # a saw tooth from 80 W to 665 W
                    energy_j=None,
                    mem_used_bytes=int((12.0 + i * 0.2) * 1e9),  # 12.0 GB rising to 35.8 GB
                    mem_total_bytes=int(80e9),
                )
                for i in range(n)
            ]

    def latest(self) -> dict[int, Sample]:
        return {i: s[-1] for i, s in self._samples.items() if s}

    def samples(self, t0: float | None = None, t1: float | None = None,
                gpu: int | None = None) -> list[Sample]:
        out = []
        for index, series in self._samples.items():
            if gpu is not None and index != gpu:
                continue
            out.extend(s for s in series if (t0 is None or s.t_s >= t0) and (t1 is None or s.t_s <= t1))
        return sorted(out, key=lambda s: s.t_s)

    def stop(self) -> None:
        self.stopped = True


def point(batch_size: int, status: PointStatus = PointStatus.OK, **figures: Any) -> PointResult:
    """A finished point with round figures (hand-checkable in the table)."""
    if status is not PointStatus.OK:
        return PointResult(batch_size=batch_size, status=status, message=figures.pop("message", ""))
    base = dict(
        n_requests=8, input_tokens=800, output_tokens=1600,
        duration_s=10.0 / batch_size, tokens_per_s=160.0 * batch_size,
        s_per_token=0.01 * (1 + batch_size / 10), ttft_p50_s=0.05 * batch_size,
        ttft_p90_s=0.08 * batch_size, tpot_p50_s=0.012, tpot_p90_s=0.015,
        energy_j=3000.0 / batch_size, j_per_token=1.875 / batch_size,
        gco2e_per_token=(1.875 / batch_size) / 3.6e6 * 413.0,
        embodied_gco2e_per_token=1e-6, mfu=0.01 * batch_size, mbu=0.2 * batch_size,
        peak_mem_gb=14.0 + batch_size, avg_power_w=300.0, intensity_gco2e_per_kwh=413.0,
    )
    base.update(figures)
    return PointResult(batch_size=batch_size, status=status, **base)


class ScriptedRunner:
    """Emits a scripted sweep; writes a real run directory through the store as it goes.

    `pause_after` holds the sweep after that many points until `cancel()` (or `release()`),
    the way the real runner stops its running point on cancel.
    """

    instances: list[ScriptedRunner] = []

    def __init__(self, config: Any, on_event: Any, *, run_dir: Path, points: Iterable[PointResult],
                 pause_after: int | None = None, fail_prepare: Exception | None = None,
                 fail_run: Exception | None = None, recommended: int | None = None) -> None:
        self.config = config
        self.on_event = on_event
        self._run_dir = run_dir
        self._points = list(points)
        self._pause_after = pause_after
        self._fail_prepare = fail_prepare
        self._fail_run = fail_run
        self._recommended = recommended
        self._cancel = threading.Event()
        self._release = threading.Event()
        self.sampler: FixedSampler | None = None
        self.run_dir: Path | None = None
        self.finished = threading.Event()
        self.cancel_calls = 0
        ScriptedRunner.instances.append(self)

    def prepare(self) -> None:
        if self._fail_prepare is not None:
            raise self._fail_prepare
        self.run_dir = self._run_dir
        self.sampler = FixedSampler()
        self._writer = RunWriter(self.run_dir, {
            "run": {"model": "tiny", "engine": "hf", "batch_sizes": "1,2,4"},
            "environment": {"devices": ["NVIDIA H100 80GB HBM3"], "gpu_indices": [0],
                            "power_source": "nvml", "energy_estimated": False},
        })

    def cancel(self) -> None:
        self.cancel_calls += 1
        self._cancel.set()

    def release(self) -> None:
        self._release.set()

    def run(self) -> None:
        emit = self.on_event
        state = "done"
        try:
            planned = tuple(p.batch_size for p in self._points)
            emit(ev.SweepStarted(str(self.run_dir), planned, False, ("NVIDIA H100 80GB HBM3",), False))
            emit(ev.PhaseChanged(Phase.LOADING, None, "tiny"))
            for n, p in enumerate(self._points):
                if self._pause_after is not None and n == self._pause_after:
                    emit(ev.PointStarted(p.batch_size, 8))
                    emit(ev.PhaseChanged(Phase.MEASURING, p.batch_size))
                    emit(ev.PointProgress(p.batch_size, 3, 8, 1.5, 2.5))
                    while not (self._cancel.is_set() or self._release.is_set()):
                        self._cancel.wait(0.02)
                    if self._cancel.is_set():
                        cancelled = PointResult(batch_size=p.batch_size, status=PointStatus.CANCELLED,
                                                message="cancelled by the user")
                        self._writer.write_point(cancelled)
                        emit(ev.PointFinished(cancelled))
                        state = "cancelled"
                        break
                else:
                    emit(ev.PointStarted(p.batch_size, 8))
                if self._fail_run is not None:
                    raise self._fail_run
                self._writer.write_point(p)
                emit(ev.PointFinished(p))
        finally:
            if state == "cancelled" or self._fail_run is None:
                self._writer.finish(state, recommended_batch=self._recommended)
                emit(ev.SweepFinished(str(self.run_dir), state, "",
                                      self._recommended if state == "done" else None))
            else:
                self._writer.finish("error", message=str(self._fail_run))
                emit(ev.SweepFinished(str(self.run_dir), "error", str(self._fail_run), None))
            self.finished.set()


def screen_text(app: Any) -> str:
    """The app's current frame as plain text, one line per row."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(segment.text for segment in strip) for strip in strips)


def table_cells(app: Any) -> list[list[str]]:
    """The results table as text: one list of cell strings per row, in display order."""
    table = app.results.table
    return [[str(getattr(c, "plain", c)).strip() for c in table.get_row_at(i)]
            for i in range(table.row_count)]


@pytest.fixture(autouse=False)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Config and data dirs inside tmp_path: no test reads or writes the user's own."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return tmp_path


async def wait_until(pilot: Any, condition: Any, timeout_s: float = 10.0, what: str = "") -> None:
    """Let the app run until condition() is true (events from worker threads need turns)."""
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await pilot.pause(0.02)


async def press_to_exit(pilot: Any, key: str, timeout_s: float = 10.0) -> None:
    """Press a key that ends the app. (pilot.press would wait for widgets that are closing.)"""
    import asyncio
    import time

    app = pilot.app
    app.simulate_key(key)
    deadline = time.monotonic() + timeout_s
    while app.return_value is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
