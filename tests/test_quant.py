"""Weight-only quantisation: torchao on the tiny model (int8 on the CPU), the bytes MBU counts,
and the one-sentence refusals where a scheme cannot run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from carbontop.cli import main
from carbontop.config import tomllib
from carbontop.core.modelspec import BYTES_PER_ELEMENT, PRESETS, resolve_model
from carbontop.core.records import Batching, PointPlan, Prompt
from carbontop.engines.base import EngineSpec
from carbontop.engines.quant import expected_layout, plan_weight_quant
from carbontop.errors import ConfigError


def test_int4_bytes_by_hand() -> None:
    spec = resolve_model("llama2-7b")
    quant = expected_layout("int4-wo", "hf", "bf16")
    q = spec.__class__(**{**spec.__dict__, "weight_quant": quant})
    linear = sum(o * i for o, i in spec.linear_shapes())
    # every matrix's rows x (in / 128) groups, 4 bytes (bf16 scale + zero) per group
    groups = 32 * (4 * 4096 * 32 + 2 * 11008 * 32 + 4096 * 86) + 32000 * 32
    norms = 32 * 2 * 4096 + 4096
    assert q.weight_bytes_per_step("bf16") == linear / 2 + groups * 4 + norms * 2
    # a quarter of bf16's bytes, plus a few percent of scales
    ratio = q.weight_bytes_per_step("bf16") / spec.weight_bytes_per_step("bf16")
    assert 0.25 < ratio < 0.27
    # FLOPs do not change
    assert q.request_flops(100, 50) == spec.request_flops(100, 50)


def test_int8_on_the_cpu_with_the_tiny_model() -> None:
    pytest.importorskip("torchao")
    torch = pytest.importorskip("torch")
    from carbontop.engines.hf import HFEngine

    torch.set_num_threads(1)
    cfg = dict(PRESETS["tiny"])
    spec = EngineSpec(engine="hf", model="tiny", model_config=cfg, model_path=None,
                      weights="dummy", dtype="fp32", device="cpu", quant="int8-wo",
                      max_input_len=16, max_output_len=8)
    engine = HFEngine(spec, lambda note: None)
    info = engine.load()
    q = info["quant"]
    assert q["scheme"] == "int8-wo" and q["library"].startswith("torchao ")
    assert q["quantised_layers"] == 4 * 7 + 1  # seven projections a block, and the LM head
    layer = engine.model.model.layers[0].self_attn.q_proj
    assert "Int8" in type(layer.weight).__name__
    # what the tensors hold is what the layout predicts: 1 byte a weight, a fp32 scale and an
    # int8 zero point per output row, norms in fp32
    model = resolve_model("tiny")
    predicted = model.__class__(**{**model.__dict__, "weight_quant": expected_layout("int8-wo", "hf", "fp32")})
    assert q["weight_bytes_per_step"] == predicted.weight_bytes_per_step("fp32")
    unquantised = model.weight_bytes_per_step("fp32")
    assert q["weight_bytes_per_step"] < 0.3 * unquantised  # fp32 -> int8
    prompts = [Prompt(prompt_id=f"p{i}", input_tokens=6 + i, output_tokens=4) for i in range(2)]
    run = engine.run_point(PointPlan(2, Batching.INFLIGHT, tuple(prompts), min_window_s=60.0,
                                     max_point_s=0.0))
    assert [r.output_tokens for r in run.records] == [4, 4]
    engine.close()


@pytest.mark.parametrize(
    ("scheme", "engine", "device", "dtype", "family", "message"),
    [
        ("int4-wo", "hf", "cpu", "fp32", "llama", "needs a CUDA GPU"),
        ("int4-wo", "hf", "cuda", "fp16", "llama", "--dtype bf16"),
        ("int8-wo", "hf", "cuda", "bf16", "gpt2", "Conv1D"),
    ],
)
def test_refusals_are_one_sentence(scheme, engine, device, dtype, family, message) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_weight_quant(scheme, engine, device, dtype, family)


def test_trtllm_layout_is_per_channel() -> None:
    layout = expected_layout("int4-wo", "trtllm", "fp16")
    assert (layout.bits, layout.group_size, layout.scale_bytes) == (4, None, BYTES_PER_ELEMENT["fp16"])


def test_int4_on_the_cpu_is_one_sentence(capsys) -> None:
    code = main(["sweep", "--device", "cpu", "--quant", "int4-wo", "--dataset", "synthetic"])
    err = capsys.readouterr().err
    assert code != 0 and "needs a CUDA GPU" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_int8_sweep_on_the_cpu_records_the_quantised_bytes(tmp_path) -> None:
    pytest.importorskip("torchao")
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "carbontop", "sweep", "--device", "cpu", "--quant", "int8-wo",
         "--dataset", "synthetic", "--num-prompts", "2", "--max-input-len", "16",
         "--max-output-len", "8", "--batch-sizes", "2", "--out", str(run_dir), "--quiet"],
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    meta = tomllib.loads((run_dir / "run.toml").read_text())
    assert meta["engine"]["quant"]["scheme"] == "int8-wo"
    assert meta["model"]["quant"] == "int8-wo"
