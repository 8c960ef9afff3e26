"""In-flight batching for the built-in engine: b slots, a freed slot refilled at once.

A sweep point at batch size b keeps at most b sequences in flight, as TensorRT-LLM's
max_batch_size and vLLM's max_num_seqs do. Each slot owns one row of a KV cache allocated once
per point ([b, kv_heads, max_len, head_dim] per layer). When a request has made its last token,
its slot is freed and the next request from the stream is prefilled into it before the next
decode step, so a finished sequence costs no decode work.

How the model is driven:

* the model is the library's own (LlamaForCausalLM, GPT2LMHeadModel, ...); only its attention
  function is ours, registered through transformers' AttentionInterface. The model runs without
  a transformers cache: our attention function receives each step's keys and values (after
  RoPE), writes them into the slot cache at each row's own position, and attends over each row's
  live length only;
* that length-aware decode attention is torch's FlexAttention with a block mask whose per-row
  block counts are updated in place every step, so its kernel skips every KV block past a row's
  length (on the CPU, and where FlexAttention cannot be compiled, a dense masked SDPA stands in:
  same result, but it reads the whole slot cache; the run records which one ran);
* new requests are prefilled together, packed into one padded sequence (slot_prefill.py, which
  also says why prefills are bucketed and, on a GPU, replayed from CUDA graphs);
* on CUDA the decode step is compiled once with a dynamic batch dimension (torch.compile), and a
  CUDA graph is captured per batch size and replayed every step; the host knows every request's
  output length in advance (the workload fixes it), so scheduling needs no device sync, and
  per-step CUDA events give every token's time. With a dynamic batch, inductor lowers
  FlexAttention to its general kernel: its decoding kernel, which splits each row's cache across
  the SMs, needs the batch and head counts fixed at compile time (torch/_inductor/kernel/flex/
  flex_decoding.py, _use_flex_decoding). `SlotRunner(static_batch=True)` compiles the step per
  batch size instead; benchmarks/decode_profile.py times the two side by side.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from carbontop.core.records import (
    Batching,
    EngineRun,
    PointPlan,
    Prompt,
    RequestRecord,
    StepRecorder,
)
from carbontop.core.window import keep_admitting, steady_window
from carbontop.engines.base import Phase
from carbontop.engines.cuda_graphs import capture
from carbontop.engines.slot_prefill import (
    PREFILL_CHUNK_TOKENS,
    Prefill,
    PrefillGraphs,
    chunks,
    pack,
    prefill_bucket,
    prefill_buckets,
    prefill_inputs,
)

ATTENTION_NAME = "carbontop_slots"
KV_BLOCK = 128  # FlexAttention's KV block: the granularity at which attention skips dead cache
HOST_LEAD_STEPS = 8  # how far the host may queue work ahead of the GPU (covers an eager prefill)
WARMUP_DECODE_STEPS = 3
STATIC_RECOMPILE_LIMIT = 64  # batch sizes one process may compile with static_batch

# The state the attention function reads. One engine runs in one process at a time, and the
# attention function is called from inside the model, so a module-level reference is the seam.
_ACTIVE: _SlotCache | None = None


def slot_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                   scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """transformers attention interface: (query, key, value) of this step -> attention output.

    query [rows, heads, q_len, d]; key/value [rows, kv_heads, q_len, d] for the new tokens only.
    Returns [rows, q_len, heads, d], as the library's own functions do.
    """
    import torch.nn.functional as F

    cache = _ACTIVE
    assert cache is not None, "slot attention called outside a point"
    layer = module.layer_idx
    k_cache, v_cache = cache.keys[layer], cache.values[layer]
    if cache.prefill is not None:
        pf = cache.prefill
        # packed prompts: token t belongs to slot pf.slot[t] at position pf.pos[t]
        k_cache[pf.slot, :, pf.pos] = key[0].transpose(0, 1)
        v_cache[pf.slot, :, pf.pos] = value[0].transpose(0, 1)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=pf.mask, scale=scaling,
                                             enable_gqa=query.shape[1] != key.shape[1])
    else:
        # one new token per row, written at the row's own length, then attended with the rest
        k_cache[cache.rows, :, cache.lengths] = key[:, :, 0]
        v_cache[cache.rows, :, cache.lengths] = value[:, :, 0]
        if cache.block_mask is not None:
            out = cache.flex(query, k_cache, v_cache, block_mask=cache.block_mask, scale=scaling,
                             enable_gqa=query.shape[1] != key.shape[1])
        else:
            out = F.scaled_dot_product_attention(query, k_cache, v_cache, attn_mask=cache.dense_mask,
                                                 scale=scaling,
                                                 enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, slot_attention)


class _SlotCache:
    """Fixed-address device buffers of one point: the slot KV cache and the decode inputs."""

    def __init__(self, torch: Any, model: Any, kv_heads: int, batch_size: int, max_len: int,
                 device: Any, dtype: Any, use_flex: bool) -> None:
        self.torch = torch
        cfg = model.config
        n_layers = cfg.num_hidden_layers
        heads = cfg.num_attention_heads
        # kv_heads: this rank's (all of the model's on one rank; its share of them under tensor
        # parallelism, where each rank's attention sees only its own heads)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        # one position more than the longest request needs: the scratch where padding writes
        self.max_len = -(-(max_len + 1) // KV_BLOCK) * KV_BLOCK
        self.scratch_pos = self.max_len - 1
        shape = (batch_size, kv_heads, self.max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.batch_size = batch_size
        self.rows = torch.arange(batch_size, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)  # cached tokens per slot
        self.live = torch.zeros(batch_size, dtype=torch.long, device=device)  # 1 where a request holds the slot
        self.tokens = torch.zeros((batch_size, 1), dtype=torch.long, device=device)
        self.prefill: Prefill | None = None
        self.block_mask: Any = None
        self.dense_mask: Any = None
        self.flex: Any = None
        self.kv_num_blocks: Any = None
        self._k_range = torch.arange(self.max_len, device=device)
        if use_flex:
            from torch.nn.attention.flex_attention import BlockMask

            n_blocks = self.max_len // KV_BLOCK
            self.kv_num_blocks = torch.ones((batch_size, 1, 1), dtype=torch.int32, device=device)
            kv_indices = torch.arange(n_blocks, dtype=torch.int32, device=device)
            kv_indices = kv_indices.view(1, 1, 1, n_blocks).expand(batch_size, 1, 1, n_blocks).contiguous()
            lengths = self.lengths

            def attend(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
                return kv_idx <= lengths[b]

            self.block_mask = BlockMask.from_kv_blocks(
                self.kv_num_blocks, kv_indices, BLOCK_SIZE=KV_BLOCK, mask_mod=attend,
                seq_lengths=(1, self.max_len), compute_q_blocks=False)
        else:
            self.dense_mask = torch.zeros((batch_size, 1, 1, self.max_len), dtype=torch.bool, device=device)

    def before_step(self) -> None:
        """Per-row attention extent for the coming decode step (row r attends 0..lengths[r])."""
        if self.kv_num_blocks is not None:
            self.kv_num_blocks.copy_(((self.lengths + KV_BLOCK) // KV_BLOCK).view(-1, 1, 1))
        else:
            self.dense_mask.copy_((self._k_range.view(1, -1) <= self.lengths.view(-1, 1)).view(
                self.batch_size, 1, 1, -1))

    def reset(self) -> None:
        self.lengths.zero_()
        self.live.zero_()
        self.tokens.zero_()


def _decode_step(base: Any, head: Any, cache: _SlotCache) -> None:
    """One decode step for every slot: feed each row's last token at its own position."""
    cache.before_step()
    hidden = base(input_ids=cache.tokens, position_ids=cache.lengths.view(-1, 1),
                  use_cache=False).last_hidden_state
    cache.tokens.copy_(head(hidden[:, -1, :]).argmax(dim=-1).view(-1, 1))
    cache.lengths.add_(cache.live)


