"""Telemetry: NVML (through a fake pynvml), RAPL (a fake sysfs tree), the estimate, the sampler."""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from carbontop.core.records import Sample
from carbontop.errors import CarbontopError, ConfigError
from carbontop.telemetry import sources
from carbontop.telemetry.sampler import TelemetrySampler
from carbontop.telemetry.sources import (
    EstimateSource,
    NvmlSource,
    RaplSource,
    choose_counter_every,
    cpu_model_name,
    nvml_environment,
    open_power_source,
)

# ---------------------------------------------------------------------------------------------
# fakes


class FakeClock:
    """Stands in for the `time` module inside carbontop.telemetry.sources.

    `cpu` and `wall` are what thread_time() and perf_counter() answer; a fake NVML call that is
    given this clock advances them by its set cost, so the counter's cost can be injected.
    """

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t
        self.cpu = 0.0
        self.wall = 0.0

    def time(self) -> float:
        return self.t

    def thread_time(self) -> float:
        return self.cpu

    def perf_counter(self) -> float:
        return self.wall


class FakeGpu:
    def __init__(self, name: str = "NVIDIA H100 80GB HBM3") -> None:
        self.name = name
        self.energy_mj: int | None = 0  # None: the counter raises NotSupported
        self.instant_mw: int | None = 300_000  # None: field 186 answers NOT_SUPPORTED
        self.average_mw = 250_000
        self.mem_used = 10 * 2**30
        self.mem_total = 80 * 2**30
        self.util = 87
        self.temp: int | None = 55  # None: a transient NVMLError
        self.clock = 1980
        # what one counter read costs: added to a FakeClock's thread_time and perf_counter
        self.energy_cpu_s = 0.0
        self.energy_wall_s = 0.0
        self.energy_burn_s = 0.0  # real CPU time burnt by each counter read (thread tests)


