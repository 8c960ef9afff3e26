"""The built-in engine: stock transformers modules driven by lean decode loops of our own.

A point runs in flight by default (engines/hf_slots.py: b slots, a freed slot refilled at once,
attention over each row's live length); `--batching static` runs the static batches below.

Why not `model.generate`? Its per-step Python (logits processors, stopping criteria, a host sync
to check for finished rows) costs more than a whole decode step of a 7B model on a modern GPU, so
the GPU idles while still drawing power, and carbon per token is overstated. Here:

* the model is the library's own (LlamaForCausalLM, GPT2LMHeadModel, ...), never a copy;
* the KV cache is the library's StaticCache, allocated once per sweep point, so addresses are fixed;
* on CUDA the decode step (forward + greedy pick) is captured once per batch size into a CUDA
  graph -- optionally after torch.compile fuses its small kernels -- and replayed every step; the
  capture happens in the warm-up, outside the measured window;
* per-step timestamps come from CUDA events, so the loop never waits for the GPU mid-batch.

Static batching as in the paper (this module): each batch of b requests is left-padded to its longest prompt and
runs until its longest output is done; every request is timed to its own last token.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from carbontop.core.records import (
    Batching,
    EngineRun,
    PointPlan,
    Prompt,
    RequestRecord,
    StepRecorder,
)
from carbontop.core.synthetic import prompt_seed, synthetic_token_ids
from carbontop.core.window import keep_admitting, steady_window
from carbontop.engines.base import Emit, EngineOOM, EngineSpec, Phase, PhaseUpdate, Progress
from carbontop.engines.cuda_graphs import capture
from carbontop.engines.quant import apply_weight_only
from carbontop.errors import EngineUnavailable, first_line

WARMUP_DECODE_STEPS = 3
# Up to this batch size, `--compile auto` lets inductor autotune the matrix products. At batch 1
# the decode step is a chain of matrix-vector products whose speed is all memory bandwidth, and
# cuBLAS's split-K kernels for 4096x4096 reached about 57% of it on an H100 80GB HBM3 (profiled),
# where inductor's autotuned Triton kernels took the whole step from 6.36 to 5.47 ms (MBU 62.6% ->
# 72.9%). At batch 32 the autotuned choice was slower (8.24 -> 9.32 ms), so larger batches keep
# the default kernels. Autotuning costs one to two minutes, in the warm-up, so only batch 1 pays it.
AUTOTUNE_MAX_BATCH = 1


def _cache_kwarg(model: Any) -> str:
    """transformers renamed `past_key_values` to `cache`; pass whichever this version takes."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class HFEngine:
    def __init__(self, spec: EngineSpec, emit: Emit) -> None:
        self.spec = spec
        self.emit = emit
        self.model: Any = None
        self.decode_mode = "eager"  # "eager", "cuda-graph" or "compiled+cuda-graph"
        self._compiled_steps: dict[str, Any] = {}  # inductor mode -> compiled decode step
        self._compile_failed = False
        # CUDA graphs can be turned off (spec.cuda_graphs = False) to measure their worth
        self._graph_failed = not spec.cuda_graphs
        # tests only: request index -> greedy tokens (costs a host sync per step when set)
        self.token_log: dict[int, list[int]] | None = None
        self._slots: Any = None  # the in-flight runner, made at the first in-flight point
        from carbontop.engines.hf_ranks import Ranks

        self.ranks = Ranks()  # one rank unless spec.tp > 1 (engines/hf_ranks.py)
        self._synthetic: dict[str, list[int]] = {}  # prompt id -> its ids, where it has no tokens

    # ---- loading ------------------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        try:
            import torch
            import transformers
            from transformers import AutoConfig, AutoModelForCausalLM
        except ImportError:
            raise EngineUnavailable(
                "The hf engine needs torch and transformers: install torch for your machine, "
                "then pip install 'carbontop[hf]'."
            ) from None
        self.torch = torch
        spec = self.spec
        torch.manual_seed(spec.seed)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[spec.dtype]
        if spec.device == "cuda" and not torch.cuda.is_available():
            raise EngineUnavailable("The hf engine was asked for CUDA but torch sees no GPU here.")
        if spec.tp > 1:
            from carbontop.engines.hf_ranks import join

            self.ranks, self.device = join(torch, spec.device)
        else:
            self.device = torch.device("cuda", 0) if spec.device == "cuda" else torch.device("cpu")

        self.emit(PhaseUpdate(Phase.LOADING, f"{spec.model} ({spec.weights} weights)"))
        try:
            if spec.weights == "auto" and spec.model_path:
                if spec.tp > 1:
                    from carbontop.engines.hf_ranks import distributed_config

                    # each rank reads its own shard (transformers places it on this rank's device)
                    model = AutoModelForCausalLM.from_pretrained(
                        spec.model_path, dtype=self.dtype, attn_implementation="sdpa",
                        local_files_only=True, distributed_config=distributed_config(spec.tp))
                else:
                    model = AutoModelForCausalLM.from_pretrained(
                        spec.model_path, dtype=self.dtype, attn_implementation="sdpa",
                        local_files_only=True, low_cpu_mem_usage=True,
                    ).to(self.device)
            else:
                cfg = dict(spec.model_config or {})
                model_type = cfg.pop("model_type")
                config = AutoConfig.for_model(model_type, **cfg)
                # Random weights straight on the device: nothing to read, nothing to download.
                # With several ranks, each builds the whole model from the same seed and keeps
                # its shard, so the ranks together hold the one-rank model's numbers.
                with self.device:
                    model = AutoModelForCausalLM.from_config(
                        config, dtype=self.dtype, attn_implementation="sdpa"
                    )
                if spec.tp > 1:
                    from carbontop.engines.hf_ranks import shard

                    model = shard(model, spec.tp, spec.device)
                    if spec.device == "cuda":
                        # the other ranks' shards, built and dropped: back to the driver, so
                        # NVML's memory readings show this rank's shard only
                        torch.cuda.empty_cache()
        except torch.cuda.OutOfMemoryError as exc:
            raise EngineOOM(f"the weights alone do not fit: {exc}") from None
        model.eval()
        model.requires_grad_(False)
        quant = apply_weight_only(model, spec.quant, spec.device) if spec.quant != "none" else None
        self.model = model
        self.cache_kw = _cache_kwarg(model)
        self.vocab_size = int(model.config.vocab_size)
        heads = int(model.config.num_attention_heads)
        kv_heads = int(getattr(model.config, "num_key_value_heads", None) or heads)
        from carbontop.engines.hf_ranks import local_kv_heads

        self.kv_heads = local_kv_heads(model, kv_heads, self.ranks.world)  # this rank's share
        self.pad_id = 0
        info: dict[str, Any] = {
            "engine": "hf",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "model_class": type(model).__name__,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "dtype": spec.dtype,
            "device": spec.device,
            "attn_implementation": "sdpa",
        }
        if spec.tp > 1:
            info["tp"] = spec.tp
            info["tp_backend"] = "nccl" if spec.device == "cuda" else "gloo"
            info["tp_plan"] = "transformers (base_model_tp_plan)"
        if quant is not None:
            info["quant"] = quant.to_dict()
        self.loaded_bytes = torch.cuda.memory_allocated() if spec.device == "cuda" else 0
        if spec.device == "cuda":
            info["cuda_device"] = torch.cuda.get_device_name(self.device)
            info["cuda"] = torch.version.cuda
        else:
            info["cpu_threads"] = torch.get_num_threads()
        return info

    def close(self) -> None:
        self.model = None
        if self.ranks.world > 1:
            from carbontop.engines.hf_ranks import leave

            leave()

    def _memory_recovered(self) -> bool:
        """After an OOM: is the GPU back to what the loaded model alone holds? If not, the
        next point in this process could fail for memory that a fresh process would have."""
        import gc

        gc.collect()
        self.torch.cuda.empty_cache()
        held = self.torch.cuda.memory_allocated()
        return held <= self.loaded_bytes * 1.02 + 64 * 2**20

    # ---- one sweep point ----------------------------------------------------------------

    def run_point(self, plan: PointPlan) -> EngineRun:
        torch = self.torch
        oom_message = ""
        try:
            with torch.inference_mode():
                if plan.batching is Batching.INFLIGHT:
                    if self._slots is None:
                        from carbontop.engines.hf_slots import SlotRunner, register_attention

                        register_attention()
                        self._slots = SlotRunner(self)
                    try:
                        run = self._slots.run(plan, self._phase, self._progress)
                    finally:
                        self.model.config._attn_implementation = "sdpa"
                    self.decode_mode = self._slots.decode_mode
                else:
                    run = self._run_static(plan)
        except torch.cuda.OutOfMemoryError as exc:
            oom_message = first_line(exc)
        if oom_message:
            # checked outside the except block: the exception's traceback holds the frames,
            # and their tensors, of the failed batch until the block ends
            raise EngineOOM(oom_message, recovered=self._memory_recovered())
        if self.spec.device == "cuda":
            torch.cuda.empty_cache()
        return run

    def _phase(self, phase: Phase, detail: str) -> None:
        self.emit(PhaseUpdate(phase, detail))

    def _progress(self, done: int, tokens: int, window_s: float, window_target_s: float) -> None:
        self.emit(Progress(done=done, tokens=tokens, window_s=window_s, window_target_s=window_target_s))

    def _run_static(self, plan: PointPlan) -> EngineRun:
        """The paper's static batches: b requests left-padded to the longest prompt, each batch
        running until its longest output is done; batches drawn from the stream until the window
        (first batch start -> last batch end) has lasted plan.min_window_s."""
        batch_size = plan.batch_size
        stream = itertools.cycle(plan.prompts)
        max_in = max(p.input_tokens for p in plan.prompts)
        max_out = max(p.output_tokens for p in plan.prompts)
        cache_len = max_in + max_out
        state = _PointState(self, batch_size, cache_len)
        first = list(itertools.islice(stream, batch_size))
        self._warm_up(state, first)
        self._phase(Phase.MEASURING, f"static batches of {batch_size}, window of at least "
                                 f"{plan.min_window_s:.0f} s")
        self._sync()
        records: list[RequestRecord] = []
        steps = StepRecorder(slots=batch_size)
        step_end_s: list[float] = []
        window_start = time.time()
        batch = first
        index = 0
        while True:
            batch_records, token_times = self._run_batch(state, index, batch, batch_size)
            records.extend(batch_records)
            _record_static_batch(steps, step_end_s, batch, token_times, cache_len)
            self._progress(len(records), sum(r.output_tokens for r in records),
                           time.time() - window_start, plan.min_window_s)
            index += 1
            if not self.ranks.follow(keep_admitting(time.time(), plan.min_window_s, window_start,
                                                    plan.max_point_s, opened_s=window_start)):
                break
            batch = list(itertools.islice(stream, batch_size))
        self._sync()
        window = steady_window(records, batch_size, Batching.STATIC)
        return EngineRun(
            batch_size=batch_size,
            window_start_s=window.start_s if window else window_start,
            window_end_s=window.end_s if window else time.time(),
            records=tuple(records),
            notes=(f"decode: {self.decode_mode}",),
            batching=Batching.STATIC,
            timeline=steps.timeline(step_end_s),
        )

    def _sync(self) -> None:
        if self.spec.device == "cuda":
            self.torch.cuda.synchronize()

    def _warm_up(self, state: _PointState, batch: list[Prompt]) -> None:
        """Run one batch's prefill and a few decode steps, compiling and capturing the decode
        step for this batch size. Nothing here is timed."""
        torch = self.torch
        # several ranks decode uncompiled, as in flight (hf_slots.SlotRunner says why)
        want_compile = (self.spec.compile and self.spec.device == "cuda" and not self._compile_failed
                        and self.ranks.world == 1)
        phase = Phase.COMPILING if want_compile else Phase.WARMUP
        self.emit(PhaseUpdate(phase, f"batch {state.batch_size}"))
        state.start_batch(self._input_ids(batch, state.batch_size))
        state.prefill()
        if self.spec.device == "cuda":
            if want_compile:
                mode = self._inductor_mode(state.batch_size)
                if mode not in self._compiled_steps:
                    # one compiled graph per batch size until dynamo generalises the batch dim
                    torch._dynamo.config.cache_size_limit = 64
                    self._compiled_steps[mode] = torch.compile(
                        _decode_step_copy(mode), fullgraph=False, mode=mode)
                try:
                    state.step_fn = self._compiled_steps[mode]
                    for _ in range(WARMUP_DECODE_STEPS):
                        state.advance()
                        state.eager_step()
                except Exception as exc:  # noqa: BLE001 - fall back to the uncompiled step
                    self._compile_failed = True
                    print(f"carbontop: torch.compile failed, using the eager step: {exc}", flush=True)
                    state.step_fn = _decode_step
            if not self._graph_failed:
                try:
                    state.capture_graph()
                except Exception as exc:  # noqa: BLE001 - fall back to eager replay
                    self._graph_failed = True
                    print(f"carbontop: CUDA graph capture failed, decoding eagerly: {exc}", flush=True)
                    state.graph = None
                if self.ranks.any(self._graph_failed):
                    # every rank decodes the same way, so their collectives stay in step
                    self._graph_failed = True
                    state.graph = None
        for _ in range(WARMUP_DECODE_STEPS):
            state.advance()
            state.step()
        self._sync()
        compiled = state.step_fn is not _decode_step
        if compiled:
            tuned = "max-autotune" in self._inductor_mode(state.batch_size)
            how = "compiled (autotuned)" if tuned else "compiled"
            self.decode_mode = f"{how}+cuda-graph" if state.graph is not None else how
        else:
            self.decode_mode = "cuda-graph" if state.graph is not None else "eager"

    def _inductor_mode(self, batch_size: int) -> str:
        """torch.compile mode for this batch size under the spec's compile policy."""
        policy = self.spec.compile_mode
        if policy == "max-autotune" or (policy == "auto" and batch_size <= AUTOTUNE_MAX_BATCH):
            return "max-autotune-no-cudagraphs"
        return "default"

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """The prompt's token ids: its tokenizer's where it has them, else seeded random ids of
        the right count (ids do not change the cost, only the count does)."""
        if prompt.token_ids is not None and len(prompt.token_ids) == prompt.input_tokens:
            return [t % self.vocab_size for t in prompt.token_ids]
        ids = self._synthetic.get(prompt.prompt_id)
        if ids is None or len(ids) != prompt.input_tokens:
            # made once per prompt: the stream wraps around its prompts, and admissions happen
            # while a point is measured
            ids = synthetic_token_ids(prompt.input_tokens, self.vocab_size, prompt_seed(self.spec.seed, prompt))
            self._synthetic[prompt.prompt_id] = ids
        return list(ids)

    def _input_ids(self, batch: list[Prompt], batch_size: int) -> list[list[int]]:
        rows = [self.prompt_ids(p) for p in batch]
        while len(rows) < batch_size:  # a short last batch still runs at full width
            rows.append(rows[-1])
        return rows

    def _run_batch(self, state: _PointState, index: int, batch: list[Prompt],
                   batch_size: int) -> tuple[list[RequestRecord], list[float]]:
        self._sync()
        start_s = time.time()
        state.start_batch(self._input_ids(batch, batch_size))
        steps = max(p.output_tokens for p in batch) - 1
        token_times = state.generate(steps, start_s)
        if self.token_log is not None:
            for j, prompt in enumerate(batch):
                self.token_log[index * batch_size + j] = [
                    row[j] for row in state.tokens_made[:prompt.output_tokens]]
        records = []
        for j, prompt in enumerate(batch):
            records.append(
                RequestRecord(
                    batch_size=batch_size,
                    request_index=index * batch_size + j,
                    batch_index=index,
                    input_tokens=prompt.input_tokens,
                    output_tokens=prompt.output_tokens,
                    start_s=start_s,
                    ttft_s=token_times[0] - start_s,
                    e2e_s=token_times[prompt.output_tokens - 1] - start_s,
                )
            )
        return records, token_times


