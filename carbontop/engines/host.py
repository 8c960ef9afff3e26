"""Runs an engine in a child process, so that an out-of-memory error, a CUDA fault or a hung
engine ends that process only. The parent never imports torch or touches the GPU; it keeps
reading NVML while the child works or dies, and starts a fresh child when one is lost.

Over a multiprocessing Pipe the parent sends `RunPoint` and `Stop`; the child answers with the
engine's `PhaseUpdate`s and `Progress` (engines/base.py) while it works, then one message that ends
the step: `Loaded` or `LoadFailed` after loading, and after a point `PointDone`, `PointOOM`,
`PointKVBound`, `PointFailed` or `PointCrashed`. All are dataclasses defined here.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from carbontop.core.records import EngineRun, PointPlan, PointStatus
from carbontop.engines.base import (
    EngineFailure,
    EngineKVBound,
    EngineNote,
    EngineOOM,
    EngineSpec,
    PhaseUpdate,
    Progress,
    says_oom,
)
from carbontop.engines.oomkill import oom_kill_counter, oom_killed_since
from carbontop.engines.procgroup import (
    detach_and_tie_to_parent,
    kill_group_now,
    process_stopped,
    reap_group,
    signal_group,
)
from carbontop.errors import CarbontopError, EngineUnavailable, one_line

# Called with each PhaseUpdate or Progress the engine sends, and with None every POLL_S that
# nothing arrives (the sweep flushes telemetry then).
OnMessage = Callable[[EngineNote | None], None]
ShouldStop = Callable[[], bool]

POLL_S = 0.2


# ---- messages -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPoint:
    """parent -> child: run one sweep point."""

    plan: PointPlan


@dataclass(frozen=True)
class Stop:
    """parent -> child: close the engine and exit."""


class LoadFailure(str, Enum):
    UNAVAILABLE = "unavailable"  # the engine cannot run here (package, GPU, server): the user's to fix
    OOM = "oom"  # the model alone does not fit
    ERROR = "error"  # anything else: a bug or a broken model


@dataclass(frozen=True)
class Loaded:
    info: dict[str, Any]  # facts for run.toml's [engine]


@dataclass(frozen=True)
class LoadFailed:
    why: LoadFailure
    message: str


@dataclass(frozen=True)
class PointDone:
    run: EngineRun


@dataclass(frozen=True)
class PointOOM:
    message: str
    recovered: bool  # the engine freed what the batch took: the same process can go on


@dataclass(frozen=True)
class PointKVBound:
    message: str
    concurrency_reached: int
    run: EngineRun | None  # what was measured at the concurrency reached, if anything


@dataclass(frozen=True)
class PointFailed:
    """The engine's own failure that is not memory (a server error, a bad reply)."""

    message: str


@dataclass(frozen=True)
class PointCrashed:
    """An exception the engine did not expect; the process may be in any state."""

    message: str
    traceback: str


ChildReply = Loaded | LoadFailed | PointDone | PointOOM | PointKVBound | PointFailed | PointCrashed


# ---- child side ---------------------------------------------------------------------------

# How a logged line reads, in engine.log and in the run's carbontop.log alike
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
    # what the engine's modules log goes to engine.log with the rest of what the child says
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger("carbontop").addHandler(handler)
    if spec.compile_cache_dir:
        # read by torch when it is first imported, which happens below, in the engine
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", spec.compile_cache_dir)
    if spec.device == "cuda" and spec.gpus:
        # NVML numbers GPUs by PCI bus; make CUDA agree before anything initialises it.
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in spec.gpus)

    if spec.tp > 1:
        # one process per tensor-parallel rank: this one is rank 0, the others follow it
        from carbontop.engines.ranks import lead_ranks

        lead_ranks(conn, spec)
        return
    from carbontop.engines import load_engine_class

    engine, reply = load_reply(lambda: load_engine_class(spec.engine)(spec, conn.send))
    conn.send(reply)
    if engine is None:
        return
    for command in point_commands(conn):
        conn.send(point_reply(engine, command.plan))
    try:
        engine.close()
    except Exception:  # noqa: BLE001 - closing must not hide the result already sent
        traceback.print_exc()


