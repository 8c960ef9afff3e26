"""The TensorRT-LLM engine against a fake `tensorrt_llm` that behaves as its documentation says.

TensorRT-LLM needs an NVIDIA GPU and is not installed here, so these tests put a stand-in module
into sys.modules (inside the tests only). It has the documented surface of the 1.x LLM API:
`LLM(model, skip_tokenizer_init=..., tensor_parallel_size=..., dtype=..., **llm_args)` with strict
arguments, `SamplingParams` (a keyword-only dataclass), `llmapi.KvCacheConfig`,
`generate_async(inputs, sampling_params=..., streaming=...)` returning a result one awaits with
`aresult()` or iterates when streaming, `outputs[0].token_ids` and
`outputs[0].request_perf_metrics` (`first_iter`, `last_iter`, `timing_metrics` with timedeltas).
Its executor is a small in-flight batching scheduler: each iteration admits waiting requests up
to min(max_batch_size, the sequences its KV cache holds) and gives every running request a token.
"""

from __future__ import annotations

import asyncio
import json
import sys
import types
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from carbontop.core.records import Prompt
from carbontop.engines.base import EngineFailure, EngineKVBound, EngineNote, EngineOOM, EngineSpec
from carbontop.engines.trtllm import (
    INSTALL_SENTENCE,
    TRTLLMEngine,
    is_oom,
    max_overlap,
    synthetic_token_ids,
)
from carbontop.errors import CarbontopError, EngineUnavailable

DT_S = 0.01  # one scheduler iteration of the fake executor
CLOCK_BASE_S = 1000.0  # the executor's steady clock does not start at the Unix epoch


# ---- the fake library -------------------------------------------------------------------------


@dataclass
class World:
    """What the fake library does in one test, and what it saw."""

    kv_sequences: int | None = None  # sequences the pre-allocated KV cache holds; None: unlimited
    oom_at_batch: int | None = None  # executor creation fails from this max_batch_size up
    request_error: BaseException | None = None  # raised by every request after the first (warm-up)
    perf_metrics: bool = True
    created: list[Any] = field(default_factory=list)
    submitted: list[tuple[Any, Any, bool]] = field(default_factory=list)


class SamplingParams:
    """Keyword-only, like the real dataclass; unknown names fail."""

    _FIELDS = {
        "end_id": None, "pad_id": None, "max_tokens": 32, "min_tokens": None, "ignore_eos": False,
        "temperature": None, "top_k": None, "top_p": None, "return_perf_metrics": False,
        "detokenize": True, "n": 1,
    }

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(self._FIELDS)
        if unknown:
            raise TypeError(f"SamplingParams.__init__() got an unexpected keyword argument {unknown.pop()!r}")
        for name, default in self._FIELDS.items():
            setattr(self, name, kwargs.get(name, default))


class KvCacheConfig:
    """Strict like the real pydantic model (extra="forbid")."""

    _FIELDS = {"enable_block_reuse": True, "max_tokens": None, "free_gpu_memory_fraction": None, "dtype": "auto"}

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(self._FIELDS)
        if unknown:
            raise ValueError(f"1 validation error for KvCacheConfig\n{unknown.pop()}\n  Extra inputs are not permitted")
        for name, default in self._FIELDS.items():
            setattr(self, name, kwargs.get(name, default))


_LLM_ARGS = {
    "max_batch_size", "max_num_tokens", "max_seq_len", "max_input_len", "max_beam_width",
    "kv_cache_config", "load_format", "enable_chunked_prefill", "pipeline_parallel_size",
}


def _td(iterations: float) -> timedelta:
    return timedelta(seconds=CLOCK_BASE_S + iterations * DT_S)


class FakeResult:
    def __init__(self, llm: FakeLLM, prompt_ids: list[int], params: SamplingParams, streaming: bool, index: int):
        self._llm, self.prompt_token_ids, self.params = llm, prompt_ids, params
        self.streaming, self.index = streaming, index
        self.outputs = [types.SimpleNamespace(token_ids=[], request_perf_metrics=None)]
        self.finished = False
        self.final_ids: list[int] = []
        self.metrics: Any = None

    def _finish(self) -> None:
        self._llm.simulate()
        world = self._llm.world
        if world.request_error is not None and self.index > 0:
            raise world.request_error
        self.outputs[0].token_ids = list(self.final_ids)
        self.outputs[0].request_perf_metrics = self.metrics
        self.finished = True

    async def aresult(self) -> FakeResult:
        await asyncio.sleep(0)
        self._finish()
        return self

    def __aiter__(self) -> FakeResult:
        self._step = 0
        return self

    async def __anext__(self) -> FakeResult:
        if self.finished:
            raise StopAsyncIteration
        await asyncio.sleep(0.001)
        self._llm.simulate()
        self._step += 1
        if self._step >= len(self.final_ids):
            self._finish()
        else:
            self.outputs[0].token_ids = self.final_ids[: self._step]
        return self


