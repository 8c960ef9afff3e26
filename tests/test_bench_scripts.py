"""The benchmark scripts run on the CPU with the tiny model (their GPU figures are in benchmarks/README.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("transformers")
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decode_profile_prints_one_row_per_batch_size_in_the_order_given(capsys) -> None:
    module = _script("decode_profile")
    assert module.main(["--model", "tiny", "--device", "cpu", "--batch-sizes", "2,1", "--static-batch",
                        "--context", "8", "--steps", "2"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line[:5].strip().isdigit()]
    assert [r[0] for r in rows] == ["2", "1"]
    assert all(float(r[1]) > 0 and r[3] == "eager" for r in rows)


def test_engine_bench_times_whole_static_batches() -> None:
    from carbontop.core.modelspec import resolve_model

    module = _script("engine_bench")
    engine = module.make_engine("tiny", "cpu", "fp32", False, False)
    tokens_per_s, ms_per_step, mode, traffic = module.engine_point(
        engine, 2, 8, 4, 2, resolve_model("tiny"), "fp32")
    assert tokens_per_s > 0 and ms_per_step > 0 and mode == "eager"
    assert traffic.steps == 6  # two batches of 4 new tokens: 3 decode steps each
