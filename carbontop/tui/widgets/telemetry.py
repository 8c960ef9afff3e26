"""Live telemetry: per device, power (W) and memory used (GB of the total) over the last minute,
then utilisation, temperature and SM clock as they stand."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Label, Static

from carbontop.core.records import Sample
from carbontop.tui.widgets.sparkline import RangeSparkline

WINDOW_S = 60.0
GB = 1e9


@dataclass
class DeviceSeries:
    """What one device row shows, already reduced to plain numbers."""

    index: int
    name: str
    times: list[float] = field(default_factory=list)
    power_w: list[float | None] = field(default_factory=list)
    mem_gb: list[float | None] = field(default_factory=list)
    mem_total_gb: float | None = None
    # the latest reading of each, where the source has it (NVML does; RAPL and the estimate do not)
    util_pct: float | None = None
    temp_c: float | None = None
    sm_clock_mhz: float | None = None

    @classmethod
    def from_samples(cls, index: int, name: str, samples: Iterable[Sample]) -> DeviceSeries:
        series = cls(index=index, name=name)
        for s in samples:
            series.times.append(s.t_s)
            series.power_w.append(s.power_w)
            series.mem_gb.append(None if s.mem_used_bytes is None else s.mem_used_bytes / GB)
            if s.mem_total_bytes:
                series.mem_total_gb = s.mem_total_bytes / GB
            if s.util_pct is not None:
                series.util_pct = s.util_pct
            if s.temp_c is not None:
                series.temp_c = s.temp_c
            if s.sm_clock_mhz is not None:
                series.sm_clock_mhz = s.sm_clock_mhz
        return series

    def state_line(self) -> str:
        """Utilisation, temperature and SM clock as they stand, or "" where none was read."""
        parts = []
        if self.util_pct is not None:
            parts.append(f"util {self.util_pct:3.0f}%")
        if self.temp_c is not None:
            parts.append(f"{self.temp_c:3.0f} °C")
        if self.sm_clock_mhz is not None:
            parts.append(f"SM {self.sm_clock_mhz:4.0f} MHz")
        return "  ".join(parts)


def memory_stats(current_gb: float, max_gb: float, total_gb: float | None) -> str:
    """'35.8/80 GB  45% max 35.8': used of the card's total where the source knows the total."""
    if not total_gb:
        return f"{current_gb:5.1f} GB max {max_gb:.1f}"
    return f"{current_gb:5.1f}/{total_gb:.0f} GB {current_gb / total_gb * 100:3.0f}% max {max_gb:.1f}"


