"""Model presets and the arithmetic of one token: FLOPs done and bytes read.

Presets carry the real architecture numbers from each model's published config.json, so that a
sweep with random ("dummy") weights costs exactly what the real model costs: with output lengths
forced, speed and energy do not depend on the weight values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from carbontop.errors import ConfigError

BYTES_PER_ELEMENT = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}

# Architecture configs as published on the Hugging Face hub (meta-llama/Llama-2-*-hf and
# openai-community/gpt2*), reduced to the fields that shape compute and memory.
_LLAMA2_COMMON: dict[str, Any] = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
_GPT2_COMMON: dict[str, Any] = {
    "model_type": "gpt2",
    "architectures": ["GPT2LMHeadModel"],
    "n_positions": 1024,
    "vocab_size": 50257,
    "activation_function": "gelu_new",
    "layer_norm_epsilon": 1e-5,
    "tie_word_embeddings": True,
    "bos_token_id": 50256,
    "eos_token_id": 50256,
}

PRESETS: dict[str, dict[str, Any]] = {
    # meta-llama/Llama-2-7b-hf config.json
    "llama2-7b": {
        **_LLAMA2_COMMON,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
    },
    # meta-llama/Llama-2-13b-hf config.json
    "llama2-13b": {
        **_LLAMA2_COMMON,
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
    },
    # openai-community/gpt2 (124M), gpt2-medium (355M), gpt2-large (774M), gpt2-xl (1.5B)
    "gpt2": {**_GPT2_COMMON, "n_embd": 768, "n_layer": 12, "n_head": 12},
    "gpt2-medium": {**_GPT2_COMMON, "n_embd": 1024, "n_layer": 24, "n_head": 16},
    "gpt2-large": {**_GPT2_COMMON, "n_embd": 1280, "n_layer": 36, "n_head": 20},
    "gpt2-xl": {**_GPT2_COMMON, "n_embd": 1600, "n_layer": 48, "n_head": 25},
    # meta-llama/Llama-3.1-8B config.json: grouped-query attention (8 KV heads for 32 query
    # heads, so a cached token takes a quarter of Llama-2-7B's KV bytes), a 128k vocabulary.
    "llama3.1-8b": {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_act": "silu",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
    },
    # A small Llama-shaped model (about 12M parameters, most of them in the 32k vocabulary) that
    # sweeps in seconds on a CPU. Not a real model: it exists to exercise the whole pipeline.
    "tiny": {
        **_LLAMA2_COMMON,
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
    },
}

# Default maximum prompt and output lengths, as the paper filtered ShareGPT: 1,000 tokens for
# Llama-class models, 500 for GPT-2 (whose context is 1,024). The tiny model keeps runs short.
DEFAULT_MAX_LEN = {"llama": 1000, "gpt2": 500}
TINY_MAX_LEN = 128


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a decoder-only transformer, enough to count its FLOPs and bytes."""

    name: str
    family: str  # "llama" or "gpt2"
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    vocab_size: int
    max_positions: int
    tied_embeddings: bool
    hf_config: dict[str, Any]
    path: str | None = None  # a local folder, where the model came from one
    # config.json's head_dim where it names one (it need not be d_model / heads), else derived
    head_dim: int | None = None
    # weight-only quantisation of the linear layers, where the run asks for it
    weight_quant: WeightQuant | None = None

    @property
    def d_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def d_attn(self) -> int:
        return self.n_heads * self.d_head

    @property
    def nonembedding_params(self) -> int:
        """Parameters of the transformer blocks and final norm (Kaplan et al.'s N)."""
        d, L, kv = self.d_model, self.n_layers, self.n_kv_heads * self.d_head
        if self.family == "gpt2":
            attn = d * 3 * d + 3 * d + d * d + d
            mlp = d * self.d_ff + self.d_ff + self.d_ff * d + d
            norms = 4 * d
            return L * (attn + mlp + norms) + 2 * d
        attn = d * self.d_attn + 2 * d * kv + self.d_attn * d
        mlp = 3 * d * self.d_ff
        norms = 2 * d
        return L * (attn + mlp + norms) + d

    @property
    def embedding_params(self) -> int:
        pos = self.max_positions * self.d_model if self.family == "gpt2" else 0
        return self.vocab_size * self.d_model + pos

    @property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.d_model

    @property
    def total_params(self) -> int:
        head = 0 if self.tied_embeddings else self.lm_head_params
        return self.nonembedding_params + self.embedding_params + head

    @property
    def default_max_len(self) -> int:
        if self.name == "tiny":
            return TINY_MAX_LEN
        return DEFAULT_MAX_LEN.get(self.family, 1000)

    # ---- FLOPs ----------------------------------------------------------------------------

    def flops_per_token(self, context: int, logits: bool = True) -> float:
        """Forward FLOPs of one token that attends to `context` tokens: 2 x N (non-embedding
        parameters, Kaplan et al. 2020, "Scaling Laws for Neural Language Models", table 1)
        + 4 x n_layer x context x d_attn for attention's two products, QK^T and the weighted sum
        over V (2 FLOPs per multiply-add each; Kaplan's table counts only the first)
        + 2 x d_model x vocab for the LM head, only where this token's logits are computed."""
        head = 2.0 * self.lm_head_params if logits else 0.0
        return 2.0 * self.nonembedding_params + head + 4.0 * self.n_layers * context * self.d_attn

    def prefill_flops(self, input_tokens: int) -> float:
        """FLOPs of a prompt's prefill: prompt token k attends to k tokens (causal), and logits
        are computed once, at the last position, for the first output token. Padding is not
        useful work and is not counted."""
        i = input_tokens
        return (2.0 * self.nonembedding_params * i + 2.0 * self.lm_head_params
                + 4.0 * self.n_layers * self.d_attn * i * (i + 1) / 2)

    def decode_flops(self, input_tokens: int, first_step: int, last_step: int) -> float:
        """FLOPs of decode steps first_step..last_step of one request: step j (1-based; the first
        output token comes from the prefill) attends to input + j tokens and computes logits."""
        steps = last_step - first_step + 1
        if steps <= 0:
            return 0.0
        i = input_tokens
        return (2.0 * (self.nonembedding_params + self.lm_head_params) * steps
                + 4.0 * self.n_layers * self.d_attn * sum_range(i + first_step, i + last_step))

    def request_flops(self, input_tokens: int, output_tokens: int) -> float:
        """FLOPs of one whole request: its prefill and its O - 1 decode steps."""
        return self.prefill_flops(input_tokens) + self.decode_flops(
            input_tokens, 1, output_tokens - 1)

    # ---- bytes ----------------------------------------------------------------------------

    def weight_bytes_per_step(self, dtype: str) -> float:
        """Weight bytes one decode step must read: every block and the LM head; of the input
        embedding only a few rows, so it is left out. With weight-only quantisation, the bytes
        the quantised weights really take (see `quantised_weight_bytes_per_step`)."""
        if self.weight_quant is not None:
            return quantised_weight_bytes_per_step(self, self.weight_quant, dtype)
        return (self.nonembedding_params + self.lm_head_params) * BYTES_PER_ELEMENT[dtype]

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(out_features, in_features) of every matrix a decode step multiplies by: the blocks'
        projections and the LM head, in the layout the model stores them."""
        d, kv, attn = self.d_model, self.n_kv_heads * self.d_head, self.d_attn
        if self.family == "gpt2":
            # fused QKV, output projection, MLP up and down (Conv1D layers, same sizes)
            block = [(3 * d, d), (d, d), (self.d_ff, d), (d, self.d_ff)]
        else:
            block = [(attn, d), (kv, d), (kv, d), (d, attn),
                     (self.d_ff, d), (self.d_ff, d), (d, self.d_ff)]
        return block * self.n_layers + [(self.vocab_size, d)]

    def kv_bytes_per_token(self, dtype: str) -> float:
        """KV-cache bytes of one cached token: K and V for every layer and KV head."""
        return 2.0 * self.n_layers * self.n_kv_heads * self.d_head * BYTES_PER_ELEMENT[dtype]


@dataclass(frozen=True)
class WeightQuant:
    """How a library stores weight-only quantised linear layers, enough to count their bytes.

    A matrix of out x in weights takes out x in x bits / 8 bytes of packed integers, plus, for
    every output row and every group of `group_size` inputs (the whole row where group_size is
    None), `scale_bytes` of scale (and zero point). `measured_bytes`, where the engine reports it,
    is what its quantised tensors really hold (padding and packing included) and wins.
    """

    scheme: str  # "int4-wo" or "int8-wo"
    bits: int
    group_size: int | None
    scale_bytes: int
    measured_bytes: float | None = None


def quantised_weight_bytes_per_step(spec: ModelSpec, quant: WeightQuant, dtype: str) -> float:
    """Bytes one decode step reads of a weight-only quantised model: the packed integer weights
    and their scales for every linear layer (LM head included), and the rest of the non-embedding
    parameters (norms, biases) at the activation dtype."""
    if quant.measured_bytes is not None:
        return quant.measured_bytes
    shapes = spec.linear_shapes()
    linear_params = sum(o * i for o, i in shapes)
    groups = sum(o * (-(-i // quant.group_size) if quant.group_size else 1) for o, i in shapes)
    other_params = spec.nonembedding_params + spec.lm_head_params - linear_params
    return linear_params * quant.bits / 8 + groups * quant.scale_bytes + (
        other_params * BYTES_PER_ELEMENT[dtype])


def sum_range(lo: int, hi: int) -> float:
    """lo + (lo+1) + ... + hi, 0 when hi < lo."""
    if hi < lo:
        return 0.0
    return (lo + hi) * (hi - lo + 1) / 2


# Fields by which Hugging Face configs of mixture-of-experts models give their expert count
# (Mixtral, Qwen2-MoE/Qwen3-MoE, DeepSeek-V2/V3, DBRX's ffn_config is nested and not dense-like).
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def spec_from_hf_config(name: str, cfg: dict[str, Any], path: str | None = None) -> ModelSpec:
    """Read the numbers that matter from an HF config.json (Llama-like or GPT-2)."""
    mt = cfg.get("model_type", "")
    experts = next((cfg[k] for k in _EXPERT_KEYS if cfg.get(k)), None)
    if experts:
        raise ConfigError(
            f"'{name}' is a mixture-of-experts model ({experts} experts), and carbontop does not "
            "yet count the parameters each token really uses, so its FLOPs, MFU and MBU would "
            "be wrong; choose a dense model.",
            "model",
        )
    try:
        if mt == "gpt2":
            d = int(cfg["n_embd"])
            return ModelSpec(
                name=name,
                family="gpt2",
                n_layers=int(cfg["n_layer"]),
                d_model=d,
                n_heads=int(cfg["n_head"]),
                n_kv_heads=int(cfg["n_head"]),
                d_ff=int(cfg.get("n_inner") or 4 * d),
                vocab_size=int(cfg["vocab_size"]),
                max_positions=int(cfg.get("n_positions", 1024)),
                tied_embeddings=bool(cfg.get("tie_word_embeddings", True)),
                hf_config=cfg,
                path=path,
            )
        d = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        head_dim = cfg.get("head_dim")
        return ModelSpec(
            name=name,
            family="llama",
            n_layers=int(cfg["num_hidden_layers"]),
            d_model=d,
            n_heads=heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            d_ff=int(cfg["intermediate_size"]),
            vocab_size=int(cfg["vocab_size"]),
            max_positions=int(cfg.get("max_position_embeddings", 4096)),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            hf_config=cfg,
            path=path,
            head_dim=int(head_dim) if head_dim else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"The model config of '{name}' lacks a field carbontop needs ({exc}); "
            "Llama-like and GPT-2 decoder configs are supported.",
            "model",
        ) from None


def resolve_model(model: str, weights: str = "dummy") -> ModelSpec:
    """A preset name, a local folder with a config.json, or a hub id ("org/name") resolved to its
    snapshot in the local Hugging Face cache (downloaded where the machine is online): with
    `weights` "dummy" only config.json is needed, with "auto" the weights too."""
    if model in PRESETS:
        return spec_from_hf_config(model, dict(PRESETS[model]))
    from carbontop.core.hub import hub_snapshot, looks_like_hub_id

    if looks_like_hub_id(model):
        folder = hub_snapshot(model, weights)
        spec = resolve_model(str(folder))
        return replace(spec, name=model)
    path = Path(model).expanduser()
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.exists():
            raise ConfigError(f"The model folder {path} has no config.json.", "model")
        try:
            cfg = json.loads(cfg_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{cfg_file} cannot be read as JSON: {exc}.", "model") from None
        return spec_from_hf_config(path.name, cfg, str(path.resolve()))
    names = ", ".join(PRESETS)
    raise ConfigError(
        f"Unknown model '{model}': use a preset ({names}), the path of a local model folder, "
        "or a hub id such as meta-llama/Llama-2-7b-hf.",
        "model",
    )


def folder_has_weights(path: str) -> bool:
    p = Path(path)
    return any(p.glob("*.safetensors")) or any(p.glob("*.bin"))
