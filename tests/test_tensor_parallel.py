"""Tensor parallelism for the built-in engine: ranks under the engine host (engines/ranks.py),
the model sharded by transformers' plan (engines/hf_ranks.py), and `--tp` as the sweep resolves it.

On the CPU the ranks talk over gloo; the two-GPU runs (NCCL) are marked gpu and need two GPUs.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time

import pytest

from carbontop.config import RunConfig
from carbontop.core.modelspec import PRESETS, resolve_model
from carbontop.core.records import Batching, PointPlan, PointStatus, Prompt
from carbontop.engines.base import EngineSpec
from carbontop.errors import ConfigError
from carbontop.sweep.runner import tensor_parallel_ranks

SPEC = EngineSpec(engine="hf", model="tiny", model_config=dict(PRESETS["tiny"]), model_path=None,
                  weights="dummy", dtype="fp32", device="cpu", compile=False, seed=5)


def _prompts(n: int, min_out: int = 2, seed: int = 0) -> tuple[Prompt, ...]:
    rng = random.Random(seed)
    return tuple(Prompt(f"q{i}", rng.randint(3, 40), rng.randint(min_out, 40)) for i in range(n))


def _host_point(spec: EngineSpec, plan: PointPlan):
    """(engine info, outcome, seconds the point took) from a real engine host."""
    from carbontop.engines.host import EngineHost

    host = EngineHost(spec, stall_timeout_s=60.0)
    try:
        info = host.start(lambda _m: None, lambda: False)
        started = time.monotonic()
        outcome = host.run_point(plan, lambda _m: None, lambda: False)
        return info, outcome, time.monotonic() - started
    finally:
        host.stop()


def _host_points(spec: EngineSpec, plans: list[PointPlan]):
    """(engine info, the outcomes) of several points in one real engine host."""
    from carbontop.engines.host import EngineHost

    host = EngineHost(spec, stall_timeout_s=60.0)
    try:
        info = host.start(lambda _m: None, lambda: False)
        return info, [host.run_point(plan, lambda _m: None, lambda: False) for plan in plans]
    finally:
        host.stop()


def _tokens(outcome) -> dict[int, list[int]]:
    note = next(n for n in outcome.run.notes if n.startswith("tokens "))
    return {int(k): v for k, v in json.loads(note.removeprefix("tokens ")).items()}


def test_two_ranks_on_gloo_decode_the_one_rank_tokens() -> None:
    """The tiny model over two ranks (rank 0 under the host, rank 1 following it) makes the very
    greedy tokens one rank makes, request by request, in flight and in static batches."""
    pytest.importorskip("transformers")
    from carbontop.engines.hf import HFEngine

    # outputs of 16 tokens or more; a cap of 0 s ends the in-flight point at its first finish
    # (every request has made 16 tokens by then) and the static point after its first batch
    prompts = _prompts(7, min_out=16)
    plans = [PointPlan(3, batching, prompts, min_window_s=60.0, max_point_s=0.0)
             for batching in (Batching.INFLIGHT, Batching.STATIC)]
    one_rank = HFEngine(SPEC, lambda _note: None)
    one_rank.load()
    expected = []
    for plan in plans:
        one_rank.token_log = {}
        one_rank.run_point(plan)
        expected.append(one_rank.token_log)
    assert len(expected[0]) >= 3 and all(len(tokens) >= 16 for tokens in expected[0].values())
    assert sorted(expected[1]) == [0, 1, 2]
    assert [len(t) for t in expected[1].values()] == [p.output_tokens for p in prompts[:3]]

    info, outcomes = _host_points(
        dataclasses.replace(SPEC, engine="engines_for_tests:TokensInNotes", tp=2), plans)
    assert info["tp"] == 2 and info["tp_backend"] == "gloo"
    assert all(o.status is PointStatus.OK for o in outcomes), [o.message for o in outcomes]
    assert [_tokens(o) for o in outcomes] == expected


@pytest.mark.parametrize("rank", [1, 0])
def test_a_rank_failing_mid_point_ends_the_point_at_once(monkeypatch, rank) -> None:
    """A rank runs out of memory part-way through the measured stream while the other waits for
    it inside a collective: the point ends as that rank's out-of-memory failure, needing a fresh
    engine, long before its window (30 s) or the watchdog (60 s) could have ended it. Rank 1's
    failure reaches rank 0's watcher thread; rank 0's own is its main thread's."""
    pytest.importorskip("transformers")
    monkeypatch.setenv("RANK_FAILURE", "oom")
    monkeypatch.setenv("FAILING_RANK", str(rank))
    plan = PointPlan(2, Batching.INFLIGHT, _prompts(6), min_window_s=30.0, max_point_s=60.0)
    _, outcome, took_s = _host_point(
        dataclasses.replace(SPEC, engine="engines_for_tests:RankFailsMidPoint", tp=2), plan)
    assert outcome.status is PointStatus.OOM
    assert outcome.message.startswith(f"rank {rank}: RuntimeError: CUDA out of memory")
    assert outcome.needs_restart
    assert took_s < 15.0


