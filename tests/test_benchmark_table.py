"""benchmarks/batching_table.py reproduces the benchmark table from the sample runs it cites."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "sample_runs"


def test_table_rows_match_the_readme() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "batching_table.py"),
         f"in-flight (ours)={RUNS / 'llama2-7b-h200-sharegpt-inflight'}",
         f"static={RUNS / 'llama2-7b-h200-sharegpt-static'}"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert ("in-flight (ours): NVIDIA H200, driver 580.159.04; interrupted; wall unknown (its last "
            "window closed 587 s after the start)") in out
    assert "static: NVIDIA H200, driver 580.159.04; interrupted" in out
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    # the README writes occupancy as a whole percent; every other cell is the script's
    for line in out.splitlines():
        if line.startswith("| 1 |") or line.startswith("| 32 |"):
            cells = line.split(" | ")
            assert " | ".join(cells[:4]) in readme, line
