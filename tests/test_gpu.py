"""Tests that need an NVIDIA GPU; run on a GPU machine with `pytest -m gpu`."""

from __future__ import annotations

import pytest

from carbontop.config import RunConfig
from carbontop.core.modelspec import PRESETS
from carbontop.core.records import Batching, PointPlan, PointStatus, Prompt
from carbontop.core.store import load_run
from carbontop.engines.base import EngineSpec
from carbontop.sweep.runner import SweepRunner

pytestmark = pytest.mark.gpu


def _engine(model: str, compile_: bool, graphs: bool):
    from carbontop.engines.hf import HFEngine

    spec = EngineSpec(engine="hf", model=model, model_config=dict(PRESETS[model]), model_path=None,
                      weights="dummy", dtype="fp32", device="cuda", compile=compile_,
                      cuda_graphs=graphs, seed=1)
    engine = HFEngine(spec, lambda note: None)
    engine.load()
    return engine


@pytest.mark.parametrize("model", ["tiny", "gpt2"])
def test_graph_decode_matches_eager(model: str) -> None:
    """The captured decode step must produce the same greedy tokens as the eager model."""
    import torch

    eager = _engine(model, compile_=False, graphs=False)
    graph = _engine(model, compile_=False, graphs=True)
    graph.model.load_state_dict(eager.model.state_dict())
    prompts = [Prompt(f"p{i}", 5 + 3 * i, 12) for i in range(4)]  # mixed lengths: left padding
    tokens = []
    for engine in (eager, graph):
        from carbontop.engines.hf import _PointState

        with torch.inference_mode():
            state = _PointState(engine, 4, 64)
            engine._warm_up(state, prompts)
            state.start_batch(engine._input_ids(prompts, 4))
            state.prefill()
            out = [state.next_tokens.clone()]
            for _ in range(10):
                state.advance()
                state.step()
                out.append(state.next_tokens.clone())
            tokens.append(torch.stack(out, dim=1).cpu())
    assert graph.decode_mode == "cuda-graph"
    assert torch.equal(tokens[0], tokens[1])


def test_padded_row_matches_unpadded_row() -> None:
    """Left padding must not change what a prompt generates (the mask and positions are right)."""
    import torch

    from carbontop.engines.hf import _PointState

    engine = _engine("tiny", compile_=False, graphs=True)
    short, long = Prompt("short", 6, 8), Prompt("long", 20, 8)
    with torch.inference_mode():
        results = []
        for batch in ([short, short], [short, long]):
            state = _PointState(engine, 2, 64)
            engine._warm_up(state, batch)
            state.start_batch(engine._input_ids(batch, 2))
            state.prefill()
            seq = [state.next_tokens.clone()]
            for _ in range(6):
                state.advance()
                state.step()
                seq.append(state.next_tokens.clone())
            results.append(torch.stack(seq, dim=1).cpu())
    assert torch.equal(results[0][0], results[1][0])


def test_tiny_sweep_on_gpu(tmp_path) -> None:
    cfg = RunConfig(model="tiny", device="cuda", dataset="synthetic", num_prompts=8,
                    max_input_len=32, max_output_len=32, batch_sizes="1,8", out=str(tmp_path / "run"))
    runner = SweepRunner(cfg)
    runner.prepare()
    runner.run()
    run = load_run(tmp_path / "run")
    assert [p.status for p in run.points] == ["ok", "ok"]
    for p in run.points:
        assert p.energy_source == "nvml-counter"
        assert p.energy_j > 0 and p.mfu > 0 and p.mbu > 0
    assert run.samples and all(row.gpu_index >= 0 for row in run.samples)
    assert runner.points[0].status is PointStatus.OK


def test_oom_is_reported_and_the_engine_recovers() -> None:
    from carbontop.engines.base import EngineOOM

    engine = _engine("tiny", compile_=False, graphs=True)
    with pytest.raises(EngineOOM) as info:
        # a KV cache of about 140 GB: fails at allocation, as a real boundary does
        engine.run_point(PointPlan(16384, Batching.INFLIGHT, (Prompt("x", 1024, 1024),),
                                   min_window_s=1.0, max_point_s=1.0))
    assert info.value.recovered
    run = engine.run_point(PointPlan(2, Batching.INFLIGHT, (Prompt("a", 8, 4), Prompt("b", 8, 4)),
                                     min_window_s=60.0, max_point_s=0.0))
    assert len(run.records) == 2


@pytest.mark.parametrize(("model", "compile_"), [("tiny", True), ("gpt2", False)])
def test_inflight_tokens_match_unbatched_generate(model: str, compile_: bool) -> None:
    """In-flight batching (slot cache, FlexAttention, compiled step in a CUDA graph) makes the
    same greedy tokens as the library's own generate run one prompt at a time (fp32)."""
    import random

    import torch

    engine = _engine(model, compile_=compile_, graphs=True)
    rng = random.Random(0)
    prompts = tuple(Prompt(f"q{i}", rng.randint(3, 200), rng.randint(2, 60)) for i in range(9))
    engine.token_log = {}
    run = engine.run_point(PointPlan(3, Batching.INFLIGHT, prompts, min_window_s=60.0, max_point_s=0.5))
    log, engine.token_log = engine.token_log, None
    assert "attention: flex" in run.notes
    assert "prefill: cuda-graph" in run.notes
    finished = [r for r in run.records if r.finished]
    assert len(finished) >= 3
    for r in finished:
        p = prompts[r.request_index % len(prompts)]
        ids = torch.tensor([engine.prompt_ids(p)], device="cuda")
        out = engine.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=p.output_tokens, min_new_tokens=p.output_tokens,
                                    pad_token_id=0)
        assert log[r.request_index] == out[0, ids.shape[1]:].tolist()
