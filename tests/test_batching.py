"""In-flight batching keeps its slots busy on a varied-length workload; static batches do not.

The engine here is a scheduling test double (tests/engines_for_tests.py: Scheduler) that admits,
steps and finishes requests as a real engine does, without a model; the window and the
occupancy come from the same code the runner uses.
"""

from __future__ import annotations

from engines_for_tests import Scheduler

from carbontop.core import metrics
from carbontop.core.records import Batching, PointPlan, Prompt
from carbontop.core.window import steady_window, tokens_between

# output lengths that vary as ShareGPT's do: a short request often shares a batch with a long one
PROMPTS = tuple(Prompt(f"p{i}", 8, n) for i, n in enumerate((3, 40, 5, 30, 8, 50, 2, 25)))


def run(batching: Batching):
    engine = Scheduler(None, lambda *_: None)
    plan = PointPlan(2, batching, PROMPTS, min_window_s=0.4, max_point_s=5.0)
    return engine.run_point(plan)


def test_inflight_keeps_occupancy_while_static_does_not() -> None:
    inflight, static = run(Batching.INFLIGHT), run(Batching.STATIC)
    occupancy = {}
    for r in (inflight, static):
        window = steady_window(r.records, 2, r.batching)
        # the engine's window and the runner's replay of its records agree
        assert (window.start_s, window.end_s) == (r.window_start_s, r.window_end_s)
        assert window.length_s >= 0.4
        occupancy[r.batching] = metrics.slot_occupancy(r.records, 2, window, r.timeline)
        assert tokens_between(window.start_s, window.end_s, r.timeline, r.records) > 0
    assert occupancy[Batching.INFLIGHT] >= 0.95
    assert occupancy[Batching.STATIC] < 0.8
    # static: (output - 1) useful decode steps per request over (longest - 1) x 2 per batch, the
    # figure the records alone give, agrees with the engine's own steps
    by_records = metrics.slot_occupancy(static.records, 2, None)
    assert abs(by_records - occupancy[Batching.STATIC]) < 1e-9


def test_inflight_drops_what_runs_past_the_window_and_cycles_the_stream() -> None:
    r = run(Batching.INFLIGHT)
    assert len(r.records) > len(PROMPTS)  # the eight prompts were cycled
    unfinished = [x for x in r.records if not x.finished]
    assert len(unfinished) <= 1  # b = 2: the other one, unless both ended in the closing step
    assert max(x.start_s + x.e2e_s for x in r.records if x.finished) == r.window_end_s
