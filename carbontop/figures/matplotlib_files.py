"""`carbontop plot`: the app's charts as an SVG, PNG or PDF file, for papers and slides.

matplotlib is an optional extra (`pip install 'carbontop[plot]'`): it is imported here only, when
a user asks for a file, and a missing install is one sentence, not a traceback. The figures are the
app's, from the same series: J/token and gCO2e/token against batch size on a log2 axis (with error
bars where points carry confidence intervals), latency against carbon with the target and the
recommended and lowest-carbon points, and the power trace with every point's window shaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from carbontop.errors import CarbontopError
from carbontop.figures import series as fs

FORMATS = ("svg", "png", "pdf")
CHARTS = ("energy", "carbon", "tradeoff", "power")
FIGURE_SIZE_IN = (12.0, 8.5)  # two columns of a slide, or a full-width figure in a paper
DPI = 200  # PNG only: sharp when a slide is projected


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CarbontopError(
            "Writing figures needs matplotlib: pip install 'carbontop[plot]'."
        ) from None
    return Figure


def output_format(dest: Path) -> str:
    suffix = dest.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise CarbontopError(
            f"{dest} has no figure format carbontop writes: name it .svg, .png or .pdf."
        )
    return suffix


def _batch_axis(ax: Any, metric_label: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel(metric_label)
    ax.xaxis.set_major_formatter(_int_formatter())
    ax.set_ylim(bottom=0)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))  # 3e-4, not 0.00030
    ax.grid(True, which="major", alpha=0.3)


def _int_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _pos: f"{value:g}")


def _draw_batch(ax: Any, runs: Sequence[fs.ChartRun], which: str) -> None:
    labels = set()
    for run in runs:
        metric = fs.Metric.J_PER_TOKEN if which == "energy" else fs.carbon_metric(run.points)
        labels.add(metric.axis_label)
        s = fs.batch_series(run.points, metric, run.label)
        if not len(s):
            continue
        yerr = None
        if s.has_intervals:
            below, above = s.y_errors()
            yerr = [below, above]
        ax.errorbar(s.x, s.y, yerr=yerr, marker="o", markersize=4, capsize=3, label=run.label)
    _batch_axis(ax, labels.pop() if len(labels) == 1 else
                ("gCO2e/token (total or operational)" if which == "carbon" else "J/token"))
    ax.set_title("energy per token" if which == "energy" else "carbon per token")
    if len(runs) > 1:
        ax.legend(fontsize="small")


def _draw_tradeoff(ax: Any, runs: Sequence[fs.ChartRun], latency: fs.Metric) -> None:
    carbons = set()
    targets: set[float] = set()
    marked = {fs.MarkKind.RECOMMENDED: False, fs.MarkKind.LOWEST_CARBON: False}
    for run in runs:
        chart = fs.tradeoff(run.points, latency=latency, recommended=run.recommended,
                            target=run.slo_s_per_token if latency is fs.Metric.S_PER_TOKEN else None,
                            label=run.label)
        carbons.add(chart.carbon.axis_label)
        s = chart.series
        if not len(s):
            continue
        (line,) = ax.plot(s.x, s.y, marker="o", markersize=4, label=run.label)
        spans = (max(s.x) or 1.0, max(s.y) or 1.0)
        marked_batches = {m.batch_size for m in chart.marks}
        order = sorted(zip(s.x, s.y, s.batch_sizes, strict=True), key=lambda p: p[2] not in marked_batches)
        for x, y, b in _spaced(order, spans):
            ax.annotate(str(b), (x, y), textcoords="offset points", xytext=(4, 3),
                        fontsize="x-small", color=line.get_color())
        for mark in chart.marks:
            recommended = mark.kind is fs.MarkKind.RECOMMENDED
            ax.scatter([mark.x], [mark.y], s=140 if recommended else 90, zorder=3,
                       marker="o" if recommended else "*", facecolors="none" if recommended else "gold",
                       edgecolors="green" if recommended else "black",
                       label=None if marked[mark.kind] else mark.kind.value)
            marked[mark.kind] = True
        if chart.target is not None:
            targets.add(chart.target)
    for t in sorted(targets):
        ax.axhline(t, color="red", linestyle="--", linewidth=1,
                   label=f"latency target {t:g} {'s/token' if latency is fs.Metric.S_PER_TOKEN else 's'}")
    ax.set_xlabel(carbons.pop() if len(carbons) == 1 else "gCO2e/token")
    ax.set_ylabel(latency.axis_label)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    ax.set_title("latency against carbon")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def _draw_power(ax: Any, runs: Sequence[fs.ChartRun]) -> None:
    traces = [(run, fs.power_trace(run.samples, run.points, t0_s=run.t0_s)) for run in runs]
    for run, trace in traces:
        for s in trace.gpus:
            ax.plot(s.x, s.y, linewidth=0.8,
                    label=s.label if len(traces) == 1 else f"{run.label} {s.label}")
    if len(traces) == 1:  # several runs' windows on one clock would only mislead
        windows = traces[0][1].windows
        span_s = traces[0][1].duration_s or 1.0
        last_at = [-1.0, -1.0]  # centre of the last label on each of two rows
        for w in windows:
            ax.axvspan(w.start_s, w.end_s, color="tab:gray", alpha=0.18, linewidth=0)
            centre = (w.start_s + w.end_s) / 2
            # two rows, so the narrow windows of a bisection do not overprint; none if both taken
            row = next((r for r in (0, 1) if last_at[r] < 0 or centre - last_at[r] > 0.035 * span_s), None)
            if row is None:
                continue
            last_at[row] = centre
            ax.annotate(f"b{w.batch_size}", (centre, 1.0 - 0.045 * row),
                        xycoords=("data", "axes fraction"), ha="center", va="top",
                        fontsize="xx-small")
    ax.set_xlabel("time since the sweep started (s)")
    ax.set_ylabel("power (W)")
    ax.set_ylim(bottom=0)
    ax.set_title("power")
    ax.grid(True, alpha=0.3)
    if sum(len(t.gpus) for _, t in traces) > 1:
        ax.legend(fontsize="small")


def _spaced(points: Sequence[tuple[float, float, int]], spans: tuple[float, float],
            min_gap: float = 0.03) -> list[tuple[float, float, int]]:
    """The points whose labels do not land on an earlier one's (gap as a share of each axis)."""
    kept: list[tuple[float, float, int]] = []
    for x, y, b in points:
        if all(abs(x - kx) / spans[0] > min_gap or abs(y - ky) / spans[1] > min_gap
               for kx, ky, _ in kept):
            kept.append((x, y, b))
    return kept


