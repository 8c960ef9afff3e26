"""Jetson power from tegrastats: recorded lines from several JetPack releases, malformed lines,
and the source reading a real child process that prints them."""

from __future__ import annotations

import os
import stat
import sys
import textwrap
import time
from pathlib import Path

import pytest

from carbontop.core.hardware import lookup_gpu, peak_bandwidth_bytes_s
from carbontop.errors import CarbontopError
from carbontop.telemetry.sampler import TelemetrySampler
from carbontop.telemetry.sources import open_power_source
from carbontop.telemetry.tegrastats import TegrastatsSource, board_name, is_jetson, parse_line

# Recorded tegrastats lines. The first three are the test lines of waggle-sensor/jetson-exporter
# (tegrastats_test.go), each named there for its board and JetPack release.
NANO_JP461 = (
    "RAM 1923/3964MB (lfb 2x2MB) SWAP 191/1982MB (cached 6MB) IRAM 0/252kB(lfb 252kB) "
    "CPU [5%@1224,4%@1224,3%@1224,6%@1224] EMC_FREQ 0%@1600 GR3D_FREQ 0%@76 APE 25 PLL@37C "
    "CPU@40C PMIC@50C GPU@40C AO@45C thermal@40C POM_5V_IN 1750/1628 POM_5V_GPU 0/0 POM_5V_CPU 366/406"
)
XAVIER_NX_JP411 = (
    "RAM 5246/7771MB (lfb 7x4MB) SWAP 983/20269MB (cached 280MB) CPU [47%@1420,23%@1420,32%@1420,"
    "22%@1420,31%@1420,96%@1420] EMC_FREQ 2%@1600 GR3D_FREQ 0%@1109 APE 150 MTS fg 1% bg 9% "
    "AO@29C GPU@31.5C PMIC@100C AUX@30C CPU@33.5C thermal@31.35C VDD_IN 6140/5510 "
    "VDD_CPU_GPU_CV 2706/2119 VDD_SOC 1074/1051"
)
XAVIER_NX_JP512 = (
    "07-09-2024 13:31:31 RAM 3168/6851MB (lfb 2x4MB) SWAP 161/3426MB (cached 0MB) "
    "CPU [23%@1397,17%@1192,16%@1190,13%@1190,23%@1190,10%@1190] EMC_FREQ 2%@204 GR3D_FREQ 0%@[114] "
    "VIC_FREQ 115 APE 150 AUX@45C CPU@46.5C thermal@45.6C AO@45C GPU@45.5C PMIC@50C "
    "VDD_IN 2763mW/2846mW VDD_CPU_GPU_CV 650mW/670mW VDD_SOC 650mW/711mW"
)
# An AGX Orin 64GB under JetPack 6, from the test table of a public Go tegrastats parser (the code
# search that found it does not name the repository): no input rail, unconnected NC channels, and
# the GPU's temperature sensor off (-256C) while the GPU idles.
AGX_ORIN_JP6 = (
    "04-11-2025 10:36:27 RAM 4321/62801MB (lfb 1759x4MB) SWAP 19/31400MB (cached 0MB) "
    "CPU [0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] "
    "EMC_FREQ 0%@2133 GR3D_FREQ 0%@[0,0] VIC_FREQ 729 APE 174 CV0@-256C CPU@44.562C Tboard@32C "
    "SOC2@40.093C Tdiode@33C SOC0@41.093C CV1@-256C GPU@-256C tj@44.343C SOC1@41.25C CV2@-256C "
    "VDD_GPU_SOC 2340mW/2340mW VDD_CPU_CV 390mW/390mW VIN_SYS_5V0 4025mW/4025mW NC 0mW/0mW "
    "VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW"
)


@pytest.mark.parametrize(
    ("line", "board_w", "board_rail", "gpu_w", "gpu_rail", "ram_mib", "util", "freq", "temp"),
    [
        (NANO_JP461, 1.750, "POM_5V_IN", 0.0, "POM_5V_GPU", (1923, 3964), 0.0, 76.0, 40.0),
        (XAVIER_NX_JP411, 6.140, "VDD_IN", 2.706, "VDD_CPU_GPU_CV", (5246, 7771), 0.0, 1109.0, 31.5),
        (XAVIER_NX_JP512, 2.763, "VDD_IN", 0.650, "VDD_CPU_GPU_CV", (3168, 6851), 0.0, 114.0, 45.5),
        (AGX_ORIN_JP6, 7.056, "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0+VDDQ_VDD2_1V8AO", 2.340,
         "VDD_GPU_SOC", (4321, 62801), 0.0, 0.0, None),
    ],
)
def test_recorded_lines(line, board_w, board_rail, gpu_w, gpu_rail, ram_mib, util, freq, temp) -> None:
    r = parse_line(line)
    assert r is not None
    assert r.board_power_w == pytest.approx(board_w)
    assert r.board_rail == board_rail
    assert r.board_is_input == (board_rail in ("VDD_IN", "POM_5V_IN"))
    assert r.gpu_power_w == pytest.approx(gpu_w) and r.gpu_rail == gpu_rail
    assert (r.mem_used_bytes, r.mem_total_bytes) == (ram_mib[0] * 2**20, ram_mib[1] * 2**20)
    assert r.gpu_util_pct == util and r.gpu_freq_mhz == freq and r.gpu_temp_c == temp