def point_commands(conn: Any) -> Iterator[RunPoint]:
    """The points the other end asks for, until it closes the pipe or sends anything else (its
    way of saying stop)."""
    while True:
        try:
            command = conn.recv()
        except EOFError:
            return
        if not isinstance(command, RunPoint):
            return
        yield command


def load_reply(make_and_load: Callable[[], Any]) -> tuple[Any, Loaded | LoadFailed]:
    """Make the engine and load its model: (engine, Loaded) or (None, LoadFailed), every
    exception turned into the message the parent reads."""
    try:
        engine = make_and_load()
        info = engine.load()
    except (CarbontopError, EngineFailure) as exc:
        return None, LoadFailed(LoadFailure.UNAVAILABLE, str(exc))
    except EngineOOM as exc:
        return None, LoadFailed(LoadFailure.OOM, str(exc))
    except BaseException as exc:  # noqa: BLE001 - everything must reach the parent as a message
        why = LoadFailure.OOM if says_oom(str(exc)) else LoadFailure.ERROR
        traceback.print_exc()
        return None, LoadFailed(why, f"{type(exc).__name__}: {exc}")
    return engine, Loaded(info)


def point_reply(engine: Any, plan: PointPlan) -> ChildReply:
    """Run one point; its result or its failure as the message that ends the step."""
    try:
        return PointDone(engine.run_point(plan))
    except EngineOOM as exc:
        return PointOOM(str(exc), exc.recovered)
    except EngineKVBound as exc:
        # engines attach what they measured (exc.run): a KV-bound point still has figures
        return PointKVBound(str(exc), exc.concurrency_reached, exc.run)
    except EngineFailure as exc:
        return PointFailed(str(exc))
    except BaseException as exc:  # noqa: BLE001 - everything must reach the parent as a message
        traceback.print_exc()
        # MemoryError: the CPU's allocator (or the process's limit) ran out: an OOM as well
        if isinstance(exc, MemoryError) or says_oom(str(exc)):
            return PointOOM(f"{type(exc).__name__}: {exc}", recovered=False)
        return PointCrashed(f"{type(exc).__name__}: {exc}", traceback.format_exc())


# ---- parent side --------------------------------------------------------------------------


@dataclass(frozen=True)
class PointOutcome:
    status: PointStatus
    run: EngineRun | None = None
    message: str = ""
    concurrency_reached: int | None = None
    needs_restart: bool = False  # the engine process is gone or may hold memory it should not
    # not a proven out-of-memory (a kill, a crash, a hang): worth one more try in a fresh child
    # before the sweep takes it as the memory boundary
    retry: bool = False


class _Stalled:
    """_wait's answer when the engine sent nothing for the stall timeout."""


