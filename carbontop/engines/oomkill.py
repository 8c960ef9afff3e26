"""Did the kernel's out-of-memory killer end a process? Read from its memory cgroup's counter.

A process killed by SIGKILL may have met the OOM killer, or a person, a scheduler or a watchdog.
Only the kernel's own count tells them apart: `oom_kill` in the cgroup's memory.events (cgroup v2)
or memory.oom_control (cgroup v1), "the number of processes belonging to this cgroup killed by any
kind of OOM killer" (Documentation/admin-guide/cgroup-v2.rst). The host reads it before a point and
again after a death; where it cannot be read, the death is not taken as proof of an OOM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_ROOT = Path("/proc")


@dataclass(frozen=True)
class OomKillCounter:
    path: Path  # the file the count was read from
    count: int

    def read_again(self) -> int | None:
        return _read_count(self.path)


def _read_count(path: Path) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _candidates(pid: int, cgroup_root: Path, proc_root: Path) -> list[Path]:
    """Counter files for the process's memory cgroup, most specific first."""
    try:
        lines = (proc_root / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        return []
    found: list[Path] = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        rel = path.lstrip("/")
        if controllers == "":  # cgroup v2: the unified hierarchy
            for mount in (cgroup_root, cgroup_root / "unified"):
                found.append(mount / rel / "memory.events")
        elif "memory" in controllers.split(","):  # cgroup v1's memory controller
            found.append(cgroup_root / "memory" / rel / "memory.oom_control")
            # inside a container the hierarchy's root is often the container's own cgroup
            found.append(cgroup_root / "memory" / "memory.oom_control")
    return found


def oom_kill_counter(pid: int, *, cgroup_root: Path = CGROUP_ROOT,
                     proc_root: Path = PROC_ROOT) -> OomKillCounter | None:
    """The OOM-kill count of `pid`'s memory cgroup now, or None where none can be read.
    (The roots are the system's; a test points them at a tree of its own.)"""
    for path in _candidates(pid, cgroup_root, proc_root):
        count = _read_count(path)
        if count is not None:
            return OomKillCounter(path, count)
    return None


def oom_killed_since(before: OomKillCounter | None) -> bool | None:
    """True: the cgroup counted an OOM kill since `before`; False: it did not; None: unknown."""
    if before is None:
        return None
    now = before.read_again()
    if now is None:
        return None
    return now > before.count
