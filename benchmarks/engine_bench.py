"""Built-in engine vs stock `generate`, on one GPU, at several batch sizes.

    python benchmarks/engine_bench.py --model llama2-7b --batch-sizes 1,8,32,64

For each batch size it times, on fixed-length synthetic requests (default 128 prompt tokens,
256 new tokens, EOS ignored, dummy weights):

* stock:    transformers' `model.generate` in eager mode (dynamic cache), greedy
* eager:    carbontop's decode loop with static cache, no CUDA graph
* graph:    the same loop with the decode step captured in a CUDA graph
* compiled: torch.compile'd decode step captured in a CUDA graph (--compile on)
* autotuned: the same with inductor's matrix-product autotuning (--compile max-autotune)
* carbontop: what a sweep uses by default (--compile auto: autotuned at batch 1, else compiled)

and prints tokens/s, ms per decode step and MBU (weight + KV bytes read per decode step over
the GPU's peak bandwidth), then the tokens/s ratio with the 10 Hz telemetry sampler running
beside the engine vs not, and the sampler thread's own CPU use.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from carbontop.core import metrics  # noqa: E402
from carbontop.core.hardware import lookup_gpu, peak_bandwidth_bytes_s  # noqa: E402
from carbontop.core.modelspec import ModelSpec, resolve_model  # noqa: E402
from carbontop.core.records import Batching, PointPlan, Prompt  # noqa: E402
from carbontop.engines.base import EngineSpec  # noqa: E402
from carbontop.engines.hf import HFEngine  # noqa: E402


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def make_engine(model: str, device: str, dtype: str, compile_: bool, graphs: bool,
                compile_mode: str = "auto") -> HFEngine:
    spec = resolve_model(model)
    es = EngineSpec(engine="hf", model=model, model_config=dict(spec.hf_config), model_path=None,
                    weights="dummy", dtype=dtype, device=device, compile=compile_,
                    compile_mode=compile_mode, cuda_graphs=graphs)
    engine = HFEngine(es, lambda note: None)
    engine.load()
    return engine


def engine_point(engine: HFEngine, batch: int, n_in: int, n_out: int, batches: int,
                 model: ModelSpec, dtype: str) -> tuple:
    """tokens/s, ms per decode step, decode mode and decode traffic of `batches` static batches,
    the traffic counted by the same function that fills the sweep's MBU column."""
    prompts = tuple(Prompt(f"b{batch}-{i}", n_in, n_out) for i in range(batch))
    # a window of "any length" closes after the first whole batch: one batch per point
    plan = PointPlan(batch, Batching.STATIC, prompts, min_window_s=1e-9, max_point_s=1e9)
    runs = [engine.run_point(plan) for _ in range(batches)]
    duration = sum(run.window_end_s - run.window_start_s for run in runs)
    tokens = sum(r.output_tokens for run in runs for r in run.records)
    parts = [metrics.decode_traffic(run.records, model, dtype) for run in runs]
    traffic = metrics.DecodeTraffic(sum(t.bytes_read for t in parts), sum(t.decode_time_s for t in parts),
                                    sum(t.steps for t in parts), all(t.exact for t in parts))
    return tokens / duration, traffic.decode_time_s / traffic.steps * 1000, engine.decode_mode, traffic