def _record_static_batch(steps: StepRecorder, end_s: list[float], batch: list[Prompt],
                         token_times: list[float], cache_len: int) -> None:
    """A static batch's steps: every step computes all b rows, and its attention reads the whole
    padded cache (cache_len columns per row), whoever is still generating."""
    for step, t in enumerate(token_times):
        # step 0 is the prefill, which makes every row's first token
        made = sum(1 for p in batch if p.output_tokens > step)
        steps.add(tokens=made, live=made, kv_tokens_read=0 if step == 0 else steps.slots * cache_len,
                  decode=step > 0)
        end_s.append(t)


def _decode_step(model: Any, cache_kw: str, cache: Any, tokens: Any, positions: Any, mask: Any) -> Any:
    out = model(input_ids=tokens, position_ids=positions, attention_mask=mask,
                use_cache=True, **{cache_kw: cache})
    return out.logits[:, -1, :].argmax(dim=-1)


def _decode_step_copy(tag: str) -> Any:
    """`_decode_step` under its own code object: dynamo keys its cache on the code object, so
    two compile modes of one function would otherwise share (and reuse) each other's graphs."""
    import types

    code = _decode_step.__code__.replace(co_name=f"_decode_step_{tag.replace('-', '_')}")
    return types.FunctionType(code, _decode_step.__globals__, code.co_name)


