"""Runs side by side: one summary per saved run, and what makes two runs not like for like.

The paper's comparisons are the same model on different GPUs, different models on one GPU,
static against in-flight batching, one engine against another. Each run is summed up at three
batch sizes (1, the recommended one, the largest that ran); figures are compared as ratios to the
first run named. A comparison stays honest only where the runs share a workload and a carbon
source: where they do not, a warning says which and why it matters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carbontop.core.records import PointResult
from carbontop.core.run_meta import RunSettings, WorkloadRecord
from carbontop.core.verdict import boundary, recommendation
from carbontop.figures.series import Metric, carbon_metric, measured

if TYPE_CHECKING:
    from carbontop.core.store import SavedRun


@dataclass(frozen=True)
class AtBatch:
    """A run's figures at one batch size."""

    batch_size: int
    j_per_token: float | None
    gco2e_per_token: float | None  # the run's carbon metric (total, or operational)
    s_per_token: float | None


@dataclass(frozen=True)
class RunSummary:
    name: str
    path: Path
    model: str
    gpu: str
    engine: str
    batching: str  # "static", "in-flight", or "" where the run does not say
    workload: str  # one line: source, prompts, lengths
    carbon_source: str
    carbon: Metric
    slo_s_per_token: float | None
    largest_ok_batch: int | None
    smallest_failed_batch: int | None
    batch1: AtBatch | None
    recommended: AtBatch | None
    largest: AtBatch | None
    workload_key: tuple[Any, ...]  # what makes two workloads the same
    carbon_key: tuple[Any, ...]  # what makes two carbon accountings the same
    energy_sources: tuple[str, ...]

    def at(self, which: str) -> AtBatch | None:
        return {"batch 1": self.batch1, "recommended": self.recommended, "largest": self.largest}[which]


AT_WHICH = ("batch 1", "recommended", "largest")


def _at(point: PointResult | None, carbon: Metric) -> AtBatch | None:
    if point is None:
        return None
    return AtBatch(int(point.batch_size), point.j_per_token, getattr(point, carbon.column),
                   point.s_per_token)


def _batching(run_dir: Path) -> str:
    """Static batches or in-flight batching, as the run's own requests record it: engines that
    batch continuously write batch_index -1 (the first row says; every row of a run agrees)."""
    try:
        with open(run_dir / "requests.csv", encoding="utf-8") as fh:
            header = fh.readline().strip().split(",")
            row = fh.readline().strip().split(",")
    except OSError:
        return ""
    if "batch_index" not in header or len(row) != len(header):
        return ""
    return "in-flight" if row[header.index("batch_index")] == "-1" else "static"


def _workload(settings: RunSettings, workload: WorkloadRecord) -> tuple[str, tuple[Any, ...]]:
    source = workload.source or settings.dataset or "?"
    prompts = workload.prompts or settings.num_prompts
    max_in, max_out = settings.max_input_len, settings.max_output_len
    name = Path(source).name if ("/" in source or source.endswith((".json", ".gz", ".jsonl"))) else source
    text = f"{name}, {prompts} prompts, ≤{max_in} in / ≤{max_out} out tokens"
    mean_in, mean_out = workload.mean_input_tokens, workload.mean_output_tokens
    if mean_in is not None and mean_out is not None:
        text += f" (mean {mean_in:.0f} / {mean_out:.0f})"
    key = (name, prompts, max_in, max_out, settings.min_len, settings.seed)
    return text, key