def stock_point(engine: HFEngine, batch: int, n_in: int, n_out: int) -> tuple[float, float]:
    """tokens/s and ms per step of transformers' own generate (eager, dynamic cache)."""
    import torch

    model = engine.model
    ids = torch.randint(3, model.config.vocab_size, (batch, n_in), device=engine.device)
    mask = torch.ones_like(ids)
    kw = dict(max_new_tokens=n_out, min_new_tokens=n_out, do_sample=False, attention_mask=mask,
              pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(ids, **kw)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    assert out.shape[1] == n_in + n_out, out.shape
    return batch * n_out / elapsed, elapsed / n_out * 1000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama2-7b")
    ap.add_argument("--batch-sizes", default="1,8,32,64")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--modes", default="stock,graph,compiled,carbontop")
    ap.add_argument("--batches", type=int, default=2, help="static batches timed per point")
    ap.add_argument("--sampler-mode", default=None, help="mode for the sampler on/off check (default: fastest)")
    ap.add_argument("--skip-sampler", action="store_true")
    args = ap.parse_args()
    import torch
    import transformers

    if not torch.cuda.is_available():
        print("engine_bench needs a CUDA GPU.", file=sys.stderr)
        return 1
    gpu_name = torch.cuda.get_device_name(0)
    gpu = lookup_gpu(gpu_name)
    bw = peak_bandwidth_bytes_s(gpu) if gpu else None
    model = resolve_model(args.model)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    modes = args.modes.split(",")
    rows: list[tuple] = []
    results: dict[tuple[str, int], float] = {}

    variants = {
        "eager": (False, False, "auto"),
        "graph": (False, True, "auto"),
        "compiled": (True, True, "default"),  # --compile on
        "autotuned": (True, True, "max-autotune"),  # --compile max-autotune
        "carbontop": (True, True, "auto"),  # --compile auto, the sweep's default
    }
    stock_engine = None
    for mode in modes:
        compile_, graphs, compile_mode = variants.get(mode, (False, False, "auto"))
        t_load = time.perf_counter()
        engine = make_engine(args.model, "cuda", args.dtype, compile_, graphs, compile_mode)
        log(f"{mode}: loaded in {time.perf_counter() - t_load:.1f} s")
        for b in sizes:
            try:
                t_point = time.perf_counter()
                if mode == "stock":
                    tps, ms = stock_point(engine, b, args.input_len, args.output_len)
                    decode_mode, mbu = "generate", None
                    # MBU of stock: same bytes per step, its own step time
                    step_bytes = model.weight_bytes_per_step(args.dtype) + b * model.kv_bytes_per_token(args.dtype) * (args.input_len + args.output_len / 2)
                    mbu = step_bytes / (ms / 1000) / bw if bw else None
                else:
                    tps, ms, decode_mode, traffic = engine_point(
                        engine, b, args.input_len, args.output_len, args.batches, model, args.dtype)
                    mbu = metrics.mbu(traffic, bw, 1)
            except torch.cuda.OutOfMemoryError:
                log(f"{mode} b={b}: out of memory")
                rows.append((mode, b, None, None, None, "OOM"))
                torch.cuda.empty_cache()
                continue
            except Exception as exc:  # noqa: BLE001
                log(f"{mode} b={b}: {type(exc).__name__}: {exc}")
                rows.append((mode, b, None, None, None, "error"))
                continue
            results[(mode, b)] = tps
            rows.append((mode, b, tps, ms, mbu, decode_mode))
            log(f"{mode} b={b} ({time.perf_counter() - t_point:.0f} s with warm-up): {tps:.1f} tok/s, {ms:.2f} ms/step, MBU {mbu if mbu is None else round(mbu * 100, 1)}% [{decode_mode}]")
        if mode == "stock":
            stock_engine = engine
        del engine
        gc.collect()
        torch._dynamo.reset()  # each mode compiles from scratch, with its own settings
        torch.cuda.empty_cache()
    del stock_engine

    if args.skip_sampler:
        print_table(gpu_name, torch, transformers, args, model, bw, rows, results)
        return 0
    # sampler on/off: the fastest carbontop mode at batch 1, five batches each way, alternated
    from carbontop.telemetry.sampler import TelemetrySampler
    from carbontop.telemetry.sources import open_power_source

    best = args.sampler_mode or max(
        (m for m in modes if m != "stock"), key=lambda m: results.get((m, sizes[0]), 0.0))
    compile_, graphs, compile_mode = variants[best]
    engine = make_engine(args.model, "cuda", args.dtype, compile_, graphs, compile_mode)
    engine_point(engine, 1, args.input_len, args.output_len, 1, model, args.dtype)  # warm
    on, off, cpu_pct = [], [], []
    for _ in range(3):
        off.append(engine_point(engine, 1, args.input_len, args.output_len, 2, model, args.dtype)[0])
        sampler = TelemetrySampler(open_power_source("cuda"), interval_s=0.1)
        sampler.start()
        time.sleep(0.5)
        t0 = time.time()
        cpu0 = sampler.thread_cpu_s
        on.append(engine_point(engine, 1, args.input_len, args.output_len, 2, model, args.dtype)[0])
        cpu_pct.append((sampler.thread_cpu_s - cpu0) / (time.time() - t0) * 100)
        sampler.stop()
    ratio = (sum(on) / len(on)) / (sum(off) / len(off))
    print_table(gpu_name, torch, transformers, args, model, bw, rows, results)
    print(f"telemetry sampler at 10 Hz beside the engine ({best}, batch 1): tokens/s on/off = {ratio:.4f} "
          f"(on {[round(x, 1) for x in on]}, off {[round(x, 1) for x in off]}); "
          f"sampler thread CPU {max(cpu_pct):.2f}% of a core (max of 3)")
    return 0


def print_table(gpu_name, torch, transformers, args, model, bw, rows, results) -> None:
    print()
    print(f"GPU: {gpu_name}   torch {torch.__version__}   transformers {transformers.__version__}")
    print(f"model {args.model} ({model.total_params / 1e9:.2f} B params, {args.dtype}, dummy weights), "
          f"{args.input_len} prompt tokens, {args.output_len} new tokens, peak bandwidth "
          f"{bw / 1e12 if bw else float('nan'):.2f} TB/s")
    print()
    print("| mode | batch | tok/s | ms/step | MBU % | x stock | decode |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for mode, b, tps, ms, mbu, how in rows:
        if tps is None:
            print(f"| {mode} | {b} | – | – | – | – | {how} |")
            continue
        base = results.get(("stock", b))
        x = f"{tps / base:.2f}" if base else "–"
        print(f"| {mode} | {b} | {tps:.1f} | {ms:.2f} | {mbu * 100 if mbu else float('nan'):.1f} | {x} | {how} |")
    print()


if __name__ == "__main__":
    raise SystemExit(main())
