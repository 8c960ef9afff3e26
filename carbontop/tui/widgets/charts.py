"""The chart view: J/token and gCO2e/token against batch size, latency against carbon, power.

Drawn with textual-plot's PlotWidget. It was chosen over textual-plotext because it is a native
Textual widget that is maintained (0.10, 2026): it takes the theme's colours, redraws on resize,
has error bars, tick placement at 1-2-5 steps and a formatter hook (the log2 batch axis below).
textual-plotext's last release (1.0.1, 2024) pins plotext below 6.0, the release line plotext has
since rewritten and moved away from, so it would tie the app to an abandoned plotting library.
textual-plot has no text annotations, so the subclasses here write batch-size labels onto its
canvas after it draws (`_render_plot`, a private hook: pyproject pins textual-plot below 0.11).

The numbers come from carbontop.figures.series, which `carbontop plot` shares; this module only
decides how they look in a terminal: one chart at a time under tabs where the view is small, all
four in a grid where it is big enough.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from textual.app import ComposeResult
from textual.containers import Container, Vertical
from textual.widgets import Static, Tab, Tabs
from textual_plot import HiResMode, PlotWidget
from textual_plot.axis_formatter import AxisFormatter, NumericAxisFormatter

from carbontop.core.records import Sample
from carbontop.figures import series as fs
from carbontop.figures.series import ChartRun

GRID_MIN_WIDTH = 120  # the view's own size, from which the four charts share the space
GRID_MIN_HEIGHT = 30
LEGEND_MIN_HEIGHT = 14  # below this a legend box would hide the data
POWER_POINTS_PER_COLUMN = 4  # braille has 2 dots a column: more readings than this are not seen
BEST_MARK = "★"  # the results table's marks, so one symbol means one thing everywhere
RECOMMENDED_MARK = "✓"


# ---- axis formatters ----------------------------------------------------------------------


class Log2BatchFormatter(AxisFormatter):
    """Ticks at powers of two for an axis that holds log2(batch size)."""

    def get_ticks(self, min_: float, max_: float, max_ticks: int = 8) -> list[float]:
        exponents = list(range(math.ceil(min_ - 1e-9), math.floor(max_ + 1e-9) + 1))
        step = 1
        while len(exponents[::step]) > max(2, max_ticks):
            step *= 2
        return [float(e) for e in exponents[::step]]

    def get_labels_for_ticks(self, ticks: Sequence[float]) -> list[str]:
        return [batch_label(2 ** t) for t in ticks]


def batch_label(batch: float) -> str:
    b = int(round(batch))
    return f"{b // 1024}k" if b >= 1024 and b % 1024 == 0 else str(b)


class CompactFormatter(NumericAxisFormatter):
    """NumericAxisFormatter's 1-2-5 ticks, labelled short enough for a 9-column margin
    (carbon per token is 1e-5..1e-3 g: scientific there, 3.5e-5 rather than 0.000035)."""

    def get_labels_for_ticks(self, ticks: Sequence[float]) -> list[str]:
        if not ticks:
            return []
        biggest = max(abs(t) for t in ticks)
        if biggest and (biggest < 0.01 or biggest >= 1e5):
            return [_sci(t) for t in ticks]
        return super().get_labels_for_ticks(ticks)


def _sci(value: float) -> str:
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.1e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


# ---- the plots ----------------------------------------------------------------------------


class ChartPlot(PlotWidget):
    """PlotWidget with carbontop's defaults: no pan or zoom (the view redraws live), not
    focusable (its arrow-key bindings would take the table's), theme colours, text labels."""

    can_focus = False

    DEFAULT_CSS = """
    ChartPlot { height: 1fr; width: 1fr; }
    ChartPlot > #legend { border: round $foreground 30%; background: $surface; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, allow_pan_and_zoom=False)
        self._runs: tuple[ChartRun, ...] = ()
        self._labels_to_write: list[tuple[float, float, str, str, int]] = []
        self.empty_reason = ""

    # colours from the theme, so charts follow `t` like everything else
    def colour(self, name: str, fallback: str = "white") -> str:
        try:
            return self.app.theme_variables.get(name) or fallback
        except Exception:  # noqa: BLE001 - no app yet (built outside one): plain colours
            return fallback

    def palette(self) -> list[str]:
        names = ("primary", "accent", "warning", "success", "secondary", "error")
        defaults = ("dodger_blue2", "magenta", "yellow", "green", "cyan", "red")
        return [self.colour(n, d) for n, d in zip(names, defaults, strict=True)]

    def show_runs(self, runs: Sequence[ChartRun]) -> None:
        self._runs = tuple(runs)
        if self.is_mounted:
            self.redraw()

    def on_mount(self) -> None:
        super().on_mount()
        self.margin_left = 9
        self.redraw()

    def on_resize(self) -> None:
        # the legend is dropped where it would cover the data; labels are re-placed
        if self.is_mounted:
            self.redraw()

    def redraw(self) -> None:
        self.clear()
        self._labels_to_write = []
        self.draw()
        self.show_legend(is_visible=self.size.height >= LEGEND_MIN_HEIGHT and self.has_legend())

    def has_legend(self) -> bool:
        return len(self._runs) > 1

    def draw(self) -> None:  # pragma: no cover - every chart overrides it
        raise NotImplementedError

    def label_at(self, x: float, y: float, text: str, style: str, dx: int = 1) -> None:
        """Write `text` beside data point (x, y) once the plot is drawn (dx cells to the right)."""
        self._labels_to_write.append((x, y, text, style, dx))

    def _render_plot(self) -> None:
        super()._render_plot()
        try:
            canvas = self.query_one("#plot")
        except Exception:  # noqa: BLE001 - not composed yet
            return
        taken: list[tuple[int, int, int]] = []  # (row, first column, last column) written
        anchors: set[tuple[int, int]] = set()
        region = self._scale_rectangle
        for x, y, text, style, dx in self._labels_to_write:
            px, py = self.get_pixel_from_coordinate(x, y)
            if (px, py) in anchors:
                continue  # two points in one cell: the first label (the marked point's) stands
            anchors.add((px, py))
            start = px + dx
            end = start + len(text) - 1
            if end >= region.right or py <= region.y - 1 or py >= region.bottom:
                start, end = px - len(text), px - 1  # no room on the right: on the left
            if start <= region.x or end >= region.right:
                continue
            if any(row == py and not (end < a - 1 or start > b + 1) for row, a, b in taken):
                continue  # crowded: a label over another would make both unreadable
            taken.append((py, start, end))
            canvas.write_text(start, py, f"[{style}]{text}")  # type: ignore[attr-defined]


class BatchPlot(ChartPlot):
    """One figure against batch size on a log2 axis, one line per run, error bars where the
    points carry a confidence interval."""

    def __init__(self, metric: str, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.metric = metric  # "energy" or "carbon"

    def _metric(self, run: ChartRun) -> fs.Metric:
        if self.metric == "energy":
            return fs.Metric.J_PER_TOKEN
        return fs.carbon_metric(run.points)

    def draw(self) -> None:
        self.set_x_formatter(Log2BatchFormatter())
        self.set_y_formatter(CompactFormatter())
        self.set_xlabel("batch size (log2)")
        all_series = [(run, fs.batch_series(run.points, self._metric(run), run.label))
                      for run in self._runs]
        all_series = [(run, s) for run, s in all_series if len(s)]
        metrics = {self._metric(run) for run, _ in all_series}
        label = (metrics.pop().axis_label if len(metrics) == 1 else
                 "gCO2e/token (total or operational)" if self.metric == "carbon" else "J/token")
        self.set_ylabel(label)
        if not all_series:
            self.empty_reason = "No measured point yet."
            self.set_xlimits(0, 4)
            self.set_ylimits(0, 1)
            return
        self.empty_reason = ""
        xs = [math.log2(b) for _, s in all_series for b in s.x]
        y_top = max(hi for _, s in all_series for hi in _upper(s))
        self.set_xlimits(min(xs) - 0.3, max(xs) + 0.3)
        self.set_ylimits(0.0, y_top * 1.08 or 1.0)
        for colour, (run, s) in zip(_cycle(self.palette()), all_series, strict=False):
            lx = [math.log2(b) for b in s.x]
            if len(s) > 1:
                self.plot(lx, s.y, line_style=colour, hires_mode=HiResMode.BRAILLE,
                          label=run.label if len(self._runs) > 1 else None)
            if s.has_intervals:
                below, above = s.y_errors()
                mids = [y + (a - b) / 2 for y, b, a in zip(s.y, below, above, strict=True)]
                half = [(a + b) / 2 for b, a in zip(below, above, strict=True)]
                self.errorbar(lx, mids, yerr=half, marker="│", marker_style=colour)
            self.scatter(lx, s.y, marker="●", marker_style=colour)


class TradeoffPlot(ChartPlot):
    """Latency against carbon per token: one dot per batch size, the target as a line."""

    def __init__(self, latency: fs.Metric = fs.Metric.S_PER_TOKEN, *, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.latency = latency

    def has_legend(self) -> bool:
        return True

    def draw(self) -> None:
        self.set_x_formatter(CompactFormatter())
        self.set_y_formatter(CompactFormatter())
        charts = [(run, fs.tradeoff(run.points, latency=self.latency, target=run.slo_s_per_token
                                    if self.latency is fs.Metric.S_PER_TOKEN else None,
                                    recommended=run.recommended, label=run.label))
                  for run in self._runs]
        charts = [(run, c) for run, c in charts if len(c.series)]
        carbons = {c.carbon for _, c in charts}
        self.set_xlabel(carbons.pop().axis_label if len(carbons) == 1 else "gCO2e/token")
        self.set_ylabel(self.latency.axis_label)
        if not charts:
            self.empty_reason = "No measured point yet."
            self.set_xlimits(0, 1)
            self.set_ylimits(0, 1)
            return
        self.empty_reason = ""
        x_top = max(x for _, c in charts for x in c.series.x)
        targets = sorted({c.target for _, c in charts if c.target is not None})
        y_values = [y for _, c in charts for y in c.series.y]
        # the target line is drawn where it is near the data; a far-off target is said in words
        near = [t for t in targets if t <= 3 * max(y_values)]
        y_top = max(y_values + near)
        self.set_xlimits(0.0, x_top * 1.08)
        self.set_ylimits(0.0, y_top * 1.12)
        many = len(charts) > 1
        for t in near:
            self.plot([0.0, x_top * 1.08], [t, t], line_style=self.colour("error", "red"),
                      hires_mode=HiResMode.BRAILLE, label=f"target {t:g} {_unit(self.latency)}")
        for t in (t for t in targets if t not in near):
            # far above the data: drawing it would squash every point into the bottom rows
            self.plot([], [], line_style=self.colour("error", "red"), hires_mode=HiResMode.BRAILLE,
                      label=f"target {t:g} {_unit(self.latency)} (above the chart)")
        in_legend: set[fs.MarkKind] = set()  # a mark's symbol and colour mean the same in every run
        for colour, (run, chart) in zip(_cycle(self.palette()), charts, strict=False):
            s = chart.series
            self.plot(s.x, s.y, line_style=colour, hires_mode=HiResMode.BRAILLE,
                      label=run.label if many else None)
            self.scatter(s.x, s.y, marker="●", marker_style=colour)
            # the marked points' labels first: where points share a cell, theirs is the one shown
            marked = {m.batch_size for m in chart.marks}
            order = sorted(zip(s.x, s.y, s.batch_sizes, strict=True), key=lambda p: p[2] not in marked)
            for x, y, b in order:
                self.label_at(x, y, batch_label(b), colour)
            for mark in chart.marks:
                symbol = BEST_MARK if mark.kind is fs.MarkKind.LOWEST_CARBON else RECOMMENDED_MARK
                style = self.colour("warning" if mark.kind is fs.MarkKind.LOWEST_CARBON else "success")
                name = mark.kind.value if many else f"{mark.kind.value} (batch {mark.batch_size})"
                self.scatter([mark.x], [mark.y], marker=symbol, marker_style=f"bold {style}",
                             label=None if mark.kind in in_legend else name)
                in_legend.add(mark.kind)


class PowerPlot(ChartPlot):
    """Power against time, per GPU; each point's measured window shaded and labelled."""

    def has_legend(self) -> bool:
        return sum(len(fs.power_trace(r.samples).gpus) for r in self._runs) > 1

    def draw(self) -> None:
        self.set_x_formatter(CompactFormatter())
        self.set_y_formatter(CompactFormatter())
        self.set_xlabel("time since the sweep started (s)")
        self.set_ylabel("power W")
        traces = [(run, fs.power_trace(run.samples, run.points, t0_s=run.t0_s)) for run in self._runs]
        traces = [(run, t) for run, t in traces if t.gpus]
        if not traces:
            self.empty_reason = "No power readings yet."
            self.set_xlimits(0, 60)
            self.set_ylimits(0, 1)
            return
        self.empty_reason = ""
        x_top = max(t.duration_s for _, t in traces) or 1.0
        y_top = max(max(s.y) for _, t in traces for s in t.gpus if s.y) * 1.1 or 1.0
        self.set_xlimits(0.0, x_top)
        self.set_ylimits(0.0, y_top)
        if len(traces) == 1:  # windows of several runs on one clock would only mislead
            shade = self.colour("panel", "grey23")
            for window in traces[0][1].windows:
                width = max(window.end_s - window.start_s, 1e-9)
                self.bar([window.start_s + width / 2], [y_top], width=width, bar_style=shade)
                self.label_at(window.start_s + width / 2, y_top, f"b{batch_label(window.batch_size)}",
                              self.colour("foreground", "white"), dx=0)
        budget = max(50, self.size.width * POWER_POINTS_PER_COLUMN)
        for colour, (run, s) in zip(_cycle(self.palette()),
                                     [(run, s) for run, t in traces for s in t.gpus], strict=False):
            s = fs.thin(s, budget)
            name = s.label if len(traces) == 1 else f"{run.label} {s.label}"
            self.plot(s.x, s.y, line_style=colour, hires_mode=HiResMode.BRAILLE, label=name)


def _upper(s: fs.Series) -> list[float]:
    return [iv[1] if iv is not None else y for y, iv in
            zip(s.y, s.y_interval or (None,) * len(s.y), strict=True)]


def _unit(metric: fs.Metric) -> str:
    return "s/token" if metric is fs.Metric.S_PER_TOKEN else "s"


def _cycle(colours: list[str]) -> Any:
    while True:
        yield from colours


# ---- the view -----------------------------------------------------------------------------

TABS = (("energy", "J/token"), ("carbon", "gCO2e/token"), ("tradeoff", "latency × carbon"),
        ("power", "power"))


class ChartView(Vertical):
    """The four charts: under tabs (← → or a click) where small, in a 2×2 grid where big."""

    DEFAULT_CSS = """
    ChartView { height: 1fr; }
    ChartView > Tabs { height: 2; }
    ChartView > #chart-note { color: $text-muted; height: 1; padding: 0 1; }
    ChartView > #chart-grid { layout: grid; grid-size: 1 1; height: 1fr; }
    ChartView > #chart-grid > ChartPlot { display: none; }
    ChartView > #chart-grid > ChartPlot.-current { display: block; }
    ChartView.-grid > Tabs { display: none; }
    ChartView.-grid > #chart-grid { grid-size: 2 2; grid-gutter: 0 1; }
    ChartView.-grid > #chart-grid > ChartPlot { display: block; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._runs: tuple[ChartRun, ...] = ()
        self.plots: dict[str, ChartPlot] = {
            "energy": BatchPlot("energy", id="chart-energy"),
            "carbon": BatchPlot("carbon", id="chart-carbon"),
            "tradeoff": TradeoffPlot(id="chart-tradeoff"),
            "power": PowerPlot(id="chart-power"),
        }
        self.current = "energy"

    def compose(self) -> ComposeResult:
        yield Tabs(*(Tab(title, id=f"tab-{key}") for key, title in TABS))
        yield Static("", id="chart-note")
        with Container(id="chart-grid"):
            yield from self.plots.values()

    def on_mount(self) -> None:
        self._select(self.current)
        self._fit()

    def on_resize(self) -> None:
        self._fit()

    def _fit(self) -> None:
        grid = self.size.width >= GRID_MIN_WIDTH and self.size.height >= GRID_MIN_HEIGHT
        if grid != self.grid:
            self.set_class(grid, "-grid")
            for plot in self.plots.values():
                if plot.is_mounted:
                    self.call_after_refresh(plot.redraw)

    @property
    def grid(self) -> bool:
        return self.has_class("-grid")

    def on_tabs_tab_activated(self, event: Tabs.TabActivated) -> None:
        event.stop()
        if event.tab is not None and event.tab.id:
            self._select(event.tab.id.removeprefix("tab-"))

    def _select(self, key: str) -> None:
        self.current = key
        for name, plot in self.plots.items():
            plot.set_class(name == key, "-current")
        self._note()
        # a plot redrawn while hidden drew on a canvas of no size: draw it again once laid out
        plot = self.plots.get(key)
        if plot is not None and plot.is_mounted:
            self.call_after_refresh(plot.redraw)

    def show_chart(self, key: str) -> None:
        """Bring one chart to the front (a no-op in the grid, where all four show)."""
        if self.is_mounted:
            self.query_one(Tabs).active = f"tab-{key}"
        self._select(key)

    def show_runs(self, runs: Sequence[ChartRun]) -> None:
        self._runs = tuple(runs)
        for plot in self.plots.values():
            plot.show_runs(self._runs)
        self._note()

    def update_samples(self, samples: Sequence[Sample], t0_s: float | None = None) -> None:
        """New telemetry for the (single, live) run: only the power chart redraws."""
        if len(self._runs) != 1:
            return
        run = self._runs[0]
        self._runs = (dataclasses.replace(run, samples=samples,
                                          t0_s=t0_s if t0_s is not None else run.t0_s),)
        for key, plot in self.plots.items():
            plot._runs = self._runs
            if key == "power" and plot.is_mounted:
                plot.redraw()
        self._note()

    @property
    def runs(self) -> tuple[ChartRun, ...]:
        return self._runs

    def _note(self) -> None:
        if not self.is_mounted:
            return
        shown = self.plots.values() if self.grid else [self.plots[self.current]]
        reasons = {plot.empty_reason for plot in shown if plot.empty_reason}
        note = self.query_one("#chart-note", Static)
        if not self._runs:
            note.update("Charts fill in as sweep points finish; o opens a saved run.")
        elif reasons:
            note.update(" ".join(sorted(reasons)))
        else:
            note.update(" vs ".join(r.label for r in self._runs) if len(self._runs) > 1 else self._runs[0].label)
