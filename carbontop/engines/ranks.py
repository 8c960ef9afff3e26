"""Tensor-parallel ranks under the engine host: one engine process per rank.

The host's engine child is rank 0: it talks to the parent as a one-rank engine does, and starts
ranks 1..N-1 as children of its own. They stay in its process group, so the parent's kill of the
group ends them all, and each dies with rank 0 (PR_SET_PDEATHSIG). Every rank loads the engine,
which joins torch.distributed through torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT), and every rank runs every point: rank 0 passes each RunPoint on, and where the
engine decides by the clock (when to stop admitting) the other ranks follow rank 0's decision
(engines/hf_ranks.py), so all of them run the same forwards. The other ranks answer rank 0 only.

A failure on any rank ends the point without a hang. A rank whose point fails tells rank 0; rank
0 watches every other rank's pipe and process from a thread of its own, since its main thread
may be waiting inside a collective that will never complete. The first failure it learns of
(its own, another rank's, or a rank's death) is the point's answer to the parent; rank 0 then
kills the other ranks and exits, because ranks left inside a collective cannot be brought back.
The answer always says the engine needs a fresh process, and the parent starts a fresh set of
ranks for the next point, as after any failure that leaves an engine in an unknown state.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from carbontop.engines.base import EngineNote, EngineSpec
from carbontop.engines.host import (
    ChildReply,
    Loaded,
    LoadFailed,
    LoadFailure,
    PointCrashed,
    PointDone,
    PointFailed,
    PointKVBound,
    PointOOM,
    RunPoint,
    Stop,
    load_reply,
    point_commands,
    point_reply,
)
from carbontop.engines.procgroup import tie_to_parent

# How long rank 0 waits, once its own point has ended, for the other ranks to end theirs: they
# run the same steps, so they end within moments of it unless something is wrong.
PEER_FINISH_S = 60.0
# After a failure of its own, how long rank 0 waits to hear whether another rank failed first:
# where one did (a rank that ran out of memory leaves the others failing in a collective), its
# failure is the cause and rank 0's only the symptom.
FAILURE_GRACE_S = 2.0
STOP_WAIT_S = 10.0


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    """torchrun's variables for one rank of a single-host group (init_method "env://")."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def free_port() -> int:
    """A TCP port free on this host now, for rank 0's rendezvous store."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _quiet(_note: EngineNote) -> None:
    """The other ranks' phases and progress: rank 0 reports the point's."""


def _rank_main(conn: Any, spec: EngineSpec, rank: int, port: int, leader_pid: int) -> None:
    """Rank r > 0: load the engine, then run each point rank 0 passes on, answering rank 0."""
    tie_to_parent(leader_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(rank_env(rank, spec.tp, port))
    # stdout and stderr are rank 0's (engine.log where the run has one)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("carbontop").addHandler(handler)
    from carbontop.engines import load_engine_class

    engine, reply = load_reply(lambda: load_engine_class(spec.engine)(spec, _quiet))
    conn.send(reply)
    if engine is None:
        return
    for command in point_commands(conn):
        reply = point_reply(engine, command.plan)
        # rank 0 reports the point's figures; the others only say how their point ended
        conn.send(PointDone(None) if isinstance(reply, PointDone) else reply)  # type: ignore[arg-type]
    try:
        engine.close()
    except Exception:  # noqa: BLE001 - closing must not hide the answer already sent
        traceback.print_exc()


def _how_ended(proc: Any) -> str:
    code = proc.exitcode
    return f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"


def _ranked(rank: int, reply: ChildReply, loading: bool) -> ChildReply:
    """A rank's failure as rank 0's answer to the parent: named by its rank, and never
    recoverable in place (the ranks that did not fail are left inside a collective)."""
    if isinstance(reply, LoadFailed):
        if reply.why is LoadFailure.UNAVAILABLE:
            return reply  # the user's to fix (a missing plan, a package): the same on every rank
        return LoadFailed(reply.why, f"rank {rank}: {reply.message}")
    if isinstance(reply, PointOOM):
        return PointOOM(f"rank {rank}: {reply.message}", recovered=False)
    if isinstance(reply, PointFailed):
        return PointFailed(f"rank {rank}: {reply.message}")
    if isinstance(reply, PointCrashed):
        return PointCrashed(f"rank {rank}: {reply.message}", reply.traceback)
    if isinstance(reply, PointKVBound):
        return PointCrashed(f"rank {rank} reported a KV bound alone: {reply.message}", "")
    what = "while loading the model" if loading else "during the point"
    return PointCrashed(f"rank {rank} answered {type(reply).__name__} {what}", "")


class _Answer:
    """What rank 0 sends the parent, from its main thread or from the watcher: the engine's
    notes, and one answer per step (loading, or a point), whichever thread has it first."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.step: str | None = None  # "load" or "point" while an answer is owed

    def begin(self, step: str) -> None:
        with self.lock:
            self.step = step

    def note(self, note: EngineNote) -> None:
        with self.lock:
            if self.step is not None:
                self.conn.send(note)

    def send(self, reply: ChildReply) -> bool:
        """Send the step's answer unless one was sent; True where this one was."""
        with self.lock:
            if self.step is None:
                return False
            self.conn.send(reply)
            self.step = None
            return True