class FakeLLM:
    def __init__(self, model: str, tokenizer: Any = None, skip_tokenizer_init: bool = False,
                 tensor_parallel_size: int = 1, dtype: str = "auto", **kwargs: Any) -> None:
        unknown = set(kwargs) - _LLM_ARGS
        if unknown:
            raise ValueError(f"1 validation error for TorchLlmArgs\n{unknown.pop()}\n  Extra inputs are not permitted")
        assert kwargs.get("load_format", "auto") in ("auto", "dummy")
        self.world: World = FakeLLM.world
        self.model, self.skip_tokenizer_init = model, skip_tokenizer_init
        self.tensor_parallel_size, self.dtype, self.kwargs = tensor_parallel_size, dtype, kwargs
        self.max_batch_size = kwargs.get("max_batch_size") or 2048
        if self.world.oom_at_batch is not None and self.max_batch_size >= self.world.oom_at_batch:
            raise RuntimeError(
                "Executor creation failed due to insufficient GPU memory (available: 2.1 GiB, required: 9.6 GiB).\n"
                "  #0 tensorrt_llm::executor::Executor::Executor"
            )
        if Path(model).is_dir():  # it reads the architecture from the folder's config.json
            self.config = json.loads((Path(model) / "config.json").read_text())
        self.closed = False
        self.iteration = 0
        self.pending: list[FakeResult] = []
        self.world.created.append(self)

    def generate_async(self, inputs: Any, sampling_params: SamplingParams | None = None,
                       streaming: bool = False) -> FakeResult:
        assert not self.closed
        if isinstance(inputs, str):
            if self.skip_tokenizer_init:
                raise ValueError("tokenizer is required to process text prompts")
            prompt_ids = [5] * len(inputs.split())
        else:
            prompt_ids = list(inputs)
        if sampling_params is None or (sampling_params.end_id is None and self.skip_tokenizer_init):
            raise ValueError("tokenizer is required to reset end_id if it is None")
        self.world.submitted.append((inputs, sampling_params, streaming))
        result = FakeResult(self, prompt_ids, sampling_params, streaming, len(self.world.submitted) - 1)
        self.pending.append(result)
        return result

    def simulate(self) -> None:
        """In-flight batching over everything submitted so far, from the current iteration on."""
        if not self.pending:
            return
        capacity = min(self.max_batch_size, self.world.kv_sequences or 10**9)
        waiting, running, arrival = list(self.pending), [], self.iteration
        self.pending = []
        k = self.iteration
        while waiting or running:
            running = [(r, first, last) for r, first, last in running if last >= k]
            while waiting and len(running) < capacity:
                r = waiting.pop(0)
                n = r.params.max_tokens if r.params.ignore_eos else max(1, r.params.max_tokens // 2)
                running.append((r, k, k + n - 1))
                r.final_ids = [7] * n
                r.metrics = (
                    types.SimpleNamespace(
                        first_iter=k, last_iter=k + n - 1, iter=k + n - 1,
                        timing_metrics=types.SimpleNamespace(
                            arrival_time=_td(arrival), first_scheduled_time=_td(k),
                            first_token_time=_td(k + 1), last_token_time=_td(k + n),
                        ),
                    )
                    if self.world.perf_metrics
                    else None
                )
            k += 1
        self.iteration = k - 1

    def shutdown(self) -> None:
        self.closed = True


class OutOfMemoryError(RuntimeError):
    """Stands for torch.OutOfMemoryError, as raised from the executor's worker."""


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    w = World()
    FakeLLM.world = w
    trt = types.ModuleType("tensorrt_llm")
    trt.__path__ = []  # a package, so that tensorrt_llm.llmapi imports
    trt.__version__ = "1.2.0"
    llmapi = types.ModuleType("tensorrt_llm.llmapi")
    for mod in (trt, llmapi):
        mod.LLM, mod.SamplingParams = FakeLLM, SamplingParams
    llmapi.KvCacheConfig = KvCacheConfig
    trt.llmapi = llmapi
    monkeypatch.setitem(sys.modules, "tensorrt_llm", trt)
    monkeypatch.setitem(sys.modules, "tensorrt_llm.llmapi", llmapi)
    return w


class Events(list):
    def __call__(self, note: EngineNote) -> None:
        self.append(note)


LLAMA_PRESET = {"model_type": "llama", "vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "max_position_embeddings": 512}


def make_spec(**changes: Any) -> EngineSpec:
    base: dict[str, Any] = dict(
        engine="trtllm", model="tiny-llama", model_config=LLAMA_PRESET, model_path=None, weights="dummy",
        dtype="bf16", device="cuda", gpus=(0,), kv_cache_fraction=0.5, max_input_len=64,
        max_output_len=32, seed=3,
    )
    base.update(changes)
    return EngineSpec(**base)


def prompts(outputs: list[int], first_input: int = 5) -> list[Prompt]:
    return [Prompt(f"p{i}", first_input + i, n) for i, n in enumerate(outputs)]


def loaded(spec: EngineSpec | None = None) -> TRTLLMEngine:
    engine = TRTLLMEngine(spec or make_spec(), Events())
    engine.load()
    return engine


# ---- tests ------------------------------------------------------------------------------------


def test_missing_library_gives_the_install_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # makes `import tensorrt_llm` fail
    with pytest.raises(EngineUnavailable) as err:
        TRTLLMEngine(make_spec(), Events()).load()
    assert isinstance(err.value, CarbontopError)
    assert str(err.value) == INSTALL_SENTENCE
    assert "pip install 'carbontop[trtllm]'" in INSTALL_SENTENCE and INSTALL_SENTENCE.count(".") == 1


def test_needs_a_gpu(world: World) -> None:
    with pytest.raises(EngineUnavailable, match="runs only on an NVIDIA GPU"):
        TRTLLMEngine(make_spec(device="cpu"), Events()).load()


def test_a_point_maps_onto_the_llm_api(world: World) -> None:
    engine = TRTLLMEngine(make_spec(), Events())
    facts = engine.load()
    assert facts["tensorrt_llm_version"] == "1.2.0" and facts["load_format"] == "dummy"
    assert facts["tokenizer"] is False and facts["kv_block_reuse"] is False

    run = engine.run_point(2, prompts([3, 2, 4, 1]))

    (llm,) = world.created
    assert llm.kwargs["max_batch_size"] == 2
    assert llm.kwargs["max_seq_len"] == 64 + 32
    assert llm.kwargs["load_format"] == "dummy"
    assert llm.kwargs["kv_cache_config"].free_gpu_memory_fraction == 0.5
    assert llm.kwargs["kv_cache_config"].enable_block_reuse is False
    assert llm.skip_tokenizer_init is True and llm.dtype == "bfloat16" and llm.tensor_parallel_size == 1
    # a preset has no folder: TensorRT-LLM got a config.json naming the architecture
    assert llm.config["architectures"] == ["LlamaForCausalLM"] and llm.config["vocab_size"] == 1000

    warm, *measured = world.submitted
    assert warm[1].max_tokens == 4
    assert [p.max_tokens for _, p, _ in measured] == [3, 2, 4, 1]
    for inputs, params, streaming in measured:
        assert params.ignore_eos is True and params.end_id == -1 and params.return_perf_metrics is True
        assert params.detokenize is False and streaming is False
        assert all(isinstance(t, int) and 0 <= t < 1000 for t in inputs)
    assert [len(inputs) for inputs, _, _ in measured] == [5, 6, 7, 8]

    # By hand: the warm-up takes iterations 0-3; the four requests arrive at iteration 4 and two
    # run at once: p0 in 4-6, p1 in 4-5, p2 in 6-9 (after p1), p3 in 7-7 (after p0). A token comes
    # out at the end of its iteration, so TTFT = first + 1 - 4 and end-to-end = last + 1 - 4
    # iterations of 10 ms.
    expected = [(1, 3), (1, 2), (3, 6), (4, 4)]
    for rec, (ttft_it, e2e_it) in zip(run.records, expected, strict=True):
        assert rec.ttft_s == pytest.approx(ttft_it * DT_S)
        assert rec.e2e_s == pytest.approx(e2e_it * DT_S)
        assert rec.batch_index == -1 and rec.batch_size == 2
    assert [r.output_tokens for r in run.records] == [3, 2, 4, 1]
    assert [r.input_tokens for r in run.records] == [5, 6, 7, 8]
    assert run.concurrency_reached == 2
    assert run.window_start_s == run.records[0].start_s <= run.window_end_s
    assert "TTFT and end-to-end times are TensorRT-LLM's per-request timing metrics" in run.notes
    assert any("first and last scheduler iteration" in n for n in run.notes)
    assert any("deterministic token ids of their exact input length" in n for n in run.notes)


@pytest.mark.parametrize(("scheme", "algo"), [("int4-wo", "W4A16"), ("int8-wo", "W8A16")])
def test_quant_maps_onto_weight_only_algorithms(world: World, scheme: str, algo: str) -> None:
    engine = TRTLLMEngine(make_spec(quant=scheme), Events())
    facts = engine.load()
    assert facts["quant_algo"] == algo
    engine.run_point(1, prompts([2]))
    (llm,) = world.created
    written = json.loads((Path(engine._model_source) / "hf_quant_config.json").read_text())
    assert written["quantization"]["quant_algo"] == algo
    engine.close()


def test_quant_with_random_weights_leaves_the_folder_alone(world: World, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_PRESET))
    spec = make_spec(model=str(tmp_path), model_path=str(tmp_path), quant="int8-wo")
    engine = TRTLLMEngine(spec, Events())
    engine.load()
    assert not (tmp_path / "hf_quant_config.json").exists()
    assert (Path(engine._model_source) / "hf_quant_config.json").exists()
    engine.close()


def test_quant_on_a_folder_without_a_quantised_checkpoint_is_refused(world: World, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_PRESET))
    spec = make_spec(model=str(tmp_path), model_path=str(tmp_path), weights="auto", quant="int4-wo")
    with pytest.raises(EngineUnavailable, match="hf_quant_config.json"):
        TRTLLMEngine(spec, Events()).load()


