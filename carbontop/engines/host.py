"""Runs an engine in a child process, so that an out-of-memory error, a CUDA fault or a hung
engine ends that process only. The parent never imports torch or touches the GPU; it keeps
reading NVML while the child works or dies, and starts a fresh child when one is lost.

Messages child -> parent (tuples over a multiprocessing Pipe):
    ("phase", {"phase", "detail"})   ("progress", {"done", "total"})
    ("loaded", info)                 ("load_failed", kind, message)
    ("result", EngineRun)            ("oom", message, recovered)   ("kv_bound", message, concurrency)
    ("failure", message)             ("error", message, traceback_text)
"""

from __future__ import annotations

import inspect
import math
import multiprocessing as mp
import os
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carbontop.core.records import EngineRun, PointPlan, PointStatus
from carbontop.engines.base import EngineFailure, EngineKVBound, EngineOOM, EngineSpec
from carbontop.engines.procgroup import (
    detach_and_tie_to_parent,
    kill_group_now,
    reap_group,
    signal_group,
)
from carbontop.errors import CarbontopError, EngineUnavailable

OnMessage = Callable[[str, dict[str, Any]], None]
ShouldStop = Callable[[], bool]

POLL_S = 0.2
# Phrases engines use for memory exhaustion that escaped their own OOM handling.
OOM_MARKERS = ("out of memory", "insufficient gpu memory", "cudamallocasync", "cuda_error_out_of_memory")


def looks_like_oom(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in OOM_MARKERS)


# ---- child side ---------------------------------------------------------------------------


def _child_main(conn: Any, spec: EngineSpec, log_path: str | None, parent_pid: int) -> None:
    # A process group of its own (the terminal's signals reach the parent, which decides what
    # stops) and death with the parent, whatever ends it.
    detach_and_tie_to_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if log_path:
        # Engines print a lot (compilers, TensorRT-LLM); keep it out of the user's terminal.
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
    if spec.device == "cuda" and spec.gpus:
        # NVML numbers GPUs by PCI bus; make CUDA agree before anything initialises it.
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in spec.gpus)

    def emit(kind: str, payload: dict[str, Any]) -> None:
        conn.send((kind, payload))

    from carbontop.engines import load_engine_class

    try:
        engine = load_engine_class(spec.engine)(spec, emit)
        info = engine.load()
    except (CarbontopError, EngineFailure) as exc:
        conn.send(("load_failed", "unavailable", str(exc)))
        return
    except EngineOOM as exc:
        conn.send(("load_failed", "oom", str(exc)))
        return
    except BaseException as exc:  # noqa: BLE001 - everything must reach the parent as a message
        kind = "oom" if looks_like_oom(str(exc)) else "error"
        conn.send(("load_failed", kind, f"{type(exc).__name__}: {exc}"))
        traceback.print_exc()
        return
    conn.send(("loaded", info))

    while True:
        try:
            command = conn.recv()
        except EOFError:
            break
        if command[0] == "stop":
            break
        _, plan = command
        try:
            conn.send(("result", _run_plan(engine, plan)))
        except EngineOOM as exc:
            conn.send(("oom", str(exc), exc.recovered))
        except EngineKVBound as exc:
            # engines attach what they measured (exc.run): a KV-bound point still has figures
            conn.send(("kv_bound", str(exc), exc.concurrency_reached, getattr(exc, "run", None)))
        except EngineFailure as exc:
            conn.send(("failure", str(exc)))
        except BaseException as exc:  # noqa: BLE001 - everything must reach the parent as a message
            traceback.print_exc()
            if looks_like_oom(str(exc)):
                conn.send(("oom", f"{type(exc).__name__}: {exc}", False))
            else:
                conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    try:
        engine.close()
    except Exception:  # noqa: BLE001 - closing must not hide the result already sent
        traceback.print_exc()


def _run_plan(engine: Any, plan: PointPlan) -> EngineRun:
    """`engine.run_point(plan)`. An engine that still takes (batch_size, prompts) gets the plan's
    stream cycled into whole batches of b, one pass over it (what every engine ran before
    points became windows), until it speaks plans."""
    if len(inspect.signature(engine.run_point).parameters) == 1:
        return engine.run_point(plan)
    n = math.ceil(len(plan.prompts) / plan.batch_size) * plan.batch_size
    return engine.run_point(plan.batch_size, [plan.prompts[i % len(plan.prompts)] for i in range(n)])


# ---- parent side --------------------------------------------------------------------------


@dataclass(frozen=True)
class PointOutcome:
    status: PointStatus
    run: EngineRun | None = None
    message: str = ""
    concurrency_reached: int | None = None
    needs_restart: bool = False  # the engine process is gone or may hold memory it should not


class Cancelled(Exception):
    pass


def prime_multiprocessing() -> None:
    """Start multiprocessing's resource tracker with a real stderr, before any engine child.

    Spawning first starts a resource-tracker process and hands it `sys.stderr.fileno()`. Where
    sys.stderr is not a real file (inside a Textual app it is a capture whose fileno() is -1) the
    spawn fails with "bad value(s) in fds_to_keep". Started here with stderr on /dev/null, the
    tracker runs and every later spawn reuses it.
    """
    from multiprocessing import resource_tracker

    saved = sys.stderr
    with open(os.devnull, "w") as devnull:
        sys.stderr = devnull
        try:
            resource_tracker.ensure_running()
        finally:
            sys.stderr = saved


