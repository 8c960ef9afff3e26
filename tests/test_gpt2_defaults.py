"""The paper's ShareGPT filter for GPT-2 (4 to 500 tokens in and out) is the default for the GPT-2
presets, and for any GPT-2 config, whatever name it comes by."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carbontop.config import RunConfig
from carbontop.core.modelspec import PRESETS, resolve_model
from carbontop.sweep.runner import SweepRunner


@pytest.mark.parametrize("name", ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
def test_gpt2_presets_default_to_500_tokens(name: str) -> None:
    spec = resolve_model(name)
    assert spec.family == "gpt2" and spec.default_max_len == 500
    assert 2 * spec.default_max_len <= spec.max_positions  # 500 in + 500 out fit in 1,024


def test_a_gpt2_sweep_filters_4_to_500(tmp_path: Path) -> None:
    folder = tmp_path / "gpt2-xl-config"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(PRESETS["gpt2-xl"]))
    # "a a a": the estimate counts one token a letter (no tokenizer here)
    chats = [{"id": f"c{i}", "conversations": [
        {"from": "human", "value": " ".join("a" * n_in)}, {"from": "gpt", "value": " ".join("a" * n_out)}]}
        for i, (n_in, n_out) in enumerate([(3, 10), (10, 3), (600, 10), (10, 600), (10, 20),
                                           (499, 499), (20, 10)])]
    dataset = tmp_path / "chats.json"
    dataset.write_text(json.dumps(chats))
    cfg = RunConfig(model=str(folder), device="cpu", dataset=str(dataset), num_prompts=3,
                    batch_sizes="1", out=str(tmp_path / "run"))
    runner = SweepRunner(cfg)
    runner.prepare()
    try:
        assert (runner.engine_spec.max_input_len, runner.engine_spec.max_output_len) == (500, 500)
        kept = sorted(p.prompt_id for p in runner.workload.prompts)
        # too short (3 tokens) or too long (600) on either side is left out
        assert kept == ["c4", "c5", "c6"]
        assert "4-500 input and 4-500 output tokens" in runner.workload.notes[0]
    finally:
        runner.sampler.stop()
