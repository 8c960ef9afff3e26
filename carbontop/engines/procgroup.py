"""The engine child's ties to its parent: its own process group, and death with the parent.

The child leads a process group of its own, so that the signals a terminal, `timeout` or a batch
scheduler send to the sweep's group (Ctrl-C, SIGTERM, SIGHUP) reach the parent only; the parent
decides what stops and records it. Whatever the engine starts (inductor's compile workers,
TensorRT-LLM's executor) joins that group, and the parent ends them all with one killpg.

On Linux the child also asks the kernel for SIGKILL when its parent dies (prctl
PR_SET_PDEATHSIG), so that a parent killed with SIGKILL, or by the OOM killer, does not leave an
engine holding the GPU. The kernel sends it when the *thread* that started the child exits: the
sweep's thread starts the child and outlives it (it stops the child on every way out).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def detach_and_tie_to_parent(parent_pid: int) -> None:
    """Called first thing in the child."""
    try:
        os.setpgid(0, 0)
    except OSError:
        pass  # already a group leader (or not allowed): the parent falls back to the PID
    tie_to_parent(parent_pid)


def tie_to_parent(parent_pid: int) -> None:
    """Death with the parent (SIGKILL when it dies), staying in its process group: what an
    engine's own helper processes (its other tensor-parallel ranks) call first."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the request above took effect


def signal_group(pid: int, signum: int) -> None:
    """Signal the child's whole group; just the child where it has no group of its own yet."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
            return
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def kill_group_now(pid: int) -> None:
    """SIGKILL the group: for a child that does not answer (stopped, hung, out of control)."""
    signal_group(pid, signal.SIGKILL)


def reap_group(pid: int, timeout_s: float = 3.0) -> None:
    """After the leader has exited: kill what is left of its group (engine workers)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)


def process_stopped(pid: int) -> bool:
    """True where the process is stopped (SIGSTOP, a debugger): state T or t in /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] in ("T", "t")