@dataclass
class _Request:
    index: int
    prompt: Prompt
    slot: int
    start_step: int  # step (event) index after which it was admitted; -1 = the point's start
    first_step: int = -1
    end_step: int = -1
    made: int = 0  # output tokens made so far


class SlotRunner:
    """Runs one in-flight point on a loaded HF engine (see HFEngine)."""

    def __init__(self, engine: Any, static_batch: bool = False) -> None:
        self.engine = engine
        self.torch = engine.torch
        self._compiled: Any = None
        # True: the step is compiled for each batch size on its own (FlexAttention's decoding
        # kernel, which splits the cache across SMs, needs the batch size known when compiled;
        # a graph with a dynamic batch runs its general kernel). False: one graph for all sizes.
        self.static_batch = static_batch
        # Several ranks decode uncompiled (still replayed from CUDA graphs): a compile that
        # failed part-way through one rank's forward would leave the ranks' collectives out of step
        self._compile_failed = (not engine.spec.compile or engine.spec.device != "cuda"
                                or engine.ranks.world > 1)
        self._flex_failed = engine.spec.device != "cuda"
        self._graph_failed = engine.spec.device != "cuda" or not engine.spec.cuda_graphs
        self.attention = "flex" if not self._flex_failed else "dense-masked"
        self.decode_mode = "eager"
        self._warm_buckets: set[int] = set()  # prefill lengths this process has run once
        self._prefill_graph_failed = self._graph_failed
        self._prefill_graphs: PrefillGraphs | None = None  # the running point's

    # ---- the decode step, compiled once, captured per batch size ----------------------------

    def _step_fn(self) -> Any:
        if self._compile_failed:
            return _decode_step
        if self._compiled is None:
            if self.static_batch:
                # one cache entry per batch size, all on one code object: let a whole sweep in
                self.torch._dynamo.config.recompile_limit = max(
                    self.torch._dynamo.config.recompile_limit, STATIC_RECOMPILE_LIMIT)
            # one compiled graph for every batch size: the batch dimension is marked dynamic
            # (unless static_batch, where every new size is a new specialised graph)
            self._compiled = self.torch.compile(_decode_step, fullgraph=False,
                                                dynamic=False if self.static_batch else None)
        return self._compiled

    def _make_cache(self, batch_size: int, max_len: int) -> _SlotCache:
        global _ACTIVE
        eng = self.engine
        cache = _SlotCache(self.torch, eng.model, eng.kv_heads, batch_size, max_len, eng.device,
                           eng.dtype, use_flex=not self._flex_failed)
        if not self._flex_failed:
            from torch.nn.attention.flex_attention import flex_attention

            # FlexAttention runs as its fused kernel only when compiled
            cache.flex = self.torch.compile(flex_attention, dynamic=False)
        if not self._compile_failed and not self.static_batch:
            torch = self.torch
            # one graph for every batch size: a batch of 1 is still specialised (size-1 tensors
            # always are), so the step compiles twice in a sweep, at b=1 and at the next size
            for t in (cache.rows, cache.lengths, cache.live, cache.tokens, *cache.keys, *cache.values):
                torch._dynamo.maybe_mark_dynamic(t, 0)
        _ACTIVE = cache
        return cache

    def _capture(self, cache: _SlotCache, step: Any) -> Any:
        saved = (cache.lengths.clone(), cache.tokens.clone())

        def restore() -> None:  # the warm-up steps moved every slot on
            cache.lengths.copy_(saved[0])
            cache.tokens.copy_(saved[1])

        graph, _ = capture(self.torch, lambda: step(self.base, self.head, cache), warmups=2,
                           before_capture=restore)
        return graph

    def _bind_model(self) -> None:
        """Route the engine's model through the slot cache (its attention is slot_attention)."""
        model = self.engine.model
        model.config._attn_implementation = ATTENTION_NAME
        self.base = model.base_model
        self.head = model.get_output_embeddings()

    def _prepare_decode(self, cache: _SlotCache) -> tuple[Any, Any]:
        """The decode step for this cache's batch size, compiled (eager where the compiler
        fails), warmed on every slot and captured as a CUDA graph (None where capture fails);
        decode_mode says which."""
        torch = self.torch
        step = self._step_fn()
        cache.live.fill_(1)
        try:
            for _ in range(WARMUP_DECODE_STEPS):
                step(self.base, self.head, cache)
        except Exception as exc:  # noqa: BLE001 - a compiler failure falls back to the eager step
            if step is _decode_step or isinstance(exc, torch.cuda.OutOfMemoryError):
                raise
            self._compile_failed = True
            print(f"carbontop: torch.compile of the slot decode step failed, decoding eagerly: {exc}",
                  flush=True)
            step = _decode_step
            for _ in range(WARMUP_DECODE_STEPS):
                step(self.base, self.head, cache)
        graph = None
        if not self._graph_failed:
            try:
                graph = self._capture(cache, step)
            except Exception as exc:  # noqa: BLE001 - replaying eagerly is slower, not wrong
                self._graph_failed = True
                print(f"carbontop: CUDA graph capture failed, decoding eagerly: {exc}", flush=True)
            if self.engine.ranks.any(self._graph_failed):
                # every rank decodes the same way, so their collectives stay in step
                self._graph_failed = True
                graph = None
        compiled = step is not _decode_step
        self.decode_mode = ("compiled+" if compiled else "") + ("cuda-graph" if graph is not None else "eager")
        return step, graph

    # ---- one point -----------------------------------------------------------------------

    def run(self, plan: PointPlan, emit_phase: Any, emit_progress: Any) -> EngineRun:
        global _ACTIVE
        try:
            return self._run(plan, emit_phase, emit_progress)
        finally:
            # nothing of the point outlives it, an out-of-memory failure included: the engine
            # checks that memory is back to the loaded model's before it goes on in this process
            _ACTIVE = None
            self._prefill_graphs = None

    def _run(self, plan: PointPlan, emit_phase: Any, emit_progress: Any) -> EngineRun:
        torch = self.torch
        eng = self.engine
        self._bind_model()
        b = plan.batch_size
        max_len = max(p.input_tokens + p.output_tokens for p in plan.prompts)
        cache = self._make_cache(b, max_len)
        on_gpu = eng.spec.device == "cuda"
        # ---- warm-up: compile, capture, one prefill and a few steps (outside the window) ----
        emit_phase(Phase.COMPILING if not self._compile_failed else Phase.WARMUP, f"batch {b}")
        warm = list(itertools.islice(plan.stream(), b))
        self._prefill(cache, [(i, p) for i, p in enumerate(warm)])
        buckets = self._warm_prefill_buckets(cache, plan.prompts + plan.warm_start, b)
        step, graph = self._prepare_decode(cache)
        self._capture_prefills(cache, buckets)
        cache.reset()
        self._sync()

        # ---- the measured stream ------------------------------------------------------------
        emit_phase(Phase.MEASURING, f"{b} slots in flight, window of at least {plan.min_window_s:.0f} s")
        stream: Iterator[Prompt] = plan.stream()
        slots: list[_Request | None] = [None] * b
        requests: list[_Request] = []
        steps = _StepLog(torch, on_gpu, b)
        admitting = True
        first_admit_host_s = time.time()
        opened_host_s: float | None = None
        last_progress = 0.0

        while True:
            free = [s for s, r in enumerate(slots) if r is None]
            if admitting and free:
                # asked only where a slot is free, the one place the answer is used (once no,
                # always no: the clock only moves on); under tensor parallelism rank 0's answer,
                # so every rank admits the same requests and runs the same forwards
                admitting = eng.ranks.follow(opened_host_s is None or keep_admitting(
                    time.time(), plan.min_window_s, first_admit_host_s, plan.max_point_s,
                    opened_s=opened_host_s))
            if admitting and free:
                new = [_Request(len(requests) + i, next(stream), s, start_step=steps.last)
                       for i, s in enumerate(free)]
                requests.extend(new)
                for chunk in chunks(new, lambda r: r.prompt.input_tokens):
                    self._prefill(cache, [(r.slot, r.prompt) for r in chunk])
                    idx = steps.record(tokens=len(chunk), live=sum(x is not None for x in slots) + len(chunk),
                                       kv=0, decode=False)
                    for r in chunk:
                        r.first_step = idx
                        r.made = 1
                        slots[r.slot] = r
                        cache.live[r.slot] = 1
                    self._collect(cache, chunk)
                for r in new:
                    if r.made >= r.prompt.output_tokens:
                        r.end_step = r.first_step
                        self._free(cache, slots, r)
                if opened_host_s is None and all(s is not None for s in slots):
                    opened_host_s = time.time()
            live = [r for r in slots if r is not None]
            if not live:
                break
            if not admitting and len(live) < b:
                break  # the queue can no longer keep b in flight: the window has closed
            kv_read = sum(r.prompt.input_tokens + r.made for r in live)
            if graph is not None:
                graph.replay()
            else:
                step(self.base, self.head, cache)
            idx = steps.record(tokens=len(live), live=len(live), kv=kv_read, decode=True)
            self._collect(cache, live)
            for r in live:
                r.made += 1
                if r.made >= r.prompt.output_tokens:
                    r.end_step = idx
                    self._free(cache, slots, r)
            if time.time() - last_progress > 0.5:
                last_progress = time.time()
                done = sum(1 for r in requests if r.end_step >= 0)
                emit_progress(done, sum(r.made for r in requests),
                              time.time() - opened_host_s if opened_host_s else 0.0, plan.min_window_s)
        times = steps.resolve()
        records: list[RequestRecord] = []
        for r in requests:
            start = times.at(r.start_step)
            first = times.at(r.first_step)
            finished = r.end_step >= 0
            end = times.at(r.end_step) if finished else times.at(len(times.end_s) - 1)
            records.append(RequestRecord(
                batch_size=b, request_index=r.index, batch_index=-1,
                input_tokens=r.prompt.input_tokens, output_tokens=r.made,
                start_s=start, ttft_s=first - start, e2e_s=end - start, finished=finished))
        window = steady_window(records, b, Batching.INFLIGHT)
        if on_gpu:
            torch.cuda.empty_cache()
        return EngineRun(
            batch_size=b,
            window_start_s=window.start_s if window else times.at(-1),
            window_end_s=window.end_s if window else times.at(len(times.end_s) - 1),
            records=tuple(records),
            notes=(f"decode: {self.decode_mode}", f"attention: {self.attention}",
                   f"prefill: {'cuda-graph' if self._prefill_graphs is not None else 'eager'}"),
            batching=Batching.INFLIGHT,
            timeline=steps.facts.timeline(times.end_s),
        )

    def _collect(self, cache: _SlotCache, requests: list[_Request]) -> None:
        """Tests only: keep each request's greedy tokens (a host sync per step)."""
        log = self.engine.token_log
        if log is not None:
            row = cache.tokens[:, 0].tolist()
            for r in requests:
                log.setdefault(r.index, []).append(row[r.slot])

    def _free(self, cache: _SlotCache, slots: list[_Request | None], r: _Request) -> None:
        slots[r.slot] = None
        cache.live[r.slot] = 0
        cache.lengths[r.slot] = 0

    def _prefill(self, cache: _SlotCache, items: list[tuple[int, Prompt]]) -> None:
        """Prefill prompts packed into one sequence; write their KV into their slots and put
        each prompt's first output token into its slot's decode input."""
        self._forward_packed(cache, [self.engine.prompt_ids(prompt) for _, prompt in items],
                             [slot for slot, _ in items])

    def _warm_prefill_buckets(self, cache: _SlotCache, prompts: tuple[Prompt, ...], b: int) -> list[int]:
        """Run every prefill length the point can reach once, all padding, outside the window;
        return those lengths."""
        longest = sorted((p.input_tokens for p in prompts), reverse=True)
        reach = prefill_bucket(max(longest[0], min(PREFILL_CHUNK_TOKENS, sum(longest[:b]))))
        buckets = prefill_buckets(reach)
        for n in buckets:
            if n not in self._warm_buckets:
                self._forward_packed(cache, [], [], length=n)
                self._warm_buckets.add(n)
        return buckets

    def _forward_packed(self, cache: _SlotCache, rows: list[list[int]], slots: list[int],
                        length: int | None = None) -> None:
        """One forward over `rows` packed and padded to their bucket (or to `length`): each row's
        keys and values land in its slot, its greedy next token in its slot's decode input."""
        packed = pack(rows, slots, cache.scratch_pos, length)
        n = packed.length
        inputs, ends_t, slots_t, lens_t = self._to_device(
            [x for row in packed.rows() for x in row], packed.ends, packed.slots, packed.lengths)
        inputs = inputs.view(5, n)
        if self._prefill_graphs is not None and n in self._prefill_graphs:
            hidden = self._prefill_graphs.replay(n, inputs)
        else:
            hidden = self._packed_forward(cache, inputs)
        if rows:
            cache.tokens[slots_t, 0] = self.head(hidden[0, ends_t]).argmax(dim=-1)
            cache.lengths[slots_t] = lens_t

    def _packed_forward(self, cache: _SlotCache, inputs: Any) -> Any:
        """The model over packed inputs [5, T] (slot_prefill.INPUT_ROWS): hidden states [1, T, d]."""
        ids, rope, prefill = prefill_inputs(inputs)
        cache.prefill = prefill
        try:
            return self.base(input_ids=ids, position_ids=rope, use_cache=False).last_hidden_state
        finally:
            cache.prefill = None

    def _capture_prefills(self, cache: _SlotCache, buckets: list[int]) -> None:
        """A CUDA graph per bucket for this point's cache; eager prefills where capture fails."""
        if self._graph_failed or self._prefill_graph_failed:
            return
        graphs = PrefillGraphs(self.torch, self.engine.device)
        try:
            for n in buckets:
                graphs.capture(n, cache.scratch_pos, lambda inputs: self._packed_forward(cache, inputs))
        except self.torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - eager prefills are slower, not wrong
            self._prefill_graph_failed = True
            print(f"carbontop: CUDA graph capture of the prefill failed, prefilling eagerly: {exc}",
                  flush=True)
        if self.engine.ranks.any(self._prefill_graph_failed):
            self._prefill_graph_failed = True  # every rank prefills the same way
            return
        self._prefill_graphs = graphs

    def _to_device(self, *lists: list[int]) -> list[Any]:
        """Integer lists as device tensors in one copy. On a GPU the copy leaves pinned memory
        without blocking: a plain host-to-device copy waits for every decode step queued before
        it (ATen's memcpy_and_sync), which would stall the GPU at each admission."""
        torch = self.torch
        host = torch.tensor([x for xs in lists for x in xs], dtype=torch.long)
        if self.engine.spec.device == "cuda":
            flat = host.pin_memory().to(self.engine.device, non_blocking=True)
        else:
            flat = host.to(self.engine.device)
        return list(flat.split([len(xs) for xs in lists]))

    def _sync(self) -> None:
        if self.engine.spec.device == "cuda":
            self.torch.cuda.synchronize()


