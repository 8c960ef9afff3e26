"""The slot engine's decode step alone, per batch size, in one process: step time, MBU and the
kernels that take the time.

    python benchmarks/decode_profile.py --model llama2-7b --batch-sizes 1,2,64,128,160 --context 300

With --static-batch the step is compiled for each batch size on its own (FlexAttention's decoding
kernel needs the batch size fixed at compile time; a graph with a dynamic batch runs its general
kernel), to hold the two against each other.

For each batch size, in the order given (a sweep compiles the step at its first two sizes and
reuses the graph, so the order can matter), it builds the point's slot cache with every slot
live at `--context` cached tokens, warms and captures the decode step exactly as a sweep point
does (hf_slots.SlotRunner), replays the graph `--steps` times between CUDA events, and prints
ms per step, MBU (weights + the live KV cache read per step, over the card's peak bandwidth)
and, with --profile, the kernels that took the most GPU time over a few replays. Dynamo's
recompilations are printed as they happen when TORCH_LOGS=recompiles is set.

On a CPU (--device cpu, tiny models) it runs the same path eagerly, without graphs or a profile:
that is how its test checks it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from carbontop.core.hardware import lookup_gpu, peak_bandwidth_bytes_s  # noqa: E402
from carbontop.core.modelspec import resolve_model  # noqa: E402
from carbontop.engines import hf_slots  # noqa: E402
from carbontop.engines.base import EngineSpec  # noqa: E402
from carbontop.engines.hf import HFEngine  # noqa: E402
from carbontop.engines.hf_slots import SlotRunner, register_attention  # noqa: E402


def step_times(runner: SlotRunner, b: int, context: int, steps: int, profile: bool) -> tuple[float, list[str]]:
    """ms per decode step at batch b with every slot at `context` tokens, and the top kernels."""
    torch = runner.torch
    engine = runner.engine
    cache = runner._make_cache(b, context + steps + 16)
    on_gpu = engine.spec.device == "cuda"
    try:
        cache.lengths.fill_(context)
        step, graph = runner._prepare_decode(cache)  # as a sweep point warms and captures it
        cache.lengths.fill_(context)

        def once() -> None:
            if graph is not None:
                graph.replay()
            else:
                step(runner.base, runner.head, cache)

        if on_gpu:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                once()
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end) / steps
        else:
            t0 = time.perf_counter()
            for _ in range(steps):
                once()
            ms = (time.perf_counter() - t0) * 1000 / steps
        top: list[str] = []
        if profile and on_gpu:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile

            cache.lengths.fill_(context)
            with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    once()
                torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=70)
            top = table.splitlines()
        return ms, top
    finally:
        hf_slots._ACTIVE = None  # the point's cache goes with this frame, as after a sweep point
        if on_gpu:
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama2-7b")
    ap.add_argument("--batch-sizes", default="1,2,64,128,160")
    ap.add_argument("--context", type=int, default=300, help="cached tokens per slot")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="default: bf16 on a GPU, fp32 on a CPU")
    ap.add_argument("--profile", action="store_true", help="print the top kernels per batch size")
    ap.add_argument("--static-batch", action="store_true",
                    help="compile the step for each batch size on its own (default: one graph with "
                         "a dynamic batch, as a sweep does)")
    args = ap.parse_args(argv)
    dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    spec = resolve_model(args.model)
    gpu = args.device == "cuda"
    es = EngineSpec(engine="hf", model=args.model, model_config=dict(spec.hf_config), model_path=None,
                    weights="dummy", dtype=dtype, device=args.device, compile=gpu, cuda_graphs=gpu)
    engine = HFEngine(es, lambda note: None)
    engine.load()
    torch = engine.torch
    runner = SlotRunner(engine, static_batch=args.static_batch)
    register_attention()
    runner._bind_model()
    peak_bw = None
    if gpu:
        gpu_spec = lookup_gpu(torch.cuda.get_device_name(0))
        peak_bw = peak_bandwidth_bytes_s(gpu_spec) if gpu_spec else None
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    # the same byte counts as the sweep's MBU column (core/metrics.decode_traffic)
    weight_bytes = spec.weight_bytes_per_step(dtype)
    kv_per_token = spec.kv_bytes_per_token(dtype)
    print(f"model {args.model} ({dtype}), every slot at {args.context} cached tokens, {args.steps} steps, "
          f"{'a graph per batch size' if args.static_batch else 'one graph, dynamic batch'}")
    print("batch  ms/step  MBU    decode")
    with torch.inference_mode():
        for b in (int(x) for x in args.batch_sizes.split(",")):
            ms, top = step_times(runner, b, args.context, args.steps, args.profile)
            read = weight_bytes + b * (args.context + args.steps / 2) * kv_per_token
            mbu = f"{read / (ms / 1000) / peak_bw * 100:5.1f}%" if peak_bw else "    –"
            print(f"{b:5d}  {ms:7.2f}  {mbu}  {runner.decode_mode}", flush=True)
            for line in top:
                print("       " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
