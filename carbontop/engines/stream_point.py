"""One sweep point driven from the client's side: b slots over a request stream.

For engines that hand requests one by one to something that batches them itself (an
OpenAI-compatible server, TensorRT-LLM's executor) and hear back token by token:

- in flight (the default): b workers, each taking the stream's next prompt as soon as its last
  request ended. The steady-state window (core/window.py) is tracked as it happens; the workers
  stop taking prompts when `keep_admitting` says so, and the point ends at the window's close:
  requests still running then are cancelled (the engine's `send` aborts them) and recorded with
  finished=False and the tokens they made.
- static (the paper's): batches of b submitted together, the next batch only once every request
  of the last one ended, until the window (first batch start -> latest batch end) has lasted
  min_window_s or the point's cap has passed; the last batch always runs to its end.

Every chunk of tokens that arrives is an entry of the point's StepTimeline (when, how many
tokens, how many requests were in flight). The window the engine reports is `steady_window` over
its own records, the rule the runner replays, so the two agree by construction.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from carbontop.core.records import (
    Batching,
    EngineRun,
    PointPlan,
    Prompt,
    RequestRecord,
    StepTimeline,
)
from carbontop.core.window import SteadyState, Window, keep_admitting, steady_window
from carbontop.engines.base import Emit, EngineOOM, Phase, PhaseUpdate, Progress

PROGRESS_EVERY_S = 0.5  # progress messages during a point, at most this often


@dataclass
class StreamedRequest:
    """One request as its tokens arrive (perf_counter times). Mutable, so that a request cut off
    at the end of a point keeps what it made."""

    start_perf: float
    index: int = -1  # position in the point's request stream
    prompt: Prompt | None = None
    batch_index: int = -1
    first_perf: float | None = None
    last_perf: float | None = None
    end_perf: float | None = None
    chunk_perf: list[float] = field(default_factory=list)  # every chunk that carried tokens
    chunk_tokens: list[int] = field(default_factory=list)
    chunk_live: list[int] = field(default_factory=list)  # requests in flight when it arrived
    exact_chunks: bool = False  # the chunk counts are the engine's own (not one per chunk)
    reported_input_tokens: int | None = None  # the engine's own counts, where it gives them
    reported_output_tokens: int | None = None
    streamed: bool = True
    finished: bool = False

    def add_chunk(self, now_perf: float, tokens: int) -> None:
        if self.first_perf is None:
            self.first_perf = now_perf
        self.last_perf = now_perf
        self.chunk_perf.append(now_perf)
        self.chunk_tokens.append(tokens)

    def output_tokens(self) -> int:
        if self.finished and self.reported_output_tokens is not None:
            return self.reported_output_tokens
        return sum(self.chunk_tokens)

    def tokens_per_chunk(self) -> list[int]:
        """Chunk token counts that add up to output_tokens(): a finished answer whose reported
        count differs from its chunks' has the difference shared out evenly over its chunks."""
        total, n = self.output_tokens(), len(self.chunk_tokens)
        if n == 0 or sum(self.chunk_tokens) == total:
            return list(self.chunk_tokens)
        base, extra = divmod(total, n)
        return [base + (1 if k >= n - extra else 0) for k in range(n)]


# on_chunk(request, now_perf, tokens): called by `send` for every chunk, after request.add_chunk
OnChunk = Callable[[StreamedRequest, float, int], None]
# send(request, on_chunk): runs one request to its end (setting finished and the reported counts);
# cancelled at the window's close, when it must abort the request
Send = Callable[[StreamedRequest, OnChunk], Awaitable[Any]]


@dataclass
class Clock:
    """One Unix/perf_counter pair, so that Unix times keep perf_counter's precision."""

    unix0: float
    perf0: float

    @classmethod
    def now(cls) -> Clock:
        return cls(time.time(), time.perf_counter())

    def unix(self, perf: float) -> float:
        return self.unix0 + (perf - self.perf0)


