"""Messages the sweep's worker thread posts to the app (Textual's post_message is thread-safe)."""

from __future__ import annotations

from typing import Any

from textual.message import Message


class SweepEventMessage(Message):
    """One event of carbontop.sweep.events, carried onto the UI thread."""

    def __init__(self, event: Any) -> None:
        super().__init__()
        self.event = event


class SweepPrepared(Message):
    """runner.prepare() returned: its sampler and run directory exist now."""


class SweepFailed(Message):
    """prepare() or run() raised; `expected` is True for a CarbontopError (one sentence)."""

    def __init__(self, message: str, *, field: str | None, expected: bool, during: str) -> None:
        super().__init__()
        self.message = message
        self.field = field
        self.expected = expected
        self.during = during  # "prepare" or "run"


class SweepEnded(Message):
    """The worker is done, however it ended."""
