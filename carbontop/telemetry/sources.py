"""Power sources: where a reading of power and energy comes from.

Three sources, best first:

- `NvmlSource`: NVIDIA GPUs through NVML (package nvidia-ml-py, module `pynvml`). Energy comes from
  the total-energy counter (mJ since the driver loaded, Volta and newer), which is the trustworthy
  total; instant power on A100/H100 is sampled only about a quarter of the time (Yang et al.,
  "Part-time Power Measurements", SC24), so it is kept for graphs, as a check, and to place
  window edges between counter readings. The counter is costly to read, so it is read only every
  k-th tick (see `choose_counter_every`); the other ticks carry energy_j=None.
- `RaplSource`: the CPU packages' RAPL counters under Linux powercap.
- `EstimateSource`: no hardware measures anything; CPU power is modelled from TDP and load.

Every source returns `Sample`s with `t_s = time.time()`, so that they line up with the engine's
request times. `pynvml` is imported inside functions only, so that the core stays importable
without it.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from carbontop.core.records import Sample
from carbontop.errors import CarbontopError, ConfigError
from carbontop.telemetry.process_tree import ProcessTree, TreeReading

# nvmlFieldValue ids (nvml.h): NVML_FI_DEV_POWER_AVERAGE = 185, NVML_FI_DEV_POWER_INSTANT = 186.
NVML_FI_DEV_POWER_INSTANT = 186

# CPU time per NVML call from Python (time.thread_time), measured on an H100 80GB HBM3 in a
# Firecracker VM, driver 580.159.04: nvmlDeviceGetTotalEnergyConsumption 3-7 ms (!); field 186
# (instant power) 5 us; nvmlDeviceGetPowerUsage 2 us; GetMemoryInfo 7 us; GetUtilizationRates 2 us;
# GetTemperature 2 us; GetClockInfo 1 us. Asking for the energy as field 83
# (NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION) together with 186 costs the same (4133 us).
#
# The trade-off. A point's figures carry a confidence interval from sub-windows bounded by real
# counter readings, so a window of the minimum length (20 s on a GPU) needs at least ten of them:
# the counter must be read at least every COUNTER_MAX_INTERVAL_S = 1 s (>= 19 sub-windows in 20 s),
# whatever it costs. Read every tick at 10 Hz it would take 3-7% of a core per GPU, so NvmlSource
# times its first few counter reads and reads it every k-th tick: the smallest k that keeps the
# counter's average cost under COUNTER_CPU_BUDGET (1% of a core), but never less often than the
# 1 s cap. At the H100's 3-4 ms that is every 0.4 s (50 readings in 20 s, ~1% of a core for the
# whole sampler); at 7 ms every 0.7 s; with 8 GPUs the cap wins (7 ms x 8 = 56 ms a second, 5.6%
# of one core). The cost falls on the parent process's sampler thread: NVML calls release the
# GIL and the engine runs in its own process, so it competes with the engine only for a core;
# benchmarks/README.md measured a sampler at 1% of a core beside the engine (same process, the
# worst case) as a tokens/s ratio of 0.9964, within run-to-run noise. The sampler places window
# edges between counter readings by the instant power curve, so energy stays anchored on the
# counter.
COUNTER_CPU_BUDGET = 0.01  # 10 ms of CPU per second for the counter (1% of a core)
COUNTER_MAX_INTERVAL_S = 1.0  # read at least this often, whatever it costs (>= 19 sub-windows in 20 s)
COUNTER_CALIBRATION_READS = 3  # timed reads per GPU at open, after one untimed (warm-up) read

# CodeCarbon's fallback TDP when the CPU model is not in its table: POWER_CONSTANT = 85 (W),
# codecarbon/external/hardware.py (mlco2/codecarbon).
DEFAULT_CPU_TDP_W = 85.0
# CodeCarbon's "cpu_load" mode, machine tracking (CPU._get_power_from_cpu_load in the same file):
# power = TDP x (0.1 + 0.9 x load^3), "cubic relationship with minimum 10% of TDP".
ESTIMATE_IDLE_SHARE = 0.1
ESTIMATE_LOAD_EXPONENT = 3.0


class EnergyScope(str, Enum):
    """What a source's energy covers, so that a row can say whether other work is in it."""

    DEVICES = "devices"  # the GPUs in use, whole (NVML's counter: any other process on them counts too)
    PROCESS_TREE = "process-tree"  # carbontop and the engine processes it started, nothing else
    MACHINE = "machine"  # the whole machine's CPU: every other process on it is included


