"""The warm start of an in-flight point: requests part-way through, drawn as steady state has them."""

from __future__ import annotations

import random

import pytest

from carbontop.core.records import Batching, PointPlan, Prompt
from carbontop.core.warm_start import WARM_ID_MARK, warm_start


def test_requests_are_length_biased_and_part_way_through() -> None:
    prompts = (Prompt("short", 10, 10), Prompt("long", 20, 90))
    fill = warm_start(prompts, 2000, seed=1)
    assert len(fill) == 2000
    assert fill == warm_start(prompts, 2000, seed=1)  # the same for a seed
    assert fill != warm_start(prompts, 2000, seed=2)
    long_share = sum(p.prompt_id.startswith("long") for p in fill) / len(fill)
    assert long_share == pytest.approx(0.9, abs=0.03)  # 90 of the 100 output tokens
    for p in fill:
        base = prompts[0] if p.prompt_id.startswith("short") else prompts[1]
        age = p.input_tokens - base.input_tokens
        assert 0 <= age < base.output_tokens  # made some, still makes at least one
        assert p.input_tokens + p.output_tokens == base.input_tokens + base.output_tokens
        assert WARM_ID_MARK in p.prompt_id and p.text is None
    ages = [p.input_tokens - 20 for p in fill if p.prompt_id.startswith("long")]
    assert sum(ages) / len(ages) == pytest.approx(44.5, abs=3)  # uniform over 0..89
    assert len({p.prompt_id for p in fill}) == len(fill)


def test_the_plan_admits_the_warm_start_then_the_stream() -> None:
    prompts = (Prompt("a", 5, 5), Prompt("b", 6, 6))
    plan = PointPlan(2, Batching.INFLIGHT, prompts, 1.0, 10.0, warm_start=warm_start(prompts, 2, 0))
    first = [plan.request(k).prompt_id for k in range(6)]
    assert all(WARM_ID_MARK in i for i in first[:2]) and first[2:] == ["a", "b", "a", "b"]
    stream = plan.stream()
    assert [next(stream).prompt_id for _ in range(6)] == first


def test_slots_start_in_their_steady_mix() -> None:
    """The built-in engine on the CPU: without a warm start the mean context per slot climbs
    through the window (every slot starts fresh); with one it is level from the start."""
    pytest.importorskip("transformers")
    from carbontop.core.modelspec import PRESETS
    from carbontop.core.window import steady_window
    from carbontop.engines.base import EngineSpec
    from carbontop.engines.hf import HFEngine

    spec = EngineSpec(engine="hf", model="tiny", model_config=dict(PRESETS["tiny"]), model_path=None,
                      weights="dummy", dtype="fp32", device="cpu", compile=False, seed=3)
    eng = HFEngine(spec, lambda note: None)
    eng.load()
    rng = random.Random(5)
    prompts = tuple(Prompt(f"q{i}", rng.randint(3, 40), rng.randint(2, 120)) for i in range(40))
    b = 16
    ratio = {}
    for warm in (False, True):
        plan = PointPlan(b, Batching.INFLIGHT, prompts, min_window_s=2.0, max_point_s=20.0,
                         warm_start=warm_start(prompts, b, 0) if warm else ())
        run = eng.run_point(plan)
        tl, w = run.timeline, steady_window(run.records, b, Batching.INFLIGHT)
        assert w is not None and tl is not None and tl.kv_tokens_read is not None
        kv = [tl.kv_tokens_read[i] / tl.live[i] for i, d in enumerate(tl.decode)
              if d and w.start_s < tl.end_s[i] <= w.end_s]
        q = len(kv) // 4
        assert q >= 3, len(kv)
        ratio[warm] = (sum(kv[:q]) / q) / (sum(kv[-q:]) / q)
    assert ratio[False] < 0.8
    assert 0.8 <= ratio[True] <= 1.25
