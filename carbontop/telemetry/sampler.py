"""The sampler thread: reads a power source every interval into a ring buffer, and answers
"how much energy went into this time window" from what it kept.

Windows (a sweep point's first request to its last) never fall on sample times, so every
window figure interpolates at the edges:

- Energy counter (NVML, RAPL, the estimate's integral): the energy between two counter readings
  is the counter's change, exactly; a window edge that falls between two readings takes the
  share of that change given by the instant power curve (the trapezoid of power from the earlier
  reading to the edge over the trapezoid across the whole counter interval). NVML reads its
  costly counter only every few ticks (sources.COUNTER_CPU_BUDGET) but power every tick, so the
  edges follow the power curve, not a straight line across up to 2 s. Where power cannot shape
  an interval (no power covering it, or none drawn: a zero integral), and for sources whose power
  is not an independent instant reading (RAPL, the estimate: `instant_power` False), the counter
  is interpolated linearly. A counter that goes backwards (driver reload) adds nothing for that
  interval. The label stays "nvml-counter": the total is the counter's, only its split at the
  edges comes from power.
- Instant power (the check, and the fallback where a GPU has no counter): power is taken as
  linear between samples, and its exact integral over [t0, t1] is the trapezoid rule with the
  power at t0 and t1 interpolated.

Outside the span the readings cover nothing is known, so nothing is counted: ask about a window
only once the sampler has a counter reading past its end (`wait_for(t1)`, which also asks the
source to read the counter on its next tick).

The loop must stay cheap (under 1% of a core at 10 Hz, all told): plain lists and deques, one
lock, no pandas, and it sleeps to the next tick deadline so that ticks do not drift. With NVML's
cheap readings the loop takes about 0.25% of a core at 10 Hz (a 2-core VM, wake-ups included);
the NVML energy counter gets its own 0.3% (sources.COUNTER_CPU_BUDGET); 0.71% in all on an H100.
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
# Samples looked at beyond each window edge: at least _EDGE_MARGIN, and further out until
# _EDGE_COUNTERS counter readings are in (they come only every k-th tick, and a reading that failed
# is None), but never more than _EDGE_SCAN samples, so that a source without a counter does not
# make every window scan the whole history.
_EDGE_MARGIN = 50
_EDGE_COUNTERS = 3
_EDGE_SCAN = 2000


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


class _Anchored:
    """A device's running energy from its counter, split inside each counter interval by power.

    At counter readings it is the (unwrapped) counter itself, so energy over whole counter
    intervals is the counter's change. Between readings a and b, the change is shared out in
    proportion to power's trapezoid integral from a, where the power curve covers [a, b] and has
    a positive integral there; otherwise linearly in time. `ts` (the counter readings and the
    power samples between the first and the last of them) is the grid for energy_chunks.
    """

    def __init__(self, counter: _Cumulative, power: _Cumulative | None) -> None:
        self.counter = counter
        self.power = power
        if power is None:
            self.ts = counter.ts
        else:
            c0, c1 = counter.ts[0], counter.ts[-1]
            inner = power.ts[bisect_right(power.ts, c0) : bisect_left(power.ts, c1)]
            self.ts = sorted({*counter.ts, *inner})

    def at(self, t: float) -> float:
        ts, cum, p = self.counter.ts, self.counter.cum, self.power
        if p is not None and ts[0] < t < ts[-1]:
            i = bisect_right(ts, t) - 1  # ts[i] <= t < ts[i + 1]
            t_a, t_b = ts[i], ts[i + 1]
            gain = cum[i + 1] - cum[i]
            if gain and p.ts[0] <= t_a and p.ts[-1] >= t_b:
                whole = p.between(t_a, t_b)
                if whole > 0:
                    return cum[i] + gain * (p.between(t_a, t) / whole)
        return self.counter.at(t)  # at a reading, outside them, or unshaped: linear

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
        self._last_counter_t: dict[int, float] = {}  # per device, its latest counter reading
        # Counter readings by tick, for sub-windows bounded by real readings: per tick that read a
        # counter, {device: (t_s, unwrapped energy_j)}. The unwrapped value is the counter with
        # every backward step (a driver reload) left out, as energy_between counts it.
        self._counter_ticks: deque[dict[int, tuple[float, float]]] = deque(maxlen=self._maxlen)
        self._unwrapped: dict[int, tuple[float, float]] = {}  # device -> (last raw, unwrapped)
        # A source whose counter is costly schedules it by the tick (sources.NvmlSource).
        tune = getattr(source, "set_tick_interval", None)
        if tune is not None:
            tune(self.interval_s)
        self._request_counter: Callable[[], None] | None = getattr(source, "request_counter", None)
        self._shape_by_power = bool(getattr(source, "instant_power", False))
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
        except Exception as err:  # noqa: BLE001 - a source that fails once must not end the sampling
            self.read_errors += 1
            self.last_error = f"{err.__class__.__name__}: {err}"
            return
        self._ingest(samples)

    def _ingest(self, samples: Iterable[Sample]) -> None:
        with self._new_sample:
            counters: dict[int, tuple[float, float]] = {}
            for s in samples:
                dq = self._devices.get(s.gpu_index)
                if dq is None:
                    dq = self._devices[s.gpu_index] = deque(maxlen=self._maxlen)
                dq.append(s)
                self._pending.append(s)
                if s.energy_j is not None:
                    self._last_counter_t[s.gpu_index] = s.t_s
                    last = self._unwrapped.get(s.gpu_index)
                    if last is None:
                        unwrapped = s.energy_j
                    else:
                        unwrapped = last[1] + max(0.0, s.energy_j - last[0])
                    self._unwrapped[s.gpu_index] = (s.energy_j, unwrapped)
                    counters[s.gpu_index] = (s.t_s, unwrapped)
            if counters:
                self._counter_ticks.append(counters)
            self.ticks += 1
            self._new_sample.notify_all()

    def wait_for(self, t_s: float, timeout_s: float = 2.0) -> bool:
        """Block until every device has a reading that closes a window ending at t_s: a counter
        reading at or after t_s for a device that has given counter readings, any sample at or
        after t_s for one that has not. False on timeout.

        Call it with a window's end before asking for the window's energy, so that the edge is
        placed rather than cut off. Once t_s has passed it asks the source to read its counter on
        the next tick, so the wait is about one tick, not the counter's period.
        """

        def closed(gpu: int, dq: deque[Sample]) -> bool:
            last_counter_t = self._last_counter_t.get(gpu)
            if last_counter_t is not None:
                return last_counter_t >= t_s
            return bool(dq) and dq[-1].t_s >= t_s

        def passed() -> bool:
            return bool(self._devices) and all(closed(g, dq) for g, dq in self._devices.items())

        end = time.monotonic() + timeout_s
        with self._new_sample:
            while not passed():
                if self._request_counter is not None and time.time() >= t_s:
                    self._request_counter()
                if not self.running:
                    return False  # nothing will come: say so now rather than at the timeout
                left = end - time.monotonic()
                if left <= 0:
                    return False
                # woken by every tick; a t_s still in the future is looked at again then
                self._new_sample.wait(left)
            return True

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

    def counter_readings(
        self, t0: float, t1: float, gpu: int | None = None
    ) -> list[tuple[float, float]]:
        """(t_s, energy_j) for every counter reading inside [t0, t1], oldest first.

        These are the real readings that bound sub-windows: the energy between two of them is
        exactly the counter's change (energy_between interpolates only at a window's edges). The
        values are the counter in joules with every backward step (a driver reload) left out, so
        differences between any two readings are what energy_between counts.

        `gpu` None: summed over the devices, one reading per tick on which every device that
        gives counter readings gave one (a tick where one GPU's read failed is left out); its
        time is the mean of the devices' reading times, which lie within one tick (each GPU's
        counter is read right after the last's). A device that has never given a counter
        reading (power only) is not part of the sum.
        """
        with self._lock:
            ticks = list(self._counter_ticks)
            counter_devices = set(self._last_counter_t)
        out: list[tuple[float, float]] = []
        for tick in ticks:
            if gpu is not None:
                if gpu not in tick:
                    continue
                t_s, energy_j = tick[gpu]
            else:
                if not counter_devices or set(tick) != counter_devices:
                    continue
                t_s = sum(t for t, _ in tick.values()) / len(tick)
                energy_j = sum(e for _, e in tick.values())
            if t0 <= t_s <= t1:
                out.append((t_s, energy_j))
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
        """The samples inside [t0, t1] with a margin either side (see _EDGE_MARGIN), and how many
        are inside."""
        lo = bisect_left(series, t0, key=_T)
        hi = bisect_right(series, t1, key=_T)
        start, found = lo, 0
        stop_at = max(0, lo - _EDGE_SCAN)
        while start > stop_at and found < _EDGE_COUNTERS:
            start -= 1
            found += series[start].energy_j is not None
        end, found = hi, 0
        stop_at = min(len(series), hi + _EDGE_SCAN)
        while end < stop_at and found < _EDGE_COUNTERS:
            found += series[end].energy_j is not None
            end += 1
        start = min(start, max(0, lo - _EDGE_MARGIN))
        end = max(end, hi + _EDGE_MARGIN)
        return series[start:end], hi - lo

    def _curves(
        self, t0: float, t1: float
    ) -> tuple[dict[int, _Anchored | _Cumulative], dict[int, _Cumulative], int, bool]:
        """Per device: the energy curve used (counter, else power), the power curve, the most
        samples any device has inside the window, and whether any device used power for energy."""
        energy: dict[int, _Anchored | _Cumulative] = {}
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
                shape = by_power if self._shape_by_power and by_power.usable() else None
                energy[gpu] = _Anchored(counter, shape)
            elif by_power.usable():
                energy[gpu] = by_power
                integrated_fallback = True
        return energy, power, n_inside, integrated_fallback

    def _label(self, integrated_fallback: bool) -> str:
        # "nvml-counter" also where the edges were placed by power: the total is the counter's.
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

        The intervals are those of the device with the most samples in the window (every tick's,
        not just the counter's, where power shapes the counter), clipped to the window and to the
        span the data covers; every device's energy is split on that same grid, so the chunks add
        up to energy_between(t0, t1).energy_j (to rounding: the values telescope).
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
        """Mean power over the next duration_s (blocks). Starts the thread for it if stopped.

        None where the reading that closes the span never came (a counter that stopped
        answering): an idle figure from part of the span would be silently wrong.
        """
        was_running = self.running
        if not was_running:
            self.start()
        try:
            t0 = time.time()
            time.sleep(duration_s)
            t1 = time.time()
            if not self.wait_for(t1, timeout_s=max(2.0, 3 * self.interval_s)):
                return None
            return self.mean_power_w(t0, t1)
        finally:
            if not was_running:
                self.stop()