class EngineHost:
    """One engine child. `start()` loads the model; `run_point()` runs one sweep point."""

    def __init__(self, spec: EngineSpec, log_path: Path | None = None) -> None:
        self.spec = spec
        self.log_path = log_path
        self._ctx = mp.get_context("spawn")  # never fork a process that may hold CUDA or threads
        self._proc: Any = None
        self._conn: Any = None
        self._busy = False
        self.info: dict[str, Any] = {}

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def start(self, on_message: OnMessage, should_stop: ShouldStop) -> dict[str, Any]:
        prime_multiprocessing()
        parent_conn, child_conn = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=_child_main,
            args=(child_conn, self.spec, str(self.log_path) if self.log_path else None,
                  os.getpid()),
            name=f"carbontop-engine-{self.spec.engine}",
            # Not a daemon: engines start processes of their own (inductor's compile and
            # autotune workers, TensorRT-LLM's executor), which daemonic processes may not do.
            # The child exits when the parent's end of the pipe closes, and the parent stops it
            # on every way out of a sweep.
            daemon=False,
        )
        self._proc.start()
        child_conn.close()
        self._conn = parent_conn
        while True:
            try:
                msg = self._wait(on_message, should_stop)
            except Cancelled:
                self.kill()  # a loading child reads no commands: a polite stop would only wait
                raise
            if msg is None:
                self._proc.join(5.0)
                sentence = self._death_sentence("while loading the model")
                self.kill()
                raise CarbontopError(sentence)
            kind = msg[0]
            if kind == "loaded":
                self.info = msg[1]
                return self.info
            if kind == "load_failed":
                self.kill()
                _, why, text = msg
                if why == "unavailable":
                    raise EngineUnavailable(text)
                if why == "oom":
                    raise CarbontopError(f"The model does not fit in memory even before the sweep: {text}")
                raise CarbontopError(f"The engine failed to load the model: {text}{self._log_hint()}")

    def run_point(self, plan: PointPlan, on_message: OnMessage,
                  should_stop: ShouldStop) -> PointOutcome:
        if not self.alive:
            raise RuntimeError("engine child is not running")
        self._conn.send(("run", plan))
        self._busy = True  # until the point's answer: a child in a point reads no commands
        try:
            msg = self._wait(on_message, should_stop)
            self._busy = False
        except Cancelled:
            self.kill()
            return PointOutcome(PointStatus.CANCELLED, message="cancelled by the user")
        if msg is None and should_stop():
            # a stop and the child's end together (a signal to the whole group): the stop wins
            self.kill()
            return PointOutcome(PointStatus.CANCELLED, message="cancelled by the user")
        if msg is None:
            self._proc.join(5.0)  # the pipe can close a moment before the exit is reaped
            code = self._proc.exitcode
            sentence = self._death_sentence("during the point")
            self.kill()
            if code == -signal.SIGKILL:
                return PointOutcome(
                    PointStatus.OOM,
                    message="the engine process was killed (signal 9), most likely by the kernel's out-of-memory killer",
                )
            return PointOutcome(PointStatus.CRASHED, message=sentence, needs_restart=True)
        kind = msg[0]
        if kind == "result":
            return PointOutcome(PointStatus.OK, run=msg[1], concurrency_reached=msg[1].concurrency_reached)
        if kind == "oom":
            return PointOutcome(PointStatus.OOM, message=_one_line(msg[1]), needs_restart=not msg[2])
        if kind == "kv_bound":
            return PointOutcome(PointStatus.KV_BOUND, run=msg[3], message=_one_line(msg[1]),
                                concurrency_reached=msg[2])
        if kind == "failure":
            return PointOutcome(PointStatus.ERROR, message=_one_line(msg[1]))
        return PointOutcome(PointStatus.CRASHED, message=_one_line(msg[1]) + self._log_hint(),
                            needs_restart=True)

    def _wait(self, on_message: OnMessage, should_stop: ShouldStop) -> tuple | None:
        """Relay phase/progress messages until a terminal one; None if the child died."""
        while True:
            if should_stop():
                raise Cancelled
            try:
                ready = self._conn.poll(POLL_S)
            except (EOFError, OSError):
                ready = False
            if ready:
                try:
                    msg = self._conn.recv()
                except (EOFError, OSError):
                    return None
                if msg[0] in ("phase", "progress"):
                    on_message(msg[0], msg[1])
                    continue
                return msg
            on_message("tick", {})
            if not self._proc.is_alive():
                # drain anything sent just before exit
                try:
                    if self._conn.poll(0):
                        return self._conn.recv()
                except (EOFError, OSError):
                    pass
                return None

    def _death_sentence(self, when: str) -> str:
        code = self._proc.exitcode if self._proc is not None else None
        if code is not None and code < 0:
            how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        return f"The engine process {how} {when}{self._log_hint()}."

    def _log_hint(self) -> str:
        return f" (see {self.log_path})" if self.log_path else ""

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._proc is None:
            return
        if self._proc.is_alive() and not self._busy:
            try:
                self._conn.send(("stop",))
            except (OSError, BrokenPipeError):
                pass
            self._proc.join(timeout_s)
        self.kill()

    def kill(self) -> None:
        if self._proc is None:
            return
        pid = self._proc.pid
        if self._proc.is_alive():
            signal_group(pid, signal.SIGTERM)
            self._proc.join(3.0)
            if self._proc.is_alive():
                kill_group_now(pid)  # a stopped or hung child ignores SIGTERM until resumed
                self._proc.join(3.0)
        reap_group(pid)  # the engine's own workers, left behind by the child
        if self._conn is not None:
            self._conn.close()
        self._proc = None
        self._conn = None
        self._busy = False


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"

