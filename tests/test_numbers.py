"""One number format per column, in the CLI's table and the app's."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from carbontop.figures.numbers import FORMATS, column_format

SAMPLE_RUN = Path(__file__).resolve().parents[1] / "sample_runs" / "llama2-7b-h100-sharegpt"
SCI = re.compile(r"^-?\d\.\d+e-?\d+$")


def test_a_column_that_spans_orders_of_magnitude_is_scientific_throughout() -> None:
    render = column_format([3.08e-4, 1.85e-5, 0.0012, None])
    assert [render(v) for v in (3.08e-4, 1.85e-5, 0.0012, None)] == ["3.08e-4", "1.85e-5", "1.20e-3", "—"]


def test_a_column_that_reads_well_fixed_keeps_the_smallest_values_figures() -> None:
    render = column_format([2.688, 0.643, 0.161])
    assert [render(v) for v in (2.688, 0.643, 0.161)] == ["2.688", "0.643", "0.161"]
    assert column_format([0.09999])(0.09999) == "0.100"  # rounding moves it up a decade


def test_every_figure_the_tables_show_has_one_format() -> None:
    from carbontop.report import COLUMNS as CLI_COLUMNS
    from carbontop.tui.widgets.results import COLUMNS as APP_COLUMNS

    assert {c[0] for c in CLI_COLUMNS} <= set(FORMATS)
    assert {c.key for c in APP_COLUMNS} <= set(FORMATS)


def _one_notation(cells: list[str]) -> bool:
    numbers = [c for c in cells if c not in ("–", "—", "")]
    return all(SCI.match(c) for c in numbers) or not any(SCI.match(c) for c in numbers)


@pytest.mark.skipif(not SAMPLE_RUN.is_dir(), reason="the recorded sample run is not in this checkout")
def test_the_cli_table_never_mixes_fixed_and_scientific_in_a_column() -> None:
    from carbontop.core.store import load_run
    from carbontop.report import points_table

    table = points_table(load_run(SAMPLE_RUN))
    out = io.StringIO()
    Console(file=out, width=250).print(table)
    for column in table.columns:
        cells = [str(c).split(" ±")[0].strip() for c in column._cells]
        assert _one_notation(cells), (column.header, cells)
    assert any(SCI.match(str(c)) for col in table.columns for c in col._cells)  # carbon is scientific


@pytest.mark.skipif(not SAMPLE_RUN.is_dir(), reason="the recorded sample run is not in this checkout")
def test_the_app_table_prints_each_figure_as_the_cli_does(tmp_path: Path) -> None:
    from carbontop.core.repeats import combine
    from carbontop.core.store import load_run
    from carbontop.report import COLUMNS as CLI_COLUMNS
    from carbontop.report import column_patterns, point_rows
    from carbontop.tui.widgets.results import COLUMNS as APP_COLUMNS
    from carbontop.tui.widgets.results import _scaled

    run = load_run(SAMPLE_RUN)
    cli = column_patterns(point_rows(run), CLI_COLUMNS)
    points = combine(run.points)  # the points the CLI's rows are made of
    for column in APP_COLUMNS:
        if column.key not in cli:
            continue
        app_render = column.number.for_column([_scaled(p, column) for p in points])
        for point in points:
            value = _scaled(point, column)
            if value is not None:
                assert app_render(value) == cli[column.key](value), column.key
