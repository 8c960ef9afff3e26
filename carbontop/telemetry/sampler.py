"""The sampler thread: reads a power source every interval into a ring buffer, and answers
"how much energy went into this time window" from what it kept.

Windows (a sweep point's first request to its last) never fall on sample times, so every
window figure interpolates at the edges:

- Energy counter (NVML, RAPL, the estimate's integral): the counter's value at t0 and t1 is
  interpolated linearly between the samples around them, and the energy is the difference.
  A counter that goes backwards (driver reload) adds nothing for that interval.
- Instant power (the check, and the fallback where a GPU has no counter): power is taken as
  linear between samples, and its exact integral over [t0, t1] is the trapezoid rule with the
  power at t0 and t1 interpolated.

Outside the span the samples cover nothing is known, so nothing is counted: ask about a window
only once the sampler has passed its end (`wait_for(t1)`).

The loop must stay cheap (well under 1% of a core at 10 Hz): plain lists and deques, one lock,
no pandas, and it sleeps to the next tick deadline so that ticks do not drift.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterable
from operator import attrgetter

from carbontop.core.records import EnergyReading, Sample
from carbontop.telemetry.sources import PowerSource

_T = attrgetter("t_s")
# Samples looked at beyond each window edge: enough to bridge a few failed counter readings
# (a reading that failed is None) without scanning the whole history.
_EDGE_MARGIN = 50


class _Cumulative:
    """A device's running energy as a function of time, built from one kind of reading.

    Counter points are joined linearly; power points make the running trapezoid integral, whose
    value between two samples is exact for power varying linearly between them. Times before the
    first point or after the last clamp to the ends (nothing counted outside the data).
    """

    def __init__(self, ts: list[float], cum: list[float], power: list[float] | None) -> None:
        self.ts = ts
        self.cum = cum
        self.power = power  # None for a counter

    @classmethod
    def from_counter(cls, samples: Iterable[Sample]) -> _Cumulative:
        ts: list[float] = []
        cum: list[float] = []
        total = 0.0
        prev: float | None = None
        for s in samples:
            if s.energy_j is None:
                continue
            if prev is not None and s.energy_j > prev:
                total += s.energy_j - prev
            prev = s.energy_j
            ts.append(s.t_s)
            cum.append(total)
        return cls(ts, cum, None)

    @classmethod
    def from_power(cls, samples: Iterable[Sample]) -> _Cumulative:
        ts: list[float] = []
        cum: list[float] = []
        power: list[float] = []
        total = 0.0
        for s in samples:
            if s.power_w is None:
                continue
            if ts:
                total += 0.5 * (power[-1] + s.power_w) * (s.t_s - ts[-1])
            ts.append(s.t_s)
            cum.append(total)
            power.append(s.power_w)
        return cls(ts, cum, power)

    def usable(self) -> bool:
        return len(self.ts) >= 2

    def at(self, t: float) -> float:
        ts = self.ts
        if t <= ts[0]:
            return self.cum[0]
        if t >= ts[-1]:
            return self.cum[-1]
        i = bisect_right(ts, t) - 1  # ts[i] <= t < ts[i + 1]
        t_a, t_b = ts[i], ts[i + 1]
        frac = (t - t_a) / (t_b - t_a)  # t_b > t_a: t lies strictly between them
        if self.power is None:
            return self.cum[i] + frac * (self.cum[i + 1] - self.cum[i])
        p_a = self.power[i]
        p_t = p_a + frac * (self.power[i + 1] - p_a)
        return self.cum[i] + 0.5 * (p_a + p_t) * (t - t_a)

    def between(self, t0: float, t1: float) -> float:
        return self.at(t1) - self.at(t0)


class TelemetrySampler:
    """Reads `source` every `interval_s` on a daemon thread and keeps `history_s` of samples."""

    def __init__(
        self, source: PowerSource, interval_s: float = 0.1, history_s: float = 900.0
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.source = source
        self.interval_s = float(interval_s)
        self.history_s = float(history_s)
        self._maxlen = max(2, math.ceil(history_s / interval_s) + 1)
        self._devices: dict[int, deque[Sample]] = {}
        self._pending: deque[Sample] = deque(
            maxlen=self._maxlen * max(1, len(source.device_names()))
        )
        self._lock = threading.Lock()
        self._new_sample = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0
        self.read_errors = 0
        self.last_error: str | None = None
        self.thread_cpu_s = 0.0  # CPU time the sampling thread has used, for the cost check

    # ---- the thread -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="carbontop-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        deadline = time.monotonic()
        while not self._stop.is_set():
            self._tick()
            deadline += self.interval_s
            now = time.monotonic()
            if deadline < now:
                # Fell behind (a slow read, a suspended process): skip the missed ticks, keeping
                # the phase, rather than firing a burst of back-to-back reads.
                deadline += math.ceil((now - deadline) / self.interval_s) * self.interval_s
            self.thread_cpu_s = time.thread_time()
            self._stop.wait(deadline - now)

    def _tick(self) -> None:
        try:
            samples = self.source.read()
        except Exception as err:  # a source that fails once must not end the sampling
            self.read_errors += 1
            self.last_error = f"{err.__class__.__name__}: {err}"
            return
        self._ingest(samples)

    def _ingest(self, samples: Iterable[Sample]) -> None:
        with self._new_sample:
            for s in samples:
                dq = self._devices.get(s.gpu_index)
                if dq is None:
                    dq = self._devices[s.gpu_index] = deque(maxlen=self._maxlen)
                dq.append(s)
                self._pending.append(s)
            self.ticks += 1
            self._new_sample.notify_all()

    def wait_for(self, t_s: float, timeout_s: float = 2.0) -> bool:
        """Block until every device has a sample at or after t_s; False on timeout.

        Call it with a window's end before asking for the window's energy, so that the edge is
        interpolated rather than cut off.
        """

        def passed() -> bool:
            return bool(self._devices) and all(
                dq and dq[-1].t_s >= t_s for dq in self._devices.values()
            )

        with self._new_sample:
            return self._new_sample.wait_for(passed, timeout=timeout_s)

    # ---- readers ----------------------------------------------------------------------------

    def _snapshot(self) -> dict[int, list[Sample]]:
        with self._lock:
            return {gpu: list(dq) for gpu, dq in self._devices.items()}

    def samples(
        self, t0: float | None = None, t1: float | None = None, gpu: int | None = None
    ) -> list[Sample]:
        """Kept samples with t0 <= t_s <= t1 (either end open when None), oldest first."""
        snap = self._snapshot()
        out: list[Sample] = []
        for index, series in snap.items():
            if gpu is not None and index != gpu:
                continue
            lo = 0 if t0 is None else bisect_left(series, t0, key=_T)
            hi = len(series) if t1 is None else bisect_right(series, t1, key=_T)
            out.extend(series[lo:hi])
        if len(snap) > 1 and gpu is None:
            out.sort(key=_T)
        return out

    def latest(self) -> dict[int, Sample]:
        with self._lock:
            return {gpu: dq[-1] for gpu, dq in self._devices.items() if dq}

    def drain_new(self) -> list[Sample]:
        """Samples not handed out by an earlier call, oldest first. Kept for at most history_s."""
        with self._lock:
            out = list(self._pending)
            self._pending.clear()
        return out

    @staticmethod
    def _around(series: list[Sample], t0: float, t1: float) -> tuple[list[Sample], int]:
        """The samples inside [t0, t1] with a margin either side, and how many are inside."""
        lo = bisect_left(series, t0, key=_T)
        hi = bisect_right(series, t1, key=_T)
        return series[max(0, lo - _EDGE_MARGIN) : hi + _EDGE_MARGIN], hi - lo

    def _curves(
        self, t0: float, t1: float
    ) -> tuple[dict[int, _Cumulative], dict[int, _Cumulative], int, bool]:
        """Per device: the energy curve used (counter, else power), the power curve, the most
        samples any device has inside the window, and whether any device used power for energy."""
        energy: dict[int, _Cumulative] = {}
        power: dict[int, _Cumulative] = {}
        n_inside = 0
        integrated_fallback = False
        for gpu, series in self._snapshot().items():
            near, inside = self._around(series, t0, t1)
            n_inside = max(n_inside, inside)
            counter = _Cumulative.from_counter(near)
            by_power = _Cumulative.from_power(near)
            if by_power.usable():
                power[gpu] = by_power
            if counter.usable():
                energy[gpu] = counter
            elif by_power.usable():
                energy[gpu] = by_power
                integrated_fallback = True
        return energy, power, n_inside, integrated_fallback

    def _label(self, integrated_fallback: bool) -> str:
        if self.source.kind == "nvml":
            return "nvml-power-integrated" if integrated_fallback else "nvml-counter"
        return self.source.kind

    def energy_between(self, t0: float, t1: float) -> EnergyReading:
        """Energy over [t0, t1], summed over devices, from the counter where there is one."""
        if t1 < t0:
            raise ValueError("energy_between needs t0 <= t1")
        energy, power, n_inside, fallback = self._curves(t0, t1)
        per_gpu = {gpu: curve.between(t0, t1) for gpu, curve in energy.items()}
        integrated = sum(curve.between(t0, t1) for curve in power.values()) if power else None
        return EnergyReading(
            energy_j=sum(per_gpu.values()),
            source=self._label(fallback),
            integrated_j=integrated,
            per_gpu_j=per_gpu,
            estimated=self.source.estimated,
            n_samples=n_inside,
        )

    def energy_chunks(self, t0: float, t1: float) -> list[tuple[float, float]]:
        """(mid-time, energy_j) per interval between consecutive samples inside [t0, t1].

        The intervals are those of the device with the most samples in the window, clipped to the
        window and to the span the data covers; every device's energy is split on that same grid,
        so the chunks add up to energy_between(t0, t1).energy_j exactly.
        """
        if t1 <= t0:
            return []
        energy, _, _, _ = self._curves(t0, t1)
        if not energy:
            return []
        lo = max(t0, min(c.ts[0] for c in energy.values()))
        hi = min(t1, max(c.ts[-1] for c in energy.values()))
        if hi <= lo:
            return []
        ref = max(energy.values(), key=lambda c: bisect_right(c.ts, hi) - bisect_left(c.ts, lo))
        inner = ref.ts[bisect_right(ref.ts, lo) : bisect_left(ref.ts, hi)]
        grid = [lo, *inner, hi]
        at: list[Callable[[float], float]] = [c.at for c in energy.values()]
        values = [sum(f(t) for f in at) for t in grid]
        return [
            (0.5 * (grid[k] + grid[k + 1]), values[k + 1] - values[k]) for k in range(len(grid) - 1)
        ]

    def peak_mem_bytes(self, t0: float, t1: float) -> int | None:
        """Sum over devices of each one's highest memory-used reading in [t0, t1].

        A device with no reading inside the window (a window shorter than the interval) counts
        the higher of the readings just before and just after it.
        """
        total = 0
        seen = False
        for series in self._snapshot().values():
            lo = bisect_left(series, t0, key=_T)
            hi = bisect_right(series, t1, key=_T)
            if hi > lo:
                chosen = series[lo:hi]
            elif 0 < lo < len(series):  # between two readings: the window saw one of them
                chosen = series[lo - 1 : lo + 1]
            else:  # outside everything kept
                continue
            readings = [s.mem_used_bytes for s in chosen if s.mem_used_bytes is not None]
            if readings:
                total += max(readings)
                seen = True
        return total if seen else None

    def mean_power_w(self, t0: float, t1: float) -> float | None:
        """energy_between / (t1 - t0); None for an empty window or one outside all samples."""
        if t1 <= t0:
            return None
        energy, _, _, _ = self._curves(t0, t1)
        if not any(c.ts[0] < t1 and c.ts[-1] > t0 for c in energy.values()):
            return None
        return self.energy_between(t0, t1).energy_j / (t1 - t0)

    def measure_idle_power_w(self, duration_s: float = 3.0) -> float | None:
        """Mean power over the next duration_s (blocks). Starts the thread for it if stopped."""
        was_running = self.running
        if not was_running:
            self.start()
        try:
            t0 = time.time()
            time.sleep(duration_s)
            t1 = time.time()
            self.wait_for(t1, timeout_s=max(2.0, 3 * self.interval_s))
            return self.mean_power_w(t0, t1)
        finally:
            if not was_running:
                self.stop()