def test_the_executor_is_rebuilt_only_when_the_batch_size_changes(world: World) -> None:
    engine = loaded()
    engine.run_point(1, prompts([2, 2]))
    engine.run_point(2, prompts([2, 2]))
    run = engine.run_point(2, prompts([2, 2]))
    assert [llm.kwargs["max_batch_size"] for llm in world.created] == [1, 2]
    assert world.created[0].closed and not world.created[1].closed
    assert not any("was created" in n for n in run.notes)
    engine.close()
    assert world.created[1].closed


def test_fewer_in_flight_than_asked_is_kv_bound(world: World) -> None:
    world.kv_sequences = 3
    engine = loaded()
    with pytest.raises(EngineKVBound) as err:
        engine.run_point(4, prompts([4, 4, 4, 4, 4, 4]))
    assert err.value.concurrency_reached == 3
    assert str(err.value) == (
        "TensorRT-LLM kept at most 3 requests in flight of the 4 asked, because its KV cache "
        "(or token budget) could not hold more at once."
    )
    assert len(err.value.run.records) == 6
    # with as many prompts as the cache holds, the same engine is not bound
    assert engine.run_point(3, prompts([4, 4, 4])).concurrency_reached == 3


def test_more_batch_than_prompts_is_not_kv_bound(world: World) -> None:
    run = loaded().run_point(8, prompts([2, 3, 2]))
    assert run.concurrency_reached == 3


