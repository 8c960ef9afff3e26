"""Jetson power from `tegrastats`, NVIDIA's own monitor on Jetson boards (NVML has no power there).

tegrastats prints one line per interval. The power part of the line is a list of rails, each
`NAME current/average`, in milliwatts; its format changed over JetPack releases:

- JetPack 4 (L4T 32): no unit, no timestamp. Nano: `POM_5V_IN 1750/1628 POM_5V_GPU 0/0
  POM_5V_CPU 366/406`; Xavier NX: `VDD_IN 6140/5510 VDD_CPU_GPU_CV 2706/2119 VDD_SOC 1074/1051`.
- JetPack 5 and 6 (L4T 35, 36): a `MM-DD-YYYY HH:MM:SS` timestamp first and `mW` units:
  `VDD_IN 2763mW/2846mW ...`. The AGX Orin module has no input rail: it reports `VDD_GPU_SOC`,
  `VDD_CPU_CV`, `VIN_SYS_5V0`, `VDDQ_VDD2_1V8AO` and unconnected `NC` channels.

The board's power is its input rail where it has one (VDD_IN, or POM_5V_IN on a Nano), which is
the whole module; otherwise (AGX Orin, AGX Xavier) the sum of the module's rails, which leaves
out the carrier board, and the reading says so. The GPU rail is kept beside it. tegrastats has
no energy counter: energy is the board power integrated over time (the sampler's trapezoid).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from carbontop.core.records import Sample
from carbontop.errors import CarbontopError
from carbontop.telemetry.sources import EnergyScope

MIB = 2**20

# Rails that carry the whole module's input power, best first.
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
# The GPU's own rail, best first. VDD_CPU_GPU_CV (Xavier NX, Orin NX/Nano) shares one regulator
# between CPU, GPU and the vision accelerators: it is the closest these boards come.
GPU_RAILS = ("VDD_GPU_SOC", "VDD_GPU", "POM_5V_GPU", "GPU", "VDD_CPU_GPU_CV")

# NAME current/average, each number optionally followed by mW; the average must end the token,
# so RAM 1923/3964MB and SWAP 191/1982MB (also "a/b") are not rails.
_RAIL_RE = re.compile(r"(?<![\w@])([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_RAM_RE = re.compile(r"\bRAM (\d+)/(\d+)MB")
_GR3D_RE = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?(\d+))?")
_GPU_TEMP_RE = re.compile(r"\bGPU@(-?\d+(?:\.\d+)?)C", re.IGNORECASE)
# tegrastats prints -256C for a sensor that is switched off (AGX Orin's GPU sensor when idle)
_NO_SENSOR_C = -256.0


@dataclass(frozen=True)
class TegrastatsReading:
    board_power_w: float
    board_rail: str  # "VDD_IN", "POM_5V_IN" or "VDD_GPU_SOC+VDD_CPU_CV+..." (a sum)
    gpu_power_w: float | None
    gpu_rail: str | None
    mem_used_bytes: int | None
    mem_total_bytes: int | None
    gpu_util_pct: float | None
    gpu_freq_mhz: float | None
    gpu_temp_c: float | None

    @property
    def board_is_input(self) -> bool:
        return self.board_rail in INPUT_RAILS


def parse_line(line: str) -> TegrastatsReading | None:
    """One tegrastats line, or None where it has no power rail (a cut or garbled line)."""
    rails = {name: int(now) for name, now, _avg in _RAIL_RE.findall(line) if name != "NC"}
    if not rails:
        return None
    board_rail = next((r for r in INPUT_RAILS if r in rails), None)
    if board_rail is not None:
        board_mw = rails[board_rail]
    else:
        board_rail = "+".join(rails)
        board_mw = sum(rails.values())
    gpu_rail = next((r for r in GPU_RAILS if r in rails), None)
    ram = _RAM_RE.search(line)
    gr3d = _GR3D_RE.search(line)
    temp = _GPU_TEMP_RE.search(line)
    temp_c = float(temp.group(1)) if temp else None
    return TegrastatsReading(
        board_power_w=board_mw / 1000.0,
        board_rail=board_rail,
        gpu_power_w=rails[gpu_rail] / 1000.0 if gpu_rail else None,
        gpu_rail=gpu_rail,
        mem_used_bytes=int(ram.group(1)) * MIB if ram else None,
        mem_total_bytes=int(ram.group(2)) * MIB if ram else None,
        gpu_util_pct=float(gr3d.group(1)) if gr3d else None,
        gpu_freq_mhz=float(gr3d.group(2)) if gr3d and gr3d.group(2) else None,
        gpu_temp_c=temp_c if temp_c is not None and temp_c != _NO_SENSOR_C else None,
    )


# ---- the board ------------------------------------------------------------------------------

_MODEL_FILE = Path("/proc/device-tree/model")
_RELEASE_FILE = Path("/etc/nv_tegra_release")


def is_jetson(model_file: Path = _MODEL_FILE, release_file: Path = _RELEASE_FILE) -> bool:
    """A Jetson board: L4T's release file, or a device-tree model naming Jetson."""
    if release_file.exists():
        return True
    try:
        return "jetson" in model_file.read_text(errors="replace").lower()
    except OSError:
        return False