class _OtherRanks:
    """Ranks 1..N-1 as seen from rank 0: their processes, pipes, and what they answered."""

    def __init__(self, spec: EngineSpec) -> None:
        ctx = mp.get_context("spawn")
        self.port = free_port()
        self.procs: dict[int, Any] = {}
        self.conns: dict[int, Any] = {}
        for rank in range(1, spec.tp):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_rank_main, args=(theirs, spec, rank, self.port, os.getpid()),
                               name=f"carbontop-engine-rank{rank}", daemon=False)
            proc.start()
            theirs.close()
            self.procs[rank] = proc
            self.conns[rank] = mine
        self.cond = threading.Condition()
        self.answered: set[int] = set()  # ranks that ended the current step well
        self.failed = False
        self.closing = False  # rank 0 is ending them: their deaths are no news

    def begin_step(self) -> None:
        with self.cond:
            self.answered.clear()

    def send(self, command: RunPoint | Stop) -> None:
        for conn in self.conns.values():
            try:
                conn.send(command)
            except (OSError, BrokenPipeError):
                pass  # a dead rank: the watcher reports it

    def wait_all(self, timeout_s: float | None) -> bool:
        """Until every other rank has ended the step well; False on a timeout or a failure."""
        with self.cond:
            return self.cond.wait_for(
                lambda: self.failed or len(self.answered) == len(self.procs), timeout_s) and not self.failed

    def wait_failure(self, timeout_s: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.failed, timeout_s)

    def watch(self, step: Callable[[], str | None], on_failure: Callable[[ChildReply | None], None]) -> None:
        """Rank 0's watcher thread: every other rank's answers, and its death."""
        waiting = {**{conn: rank for rank, conn in self.conns.items()},
                   **{proc.sentinel: rank for rank, proc in self.procs.items()}}
        while waiting:
            for ready in mp.connection.wait(list(waiting)):
                rank = waiting[ready]
                if self.closing:
                    return
                if ready in self.conns.values():
                    try:
                        reply = ready.recv()
                    except (EOFError, OSError):
                        del waiting[ready]  # its death comes through the sentinel
                        continue
                    if isinstance(reply, (Loaded, PointDone)):
                        with self.cond:
                            self.answered.add(rank)
                            self.cond.notify_all()
                        continue
                    failure: ChildReply | None = _ranked(rank, reply, step() == "load")
                else:
                    self.procs[rank].join(1.0)
                    how = _how_ended(self.procs[rank])
                    current = step()
                    if current == "load":
                        failure = LoadFailed(LoadFailure.ERROR,
                                             f"rank {rank}'s engine process {how} while loading the model")
                    elif current == "point":
                        failure = PointCrashed(f"rank {rank}'s engine process {how} during the point", "")
                    else:
                        failure = None  # between points: nothing is owed; the parent finds rank 0 gone
                with self.cond:
                    self.failed = True
                    self.cond.notify_all()
                on_failure(failure)
                return

    def kill(self) -> None:
        self.closing = True
        for proc in self.procs.values():
            if proc.is_alive():
                proc.kill()
        for proc in self.procs.values():
            proc.join(3.0)

    def stop(self) -> None:
        self.closing = True
        self.send(Stop())
        for proc in self.procs.values():
            proc.join(STOP_WAIT_S)
        self.kill()


def lead_ranks(conn: Any, spec: EngineSpec) -> None:
    """Rank 0: the host's engine child, with ranks 1..N-1 beside it."""
    from carbontop.engines import load_engine_class

    answer = _Answer(conn)
    answer.begin("load")
    others = _OtherRanks(spec)
    os.environ.update(rank_env(0, spec.tp, others.port))

    def on_failure(failure: ChildReply | None) -> None:
        # from the watcher thread: rank 0's main thread may be inside a collective for good
        if failure is not None:
            answer.send(failure)
        others.kill()
        os._exit(1)

    watcher = threading.Thread(target=others.watch, args=(lambda: answer.step, on_failure),
                               name="carbontop-ranks-watcher", daemon=True)
    watcher.start()
    engine, reply = load_reply(lambda: load_engine_class(spec.engine)(spec, answer.note))
    if engine is None:
        # rank 0's own sentence ("no tensor-parallel plan for ...") is the one the user reads
        others.kill()
        answer.send(reply)
        _exit_now()
    if not others.wait_all(None):
        _wait_for_exit()  # another rank failed to load: the watcher answers and ends this process
    assert isinstance(reply, Loaded)
    answer.send(Loaded({**reply.info, "tp": spec.tp}))

    for command in point_commands(conn):
        others.begin_step()
        answer.begin("point")
        others.send(command)
        reply = point_reply(engine, command.plan)
        if isinstance(reply, PointDone):
            if others.wait_all(PEER_FINISH_S):
                answer.send(reply)
                continue
            if not others.failed:
                late = sorted(set(others.procs) - others.answered)
                reply = PointCrashed(f"rank {', '.join(map(str, late))} did not end the point within "
                                     f"{PEER_FINISH_S:g} s of rank 0", "")
        if others.wait_failure(FAILURE_GRACE_S):
            _wait_for_exit()  # the watcher answers with the other rank's failure and ends this process
        others.kill()
        answer.send(_ranked(0, reply, loading=False))
        _exit_now()
    others.stop()
    try:
        engine.close()
    except Exception:  # noqa: BLE001 - closing must not hide the answers already sent
        traceback.print_exc()


def _exit_now() -> None:
    """End rank 0 once it has answered: at once, since a process group left with a collective
    half-done can hang the interpreter's exit."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _wait_for_exit() -> None:
    """The watcher has the answer and ends the process; nothing is left for this thread."""
    threading.Event().wait(FAILURE_GRACE_S + 30.0)
    os._exit(1)