# ---- --tp as the sweep resolves it ---------------------------------------------------------


@pytest.mark.parametrize(("settings", "device", "gpus", "ranks"), [
    ({}, "cuda", [0, 1], 2),  # one rank per GPU named
    ({}, "cuda", [3], 1),
    ({"tp": 2}, "cuda", [], 2),  # the runner then takes GPUs 0 and 1
    ({}, "cpu", [], 1),
    ({"tp": 2}, "cpu", [], 2),  # ranks on the CPU, over gloo
    ({"engine": "trtllm"}, "cuda", [0, 1], 2),
    ({"engine": "openai", "url": "http://x"}, "cuda", [0, 1], 1),
    # an engine class of one's own is given the GPUs, and runs as one rank unless told
    ({"engine": "engines_for_tests:OOMAbove"}, "cuda", [0, 1], 1),
])
def test_tp_defaults_to_the_gpus_named(settings, device, gpus, ranks) -> None:
    cfg = RunConfig(**settings)
    assert tensor_parallel_ranks(cfg, device, gpus, resolve_model("tiny")) == ranks


@pytest.mark.parametrize(("settings", "gpus", "words"), [
    ({"tp": 2}, [0], "--tp 2 runs one rank per GPU, but --gpus names 1"),
    ({"tp": 3}, [0, 1, 2], "has 8 attention heads and 4 key-value heads; --tp 3 must divide both"),
    ({"tp": 8}, list(range(8)), "--tp 8 must divide both"),
    ({"tp": 2, "quant": "int8-wo"}, [0, 1], "--quant runs on one rank"),
    ({"tp": 4, "engine": "trtllm"}, [0, 1], "TensorRT-LLM shards over every GPU named"),
])
def test_a_tp_that_cannot_run_is_one_sentence(settings, gpus, words) -> None:
    with pytest.raises(ConfigError, match=words.replace("-", r"\-")) as err:
        tensor_parallel_ranks(RunConfig(**settings), "cuda", gpus, resolve_model("tiny"))
    assert str(err.value).count(". ") == 0 and str(err.value).endswith(".")


def test_tp_below_one_is_refused_by_the_config() -> None:
    from carbontop.config import validate

    with pytest.raises(ConfigError, match="1 or more"):
        validate(RunConfig(tp=0))


def test_the_cli_answers_a_bad_tp_in_one_sentence(tmp_path) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "carbontop", "sweep", "--tp", "0", "--out", str(tmp_path / "r")],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(root)), cwd=root,
        timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "carbontop: --tp is a number of ranks: 1 or more."


# ---- on two GPUs -----------------------------------------------------------------------------


def _two_gpus() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available() and torch.cuda.device_count() >= 2