def _stats(values: list[float | None]) -> tuple[float, float, float] | None:
    """(current, min, max) of the readings there are."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return present[-1], min(present), max(present)


SOURCE_WORDS = {"nvml": "NVML", "rapl": "RAPL counters", "estimate": "estimated from CPU TDP × load"}


def source_words(kind: str, estimated: bool) -> str:
    """Where the power readings come from, said once: 'NVML', 'estimated from CPU TDP × load'."""
    words = SOURCE_WORDS.get(kind, kind)
    if estimated and "estimate" not in words:
        words = f"{words}, estimated" if words else "estimated"
    return words


def device_label(index: int, name: str) -> str:
    if index < 0:
        return name or "CPU"
    return f"GPU {index} · {name}" if name else f"GPU {index}"


class DeviceView(Vertical):
    """Name line, then a power row and a memory row: label, sparkline, current/min/max."""

    DEFAULT_CSS = """
    DeviceView { height: auto; }
    DeviceView .device-name { text-style: bold; height: 1; }
    DeviceView Horizontal { height: auto; }
    DeviceView .metric { width: 7; color: $text-muted; }
    DeviceView .stats { width: 27; padding-left: 1; }
    DeviceView .state { width: 1fr; color: $text-muted; }
    DeviceView .state-row { display: none; height: 1; }
    DeviceView.-has-state .state-row { display: block; }
    /* many devices on a narrow terminal: power only, so four GPUs fit without scrolling */
    Screen.-narrow TelemetryPane.-many DeviceView .state-row { display: none; }
    """

    def __init__(self, index: int) -> None:
        super().__init__(id=f"device-{'cpu' if index < 0 else index}", classes="device")
        self.index = index
        # ceilings only grow, so a busy minute and the idle one after it share one scale
        self._power_ceiling_w = 0.0
        self._mem_ceiling_gb = 0.0
        self._pending: tuple[DeviceSeries, float, float, str] | None = None
        self._ready = False

    def compose(self) -> ComposeResult:
        yield Label("", classes="device-name")
        with Horizontal():
            yield Label("power", classes="metric")
            yield RangeSparkline(classes="power")
            yield Label("", classes="stats power-stats")
        with Horizontal(classes="memory-row"):
            yield Label("memory", classes="metric")
            yield RangeSparkline(classes="memory")
            yield Label("", classes="stats memory-stats")
        with Horizontal(classes="state-row"):
            yield Label("", classes="metric")
            yield Label("", classes="state")

    def on_mount(self) -> None:
        self._ready = True
        if self._pending is not None:
            series, t_end, span_s, suffix = self._pending
            self.show(series, t_end=t_end, span_s=span_s, suffix=suffix)

    def show(self, series: DeviceSeries, *, t_end: float, span_s: float, suffix: str = "") -> None:
        if not self._ready:  # just mounted by the pane: draw once the rows exist
            self._pending = (series, t_end, span_s, suffix)
            return
        self.query_one(".device-name", Label).update(device_label(series.index, series.name) + suffix)
        power = _stats(series.power_w)
        if power:
            self._power_ceiling_w = max(self._power_ceiling_w, power[2])
        self.query_one(".power", RangeSparkline).set_series(
            series.times, series.power_w, t_end=t_end, span_s=span_s, v_max=self._power_ceiling_w
        )
        self.query_one(".power-stats", Label).update(
            f"{power[0]:5.0f} W  min {power[1]:.0f} max {power[2]:.0f}" if power else "  n/a"
        )
        mem = _stats(series.mem_gb)
        if mem:
            self._mem_ceiling_gb = max(self._mem_ceiling_gb, series.mem_total_gb or mem[2])
        self.query_one(".memory", RangeSparkline).set_series(
            series.times, series.mem_gb, t_end=t_end, span_s=span_s, v_max=self._mem_ceiling_gb
        )
        self.query_one(".memory-stats", Label).update(
            memory_stats(mem[0], mem[2], series.mem_total_gb) if mem else "  n/a"
        )
        state = series.state_line()
        self.query_one(".state", Label).update(state)
        self.set_class(bool(state), "-has-state")


class TelemetryPane(VerticalScroll):
    """One DeviceView per device; fed by the app from a live sampler or a saved power trace."""

    DEFAULT_CSS = """
    TelemetryPane { height: auto; }
    TelemetryPane #telemetry-note { color: $text-muted; height: auto; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        # views by device index: a removed view lingers in the DOM until the next frame
        self._views: dict[int, DeviceView] = {}
        self._note = Static("Waiting for the first power reading…", id="telemetry-note")

    def compose(self) -> ComposeResult:
        yield self._note

    def on_mount(self) -> None:
        self.border_title = "Telemetry"

    def note(self, text: str) -> None:
        self._note.update(text)
        self._note.display = bool(text)

    def clear_devices(self) -> None:
        views, self._views = self._views, {}
        for view in views.values():
            view.remove()

    def _view(self, index: int) -> DeviceView:
        view = self._views.get(index)
        if view is None:
            view = self._views[index] = DeviceView(index)
            self.mount(view)
        return view

    def _show(self, devices: list[DeviceSeries], t_end: float, span_s: float, suffix: str) -> None:
        wanted = {d.index for d in devices}
        for index in [i for i in self._views if i not in wanted]:
            self._views.pop(index).remove()
        for series in sorted(devices, key=lambda d: d.index):
            self._view(series.index).show(series, t_end=t_end, span_s=span_s, suffix=suffix)
        # app.tcss lays many devices out two to a row where the terminal is wide
        self.set_class(len(self._views) >= 3, "-many")
        # one device: the header line names it, so a short terminal can spare its name line
        self.set_class(len(self._views) == 1, "-single")

    def show_live(self, sampler: Any) -> None:
        """Pull the last minute from a TelemetrySampler (or anything with the same methods)."""
        source = getattr(sampler, "source", None)
        kind = getattr(source, "kind", "") or ""
        estimated = bool(getattr(source, "estimated", False))
        self.border_title = "Telemetry" + (f" · {source_words(kind, estimated)}" if kind or estimated else "")
        latest: dict[int, Sample] = sampler.latest() or {}
        if not latest:
            self.note("Waiting for the first power reading…")
            return
        self.note("")
        names: dict[int, str] = {}
        if source is not None and hasattr(source, "device_names"):
            names = dict(source.device_names() or {})
        t_end = max(s.t_s for s in latest.values())
        devices = [
            DeviceSeries.from_samples(index, names.get(index, ""), sampler.samples(t0=t_end - WINDOW_S, gpu=index))
            for index in latest
        ]
        self._show(devices, t_end, WINDOW_S, " · estimated" if estimated else "")

    def show_trace(self, samples: Iterable[Sample], names: Mapping[int, str] | None = None,
                   *, estimated: bool = False) -> None:
        """A saved run's whole power trace, on one screen width."""
        self.border_title = "Power trace · saved run" + (" · estimated" if estimated else "")
        by_device: dict[int, list[Sample]] = {}
        for sample in samples:
            by_device.setdefault(sample.gpu_index, []).append(sample)
        if not by_device:
            self.clear_devices()
            self.note("This run has no power readings.")
            return
        self.note("")
        t_start = min(s.t_s for ss in by_device.values() for s in ss)
        t_end = max(s.t_s for ss in by_device.values() for s in ss)
        names = names or {}
        devices = [
            DeviceSeries.from_samples(i, names.get(i, ""), sorted(ss, key=lambda s: s.t_s))
            for i, ss in by_device.items()
        ]
        self._show(devices, t_end, max(1.0, t_end - t_start), " · estimated" if estimated else "")
