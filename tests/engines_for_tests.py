"""Engines that fail on purpose, for testing the host and the sweep. Test doubles: tests only."""

from __future__ import annotations

import os
import signal
import time

from carbontop.core.records import EngineRun, RequestRecord
from carbontop.engines.base import EngineOOM

LIMIT = 5  # batches above this "do not fit"


class _Base:
    def __init__(self, spec, emit) -> None:
        self.spec = spec
        self.emit = emit

    def load(self) -> dict:
        return {"engine": type(self).__name__, "pid": os.getpid()}

    def close(self) -> None:
        pass

    def _run(self, batch_size: int, prompts) -> EngineRun:
        self.emit("phase", {"phase": "measuring", "detail": ""})
        start = time.time()
        records = []
        for i, p in enumerate(prompts):
            records.append(RequestRecord(batch_size, i, i // batch_size, p.input_tokens,
                                         p.output_tokens, start, 0.001, 0.002 * p.output_tokens))
        time.sleep(0.05)
        self.emit("progress", {"done": len(prompts), "total": len(prompts)})
        return EngineRun(batch_size, start, time.time(), tuple(records))


class OOMAbove(_Base):
    """Reports OOM the way a healthy engine does."""

    def run_point(self, batch_size, prompts):
        if batch_size > LIMIT:
            raise EngineOOM("CUDA out of memory. Tried to allocate 2.00 GiB", recovered=True)
        return self._run(batch_size, prompts)


class KilledAbove(_Base):
    """Dies the way the kernel's OOM killer ends a process."""

    def run_point(self, batch_size, prompts):
        if batch_size > LIMIT:
            os.kill(os.getpid(), signal.SIGKILL)
        return self._run(batch_size, prompts)


class CrashesAt(_Base):
    """Exits abruptly at one size (a CUDA fault, say); other sizes work."""

    def run_point(self, batch_size, prompts):
        if batch_size == 4:
            os._exit(3)
        return self._run(batch_size, prompts)


class Hangs(_Base):
    def run_point(self, batch_size, prompts):
        self.emit("phase", {"phase": "measuring", "detail": ""})
        time.sleep(60)
        return self._run(batch_size, prompts)


class HangsAbove1(_Base):
    """Batch 1 runs; larger batches hang mid-measurement (a point a signal can interrupt)."""

    limit = 1

    def run_point(self, batch_size, prompts):
        if batch_size > self.limit:
            self.emit("phase", {"phase": "measuring", "detail": "hanging"})
            time.sleep(600)
        return self._run(batch_size, prompts)


class HangsAbove4(HangsAbove1):
    limit = 4


class SlowLoad(_Base):
    """Takes a long time to load (a big model): the parent can be killed meanwhile."""

    def load(self) -> dict:
        self.emit("phase", {"phase": "loading", "detail": "slowly"})
        print(f"loading in pid {os.getpid()}", flush=True)  # into engine.log, for the test
        time.sleep(600)
        return super().load()