class _PointState:
    """The fixed-address buffers of one sweep point: KV cache, decode inputs, the captured graph.

    Masks are explicit 4D boolean masks (True = may attend), which transformers passes through
    unchanged, so no mask is built (and no host sync happens) inside the captured step. Left
    padding is handled by masking the pad positions and starting each row's positions at 0.
    """

    def __init__(self, engine: HFEngine, batch_size: int, cache_len: int) -> None:
        from transformers import StaticCache

        torch = engine.torch
        self.engine = engine
        self.torch = torch
        self.batch_size = batch_size
        self.cache_len = cache_len
        dev = engine.device
        self.cache = StaticCache(config=engine.model.config, max_cache_len=cache_len)
        self.tokens = torch.zeros((batch_size, 1), dtype=torch.long, device=dev)
        self.positions = torch.zeros((batch_size, 1), dtype=torch.long, device=dev)
        self.mask = torch.zeros((batch_size, 1, 1, cache_len), dtype=torch.bool, device=dev)
        self.next_tokens = torch.zeros((batch_size,), dtype=torch.long, device=dev)
        self.k_range = torch.arange(cache_len, device=dev)
        self.step_fn: Any = _decode_step
        self.graph: Any = None
        self.graph_out: Any = None
        self.prompt_len = 0
        self.cursor = 0  # cache position the next decode token is written to
        self.tokens_made: list[list[int]] = []  # tests only (engine.token_log): each step's picks

    # -- batch set-up --

    def start_batch(self, rows: list[list[int]]) -> None:
        torch = self.torch
        dev = self.engine.device
        self.prompt_len = max(len(r) for r in rows)
        pads = [self.prompt_len - len(r) for r in rows]
        ids = [[self.engine.pad_id] * p + r for p, r in zip(pads, rows, strict=True)]
        self.input_ids = torch.tensor(ids, dtype=torch.long, device=dev)
        self.pads = torch.tensor(pads, dtype=torch.long, device=dev).view(-1, 1)
        self.cache.reset()

    def prefill(self) -> None:
        torch = self.torch
        length = self.prompt_len
        q = torch.arange(length, device=self.engine.device).view(1, length, 1)
        k = self.k_range.view(1, 1, -1)
        pads = self.pads.view(-1, 1, 1)
        # causal, not into the left padding; a pad row attends to itself so no row is all-masked
        mask = ((k <= q) & (k >= pads)) | (k == q)
        positions = (torch.arange(length, device=self.engine.device).view(1, -1) - self.pads).clamp(min=0)
        out = self.engine.model(
            input_ids=self.input_ids, position_ids=positions, attention_mask=mask.unsqueeze(1),
            use_cache=True, logits_to_keep=1, **{self.engine.cache_kw: self.cache},
        )
        self.next_tokens.copy_(out.logits[:, -1, :].argmax(dim=-1))
        # decode inputs for the first step
        self.mask.copy_(((self.k_range.view(1, -1) >= self.pads) & (self.k_range.view(1, -1) < length)).view(self.batch_size, 1, 1, -1))
        self.positions.copy_(length - self.pads - 1)
        self.cursor = length

    def advance(self) -> None:
        """Feed the last picked tokens as the next step's input."""
        self.tokens.copy_(self.next_tokens.view(-1, 1))
        self.positions.add_(1)
        self.mask[:, :, :, self.cursor] = True
        self.cursor += 1

    # -- the decode step --

    def eager_step(self) -> None:
        self.next_tokens.copy_(
            self.step_fn(self.engine.model, self.engine.cache_kw, self.cache, self.tokens,
                         self.positions, self.mask)
        )

    def capture_graph(self) -> None:
        torch = self.torch
        # The cache's write cursor lives on the device and advances inside the step, so the
        # captured graph is valid for every position. Warm up on a side stream, then capture.
        saved = self.cache_cursor_snapshot()

        def warm() -> None:
            self.eager_step()
            self.restore_cursor(saved)

        self.graph, self.graph_out = capture(
            torch, lambda: self.step_fn(self.engine.model, self.engine.cache_kw, self.cache,
                                        self.tokens, self.positions, self.mask),
            warm=warm, warmups=2)

    def cache_cursor_snapshot(self) -> list[Any]:
        return [layer.cumulative_length.clone() for layer in self._layers()]

    def restore_cursor(self, saved: list[Any]) -> None:
        for layer, value in zip(self._layers(), saved, strict=True):
            layer.cumulative_length.copy_(value)

    def _layers(self) -> list[Any]:
        return [layer for layer in self.cache.layers if hasattr(layer, "cumulative_length")]

    def step(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            self.next_tokens.copy_(self.graph_out)
        else:
            self.eager_step()

    def _keep_tokens(self) -> None:
        """Tests only: the step's greedy picks, one per row (a host sync per step)."""
        if self.engine.token_log is not None:
            self.tokens_made.append(self.next_tokens.tolist())

    def generate(self, steps: int, start_s: float) -> list[float]:
        """Prefill and `steps` decode steps; returns the Unix time each output token was ready."""
        torch = self.torch
        if steps + self.prompt_len > self.cache_len:
            raise ValueError("cache too short for this batch")
        self.tokens_made = []
        if self.engine.spec.device != "cuda":
            self.prefill()
            self._keep_tokens()
            times = [time.time()]
            for _ in range(steps):
                self.advance()
                self.step()
                self._keep_tokens()
                times.append(time.time())
            return times
        # On the GPU: events instead of syncs, so the host keeps queuing work.
        events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 2)]
        events[0].record()
        host_t0 = time.time()
        self.prefill()
        self._keep_tokens()
        events[1].record()
        for s in range(steps):
            self.advance()
            self.step()
            self._keep_tokens()
            events[s + 2].record()
        events[-1].synchronize()
        # events[0] ran as soon as it was queued (the stream was idle after the batch's sync)
        return [host_t0 + events[0].elapsed_time(ev) / 1000.0 for ev in events[1:]]