def write_figure(
    runs: Sequence[fs.ChartRun],
    dest: Path,
    *,
    charts: Sequence[str] = CHARTS,
    latency: fs.Metric = fs.Metric.S_PER_TOKEN,
    title: str = "",
) -> Path:
    """Draw `charts` for `runs` (overlaid) into `dest`; the format is the file's suffix."""
    fmt = output_format(dest)
    unknown = [c for c in charts if c not in CHARTS]
    if unknown:
        raise CarbontopError(f"Unknown chart {unknown[0]!r}: choose from {', '.join(CHARTS)}.")
    if not runs:
        raise CarbontopError("Name at least one run to plot.")
    figure_class = _figure_class()
    n = len(charts)
    cols = 1 if n == 1 else 2
    rows = (n + cols - 1) // cols
    width, height = FIGURE_SIZE_IN
    fig = figure_class(figsize=(width if cols == 2 else width / 2 + 1, height * rows / 2),
                       layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, chart in zip(axes, charts, strict=False):
        if chart in ("energy", "carbon"):
            _draw_batch(ax, runs, chart)
        elif chart == "tradeoff":
            _draw_tradeoff(ax, runs, latency)
        else:
            _draw_power(ax, runs)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title or " vs ".join(r.label for r in runs))
    dest = Path(dest).expanduser()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(dest, format=fmt, dpi=DPI if fmt == "png" else None,
                    metadata={"Creator": "carbontop"} if fmt != "png" else None)
    except OSError as exc:
        raise CarbontopError(f"Cannot write {dest}: {exc.strerror}.") from None
    return dest