class PowerSource(Protocol):
    """What the sampler reads.

    Two optional hooks, looked up with getattr by the sampler (sources whose counter is cheap
    have nothing to tune): `set_tick_interval(interval_s)`, the sampler's period, and
    `request_counter()`, read the energy counter on the next tick whatever the schedule.
    """

    kind: str  # "nvml", "rapl" or "estimate"
    estimated: bool  # True only for the estimate source
    has_energy_counter: bool  # True where energy_j comes from a hardware counter
    # True where power_w is an instant reading independent of the counter (NVML), so that it may
    # shape the energy between two counter readings; RAPL's power is the counter's own difference
    # and the estimate's is constant over each span, so for them the counter is interpolated
    # linearly.
    instant_power: bool
    scope: EnergyScope
    # One sentence for the run and its rows where the figure includes work that is not the
    # engine's (None where it does not, as far as the source can tell).
    scope_note: str | None

    def device_names(self) -> dict[int, str]: ...

    def read(self) -> list[Sample]: ...

    def close(self) -> None: ...


class NvmlUnavailable(CarbontopError):
    """NVML cannot be used here (no package, no driver, no GPU); 'auto' then falls back to the CPU."""


# ---------------------------------------------------------------------------------------------
# NVML


def _nvml_init() -> Any:
    """Import pynvml and initialise NVML, or raise NvmlUnavailable with one sentence."""
    try:
        import pynvml
    except ImportError:
        raise NvmlUnavailable(
            "NVML is not available because the nvidia-ml-py package is not installed."
        ) from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        raise NvmlUnavailable(
            f"NVML could not start ({err}); is the NVIDIA driver installed and loaded?"
        ) from None
    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _field_value(pynvml: Any, fv: Any) -> float:
    """The number inside an nvmlFieldValue_t, whatever its declared type."""
    v = fv.value
    by_type = {
        pynvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
        pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
        pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
        pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
        pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
    }
    return float(getattr(v, by_type.get(fv.valueType, "uiVal")))


def choose_counter_every(
    cost_per_read_s: float,
    tick_interval_s: float,
    cpu_budget: float = COUNTER_CPU_BUDGET,
    max_interval_s: float = COUNTER_MAX_INTERVAL_S,
) -> int:
    """Read the counter every k-th tick: the smallest k >= 1 with
    cost_per_read_s / (k x tick_interval_s) <= cpu_budget, but no more ticks than fit in
    max_interval_s (the cap wins over the budget: a counter read too seldom leaves windows open).

    cost_per_read_s is the CPU time of one tick's counter reads (all GPUs together).
    """
    k = 1
    if cost_per_read_s > 0 and cpu_budget > 0:
        # the small slack keeps an exact ratio (8.000000000000002) from rounding up a whole tick
        k = max(1, math.ceil(cost_per_read_s / (cpu_budget * tick_interval_s) - 1e-9))
    cap = max(1, math.floor(max_interval_s / tick_interval_s + 1e-9))
    return min(k, cap)


