"""A sparkline over a fixed time window and a fixed value range.

Textual's Sparkline scales each frame to its own min and max, so a flat idle line would fill the
cell and a 2 W wobble would look like a spike. Power and memory read better from zero to a ceiling
that only grows (the highest seen, or the card's memory size), laid out on a time axis where a
gap in the data stays a gap.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.style import Style
from rich.text import Text
from textual.app import RenderResult
from textual.color import Color
from textual.widgets import Sparkline

BARS = "▁▂▃▄▅▆▇█"


def bucket_max(
    times: Sequence[float], values: Sequence[float | None], t_end: float, span_s: float, n: int
) -> list[float | None]:
    """Split [t_end - span_s, t_end] into n cells; each cell holds the largest value in it.

    Cells between two readings carry the earlier reading forward (a slow source leaves no holes);
    cells before the first reading stay empty.
    """
    if n <= 0:
        return []
    cells: list[float | None] = [None] * n
    if span_s <= 0:
        span_s = 1.0
    t0 = t_end - span_s
    last_index = -1
    for t, v in zip(times, values, strict=False):
        if v is None or t < t0 or t > t_end:
            continue
        i = min(n - 1, int((t - t0) / span_s * n))
        cells[i] = v if cells[i] is None else max(cells[i], v)  # type: ignore[type-var]
        last_index = max(last_index, i)
    held: float | None = None
    for i in range(last_index + 1):
        if cells[i] is None:
            cells[i] = held
        else:
            held = cells[i]
    return cells


def bar_rows(cells: Sequence[float | None], v_max: float, height: int) -> list[list[int | None]]:
    """Per row (top first), per cell: None (blank) or an index into BARS (7 = full block)."""
    levels = len(BARS) * height
    rows: list[list[int | None]] = [[None] * len(cells) for _ in range(height)]
    for x, v in enumerate(cells):
        if v is None:
            continue
        # at least the lowest bar for any reading, so "0 W" still shows a reading exists
        level = 1 if v_max <= 0 else max(1, min(levels, round(v / v_max * levels)))
        for r in range(height):
            row_from_bottom = height - 1 - r
            filled = level - row_from_bottom * len(BARS)
            if filled >= len(BARS):
                rows[r][x] = len(BARS) - 1
            elif filled > 0:
                rows[r][x] = filled - 1
    return rows


class RangeSparkline(Sparkline):
    """Sparkline of (time, value) readings over a time window, scaled from 0 to `v_max`."""

    DEFAULT_CSS = """
    RangeSparkline { height: 1; width: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__([], id=id, classes=classes)
        self._times: Sequence[float] = ()
        self._values: Sequence[float | None] = ()
        self._t_end = 0.0
        self._span_s = 60.0
        self._v_max = 0.0

    def set_series(
        self,
        times: Sequence[float],
        values: Sequence[float | None],
        *,
        t_end: float,
        span_s: float,
        v_max: float,
    ) -> None:
        self._times, self._values = times, values
        self._t_end, self._span_s, self._v_max = t_end, span_s, v_max
        self.refresh()

    def render(self) -> RenderResult:
        width, height = self.size.width, max(1, self.size.height)
        cells = bucket_max(self._times, self._values, self._t_end, self._span_s, width)
        _, base = self.background_colors
        low = base + self.get_component_styles("sparkline--min-color").color
        high = base + self.get_component_styles("sparkline--max-color").color
        text = Text(no_wrap=True, overflow="crop")
        for r, row in enumerate(bar_rows(cells, self._v_max, height)):
            if r:
                text.append("\n")
            for x, bar in enumerate(row):
                if bar is None:
                    text.append(" ")
                    continue
                v = cells[x] or 0.0
                ratio = 0.0 if self._v_max <= 0 else min(1.0, v / self._v_max)
                colour: Color = low.blend(high, ratio)
                text.append(BARS[bar], Style(color=colour.rich_color))
        return text