def burn_cpu(seconds: float) -> None:
    """Spin until this thread has used `seconds` of CPU."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def make_fake_pynvml(
    gpus: list[FakeGpu], init_error: str | None = None, clock: FakeClock | None = None
) -> types.ModuleType:
    m = types.ModuleType("pynvml")
    m.calls = {"field": 0, "power_usage": 0, "init": 0, "shutdown": 0, "energy": 0}

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's names
        pass

    class NVMLError_FunctionNotFound(NVMLError):  # noqa: N801
        pass

    class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801
        pass

    class NVMLError_Unknown(NVMLError):  # noqa: N801
        pass

    m.NVMLError = NVMLError
    m.NVMLError_NotSupported = NVMLError_NotSupported
    m.NVMLError_FunctionNotFound = NVMLError_FunctionNotFound
    m.NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    m.NVML_SUCCESS = 0
    m.NVML_ERROR_NOT_SUPPORTED = 3
    m.NVML_TEMPERATURE_GPU = 0
    m.NVML_CLOCK_SM = 1
    for k, name in enumerate(
        ["DOUBLE", "UNSIGNED_INT", "UNSIGNED_LONG", "UNSIGNED_LONG_LONG", "SIGNED_LONG_LONG"]
    ):
        setattr(m, f"NVML_VALUE_TYPE_{name}", k)

    def nvmlInit() -> None:
        m.calls["init"] += 1
        if init_error:
            raise NVMLError_LibraryNotFound(init_error)

    def nvmlShutdown() -> None:
        m.calls["shutdown"] += 1

    def gpu(h: int) -> FakeGpu:
        return gpus[h]

    def energy(h: int) -> int:
        m.calls["energy"] += 1
        if gpu(h).energy_mj is None:
            raise NVMLError_NotSupported("Not Supported")
        if clock is not None:
            clock.cpu += gpu(h).energy_cpu_s
            clock.wall += gpu(h).energy_wall_s
        if gpu(h).energy_burn_s:
            burn_cpu(gpu(h).energy_burn_s)
        return gpu(h).energy_mj

    def field_values(h: int, ids: list[int]) -> list[types.SimpleNamespace]:
        m.calls["field"] += 1
        assert ids == [186]
        mw = gpu(h).instant_mw
        value = types.SimpleNamespace(uiVal=mw or 0, dVal=0.0)
        return [types.SimpleNamespace(valueType=1, value=value, nvmlReturn=0 if mw else 3)]

    def power_usage(h: int) -> int:
        m.calls["power_usage"] += 1
        return gpu(h).average_mw

    def temperature(h: int, sensor: int) -> int:
        assert sensor == m.NVML_TEMPERATURE_GPU
        if gpu(h).temp is None:
            raise NVMLError_Unknown("Unknown Error")
        return gpu(h).temp

    m.nvmlInit = nvmlInit
    m.nvmlShutdown = nvmlShutdown
    m.nvmlDeviceGetCount = lambda: len(gpus)
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    m.nvmlDeviceGetName = lambda h: gpu(h).name
    m.nvmlDeviceGetTotalEnergyConsumption = energy
    m.nvmlDeviceGetFieldValues = field_values
    m.nvmlDeviceGetPowerUsage = power_usage
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(
        used=gpu(h).mem_used, total=gpu(h).mem_total, free=gpu(h).mem_total - gpu(h).mem_used
    )
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=gpu(h).util, memory=10)
    m.nvmlDeviceGetTemperature = temperature
    m.nvmlDeviceGetClockInfo = lambda h, clock: gpu(h).clock
    m.nvmlSystemGetDriverVersion = lambda: "550.54.15"
    m.nvmlSystemGetNVMLVersion = lambda: "12.550.54.15"
    m.nvmlSystemGetCudaDriverVersion = lambda: 12040
    m.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    m.nvmlDeviceGetCudaComputeCapability = lambda h: (9, 0)
    return m


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(sources, "time", fake)
    return fake


def install(monkeypatch: pytest.MonkeyPatch, gpus: list[FakeGpu], **kw: Any) -> types.ModuleType:
    fake = make_fake_pynvml(gpus, **kw)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


class ListSource:
    """A source for the sampler tests; the samples are fed by hand through _ingest.

    instant_power=False (the default) makes the counter interpolate linearly, as for RAPL and the
    estimate; True lets power shape it between counter readings, as for NVML.
    """

    def __init__(
        self, kind: str = "nvml", devices: tuple[int, ...] = (0,), instant_power: bool = False
    ) -> None:
        self.kind = kind
        self.estimated = kind == "estimate"
        self.has_energy_counter = True
        self.instant_power = instant_power
        self._devices = devices
        self.counter_requests = 0

    def request_counter(self) -> None:
        self.counter_requests += 1

    def device_names(self) -> dict[int, str]:
        return {i: f"dev{i}" for i in self._devices}

    def read(self) -> list[Sample]:
        return []

    def close(self) -> None:
        pass


def s(t: float, e: float | None, p: float | None, gpu: int = 0, mem: int | None = None) -> Sample:
    return Sample(t_s=t, gpu_index=gpu, power_w=p, energy_j=e, mem_used_bytes=mem)


# GPU 0: counter 0, 100, 300, 600 J at t = 0..3; power 80, 120, 250, 350 W.
GPU0 = [s(0, 0, 80), s(1, 100, 120), s(2, 300, 250), s(3, 600, 350)]


def sampler_with(
    samples: list[Sample], kind: str = "nvml", devices=(0,), instant_power: bool = False
) -> TelemetrySampler:
    sampler = TelemetrySampler(ListSource(kind, devices, instant_power), interval_s=1.0)
    sampler._ingest(samples)
    return sampler


# ---------------------------------------------------------------------------------------------
# NVML source


def test_nvml_read_units_and_names(monkeypatch, clock):
    gpus = [FakeGpu(), FakeGpu("NVIDIA H200")]
    gpus[0].energy_mj = 123_456
    install(monkeypatch, gpus)
    src = NvmlSource()
    assert src.kind == "nvml" and not src.estimated and src.has_energy_counter
    assert src.device_names() == {0: "NVIDIA H100 80GB HBM3", 1: "NVIDIA H200"}
    first, second = src.read()
    assert first == Sample(
        t_s=1000.0,
        gpu_index=0,
        power_w=300.0,  # 300,000 mW from field 186
        energy_j=123.456,  # 123,456 mJ
        mem_used_bytes=10 * 2**30,
        mem_total_bytes=80 * 2**30,
        util_pct=87.0,
        temp_c=55.0,
        sm_clock_mhz=1980.0,
    )
    assert second.gpu_index == 1
    src.close()
    src.close()  # idempotent


def test_nvml_selected_gpus_and_bad_index(monkeypatch):
    fake = install(monkeypatch, [FakeGpu(), FakeGpu(), FakeGpu()])
    src = NvmlSource([2])
    assert [x.gpu_index for x in src.read()] == [2]
    with pytest.raises(CarbontopError, match="GPU 5 does not exist"):
        NvmlSource([0, 5])
    with pytest.raises(CarbontopError, match="GPU 5 does not exist"):
        open_power_source("auto", [5])  # a named GPU is an error, not a quiet CPU fallback
    # every failed open shut NVML down again
    assert fake.calls["shutdown"] == 2


def test_nvml_instant_power_falls_back_to_power_usage(monkeypatch, clock):
    gpu = FakeGpu()
    gpu.instant_mw = None  # field 186 not supported (older driver)
    fake = install(monkeypatch, [gpu])
    src = NvmlSource()
    for _ in range(3):
        assert src.read()[0].power_w == 250.0  # nvmlDeviceGetPowerUsage, 250,000 mW
    assert fake.calls["field"] == 1  # NOT_SUPPORTED is remembered, not asked on every tick
    assert fake.calls["power_usage"] == 3


def test_nvml_failed_reading_is_none_not_a_crash(monkeypatch, clock):
    gpu = FakeGpu()
    gpu.temp = None
    install(monkeypatch, [gpu])
    sample = NvmlSource().read()[0]
    assert sample.temp_c is None
    assert sample.energy_j == 0.0 and sample.power_w == 300.0


def test_open_power_source_cuda_without_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    with pytest.raises(CarbontopError, match="nvidia-ml-py"):
        open_power_source("cuda")
    assert nvml_environment() == {}
    assert open_power_source("auto").kind in ("rapl", "estimate")
    assert open_power_source("cpu").kind in ("rapl", "estimate")


def test_open_power_source_cuda_without_driver_or_gpu(monkeypatch):
    install(monkeypatch, [FakeGpu()], init_error="NVML Shared Library Not Found")
    with pytest.raises(CarbontopError, match="NVML could not start"):
        open_power_source("cuda")
    install(monkeypatch, [])
    with pytest.raises(CarbontopError, match="no NVIDIA GPU"):
        open_power_source("cuda")
    assert open_power_source("auto").kind in ("rapl", "estimate")
    with pytest.raises(ConfigError):
        open_power_source("tpu")


def test_open_power_source_auto_takes_nvml(monkeypatch):
    install(monkeypatch, [FakeGpu()])
    assert open_power_source("auto").kind == "nvml"


def test_nvml_environment(monkeypatch):
    fake = install(monkeypatch, [FakeGpu()])
    env = nvml_environment()
    assert env["driver_version"] == "550.54.15"
    assert env["nvml_version"] == "12.550.54.15"
    assert env["cuda_driver_version"] == "12.4"
    assert env["gpus"] == [
        {
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "memory_total_bytes": 80 * 2**30,
            "power_limit_w": 700.0,
            "compute_capability": "9.0",
            "energy_counter": True,
        }
    ]
    assert fake.calls["shutdown"] == 1


def test_nvml_sampler_energy_from_counter(monkeypatch, clock):
    """Counter through the real source: 0, 50, 150 J at t = 1000, 1001, 1002 (in mJ)."""
    gpu = FakeGpu()
    install(monkeypatch, [gpu])
    sampler = TelemetrySampler(NvmlSource(), interval_s=1.0)
    for t, mj, mw in [(1000.0, 0, 40_000), (1001.0, 50_000, 60_000), (1002.0, 150_000, 140_000)]:
        clock.t, gpu.energy_mj, gpu.instant_mw = t, mj, mw
        sampler._tick()
    r = sampler.energy_between(1000.5, 1002.0)
    # The edge at 1000.5 is placed by power: from 1000 to 1001 power ramps 40 -> 60 W, its
    # trapezoid is 50 J over the second and 0.5 x (40 + 50) / 2 = 22.5 J over its first half, so
    # the counter's 50 J change is split 22.5 / 50: 22.5 J before the edge (linear would say 25).
    # 150 - 22.5 = 127.5.
    assert r.energy_j == pytest.approx(127.5)
    assert r.source == "nvml-counter" and not r.estimated and r.n_samples == 2
    # power at 1000.5 = 50 W; trapezoid 0.5 x (50+60)/2 + 1 x (60+140)/2 = 27.5 + 100
    assert r.integrated_j == pytest.approx(127.5)


def test_nvml_sampler_falls_back_to_integrated_power(monkeypatch, clock):
    gpu = FakeGpu()
    gpu.energy_mj = None  # nvmlDeviceGetTotalEnergyConsumption raises NVMLError_NotSupported
    install(monkeypatch, [gpu])
    src = NvmlSource()
    assert not src.has_energy_counter
    sampler = TelemetrySampler(src, interval_s=1.0)
    for t, mw in [(1000.0, 100_000), (1001.0, 200_000), (1002.0, 200_000)]:
        clock.t, gpu.instant_mw = t, mw
        sampler._tick()
    assert all(x.energy_j is None for x in sampler.samples())
    r = sampler.energy_between(1000.0, 1002.0)
    # (100+200)/2 x 1 + (200+200)/2 x 1 = 150 + 200
    assert r.energy_j == pytest.approx(350.0)
    assert r.integrated_j == pytest.approx(350.0)
    assert r.source == "nvml-power-integrated"
    assert sum(e for _, e in sampler.energy_chunks(1000.0, 1002.0)) == pytest.approx(350.0)


# ---------------------------------------------------------------------------------------------
# sampler window arithmetic (samples fed by hand)


def test_energy_between_interpolates_at_both_edges():
    r = sampler_with(GPU0).energy_between(0.5, 2.5)
    # counter at 0.5: 50 (half of 0..100); at 2.5: 450 (half of 300..600)
    assert r.energy_j == pytest.approx(400.0)
    assert r.per_gpu_j == {0: pytest.approx(400.0)}
    assert r.n_samples == 2
    # power at 0.5 = 100, at 2.5 = 300: 0.5 x (100+120)/2 + 1 x (120+250)/2 + 0.5 x (250+300)/2
    assert r.integrated_j == pytest.approx(55.0 + 185.0 + 137.5)


def test_energy_between_zero_and_one_sample_inside():
    sampler = sampler_with(GPU0)
    zero = sampler.energy_between(1.2, 1.7)  # between the samples at 1 and 2 (200 J/s there)
    assert zero.energy_j == pytest.approx(100.0) and zero.n_samples == 0
    one = sampler.energy_between(0.5, 1.5)  # 50 -> 200
    assert one.energy_j == pytest.approx(150.0) and one.n_samples == 1


def test_energy_between_outside_or_half_outside_the_samples():
    sampler = sampler_with(GPU0)
    out = sampler.energy_between(10.0, 11.0)
    assert out.energy_j == 0.0 and out.n_samples == 0
    assert sampler.mean_power_w(10.0, 11.0) is None
    before = sampler.energy_between(-1.0, 0.5)  # nothing is known before t = 0
    assert before.energy_j == pytest.approx(50.0) and before.n_samples == 1
    empty = sampler_with([]).energy_between(0.0, 1.0)
    assert empty.energy_j == 0.0 and empty.integrated_j is None and empty.n_samples == 0


def test_energy_sums_over_gpus_with_their_own_sample_times():
    gpu1 = [s(0.1, 1000, 50, gpu=1), s(1.1, 1050, 50, gpu=1), s(2.1, 1100, 50, gpu=1)]
    sampler = sampler_with(GPU0 + gpu1, devices=(0, 1))
    r = sampler.energy_between(0.6, 1.6)
    # GPU 0: 60 -> 100 + 0.6 x 200 = 220, so 160 J; GPU 1: 1025 -> 1075 = 50 J
    assert r.per_gpu_j == {0: pytest.approx(160.0), 1: pytest.approx(50.0)}
    assert r.energy_j == pytest.approx(210.0)
    assert sampler.mean_power_w(0.6, 1.6) == pytest.approx(210.0)
    chunks = sampler.energy_chunks(0.6, 1.6)
    assert sum(e for _, e in chunks) == pytest.approx(210.0)
    assert all(0.6 <= t <= 1.6 for t, _ in chunks)


def test_energy_chunks_clip_at_the_window_and_sum_to_the_total():
    sampler = sampler_with(GPU0)
    chunks = sampler.energy_chunks(0.5, 2.5)
    assert [t for t, _ in chunks] == pytest.approx([0.75, 1.5, 2.25])
    assert [e for _, e in chunks] == pytest.approx([50.0, 200.0, 150.0])
    assert sum(e for _, e in chunks) == pytest.approx(sampler.energy_between(0.5, 2.5).energy_j)
    # a window hanging past the data is clipped to the data
    assert sampler.energy_chunks(2.5, 9.0) == [(2.75, pytest.approx(150.0))]
    assert sampler.energy_chunks(5.0, 9.0) == []


def test_mean_power():
    assert sampler_with(GPU0).mean_power_w(0.5, 2.5) == pytest.approx(400.0 / 2.0)


def test_counter_going_backwards_adds_nothing():
    # the driver reloaded between t = 1 and t = 2: the counter restarts near zero
    sampler = sampler_with([s(0, 500, 100), s(1, 600, 100), s(2, 10, 100), s(3, 110, 100)])
    assert sampler.energy_between(0.0, 3.0).energy_j == pytest.approx(200.0)


def test_estimate_and_rapl_labels():
    est = sampler_with([s(0, 0, 10, gpu=-1), s(1, 10, 10, gpu=-1)], kind="estimate", devices=(-1,))
    r = est.energy_between(0.0, 1.0)
    assert r.source == "estimate" and r.estimated and r.energy_j == pytest.approx(10.0)
    rapl = sampler_with([s(0, 0, None, gpu=-1), s(1, 42, None, gpu=-1)], kind="rapl", devices=(-1,))
    r = rapl.energy_between(0.0, 1.0)
    assert r.source == "rapl" and not r.estimated and r.energy_j == pytest.approx(42.0)
    assert r.integrated_j is None


def test_peak_mem_sums_each_gpus_max():
    gib = 2**30
    samples = [
        s(0, 0, 1, gpu=0, mem=10 * gib),
        s(1, 0, 1, gpu=0, mem=30 * gib),
        s(2, 0, 1, gpu=0, mem=20 * gib),
        s(0, 0, 1, gpu=1, mem=5 * gib),
        s(1, 0, 1, gpu=1, mem=6 * gib),
        s(2, 0, 1, gpu=1, mem=40 * gib),
    ]
    sampler = sampler_with(samples, devices=(0, 1))
    assert sampler.peak_mem_bytes(0.0, 1.5) == 30 * gib + 6 * gib
    assert sampler.peak_mem_bytes(0.0, 2.0) == 30 * gib + 40 * gib
    # no reading inside: the readings on either side of the window
    assert sampler.peak_mem_bytes(1.2, 1.4) == 30 * gib + 40 * gib
    assert sampler.peak_mem_bytes(5.0, 6.0) is None


def test_drain_samples_and_latest():
    sampler = sampler_with(GPU0[:2])
    assert sampler.drain_new() == GPU0[:2]
    assert sampler.drain_new() == []
    sampler._ingest(GPU0[2:])
    assert sampler.drain_new() == GPU0[2:]
    assert sampler.samples() == GPU0  # draining does not remove them from the history
    assert sampler.samples(0.5, 2.0) == GPU0[1:3]
    assert sampler.samples(gpu=1) == []
    assert sampler.latest() == {0: GPU0[-1]}


def test_history_is_a_ring_buffer():
    sampler = TelemetrySampler(ListSource(), interval_s=1.0, history_s=3.0)
    sampler._ingest([s(t, t, 1) for t in range(10)])
    assert [x.t_s for x in sampler.samples()] == [6, 7, 8, 9]


# ---------------------------------------------------------------------------------------------
# RAPL and the estimate


def write_proc(proc: Path, busy: int, idle: int) -> None:
    proc.mkdir(exist_ok=True)
    # user nice system idle iowait irq softirq steal guest guest_nice
    (proc / "stat").write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 7 7\ncpu0 1 2 3 4\n")
    (proc / "meminfo").write_text(
        "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:   12000000 kB\n"
    )
    (proc / "cpuinfo").write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Fake Xeon 9000 @ 3.00GHz\n\n"
    )


def make_rapl_tree(root: Path) -> Path:
    powercap = root / "powercap"
    for name, label, uj, max_uj in [
        ("intel-rapl:0", "package-0", 999_000, 1_000_000),
        ("intel-rapl:0:0", "core", 5, 1_000_000),  # a part of package 0: not added
        ("intel-rapl:1", "package-1", 0, 2_000_000),
        ("intel-rapl:2", "psys", 0, 1_000_000),  # the whole platform: would count twice
    ]:
        d = powercap / name
        d.mkdir(parents=True)
        (d / "name").write_text(label + "\n")
        (d / "energy_uj").write_text(f"{uj}\n")
        (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return powercap


def test_rapl_sums_packages_and_unwraps(tmp_path, clock):
    powercap = make_rapl_tree(tmp_path)
    write_proc(tmp_path / "proc", busy=100, idle=900)
    src = RaplSource(powercap, tmp_path / "proc")
    assert src.kind == "rapl" and src.has_energy_counter and not src.estimated
    assert src.device_names() == {-1: "CPU: Fake Xeon 9000 @ 3.00GHz"}

    clock.t = 1002.0
    (powercap / "intel-rapl:0" / "energy_uj").write_text("1000\n")  # wrapped: +1,000 + 1,000
    (powercap / "intel-rapl:1" / "energy_uj").write_text("1000000\n")  # +1,000,000
    (powercap / "intel-rapl:2" / "energy_uj").write_text("999999\n")  # psys: ignored
    write_proc(tmp_path / "proc", busy=150, idle=950)
    (sample,) = src.read()
    assert sample.gpu_index == -1
    assert sample.energy_j == pytest.approx((2_000 + 1_000_000) / 1e6)
    assert sample.power_w == pytest.approx(1.002 / 2.0)  # J over the 2 s since opening
    assert sample.util_pct == pytest.approx(50.0)  # 50 busy of 100 jiffies
    assert sample.mem_used_bytes == (16_000_000 - 12_000_000) * 1024
    assert sample.mem_total_bytes == 16_000_000 * 1024

    clock.t = 1003.0
    (powercap / "intel-rapl:0" / "energy_uj").write_text("501000\n")  # +0.5 J, no wrap
    (second,) = src.read()
    assert second.energy_j == pytest.approx(1.002 + 0.5)
    assert second.power_w == pytest.approx(0.5)


def test_rapl_unreadable_or_missing(tmp_path):
    with pytest.raises(CarbontopError):
        RaplSource(tmp_path / "nothing", tmp_path)
    powercap = make_rapl_tree(tmp_path)
    (powercap / "intel-rapl:1" / "energy_uj").unlink()
    with pytest.raises(CarbontopError, match="cannot be read"):
        RaplSource(powercap, tmp_path)


def test_estimate_source_model(tmp_path, clock):
    proc = tmp_path / "proc"
    write_proc(proc, busy=1000, idle=1000)
    src = EstimateSource(proc_dir=proc)
    assert src.kind == "estimate" and src.estimated and not src.has_energy_counter
    assert src.tdp_w == 85.0 and src.tdp_is_default  # CodeCarbon's generic TDP
    assert src.device_names() == {-1: "CPU: Fake Xeon 9000 @ 3.00GHz"}

    clock.t = 1002.0
    write_proc(proc, busy=1050, idle=1050)  # 50 busy of 100 jiffies: load 0.5
    (sample,) = src.read()
    # 85 x (0.1 + 0.9 x 0.5^3) = 85 x 0.2125
    assert sample.power_w == pytest.approx(18.0625)
    assert sample.energy_j == pytest.approx(18.0625 * 2.0)
    assert sample.util_pct == pytest.approx(50.0)

    clock.t = 1003.0
    write_proc(proc, busy=1150, idle=1050)  # fully busy: the whole TDP
    (sample,) = src.read()
    assert sample.power_w == pytest.approx(85.0)
    assert sample.energy_j == pytest.approx(36.125 + 85.0)

    clock.t = 1004.0  # no jiffy passed: keep the last load rather than divide by zero
    assert src.read()[0].power_w == pytest.approx(85.0)


def test_estimate_source_tdp(tmp_path):
    write_proc(tmp_path, busy=0, idle=0)
    src = EstimateSource(tdp_w=200.0, proc_dir=tmp_path)
    assert src.power_w(0.0) == pytest.approx(20.0)  # the 10% floor
    assert src.power_w(1.0) == pytest.approx(200.0)
    with pytest.raises(ConfigError):
        EstimateSource(tdp_w=0)


def test_cpu_model_name_fallbacks(tmp_path):
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nBogoMIPS\t: 50.00\nHardware\t: Fake SoC\n")
    assert cpu_model_name(tmp_path) == "Fake SoC"
    assert cpu_model_name(tmp_path / "missing")  # never empty


# ---------------------------------------------------------------------------------------------
# the thread


class LinearSource:
    """A constant power_w with a counter that follows the wall clock exactly."""

    kind = "nvml"
    estimated = False
    has_energy_counter = True

    def __init__(self, power_w: float = 50.0, fail_every: int = 0) -> None:
        self.power_w = power_w
        self.reads = 0
        self.fail_every = fail_every

    def device_names(self) -> dict[int, str]:
        return {0: "fake"}

    def read(self) -> list[Sample]:
        self.reads += 1
        if self.fail_every and self.reads % self.fail_every == 0:
            raise RuntimeError("flaky")
        t = time.time()
        return [Sample(t_s=t, gpu_index=0, power_w=self.power_w, energy_j=self.power_w * t)]


def test_thread_samples_at_its_interval():
    sampler = TelemetrySampler(LinearSource(), interval_s=0.02)
    sampler.start()
    sampler.start()  # a second start does not start a second thread
    time.sleep(0.5)
    sampler.stop()
    sampler.stop()  # idempotent
    n = len(sampler.samples())
    assert 15 <= n <= 27, n  # about 0.5 / 0.02 + 1 = 26; slack for a busy machine
    times = [x.t_s for x in sampler.samples()]
    assert all(b > a for a, b in zip(times[:-1], times[1:], strict=True))
    assert len(sampler.samples()) == n  # nothing after stop
    # the loop is cheap: the fake source costs nothing, so this is the sampler's own cost
    assert sampler.thread_cpu_s < 0.25


def test_thread_survives_a_failing_read_and_waits_for_a_time():
    src = LinearSource(fail_every=3)
    sampler = TelemetrySampler(src, interval_s=0.01)
    sampler.start()
    target = time.time() + 0.1
    assert sampler.wait_for(target, timeout_s=2.0)
    sampler.stop()
    assert sampler.read_errors >= 1 and "flaky" in sampler.last_error
    assert sampler.latest()[0].t_s >= target


def test_measure_idle_power():
    sampler = TelemetrySampler(LinearSource(power_w=50.0), interval_s=0.02)
    assert sampler.measure_idle_power_w(0.2) == pytest.approx(50.0, rel=1e-3)
    assert not sampler.running  # started for the measurement only
    sampler.start()
    assert sampler.measure_idle_power_w(0.1) == pytest.approx(50.0, rel=1e-3)
    assert sampler.running
    sampler.stop()


@pytest.mark.gpu
def test_real_nvml_source_reads():
    try:
        src = NvmlSource()
    except CarbontopError as err:
        pytest.skip(str(err))
    try:
        sampler = TelemetrySampler(src, interval_s=0.1)
        sampler.start()
        time.sleep(1.0)
        sampler.stop()
        t1 = sampler.samples()[-1].t_s
        r = sampler.energy_between(t1 - 0.8, t1)
        assert r.energy_j > 0 and r.n_samples >= 6
        assert sampler.peak_mem_bytes(t1 - 0.8, t1) > 0
        assert nvml_environment()["gpus"]
    finally:
        src.close()


# ---------------------------------------------------------------------------------------------
# the counter read every k-th tick, power shaping the edges

# Ticks every 0.1 s from t = 0 to 2; the counter is read every 0.5 s (every 5th tick) and gives
# 0, 60, 170, 320, 470 J at t = 0, 0.5, 1, 1.5, 2. Power is 100 W up to t = 0.7 and 300 W from
# t = 0.8 (a step, a ramp between the two samples). Power's trapezoid per counter interval:
# [0, 0.5] 50 J; [0.5, 1] 100 * 0.2 + 200 * 0.1 + 300 * 0.2 = 100 J; [1, 1.5] and [1.5, 2] 150 J.
# The counter says 60, 110, 150, 150: it disagrees with power in the first two on purpose.
COUNTER_AT = {0: 0.0, 5: 60.0, 10: 170.0, 15: 320.0, 20: 470.0}
STEP = [
    s(n / 10, COUNTER_AT.get(n), 100.0 if n <= 7 else 300.0) for n in range(21)
]  # fmt: skip


def test_power_places_window_edges_between_counter_readings():
    sampler = sampler_with(STEP, instant_power=True)
    r = sampler.energy_between(0.75, 1.75)
    # t = 0.75 lies in [0.5, 1] (counter 60 -> 170, power's trapezoid 100 J). Power's trapezoid
    # from 0.5 to 0.75: 100 W x 0.2 s + (100 + 200) / 2 x 0.05 s (200 W half way up the ramp)
    # = 20 + 7.5 = 27.5 J, so the counter there is 60 + 110 x 27.5 / 100 = 90.25 J.
    # t = 1.75 lies in [1.5, 2] at constant 300 W: half of 320 -> 470, so 395 J.
    assert r.energy_j == pytest.approx(395.0 - 90.25)  # 304.75; linear would say 395 - 115 = 280
    assert r.source == "nvml-counter"  # anchored on the counter, edges shaped by power
    assert r.n_samples == 10  # the ticks 0.8, 0.9, ..., 1.7 (0.75 and 1.75 are not samples)
    # the independent check: power alone, (200 + 300) / 2 x 0.05 + 300 x 0.95 = 12.5 + 285
    assert r.integrated_j == pytest.approx(297.5)


def test_whole_counter_intervals_give_the_counter_exactly():
    sampler = sampler_with(STEP, instant_power=True)
    assert sampler.energy_between(0.5, 1.5).energy_j == 320.0 - 60.0
    assert sampler.energy_between(0.0, 2.0).energy_j == 470.0
    assert sampler.energy_between(0.5, 1.0).energy_j == 110.0  # not power's 100
    # an edge outside the data is clamped to it: the counter's change still, no more
    assert sampler.energy_between(-3.0, 1.0).energy_j == 170.0


def test_chunks_follow_the_ticks_and_sum_to_the_total():
    sampler = sampler_with(STEP, instant_power=True)
    chunks = sampler.energy_chunks(0.75, 1.75)
    # the grid is every tick, not just the counter's: 0.75, 0.8, 0.9, ..., 1.7, 1.75
    assert len(chunks) == 11
    assert chunks[0][0] == pytest.approx(0.775)
    # [0.75, 0.8]: power's 12.5 of 100 J of the interval, times the counter's 110 J
    assert chunks[0][1] == pytest.approx(13.75)
    # [1.0, 1.1] at constant 300 W inside [1, 1.5] (counter 150 J): a fifth
    assert chunks[3] == (pytest.approx(1.05), pytest.approx(30.0))
    total = sampler.energy_between(0.75, 1.75).energy_j
    assert sum(e for _, e in chunks) == pytest.approx(total, rel=1e-12)
    whole = sampler.energy_chunks(0.0, 2.0)
    assert len(whole) == 20 and sum(e for _, e in whole) == pytest.approx(470.0, rel=1e-12)


def test_counter_interval_without_power_is_linear():
    # no power at all in [0, 1]; zero power in [1, 2]: both fall back to a straight line
    samples = [s(0, 0, None), s(0.5, None, None), s(1, 100, 0.0), s(1.5, None, 0.0), s(2, 300, 0.0)]
    sampler = sampler_with(samples, instant_power=True)
    assert sampler.energy_between(0.25, 0.75).energy_j == pytest.approx(50.0)
    assert sampler.energy_between(1.25, 1.75).energy_j == pytest.approx(100.0)
    assert sampler.energy_between(0.25, 1.75).energy_j == pytest.approx(250.0 - 25.0)


def test_shaping_needs_power_over_the_whole_counter_interval():
    # power only from t = 0.5 on: [0, 1] is not covered, so it is linear there
    samples = [s(0, 0, None), s(0.5, None, 100.0), s(1, 100, 300.0)]
    sampler = sampler_with(samples, instant_power=True)
    assert sampler.energy_between(0.0, 0.5).energy_j == pytest.approx(50.0)


def test_rapl_and_estimate_stay_linear_between_counter_readings():
    # the same readings through a source whose power is not an independent instant reading
    r = sampler_with(STEP, kind="rapl").energy_between(0.75, 1.75)
    assert r.energy_j == pytest.approx(395.0 - 115.0)  # 60 + 110 / 2 at 0.75
    assert r.source == "rapl"


def test_counter_far_beyond_the_edge_margin_is_found():
    # 0.01 s ticks, the counter every 150 ticks (1.5 s): more than 50 samples from the window
    samples = [s(n / 100, n / 100 * 200.0 if n % 150 == 0 else None, 200.0) for n in range(451)]
    sampler = sampler_with(samples, instant_power=True)
    r = sampler.energy_between(2.0, 2.1)  # counter readings at 1.5 and 3.0 only
    assert r.source == "nvml-counter"
    assert r.energy_j == pytest.approx(20.0)  # 200 W x 0.1 s, from the counter
    assert sampler.mean_power_w(2.0, 2.1) == pytest.approx(200.0)


def test_wait_for_waits_for_a_counter_reading():
    src = ListSource(devices=(0, 1))
    sampler = TelemetrySampler(src, interval_s=1.0)
    sampler._ingest([s(0, 0, 100), s(0, None, 50, gpu=1)])  # GPU 1 gives no counter at all
    sampler._ingest([s(1, None, 100), s(1, None, 50, gpu=1)])
    # GPU 0 has power past t = 1 but its last counter reading is at 0: the window is not closed
    assert not sampler.wait_for(1.0, timeout_s=0.05)
    assert src.counter_requests >= 1  # t = 1 has passed (the clock is far beyond): it asked
    sampler._ingest([s(2, 200, 100), s(2, None, 50, gpu=1)])
    assert sampler.wait_for(1.0, timeout_s=0.05)  # GPU 1 needs only a sample after t = 1
    assert not sampler.wait_for(3.0, timeout_s=0.01)


def test_wait_for_asks_only_once_the_time_has_passed():
    src = ListSource()
    sampler = TelemetrySampler(src, interval_s=1.0)
    sampler._ingest([s(0, 0, 100)])
    assert not sampler.wait_for(time.time() + 60.0, timeout_s=0.02)
    assert src.counter_requests == 0  # the window has not ended yet: nothing to read now


def test_wait_for_a_reading_that_never_comes_returns_false():
    """A counter that stops answering after a window must be visible, never a short window."""

    class StoppingCounter(LinearSource):
        def read(self) -> list[Sample]:
            (sample,) = super().read()
            if self.reads > 3:  # the counter read fails from the 4th tick on; power goes on
                return [Sample(t_s=sample.t_s, gpu_index=0, power_w=sample.power_w, energy_j=None)]
            return [sample]

    sampler = TelemetrySampler(StoppingCounter(), interval_s=0.01)
    sampler.start()
    try:
        time.sleep(0.1)
        t1 = time.time()
        start = time.monotonic()
        assert not sampler.wait_for(t1, timeout_s=0.2)
        assert 0.2 <= time.monotonic() - start < 1.0
        assert sampler.latest()[0].t_s >= t1  # power came past t1; the counter did not
    finally:
        sampler.stop()
    # an idle measurement over a span whose closing reading never comes is no figure at all
    assert sampler.measure_idle_power_w(0.05) is None
    # with the thread stopped nothing can come: False at once, not at the timeout
    start = time.monotonic()
    assert not sampler.wait_for(time.time(), timeout_s=5.0)
    assert time.monotonic() - start < 0.5


def ticks(sampler: TelemetrySampler, *tick_samples: list[Sample]) -> None:
    for samples in tick_samples:
        sampler._ingest(samples)


def test_counter_readings_per_gpu_and_summed():
    sampler = TelemetrySampler(ListSource(devices=(0, 1)), interval_s=1.0)
    ticks(
        sampler,
        [s(0.00, 100, 50), s(0.01, 1000, 50, gpu=1)],
        [s(1.00, None, 50), s(1.01, None, 50, gpu=1)],  # power only: no counter this tick
        [s(2.00, 200, 50), s(2.01, 1100, 50, gpu=1)],
        [s(3.00, 250, 50), s(3.01, None, 50, gpu=1)],  # GPU 1's read failed: no summed reading
        [s(4.00, 40, 50), s(4.01, 1300, 50, gpu=1)],  # GPU 0's counter went back (driver reload)
        [s(5.00, 90, 50), s(5.01, 1400, 50, gpu=1)],
    )
    assert sampler.counter_readings(0, 10, gpu=0) == [
        (0.0, 100.0), (2.0, 200.0), (3.0, 250.0), (4.0, 250.0), (5.0, 300.0)
    ]  # fmt: skip
    assert sampler.counter_readings(0, 10, gpu=1) == [
        (0.01, 1000.0), (2.01, 1100.0), (4.01, 1300.0), (5.01, 1400.0)
    ]  # fmt: skip
    summed = sampler.counter_readings(0, 10)
    assert [t for t, _ in summed] == pytest.approx([0.005, 2.005, 4.005, 5.005])
    assert [e for _, e in summed] == [1100.0, 1300.0, 1550.0, 1700.0]
    assert [t for t, _ in sampler.counter_readings(1.5, 4.5)] == pytest.approx([2.005, 4.005])
    # between two readings the difference is what energy_between counts
    (ta, ea), (tb, eb) = summed[1], summed[3]
    assert sampler.energy_between(ta, tb).energy_j == pytest.approx(eb - ea, abs=1.0)
    assert sampler.counter_readings(6, 7) == []


def test_counter_readings_leave_out_power_only_devices():
    sampler = TelemetrySampler(ListSource(devices=(0, 1)), interval_s=1.0)
    ticks(sampler, [s(0, 10, 50), s(0, None, 50, gpu=1)], [s(1, 30, 50), s(1, None, 50, gpu=1)])
    assert sampler.counter_readings(0, 1) == [(0.0, 10.0), (1.0, 30.0)]


@pytest.mark.parametrize("counter_cost_s", [0.003, 0.007])
def test_a_20_s_window_holds_ten_sub_windows_bounded_by_counter_readings(
    monkeypatch, clock, counter_cost_s
):
    """The H100's measured counter cost, 3-7 ms: NvmlSource at 10 Hz, 25 s of ticks."""
    gpu = FakeGpu()
    gpu.energy_cpu_s = counter_cost_s
    install(monkeypatch, [gpu], clock=clock)
    sampler = TelemetrySampler(NvmlSource(), interval_s=0.1)
    assert sampler.source.counter_interval_s <= 1.0
    for n in range(250):
        clock.t = 1000.0 + n / 10
        gpu.energy_mj = n * 30_000
        sampler._tick()
    for offset in (0.0, 0.03, 0.37, 0.55, 0.99):  # wherever the window falls
        t0 = 1002.0 + offset
        readings = sampler.counter_readings(t0, t0 + 20.0)
        assert len(readings) - 1 >= 10, (offset, len(readings))
    # and the cost stays inside the budget: counter CPU per second
    per_s = counter_cost_s / sampler.source.counter_interval_s
    assert per_s <= max(sources.COUNTER_CPU_BUDGET, counter_cost_s / sources.COUNTER_MAX_INTERVAL_S)