@pytest.mark.gpu
def test_two_ranks_on_nccl_decode_the_one_gpu_tokens() -> None:
    if not _two_gpus():
        pytest.skip("needs two GPUs")
    spec = dataclasses.replace(SPEC, device="cuda", gpus=(0,))
    plan = PointPlan(3, Batching.INFLIGHT, _prompts(7, min_out=16), min_window_s=60.0, max_point_s=0.0)
    _, reference, _ = _host_point(dataclasses.replace(spec, engine="engines_for_tests:TokensInNotes"), plan)
    _, outcome, _ = _host_point(
        dataclasses.replace(spec, engine="engines_for_tests:TokensInNotes", gpus=(0, 1), tp=2), plan)
    assert reference.status is PointStatus.OK and outcome.status is PointStatus.OK, outcome.message
    assert _tokens(outcome) == _tokens(reference)
    assert "decode: cuda-graph" in outcome.run.notes


@pytest.mark.gpu
def test_a_two_gpu_sweep_measures_both_gpus(tmp_path) -> None:
    if not _two_gpus():
        pytest.skip("needs two GPUs")
    from carbontop.core.store import load_run
    from carbontop.sweep.runner import SweepRunner

    cfg = RunConfig(model="tiny", device="cuda", gpus=[0, 1], dataset="synthetic", num_prompts=8,
                    max_input_len=32, max_output_len=32, batch_sizes="1,8", out=str(tmp_path / "run"))
    runner = SweepRunner(cfg)
    runner.prepare()
    runner.run()
    run = load_run(tmp_path / "run")
    assert run.meta.environment.gpu_indices == (0, 1)
    assert [p.status for p in run.points] == ["ok", "ok"]
    assert {row.gpu_index for row in run.samples} == {0, 1}
    for p in runner.points:
        assert p.energy_j > 0 and p.mfu > 0 and p.mbu > 0


# ---- the figures of two GPUs, by hand --------------------------------------------------------


def test_two_gpus_figures_by_hand() -> None:
    """Two H100s in use: energy, power and peak memory are the two GPUs' sums with the split by
    GPU kept; MFU and MBU divide by both GPUs' peaks; embodied carbon counts both cards."""
    import dataclasses

    from carbontop.core import metrics
    from carbontop.core.hardware import lookup_gpu, peak_bandwidth_bytes_s, peak_flops
    from carbontop.core.modelspec import resolve_model
    from carbontop.core.point import PointEnergy, RunConditions, parse_per_gpu, point_figures
    from carbontop.core.records import EnergyReading, EngineRun, RequestRecord, StepTimeline
    from carbontop.core.window import Window

    h100 = lookup_gpu("NVIDIA H100 80GB HBM3")
    model = resolve_model("llama2-7b")
    # b = 2, one decode step a second from 1 s to 20 s, 2 tokens a step; W = (2, 12]: 20 tokens
    timeline = StepTimeline(end_s=tuple(float(t) for t in range(1, 21)), tokens=(2,) * 20,
                            live=(2,) * 20, slots=2, kv_tokens_read=(100,) * 20,
                            decode=(False,) + (True,) * 19)
    records = (RequestRecord(2, 0, -1, 10, 12, 0.0, 1.0, 11.0),
               RequestRecord(2, 1, -1, 10, 20, 0.0, 1.0, 19.0))
    run = EngineRun(2, 2.0, 12.0, records, batching=Batching.INFLIGHT, timeline=timeline)
    window = Window(2.0, 12.0)
    two = RunConditions(model=model, dtype="bf16", gpu_specs=(h100, h100), n_gpus=2,
                        peak_flops_per_gpu=peak_flops(h100, "bf16"),
                        peak_bw_bytes_s=peak_bandwidth_bytes_s(h100), loaded_idle_power_w=None,
                        lifetime_years=5.0)
    # GPU 0 drew 600 J over W, GPU 1 400 J; their peaks 30 GB and 40 GB
    energy = PointEnergy(EnergyReading(1000.0, "nvml-counter", 990.0, per_gpu_j={0: 600.0, 1: 400.0}),
                         1000.0 / 3.6e6 * 400, 400.0, (), peak_mem_bytes=70 * 10**9)
    p = point_figures(run, window, energy, two)
    assert p.output_tokens == 20 and p.duration_s == 10.0
    assert p.energy_j == 1000.0 and p.j_per_token == 50.0 and p.avg_power_w == 100.0
    assert p.energy_per_gpu_j == "0=600;1=400"
    assert parse_per_gpu(p.energy_per_gpu_j) == {0: 600.0, 1: 400.0}
    assert p.peak_mem_gb == 70.0
    # the same useful FLOPs and bytes, over two GPUs' peaks (989 TFLOP/s and 3.35 TB/s each, the datasheet's)
    flops = metrics.model_flops(records, model, window)
    assert p.mfu == pytest.approx(flops / (10.0 * 2 * 989e12))
    traffic = metrics.decode_traffic(records, model, "bf16", window, timeline)
    assert traffic.decode_time_s == 10.0
    assert p.mbu == pytest.approx(traffic.bytes_read / (10.0 * 2 * 3.35e12))
    one = point_figures(run, window, energy, dataclasses.replace(two, gpu_specs=(h100,), n_gpus=1))
    assert p.mfu == pytest.approx(one.mfu / 2) and p.mbu == pytest.approx(one.mbu / 2)
    # embodied: 164 kgCO2e a card, two cards, over 10 s of a 5-year life, per 20 tokens
    per_token = 2 * 164_000 * 10.0 / (5 * 365.25 * 86400) / 20
    assert p.embodied_gco2e_per_token == pytest.approx(per_token)
    assert one.embodied_gco2e_per_token == pytest.approx(per_token / 2)


