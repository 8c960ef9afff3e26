"""Is the process that wrote a run still alive? How a run whose process is gone reads `interrupted`.

A sweep writes `state = "running"` with its owner (host, PID and, on Linux, the process's start
time, so that a recycled PID is not mistaken for the owner) and then touches run.toml every
HEARTBEAT_S seconds. A reader decides:

    same host:    the owner PID runs and started when recorded -> running, else interrupted
    other host:   run.toml touched within STALE_AFTER_S        -> running, else interrupted

A process that is killed (SIGKILL, a power cut, the OOM killer) cannot write its own end; this is
how its run is still told apart from a live one.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEARTBEAT_S = 10.0
# several missed heartbeats: a busy file server can delay one, not six
STALE_AFTER_S = 6 * HEARTBEAT_S


def host_name() -> str:
    return socket.gethostname()


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux /proc), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after its end
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return int(fields[19])  # field 22 of proc(5), counted from field 3
    except (IndexError, ValueError):
        return None


def owner_record() -> dict[str, Any]:
    """What run.toml keeps about the process writing it."""
    pid = os.getpid()
    record: dict[str, Any] = {"pid": pid, "host": host_name()}
    ticks = process_start_ticks(pid)
    if ticks is not None:
        record["pid_start_ticks"] = ticks
    return record


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    except OSError:
        return False
    if start_ticks is not None:
        now = process_start_ticks(pid)
        if now is not None and now != start_ticks:
            return False  # the PID was reused by a later process
    return True


@dataclass(frozen=True)
class Liveness:
    state: str  # the state to show: the recorded one, or "interrupted" when its owner is gone
    note: str = ""  # why a recorded "running" is shown as interrupted


def effective_state(status: dict[str, Any], run_toml: Path, now_s: float | None = None) -> Liveness:
    recorded = str(status.get("state", "unknown"))
    if recorded != "running":
        return Liveness(recorded)
    pid, host = status.get("pid"), status.get("host")
    if isinstance(pid, int) and host == host_name():
        if pid_alive(pid, status.get("pid_start_ticks")):
            return Liveness("running")
        return Liveness("interrupted", f"the process that ran it (PID {pid}) ended without "
                                       "recording how; finished points are kept")
    try:
        age_s = (now_s if now_s is not None else time.time()) - run_toml.stat().st_mtime
    except OSError:
        return Liveness(recorded)
    if age_s <= STALE_AFTER_S:
        return Liveness("running")
    where = f" on {host}" if host else ""
    return Liveness("interrupted", f"no sign of life from the process that ran it{where} for "
                                   f"{age_s / 60:.0f} min; finished points are kept")


class Heartbeat:
    """Touches a file every HEARTBEAT_S seconds from a daemon thread, until stopped."""

    def __init__(self, path: Path, period_s: float = HEARTBEAT_S) -> None:
        self.path = path
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="carbontop-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                os.utime(self.path)
            except OSError:
                pass  # the file is being replaced, or the disk went away: the next beat retries

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self.period_s + 1.0)
