"""transformers' own continuous batching as a carbontop engine, for the batching benchmark.

`carbontop sweep --engine benchmarks.transformers_cb:TransformersCB` (with the repo root on
PYTHONPATH) runs a point as b closed-loop clients of the library's ContinuousBatchingManager:
b requests in flight, the next one added as soon as one finishes, the same stream of prompts and
the same steady-state window as the built-in engine, so the two can be held side by side in one
run. Tuned as far as this library version allows without extra downloads: CUDA graphs on both
paths, asynchronous batching, torch.compile at `CARBONTOP_CB_COMPILE_LEVEL` (default 2), no
prefix sharing (the benchmark's prompts are distinct), concurrency capped at b.

Per-token timestamps (`record_timestamps`) give the step timeline; slot occupancy is not visible
from outside the manager (the timeline's `live` is left 0). After the window closes the requests
still running are drained, which costs time but no accuracy: tokens are counted inside the window.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from carbontop.core.records import Batching, EngineRun, PointPlan, RequestRecord, StepTimeline
from carbontop.core.window import keep_admitting, steady_window
from carbontop.engines.base import EngineFailure, Phase
from carbontop.engines.hf import HFEngine

RESULT_POLL_S = 0.5


class TransformersCB(HFEngine):
    def run_point(self, plan: PointPlan) -> EngineRun:
        if plan.batching is not Batching.INFLIGHT:
            return super().run_point(plan)
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        b = plan.batch_size
        level = int(os.environ.get("CARBONTOP_CB_COMPILE_LEVEL", "2"))
        gen = GenerationConfig(do_sample=False, max_new_tokens=max(p.output_tokens for p in plan.prompts),
                               pad_token_id=0)
        cbc = ContinuousBatchingConfig(use_cuda_graph=self.spec.device == "cuda", use_async_batching=self.spec.device == "cuda",
                                       default_compile_level=level if self.spec.compile else 0,
                                       max_requests_per_batch=b, allow_block_sharing=False)
        self._phase(Phase.COMPILING, f"transformers continuous batching, batch {b}, compile level {level}")
        manager = self.model.init_continuous_batching(generation_config=gen, continuous_batching_config=cbc)
        manager.warmup()
        manager.start()
        try:
            return self._closed_loop(manager, plan)
        finally:
            manager.stop(block=True, timeout=60)
            self.model.destroy_cached_continuous_batching_manager() if hasattr(
                self.model, "destroy_cached_continuous_batching_manager") else None

    def _closed_loop(self, manager: Any, plan: PointPlan) -> EngineRun:
        b = plan.batch_size
        never = -1  # an eos id no token can take: every request makes exactly its output length
        # warm-up outside the window: one round of b requests
        for p in itertools.islice(itertools.cycle(plan.prompts), b):
            manager.add_request(self.prompt_ids(p), max_new_tokens=min(p.output_tokens, 16),
                                eos_token_id=never)
        for _ in range(b):
            if self._next(manager) is None:
                raise EngineFailure("transformers' continuous batching stopped during warm-up")
        self._phase(Phase.MEASURING, f"{b} requests in flight (transformers continuous batching)")
        offset_s = time.time() - time.perf_counter()  # the manager's timestamps are perf_counter
        stream = enumerate(plan.stream())
        inflight: dict[str, tuple[int, Any, float]] = {}
        counter = itertools.count()

        def admit() -> None:
            _, prompt = next(stream)
            index = next(counter)
            rid = manager.add_request(self.prompt_ids(prompt), request_id=f"r{index}",
                                      max_new_tokens=prompt.output_tokens, record_timestamps=True,
                                      eos_token_id=never)
            inflight[rid] = (index, prompt, time.time())

        for _ in range(b):
            admit()
        first_admit_s = time.time()
        opened_s: float | None = None
        admitting = True
        records: list[RequestRecord] = []
        token_times: list[float] = []
        while inflight:
            out = self._next(manager)
            if out is None:
                raise EngineFailure("transformers' continuous batching stopped mid-point")
            if out.request_id not in inflight:
                continue
            index, prompt, start_s = inflight.pop(out.request_id)
            times = [offset_s + t for t in (out.timestamps or [])]
            if not times:
                raise EngineFailure("transformers' continuous batching returned no token timestamps")
            token_times.extend(times)
            records.append(RequestRecord(
                batch_size=b, request_index=index, batch_index=-1, input_tokens=prompt.input_tokens,
                output_tokens=len(out.generated_tokens), start_s=start_s, ttft_s=times[0] - start_s,
                e2e_s=times[-1] - start_s))
            self._progress(len(records), sum(r.output_tokens for r in records),
                           time.time() - opened_s if opened_s else 0.0, plan.min_window_s)
            if opened_s is None:
                opened_s = min(r.start_s + r.ttft_s for r in records)
            if admitting and keep_admitting(time.time(), plan.min_window_s, first_admit_s,
                                            plan.max_point_s, opened_s=opened_s):
                admit()
            else:
                # The window has closed. The requests still running are drained rather than
                # cancelled: their token timestamps inside the window count, and a cancelled
                # request returns none.
                admitting = False
        window = steady_window(records, b, Batching.INFLIGHT)
        token_times.sort()
        return EngineRun(
            batch_size=b,
            window_start_s=window.start_s if window else first_admit_s,
            window_end_s=window.end_s if window else time.time(),
            records=tuple(records),
            notes=("transformers continuous batching",),
            batching=Batching.INFLIGHT,
            timeline=StepTimeline(end_s=tuple(token_times), tokens=(1,) * len(token_times),
                                  live=(0,) * len(token_times), slots=b),
        )

    @staticmethod
    def _next(manager: Any) -> Any:
        while True:
            out = manager.get_result(timeout=RESULT_POLL_S)
            if out is not None:
                return out
            if not manager.is_running():
                return None
