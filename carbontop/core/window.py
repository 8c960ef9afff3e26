"""The steady-state window of a sweep point, and the tokens made inside it.

A point measures one concurrency level b. Its window opens at the first moment when b requests are
in flight and every one of them has produced a token, and closes at the first request that
finishes after admission stopped, since from then on the queue can no longer keep b in flight.
Ramp-up (slots filling, first prefills) and drain (the last requests finishing with fewer than b
in flight) fall outside it. This is the steady state of the ML.ENERGY benchmark (Chung et al.,
"ML.ENERGY Benchmark", arXiv:2505.06371). Static batches have no steady state of
their own: their window spans the first batch's start to the last batch's end.

Engines drive `SteadyState` as they run and stop admitting once `keep_admitting` says so; the
runner replays the same rule over the engine's records with `steady_window`, so both see one
window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from carbontop.core.records import Batching, RequestRecord, StepTimeline


@dataclass(frozen=True)
class Window:
    start_s: float  # Unix time
    end_s: float

    @property
    def length_s(self) -> float:
        return self.end_s - self.start_s


class SteadyState:
    """Tracks slot occupancy as an engine runs and finds the window's two ends.

    Call, in the order things happen: `admit` when a request takes a slot, `first_token` when it
    produces its first token, `finish` when its last token is ready, `stop_admitting` once the
    engine admits no more. Events at one instant go first tokens, then finishes, then admissions,
    the order an engine step produces them in.
    """

    def __init__(self, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size
        self.in_flight = 0
        self.waiting_first = 0  # admitted, no token yet
        self.first_admit_s: float | None = None
        self.admitting = True
        self._opened_s: float | None = None
        self._closed_s: float | None = None
        self._finish_since_admit_s: float | None = None  # first finish after the latest admission

    @property
    def opened_s(self) -> float | None:
        return self._opened_s

    @property
    def closed_s(self) -> float | None:
        """None until closed, and None for good where it closed before it ever opened."""
        return self._closed_s if self._opened_s is not None else None

    @property
    def done(self) -> bool:
        """True once the window has closed (or can no longer open): the point may end."""
        return self._closed_s is not None

    def window(self) -> Window | None:
        if self._opened_s is None or self._closed_s is None:
            return None
        return Window(self._opened_s, self._closed_s)

    def admit(self, t_s: float) -> None:
        if not self.admitting:
            raise RuntimeError("admit() after stop_admitting()")
        if self.in_flight >= self.batch_size:
            raise RuntimeError(f"more than {self.batch_size} requests in flight")
        if self.first_admit_s is None:
            self.first_admit_s = t_s
        self.in_flight += 1
        self.waiting_first += 1
        self._finish_since_admit_s = None

    def first_token(self, t_s: float) -> None:
        if self.waiting_first < 1:
            raise RuntimeError("first_token() for no request waiting for one")
        self.waiting_first -= 1
        if (self._opened_s is None and self._closed_s is None
                and self.in_flight == self.batch_size and self.waiting_first == 0):
            self._opened_s = t_s

    def finish(self, t_s: float) -> None:
        if self.in_flight - self.waiting_first < 1:
            raise RuntimeError("finish() for no request that has produced a token")
        self.in_flight -= 1
        if self._finish_since_admit_s is None:
            self._finish_since_admit_s = t_s
        if not self.admitting and self._closed_s is None:
            self._closed_s = t_s

    def stop_admitting(self, t_s: float) -> None:
        """No request will be admitted from now on. A slot freed since the latest admission will
        never be refilled, so the window closed at that finish; otherwise it closes at the next."""
        del t_s  # the close is a finish time, never the moment the decision was taken
        if not self.admitting:
            return
        self.admitting = False
        if self._finish_since_admit_s is not None and self._closed_s is None:
            self._closed_s = self._finish_since_admit_s

    def keep_admitting(self, now_s: float, min_window_s: float, max_point_s: float) -> bool:
        """`keep_admitting` with this state's own first admission and opening."""
        return keep_admitting(now_s, min_window_s, self.first_admit_s, max_point_s,
                              opened_s=self._opened_s)


def keep_admitting(now_s: float, min_window_s: float, first_admit_s: float | None,
                   max_point_s: float, *, opened_s: float | None) -> bool:
    """False once the window has been open for min_window_s, or once max_point_s have passed
    since the first admission (the cap that keeps one slow point from eating the sweep).
    Static batches pass opened_s = first_admit_s: their window opens with the first batch."""
    if opened_s is not None and now_s - opened_s >= min_window_s:
        return False
    return not (first_admit_s is not None and now_s - first_admit_s >= max_point_s)


# at one instant: first tokens, then finishes, then admissions (see SteadyState)
_FIRST, _FINISH, _ADMIT = 0, 1, 2


def steady_window(records: Sequence[RequestRecord], batch_size: int,
                  batching: Batching) -> Window | None:
    """The point's window from its records alone; None where no steady state was reached."""
    if not records:
        return None
    if batching is Batching.STATIC:
        start = min(r.start_s for r in records)
        end = max(r.start_s + r.e2e_s for r in records)
        return Window(start, end) if end > start else None
    events: list[tuple[float, int]] = []
    for r in records:
        events.append((r.start_s, _ADMIT))
        events.append((r.start_s + r.ttft_s, _FIRST))
        if r.finished:
            events.append((r.start_s + r.e2e_s, _FINISH))
    events.sort()
    last_admit = max(i for i, (_t, kind) in enumerate(events) if kind == _ADMIT)
    state = SteadyState(batch_size)
    for i, (t, kind) in enumerate(events):
        if kind == _ADMIT:
            state.admit(t)
        elif kind == _FIRST:
            state.first_token(t)
        else:
            state.finish(t)
        if i == last_admit:
            state.stop_admitting(t)
    return state.window()


def tokens_between(t0_s: float, t1_s: float, timeline: StepTimeline | None,
                   records: Sequence[RequestRecord]) -> float:
    """Output tokens made in (t0_s, t1_s].

    From the timeline where there is one: the tokens of every step whose tokens were ready in the
    interval (a step ready exactly at t0_s did its work before it). Without one, each request's
    first token counts at its time to first token and its other tokens are spread evenly over
    (first token, last token]: the even spread is an estimate, exact only at steady decode speed.
    """
    if timeline is not None:
        return float(sum(n for t, n in zip(timeline.end_s, timeline.tokens, strict=True)
                         if t0_s < t <= t1_s))
    total = 0.0
    for r in records:
        if r.output_tokens < 1:
            continue
        first = r.start_s + r.ttft_s
        last = r.start_s + r.e2e_s
        rest = r.output_tokens - 1
        if t0_s < first <= t1_s:
            total += 1
        if rest == 0:
            continue
        if last <= first:  # every token arrived at once
            total += rest if t0_s < first <= t1_s else 0
            continue
        overlap = min(last, t1_s) - max(first, t0_s)
        if overlap > 0:
            total += rest * overlap / (last - first)
    return total


def max_in_flight(records: Sequence[RequestRecord]) -> int:
    """The most requests that held a slot at once (admission to last token)."""
    events = sorted([(r.start_s, 1) for r in records]
                    + [(r.start_s + r.e2e_s, -1) for r in records])
    most = now = 0
    for _t, step in events:  # at one instant a finish (-1) sorts before an admission
        now += step
        most = max(most, now)
    return most