# ---------------------------------------------------------------------------------------------
# choosing k


def test_choose_counter_every_hand_values():
    # the default budget, 1% of a core: 4 ms / (k x 100 ms) <= 1%  ->  k = 4 (0.4 s)
    assert choose_counter_every(0.004, 0.1) == 4
    assert choose_counter_every(0.007, 0.1) == 7  # the slowest read measured: 0.7 s
    # the measured H100 cost, 4 ms of CPU per read, budget 5 ms/s:
    # 4 / (k x 100 ms) <= 0.5%  ->  k >= 8 at 10 Hz (0.8 s); k >= 40 at 50 Hz (0.8 s)
    assert choose_counter_every(0.004, 0.1, cpu_budget=0.005) == 8
    assert choose_counter_every(0.004, 0.02, cpu_budget=0.005) == 40
    assert choose_counter_every(0.0041, 0.1, cpu_budget=0.005) == 9  # a little more cost: one more tick
    assert choose_counter_every(0.0, 0.1, cpu_budget=0.005) == 1  # free: every tick
    assert choose_counter_every(0.00001, 0.1, cpu_budget=0.005) == 1  # 10 us per read is 0.01% at 10 Hz
    # 8 GPUs x 4 ms = 32 ms would need 6.4 s at 0.5%; the 1 s cap wins (k = 10, 3.2% of a core)
    assert choose_counter_every(0.032, 0.1, cpu_budget=0.005) == 10
    assert choose_counter_every(0.032, 0.1, cpu_budget=0.005, max_interval_s=2.0) == 20
    assert choose_counter_every(0.004, 3.0, cpu_budget=0.005) == 1  # ticks longer than the cap: every tick
    assert choose_counter_every(0.004, 0.1, cpu_budget=0.01) == 4


