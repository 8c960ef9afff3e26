"""Engines that fail on purpose, for testing the host and the sweep. Test doubles: tests only."""

from __future__ import annotations

import os
import signal
import time

from carbontop.core.records import EngineRun, RequestRecord
from carbontop.engines.base import (
    EngineFailure,
    EngineKVBound,
    EngineOOM,
    Phase,
    PhaseUpdate,
    Progress,
)

LIMIT = 5  # batches above this "do not fit"


class _Base:
    def __init__(self, spec, emit) -> None:
        self.spec = spec
        self.emit = emit

    def load(self) -> dict:
        return {"engine": type(self).__name__, "pid": os.getpid()}

    def close(self) -> None:
        pass

    def _run(self, plan) -> EngineRun:
        """One static pass over the plan's stream, timed by the clock, not by steps."""
        batch_size = plan.batch_size
        n = -(-len(plan.prompts) // batch_size) * batch_size
        prompts = [plan.prompts[i % len(plan.prompts)] for i in range(n)]
        self.emit(PhaseUpdate(Phase.MEASURING))
        start = time.time()
        records = []
        for i, p in enumerate(prompts):
            records.append(RequestRecord(batch_size, i, i // batch_size, p.input_tokens,
                                         p.output_tokens, start, 0.001, 0.002 * p.output_tokens))
        time.sleep(0.05)
        self.emit(Progress(done=len(prompts), total=len(prompts)))
        return EngineRun(batch_size, start, time.time(), tuple(records))


class OOMAbove(_Base):
    """Reports OOM the way a healthy engine does."""

    def run_point(self, plan):
        if plan.batch_size > LIMIT:
            raise EngineOOM("CUDA out of memory. Tried to allocate 2.00 GiB", recovered=True)
        return self._run(plan)


class OOMNoRecoveryAbove(_Base):
    """Reports OOM but cannot promise the failed batch's memory is free (TensorRT-LLM's case):
    the host must go on in a fresh process."""

    def run_point(self, plan):
        if plan.batch_size > LIMIT:
            raise EngineOOM("CUDA out of memory; the executor keeps what it took", recovered=False)
        return self._run(plan)


class KVBoundAbove(_Base):
    """Runs every batch, but above LIMIT keeps only LIMIT requests in flight (a full KV cache)."""

    def run_point(self, plan):
        run = self._run(plan)
        if plan.batch_size > LIMIT:
            raise EngineKVBound(f"kept at most {LIMIT} of {plan.batch_size} requests in flight", LIMIT, run)
        return run


class FailsAt2(_Base):
    """A failure that is not memory (a server's error answer) at batch 2."""

    def run_point(self, plan):
        if plan.batch_size == 2:
            raise EngineFailure("The server answered 500 Internal Server Error")
        return self._run(plan)


class RaisesAt2(_Base):
    """An exception nobody planned for (a bug) at batch 2."""

    def run_point(self, plan):
        if plan.batch_size == 2:
            raise ZeroDivisionError("division by zero in a kernel launcher")
        return self._run(plan)


class LoadFails(_Base):
    """Cannot load its model (damaged weights, say)."""

    def load(self) -> dict:
        raise OSError("the weights file is truncated")


class KilledAbove(_Base):
    """Dies the way the kernel's OOM killer ends a process."""

    def run_point(self, plan):
        if plan.batch_size > LIMIT:
            os.kill(os.getpid(), signal.SIGKILL)
        return self._run(plan)


class CrashesAt(_Base):
    """Exits abruptly at one size (a CUDA fault, say); other sizes work."""

    def run_point(self, plan):
        if plan.batch_size == 4:
            os._exit(3)
        return self._run(plan)


class Hangs(_Base):
    def run_point(self, plan):
        self.emit(PhaseUpdate(Phase.MEASURING))
        time.sleep(60)
        return self._run(plan)


class HangsAbove1(_Base):
    """Batch 1 runs; larger batches hang mid-measurement (a point a signal can interrupt)."""

    limit = 1

    def run_point(self, plan):
        if plan.batch_size > self.limit:
            self.emit(PhaseUpdate(Phase.MEASURING, "hanging"))
            time.sleep(600)
        return self._run(plan)


class HangsAbove4(HangsAbove1):
    limit = 4


class HangsAbove1ThenLoadsSilently(HangsAbove1):
    """Batch 1 runs and batch 2 hangs; an engine started after that (to try batch 2 again) sends
    nothing while it loads. Remembers across processes through CARBONTOP_TEST_MARK."""

    def load(self) -> dict:
        mark = os.environ["CARBONTOP_TEST_MARK"]
        if os.path.exists(mark):
            print(f"loading in pid {os.getpid()}", flush=True)  # into engine.log, for the test
            time.sleep(600)
        open(mark, "w").close()
        return super().load()


class SlowLoad(_Base):
    """Takes a long time to load (a big model): the parent can be killed meanwhile."""

    def load(self) -> dict:
        self.emit(PhaseUpdate(Phase.LOADING, "slowly"))
        print(f"loading in pid {os.getpid()}", flush=True)  # into engine.log, for the test
        time.sleep(600)
        return super().load()


class Scheduler(_Base):
    """Schedules a point's plan as a real engine does, with a fixed step time and no model:
    in flight (a finished request's slot refilled at once, the window kept by SteadyState) or
    static (batches of b, each until its longest request ends). Each step makes one token for
    every request still generating; a request's first step is its prefill."""

    STEP_S = 0.004

    def run_point(self, plan):
        from carbontop.core.records import Batching

        self.emit(PhaseUpdate(Phase.MEASURING))
        if plan.batching is Batching.INFLIGHT:
            return self._inflight(plan)
        return self._static(plan)

    def _stream(self, plan):
        i = 0
        while True:
            yield i, plan.prompts[i % len(plan.prompts)]
            i += 1

    def _inflight(self, plan):
        from carbontop.core.records import Batching, StepTimeline
        from carbontop.core.window import SteadyState

        b, state, stream = plan.batch_size, SteadyState(plan.batch_size), self._stream(plan)
        slots, records, steps = [], [], []

        def admit(t):
            i, p = next(stream)
            slots.append({"i": i, "p": p, "made": 0, "start": t, "first": None})
            state.admit(t)

        def record(s, t, finished):
            return RequestRecord(b, s["i"], -1, s["p"].input_tokens, s["made"], s["start"],
                                 s["first"] - s["start"], t - s["start"], finished)

        now = time.time()
        for _ in range(b):
            admit(now)
        last = now
        while slots and not state.done:
            time.sleep(self.STEP_S)
            t = time.time()
            steps.append((t, len(slots), sum(s["made"] > 0 for s in slots) == len(slots)))
            for s in slots:
                s["made"] += 1
                if s["made"] == 1:
                    s["first"] = t
                    state.first_token(t)
            done = [s for s in slots if s["made"] >= s["p"].output_tokens]
            for s in done:
                slots.remove(s)
                state.finish(t)
                records.append(record(s, t, True))
                last = t
            for _ in done:
                if state.admitting and state.keep_admitting(t, plan.min_window_s, plan.max_point_s):
                    admit(t)
                else:
                    state.stop_admitting(t)
        records.extend(record(s, last, False) for s in slots if s["made"] > 0)
        window = state.window()
        timeline = StepTimeline(tuple(t for t, _, _ in steps), tuple(n for _, n, _ in steps),
                                tuple(n for _, n, _ in steps), b,
                                decode=tuple(d for _, _, d in steps))
        return EngineRun(b, window.start_s, window.end_s, tuple(records),
                         batching=Batching.INFLIGHT, timeline=timeline)

    def _static(self, plan):
        from carbontop.core.records import Batching, StepTimeline
        from carbontop.core.window import keep_admitting

        b, stream = plan.batch_size, self._stream(plan)
        records, steps, first_admit, batch_index = [], [], None, 0
        while True:
            batch = [next(stream) for _ in range(b)]
            start = time.time()
            first_admit = first_admit or start
            longest = max(p.output_tokens for _, p in batch)
            firsts, ends = {}, {}
            for j in range(longest):
                time.sleep(self.STEP_S)
                t = time.time()
                live = sum(p.output_tokens > j for _, p in batch)
                steps.append((t, live, j > 0))
                for i, p in batch:
                    if j == 0:
                        firsts[i] = t
                    if p.output_tokens == j + 1:
                        ends[i] = t
            records.extend(RequestRecord(b, i, batch_index, p.input_tokens, p.output_tokens, start,
                                         firsts[i] - start, ends[i] - start) for i, p in batch)
            batch_index += 1
            if not keep_admitting(t, plan.min_window_s, first_admit, plan.max_point_s,
                                  opened_s=first_admit):
                break
        timeline = StepTimeline(tuple(t for t, _, _ in steps), tuple(n for _, n, _ in steps),
                                tuple(n for _, n, _ in steps), b,
                                decode=tuple(d for _, _, d in steps))
        return EngineRun(b, first_admit, t, tuple(records), batching=Batching.STATIC,
                         timeline=timeline)


class Ticks(_Base):
    """Batches above 1 take ~2 s, with a word (progress) every 0.1 s: a healthy, slow point."""

    def run_point(self, plan):
        if plan.batch_size > 1:
            for _ in range(20):
                self.emit(Progress(done=0, total=len(plan.prompts)))
                time.sleep(0.1)
        return self._run(plan)


class KilledOnceAt2(_Base):
    """Killed (SIGKILL, by 'someone') the first time it runs batch 2; fine the second time.
    Remembers across processes through the file named in CARBONTOP_TEST_MARK."""

    def run_point(self, plan):
        mark = os.environ["CARBONTOP_TEST_MARK"]
        if plan.batch_size == 2 and not os.path.exists(mark):
            open(mark, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return self._run(plan)


class CpuAllocFails(_Base):
    """Above batch 1 the process's address space is capped and a large allocation fails: the
    real MemoryError a CPU run meets when memory runs out."""

    def run_point(self, plan):
        if plan.batch_size > 1:
            import resource

            with open("/proc/self/statm") as fh:
                size_bytes = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            cap = size_bytes + 64 * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
            bytearray(512 * 2**20)
        return self._run(plan)


class HogInCgroup(_Base):
    """Joins the memory cgroup named in CARBONTOP_TEST_CGROUP when it loads; above batch 1 it
    allocates until the kernel's OOM killer ends it."""

    def load(self) -> dict:
        with open(os.path.join(os.environ["CARBONTOP_TEST_CGROUP"], "cgroup.procs"), "w") as fh:
            fh.write(str(os.getpid()))
        return super().load()

    def run_point(self, plan):
        if plan.batch_size > 1:
            hog = []
            while True:
                hog.append(bytearray(16 * 2**20))
        return self._run(plan)


# ---- the built-in engine, watched (tensor-parallel tests) ----------------------------------

def _hf_engine_class():
    from carbontop.engines.hf import HFEngine

    return HFEngine


class TokensInNotes:
    """The built-in engine whose points carry their greedy tokens in a note ("tokens <json>"), so
    that a test in the parent can read what rank 0 decoded."""

    def __new__(cls, spec, emit):
        import dataclasses
        import json

        base = _hf_engine_class()

        class _Logged(base):
            def run_point(self, plan):
                self.token_log = {}
                try:
                    run = super().run_point(plan)
                finally:
                    log, self.token_log = self.token_log, None
                return dataclasses.replace(run, notes=(*run.notes, "tokens " + json.dumps(log)))

        return _Logged(spec, emit)


class RankFailsMidPoint:
    """The built-in engine whose rank FAILING_RANK (default 1) fails part-way through a point's
    measured stream, at its first progress report (RANK_FAILURE: "oom" raises an out-of-memory
    error, "kill" kills the process)."""

    def __new__(cls, spec, emit):
        base = _hf_engine_class()
        how = os.environ.get("RANK_FAILURE", "oom")
        failing = int(os.environ.get("FAILING_RANK", "1"))

        class _Failing(base):
            def _progress(self, *args):
                if self.ranks.rank == failing:
                    if how == "kill":
                        os.kill(os.getpid(), signal.SIGKILL)
                    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (on purpose)")
                super()._progress(*args)

        return _Failing(spec, emit)
