"""Drive TensorRT-LLM through its high-level LLM API, the PyTorch backend that 1.x uses by default.

Written against TensorRT-LLM 1.2 (the 1.x LLM API: `tensorrt_llm.LLM`, `SamplingParams`,
`tensorrt_llm.llmapi.KvCacheConfig`, `LLM.generate_async`, and the per-request perf metrics on
`RequestOutput.outputs[0].request_perf_metrics`); any 1.x release has these.

How a sweep point maps onto it:
- batch size b -> the executor's `max_batch_size`, fixed when the executor is created, so the LLM is
  built again (before the window) whenever the batch size changes; it is the in-flight limit.
- the point's PointPlan is driven by engines/stream_point.py: in flight, b requests are kept
  submitted (`generate_async(..., streaming=True)`), the next one as soon as one ends; admission
  stops per `keep_admitting` and requests still running at the window's close are aborted
  (`RequestOutput.abort()`) and recorded unfinished with the tokens they made. Static: batches of
  b submitted together, the next only once the whole batch has ended.
- every streamed step is a timeline entry: the tokens it added to the request (exact: the length
  of its token ids), the requests in flight then.
- `kv_cache_fraction` -> `KvCacheConfig(free_gpu_memory_fraction=...)`. Block reuse is off, so a
  prompt's prefill is never skipped because an earlier prompt shared its prefix.
- output lengths are forced: `ignore_eos=True`, `max_tokens` = the prompt's reference length, and
  `end_id=-1` as trtllm-bench does, which also frees the run from needing a tokenizer.
- weights "dummy" -> `load_format="dummy"` (random weights); a preset without a folder gets a
  config.json written to a temporary folder and runs on token ids, without a tokenizer.
- TTFT and end-to-end time are streaming timestamps taken here, the same clock as the window and
  the timeline (the engine's own per-request timing metrics are on its steady clock).
- out of memory, in every form TensorRT-LLM shows it (executor creation failing for lack of GPU
  memory, a torch OutOfMemoryError from the worker, "CUDA runtime error in cudaMallocAsync ... out
  of memory") -> EngineOOM. An in-flight point whose window never opened because fewer than b
  requests ran at once (the KV cache pre-allocated at start-up could not hold more) ->
  EngineKVBound with the concurrency reached, from each request's first and last scheduler
  iteration where the engine reports them, else from the streaming timestamps.

`tensorrt_llm` is imported inside load(): choosing this engine costs nothing until it runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from carbontop.core.records import EngineRun, PointPlan, Prompt
from carbontop.core.synthetic import prompt_seed, synthetic_token_ids
from carbontop.engines.base import (
    Emit,
    EngineFailure,
    EngineKVBound,
    EngineOOM,
    EngineSpec,
    Phase,
    PhaseUpdate,
    check_kv_bound,
    says_oom,
)
from carbontop.engines.stream_point import OnChunk, StreamedRequest, StreamPoint
from carbontop.errors import EngineUnavailable, first_line

log = logging.getLogger(__name__)

INSTALL_SENTENCE = (
    "TensorRT-LLM is not installed; install it with pip install 'carbontop[trtllm]' on a Linux machine "
    "with an NVIDIA GPU and CUDA 12 or newer (the README's TensorRT-LLM section has the details)."
)

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

# HF architecture class per model_type, for presets whose config names no architecture.
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}

# --quant -> TensorRT-LLM's weight-only algorithms (tensorrt_llm.quantization.QuantAlgo): int4 or
# int8 weights with one scale per output channel, bf16/fp16 activations. The PyTorch backend takes
# a checkpoint's quantisation from the hf_quant_config.json that NVIDIA's Model Optimizer writes
# beside config.json ("The PyTorch backend currently supports only models quantized using TensorRT
# Model Optimizer", TensorRT-LLM docs, torch/features/quantization.md), so random weights get one.
QUANT_ALGOS = {"int4-wo": "W4A16", "int8-wo": "W8A16"}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
WARMUP_OUTPUT_TOKENS = 4



def is_oom(exc: BaseException) -> bool:
    """True if the exception, or one it was raised from, says memory ran out."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if "OutOfMemory" in type(current).__name__ or says_oom(str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False