def test_nvml_chooses_k_from_the_measured_counter_cost(monkeypatch, clock):
    gpu = FakeGpu()
    gpu.energy_cpu_s, gpu.energy_wall_s = 0.004, 0.0042  # the H100's cost
    fake = install(monkeypatch, [gpu], clock=clock)
    src = NvmlSource(counter_cpu_budget=0.005)
    assert fake.calls["energy"] == 1 + 3  # one to find the counter, three timed
    assert src.counter_call_cpu_s == pytest.approx(0.004)
    assert src.counter_call_wall_s == pytest.approx(0.0042)
    assert src.counter_every == 8 and src.counter_interval_s == pytest.approx(0.8)
    sampler = TelemetrySampler(src, interval_s=0.02)  # the sampler tells the source its period
    assert src.counter_every == 40 and src.counter_interval_s == pytest.approx(0.8)
    src.set_tick_interval(0.5)
    assert src.counter_every == 2 and src.counter_interval_s == pytest.approx(1.0)
    assert src.counter_info() == {
        "counter_interval_s": pytest.approx(1.0),
        "counter_every_ticks": 2,
        "counter_call_cpu_s": pytest.approx(0.004),
        "counter_call_wall_s": pytest.approx(0.0042),
        "counter_cpu_budget": 0.005,
    }
    del sampler