@dataclass
class _Times:
    base_s: float
    end_s: list[float]

    def at(self, step: int) -> float:
        """When step `step` ended; step -1 is the point's start."""
        return self.end_s[step] if step >= 0 else self.base_s


class _StepLog:
    """Per-step facts (a StepRecorder), and the time each step's tokens were ready: CUDA events on the GPU (the
    host never waits mid-point, except to stay at most HOST_LEAD_STEPS ahead), wall time on CPU."""

    def __init__(self, torch: Any, on_gpu: bool, slots: int) -> None:
        self.torch = torch
        self.on_gpu = on_gpu
        self.facts = StepRecorder(slots=slots)
        self._events: list[Any] = []
        self._pending: deque[Any] = deque()
        self._wall: list[float] = []
        if on_gpu:
            torch.cuda.synchronize()
            self._base_event = torch.cuda.Event(enable_timing=True)
            self._base_event.record()
        self.base_s = time.time()

    @property
    def last(self) -> int:
        return len(self.facts.tokens) - 1

    def record(self, tokens: int, live: int, kv: int, decode: bool) -> int:
        index = self.facts.add(tokens=tokens, live=live, kv_tokens_read=kv, decode=decode)
        if self.on_gpu:
            event = self.torch.cuda.Event(enable_timing=True)
            event.record()
            self._events.append(event)
            self._pending.append(event)
            if len(self._pending) > HOST_LEAD_STEPS:
                self._pending.popleft().synchronize()
        else:
            self._wall.append(time.time())
        return index

    def resolve(self) -> _Times:
        if not self.on_gpu:
            return _Times(self.base_s, self._wall)
        if self._events:
            self._events[-1].synchronize()
        base = self._base_event
        return _Times(self.base_s, [self.base_s + base.elapsed_time(e) / 1000.0 for e in self._events])
