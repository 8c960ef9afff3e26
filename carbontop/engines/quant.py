"""Weight-only quantisation of the built-in engine's model, through torchao (a kept library).

`--quant int4-wo` and `--quant int8-wo` replace the weights of every linear layer (the blocks'
projections and the LM head) with torchao's quantised tensors; activations stay in the run's
dtype, and the matrix products run torchao's kernels for those tensors:

* int4-wo: `Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d")`, int4
  weights in groups of 128 with a bf16 scale and zero point per group, multiplied by torch's own
  tinygemm kernel (`aten._weight_int4pack_mm`). That kernel exists for CUDA only, so int4-wo
  needs a GPU.
* int8-wo: `Int8WeightOnlyConfig()`, int8 weights with one scale per output channel; runs on the
  CPU and on CUDA.

FLOPs do not change (the same products are done). The bytes a decode step reads do: `QuantInfo`
carries the bytes the quantised model's weights really hold (packed integers, scales, zero points
and any padding the packing adds, plus the norms), which MBU uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from carbontop.core.modelspec import BYTES_PER_ELEMENT, WeightQuant
from carbontop.errors import ConfigError, EngineUnavailable

SCHEMES = ("int4-wo", "int8-wo")
# torchao's default group for int4 weight-only, and the group TensorRT-LLM's W4A16 AWQ uses
INT4_GROUP_SIZE = 128

INSTALL_SENTENCE = (
    "--quant needs torchao (0.18 or newer, with torch 2.11 or newer): pip install 'carbontop[quant]'."
)
INT4_CPU_SENTENCE = (
    "--quant int4-wo needs a CUDA GPU: torchao's int4 weight-only kernel (torch's tinygemm) has no "
    "CPU path; --quant int8-wo runs on the CPU."
)


@dataclass(frozen=True)
class QuantInfo:
    """What quantisation did to the model, for run.toml and for MBU."""

    scheme: str
    library: str  # e.g. "torchao 0.18.0"
    config: str  # the library's config, as it prints itself
    quantised_layers: int
    # bytes one decode step reads of weights: every parameter except the input embedding
    weight_bytes_per_step: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _torchao() -> Any:
    try:
        import torchao
        import torchao.quantization  # noqa: F401 - the configs live here
    except ImportError:
        raise EngineUnavailable(INSTALL_SENTENCE) from None
    return torchao


def _config(scheme: str) -> Any:
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig

    # set_inductor_config=False: torchao would otherwise switch inductor's coordinate-descent
    # tuning on for the whole process, which changes what --compile does and how long it takes
    if scheme == "int4-wo":
        return Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE, int4_packing_format="tile_packed_to_4d",
                                    set_inductor_config=False)
    return Int8WeightOnlyConfig(set_inductor_config=False)


def tensor_bytes(tensor: Any) -> int:
    """Bytes a tensor holds: for a tensor subclass (torchao's quantised weights), the sum of the
    plain tensors it is made of (packed data, scales, zero points)."""
    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is None:
        return int(tensor.numel() * tensor.element_size())
    names, _ctx = tensor.__tensor_flatten__()
    return sum(tensor_bytes(getattr(tensor, name)) for name in names if getattr(tensor, name) is not None)


def weight_bytes_per_step(model: Any) -> int:
    """Bytes of every parameter a decode step reads: all but the input (and position) embeddings,
    of which a step reads only a few rows. A weight shared by two modules counts once."""
    skip: set[int] = set()
    inputs = model.get_input_embeddings()
    if inputs is not None:
        skip.add(id(inputs.weight))
    wpe = getattr(getattr(model, "transformer", None), "wpe", None)  # GPT-2's position table
    if wpe is not None:
        skip.add(id(wpe.weight))
    output = model.get_output_embeddings()
    if output is not None:
        skip.discard(id(output.weight))  # tied: the LM head reads the whole table every step
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if id(param) in seen or id(param) in skip:
                continue
            seen.add(id(param))
            total += tensor_bytes(param)
    return total


def apply_weight_only(model: Any, scheme: str, device: str) -> QuantInfo:
    """Quantise the model's linear layers in place; raise EngineUnavailable (one sentence) where
    this machine or this model cannot run the scheme."""
    if scheme not in SCHEMES:
        raise EngineUnavailable(f"Unknown quantisation '{scheme}': use one of {', '.join(SCHEMES)}.")
    if scheme == "int4-wo" and device != "cuda":
        raise EngineUnavailable(INT4_CPU_SENTENCE)
    torchao = _torchao()
    import torch
    from torchao.quantization import quantize_

    count = sum(1 for m in model.modules() if isinstance(m, torch.nn.Linear))
    if count == 0:
        raise EngineUnavailable(
            f"{type(model).__name__} has no torch.nn.Linear layers for torchao to quantise "
            "(GPT-2 uses Conv1D); weight-only quantisation is for Llama-like models.")
    config = _config(scheme)
    quantize_(model, config)
    return QuantInfo(
        scheme=scheme,
        library=f"torchao {torchao.__version__}",
        config=repr(config),
        quantised_layers=count,
        weight_bytes_per_step=weight_bytes_per_step(model),
    )


def expected_layout(scheme: str, engine: str, dtype: str) -> WeightQuant:
    """How `engine` stores `scheme`'s weights, for the bytes a decode step reads before the engine
    reports what its tensors really hold (the built-in engine does, after loading).

    hf (torchao): int4 in groups of 128 with a bf16 scale and zero point each (tinygemm's packing);
    int8 per output channel with a scale in the weight dtype and an int8 zero point.
    trtllm: W4A16 and W8A16 are per-channel weight-only, one scale in the activation dtype per
    output channel (TensorRT-LLM's weight-only GEMM, QuantAlgo.W4A16 / W8A16).
    """
    act = BYTES_PER_ELEMENT[dtype]
    if engine == "trtllm":
        return WeightQuant(scheme, 4 if scheme == "int4-wo" else 8, None, act)
    if scheme == "int4-wo":
        return WeightQuant(scheme, 4, INT4_GROUP_SIZE, 2 * BYTES_PER_ELEMENT["bf16"])
    return WeightQuant(scheme, 8, None, act + 1)


def plan_weight_quant(scheme: str, engine: str, device: str, dtype: str, family: str) -> WeightQuant | None:
    """Check, before anything starts, that this run can quantise as asked (ConfigError, one
    sentence, where not), and return the layout whose bytes MBU counts (None: no quantisation)."""
    if scheme == "none":
        return None
    if family == "gpt2":
        raise ConfigError(
            "Weight-only quantisation is for Llama-like models: GPT-2's layers are Conv1D, which "
            "neither torchao nor TensorRT-LLM's weight-only path quantises.", "quant")
    if engine == "hf" and scheme == "int4-wo":
        if device != "cuda":
            raise ConfigError(INT4_CPU_SENTENCE, "quant")
        if dtype != "bf16":
            raise ConfigError(
                "--quant int4-wo runs with bf16 activations (the tinygemm kernel takes bf16); "
                "use --dtype bf16.", "quant")
    return expected_layout(scheme, engine, dtype)