def test_nvml_reads_the_counter_every_kth_tick(monkeypatch, clock):
    gpu = FakeGpu()
    gpu.energy_cpu_s = 0.004
    fake = install(monkeypatch, [gpu], clock=clock)
    src = NvmlSource(counter_cpu_budget=0.005)  # k = 8 at 0.1 s
    before = fake.calls["energy"]
    has_energy = []
    for n in range(17):
        clock.t = 1000.0 + n / 10
        gpu.energy_mj = n * 30_000
        (sample,) = src.read()
        has_energy.append(sample.energy_j is not None)
        assert sample.power_w == 300.0 and sample.mem_used_bytes == 10 * 2**30  # every tick
    # the first read, then every 8th
    assert [n for n, e in enumerate(has_energy) if e] == [0, 8, 16]
    assert fake.calls["energy"] - before == 3
    src.request_counter()
    assert src.read()[0].energy_j is not None  # asked for: read on the next tick
    assert src.read()[0].energy_j is None  # and the schedule restarts from there
    assert [src.read()[0].energy_j is not None for _ in range(7)] == [False] * 6 + [True]


def test_nvml_costs_add_over_gpus(monkeypatch, clock):
    gpus = [FakeGpu(), FakeGpu()]
    for g in gpus:
        g.energy_cpu_s = 0.004
    install(monkeypatch, gpus, clock=clock)
    src = NvmlSource(counter_cpu_budget=0.005)
    # both counters on the same tick: 8 ms per counter tick -> k = 16 at 0.1 s, held at the 1 s cap
    assert src.counter_every == 10 and src.counter_interval_s == pytest.approx(1.0)
    assert NvmlSource(counter_cpu_budget=0.01).counter_every == 8  # at the default budget: 0.8 s
    gpus[0].energy_cpu_s = gpus[1].energy_cpu_s = 0.02
    assert NvmlSource().counter_every == 10  # 40 ms per counter tick: held at the 1 s cap