def test_conditions_count_the_peaks_of_every_gpu_in_use() -> None:
    """MFU and MBU divide by n_gpus x the peak the conditions give: the sum of every GPU's own
    peak, the same cards or not; a GPU not in the table leaves both empty."""
    from carbontop.core.hardware import lookup_gpu, peak_bandwidth_bytes_s, peak_flops
    from carbontop.sweep.runner import SweepRunner

    h100 = lookup_gpu("NVIDIA H100 80GB HBM3")
    a100 = lookup_gpu("NVIDIA A100-SXM4-80GB")
    runner = SweepRunner(RunConfig())
    runner.model, runner.dtype, runner.n_gpus = resolve_model("tiny"), "bf16", 2
    runner.loaded_idle_power_w = None
    runner.gpu_specs = [h100, a100]
    cond = runner.conditions()
    assert cond.n_gpus * cond.peak_flops_per_gpu == pytest.approx(
        peak_flops(h100, "bf16") + peak_flops(a100, "bf16"))
    assert cond.n_gpus * cond.peak_bw_bytes_s == pytest.approx(
        peak_bandwidth_bytes_s(h100) + peak_bandwidth_bytes_s(a100))
    assert cond.gpu_specs == (h100, a100)
    runner.gpu_specs = [h100, None]
    cond = runner.conditions()
    assert cond.model is None and cond.peak_flops_per_gpu is None and cond.peak_bw_bytes_s is None


def test_repeats_average_each_gpus_energy_as_they_average_the_sum() -> None:
    from carbontop.core.records import PointResult
    from carbontop.core.repeats import combine_repeats

    first = PointResult(8, PointStatus.OK, energy_j=1000.0, energy_per_gpu_j="0=600;1=400", repeat=1)
    second = PointResult(8, PointStatus.OK, energy_j=800.0, energy_per_gpu_j="0=500;1=300", repeat=2)
    both = combine_repeats([first, second])
    assert both.energy_j == 900.0 and both.energy_per_gpu_j == "0=550;1=350"