def summarize(run: SavedRun) -> RunSummary:
    """One saved run summed up for comparison."""
    settings, carbon_meta = run.meta.settings, run.meta.carbon
    points = run.points
    ok = measured(points)
    carbon = carbon_metric(points)
    by_batch = {int(p.batch_size): p for p in ok}
    recommended = recommendation(run).batch_size
    workload_text, workload_key = _workload(settings, run.meta.workload)
    return RunSummary(
        name=Path(run.path).name,
        path=Path(run.path),
        model=settings.model or run.meta.model_name or "?",
        gpu=", ".join(run.meta.environment.devices) or "?",
        engine=settings.engine or "?",
        batching=_batching(Path(run.path)),
        workload=workload_text,
        carbon_source=carbon_meta.description or carbon_meta.source or "?",
        carbon=carbon,
        slo_s_per_token=settings.slo_s_per_token,
        largest_ok_batch=ok[-1].batch_size if ok else None,
        smallest_failed_batch=boundary(run).smallest_failed,
        batch1=_at(by_batch.get(1), carbon),
        recommended=_at(by_batch.get(recommended) if recommended is not None else None, carbon),
        largest=_at(ok[-1] if ok else None, carbon),
        workload_key=workload_key,
        carbon_key=(carbon_meta.source or None, carbon_meta.description or None,
                    carbon_meta.pue, carbon_meta.lifetime_years,
                    settings.trace_shift_h if carbon_meta.source == "trace" else None),
        energy_sources=tuple(sorted({p.energy_source for p in ok if p.energy_source})),
    )


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, None where either is missing or the reference is zero."""
    if value is None or reference is None or reference == 0:
        return None
    r = value / reference
    return r if math.isfinite(r) else None


def like_for_like_warnings(runs: Sequence[RunSummary]) -> list[str]:
    """One sentence per way the runs differ that makes their per-token figures not comparable."""
    if len(runs) < 2:
        return []
    warnings = []

    def differ(key: str) -> bool:
        return len({getattr(r, key) for r in runs}) > 1

    def each(attr: str) -> str:
        return "; ".join(f"{r.name}: {getattr(r, attr)}" for r in runs)

    if differ("workload_key"):
        warnings.append("The runs ran different workloads, so per-token figures also differ by "
                        f"prompt and output length, not only by what was compared ({each('workload')}).")
    if differ("carbon_key"):
        warnings.append("The runs count carbon differently, so gCO2e/token is not comparable; "
                        f"J/token is ({each('carbon_source')}).")
    if differ("carbon"):
        warnings.append("Some runs include embodied carbon and others do not (a GPU with no "
                        "published footprint): gCO2e/token is operational only for "
                        + ", ".join(r.name for r in runs if r.carbon is Metric.OPERATIONAL_GCO2E_PER_TOKEN) + ".")
    if differ("energy_sources"):
        warnings.append("Energy was measured differently "
                        f"({'; '.join(f'{r.name}: ' + (', '.join(r.energy_sources) or '?') for r in runs)}).")
    if differ("slo_s_per_token"):
        warnings.append("The runs chose their recommended batch against different latency targets "
                        f"({'; '.join(f'{r.name}: {r.slo_s_per_token} s/token' for r in runs)}).")
    return warnings


# ---- the table ----------------------------------------------------------------------------


def _sig(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:.{digits}g}"


def _with_ratio(value: float | None, reference: float | None, is_reference: bool,
                batch: int | None = None) -> str:
    text = _sig(value) + ("" if batch is None or value is None else f" @{batch}")
    if value is None or is_reference:
        return text
    r = ratio(value, reference)
    return text if r is None else f"{text} ({r:.2f}×)"


def _max_batch(run: RunSummary) -> str:
    if run.largest_ok_batch is None:
        return "none ran"
    if run.smallest_failed_batch is not None:
        return f"{run.largest_ok_batch} ({run.smallest_failed_batch} did not fit)"
    return f"{run.largest_ok_batch} (nothing failed)"


FIGURES = (("J/token", "j_per_token"), ("gCO2e/token", "gco2e_per_token"),
           ("s/token", "s_per_token"))


def table_rows(runs: Sequence[RunSummary]) -> list[tuple[str, list[str]]]:
    """(row label, one cell per run): the runs as columns, figures as rows, each figure of a
    later run followed by its ratio to the first run's."""
    if not runs:
        return []
    ref = runs[0]
    rows: list[tuple[str, list[str]]] = [
        ("model", [r.model for r in runs]),
        ("GPU", [r.gpu for r in runs]),
        ("engine", [f"{r.engine} ({r.batching})" if r.batching else r.engine for r in runs]),
        ("workload", [r.workload for r in runs]),
        ("carbon source", [r.carbon_source for r in runs]),
        ("max batch", [_max_batch(r) for r in runs]),
        ("recommended batch", [str(r.recommended.batch_size) if r.recommended else "none met the target"
                               for r in runs]),
    ]
    for title, attr in FIGURES:
        for which in AT_WHICH:
            cells = []
            for i, r in enumerate(runs):
                at, ref_at = r.at(which), ref.at(which)
                value = getattr(at, attr) if at else None
                ref_value = getattr(ref_at, attr) if ref_at else None
                shown_batch = at.batch_size if at is not None and which != "batch 1" else None
                cells.append(_with_ratio(value, ref_value, i == 0, shown_batch))
            rows.append((f"{title}, {which}", cells))
    for title, attr in FIGURES[:2]:
        cells = []
        for r in runs:
            first = getattr(r.batch1, attr) if r.batch1 else None
            last = getattr(r.largest, attr) if r.largest else None
            saving = ratio(first, last)
            cells.append("–" if saving is None else f"{saving:.1f}× less at {r.largest.batch_size}"  # type: ignore[union-attr]
                         if saving >= 1 else f"{1 / saving:.1f}× more at {r.largest.batch_size}")  # type: ignore[union-attr]
        rows.append((f"{title}: batch 1 ÷ largest", cells))
    return rows
