"""The steady-state window on scripted request timelines, and the tokens inside it."""

from __future__ import annotations

import pytest

from carbontop.core.records import Batching, RequestRecord, StepTimeline
from carbontop.core.window import (
    SteadyState,
    Window,
    keep_admitting,
    max_in_flight,
    steady_window,
    tokens_between,
)


def req(i: int, start: float, first: float, end: float, out: int = 10, finished: bool = True,
        b: int = 2, batch_index: int = -1) -> RequestRecord:
    """A request admitted at `start`, first token at `first`, last token at `end` (absolute)."""
    return RequestRecord(b, i, batch_index, 5, out, start, first - start, end - start, finished)


def test_inflight_window_excludes_ramp_up_and_drain() -> None:
    # b=2. A and B admitted at 0; first tokens at 1 and 2 -> opens at 2 (both in flight, both
    # with a token). A ends at 5, C refills at 5 (token at 6); B ends at 8, D refills at 8 (token
    # at 9). Admission stops after D: the next finish, C at 10, closes the window. D drains to 14.
    records = [
        req(0, 0, 1, 5), req(1, 0, 2, 8), req(2, 5, 6, 10), req(3, 8, 9, 14),
    ]
    w = steady_window(records, 2, Batching.INFLIGHT)
    assert w == Window(2.0, 10.0)
    assert w.length_s == 8.0


def test_window_does_not_open_until_every_slot_has_a_token() -> None:
    # b=3 but only two requests ever hold slots at once: no steady state at b=3
    records = [req(0, 0, 1, 4, b=3), req(1, 0, 1, 6, b=3), req(2, 4, 5, 9, b=3)]
    assert steady_window(records, 3, Batching.INFLIGHT) is None


def test_refill_between_steps_keeps_the_window_open() -> None:
    # b=1: a single slot, refilled each time. Opens at the first token (1), closes at the finish
    # after the last admission (request 2 ends at 9).
    records = [req(0, 0, 1, 3, b=1), req(1, 3, 4, 6, b=1), req(2, 6, 7, 9, b=1)]
    assert steady_window(records, 1, Batching.INFLIGHT) == Window(1.0, 9.0)


def test_unfinished_requests_do_not_close_the_window() -> None:
    # b=2. A ends at 3 -> C; C ends at 6 -> D, the last admission. D's last token so far is at
    # 7.5 but the engine dropped it at the close (finished=False): the close is B's finish at 8.
    records = [req(0, 0, 1, 3), req(1, 0, 1, 8), req(2, 3, 4, 6),
               req(3, 6, 7, 7.5, finished=False)]
    assert steady_window(records, 2, Batching.INFLIGHT) == Window(1.0, 8.0)


def test_static_window_spans_first_start_to_last_end() -> None:
    records = [req(0, 0, 1, 5, batch_index=0), req(1, 0, 1, 9, batch_index=0),
               req(2, 9, 10, 12, batch_index=1), req(3, 9, 10, 11, batch_index=1)]
    assert steady_window(records, 2, Batching.STATIC) == Window(0.0, 12.0)


def test_engine_side_state_agrees_with_the_replay() -> None:
    # the same timeline as the first test, driven the way an engine drives it
    s = SteadyState(2)
    s.admit(0)
    s.admit(0)
    s.first_token(1)
    assert s.opened_s is None
    s.first_token(2)
    assert s.opened_s == 2
    s.finish(5)
    assert s.keep_admitting(5, min_window_s=100, max_point_s=100)
    s.admit(5)
    s.first_token(6)
    s.finish(8)
    s.admit(8)
    s.first_token(9)
    s.stop_admitting(9.5)
    assert not s.done
    s.finish(10)
    assert s.done and s.window() == Window(2.0, 10.0)


def test_stop_decided_at_a_finish_closes_at_that_finish() -> None:
    # the engine frees a slot at 5, asks keep_admitting, hears no: the window closed at 5
    s = SteadyState(2)
    s.admit(0)
    s.admit(0)
    s.first_token(1)
    s.first_token(1)
    s.finish(5)
    assert not s.keep_admitting(5, min_window_s=4, max_point_s=100)
    s.stop_admitting(5.001)
    assert s.window() == Window(1.0, 5.0)


def test_closing_before_opening_gives_no_window() -> None:
    s = SteadyState(2)
    s.admit(0)
    s.admit(0)
    s.first_token(1)
    s.finish(2)  # one ended before the other produced a token
    s.stop_admitting(2)
    s.first_token(3)
    s.finish(4)
    assert s.done and s.window() is None and s.closed_s is None


def test_keep_admitting_rule() -> None:
    # not open yet: keep going until the cap
    assert keep_admitting(10, 20, 0, 90, opened_s=None)
    assert not keep_admitting(90, 20, 0, 90, opened_s=None)
    # open: stop once the window has lasted min_window_s
    assert keep_admitting(25, 20, 0, 90, opened_s=6)
    assert not keep_admitting(26, 20, 0, 90, opened_s=6)
    # the cap wins even while the window is short
    assert not keep_admitting(95, 20, 0, 90, opened_s=80)


def test_more_than_b_in_flight_is_an_engine_bug() -> None:
    s = SteadyState(1)
    s.admit(0)
    with pytest.raises(RuntimeError):
        s.admit(0)


def test_tokens_from_the_timeline_count_steps_ready_inside() -> None:
    tl = StepTimeline(end_s=(1.0, 2.0, 3.0, 4.0), tokens=(2, 2, 1, 2), live=(2, 2, 1, 2), slots=2)
    # (1, 3]: the step ready at 1 did its work before the window
    assert tokens_between(1.0, 3.0, tl, []) == 3.0
    assert tokens_between(0.0, 4.0, tl, []) == 7.0


def test_tokens_spread_evenly_without_a_timeline() -> None:
    # first token at 2, last (11th) at 12: 10 tokens spread over (2, 12], one per second
    r = req(0, 0, 2, 12, out=11)
    assert tokens_between(0, 12, None, [r]) == pytest.approx(11)
    assert tokens_between(2, 7, None, [r]) == pytest.approx(5)  # first token excluded (at t0)
    assert tokens_between(1, 7, None, [r]) == pytest.approx(6)  # first token + 5
    assert tokens_between(10, 20, None, [r]) == pytest.approx(2)
    # a one-token request counts only where its token lands
    one = req(1, 0, 3, 3, out=1)
    assert tokens_between(0, 2, None, [one]) == 0
    assert tokens_between(2, 3, None, [one]) == 1


def test_max_in_flight() -> None:
    records = [req(0, 0, 1, 5), req(1, 0, 2, 8), req(2, 5, 6, 10), req(3, 8, 9, 14)]
    assert max_in_flight(records) == 2
    assert max_in_flight([]) == 0