def test_executor_creation_out_of_memory_is_an_oom_and_the_next_point_runs(world: World) -> None:
    world.oom_at_batch = 8
    engine = loaded()
    with pytest.raises(EngineOOM) as err:
        engine.run_point(8, prompts([2, 2]))
    assert str(err.value) == (
        "TensorRT-LLM ran out of GPU memory at batch size 8 while creating its executor: Executor creation "
        "failed due to insufficient GPU memory (available: 2.1 GiB, required: 9.6 GiB)."
    )
    assert err.value.recovered is False  # the host replaces the process; this one can still go on
    assert engine.run_point(4, prompts([2, 2])).concurrency_reached == 2


def _wrapped_oom() -> BaseException:
    try:
        try:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        except OutOfMemoryError as inner:
            raise RuntimeError("Request 12 failed in the executor worker") from inner
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("[TensorRT-LLM][ERROR] CUDA runtime error in cudaMallocAsync(ptr, n, stream): out of memory "
                     "(/src/cpp/tensorrt_llm/runtime/bufferManager.cpp:211)"),
        OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB. GPU 0 has a total capacity of 79.1 GiB"),
        _wrapped_oom(),
    ],
    ids=["cudaMallocAsync", "torch-oom", "oom-as-cause"],
)
def test_out_of_memory_during_generation_is_an_oom(world: World, error: BaseException) -> None:
    world.request_error = error
    engine = loaded()
    with pytest.raises(EngineOOM, match="ran out of GPU memory at batch size 2 while generating"):
        engine.run_point(2, prompts([3, 3]))
    assert world.created[-1].closed  # the broken executor was shut down; the next point builds anew


