"""Print the batching benchmark's table from saved runs: one row per batch size and mode.

    python benchmarks/batching_table.py "in-flight (ours)=runs/inflight" static=runs/static \
        "transformers CB=runs/cb"

Every figure comes from the runs' own points.csv and run.toml (carbontop's loader), so the table
in benchmarks/README.md can be checked against the sample runs it was made from. Each run's
header line gives the card, the driver, how the run ended and its wall time.
"""

from __future__ import annotations

import sys
from pathlib import Path

from carbontop.core.records import PointResult, PointStatus
from carbontop.core.store import SavedRun, load_run


def _rel(value: float | None, half_width: float | None) -> str:
    if value is None:
        return "–"
    if half_width is None or not value:
        return f"{value:,.4g}"
    return f"{value:,.4g} ±{half_width / value * 100:.1f}%"


def _pct(value: float | None) -> str:
    return f"{value * 100:.1f}%" if value is not None else "–"


def header(label: str, run: SavedRun) -> str:
    env, status = run.meta.environment, run.meta.status
    if status.started and status.finished:
        wall = f"{(status.finished - status.started).total_seconds():.0f} s"
    elif status.started and any(p.window_end_s for p in run.points):
        # no closing record: the last window says how far the sweep had come when it was saved
        last_s = max(p.window_end_s or 0.0 for p in run.points) - status.started.timestamp()
        wall = f"unknown (its last window closed {last_s:.0f} s after the start)"
    else:
        wall = "unknown"
    devices = ", ".join(env.devices) or "unknown device"
    return f"{label}: {devices}, driver {env.driver_version or '?'}; {run.state}; wall {wall}"


def row(label: str, p: PointResult) -> str:
    occupancy = _pct(p.slot_occupancy) if p.slot_occupancy else "not visible"
    s_tok = f"{p.s_per_token:.4f}" if p.s_per_token is not None else "–"
    return (f"| {p.batch_size} | {label} | {_rel(p.tokens_per_s, p.tokens_per_s_ci95)} | "
            f"{_rel(p.j_per_token, p.j_per_token_ci95)} | {occupancy} | {_pct(p.mbu)} | {s_tok} |")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    runs: list[tuple[str, SavedRun]] = []
    for arg in argv:
        label, _, path = arg.rpartition("=")
        runs.append((label or Path(path).name, load_run(Path(path), with_power=False)))
    for label, run in runs:
        print(header(label, run))
    print()
    print("| batch | mode | tok/s ±95% | J/token ±95% | slot occupancy | MBU | s/token |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = [(p.batch_size, i, label, p) for i, (label, run) in enumerate(runs)
            for p in run.points if p.status is PointStatus.OK]
    for _b, _i, label, p in sorted(rows, key=lambda r: (r[0], r[1])):
        print(row(label, p))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
