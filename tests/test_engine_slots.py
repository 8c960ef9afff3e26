"""The built-in engine's in-flight batching on the CPU (tiny preset, fp32)."""

from __future__ import annotations

import random

import pytest

from carbontop.core.modelspec import PRESETS
from carbontop.core.records import Batching, PointPlan, Prompt
from carbontop.core.window import steady_window
from carbontop.engines.base import EngineSpec

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def engine():
    from carbontop.engines.hf import HFEngine

    spec = EngineSpec(engine="hf", model="tiny", model_config=dict(PRESETS["tiny"]), model_path=None,
                      weights="dummy", dtype="fp32", device="cpu", compile=False, seed=3)
    eng = HFEngine(spec, lambda note: None)
    eng.load()
    return eng


def _prompts(n: int, seed: int = 0) -> tuple[Prompt, ...]:
    rng = random.Random(seed)
    return tuple(Prompt(f"q{i}", rng.randint(3, 40), rng.randint(2, 30)) for i in range(n))


def _reference(engine, prompt: Prompt) -> list[int]:
    """Greedy tokens from the library's own generate, one prompt at a time, no batching."""
    import torch

    ids = torch.tensor([engine.prompt_ids(prompt)])
    out = engine.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=prompt.output_tokens,
                                min_new_tokens=prompt.output_tokens, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def test_inflight_tokens_match_unbatched_generate(engine) -> None:
    prompts = _prompts(7)
    engine.token_log = {}
    try:
        run = engine.run_point(PointPlan(3, Batching.INFLIGHT, prompts, min_window_s=60.0,
                                         max_point_s=0.0))
    finally:
        log, engine.token_log = engine.token_log, None
    finished = [r for r in run.records if r.finished]
    assert finished
    for r in finished:
        prompt = prompts[r.request_index % len(prompts)]
        assert log[r.request_index] == _reference(engine, prompt), r.request_index


def test_inflight_keeps_slots_busy_where_static_does_not(engine) -> None:
    """Varied lengths: in-flight b=2 keeps >= 95% of decode slot-steps useful; static does not."""
    prompts = _prompts(30, seed=1)
    occupancy = {}
    for batching in (Batching.INFLIGHT, Batching.STATIC):
        run = engine.run_point(PointPlan(2, batching, prompts, min_window_s=1.0, max_point_s=20.0))
        tl = run.timeline
        window = steady_window(run.records, 2, batching)
        assert window is not None
        steps = [i for i, d in enumerate(tl.decode) if d and window.start_s < tl.end_s[i] <= window.end_s]
        occupancy[batching] = sum(tl.live[i] for i in steps) / (2 * len(steps))
    assert occupancy[Batching.INFLIGHT] >= 0.95
    assert occupancy[Batching.STATIC] < 0.9


def test_window_rule_agrees_with_engine(engine) -> None:
    prompts = _prompts(20, seed=2)
    run = engine.run_point(PointPlan(4, Batching.INFLIGHT, prompts, min_window_s=0.5, max_point_s=20.0))
    window = steady_window(run.records, 4, Batching.INFLIGHT)
    assert window is not None
    assert (run.window_start_s, run.window_end_s) == (window.start_s, window.end_s)
    # the engine stops at the window's close: no request finishes after it
    assert all(r.start_s + r.e2e_s <= window.end_s for r in run.records if r.finished)
    # requests still in flight at the close are kept, marked unfinished, with the tokens they made
    # (b less those that finished in the step that closed the window: two can end in one step)
    unfinished = [r for r in run.records if not r.finished]
    closing = [r for r in run.records if r.finished and r.start_s + r.e2e_s == window.end_s]
    assert unfinished and len(unfinished) + len(closing) == 4
    assert all(0 < r.output_tokens for r in unfinished)


def test_a_failed_point_leaves_nothing_of_itself_behind(engine, monkeypatch) -> None:
    """The slot cache a point allocated is released when the point fails part-way (an OOM in a
    prefill, say), so the same process can measure the next batch size."""
    from carbontop.engines import hf_slots

    def fail(*_args, **_kwargs):
        assert hf_slots._ACTIVE is not None  # the cache exists by now
        raise RuntimeError("failed in warm-up")

    runner = hf_slots.SlotRunner(engine)
    monkeypatch.setattr(runner, "_warm_prefill_buckets", fail)
    with pytest.raises(RuntimeError, match="failed in warm-up"):
        runner.run(PointPlan(2, Batching.INFLIGHT, _prompts(3), min_window_s=1.0, max_point_s=1.0),
                   lambda *a: None, lambda *a: None)
    assert hf_slots._ACTIVE is None
    assert runner._prefill_graphs is None


def test_cpu_points_say_how_they_prefilled(engine) -> None:
    run = engine.run_point(PointPlan(2, Batching.INFLIGHT, _prompts(4), min_window_s=60.0,
                                     max_point_s=0.0))
    assert "prefill: eager" in run.notes  # CUDA graphs are for GPUs