def test_other_errors_are_failures_and_the_next_point_rebuilds(world: World) -> None:
    world.request_error = RuntimeError("Encountered an error in forward function: shape mismatch\n  at line 3")
    engine = loaded()
    with pytest.raises(EngineFailure) as err:
        engine.run_point(2, prompts([3, 3]))
    assert str(err.value) == (
        "TensorRT-LLM failed while generating: Encountered an error in forward function: shape mismatch."
    )
    world.request_error = None
    engine.run_point(2, prompts([3, 3]))
    assert len(world.created) == 2


def test_without_perf_metrics_times_come_from_streaming(world: World) -> None:
    world.perf_metrics = False
    run = loaded().run_point(2, prompts([3, 2, 4]))
    assert all(streaming for _, _, streaming in world.submitted[1:])  # the warm-up found no metrics
    assert all(0 < r.ttft_s <= r.e2e_s for r in run.records)
    assert [r.output_tokens for r in run.records] == [3, 2, 4]
    assert run.concurrency_reached is None
    assert any("streaming timestamps" in n and "no per-request timing metrics" in n for n in run.notes)
    assert any("concurrency reached is unknown" in n for n in run.notes)


def test_a_model_folder_with_a_tokenizer_gets_text(world: World, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA_PRESET, "architectures": ["LlamaForCausalLM"]}))
    (tmp_path / "tokenizer.json").write_text("{}")
    engine = loaded(make_spec(model=str(tmp_path), model_path=str(tmp_path), weights="auto", gpus=(0, 1)))
    texts = [Prompt("a", 3, 2, text="one two three"), Prompt("b", 2, 2, token_ids=(4000, 5))]
    engine.run_point(2, texts)
    llm = world.created[0]
    assert llm.model == str(tmp_path) and llm.skip_tokenizer_init is False
    assert llm.kwargs["load_format"] == "auto" and llm.tensor_parallel_size == 2
    measured = [inputs for inputs, _, _ in world.submitted[1:]]
    assert measured[0] == "one two three"
    # token ids outside this model's vocabulary are replaced by synthetic ones of the same length
    assert measured[1] == synthetic_token_ids(2, 1000, "3:b")


def test_a_preset_without_architecture_is_a_clear_failure(world: World) -> None:
    with pytest.raises(EngineFailure, match="names neither an architecture nor a known model_type"):
        loaded(make_spec(model_config={"model_type": "mystery", "vocab_size": 10}))


def test_helpers_by_hand() -> None:
    # inclusive iteration ranges: [0,2] and [2,4] share iteration 2; [3,3] joins [2,4] only
    assert max_overlap([(0, 2), (2, 4), (3, 3)], inclusive=True) == 2
    assert max_overlap([(0, 2), (2, 4)], inclusive=False) == 1  # one ends as the other starts
    assert max_overlap([], inclusive=True) == 0
    ids = synthetic_token_ids(10, 32000, "0:x")
    assert len(ids) == 10 and all(100 <= t < 28800 for t in ids) and ids == synthetic_token_ids(10, 32000, "0:x")
    assert is_oom(RuntimeError("Executor creation failed due to insufficient GPU memory"))
    assert not is_oom(RuntimeError("shape mismatch"))


# ---- the real library, on a GPU ---------------------------------------------------------------


@pytest.mark.gpu
def test_real_tensorrt_llm_runs_a_point() -> None:
    """The same engine with the real TensorRT-LLM: a 2-layer Llama preset on dummy weights."""
    pytest.importorskip("tensorrt_llm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    preset = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 32000,
        "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 4, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
    }
    engine = TRTLLMEngine(make_spec(model_config=preset, kv_cache_fraction=0.2), Events())
    facts = engine.load()
    assert facts["tensorrt_llm_version"].startswith("1.")
    try:
        for batch_size in (1, 4):
            run = engine.run_point(batch_size, prompts([8] * 8, first_input=16))
            assert [r.output_tokens for r in run.records] == [8] * 8
            assert [r.input_tokens for r in run.records] == list(range(16, 24))
            assert all(0 < r.ttft_s < r.e2e_s for r in run.records)
            assert run.concurrency_reached == batch_size
    finally:
        engine.close()