class NvmlSource:
    """Per-GPU readings through NVML. Any one reading that fails is None, never a crash.

    Instant power, memory, utilisation, temperature and clock are read every tick; the energy
    counter every `counter_every`-th tick (and on the tick after `request_counter()`), chosen
    from the measured cost of the counter (see COUNTER_CPU_BUDGET). The first read() always
    reads it.
    """

    kind = "nvml"
    estimated = False
    instant_power = True
    scope = EnergyScope.DEVICES
    scope_note = None

    def __init__(
        self,
        gpu_indices: Sequence[int] | None = None,
        *,
        tick_interval_s: float = 0.1,
        counter_cpu_budget: float = COUNTER_CPU_BUDGET,
        counter_max_interval_s: float = COUNTER_MAX_INTERVAL_S,
    ) -> None:
        pynvml = _nvml_init()
        self._pynvml = pynvml
        self._closed = False
        try:
            count = pynvml.nvmlDeviceGetCount()
            if count == 0:
                raise NvmlUnavailable("NVML started but found no NVIDIA GPU on this machine.")
            indices = list(range(count)) if gpu_indices is None else [int(i) for i in gpu_indices]
            for i in indices:
                if not 0 <= i < count:
                    raise CarbontopError(
                        f"GPU {i} does not exist; this machine has {count} GPU(s), "
                        f"numbered 0 to {count - 1}."
                    )
            self._handles = {i: pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices}
            self._names = {i: _text(pynvml.nvmlDeviceGetName(h)) for i, h in self._handles.items()}
        except pynvml.NVMLError as err:
            self.close()
            raise NvmlUnavailable(f"NVML could not list the GPUs ({err}).") from None
        except CarbontopError:
            self.close()
            raise
        # Readings a GPU answered with NotSupported are not asked again: each one costs a driver
        # call on every tick. {(gpu, what)}.
        self._unsupported: set[tuple[int, str]] = set()
        self.counter_cpu_budget = float(counter_cpu_budget)
        self.counter_max_interval_s = float(counter_max_interval_s)
        if tick_interval_s <= 0:
            self.close()
            raise ValueError("tick_interval_s must be positive")
        self.tick_interval_s = float(tick_interval_s)
        cpu_costs: list[float] = []
        wall_costs: list[float] = []
        for i, h in self._handles.items():
            # the first call finds out whether the GPU has the counter and warms the path up
            if self._call(i, "energy", pynvml.nvmlDeviceGetTotalEnergyConsumption, h) is None:
                continue
            for _ in range(COUNTER_CALIBRATION_READS):
                cpu0, wall0 = time.thread_time(), time.perf_counter()
                self._call(i, "energy", pynvml.nvmlDeviceGetTotalEnergyConsumption, h)
                cpu_costs.append(time.thread_time() - cpu0)
                wall_costs.append(time.perf_counter() - wall0)
        counters = [i for i in self._handles if (i, "energy") not in self._unsupported]
        self.has_energy_counter = len(counters) == len(self._handles)
        self._n_counters = len(counters)
        # Median per call: robust to one read that a context switch or page fault made slow.
        self.counter_call_cpu_s: float | None = statistics.median(cpu_costs) if cpu_costs else None
        self.counter_call_wall_s: float | None = (
            statistics.median(wall_costs) if wall_costs else None
        )
        self.counter_every = 1
        self._choose_counter_every()
        self._since_counter = 0  # ticks since the counter was last read
        self._counter_wanted = True  # the first read() reads it: every window needs an anchor

    def _choose_counter_every(self) -> None:
        per_tick = (self.counter_call_cpu_s or 0.0) * self._n_counters
        self.counter_every = choose_counter_every(
            per_tick, self.tick_interval_s, self.counter_cpu_budget, self.counter_max_interval_s
        )

    def set_tick_interval(self, interval_s: float) -> None:
        """The sampler's period; k is chosen for it."""
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.tick_interval_s = float(interval_s)
        self._choose_counter_every()

    @property
    def counter_interval_s(self) -> float:
        """Seconds between scheduled counter reads (k x the tick interval)."""
        return self.counter_every * self.tick_interval_s

    def request_counter(self) -> None:
        """Read the counter on the next tick (the sampler asks when a window waits to close).

        Called from another thread: a plain flag, read and cleared by read().
        """
        self._counter_wanted = True

    def counter_info(self) -> dict[str, object]:
        """How the counter is read, for the run record."""
        return {
            "counter_interval_s": self.counter_interval_s,
            "counter_every_ticks": self.counter_every,
            "counter_call_cpu_s": self.counter_call_cpu_s,
            "counter_call_wall_s": self.counter_call_wall_s,
            "counter_cpu_budget": self.counter_cpu_budget,
        }

    def device_names(self) -> dict[int, str]:
        return dict(self._names)

    def _call(self, gpu: int, what: str, fn: Any, *args: Any) -> Any:
        """fn(*args), or None where it fails; NotSupported is remembered so it is not asked again."""
        if (gpu, what) in self._unsupported:
            return None
        pynvml = self._pynvml
        try:
            return fn(*args)
        except pynvml.NVMLError as err:
            if isinstance(err, (pynvml.NVMLError_NotSupported, pynvml.NVMLError_FunctionNotFound)):
                self._unsupported.add((gpu, what))
            return None

    def _instant_power_w(self, gpu: int, handle: Any) -> float | None:
        pynvml = self._pynvml
        if (gpu, "power_instant") not in self._unsupported:
            values = self._call(
                gpu,
                "power_instant",
                pynvml.nvmlDeviceGetFieldValues,
                handle,
                [NVML_FI_DEV_POWER_INSTANT],
            )
            if values is not None:
                fv = values[0]
                if fv.nvmlReturn == pynvml.NVML_SUCCESS:
                    return _field_value(pynvml, fv) / 1000.0  # mW
                if fv.nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED:
                    self._unsupported.add((gpu, "power_instant"))
        # A 1 s average on Ampere and newer except A100 (FACTS.md); better than nothing.
        mw = self._call(gpu, "power_usage", pynvml.nvmlDeviceGetPowerUsage, handle)
        return None if mw is None else mw / 1000.0

    def read(self) -> list[Sample]:
        pynvml = self._pynvml
        self._since_counter += 1
        with_counter = self._since_counter >= self.counter_every or self._counter_wanted
        if with_counter:
            # cleared before the reads, so a request that comes during them is served next tick
            self._since_counter = 0
            self._counter_wanted = False
        out: list[Sample] = []
        for i, h in self._handles.items():
            mj = (
                self._call(i, "energy", pynvml.nvmlDeviceGetTotalEnergyConsumption, h)
                if with_counter
                else None
            )
            # The time that matters for interpolation is the counter's, so take it right after.
            t_s = time.time()
            power_w = self._instant_power_w(i, h)
            mem = self._call(i, "memory", pynvml.nvmlDeviceGetMemoryInfo, h)
            util = self._call(i, "util", pynvml.nvmlDeviceGetUtilizationRates, h)
            temp = self._call(
                i, "temp", pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU
            )
            clock = self._call(i, "clock", pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM)
            out.append(
                Sample(
                    t_s=t_s,
                    gpu_index=i,
                    power_w=power_w,
                    energy_j=None if mj is None else mj / 1000.0,
                    mem_used_bytes=None if mem is None else int(mem.used),
                    mem_total_bytes=None if mem is None else int(mem.total),
                    util_pct=None if util is None else float(util.gpu),
                    temp_c=None if temp is None else float(temp),
                    sm_clock_mhz=None if clock is None else float(clock),
                )
            )
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._pynvml.nvmlShutdown()
        except self._pynvml.NVMLError:
            pass


