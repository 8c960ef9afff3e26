"""On a CPU, energy and memory are the engine process tree's, not the whole machine's.

Real processes: a root (standing for carbontop) starts an "engine" child that burns a known
amount of CPU and holds 120 MB; a second busy process outside the tree stands for another job on
the box. The tree's CPU time, the estimate's energy and the memory reading must follow the tree
only.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from carbontop.errors import CarbontopError
from carbontop.telemetry.process_tree import ProcessTree
from carbontop.telemetry.sources import (
    EnergyScope,
    EstimateSource,
    NvmlSource,
    RaplSource,
    open_power_source,
)

try:
    from test_telemetry import make_rapl_tree
except ImportError:  # tests/ is a package in this checkout
    from tests.test_telemetry import make_rapl_tree

ENGINE = """
import sys, time
block = bytearray(120 * 2**20)
for i in range(0, len(block), 4096):
    block[i] = 1  # touch every page: resident
end = time.thread_time() + float(sys.argv[1])
while time.thread_time() < end:
    pass
open(sys.argv[2], "w").write("done")
time.sleep(60)
"""

ROOT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]])
time.sleep(60)
"""

OTHER_JOB = "while True: pass"


def wait_for_file(path: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.02)


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


@pytest.fixture
def tree_with_other_load(tmp_path: Path):
    """(root process, engine child, other job, the file the engine writes when it has burnt)."""
    done = tmp_path / "burnt"
    root = subprocess.Popen([sys.executable, "-c", ROOT, ENGINE, "0.4", str(done)])
    other = subprocess.Popen([sys.executable, "-c", OTHER_JOB])
    try:
        yield psutil.Process(root.pid), other, done
    finally:
        for proc in psutil.Process(root.pid).children(recursive=True):
            proc.kill()
        for p in (root, other):
            p.kill()
            p.wait(timeout=10)


def test_the_tree_counts_its_processes_cpu_and_not_other_jobs(tree_with_other_load) -> None:
    root, other, done = tree_with_other_load
    tree = ProcessTree(root.pid, refresh_s=0.05)
    start_root = cpu_s(root)
    deadline = time.monotonic() + 30.0
    while not done.exists() and time.monotonic() < deadline:
        tree.read()  # followed as the sampler would, tick by tick
        time.sleep(0.05)
    time.sleep(0.1)
    reading = tree.read()
    (engine,) = root.children()
    engine_cpu, root_cpu = cpu_s(engine), cpu_s(root) - start_root
    other_cpu = cpu_s(psutil.Process(other.pid))
    # the engine's whole time (found after it started: all of it is new) plus the root's growth
    assert engine_cpu >= 0.4
    assert engine_cpu - 0.05 <= reading.cpu_s <= engine_cpu + root_cpu + 0.05
    assert other_cpu > 0.2  # the other job ran meanwhile, and none of it was counted
    # memory: the engine child's resident set (120 MB held), not the root's, not the machine's
    engine_rss = engine.memory_info().rss
    assert reading.engine_rss_bytes == pytest.approx(engine_rss, rel=0.1)
    assert reading.engine_rss_bytes > 120 * 2**20
    assert reading.engine_rss_bytes < psutil.virtual_memory().used
    assert reading.n_processes == 2


def test_the_estimate_follows_the_tree(tree_with_other_load) -> None:
    root, _, done = tree_with_other_load
    source = EstimateSource(tdp_w=100.0, process_root=root.pid)
    assert source.scope is EnergyScope.PROCESS_TREE and source.scope_note is None
    assert "process tree" in source.note
    first = source.read()[0]
    wait_for_file(done)
    time.sleep(1.1)  # past the tree's refresh, so a late-found engine is in
    last = source.read()[0]
    n_cpus = psutil.cpu_count() or 1
    engine_cpu = cpu_s(root.children()[0])
    # CodeCarbon's process mode: TDP x the tree's share of all CPUs' time, so energy is
    # TDP / CPUs x the tree's CPU seconds
    assert last.energy_j - first.energy_j == pytest.approx(100.0 / n_cpus * engine_cpu, abs=100.0 / n_cpus * 0.1)
    assert last.mem_used_bytes > 120 * 2**20
    assert last.mem_total_bytes == psutil.virtual_memory().total
    assert 0.0 <= last.util_pct <= 100.0


def test_machine_scope_says_it_includes_other_load() -> None:
    source = EstimateSource(tdp_w=100.0)
    assert source.scope is EnergyScope.MACHINE
    assert source.scope_note is not None and "other process" in source.scope_note
    assert NvmlSource.scope is EnergyScope.DEVICES


def test_rapl_is_machine_wide_but_memory_is_the_trees(tmp_path: Path, tree_with_other_load) -> None:
    root, _, done = tree_with_other_load
    powercap = make_rapl_tree(tmp_path)
    source = RaplSource(powercap, process_root=root.pid)
    assert source.scope is EnergyScope.MACHINE and "whole CPU package" in source.scope_note
    wait_for_file(done)
    time.sleep(1.1)
    (sample,) = source.read()
    assert sample.mem_used_bytes == pytest.approx(root.children()[0].memory_info().rss, rel=0.1)


def test_open_power_source_on_the_cpu_follows_the_named_tree() -> None:
    source = open_power_source("cpu", process_root=psutil.Process().pid)
    if isinstance(source, EstimateSource):
        assert source.scope is EnergyScope.PROCESS_TREE
    (sample,) = source.read()
    assert sample.mem_used_bytes is not None and sample.mem_used_bytes > 0  # this process's own RSS
    with pytest.raises(CarbontopError, match=r"^Process \d+ cannot be followed for its CPU time"):
        open_power_source("cpu", process_root=2**22 + 12345)
