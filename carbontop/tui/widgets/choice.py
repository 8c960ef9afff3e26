"""A one-line choice among a few fixed values: ← → (or space, enter, a click) step through them.

Lighter than a Select (one widget instead of a dropdown with its own list), which keeps the form
quick to build: the app has to show its first frame in well under a second.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget


class Choice(Widget, can_focus=True):
    DEFAULT_CSS = """
    Choice { height: 1; width: 1fr; background: $surface; }
    Choice:focus { background: $primary 30%; text-style: bold; }
    Choice.-invalid { background: $error 25%; }
    Choice:disabled { color: $text-disabled; }
    """
    BINDINGS = [
        Binding("right,space,enter", "step(1)", "Next", show=False),
        Binding("left", "step(-1)", "Previous", show=False),
    ]

    value: reactive[str] = reactive("", init=False)

    class Changed(Message):
        def __init__(self, choice: Choice, value: str) -> None:
            super().__init__()
            self.choice = choice
            self.value = value

        @property
        def control(self) -> Choice:
            return self.choice

    def __init__(self, options: Sequence[str], value: str, *, id: str | None = None,
                 tooltip: str | None = None) -> None:
        super().__init__(id=id)
        self.options = list(options)
        if value not in self.options:  # a value from a newer config: keep it selectable
            self.options.append(value)
        self.set_reactive(Choice.value, value)
        if tooltip:
            self.tooltip = tooltip

    def render(self) -> str:
        position = f"{self.options.index(self.value) + 1}/{len(self.options)}" if self.value in self.options else ""
        return f"◂ {self.value} ▸  [dim]{position}[/]"

    def watch_value(self, value: str) -> None:
        if value not in self.options:
            self.options.append(value)
        self.post_message(self.Changed(self, value))

    def action_step(self, delta: int) -> None:
        i = self.options.index(self.value) if self.value in self.options else 0
        self.value = self.options[(i + delta) % len(self.options)]

    def on_click(self) -> None:
        self.action_step(1)