def board_name(model: str, mem_total_bytes: int | None) -> str:
    """'Jetson AGX Orin 64GB' from the device tree's 'NVIDIA Jetson AGX Orin Developer Kit' and the
    memory tegrastats reports: modules of one name differ in GPU by memory size (AGX Orin 32GB
    and 64GB), and the OS sees a little less than the module's nominal size."""
    name = model.replace("\x00", "").strip()
    for noise in ("NVIDIA ", " Developer Kit"):
        name = name.replace(noise, "")
    if mem_total_bytes:
        nominal = min((4, 8, 16, 32, 64), key=lambda gb: abs(gb * 2**30 - mem_total_bytes))
        name = f"{name} {nominal}GB"
    return name.strip() or "Jetson"


class TegrastatsSource:
    """Board power from a `tegrastats --interval MS` child process (see the module docstring).

    Readings are stamped with time.time() when their line arrives (tegrastats' own timestamp has
    one-second resolution). Lines without a power rail are counted and skipped.
    """

    kind = "tegrastats"
    estimated = False
    has_energy_counter = False  # energy is the input rail's power integrated over time
    instant_power = True
    scope = EnergyScope.MACHINE  # the whole board: every process on it counts

    def __init__(self, command: str = "tegrastats", interval_s: float = 0.1,
                 model_file: Path = _MODEL_FILE) -> None:
        path = shutil.which(command)
        if path is None:
            raise CarbontopError(
                f"--power-source tegrastats needs the '{command}' program (part of Jetson Linux), "
                "and it is not on the PATH.")
        self._path = path
        self._interval_s = interval_s
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._pending: deque[Sample] = deque()
        self._lock = threading.Lock()
        self.malformed_lines = 0
        self.last: TegrastatsReading | None = None
        try:
            self._model = model_file.read_text(errors="replace")
        except OSError:
            self._model = "Jetson"
        self._start()
        # the first reading names the board (its memory) and says which rail energy comes from
        wait_s = max(5.0, 20 * interval_s)
        deadline = time.time() + wait_s
        while self.last is None and time.time() < deadline and self._proc and self._proc.poll() is None:
            time.sleep(0.01)
        if self.last is None:
            self.close()
            raise CarbontopError(
                f"{path} printed no line with a power rail within {wait_s:.0f} s; "
                "run it by hand to see why (it may need root for the rails).")
        self.note = self._note(self.last)
        self.scope_note: str | None = self.note

    @staticmethod
    def _note(reading: TegrastatsReading) -> str:
        if reading.board_is_input:
            where = f"the board's input rail {reading.board_rail}"
        else:
            where = (f"the sum of the module's rails ({reading.board_rail.replace('+', ', ')}), "
                     "without the carrier board, since this module has no input rail")
        return (f"Energy is tegrastats' {where} integrated over time, everything on the board "
                "included: Jetson has no energy counter, and tegrastats reports power in whole "
                "milliwatts once an interval.")

    def set_tick_interval(self, interval_s: float) -> None:
        """tegrastats prints at the sampler's tick (in whole milliseconds, at least 1)."""
        if abs(interval_s - self._interval_s) > 1e-3:
            self._interval_s = interval_s
            self._stop_process()
            self._start()

    def _start(self) -> None:
        ms = max(1, round(self._interval_s * 1000))
        self._proc = subprocess.Popen(
            [self._path, "--interval", str(ms)], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self._thread = threading.Thread(target=self._pump, args=(self._proc,),
                                        name="carbontop-tegrastats", daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.feed(line, time.time())

    def feed(self, line: str, t_s: float) -> None:
        """Take one line of tegrastats output, read at t_s."""
        reading = parse_line(line)
        if reading is None:
            if line.strip():
                self.malformed_lines += 1
            return
        self.last = reading
        sample = Sample(
            t_s=t_s,
            gpu_index=0,
            power_w=reading.board_power_w,
            energy_j=None,
            mem_used_bytes=reading.mem_used_bytes,
            mem_total_bytes=reading.mem_total_bytes,
            util_pct=reading.gpu_util_pct,
            temp_c=reading.gpu_temp_c,
            sm_clock_mhz=reading.gpu_freq_mhz,
            gpu_rail_power_w=reading.gpu_power_w,
        )
        with self._lock:
            self._pending.append(sample)

    def device_names(self) -> dict[int, str]:
        mem = self.last.mem_total_bytes if self.last else None
        return {0: board_name(self._model, mem)}

    def read(self) -> list[Sample]:
        with self._lock:
            samples = list(self._pending)
            self._pending.clear()
        return samples

    def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def close(self) -> None:
        self._stop_process()
