"""The results table as text (rich), shared by `carbontop sweep` and `carbontop show`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from carbontop.core.carbon import gco2e_per_token_at
from carbontop.core.records import PointResult, PointStatus
from carbontop.core.repeats import combine
from carbontop.core.store import SavedRun
from carbontop.core.verdict import boundary, recommendation
from carbontop.figures.compare import RunSummary, like_for_like_warnings, table_rows
from carbontop.figures.numbers import FORMATS

# (column in points.csv, header, its 95% half-width column or None); how each figure prints
# (decimals, or one notation per column, and the unit's multiplier) is figures/numbers.FORMATS,
# which the app's table reads too
COLUMNS: list[tuple[str, str, str | None]] = [
    ("tokens_per_s", "tok/s", "tokens_per_s_ci95"),
    ("s_per_token", "s/tok", None),
    ("ttft_p50_s", "TTFT s", None),
    ("tpot_p50_s", "TPOT ms", None),
    ("j_per_token", "J/tok", "j_per_token_ci95"),
    ("gco2e_per_token", "op g/tok", "gco2e_per_token_ci95"),
    ("embodied_gco2e_per_token", "emb g/tok", None),
    ("total_gco2e_per_token", "gCO2e/tok", None),
    ("slot_occupancy", "occ %", None),
    ("mfu", "MFU %", None),
    ("mbu", "MBU %", None),
    ("duration_s", "W s", None),
    ("peak_mem_gb", "peak GB", None),
    ("avg_power_w", "W", None),
]


def fmt(value: Any, pattern: str | Callable[[float | None], str], scale: float = 1.0) -> str:
    if value is None or value == "":
        return "–"
    try:
        number = float(value) * scale
    except (TypeError, ValueError):
        return str(value)
    return pattern(number) if callable(pattern) else pattern.format(number)


def _number(value: Any, scale: float) -> float | None:
    try:
        return None if value is None or value == "" else float(value) * scale
    except (TypeError, ValueError):
        return None


def column_patterns(points: Sequence[PointResult], columns: Sequence[tuple[str, str, str | None]]
                    ) -> dict[str, Callable[[float | None], str]]:
    """Each column's formatter, chosen once from all the column's values (figures/numbers.py)."""
    return {key: FORMATS[key].for_column([_number(getattr(p, key), FORMATS[key].scale) for p in points],
                                         missing="–")
            for key, _, _ in columns}


def with_interval(value: Any, half_width: Any, pattern: str | Callable[[float | None], str],
                  scale: float = 1.0) -> str:
    """'value ±h%' where the figure has a 95% half-width, the value alone where not."""
    text = fmt(value, pattern, scale)
    try:
        rel = float(half_width) / abs(float(value))
    except (TypeError, ValueError, ZeroDivisionError):
        return text
    return f"{text} ±{rel * 100:.1f}%"


def point_rows(run: SavedRun) -> list[PointResult]:
    """One row per batch size, smallest first (the search measures 8 before 6): re-measures
    combined (mean +- interval over them), else the one measurement (core/repeats.py)."""
    return sorted(combine(run.points), key=lambda p: p.batch_size)


def points_table(run: SavedRun) -> Table:
    recommended, _line = recommendation(run)
    rows = point_rows(run)
    table = Table(title=f"{run.meta.settings.model or '?'} on {', '.join(run.meta.environment.devices) or '?'}",
                  header_style="bold", title_justify="left")
    # TTFT/TPOT p90, intensity and the rest stay in points.csv; a column that no point could
    # measure here (MFU on a CPU, say) is left out rather than printed as dashes
    shown = [c for c in COLUMNS if any(getattr(row, c[0]) is not None for row in rows)]
    repeated = any(row.repeats > 1 for row in rows)
    table.add_column("batch", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for _, header, ci in shown:
        table.add_column(f"{header} ±95%" if ci else header, justify="right", no_wrap=True)
    if repeated:
        table.add_column("n", justify="right", no_wrap=True)
    patterns = column_patterns(rows, shown)
    for row in rows:
        mark = " *" if recommended is not None and row.batch_size == recommended else ""
        status = row.status.value
        cells = [with_interval(getattr(row, key), getattr(row, ci), patterns[key], FORMATS[key].scale)
                 if ci else fmt(getattr(row, key), patterns[key], FORMATS[key].scale)
                 for key, _, ci in shown]
        if repeated:
            cells.append(str(row.repeats or 1))
        table.add_row(f"{row.batch_size}{mark}", status, *cells,
                      style=None if status == "ok" else "dim")
    return table


def print_summary(run: SavedRun, console: Console) -> None:
    console.print(points_table(run))
    status = run.meta.status
    carbon = run.meta.carbon
    workload = run.meta.workload
    settings = run.meta.settings
    lines = [f"run: {run.path} ({run.state})"]
    largest_ok, smallest_failed = boundary(run)
    if largest_ok is not None:
        bound = f"largest batch that ran: {largest_ok}"
        if smallest_failed is not None:
            failed = smallest_failed
            how = {PointStatus.CRASHED: "crashed (twice)", PointStatus.HUNG: "hung (twice)",
                   PointStatus.KV_BOUND: "ran fewer requests at once than asked"}
            ended = next((p.status for p in run.points if p.batch_size == failed), None)
            bound += f"; {failed} {how.get(ended, 'did not fit') if ended else 'did not fit'}"
        lines.append(bound)
    _batch, line = recommendation(run)
    if line:
        lines.append(line)
    if carbon.description:
        lines.append(f"carbon: {carbon.description}; PUE {carbon.pue if carbon.pue is not None else 1.0}")
    if carbon.cleanest_gco2e_per_kwh is not None and carbon.dirtiest_gco2e_per_kwh is not None:
        lines.append(extremes_line(run))
    if settings.min_window_s is not None:
        # the batching the engine really ran (an engine that predates plans runs static batches)
        ran = sorted({p.batching for p in run.points if p.batching})
        batching = " and ".join(ran) or settings.batching or "inflight"
        unit = {"static": "runs of whole batches"}
        units = " and ".join(unit.get(b, "sub-windows between energy-counter readings")
                             for b in ran or [batching])
        lines.append(f"method: {batching} batching; each point's steady-state "
                     f"window at least {settings.min_window_s:g} s; 95% intervals from {units}"
                     + (f", and over {settings.repeats} shuffled re-measures" if settings.repeats else ""))
    env = run.meta.environment
    if env.idle_power_loaded_w is not None:
        before = env.idle_power_w
        lines.append(f"idle power: {env.idle_power_loaded_w:.1f} W with the model loaded (the "
                     "idle-corrected energy subtracts it)"
                     + (f", {before:.1f} W before loading" if before is not None else ""))
    for p in run.points:
        if p.energy_incomplete:
            lines.append(f"batch {p.batch_size}: no energy-counter reading came after its "
                         "window's end, twice: its energy is cut short")
    energy_sources = {p.energy_source for p in run.points if p.energy_source}
    how = "from the CPU's TDP and load: no hardware counter was readable"
    if energy_sources:  # one line, the estimate's caveat with it
        lines.append("energy: " + ", ".join(sorted(energy_sources))
                     + (f" ({how})" if env.energy_estimated else ""))
    elif env.energy_estimated:
        lines.append(f"energy: estimated {how}")
    # runs that predate the workload's own note on it get the line here
    if not workload.lengths_exact and not any(
            n.startswith("token counts are estimated") for n in workload.notes):
        # the counter's name ends in why there was no tokenizer ("no model folder given", ...)
        reason = workload.tokenizer.rpartition("; ")[2] or "no tokenizer found"
        lines.append(f"token counts are estimated, not tokenized ({reason})")
    if run.state_note:
        lines.append(f"interrupted: {run.state_note}")
    elif status.message and run.state != "done":
        lines.append(f"stopped: {status.message}")
    for note in run.meta.notes:
        lines.append(f"note: {note}")
    for warning in run.meta.warnings:
        lines.append(f"warning: {warning}")
    for line in lines:
        console.print(line, highlight=False)


def extremes_line(run: SavedRun) -> str:
    """Carbon per token of the recommended (or best) point at the trace's cleanest and dirtiest hour."""
    carbon = run.meta.carbon
    clean, dirty = carbon.cleanest_gco2e_per_kwh, carbon.dirtiest_gco2e_per_kwh
    if clean is None or dirty is None:
        return ""
    pue = carbon.pue if carbon.pue is not None else 1.0
    parts = []
    for point in run.points:
        if point.status is not PointStatus.OK or point.j_per_token is None:
            continue
        at = [gco2e_per_token_at(point.j_per_token, g, pue, point.embodied_gco2e_per_token)
              for g in (clean, dirty)]
        parts.append(f"b{point.batch_size}: {at[0]:.3g}–{at[1]:.3g}")
    return (f"at the trace's cleanest ({clean:.0f} g/kWh) and dirtiest ({dirty:.0f} g/kWh) hour, "
            "total gCO2e/tok would be " + ", ".join(parts))


def print_comparison(runs: Sequence[RunSummary], console: Console) -> None:
    """Runs side by side: figures as rows, one column per run, ratios to the first run."""
    table = Table(title="carbontop compare: figures of each run, (×) against the first",
                  title_justify="left", header_style="bold")
    table.add_column("", no_wrap=True, style="bold")
    for i, run in enumerate(runs):
        table.add_column(run.name + (" (reference)" if i == 0 and len(runs) > 1 else ""),
                         overflow="fold")
    for label, cells in table_rows(runs):
        table.add_row(label, *cells)
    console.print(table)
    for warning in like_for_like_warnings(runs):
        console.print(f"[yellow]not like for like:[/] {warning}", highlight=False)