@pytest.mark.parametrize(
    "line",
    [
        "",
        "tegrastats: command not found",
        # cut before the rails (a line torn by a killed process)
        "RAM 1923/3964MB (lfb 2x2MB) SWAP 191/1982MB (cached 6MB) IRAM 0/252kB(lfb 252kB) CPU [5%@12",
        # cut inside the first rail
        NANO_JP461.split(" POM_5V_IN")[0] + " POM_5V_IN 17",
        "\x00\x00\x00",
    ],
)
def test_lines_without_a_power_rail_give_nothing(line: str) -> None:
    assert parse_line(line) is None


def test_memory_and_swap_are_not_rails() -> None:
    r = parse_line("RAM 1923/3964MB SWAP 191/1982MB IRAM 0/252kB(lfb 252kB) VDD_IN 5000mW/4000mW")
    assert r is not None and r.board_rail == "VDD_IN" and r.board_power_w == 5.0


def test_board_names_match_the_gpu_table() -> None:
    orin = board_name("NVIDIA Jetson AGX Orin Developer Kit\x00", 62801 * 2**20)
    assert orin == "Jetson AGX Orin 64GB"
    spec = lookup_gpu(orin)
    assert spec is not None and peak_bandwidth_bytes_s(spec) == 204.8e9
    assert lookup_gpu(board_name("Jetson AGX Orin", 30536 * 2**20)).name == "Jetson AGX Orin 32GB"
    assert lookup_gpu(board_name("Jetson-AGX", 31011 * 2**20)).name == "Jetson AGX Xavier 32GB"
    assert lookup_gpu("Jetson AGX Orin") is None  # without the memory size: two modules match


def test_is_jetson_reads_the_device_tree(tmp_path: Path) -> None:
    model, release = tmp_path / "model", tmp_path / "nv_tegra_release"
    model.write_text("NVIDIA Jetson AGX Orin Developer Kit\x00")
    assert is_jetson(model, release)
    model.write_text("Raspberry Pi 4 Model B\x00")
    assert not is_jetson(model, release)
    release.write_text("# R36 (release), REVISION: 4.0")
    assert is_jetson(model, release)


def _fake_tegrastats(tmp_path: Path, lines: list[str]) -> Path:
    """A `tegrastats` that prints the given lines, in turn, every --interval milliseconds."""
    script = tmp_path / "tegrastats"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""
        import sys, time
        lines = {lines!r}
        ms = int(sys.argv[sys.argv.index("--interval") + 1])
        i = 0
        while True:
            print(lines[i % len(lines)], flush=True)
            i += 1
            time.sleep(ms / 1000)
    """))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_the_source_integrates_the_input_rail(tmp_path: Path) -> None:
    script = _fake_tegrastats(tmp_path, [NANO_JP461, "garbled \x00 line", NANO_JP461])
    model = tmp_path / "model"
    model.write_text("NVIDIA Jetson Nano Developer Kit\x00")
    source = TegrastatsSource(command=str(script), interval_s=0.02, model_file=model)
    try:
        assert source.device_names() == {0: "Jetson Nano 4GB"}
        assert "input rail POM_5V_IN" in source.note and "no energy counter" in source.note
        sampler = TelemetrySampler(source, interval_s=0.02)
        sampler.start()
        t0 = time.time() + 0.1
        time.sleep(0.6)
        t1 = time.time() - 0.1
        sampler.stop()
        reading = sampler.energy_between(t0, t1)
    finally:
        source.close()
    # a constant 1.75 W on the input rail
    assert reading.energy_j == pytest.approx(1.75 * (t1 - t0), rel=1e-6)
    assert reading.source == "tegrastats" and not reading.estimated
    assert source.malformed_lines >= 1


def test_a_module_without_an_input_rail_says_so(tmp_path: Path) -> None:
    script = _fake_tegrastats(tmp_path, [AGX_ORIN_JP6])
    source = TegrastatsSource(command=str(script), interval_s=0.05, model_file=tmp_path / "none")
    try:
        assert "sum of the module's rails" in source.note and "carrier board" in source.note
    finally:
        source.close()


def test_chosen_by_name_and_a_missing_program_is_one_sentence(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CarbontopError, match="needs the 'tegrastats' program"):
        open_power_source("cpu", kind="tegrastats")
    _fake_tegrastats(tmp_path, [XAVIER_NX_JP512])
    source = open_power_source("cpu", kind="tegrastats")
    try:
        assert source.kind == "tegrastats" and source.last.board_rail == "VDD_IN"
    finally:
        source.close()
    assert os.environ["PATH"] == str(tmp_path)