def test_nvml_without_counter_reads_no_counter(monkeypatch, clock):
    gpu = FakeGpu()
    gpu.energy_mj = None
    fake = install(monkeypatch, [gpu], clock=clock)
    src = NvmlSource(counter_cpu_budget=0.005)
    assert src.counter_call_cpu_s is None and src.counter_every == 1
    for _ in range(3):
        assert src.read()[0].energy_j is None
    assert fake.calls["energy"] == 1  # NotSupported is remembered


def test_nvml_sampler_energy_with_sparse_counter(monkeypatch, clock):
    """The real source, k = 5: the STEP readings above, made by NvmlSource ticks."""
    gpu = FakeGpu()
    gpu.energy_cpu_s = 0.0025  # 2.5 ms / (k x 0.1 s) <= 0.5%  ->  k = 5
    install(monkeypatch, [gpu], clock=clock)
    sampler = TelemetrySampler(NvmlSource(counter_cpu_budget=0.005), interval_s=0.1)
    assert sampler.source.counter_every == 5
    for n in range(21):
        clock.t = n / 10
        gpu.energy_mj = int(COUNTER_AT.get(n, -1.0) * 1000)  # read on the 5th ticks only
        gpu.instant_mw = 100_000 if n <= 7 else 300_000
        sampler._tick()
    assert [x.energy_j for x in sampler.samples() if x.energy_j is not None] == [
        0.0, 60.0, 170.0, 320.0, 470.0
    ]  # fmt: skip
    r = sampler.energy_between(0.75, 1.75)
    assert r.energy_j == pytest.approx(304.75) and r.source == "nvml-counter"
    assert r.integrated_j == pytest.approx(297.5)