def nvml_environment() -> dict[str, object]:
    """Driver, NVML and CUDA driver versions, and per GPU its name, memory and power limit.

    Nothing that identifies the machine (serial, UUID, PCI bus) is included: run directories
    get shared. Returns {} when NVML cannot start.
    """
    try:
        pynvml = _nvml_init()
    except NvmlUnavailable:
        return {}

    def get(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except pynvml.NVMLError:
            return None

    try:
        env: dict[str, object] = {}
        driver = get(pynvml.nvmlSystemGetDriverVersion)
        env["driver_version"] = None if driver is None else _text(driver)
        nvml_version = get(pynvml.nvmlSystemGetNVMLVersion)
        env["nvml_version"] = None if nvml_version is None else _text(nvml_version)
        cuda = get(pynvml.nvmlSystemGetCudaDriverVersion)  # e.g. 12040 for 12.4
        env["cuda_driver_version"] = None if cuda is None else f"{cuda // 1000}.{cuda % 1000 // 10}"
        gpus: list[dict[str, object]] = []
        for i in range(get(pynvml.nvmlDeviceGetCount) or 0):
            h = get(pynvml.nvmlDeviceGetHandleByIndex, i)
            if h is None:
                continue
            name = get(pynvml.nvmlDeviceGetName, h)
            mem = get(pynvml.nvmlDeviceGetMemoryInfo, h)
            limit_mw = get(pynvml.nvmlDeviceGetEnforcedPowerLimit, h)
            cc = get(pynvml.nvmlDeviceGetCudaComputeCapability, h)
            gpus.append(
                {
                    "index": i,
                    "name": None if name is None else _text(name),
                    "memory_total_bytes": None if mem is None else int(mem.total),
                    "power_limit_w": None if limit_mw is None else limit_mw / 1000.0,
                    "compute_capability": None if cc is None else f"{cc[0]}.{cc[1]}",
                    "energy_counter": get(pynvml.nvmlDeviceGetTotalEnergyConsumption, h)
                    is not None,
                }
            )
        env["gpus"] = gpus
        return env
    finally:
        get(pynvml.nvmlShutdown)


# ---------------------------------------------------------------------------------------------
# CPU: /proc helpers shared by RAPL and the estimate


def cpu_model_name(proc_dir: str | Path = "/proc") -> str:
    """The CPU's model name from /proc/cpuinfo ('model name' on x86, other keys on Arm)."""
    try:
        text = (Path(proc_dir) / "cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            found.setdefault(key.strip().lower(), value.strip())
    for key in ("model name", "hardware", "processor", "cpu model"):
        value = found.get(key)
        if value and not value.isdigit():  # on x86 'processor' is just the CPU number
            return value
    return platform.processor() or platform.machine() or "unknown model"


def _read_meminfo(proc_dir: Path) -> tuple[int | None, int | None]:
    """(used, total) bytes of system memory; used = MemTotal - MemAvailable."""
    fields: dict[str, int] = {}
    try:
        with open(proc_dir / "meminfo") as f:
            for line in f:  # the two wanted lines come first; stop there (this runs every tick)
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemFree", "MemAvailable"):
                    fields[key] = int(rest.split()[0]) * 1024  # says kB, means KiB
                    if "MemAvailable" in fields and "MemTotal" in fields:
                        break
        total = fields["MemTotal"]
        return total - fields.get("MemAvailable", fields.get("MemFree", 0)), total
    except (OSError, KeyError, ValueError, IndexError):
        return None, None


class _CpuLoad:
    """Whole-machine CPU load from the deltas of /proc/stat's first line."""

    def __init__(self, proc_dir: Path) -> None:
        self._path = proc_dir / "stat"
        self._last = self._jiffies()
        self.load = 0.0  # 0..1, over the span between the last two reads

    def _jiffies(self) -> tuple[int, int] | None:
        """(busy, total) jiffies since boot, or None where /proc/stat cannot be read."""
        try:
            with open(self._path) as f:
                parts = f.readline().split()
        except OSError:
            return None
        if not parts or parts[0] != "cpu":
            return None
        # user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is already
        # inside user and nice, so only the first eight columns make up the total.
        values = [int(x) for x in parts[1:9]]
        total = sum(values)
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return total - idle, total

    def update(self) -> float:
        now = self._jiffies()
        if now is not None and self._last is not None:
            d_total = now[1] - self._last[1]
            if d_total > 0:  # under one jiffy since the last read: keep the last load
                self.load = min(1.0, max(0.0, (now[0] - self._last[0]) / d_total))
        if now is not None:
            self._last = now
        return self.load


# ---------------------------------------------------------------------------------------------
# RAPL


class RaplUnavailable(CarbontopError):
    """No readable RAPL package counter here; 'cpu' then falls back to the estimate."""


class _CpuMemory:
    """Memory for a CPU sample: the engine process tree's RSS where a tree is followed, else the
    machine's used memory; the total is always the machine's."""

    def __init__(self, proc_dir: Path, tree: ProcessTree | None) -> None:
        self._proc_dir = proc_dir
        self._tree = tree

    def read(self, tree_reading: TreeReading | None = None) -> tuple[int | None, int | None]:
        used, total = _read_meminfo(self._proc_dir)
        if self._tree is None:
            return used, total
        reading = tree_reading if tree_reading is not None else self._tree.read()
        return reading.engine_rss_bytes, total


def _open_tree(process_root: int | None) -> ProcessTree | None:
    if process_root is None:
        return None
    import psutil

    try:
        return ProcessTree(process_root)
    except psutil.Error as err:  # NoSuchProcess, AccessDenied: the root must exist and be readable
        raise CarbontopError(
            f"Process {process_root} cannot be followed for its CPU time ({err.__class__.__name__})."
        ) from None


class RaplSource:
    """CPU package energy from Linux powercap RAPL counters, summed over the packages.

    Reads /sys/class/powercap/intel-rapl:N/energy_uj for the package domains (intel-rapl:N, not
    the sub-domains intel-rapl:N:M, which are parts of a package; not 'psys', which is the whole
    platform and would count the packages twice). The counters wrap at max_energy_range_uj; the
    source unwraps them into one running total, in joules since the source was opened.

    A package counter cannot tell processes apart, so its energy is the whole machine's
    (`scope_note` says so). Given `process_root`, memory is that process tree's (see
    process_tree.py) and util_pct is the tree's share of the machine's CPU time, so the run shows
    how much of the load was the engine's.
    """

    kind = "rapl"
    estimated = False
    has_energy_counter = True
    instant_power = False  # power_w is the counter's own difference over the last tick
    scope = EnergyScope.MACHINE
    scope_note = (
        "RAPL measures the whole CPU package, so the energy includes every other process on this "
        "machine."
    )

    def __init__(
        self,
        powercap_dir: str | Path = "/sys/class/powercap",
        proc_dir: str | Path = "/proc",
        process_root: int | None = None,
    ) -> None:
        self._proc_dir = Path(proc_dir)
        root = Path(powercap_dir)
        domains: list[Path] = []
        for path in sorted(root.glob("intel-rapl:*")):
            if path.name.count(":") != 1:
                continue
            try:
                name = (path / "name").read_text().strip()
            except OSError:
                name = "package"
            if name.startswith("package"):
                domains.append(path)
        if not domains:
            raise RaplUnavailable(f"No RAPL package counter was found under {root}.")
        self._domains = domains
        try:
            self._max_uj = [int((d / "max_energy_range_uj").read_text()) for d in domains]
            self._last_uj = [self._read_uj(d) for d in domains]
        except (OSError, ValueError) as err:
            # Since the PLATYPUS fix (CVE-2020-8694) energy_uj is readable by root only on most
            # distributions.
            raise RaplUnavailable(
                f"The RAPL counters under {root} cannot be read ({err.__class__.__name__})."
            ) from None
        self._total_uj = 0
        self._last_t = time.time()
        self._last_total_j = 0.0
        self._load = _CpuLoad(self._proc_dir)
        self._tree = _open_tree(process_root)
        self._tree_load = _TreeLoad(self._tree) if self._tree is not None else None
        self._memory = _CpuMemory(self._proc_dir, self._tree)
        self._name = f"CPU: {cpu_model_name(self._proc_dir)}"

    @staticmethod
    def _read_uj(domain: Path) -> int:
        with open(domain / "energy_uj") as f:
            return int(f.read())

    def device_names(self) -> dict[int, str]:
        return {-1: self._name}

    def read(self) -> list[Sample]:
        for k, domain in enumerate(self._domains):
            try:
                raw = self._read_uj(domain)
            except (OSError, ValueError):
                continue  # this domain's energy since the last good read is added next time
            delta = raw - self._last_uj[k]
            if delta < 0:  # wrapped past max_energy_range_uj
                delta += self._max_uj[k]
            self._total_uj += delta
            self._last_uj[k] = raw
        t_s = time.time()
        energy_j = self._total_uj / 1e6
        dt = t_s - self._last_t
        power_w = (energy_j - self._last_total_j) / dt if dt > 0 else None
        self._last_t, self._last_total_j = t_s, energy_j
        if self._tree_load is not None:
            reading = self._tree_load.update(t_s)
            load = self._tree_load.load
            used, total = self._memory.read(reading)
        else:
            load = self._load.update()
            used, total = self._memory.read()
        return [
            Sample(
                t_s=t_s,
                gpu_index=-1,
                power_w=power_w,
                energy_j=energy_j,
                mem_used_bytes=used,
                mem_total_bytes=total,
                util_pct=100.0 * load,
            )
        ]

    def close(self) -> None:
        pass


class _TreeLoad:
    """A process tree's share of the machine's CPU time over the span since the last read."""

    def __init__(self, tree: ProcessTree) -> None:
        self.tree = tree
        self.n_cpus = tree.cpu_count()
        self._last_t = time.time()
        self._last_cpu_s = 0.0
        self.load = 0.0

    def update(self, t_s: float) -> TreeReading:
        reading = self.tree.read()
        dt = t_s - self._last_t
        if dt > 0:
            share = (reading.cpu_s - self._last_cpu_s) / (dt * self.n_cpus)
            self.load = min(1.0, max(0.0, share))
            self._last_t, self._last_cpu_s = t_s, reading.cpu_s
        return reading


# ---------------------------------------------------------------------------------------------
# Estimate


class EstimateSource:
    """CPU power modelled from TDP and load, where no counter can be read. estimated=True.

    Two models, both CodeCarbon's "cpu_load" mode (codecarbon/external/hardware.py,
    CPU._get_power_from_cpu_load), chosen by what is measured:

    - `process_root` given (carbontop's own engines): CodeCarbon's "process" tracking mode,
      power_w = tdp_w x the share of the machine's CPU time the process tree used (its CPU seconds
      over wall seconds x CPUs). Energy is then tdp_w / CPUs x the tree's CPU seconds, exactly,
      however the ticks fall; other work on the machine adds nothing, and an idle tree draws
      nothing (the machine's idle floor is not the engine's). Memory is the tree's RSS.
    - no `process_root` (a server carbontop does not start): CodeCarbon's "machine" mode,
      power_w = tdp_w x (0.1 + 0.9 x load^3), load the whole machine's busy share of CPU time
      from /proc/stat, energy integrated span by span (exact for the model: the load is that
      span's mean). `scope_note` says the figure includes other work.

    Without a TDP it uses CodeCarbon's generic 85 W (POWER_CONSTANT). energy_j runs like a counter
    from 0 at open. It is a guess: a real CPU's power depends on frequency, memory traffic and the
    whole board.
    """

    kind = "estimate"
    estimated = True
    has_energy_counter = False  # energy_j is the model's integral, not a hardware counter
    instant_power = False  # constant over each span, so the integral is linear inside it

    def __init__(
        self,
        tdp_w: float | None = None,
        proc_dir: str | Path = "/proc",
        process_root: int | None = None,
    ) -> None:
        if tdp_w is not None and tdp_w <= 0:
            raise ConfigError(f"The CPU TDP must be more than 0 W, not {tdp_w}.", "tdp_w")
        self.tdp_is_default = tdp_w is None
        self.tdp_w = DEFAULT_CPU_TDP_W if tdp_w is None else float(tdp_w)
        self._proc_dir = Path(proc_dir)
        self._name = f"CPU: {cpu_model_name(self._proc_dir)}"
        self._tree = _open_tree(process_root)
        self._memory = _CpuMemory(self._proc_dir, self._tree)
        self._load = _CpuLoad(self._proc_dir) if self._tree is None else None
        self._tree_load = _TreeLoad(self._tree) if self._tree is not None else None
        self._last_t = time.time()
        self._energy_j = 0.0
        generic = " (generic)" if self.tdp_is_default else ""
        if self._tree is not None:
            self.scope = EnergyScope.PROCESS_TREE
            self.scope_note: str | None = None
            self.note = (
                f"CPU power estimated as {self.tdp_w:g} W TDP{generic} x the share of the machine's "
                "CPU time used by carbontop's process tree (CodeCarbon's process mode); no hardware "
                "counter was readable."
            )
        else:
            self.scope = EnergyScope.MACHINE
            self.scope_note = (
                "The estimate follows the whole machine's CPU load, so it includes every other "
                "process on this machine."
            )
            self.note = (
                f"CPU power estimated as {self.tdp_w:g} W TDP{generic} x (0.1 + 0.9 x load^3), "
                "CodeCarbon's load model; no hardware counter was readable."
            )

    def power_w(self, load: float) -> float:
        """The machine model's power at a whole-machine load (0..1)."""
        return self.tdp_w * (
            ESTIMATE_IDLE_SHARE + (1.0 - ESTIMATE_IDLE_SHARE) * load**ESTIMATE_LOAD_EXPONENT
        )

    def device_names(self) -> dict[int, str]:
        return {-1: self._name}

    def read(self) -> list[Sample]:
        t_s = time.time()
        dt = max(0.0, t_s - self._last_t)
        self._last_t = t_s
        if self._tree_load is not None:
            reading = self._tree_load.update(t_s)
            load = self._tree_load.load
            # linear in CPU seconds, so the energy is exact whatever the span
            self._energy_j = self.tdp_w * reading.cpu_s / self._tree_load.n_cpus
            power_w = self.tdp_w * load
            used, total = self._memory.read(reading)
        else:
            assert self._load is not None
            load = self._load.update()
            power_w = self.power_w(load)
            self._energy_j += power_w * dt
            used, total = self._memory.read()
        return [
            Sample(
                t_s=t_s,
                gpu_index=-1,
                power_w=power_w,
                energy_j=self._energy_j,
                mem_used_bytes=used,
                mem_total_bytes=total,
                util_pct=100.0 * load,
            )
        ]

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------


POWER_SOURCES = ("auto", "nvml", "rapl", "estimate", "tegrastats")


def open_power_source(
    device: str, gpus: Sequence[int] | None = None, kind: str = "auto", *,
    process_root: int | None = None,
) -> PowerSource:
    """The best source for a device, or the one `kind` names.

    'cuda': NVML, or CarbontopError where NVML or a GPU is missing or a named index does not exist;
    on a Jetson (no NVML power there) tegrastats.
    'cpu': RAPL where its counters are readable, else the estimate.
    'auto': NVML where it starts and sees a GPU, else as 'cpu'. A GPU index that does not exist
    is still an error: the user named it.

    `process_root`: on a CPU, follow this process and its descendants (the engine child) for the
    estimate's load and for memory, instead of the whole machine; give it where the engine runs
    under carbontop, leave it None where the work happens elsewhere (a server).
    """
    from carbontop.telemetry.tegrastats import TegrastatsSource, is_jetson

    if kind not in POWER_SOURCES:
        raise ConfigError(
            f"The power source must be one of {', '.join(POWER_SOURCES)}, not '{kind}'.", "power_source")
    if kind == "tegrastats":
        return TegrastatsSource()
    if kind == "nvml":
        return NvmlSource(gpus)
    if kind == "rapl":
        return RaplSource(process_root=process_root)
    if kind == "estimate":
        return EstimateSource(process_root=process_root)
    if device in ("cuda", "auto") and is_jetson():
        return TegrastatsSource()
    if device == "cuda":
        return NvmlSource(gpus)
    if device == "auto":
        try:
            return NvmlSource(gpus)
        except NvmlUnavailable:
            pass
    elif device != "cpu":
        raise ConfigError(f"Device must be one of auto, cpu, cuda, not '{device}'.", "device")
    try:
        return RaplSource(process_root=process_root)
    except RaplUnavailable:
        return EstimateSource(process_root=process_root)


__all__ = [
    "POWER_SOURCES",
    "DEFAULT_CPU_TDP_W",
    "COUNTER_CPU_BUDGET",
    "EnergyScope",
    "COUNTER_MAX_INTERVAL_S",
    "EstimateSource",
    "NVML_FI_DEV_POWER_INSTANT",
    "NvmlSource",
    "NvmlUnavailable",
    "PowerSource",
    "RaplSource",
    "RaplUnavailable",
    "choose_counter_every",
    "cpu_model_name",
    "nvml_environment",
    "open_power_source",
]