class StreamPoint:
    """Runs one PointPlan through `send`; then `result()` gives the EngineRun."""

    def __init__(self, plan: PointPlan, emit: Emit, send: Send) -> None:
        self.plan = plan
        self.b = plan.batch_size
        self.emit = emit
        self.send = send
        self.clock = Clock.now()
        self.requests: list[StreamedRequest] = []
        self.in_flight = 0
        self.done = 0
        self.tokens = 0
        self.state = SteadyState(self.b)
        self.first_admit_s: float | None = None
        self._stream = itertools.count()
        self._last_progress = 0.0

    async def run(self) -> None:
        if self.plan.batching is Batching.STATIC:
            await self._run_static()
        else:
            await self._run_inflight()
        self._progress(force=True)

    # ---- the stream --------------------------------------------------------------------

    def _next(self, batch_index: int) -> StreamedRequest:
        k = next(self._stream)
        request = StreamedRequest(start_perf=time.perf_counter(), index=k,
                                  prompt=self.plan.request(k), batch_index=batch_index)
        if k == 0:
            mode = "static batches" if self.plan.batching is Batching.STATIC else "in flight"
            self.emit(PhaseUpdate(Phase.MEASURING, f"{mode}, {self.b} at a time"))
        self.requests.append(request)
        self.in_flight += 1
        if self.first_admit_s is None:
            self.first_admit_s = self.clock.unix(request.start_perf)
        return request

    async def _send(self, request: StreamedRequest, on_chunk: OnChunk) -> None:
        try:
            await self.send(request, on_chunk)
        finally:
            self.in_flight -= 1
        # a server without running usage figures is counted a token per chunk while it streams,
        # and a loaded server packs several tokens into a chunk: the finished answer's own count
        # settles the difference, so the progress shows the tokens the records will hold
        self.tokens += request.output_tokens() - sum(request.chunk_tokens)
        self.done += 1
        self._progress()

    def _on_chunk(self, request: StreamedRequest, now_perf: float, tokens: int) -> None:
        request.chunk_live.append(self.in_flight)
        self.tokens += tokens
        self._progress()

    def _window_s(self, now_s: float) -> float:
        if self.plan.batching is Batching.STATIC:
            return 0.0 if self.first_admit_s is None else now_s - self.first_admit_s
        opened = self.state.opened_s
        return 0.0 if opened is None else now_s - opened

    def _progress(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = now
        self.emit(Progress(done=self.done, tokens=self.tokens,
                           window_s=self._window_s(self.clock.unix(now)),
                           window_target_s=self.plan.min_window_s))

    # ---- in flight ---------------------------------------------------------------------

    async def _run_inflight(self) -> None:
        ended = asyncio.Event()
        state = self.state  # the live view, for the quick keep-admitting check
        self.admitting = True
        self.last_admit_s: float | None = None

        def on_chunk(request: StreamedRequest, now_perf: float, tokens: int) -> None:
            if len(request.chunk_perf) == 1:
                state.first_token(self.clock.unix(now_perf))
            self._on_chunk(request, now_perf, tokens)
            if not self.admitting and self._closed():
                ended.set()

        async def worker() -> None:
            decide_s = self.clock.unix(time.perf_counter())
            while self.admitting:
                if not self._keep_admitting(decide_s):
                    self.admitting = False  # this slot, and every other, stays empty from now on
                    break
                request = self._next(batch_index=-1)
                self.last_admit_s = self.clock.unix(request.start_perf)
                state.admit(self.last_admit_s)
                await self._send(request, on_chunk)
                if request.first_perf is None:  # an empty answer: its end is its first token
                    end = request.end_perf or time.perf_counter()
                    request.first_perf = request.last_perf = end
                    state.first_token(self.clock.unix(end))
                assert request.last_perf is not None
                # the slot freed when the last token came, so that is when the next is decided
                decide_s = self.clock.unix(request.last_perf)
                state.finish(decide_s)
            if self._closed():
                ended.set()

        await run_until(ended, [worker() for _ in range(self.b)])

    def _closed(self) -> bool:
        """True once the window's close is known for good: admission has stopped, a request
        finished after the last admission (the close is the earliest such finish, as
        steady_window finds it), and every request still running has made a token after that
        finish, so none of them can finish before it. A finish is learnt only when its stream
        ends, a moment after its last token, hence that condition. Where the window opened, a
        request admitted but without a token yet is waited for too (one prefill): a request is
        recorded only once it has a token, and without its admission in the records the replay
        would close the window at an earlier finish than the one that ended the point."""
        if self.admitting or self.last_admit_s is None:
            return False
        finishes = [self.clock.unix(r.last_perf) for r in self.requests
                    if r.finished and r.last_perf is not None]
        after = [t for t in finishes if t > self.last_admit_s]
        if not after:
            return False
        close_s = min(after)
        opened = self.state.opened_s is not None
        for r in self.requests:
            if r.finished:
                continue
            if r.last_perf is None:
                if opened:
                    return False  # its admission must reach the records
                continue  # no token yet: its finish cannot come before close_s
            if self.clock.unix(r.last_perf) <= close_s:
                return False  # its last token so far may be its last
        return True

    def _keep_admitting(self, t_s: float) -> bool:
        """keep_admitting, with the window's opening checked against the replay of the records.

        The live state learns of a finish only when the stream closes, a moment after the last
        token, so it can open the window a little before the replay the runner does; before
        stopping, the opening is taken from the records themselves (as steady_window takes it),
        so the window reported always lasts min_window_s unless the cap stopped it.
        """
        plan = self.plan
        if self.state.keep_admitting(t_s, plan.min_window_s, plan.max_point_s):
            return True
        if self.first_admit_s is not None and t_s - self.first_admit_s >= plan.max_point_s:
            return False
        opened = replay_opened_s(self.records(), self.b)
        if opened is None or t_s - opened < plan.min_window_s:
            return True
        # Stopping now closes the window at the first finish after the last admission. A request
        # whose latest token came before the window reached its length may already have finished
        # unheard (its stream has not ended yet): stopping could then close the window short, so
        # admit once more instead, which only moves the close later.
        long_enough_s = opened + plan.min_window_s
        return any(not r.finished and r.last_perf is not None and self.clock.unix(r.last_perf) < long_enough_s
                   for r in self.requests)

    # ---- static batches ----------------------------------------------------------------

    async def _run_static(self) -> None:
        plan = self.plan
        batch_index = 0
        while True:
            if self.first_admit_s is not None:
                # the window so far: first batch start to the end of the batch just done
                decide_s = self.clock.unix(max(r.last_perf or r.end_perf or 0.0 for r in self.requests))
                if not keep_admitting(decide_s, plan.min_window_s, self.first_admit_s, plan.max_point_s,
                                      opened_s=self.first_admit_s):
                    break
            batch = [self._next(batch_index) for _ in range(self.b)]
            await run_until(None, [self._send(request, self._on_chunk) for request in batch])
            batch_index += 1

    # ---- the result --------------------------------------------------------------------

    @property
    def started(self) -> list[StreamedRequest]:
        """The requests that made at least one token: the point's records."""
        return [r for r in self.requests if r.first_perf is not None and r.prompt is not None]

    def records(self) -> list[RequestRecord]:
        records = []
        for request in self.started:
            assert request.prompt is not None and request.first_perf is not None
            assert request.last_perf is not None
            records.append(
                RequestRecord(
                    batch_size=self.b,
                    request_index=request.index,
                    batch_index=request.batch_index,
                    input_tokens=request.reported_input_tokens or request.prompt.input_tokens,
                    output_tokens=request.output_tokens(),
                    start_s=self.clock.unix(request.start_perf),
                    ttft_s=request.first_perf - request.start_perf,
                    e2e_s=request.last_perf - request.start_perf,
                    finished=request.finished,
                )
            )
        return records

    def timeline(self) -> StepTimeline:
        entries: list[tuple[float, int, int]] = []
        for request in self.requests:
            # computed as the records' times are (start_s + an offset), so that a request's last
            # chunk lands exactly on start_s + e2e_s, the window's edge, not a rounding away
            start_s = self.clock.unix(request.start_perf)
            for perf, tokens, live in zip(request.chunk_perf, request.tokens_per_chunk(),
                                          request.chunk_live, strict=False):
                entries.append((start_s + (perf - request.start_perf), tokens, live))
        entries.sort()
        return StepTimeline(
            end_s=tuple(e[0] for e in entries),
            tokens=tuple(e[1] for e in entries),
            live=tuple(e[2] for e in entries),
            slots=self.b,
        )

    def result(self, notes: list[str], concurrency_reached: int | None = None) -> tuple[EngineRun, bool]:
        """The EngineRun, and whether the steady-state window opened. `concurrency_reached`
        defaults to the most requests generating at once by their token timestamps."""
        records = self.records()
        if not records:
            raise ValueError("no request made a token")
        notes = list(notes)
        cut = sum(not r.finished for r in records)
        if cut:
            notes.append(
                f"{cut} requests still running when the window closed were cancelled; their "
                "tokens so far are counted"
            )
        window = steady_window(records, self.b, self.plan.batching)
        steady = window is not None
        reached = streaming_concurrency(records) if concurrency_reached is None else concurrency_reached
        if reached < self.b:
            notes.append(f"at most {reached} of the {self.b} requests sent at once were generating together")
        if window is None:
            # no steady state (b never ran at once): the span of the point, said so
            start = min(r.start_s for r in records)
            window = Window(start, max(r.start_s + r.e2e_s for r in records))
            notes.append("no steady state was reached: the window shown is the whole point")
        run = EngineRun(
            batch_size=self.b,
            window_start_s=window.start_s,
            window_end_s=window.end_s,
            records=tuple(records),
            concurrency_reached=reached,
            notes=tuple(notes),
            batching=self.plan.batching,
            timeline=self.timeline(),
        )
        return run, steady


def replay_opened_s(records: list[RequestRecord], batch_size: int) -> float | None:
    """When the steady-state window opened by the records so far (steady_window's rule, with
    admission still going on), or None if it has not."""
    events: list[tuple[float, int]] = []
    for r in records:
        events.append((r.start_s, 2))  # at one instant: first tokens, finishes, admissions
        events.append((r.start_s + r.ttft_s, 0))
        if r.finished:
            events.append((r.start_s + r.e2e_s, 1))
    state = SteadyState(batch_size)
    for t, kind in sorted(events):
        if kind == 2:
            state.admit(t)
        elif kind == 0:
            state.first_token(t)
        else:
            state.finish(t)
        if state.opened_s is not None:
            return state.opened_s
    return None


def streaming_concurrency(records: list[RequestRecord]) -> int:
    """Most requests generating at once: each from its first token to its last, both included.

    Something that queues what it cannot hold gives a queued request its first token only once it
    runs, so this is the concurrency reached, however many were sent.
    """
    events: list[tuple[float, int]] = []
    for r in records:
        events.append((r.start_s + r.ttft_s, 0))  # at one instant, starts before ends
        events.append((r.start_s + r.e2e_s, 1))
    level = peak = 0
    for _, kind in sorted(events):
        level += 1 if kind == 0 else -1
        peak = max(peak, level)
    return peak


async def run_until(ended: asyncio.Event | None, coroutines: list[Any]) -> None:
    """Run the coroutines until all end or `ended` is set; then cancel what still runs.

    At the first failure the rest are cancelled and it is raised (an out-of-memory before others).
    """
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    waiter = asyncio.ensure_future(ended.wait()) if ended is not None else None
    pending: set[asyncio.Future[Any]] = set(tasks)
    try:
        while pending:
            watch = pending | ({waiter} if waiter is not None else set())
            done, _ = await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
            pending -= done
            errors = [t.exception() for t in done if t is not waiter and not t.cancelled() and t.exception()]
            if errors:
                raise next((e for e in errors if isinstance(e, EngineOOM)), errors[0])
            if waiter is not None and waiter in done:
                break
    finally:
        for task in pending:
            task.cancel()
        if waiter is not None:
            waiter.cancel()
        await asyncio.gather(*pending, *([waiter] if waiter is not None else []), return_exceptions=True)