def _seconds(value: Any) -> float | None:
    """Timing metrics are timedeltas on the engine's steady clock; a zero one means unset."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        return None
    return seconds if seconds > 0 else None


def max_overlap(spans: Sequence[tuple[float, float]], *, inclusive: bool) -> int:
    """Largest number of spans covering one point.

    Iteration ranges are inclusive (a request scheduled in iterations 3..5 is in flight in 5);
    time spans are half-open. At equal positions an end is counted before a start.
    """
    events: list[tuple[float, int]] = []
    for start, end in spans:
        events.append((start, 1))
        events.append((end + 1 if inclusive else end, -1))
    events.sort(key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def _import_tensorrt_llm() -> Any:
    try:
        import tensorrt_llm
    except ModuleNotFoundError as exc:
        if (exc.name or "tensorrt_llm").split(".")[0] == "tensorrt_llm":
            raise EngineUnavailable(INSTALL_SENTENCE) from None
        raise EngineUnavailable(
            f"TensorRT-LLM is installed but cannot be imported because module '{exc.name}' is missing."
        ) from None
    except (ImportError, OSError) as exc:
        raise EngineUnavailable(f"TensorRT-LLM is installed but cannot be imported: {first_line(exc)}.") from None
    return tensorrt_llm


class TRTLLMEngine:
    """TensorRT-LLM's LLM API in the engine child process; one executor per batch size."""

    def __init__(self, spec: EngineSpec, emit: Emit) -> None:
        self.spec = spec
        self._emit = emit
        self._trt: Any = None
        self._kv_cache_config_cls: Any = None
        self._llm: Any = None
        self._llm_batch_size: int | None = None
        self._model_source = spec.model
        self._tmpdir: str | None = None
        self._has_tokenizer = False
        self._vocab_size: int | None = None
        self._max_seq_len = spec.max_input_len + spec.max_output_len

    # ---- the contract ----------------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        self._emit(PhaseUpdate(Phase.LOADING, "importing TensorRT-LLM"))
        trt = _import_tensorrt_llm()
        if self.spec.device != "cuda":
            raise EngineUnavailable(
                "TensorRT-LLM runs only on an NVIDIA GPU and none is in use here; choose --engine hf "
                "to measure on the CPU."
            )
        from tensorrt_llm.llmapi import KvCacheConfig

        self._trt = trt
        self._kv_cache_config_cls = KvCacheConfig
        self._resolve_model()
        return {
            "quant_algo": QUANT_ALGOS.get(self.spec.quant, "none"),
            "tensorrt_llm_version": str(getattr(trt, "__version__", "unknown")),
            "backend": "LLM API, default (PyTorch) backend",
            "model_source": self._model_source,
            "load_format": self._load_format(),
            "tokenizer": self._has_tokenizer,
            "tensor_parallel_size": self._tp_size(),
            "max_seq_len": self._max_seq_len,
            "kv_cache_fraction": self.spec.kv_cache_fraction,
            "kv_block_reuse": False,
        }

    def run_point(self, plan: PointPlan) -> EngineRun:
        if self._trt is None:
            raise EngineFailure("The TensorRT-LLM engine was asked to run before it was loaded.")
        if plan.batch_size < 1 or not plan.prompts:
            raise EngineFailure("A point needs a batch size of at least 1 and at least one prompt.")
        batch_size = plan.batch_size
        rebuilt = self._ensure_llm(batch_size)
        try:
            run, steady = asyncio.run(self._point(plan, rebuilt))
        except (EngineOOM, EngineFailure, EngineKVBound):
            raise
        except Exception as exc:  # noqa: BLE001 - TensorRT-LLM's errors have no common type: classified here
            error = self._classify(exc, batch_size, "generating")
            self._shutdown_llm()  # its state after a failure is unknown: the next point builds afresh
            raise error from None
        return check_kv_bound(plan, run, steady, lambda reached: (
            f"TensorRT-LLM kept at most {reached} requests in flight of the {batch_size} asked, because "
            "its KV cache (or token budget) could not hold more at once."))

    def close(self) -> None:
        self._shutdown_llm()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    # ---- model and executor ----------------------------------------------------------------

    def _load_format(self) -> str:
        return "dummy" if self.spec.weights == "dummy" else "auto"

    def _tp_size(self) -> int:
        """One shard per GPU named (--gpus): the GPUs measured are the GPUs used."""
        return max(1, len(self.spec.gpus))

    def _resolve_model(self) -> None:
        spec = self.spec
        config: dict[str, Any] = dict(spec.model_config or {})
        # random weights to quantise: a config.json of our own beside an hf_quant_config.json,
        # never written into the user's folder or cache
        own_config = spec.weights == "dummy" and spec.quant in QUANT_ALGOS and bool(spec.model_config)
        if spec.model_path and not own_config:
            folder = Path(spec.model_path)
            self._model_source = str(folder)
            self._has_tokenizer = any((folder / name).exists() for name in TOKENIZER_FILES)
            if spec.quant in QUANT_ALGOS and not (folder / "hf_quant_config.json").exists():
                raise EngineUnavailable(
                    f"--quant {spec.quant} on a model folder needs a quantised checkpoint (ModelOpt's "
                    f"hf_quant_config.json with {QUANT_ALGOS[spec.quant]}), which {folder} lacks; "
                    "TensorRT-LLM's PyTorch backend does not quantise real weights as it loads them.")
            config_file = folder / "config.json"
            if config_file.exists():
                config = json.loads(config_file.read_text())
        elif spec.weights == "dummy" and spec.model_config:
            # A preset: TensorRT-LLM reads the architecture from a config.json, so write one.
            self._tmpdir = tempfile.mkdtemp(prefix="carbontop-trtllm-")
            config = self._hf_config(config)
            (Path(self._tmpdir) / "config.json").write_text(json.dumps(config, indent=2))
            if self.spec.quant in QUANT_ALGOS:
                # The PyTorch backend reads a checkpoint's quantisation from the hf_quant_config.json
                # that ModelOpt writes beside config.json; random weights get one too.
                quant = {"producer": {"name": "modelopt"},
                         "quantization": {"quant_algo": QUANT_ALGOS[self.spec.quant],
                                          "kv_cache_quant_algo": None}}
                (Path(self._tmpdir) / "hf_quant_config.json").write_text(json.dumps(quant, indent=2))
            self._model_source = self._tmpdir
            self._has_tokenizer = False
        else:
            # A hub name: TensorRT-LLM fetches its config (and, with real weights, the weights).
            self._model_source = spec.model
            self._has_tokenizer = True
        vocab = config.get("vocab_size")
        self._vocab_size = int(vocab) if isinstance(vocab, int) else None
        positions = config.get("max_position_embeddings") or config.get("n_positions")
        if isinstance(positions, int) and positions > 0:
            self._max_seq_len = min(self._max_seq_len, positions)

    def _hf_config(self, config: dict[str, Any]) -> dict[str, Any]:
        if not config.get("architectures"):
            arch = ARCHITECTURES.get(str(config.get("model_type", "")))
            if arch is None:
                raise EngineFailure(
                    f"TensorRT-LLM needs the model's architecture, and the config of '{self.spec.model}' "
                    "names neither an architecture nor a known model_type."
                )
            config["architectures"] = [arch]
        config.setdefault("torch_dtype", DTYPES.get(self.spec.dtype, "bfloat16"))
        return config

    def _llm_kwargs(self, batch_size: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self._model_source,
            "skip_tokenizer_init": not self._has_tokenizer,
            "tensor_parallel_size": self._tp_size(),
            "dtype": DTYPES.get(self.spec.dtype, "auto"),
            "max_batch_size": batch_size,
            "max_seq_len": self._max_seq_len,
            "kv_cache_config": self._kv_cache_config_cls(
                free_gpu_memory_fraction=self.spec.kv_cache_fraction,
                # off: a point's prompts repeat within its stream, and reused blocks would
                # skip their prefill, measuring a cache instead of the model
                enable_block_reuse=False,
            ),
            "load_format": self._load_format(),
        }
        if self.spec.max_num_tokens is not None:
            kwargs["max_num_tokens"] = self.spec.max_num_tokens
        return kwargs

    def _ensure_llm(self, batch_size: int) -> bool:
        """An executor sized for this batch; True if it had to be created (outside the window)."""
        if self._llm is not None and self._llm_batch_size == batch_size:
            return False
        self._shutdown_llm()
        self._emit(PhaseUpdate(Phase.BUILDING, f"creating the executor for max_batch_size={batch_size}"))
        try:
            self._llm = self._trt.LLM(**self._llm_kwargs(batch_size))
        except Exception as exc:  # noqa: BLE001 - classified into OOM, KV-bound or failure
            raise self._classify(exc, batch_size, "creating its executor") from None
        self._llm_batch_size = batch_size
        return True

    def _shutdown_llm(self) -> None:
        llm, self._llm, self._llm_batch_size = self._llm, None, None
        if llm is None:
            return
        try:
            llm.shutdown()
        except Exception:  # noqa: BLE001 - an executor that already died may refuse to shut down
            log.warning("TensorRT-LLM's executor did not shut down cleanly", exc_info=True)
        del llm
        gc.collect()
        try:
            import torch
        except ImportError:
            return
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _classify(self, exc: BaseException, batch_size: int, during: str) -> Exception:
        if is_oom(exc):
            # Not `recovered`: CUDA memory the failed executor took may stay with this process, so
            # the host starts a fresh one rather than trusting the shutdown to have freed it all.
            return EngineOOM(
                f"TensorRT-LLM ran out of GPU memory at batch size {batch_size} while {during}: {first_line(exc)}.",
                recovered=False,
            )
        return EngineFailure(f"TensorRT-LLM failed while {during}: {first_line(exc)}.")

    # ---- one point -------------------------------------------------------------------------

    def _prompt_input(self, prompt: Prompt) -> str | list[int]:
        if self._has_tokenizer and prompt.text:
            return prompt.text
        ids = prompt.token_ids
        if ids and (self._vocab_size is None or max(ids) < self._vocab_size):
            return list(ids)
        return synthetic_token_ids(prompt.input_tokens, self._vocab_size, prompt_seed(self.spec.seed, prompt))

    def _params(self, max_tokens: int) -> Any:
        return self._trt.SamplingParams(
            max_tokens=max_tokens,
            ignore_eos=True,
            end_id=-1,
            pad_id=-1,
            return_perf_metrics=True,
            detokenize=False,  # text is not needed, and detokenizing would add host work to the window
        )

    async def _point(self, plan: PointPlan, rebuilt: bool) -> tuple[EngineRun, bool]:
        self._emit(PhaseUpdate(Phase.WARMUP, "one short request before the window"))
        warm = self._llm.generate_async(
            synthetic_token_ids(16, self._vocab_size, f"{self.spec.seed}:warmup"),
            sampling_params=self._params(WARMUP_OUTPUT_TOKENS),
            streaming=True,
        )
        async for _ in warm:
            pass
        inputs: dict[str, Any] = {}
        outputs: dict[int, Any] = {}  # request index -> its finished output (perf metrics)
        aborts = 0

        async def send(request: StreamedRequest, on_chunk: OnChunk) -> None:
            nonlocal aborts
            prompt = request.prompt
            assert prompt is not None
            if prompt.prompt_id not in inputs:
                inputs[prompt.prompt_id] = self._prompt_input(prompt)
            x = inputs[prompt.prompt_id]
            result = self._llm.generate_async(x, sampling_params=self._params(prompt.output_tokens), streaming=True)
            request.exact_chunks = True  # a step's tokens are the growth of the request's token ids
            seen = 0
            try:
                async for partial in result:
                    n = len(partial.outputs[0].token_ids) if partial.outputs else 0
                    if n > seen:
                        now = time.perf_counter()
                        request.add_chunk(now, n - seen)
                        seen = n
                        on_chunk(request, now, request.chunk_tokens[-1])
            except asyncio.CancelledError:
                # the window closed: free the slot in the executor too
                abort = getattr(result, "abort", None)
                if abort is not None:
                    abort()
                    aborts += 1
                raise
            request.end_perf = time.perf_counter()
            prompt_ids = getattr(result, "prompt_token_ids", None)
            request.reported_input_tokens = len(prompt_ids) if prompt_ids else (len(x) if isinstance(x, list) else None)
            request.finished = True
            outputs[request.index] = result

        point = StreamPoint(plan, self._emit, send)
        await point.run()
        if not point.started:
            raise EngineFailure("TensorRT-LLM made no token during the point.")
        finished = [outputs[r.index] for r in point.started if r.index in outputs]
        concurrency, how = self._concurrency(finished) if finished else (None, "")
        notes = self._notes(plan, point, inputs, rebuilt, how if concurrency is not None else "", aborts)
        steady_run, steady = point.result(notes)
        if concurrency is None:
            return steady_run, steady
        # the scheduler's own count where the engine reports it; requests cut off at the close
        # carry no metrics, so the streaming count (which sees them) is a floor for it
        reached = max(concurrency, steady_run.concurrency_reached or 0)
        return dataclasses.replace(steady_run, concurrency_reached=reached), steady

    def _notes(self, plan: PointPlan, point: StreamPoint, inputs: dict[str, Any], rebuilt: bool,
               how: str, aborts: int) -> list[str]:
        notes = []
        if rebuilt:
            notes.append(f"the executor was created with max_batch_size={plan.batch_size} before the window")
        notes.append("TTFT and end-to-end times are streaming timestamps taken by carbontop")
        if how:
            notes.append(f"concurrency reached is counted from {how}")
        else:
            notes.append("the requests carried no scheduling metrics, so the concurrency reached is "
                         "counted from the streaming timestamps")
        cut = sum(not r.finished for r in point.started)
        if cut and not aborts:
            notes.append("this TensorRT-LLM has no RequestOutput.abort(): requests cut off at the window's "
                         "close ran on in the executor, outside the window")
        synthetic = sum(1 for p in plan.prompts if isinstance(inputs.get(p.prompt_id), list) and not p.token_ids)
        if synthetic:
            notes.append(f"{synthetic} prompts were sent as deterministic token ids of their exact input length")
        finished = [r for r in point.started if r.finished and r.prompt is not None]
        short = sum(r.output_tokens() < r.prompt.output_tokens for r in finished)  # type: ignore[union-attr]
        if short:
            notes.append(f"{short} of {len(finished)} answers were shorter than their reference length")
        return notes

    @staticmethod
    def _concurrency(outputs: list[Any]) -> tuple[int | None, str]:
        """Most requests in flight at once: from scheduler iterations, else from engine times."""
        metrics = [getattr(o.outputs[0], "request_perf_metrics", None) if o.outputs else None for o in outputs]
        iters = [(getattr(m, "first_iter", None), getattr(m, "last_iter", None)) for m in metrics]
        if iters and all(isinstance(a, int) and isinstance(b, int) for a, b in iters):
            return max_overlap(iters, inclusive=True), "each request's first and last scheduler iteration"
        spans = []
        for m in metrics:
            timing = getattr(m, "timing_metrics", None)
            start = _seconds(getattr(timing, "first_scheduled_time", None))
            end = _seconds(getattr(timing, "last_token_time", None))
            if start is None or end is None:
                return None, ""
            spans.append((start, end))
        return max_overlap(spans, inclusive=False), "each request's first-scheduled and last-token times"
