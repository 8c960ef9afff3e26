"""Modal screens: help, confirm, error, export path, open a saved run."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from carbontop.errors import CarbontopError
from carbontop.tui.wording import for_app

# (key, what it does): the help screen's list; the footer shows the same keys
KEYS: tuple[tuple[str, str], ...] = (
    ("s", "Start a sweep with the run configuration (checked first)"),
    ("c", "Cancel the sweep: the running point stops, finished points stay"),
    ("e", "Export the results to CSV (asks for a path)"),
    ("o", "Open a saved run: its table and power trace, no GPU needed"),
    ("u", "Use the saved run's settings in the form, to run it again (in a new folder)"),
    ("r", "The results table (from anywhere, the form included)"),
    ("R", "Resume the saved run shown, if it stopped before its end: finished points are kept"),
    ("g", "Charts: J/token and gCO2e/token by batch, latency × carbon, power (← → in their tabs)"),
    ("v", "Compare saved runs side by side: a table with ratios, their charts overlaid"),
    ("f", "Show or hide the run configuration"),
    ("t", "Next colour theme"),
    ("?", "This help"),
    ("q", "Quit (asks first while a sweep runs); ctrl+q too"),
    ("tab", "Next field or pane (shift+tab: previous)"),
    ("escape", "Leave the form, so the letter keys act again; close a dialog"),
    ("← →", "In the form: step through a choice; in the table: scroll"),
)
# Where a point's energy comes from (points.csv's energy_source, or the live source's kind).
ENERGY_WORDS = {
    "nvml-counter": "the GPU's total-energy counter (NVML)",
    "nvml-power-integrated": "NVML instant power integrated over time (this GPU has no energy counter)",
    "nvml": "the GPU's total-energy counter (NVML)",
    "rapl": "the CPU's RAPL energy counters",
    "estimate": "an estimate from the CPU's TDP and load, not a measurement",
}


def figures_text(energy_sources: list[str]) -> str:
    """What the table's figures mean; the energy's origin is the run's (or the live source's)."""
    said = [ENERGY_WORDS.get(s, s) for s in energy_sources if s]
    energy = " and ".join(dict.fromkeys(said)) if said else "the run's power source (shown once a sweep runs)"
    return (
        "tok/s: output tokens / wall time.  s/tok: mean end-to-end time per output token.  "
        f"J/tok: energy / output tokens, the energy from {energy}.  "
        "gCO2e/tok: energy × PUE × grid intensity (operational; embodied and total are further "
        "right).  MFU, MBU: against the card's dense peak."
    )


class _Dialog(ModalScreen[Any]):
    DEFAULT_CSS = """
    _Dialog { align: center middle; }
    _Dialog > Vertical {
        width: 76; max-width: 95%; height: auto; max-height: 90%;
        border: thick $primary; background: $surface; padding: 0 1;
    }
    _Dialog .title { text-style: bold; width: 1fr; margin-bottom: 1; }
    _Dialog .buttons { height: auto; align-horizontal: right; margin-top: 1; }
    _Dialog Button { margin-left: 1; }
    _Dialog Input { margin: 1 0 0 0; }
    _Dialog .error-line { color: $error; height: auto; }
    """


class HelpScreen(_Dialog):
    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("question_mark", "close", "Close", show=False),
        Binding("q", "close", "Close", show=False),
    ]

    DEFAULT_CSS = """
    HelpScreen #help-body { height: auto; max-height: 60vh; }
    HelpScreen #help-figures { color: $text-muted; margin-top: 1; }
    """

    def __init__(self, energy_sources: list[str] | None = None) -> None:
        super().__init__()
        self._energy_sources = list(energy_sources or [])

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for key, text in KEYS:
            table.add_row(key, text)
        with Vertical():
            yield Label("carbontop: keys", classes="title")
            with VerticalScroll(id="help-body"):
                yield Static(table, id="help-keys")
                yield Static(figures_text(self._energy_sources), id="help-figures")
            with Horizontal(classes="buttons"):
                yield Button("Close", variant="primary", compact=True, id="close")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)


class ConfirmScreen(_Dialog):
    """A yes/no question; dismisses with True for yes."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "No", show=False),
    ]

    def __init__(self, title: str, question: str, yes: str = "Yes", no: str = "No") -> None:
        super().__init__()
        self._title, self._question, self._yes, self._no = title, question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self._title, classes="title")
            yield Static(self._question)
            with Horizontal(classes="buttons"):
                yield Button(f"{self._no} (n)", compact=True, id="no")
                yield Button(f"{self._yes} (y)", variant="error", compact=True, id="yes")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ErrorScreen(_Dialog):
    """A failure the user should read: one sentence, or an unexpected error's text."""

    BINDINGS = [Binding("escape", "close", "Close"), Binding("enter", "close", "Close", show=False)]

    def __init__(self, title: str, message: str) -> None:
        super().__init__()
        self._title, self._message = title, message

    def compose(self) -> ComposeResult:
        with Vertical(id="error-dialog"):
            yield Label(self._title, classes="title")
            yield Static(self._message, markup=False, id="error-message")
            with Horizontal(classes="buttons"):
                yield Button("OK", variant="primary", compact=True, id="ok")

    def on_mount(self) -> None:
        self.query_one("#ok", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)


