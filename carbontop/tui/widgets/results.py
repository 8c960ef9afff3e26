"""The results table: one row per finished point, units in the headers, the best point marked."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from carbontop.core.carbon import lowest_carbon_batch
from carbontop.core.records import PointResult
from carbontop.figures.numbers import FORMATS, NumberFormat

BEST_MARK = "★"
RECOMMENDED_MARK = "✓"


@dataclass(frozen=True)
class Column:
    key: str  # PointResult field (points.csv column); its format is figures/numbers.FORMATS[key]
    header: str  # two lines at most: units always in the header

    @property
    def number(self) -> NumberFormat:
        return FORMATS[self.key]


def _scaled(point: PointResult, column: Column) -> float | None:
    value = getattr(point, column.key)
    if value is None or math.isnan(value):
        return None
    return value * column.number.scale


# The first eleven fit 80 columns; the rest are there on a wide terminal (or by scrolling right).
COLUMNS: tuple[Column, ...] = (
    Column("tokens_per_s", "tok/s"),
    Column("s_per_token", "s/tok"),
    Column("ttft_p50_s", "TTFT\np50 s"),
    Column("tpot_p50_s", "TPOT\np50 ms"),
    Column("j_per_token", "J/tok"),
    Column("gco2e_per_token", "gCO2e\n/tok"),
    Column("mfu", "MFU\n%"),
    Column("mbu", "MBU\n%"),
    Column("peak_mem_gb", "peak\nGB"),
    Column("ttft_p90_s", "TTFT\np90 s"),
    Column("tpot_p90_s", "TPOT\np90 ms"),
    Column("energy_j", "energy\nJ"),
    Column("avg_power_w", "power\nW"),
    Column("embodied_gco2e_per_token", "embodied\ngCO2e/tok"),
    Column("total_gco2e_per_token", "total\ngCO2e/tok"),
    Column("intensity_gco2e_per_kwh", "grid\ngCO2e/kWh"),
    Column("duration_s", "time\ns"),
)
STATUS_WORDS = {"ok": "ok", "kv_bound": "KV", "oom": "OOM", "crashed": "crash", "hung": "hung",
                "cancelled": "cancel", "error": "error"}


def best_batch(points: Mapping[int, PointResult]) -> int | None:
    """The point marked lowest-carbon: carbon.lowest_carbon_batch over the rows shown."""
    return lowest_carbon_batch(list(points.values()))


class ResultsPane(Vertical):
    DEFAULT_CSS = """
    ResultsPane { height: 1fr; }
    /* no scroll bars: with a few rows or columns out of view their thumbs are a lone block
       glyph. The caption says what is out of view instead, and the batch and status columns
       stay put when the table scrolls right (fixed_columns). */
    ResultsPane DataTable { height: 1fr; scrollbar-size-vertical: 0; scrollbar-size-horizontal: 0; }
    ResultsPane #results-caption { height: auto; color: $text-muted; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.points: dict[int, PointResult] = {}  # the row shown for each batch size
        self.recommended: int | None = None

    def compose(self) -> ComposeResult:
        yield DataTable(header_height=2, cursor_type="row", zebra_stripes=True, fixed_columns=2,
                        id="results-table")
        yield Static("", id="results-caption")

    def on_mount(self) -> None:
        self.border_title = "Results"
        table = self.query_one(DataTable)
        table.add_column(Text("batch"), key="batch_size")
        table.add_column(Text("status"), key="status")
        for column in COLUMNS:
            table.add_column(Text(column.header, justify="right"), key=column.key)
        self._redraw()
        self.watch(table, "scroll_x", lambda _: self._caption(), init=False)
        self.watch(table, "scroll_y", lambda _: self._caption(), init=False)
        # the table measures new rows' widths later, when it is idle: the caption's count of
        # columns out of view must follow that, or it keeps the widths of the rows before
        self.watch(table, "virtual_size", lambda _: self._caption(), init=False)

    def on_resize(self) -> None:
        self._caption()

    def columns_out_of_view(self) -> tuple[int, int]:
        """How many scrolling columns lie left and right of what the table shows."""
        table = self.table
        widths = [c.get_render_width(table) for c in table.ordered_columns]
        fixed = sum(widths[: table.fixed_columns])
        left_edge = table.scroll_x + fixed
        right_edge = table.scroll_x + table.scrollable_content_region.width
        x = fixed
        left = right = 0
        for width in widths[table.fixed_columns:]:
            if x < left_edge:
                left += 1
            elif x + width > right_edge:
                right += 1
            x += width
        return left, right

    @property
    def table(self) -> DataTable:
        return self.query_one(DataTable)

    def clear(self) -> None:
        self.points = {}
        self.recommended = None
        self._redraw()

    def add_point(self, point: PointResult) -> None:
        self.points[point.batch_size] = point
        self._redraw()

    def set_points(self, points: Iterable[PointResult], recommended: int | None = None) -> None:
        self.points = {p.batch_size: p for p in points}
        self.recommended = recommended
        self._redraw()

    def set_recommended(self, batch_size: int | None) -> None:
        self.recommended = batch_size
        self._redraw()

    def _redraw(self) -> None:
        """Rebuild in batch order: the search runs sizes out of order, and marks move."""
        table = self.table
        cursor = table.cursor_row
        table.clear()
        best = best_batch(self.points)
        # one format per column, from all its rows: 3.08e-4 above 1.85e-5, never 0.000308 above it
        formats = [column.number.for_column([_scaled(p, column) for p in self.points.values()])
                   for column in COLUMNS]
        for b in sorted(self.points):
            point = self.points[b]
            marks = (BEST_MARK if b == best else "") + (RECOMMENDED_MARK if b == self.recommended else "")
            status = point.status.value
            cells: list[Any] = [
                Text(f"{marks}{b}".rjust(5), style="bold" if marks else ""),
                Text(STATUS_WORDS.get(status, status), style="" if status == "ok" else "italic"),
            ]
            for column, render in zip(COLUMNS, formats, strict=True):
                cells.append(Text(render(_scaled(point, column)), justify="right"))
            table.add_row(*cells, key=str(b))
        if self.points:
            table.move_cursor(row=min(cursor, len(self.points) - 1))
        self._caption()

    def _caption(self) -> None:
        caption = self.query_one("#results-caption", Static)
        if not self.points:
            caption.update("Rows appear here as sweep points finish.")
            return
        notes = []
        best = best_batch(self.points)
        if best is not None:
            notes.append(f"{BEST_MARK} lowest gCO2e/tok {best}")
        if self.recommended is not None:
            notes.append(f"{RECOMMENDED_MARK} recommended {self.recommended}")
        if not notes:
            notes.append("No point finished cleanly yet.")
        view = []
        first, last = self.rows_in_view()
        if first > 0 or last < len(self.points):
            view.append(f"rows {first + 1}–{last} of {len(self.points)}")
        left, right = self.columns_out_of_view()
        if left:
            view.append(f"← {left} cols")
        if right:
            view.append(f"+{right} cols →")
        if view:
            notes.append(" ".join(view))
        caption.update(" · ".join(notes))

    def rows_in_view(self) -> tuple[int, int]:
        """The rows the table shows now: (first index, one past the last)."""
        table = self.table
        visible = max(0, table.scrollable_content_region.height - table.header_height)
        first = min(int(table.scroll_y), len(self.points))
        return first, min(len(self.points), first + visible)
