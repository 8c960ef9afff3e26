"""The compare screen: pick saved runs, read them side by side, see their charts overlaid.

The first run picked is the reference the ratios are taken against (as `carbontop compare`'s
first argument). Runs load on a worker thread: a long sweep's power trace is many thousand rows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import (
    DataTable,
    Footer,
    Input,
    SelectionList,
    Static,
    TabbedContent,
    TabPane,
)
from textual.widgets.selection_list import Selection

from carbontop.errors import CarbontopError
from carbontop.figures.compare import like_for_like_warnings, summarize, table_rows
from carbontop.figures.series import chart_run
from carbontop.tui.widgets.charts import ChartView

NARROW_BELOW_COLUMNS = 110  # under this the run list sits above the results, not beside them


class CompareScreen(ModalScreen[None]):
    """Saved runs side by side: a table of figures (ratios to the first run) and the charts.

    Modal, so that the main screen's keys (s starts a sweep) do not act from here."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("q", "app.pop_screen", "Back", show=False),
        Binding("a", "focus_path", "Add a run by path"),
        Binding("g", "toggle_charts", "Table/charts"),
    ]
    DEFAULT_CSS = """
    CompareScreen { layout: vertical; background: $background; }
    CompareScreen #compare-body { height: 1fr; }
    CompareScreen #compare-runs { width: 34; height: 1fr; border: round $primary 40%;
        border-title-color: $primary; border-title-style: bold; }
    CompareScreen #compare-runs:focus-within { border: round $primary; }
    CompareScreen SelectionList, CompareScreen SelectionList:focus { height: 1fr; border: none; padding: 0; }
    CompareScreen #compare-path { margin: 0; }
    CompareScreen #compare-error { color: $error; height: auto; }
    CompareScreen #compare-main { width: 1fr; height: 1fr; }
    CompareScreen #compare-warnings { color: $warning; height: auto; padding: 1 1 0 1; }
    CompareScreen #compare-table-pane VerticalScroll { height: 1fr; }
    CompareScreen #compare-hint { color: $text-muted; padding: 0 1; }
    CompareScreen DataTable { height: auto; }
    CompareScreen.-narrow #compare-body { layout: vertical; }
    CompareScreen.-narrow #compare-runs { width: 1fr; height: auto; max-height: 9;
        border-left: none; border-right: none; }
    CompareScreen.-narrow SelectionList { height: auto; max-height: 5; }
    """

    def __init__(self, loader: Callable[[Path], Any], recent: list[Path],
                 preselect: list[Path] | None = None) -> None:
        super().__init__()
        self._loader = loader
        self._recent = list(recent)
        self._preselect = [Path(p) for p in preselect or []]
        for p in self._preselect:
            if p not in self._recent:
                self._recent.insert(0, p)
        self._loaded: dict[Path, Any] = {}  # path -> SavedRun, loaded once
        self._generation = 0  # a newer selection wins over a slower load of an older one

    def compose(self) -> ComposeResult:
        with Horizontal(id="compare-body"):
            with Vertical(id="compare-runs"):
                # newest first (store.list_runs' order)
                yield SelectionList[str](
                    *[Selection(p.name, str(p), p in self._preselect) for p in self._recent],
                    id="compare-list",
                )
                yield Input(placeholder="a run directory (enter adds it)", compact=True,
                            id="compare-path")
                yield Static("", id="compare-error")
            with Vertical(id="compare-main"):
                with TabbedContent(id="compare-tabs"):
                    with TabPane("Table", id="compare-table-pane"), VerticalScroll():
                        yield Static("", id="compare-hint")
                        yield DataTable(id="compare-table", zebra_stripes=True, cursor_type="row")
                        yield Static("", id="compare-warnings")
                    with TabPane("Charts", id="compare-charts-pane"):
                        yield ChartView(id="compare-charts")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#compare-runs").border_title = "Runs · space picks"
        self._fit()
        self.query_one(SelectionList).focus()
        self._refresh_selection()

    def on_resize(self) -> None:
        self._fit()

    def _fit(self) -> None:
        self.set_class(self.app.size.width < NARROW_BELOW_COLUMNS, "-narrow")

    # ---- picking ------------------------------------------------------------------------

    def action_focus_path(self) -> None:
        self.query_one("#compare-path", Input).focus()

    def action_toggle_charts(self) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = "compare-charts-pane" if tabs.active == "compare-table-pane" else "compare-table-pane"

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        if not text:
            return
        path = Path(text).expanduser()
        error = self.query_one("#compare-error", Static)
        try:
            self._loaded[path] = self._loader(path)
        except CarbontopError as exc:
            error.update(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a damaged run is a sentence, not a crash
            error.update(f"{path} cannot be read: {type(exc).__name__}: {exc}")
            return
        error.update("")
        event.input.value = ""
        selection = self.query_one(SelectionList)
        if str(path) not in [selection.get_option_at_index(i).value for i in range(selection.option_count)]:
            selection.add_option(Selection(path.name, str(path)))
        selection.select(str(path))

    def on_selection_list_selected_changed(self, event: SelectionList.SelectedChanged) -> None:
        event.stop()
        self._refresh_selection()

    def selected_paths(self) -> list[Path]:
        # SelectionList keeps the order in which options were picked: the first is the reference
        return [Path(v) for v in self.query_one(SelectionList).selected]

    def _refresh_selection(self) -> None:
        self._generation += 1
        paths = self.selected_paths()
        missing = [p for p in paths if p not in self._loaded]
        if missing:
            self.query_one("#compare-hint", Static).update("Loading…")
            self._load(missing, self._generation)
        else:
            self._show(paths)

    @work(thread=True, group="compare-load", exit_on_error=False)
    def _load(self, paths: list[Path], generation: int) -> None:
        loaded, errors = {}, []
        for path in paths:
            try:
                loaded[path] = self._loader(path)
            except CarbontopError as exc:
                errors.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - one damaged run must not end the screen
                errors.append(f"{path} cannot be read: {type(exc).__name__}: {exc}")
        self.app.call_from_thread(self._loaded_runs, loaded, errors, generation)

    def _loaded_runs(self, loaded: dict[Path, Any], errors: list[str], generation: int) -> None:
        self._loaded.update(loaded)
        self.query_one("#compare-error", Static).update("\n".join(errors))
        if generation == self._generation:
            self._show([p for p in self.selected_paths() if p in self._loaded])

    # ---- showing ------------------------------------------------------------------------

    def _show(self, paths: list[Path]) -> None:
        runs = [self._loaded[p] for p in paths]
        table = self.query_one("#compare-table", DataTable)
        table.clear(columns=True)
        hint = self.query_one("#compare-hint", Static)
        warnings = self.query_one("#compare-warnings", Static)
        charts = self.query_one(ChartView)
        if not runs:
            hint.update("Pick two or more runs with space (the first picked is the reference).")
            warnings.update("")
            charts.show_runs([])
            return
        summaries = [summarize(run) for run in runs]
        hint.update("" if len(runs) > 1 else "Pick another run to compare with this one.")
        # the workload and the carbon source are sentences: cut to the room each run's column
        # has, so that every run shows without scrolling; the warnings below say them in full
        room = max(CELL_MIN, (self.query_one("#compare-main").size.width - LABEL_WIDTH) // len(runs) - 2)
        table.add_column("", key="label")
        for i, s in enumerate(summaries):
            ref = " (ref)" if i == 0 and len(runs) > 1 else ""
            table.add_column(_clip(s.name, room - len(ref)) + ref, key=str(i))
        for label, cells in table_rows(summaries):
            table.add_row(label, *(_clip(c, room) for c in cells))
        warnings.update("\n".join(f"not like for like: {w}" for w in like_for_like_warnings(summaries)))
        charts.show_runs([chart_run(run) for run in runs])


CELL_MIN = 18  # a figure with its batch and ratio: "1.26e-4 @8 (6.73×)"
LABEL_WIDTH = 33  # the longest row label, "gCO2e/token: batch 1 ÷ largest", and padding


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"