class ExportScreen(_Dialog):
    """Asks where to write the CSV; dismisses with a Path, or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, default: Path) -> None:
        super().__init__()
        self._default = default

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Export the results to CSV", classes="title")
            yield Label("File to write (enter to export, escape to cancel):")
            yield Input(str(self._default), compact=True, id="export-path")
            yield Static("", classes="error-line", id="export-error")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", compact=True, id="cancel")
                yield Button("Export", variant="primary", compact=True, id="export")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def _submit(self) -> None:
        text = self.query_one(Input).value.strip()
        if not text:
            self.query_one("#export-error", Static).update("Give a file path.")
            return
        self.dismiss(Path(text).expanduser())

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "export":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class OpenScreen(_Dialog):
    """Asks for a run directory (typed, or picked from the recent ones); dismisses with what
    `loader` returned for it, or None. A path the loader refuses keeps the dialog open."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    OpenScreen OptionList { height: auto; max-height: 8; }
    """

    def __init__(self, loader: Callable[[Path], Any], recent: list[Path], start: str = "") -> None:
        super().__init__()
        self._loader = loader
        self._recent = recent
        self._start = start

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Open a saved run", classes="title")
            yield Label("Run directory (enter to open, escape to cancel):")
            yield Input(self._start, placeholder="path/to/run-directory", compact=True, id="open-path")
            yield Static("", classes="error-line", id="open-error")
            if self._recent:
                yield Label("Recent runs (newest first):")
                now = time.time()
                yield OptionList(
                    *[Option(f"{p.name}  [dim]{_age(now - p.stat().st_mtime)}[/]", id=str(p))
                      for p in self._recent],
                    id="recent-runs",
                )
            else:
                yield Label("[dim]No runs in the default runs folder yet.[/]")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", compact=True, id="cancel")
                yield Button("Open", variant="primary", compact=True, id="open")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def _try_open(self, text: str) -> None:
        text = text.strip()
        if not text:
            self.query_one("#open-error", Static).update("Give a run directory.")
            return
        try:
            saved = self._loader(Path(text).expanduser())
        except CarbontopError as exc:
            self.query_one("#open-error", Static).update(for_app(str(exc)))
            return
        except Exception as exc:  # noqa: BLE001 - a damaged run must not take the app down
            self.query_one("#open-error", Static).update(f"{type(exc).__name__}: {exc}")
            return
        self.dismiss(saved)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._try_open(event.value)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        path = event.option.id or ""
        self.query_one(Input).value = path
        self._try_open(path)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "open":
            self._try_open(self.query_one(Input).value)
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{max(0, int(seconds // 60))} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} d ago"