def test_thread_closes_a_window_in_about_a_tick_not_a_counter_period(monkeypatch):
    install(monkeypatch, [FakeGpu()])
    src = NvmlSource(counter_cpu_budget=1e-12)  # any cost is too much: the 1 s cap, k = 100
    sampler = TelemetrySampler(src, interval_s=0.01)
    assert src.counter_every == 100
    sampler.start()
    try:
        time.sleep(0.1)
        t1 = time.time()
        start = time.monotonic()
        assert sampler.wait_for(t1, timeout_s=1.5)  # without asking it would take up to 2 s
        assert time.monotonic() - start < 0.5
    finally:
        sampler.stop()
    counters = [x for x in sampler.samples() if x.energy_j is not None]
    assert len(counters) == 2 and counters[-1].t_s >= t1  # the first tick's, and the asked one


# ---------------------------------------------------------------------------------------------
# the thread's own cost


def cpu_share(sampler: TelemetrySampler, run_s: float) -> float:
    sampler.start()
    time.sleep(run_s)
    sampler.stop()  # the thread's last thread_cpu_s is written after its last tick
    return sampler.thread_cpu_s / run_s


def test_thread_cpu_share_is_small_at_10_hz(monkeypatch):
    install(monkeypatch, [FakeGpu()])  # every NVML call nearly free
    sampler = TelemetrySampler(NvmlSource(counter_cpu_budget=0.005), interval_s=0.1)
    share = cpu_share(sampler, 1.0)
    assert len(sampler.samples()) >= 8
    assert share < 0.01, share  # the requirement: under 1% of a core at 10 Hz


def test_thread_cpu_share_stays_small_with_a_costly_counter(monkeypatch):
    gpu = FakeGpu()
    gpu.energy_burn_s = 0.002  # every counter read really spends 2 ms of CPU
    install(monkeypatch, [gpu])
    src = NvmlSource(counter_cpu_budget=0.005)
    assert 0.002 <= src.counter_call_cpu_s < 0.003
    sampler = TelemetrySampler(src, interval_s=0.1)
    # 2 ms / (k x 100 ms) <= 0.5%  ->  k = 4, or 5 where the measured reads came out a bit slower
    assert src.counter_every in (4, 5, 6)
    share = cpu_share(sampler, 1.6)
    counter_reads = sum(x.energy_j is not None for x in sampler.samples())
    assert counter_reads <= 1 + 1.6 / src.counter_interval_s + 1
    # Read every tick the counter alone would take 2% (2.3% with the loop). Adaptive, it takes
    # 0.5% and the loop about 0.25% (0.75% measured on a quiet 2-core VM); the bound leaves room
    # for a busy test machine.
    assert share < 0.0125, share
