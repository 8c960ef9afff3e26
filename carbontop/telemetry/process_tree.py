"""CPU time and memory of one process tree: carbontop and the engine processes it starts.

On a CPU the machine's load and used memory include whatever else runs on the box (another job
doubled a point's watts and made a 19M-parameter model "use" 11.9 GB). Measuring the tree rooted
at carbontop's own process instead counts the engine child, the processes it starts, and
carbontop itself, and nothing else.

- CPU: the sum over the tree's live processes of user + system time, by psutil. Each process is
  followed by PID (with its creation time, so a reused PID is a new process), and only its growth
  since the last reading is added, so a process that appears adds its time since it started and
  one that ends stops adding. What a process spends between the last reading and its exit is
  lost (at most one tick of one process; an engine child lives for the whole sweep).
- Memory: the resident set (RSS) of the root's descendants, that is the engine process and what it
  starts, not the root, whose UI and sampler are no part of the model's memory. Before an engine
  exists, the root's own RSS. RSS counts a page shared by two processes twice; the engine is a
  spawned process, so it shares almost nothing with its parent.

Listing descendants walks every process on the machine (psutil reads each one's parent), which
costs about 1 ms per 100 processes, so the list is refreshed every REFRESH_S, not every tick; the
known processes are read every tick (about 25 us each).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

REFRESH_S = 1.0  # how often the tree's membership is listed again


@dataclass(frozen=True)
class TreeReading:
    cpu_s: float  # CPU seconds the tree has used since the first reading (growth only)
    engine_rss_bytes: int | None  # RSS of the root's descendants, else of the root itself
    n_processes: int


class ProcessTree:
    """Follows the process `root_pid` and its descendants (default: this process)."""

    def __init__(self, root_pid: int | None = None, refresh_s: float = REFRESH_S) -> None:
        import psutil

        self._psutil = psutil
        self.root_pid = os.getpid() if root_pid is None else int(root_pid)
        self._root = psutil.Process(self.root_pid)
        self.refresh_s = float(refresh_s)
        self._members: dict[tuple[int, float], Any] = {}  # (pid, create_time) -> psutil.Process
        self._last_cpu: dict[tuple[int, float], float] = {}
        self._listed_at = -float("inf")
        self._cpu_s = 0.0
        self.read()
        self._cpu_s = 0.0  # the baseline: time used before the first reading is not counted

    @staticmethod
    def cpu_count() -> int:
        return os.cpu_count() or 1

    def _relist(self) -> None:
        psutil = self._psutil
        try:
            procs = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            procs = [self._root]
        members: dict[tuple[int, float], Any] = {}
        for proc in procs:
            try:
                members[(proc.pid, proc.create_time())] = proc
            except psutil.Error:
                continue
        self._members = members
        self._listed_at = time.monotonic()

    def read(self) -> TreeReading:
        psutil = self._psutil
        if time.monotonic() - self._listed_at >= self.refresh_s:
            self._relist()
        seen: dict[tuple[int, float], float] = {}
        rss_children = 0
        n_children = 0
        rss_root: int | None = None
        for key, proc in list(self._members.items()):
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    rss = int(proc.memory_info().rss)
            except psutil.Error:  # ended since it was listed
                self._members.pop(key, None)
                continue
            cpu = float(times.user + times.system)
            seen[key] = cpu
            if key[0] == self.root_pid:
                rss_root = rss
            else:
                rss_children += rss
                n_children += 1
        for key, cpu in seen.items():
            # growth only: a new process adds its time since it started
            self._cpu_s += max(0.0, cpu - self._last_cpu.get(key, 0.0))
        self._last_cpu = seen
        rss = rss_children if n_children else rss_root
        return TreeReading(cpu_s=self._cpu_s, engine_rss_bytes=rss, n_processes=len(seen))
