from __future__ import annotations

import json

import pytest

from carbontop.core.modelspec import PRESETS, resolve_model, sum_range
from carbontop.errors import ConfigError


@pytest.mark.parametrize(
    ("name", "params"),
    [
        # published parameter counts (config.json + safetensors index of each model)
        ("llama2-7b", 6_738_415_616),
        ("llama2-13b", 13_015_864_320),
        ("gpt2", 124_439_808),
        ("gpt2-medium", 354_823_168),
        ("gpt2-large", 774_030_080),
        ("gpt2-xl", 1_557_611_200),
        # meta-llama/Llama-3.1-8B: the safetensors index's total_size 16,060,522,496 bytes / 2 (bf16)
        ("llama3.1-8b", 8_030_261_248),
    ],
)
def test_preset_parameter_counts_match_the_real_models(name: str, params: int) -> None:
    assert resolve_model(name).total_params == params


def test_flops_per_token_by_hand() -> None:
    s = resolve_model("llama2-7b")
    n = 6_476_271_616  # non-embedding
    head = 32000 * 4096
    assert s.nonembedding_params == n
    # attention: QK^T and the weighted sum over V, 2 FLOPs per multiply-add each
    assert s.flops_per_token(1000) == 2 * n + 2 * head + 4 * 32 * 1000 * 4096
    assert s.flops_per_token(1000, logits=False) == 2 * n + 4 * 32 * 1000 * 4096


def test_request_flops_counts_prefill_and_each_decode_step() -> None:
    s = resolve_model("gpt2")
    n, head = s.nonembedding_params, s.lm_head_params
    attn = 4 * s.n_layers * s.d_attn
    # 3 prompt tokens attend to 1, 2, 3 and only the last computes logits; O = 3 outputs, the
    # first from the prefill, then 2 decode steps attending to 4 and 5 tokens, each with logits
    expected = 2 * n * (3 + 2) + 2 * head * (1 + 2) + attn * (1 + 2 + 3 + 4 + 5)
    assert s.request_flops(3, 3) == pytest.approx(expected)
    assert s.prefill_flops(3) == pytest.approx(2 * n * 3 + 2 * head + attn * 6)
    assert s.decode_flops(3, 2, 2) == pytest.approx(2 * (n + head) + attn * 5)
    assert s.decode_flops(3, 3, 2) == 0
    # a one-token request is its prefill alone
    assert s.request_flops(3, 1) == pytest.approx(s.prefill_flops(3))
    assert sum_range(4, 5) == 9 and sum_range(5, 4) == 0


def test_bytes_per_step_and_kv() -> None:
    s = resolve_model("llama2-7b")
    assert s.weight_bytes_per_step("bf16") == (6_476_271_616 + 131_072_000) * 2
    assert s.kv_bytes_per_token("bf16") == 2 * 32 * 32 * 128 * 2  # 512 KiB


def test_model_folder_and_errors(tmp_path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(PRESETS["tiny"]))
    assert resolve_model(str(folder)).total_params == resolve_model("tiny").total_params
    with pytest.raises(ConfigError, match="Unknown model"):
        resolve_model("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="lacks a field"):
        resolve_model(str(folder))


@pytest.mark.parametrize("name", ["tiny", "gpt2"])
def test_parameter_part_cross_checked_with_calflops(name: str) -> None:
    """calflops counts a real forward pass; its non-attention part must match ours.

    calflops misses scaled_dot_product_attention, so with SDPA its count is the parameter part:
    2 x (non-embedding + LM head) per token, plus small element-wise terms (norms, activations).
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    calculate_flops = pytest.importorskip("calflops").calculate_flops

    spec = resolve_model(name)
    cfg = dict(spec.hf_config)
    config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    seq = 16
    ids = torch.randint(0, spec.vocab_size, (1, seq))
    flops, _macs, _params = calculate_flops(
        model=model, kwargs={"input_ids": ids}, output_as_string=False, print_results=False,
        print_detailed=False, include_backPropagation=False,
    )
    ours = 2.0 * (spec.nonembedding_params + spec.lm_head_params) * seq
    assert flops == pytest.approx(ours, rel=0.03)


def test_grouped_query_attention_sets_kv_bytes_and_flops() -> None:
    l2, l3 = resolve_model("llama2-7b"), resolve_model("llama3.1-8b")
    assert (l3.n_heads, l3.n_kv_heads, l3.d_head) == (32, 8, 128)
    # a cached token: K and V x 32 layers x 8 KV heads x 128 x 2 bytes, a quarter of Llama-2-7B's
    assert l3.kv_bytes_per_token("bf16") == 2 * 32 * 8 * 128 * 2 == l2.kv_bytes_per_token("bf16") / 4
    # K and V projections are 4096 x 1024: the block holds 2 x 3 x 4096^2 fewer weights than MHA
    mha = resolve_model("llama3.1-8b").__class__(**{**l3.__dict__, "n_kv_heads": 32})
    assert mha.nonembedding_params - l3.nonembedding_params == 32 * 2 * 4096 * (4096 - 1024)


def test_head_dim_from_the_config_wins(tmp_path) -> None:
    cfg = {**PRESETS["tiny"], "head_dim": 64}  # 8 heads of 64 = 512, wider than d_model 256
    folder = tmp_path / "wide-heads"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    spec = resolve_model(str(folder))
    assert spec.d_head == 64 and spec.d_attn == 512
    assert spec.kv_bytes_per_token("fp32") == 2 * 4 * 4 * 64 * 4
    # q: 256 -> 512, k and v: 256 -> 4 x 64, o: 512 -> 256
    assert spec.linear_shapes()[:4] == [(512, 256), (256, 256), (256, 256), (256, 512)]


def test_mixture_of_experts_is_refused_in_one_sentence(tmp_path) -> None:
    cfg = {**PRESETS["tiny"], "model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2}
    folder = tmp_path / "moe"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="mixture-of-experts model \\(8 experts\\)") as err:
        resolve_model(str(folder))
    assert str(err.value).count(". ") == 0
