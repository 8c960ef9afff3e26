"""CPU cost of the telemetry sampler thread, and how many counter readings a window gets.

    python benchmarks/sampler_cost.py --seconds 30 --interval 0.1
    python benchmarks/sampler_cost.py --device cpu --process-tree      # the CPU estimate, scoped

Prints the source's energy-counter cost and cadence (NVML), the share of one core the sampling
thread used over the run (thread CPU time / wall time), and how many real counter readings, and
so sub-windows bounded by them, a 20 s window holds (the fewest over every 20 s stretch of the run).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from carbontop.telemetry.sampler import TelemetrySampler  # noqa: E402
from carbontop.telemetry.sources import open_power_source  # noqa: E402

WINDOW_S = 20.0  # the minimum steady-state window on a GPU


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--process-tree", action="store_true",
                    help="on a CPU, follow this process tree (as a sweep of a local engine does)")
    args = ap.parse_args()
    source = open_power_source(args.device, process_root=os.getpid() if args.process_tree else None)
    sampler = TelemetrySampler(source, interval_s=args.interval)
    sampler.start()
    time.sleep(1.0)
    cpu0, t0, ticks0 = sampler.thread_cpu_s, time.time(), sampler.ticks
    time.sleep(args.seconds)
    cpu1, t1, ticks1 = sampler.thread_cpu_s, time.time(), sampler.ticks
    sampler.wait_for(t1, timeout_s=3.0)
    sampler.stop()
    print(f"devices: {source.device_names()}  source: {source.kind}  scope: {source.scope.value}")
    if hasattr(source, "counter_info"):
        print(f"energy counter: {source.counter_info()}")
    print(f"{ticks1 - ticks0} ticks in {t1 - t0:.1f} s ({(ticks1 - ticks0) / (t1 - t0):.1f} Hz); "
          f"sampler thread CPU {100 * (cpu1 - cpu0) / (t1 - t0):.2f}% of a core")
    readings = sampler.counter_readings(t0, t1)
    print(f"{len(readings)} counter readings in {t1 - t0:.1f} s")
    if t1 - t0 >= WINDOW_S:
        fewest = min(
            sum(1 for t, _ in readings if start <= t <= start + WINDOW_S)
            for start, _ in readings
            if start + WINDOW_S <= t1
        )
        print(f"fewest sub-windows bounded by counter readings in a {WINDOW_S:g} s window: "
              f"{max(0, fewest - 1)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