STALLED = _Stalled()

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

    def __init__(self, spec: EngineSpec, log_path: Path | None = None,
                 stall_timeout_s: float | None = None) -> None:
        self.spec = spec
        self.log_path = log_path
        # the watchdog: an engine that sends nothing for this long is killed with its group
        self.stall_timeout_s = stall_timeout_s
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
            if msg is STALLED:
                self.kill()
                raise CarbontopError(
                    f"The engine sent nothing for {self.stall_timeout_s:g} s while loading the model"
                    f"{self._log_hint()}; raise --stall-timeout-s if it only compiles or builds slowly.")
            if msg is None:
                self._proc.join(5.0)
                sentence = self._death_sentence("while loading the model")
                self.kill()
                raise CarbontopError(sentence)
            if isinstance(msg, Loaded):
                self.info = msg.info
                return self.info
            if isinstance(msg, LoadFailed):
                self.kill()
                if msg.why is LoadFailure.UNAVAILABLE:
                    raise EngineUnavailable(msg.message)
                if msg.why is LoadFailure.OOM:
                    raise CarbontopError(
                        f"The model does not fit in memory even before the sweep: {msg.message}")
                raise CarbontopError(
                    f"The engine failed to load the model: {msg.message}{self._log_hint()}")

    def run_point(self, plan: PointPlan, on_message: OnMessage,
                  should_stop: ShouldStop) -> PointOutcome:
        if not self.alive:
            raise RuntimeError("engine child is not running")
        oom_count = oom_kill_counter(self._proc.pid)  # to tell the OOM killer from other kills
        self._conn.send(RunPoint(plan))
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
        if msg is STALLED:
            stopped = " (its process was stopped)" if process_stopped(self._proc.pid) else ""
            self.kill()
            return PointOutcome(
                PointStatus.HUNG, needs_restart=True, retry=True,
                message=f"the engine sent nothing for {self.stall_timeout_s:g} s{stopped} and was killed")
        if msg is None:
            self._proc.join(5.0)  # the pipe can close a moment before the exit is reaped
            sentence = self._death_sentence("during the point")
            self.kill()
            oom_killed = oom_killed_since(oom_count)
            if oom_killed:
                return PointOutcome(
                    PointStatus.OOM, needs_restart=True,
                    message=f"the kernel's out-of-memory killer ended the engine process "
                            f"(oom_kill counted in {oom_count.path if oom_count else '?'})")
            proof = ("no out-of-memory kill was counted in its memory cgroup"
                     if oom_killed is False else
                     "whether the kernel's out-of-memory killer ended it cannot be read here")
            return PointOutcome(PointStatus.CRASHED, message=f"{sentence.rstrip('.')}; {proof}.",
                                needs_restart=True, retry=True)
        if isinstance(msg, PointDone):
            return PointOutcome(PointStatus.OK, run=msg.run,
                                concurrency_reached=msg.run.concurrency_reached)
        if isinstance(msg, PointOOM):
            return PointOutcome(PointStatus.OOM, message=one_line(msg.message),
                                needs_restart=not msg.recovered)
        if isinstance(msg, PointKVBound):
            return PointOutcome(PointStatus.KV_BOUND, run=msg.run, message=one_line(msg.message),
                                concurrency_reached=msg.concurrency_reached)
        if isinstance(msg, PointFailed):
            return PointOutcome(PointStatus.ERROR, message=one_line(msg.message))
        message = msg.message if isinstance(msg, PointCrashed) else f"unexpected reply {msg!r}"
        return PointOutcome(PointStatus.CRASHED, message=one_line(message) + self._log_hint(),
                            needs_restart=True, retry=True)

    def _wait(self, on_message: OnMessage, should_stop: ShouldStop) -> ChildReply | _Stalled | None:
        """Relay phase/progress messages until a terminal one; None if the child died, STALLED if
        it sent nothing for the stall timeout."""
        last_word = time.monotonic()
        while True:
            if should_stop():
                raise Cancelled
            if self.stall_timeout_s is not None and time.monotonic() - last_word > self.stall_timeout_s:
                return STALLED
            try:
                ready = self._conn.poll(POLL_S)
            except (EOFError, OSError):
                ready = False
            if ready:
                try:
                    msg = self._conn.recv()
                except (EOFError, OSError):
                    return None
                last_word = time.monotonic()
                if isinstance(msg, (PhaseUpdate, Progress)):
                    on_message(msg)
                    continue
                return msg
            on_message(None)
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
                self._conn.send(Stop())
            except (OSError, BrokenPipeError):
                pass
            self._proc.join(timeout_s)
        self.kill()

    def kill(self) -> None:
        if self._proc is None:
            return
        pid = self._proc.pid
        if self._proc.is_alive():
            if process_stopped(pid):
                kill_group_now(pid)  # a stopped process acts on SIGTERM only once resumed
            else:
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

