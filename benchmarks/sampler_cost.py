"""CPU cost of the telemetry sampler thread on this machine's GPUs.

    python benchmarks/sampler_cost.py --seconds 30 --interval 0.1

Prints the NVML source's measured energy-counter cost, how often it reads the counter, and the
share of one core the sampling thread used over the run (thread CPU time / wall time).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from carbontop.telemetry.sampler import TelemetrySampler  # noqa: E402
from carbontop.telemetry.sources import open_power_source  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    source = open_power_source(args.device)
    sampler = TelemetrySampler(source, interval_s=args.interval)
    sampler.start()
    time.sleep(1.0)
    cpu0, t0, ticks0 = sampler.thread_cpu_s, time.time(), sampler.ticks
    time.sleep(args.seconds)
    cpu1, t1, ticks1 = sampler.thread_cpu_s, time.time(), sampler.ticks
    sampler.stop()
    print(f"devices: {source.device_names()}  source: {source.kind}")
    if hasattr(source, "counter_info"):
        print(f"energy counter: {source.counter_info()}")
    print(f"{ticks1 - ticks0} ticks in {t1 - t0:.1f} s ({(ticks1 - ticks0) / (t1 - t0):.1f} Hz); "
          f"sampler thread CPU {100 * (cpu1 - cpu0) / (t1 - t0):.2f}% of a core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
