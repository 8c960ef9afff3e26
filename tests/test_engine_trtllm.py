"""The TensorRT-LLM engine against a fake `tensorrt_llm` that behaves as its documentation says.

TensorRT-LLM needs an NVIDIA GPU and is not installed here, so these tests put a stand-in module
into sys.modules (inside the tests only). It has the documented surface of the 1.x LLM API:
`LLM(model, skip_tokenizer_init=..., tensor_parallel_size=..., dtype=..., **llm_args)` with strict
arguments, `SamplingParams` (a keyword-only dataclass), `llmapi.KvCacheConfig`,
`generate_async(inputs, sampling_params=..., streaming=...)` returning a result one awaits with
`aresult()` or iterates when streaming, `outputs[0].token_ids` and
`outputs[0].request_perf_metrics` (`first_iter`, `last_iter`, `timing_metrics` with timedeltas).
Its executor is a small in-flight batching scheduler running in real time on the caller's event
loop: every DT_S it admits waiting requests up to min(max_batch_size, the sequences its KV cache
holds) and gives every running request a token; a streaming result yields once per token, and
`abort()` (absent where World.has_abort is False, as in builds without it) frees the slot.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import types
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from carbontop.core.records import Batching, EngineRun, PointPlan, Prompt
from carbontop.core.synthetic import synthetic_token_ids
from carbontop.core.window import steady_window, tokens_between
from carbontop.engines.base import EngineFailure, EngineKVBound, EngineNote, EngineOOM, EngineSpec
from carbontop.engines.trtllm import (
    INSTALL_SENTENCE,
    TRTLLMEngine,
    is_oom,
    max_overlap,
)
from carbontop.errors import CarbontopError, EngineUnavailable

DT_S = 0.002  # one scheduler iteration of the fake executor, in real time
CLOCK_BASE_S = 1000.0  # the executor's steady clock does not start at the Unix epoch


# ---- the fake library -------------------------------------------------------------------------


@dataclass
class World:
    """What the fake library does in one test, and what it saw."""

    kv_sequences: int | None = None  # sequences the pre-allocated KV cache holds; None: unlimited
    oom_at_batch: int | None = None  # executor creation fails from this max_batch_size up
    request_error: BaseException | None = None  # raised by every request after the first (warm-up)
    perf_metrics: bool = True
    has_abort: bool = True
    created: list[Any] = field(default_factory=list)
    submitted: list[tuple[Any, Any, bool]] = field(default_factory=list)
    aborted: list[int] = field(default_factory=list)  # submission indices
    max_running: int = 0


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
    """A request in the fake executor: awaited with aresult(), or iterated when streaming (one
    partial output per iteration that gave it a token), aborted with abort()."""

    def __init__(self, llm: FakeLLM, prompt_ids: list[int], params: SamplingParams, streaming: bool, index: int):
        self._llm, self.prompt_token_ids, self.params = llm, prompt_ids, params
        self.streaming, self.index = streaming, index
        self.outputs = [types.SimpleNamespace(token_ids=[], request_perf_metrics=None)]
        self.finished = False
        self.error: BaseException | None = None
        self.n_target = params.max_tokens if params.ignore_eos else max(1, params.max_tokens // 2)
        self.arrival = llm.iteration
        self.first_iter: int | None = None
        self._changed = asyncio.Event()
        self._yielded = 0
        if llm.world.has_abort:
            self.abort = self._abort

    def step(self, k: int) -> None:
        """Iteration k gave this request a token (the first one comes with its prefill)."""
        if self.first_iter is None:
            self.first_iter = k
        world = self._llm.world
        if world.request_error is not None and self.index > 0:
            self.error, self.finished = world.request_error, True
        else:
            self.outputs[0].token_ids = self.outputs[0].token_ids + [7]
            if len(self.outputs[0].token_ids) >= self.n_target:
                self.finished = True
                if world.perf_metrics:
                    self.outputs[0].request_perf_metrics = types.SimpleNamespace(
                        first_iter=self.first_iter, last_iter=k, iter=k,
                        timing_metrics=types.SimpleNamespace(
                            arrival_time=_td(self.arrival), first_scheduled_time=_td(self.first_iter),
                            first_token_time=_td(self.first_iter + 1), last_token_time=_td(k + 1),
                        ),
                    )
        self._changed.set()

    def _abort(self) -> None:
        self._llm.world.aborted.append(self.index)
        self._llm.drop(self)
        self.finished = True
        self._changed.set()

    async def aresult(self) -> FakeResult:
        while not self.finished:
            self._changed.clear()
            await self._changed.wait()
        if self.error is not None:
            raise self.error
        return self

    def __aiter__(self) -> FakeResult:
        return self

    async def __anext__(self) -> FakeResult:
        while True:
            if self.error is not None:
                raise self.error
            if len(self.outputs[0].token_ids) > self._yielded:
                self._yielded = len(self.outputs[0].token_ids)
                return self
            if self.finished:
                raise StopAsyncIteration
            self._changed.clear()
            await self._changed.wait()


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
        self.waiting: list[FakeResult] = []
        self.running: list[FakeResult] = []
        self._task: asyncio.Task[None] | None = None
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
        self.waiting.append(result)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._executor())
        return result

    def drop(self, result: FakeResult) -> None:
        for queue in (self.waiting, self.running):
            if result in queue:
                queue.remove(result)

    async def _executor(self) -> None:
        """In-flight batching in real time: every DT_S, admit waiting requests up to
        min(max_batch_size, the sequences the KV cache holds), and give each running one a token."""
        capacity = min(self.max_batch_size, self.world.kv_sequences or 10**9)
        while self.waiting or self.running:
            await asyncio.sleep(DT_S)
            k = self.iteration
            self.iteration += 1
            while self.waiting and len(self.running) < capacity:
                self.running.append(self.waiting.pop(0))
            self.world.max_running = max(self.world.max_running, len(self.running))
            for result in list(self.running):
                result.step(k)
                if result.finished:
                    self.running.remove(result)

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


def plan(batch_size: int, stream: list[Prompt], *, min_window_s: float = 0.05, max_point_s: float = 10.0,
         batching: Batching = Batching.INFLIGHT) -> PointPlan:
    return PointPlan(batch_size=batch_size, batching=batching, prompts=tuple(stream),
                     min_window_s=min_window_s, max_point_s=max_point_s)


def check_run(run: EngineRun) -> None:
    """The window is the records' own and the timeline adds up to the records' tokens."""
    window = steady_window(run.records, run.batch_size, run.batching)
    assert window is not None
    assert (run.window_start_s, run.window_end_s) == (window.start_s, window.end_s)
    assert run.timeline is not None and run.timeline.slots == run.batch_size
    assert sum(run.timeline.tokens) == sum(r.output_tokens for r in run.records)
    assert all(1 <= live <= run.batch_size for live in run.timeline.live)
    inside = tokens_between(window.start_s, window.end_s, run.timeline, run.records)
    assert 0 < inside <= sum(run.timeline.tokens)


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

    stream = prompts([3, 2, 4, 1])
    run = engine.run_point(plan(2, stream, min_window_s=0.05))

    (llm,) = world.created
    assert llm.kwargs["max_batch_size"] == 2  # the in-flight limit
    assert llm.kwargs["max_seq_len"] == 64 + 32
    assert llm.kwargs["load_format"] == "dummy"
    assert llm.kwargs["kv_cache_config"].free_gpu_memory_fraction == 0.5
    assert llm.kwargs["kv_cache_config"].enable_block_reuse is False
    assert llm.skip_tokenizer_init is True and llm.dtype == "bfloat16" and llm.tensor_parallel_size == 1
    # a preset has no folder: TensorRT-LLM got a config.json naming the architecture
    assert llm.config["architectures"] == ["LlamaForCausalLM"] and llm.config["vocab_size"] == 1000

    warm, *measured = world.submitted
    assert warm[1].max_tokens == 4
    for k, (inputs, params, streaming) in enumerate(measured):
        assert params.max_tokens == stream[k % 4].output_tokens  # the stream, wrapped around
        assert params.ignore_eos is True and params.end_id == -1 and params.return_perf_metrics is True
        assert params.detokenize is False and streaming is True
        assert all(isinstance(t, int) and 0 <= t < 1000 for t in inputs)
        assert len(inputs) == 5 + k % 4
    assert len(measured) > 4

    check_run(run)
    assert run.batching is Batching.INFLIGHT
    assert world.max_running == 2 and run.concurrency_reached == 2
    for rec in run.records:
        assert rec.batch_index == -1 and rec.batch_size == 2
        assert rec.input_tokens == 5 + rec.request_index % 4
        expected = stream[rec.request_index % 4].output_tokens
        assert rec.output_tokens == expected if rec.finished else 0 < rec.output_tokens < expected
        assert 0 < rec.ttft_s <= rec.e2e_s
    assert run.window_end_s - run.window_start_s >= 0.05
    assert "TTFT and end-to-end times are streaming timestamps taken by carbontop" in run.notes
    assert any("first and last scheduler iteration" in n for n in run.notes)
    assert any("deterministic token ids of their exact input length" in n for n in run.notes)


def test_the_window_close_aborts_what_still_runs(world: World) -> None:
    # one long request (300 tokens, 0.6 s) beside short ones: the window closes at a short one's
    # end once it has lasted 0.05 s, and the long one is aborted there
    stream = [Prompt("long", 5, 300)] + prompts([3] * 20)
    engine = loaded()
    run = engine.run_point(plan(2, stream, min_window_s=0.05))
    check_run(run)
    long = next(r for r in run.records if r.request_index == 0)
    assert not long.finished and 0 < long.output_tokens < 300
    assert world.aborted == [1]  # the long request's submission (the warm-up was 0)
    assert run.window_end_s == max(r.start_s + r.e2e_s for r in run.records if r.finished)
    assert any("were cancelled" in n for n in run.notes)
    assert not world.created[0].running and not world.created[0].waiting  # the slot was freed


def test_static_batches_run_whole(world: World) -> None:
    stream = prompts([6, 2, 4])
    run = loaded().run_point(plan(2, stream, min_window_s=0.03, batching=Batching.STATIC))
    check_run(run)
    batches: dict[int, list] = {}
    for rec in run.records:
        batches.setdefault(rec.batch_index, []).append(rec)
    assert len(batches) >= 2 and all(len(b) == 2 for b in batches.values())
    assert all(r.finished for r in run.records) and not world.aborted
    for k in range(1, len(batches)):  # the next batch only once the whole last one has ended
        assert min(r.start_s for r in batches[k]) >= max(r.start_s + r.e2e_s for r in batches[k - 1])
    assert run.window_start_s == min(r.start_s for r in run.records)
    assert run.window_end_s == max(r.start_s + r.e2e_s for r in run.records)


@pytest.mark.parametrize(("scheme", "algo"), [("int4-wo", "W4A16"), ("int8-wo", "W8A16")])
def test_quant_maps_onto_weight_only_algorithms(world: World, scheme: str, algo: str) -> None:
    engine = TRTLLMEngine(make_spec(quant=scheme), Events())
    facts = engine.load()
    assert facts["quant_algo"] == algo
    engine.run_point(plan(1, prompts([2])))
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
    engine.run_point(plan(1, prompts([2, 2])))
    engine.run_point(plan(2, prompts([2, 2])))
    run = engine.run_point(plan(2, prompts([2, 2])))
    assert [llm.kwargs["max_batch_size"] for llm in world.created] == [1, 2]
    assert world.created[0].closed and not world.created[1].closed
    assert not any("was created" in n for n in run.notes)
    engine.close()
    assert world.created[1].closed


def test_fewer_in_flight_than_asked_is_kv_bound(world: World) -> None:
    world.kv_sequences = 3
    engine = loaded()
    started = time.monotonic()
    with pytest.raises(EngineKVBound) as err:
        # 4 in flight never all run: the window never opens, and the cap stops admission
        engine.run_point(plan(4, prompts([4, 4, 4, 4, 4, 4]), min_window_s=5.0, max_point_s=0.1))
    assert time.monotonic() - started < 2.0
    assert err.value.concurrency_reached == 3
    assert str(err.value) == (
        "TensorRT-LLM kept at most 3 requests in flight of the 4 asked, because its KV cache "
        "(or token budget) could not hold more at once."
    )
    assert any("no steady state" in n for n in err.value.run.notes)
    # as many in flight as the cache holds: not bound
    run = engine.run_point(plan(3, prompts([4, 4, 4])))
    check_run(run)
    assert run.concurrency_reached == 3


def test_more_batch_than_prompts_wraps_the_stream(world: World) -> None:
    run = loaded().run_point(plan(8, prompts([2, 3, 2])))
    check_run(run)
    assert run.concurrency_reached == 8 and world.max_running == 8


def test_executor_creation_out_of_memory_is_an_oom_and_the_next_point_runs(world: World) -> None:
    world.oom_at_batch = 8
    engine = loaded()
    with pytest.raises(EngineOOM) as err:
        engine.run_point(plan(8, prompts([2, 2])))
    assert str(err.value) == (
        "TensorRT-LLM ran out of GPU memory at batch size 8 while creating its executor: Executor creation "
        "failed due to insufficient GPU memory (available: 2.1 GiB, required: 9.6 GiB)."
    )
    assert err.value.recovered is False  # the host replaces the process; this one can still go on
    assert engine.run_point(plan(4, prompts([2, 2]))).concurrency_reached == 4


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
        engine.run_point(plan(2, prompts([3, 3])))
    assert world.created[-1].closed  # the broken executor was shut down; the next point builds anew


def test_other_errors_are_failures_and_the_next_point_rebuilds(world: World) -> None:
    world.request_error = RuntimeError("Encountered an error in forward function: shape mismatch\n  at line 3")
    engine = loaded()
    with pytest.raises(EngineFailure) as err:
        engine.run_point(plan(2, prompts([3, 3])))
    assert str(err.value) == (
        "TensorRT-LLM failed while generating: Encountered an error in forward function: shape mismatch."
    )
    world.request_error = None
    engine.run_point(plan(2, prompts([3, 3])))
    assert len(world.created) == 2


def test_without_perf_metrics_concurrency_comes_from_streaming(world: World) -> None:
    world.perf_metrics = False
    run = loaded().run_point(plan(2, prompts([3, 2, 4])))
    check_run(run)
    assert run.concurrency_reached == 2
    assert any("counted from the streaming timestamps" in n for n in run.notes)


def test_without_abort_the_cut_requests_are_said_to_run_on(world: World) -> None:
    world.has_abort = False
    stream = [Prompt("long", 5, 200)] + prompts([3] * 20)
    run = loaded().run_point(plan(2, stream, min_window_s=0.03))
    check_run(run)
    assert not world.aborted
    assert any("has no RequestOutput.abort()" in n for n in run.notes)


def test_a_model_folder_with_a_tokenizer_gets_text(world: World, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA_PRESET, "architectures": ["LlamaForCausalLM"]}))
    (tmp_path / "tokenizer.json").write_text("{}")
    engine = loaded(make_spec(model=str(tmp_path), model_path=str(tmp_path), weights="auto", gpus=(0, 1)))
    texts = [Prompt("a", 3, 2, text="one two three"), Prompt("b", 2, 2, token_ids=(4000, 5))]
    engine.run_point(plan(2, texts))
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
            for batching in (Batching.INFLIGHT, Batching.STATIC):
                run = engine.run_point(plan(batch_size, prompts([8] * 8, first_input=16),
                                            min_window_s=0.5, batching=batching))
                check_run(run)
                assert all(r.output_tokens == 8 for r in run.records if r.finished)
                assert all(r.input_tokens == 16 + r.request_index % 8 for r in run.records)
                assert all(0 < r.ttft_s <= r.e2e_s for r in run.records)
                assert run.concurrency_reached == batch_size
    finally:
        engine.close()
