"""How a sweep hears that it must stop: Ctrl-C, SIGTERM (a `timeout`, a batch scheduler, `kill`)
and SIGHUP (the SSH session dropped). The headless sweep's handlers are here; the app listens for
the same signals, with the same meaning, on its event loop (tui/terminal.py).

The handlers only ask the sweep to stop (`on_stop(state, reason)`) and return, so that the sweep's
own shutdown runs: the running point is marked, run.toml gets its final state and the
recommendation, and the summary is printed where a terminal remains. They never raise
KeyboardInterrupt into the main thread: on CPython 3.10-3.12 a KeyboardInterrupt that lands inside
a timed `Thread.join` marks the thread as stopped (python/cpython#90882), the next `join()` returns
at once and the process exits before the shutdown has run.

A second signal while the shutdown runs ends the process at once; the run then reads
`interrupted` (its owner is gone) and keeps every finished point.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

OnStop = Callable[[str, str], None]


@dataclass(frozen=True)
class StopSignal:
    signum: int
    state: str  # the run's final state: "cancelled" (the user asked) or "interrupted"
    reason: str  # what run.toml and the summary say

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM


def stop_signals() -> dict[int, StopSignal]:
    table = {
        signal.SIGINT: StopSignal(signal.SIGINT, "cancelled", "cancelled with Ctrl-C"),
        signal.SIGTERM: StopSignal(signal.SIGTERM, "interrupted", "stopped by SIGTERM"),
    }
    if hasattr(signal, "SIGHUP"):  # not on Windows
        table[signal.SIGHUP] = StopSignal(
            signal.SIGHUP, "interrupted", "the terminal hung up (SIGHUP)")
    return table


class StopOnSignals:
    """Installed on the main thread for the length of a sweep (a context manager)."""

    def __init__(self, on_stop: OnStop, say: Callable[[str], None]) -> None:
        self.on_stop = on_stop
        self.say = say
        self.received: StopSignal | None = None
        self._table = stop_signals()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignals:
        for signum in self._table:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        stop = self._table[signum]
        if stop.signum == getattr(signal, "SIGHUP", None):
            detach_from_terminal()
        if self.received is not None:
            self.say("stopping at once: the run keeps its finished points and reads interrupted.")
            os._exit(stop.exit_code)
        self.received = stop
        if stop.signum == signal.SIGINT:
            self.say("cancelling: the running point stops, finished points are kept "
                     "(Ctrl-C again quits at once)…")
        else:
            self.say(f"{stop.reason}: stopping the sweep, finished points are kept…")
        self.on_stop(stop.state, stop.reason)


def detach_from_terminal() -> None:
    """The terminal is gone: point stdout and stderr at /dev/null, so that the shutdown's messages
    cannot fail (EIO) or stop the process (SIGTTOU) on the way to it."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    for fd in (1, 2):
        try:
            os.dup2(devnull, fd)
        except OSError:
            pass
    os.close(devnull)
