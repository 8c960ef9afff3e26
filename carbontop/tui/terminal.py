"""The app's ties to its terminal and its process: stop signals, and a terminal that hangs up.

Textual reads the keyboard itself (Ctrl-C is a key there, not a signal), but SIGTERM (`kill`,
`timeout`, a batch scheduler), SIGHUP (the SSH session dropped) and a SIGINT sent with `kill` still
reach the process. The app takes them as the headless sweep does (carbontop/interrupts.py, one
table of what each means): the running point is cancelled, the run recorded `interrupted` with the
reason, and the app exits with 128 + the signal's number once the sweep's shutdown has run.

When the terminal hangs up, the kernel sends SIGHUP to the session's leader, and reads and writes
of the terminal fail with EIO. Textual's input thread would take that EIO for a crash and end the
app at once, before the sweep records its end; its output thread would die on it and leave the app
blocked on a full queue. The driver here takes the EIO for the hang-up it is and drops what can no
longer be shown.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import sys
from collections.abc import Callable
from typing import IO, Any

from carbontop.interrupts import StopSignal, stop_signals

OnStop = Callable[[StopSignal], None]


def listen_for_stop_signals(on_stop: OnStop) -> Callable[[], None]:
    """Call `on_stop` on the running event loop for each stop signal; returns what undoes it.
    Where the loop cannot take signals (not the main thread, Windows) nothing is installed."""
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    for signum, stop in stop_signals().items():
        try:
            loop.add_signal_handler(signum, on_stop, stop)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        installed.append(signum)

    def remove() -> None:
        for signum in installed:
            try:
                loop.remove_signal_handler(signum)
            except (RuntimeError, ValueError):  # the loop is closed already
                pass
        installed.clear()

    return remove


def hang_up() -> StopSignal | None:
    """What a terminal that hung up means: SIGHUP's entry (None where there is no SIGHUP)."""
    return stop_signals().get(getattr(signal, "SIGHUP", -1))


class _DropsWhenHungUp:
    """The terminal's file for Textual's output thread: once the terminal is gone (EIO), what was
    meant for it is dropped rather than ending the thread (the app would then block on its queue)."""

    def __init__(self, file: IO[str]) -> None:
        self._file = file
        self.hung_up = False

    def write(self, text: str) -> int:
        if self.hung_up:
            return len(text)
        try:
            return self._file.write(text)
        except OSError:
            self.hung_up = True
            return len(text)

    def flush(self) -> None:
        if self.hung_up:
            return
        try:
            self._file.flush()
        except OSError:
            self.hung_up = True

    def fileno(self) -> int:
        return self._file.fileno()

    def isatty(self) -> bool:
        return self._file.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def terminal_driver_class() -> type | None:
    """Textual's Linux/macOS driver, hang-up aware; None where Textual's default is kept."""
    if sys.platform == "win32":
        return None
    from textual.drivers.linux_driver import LinuxDriver

    class HangUpAwareDriver(LinuxDriver):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._file = _DropsWhenHungUp(self._file)

        def run_input_thread(self) -> None:
            try:
                super().run_input_thread()
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                hung_up = getattr(self._app, "terminal_hung_up", None)
                if hung_up is not None:
                    self._app.call_later(hung_up)

    return HangUpAwareDriver
