"""The charts' data, the comparison of runs, `carbontop compare`, `plot`, `runs` and run names.

Two real runs: the H100 sample (sample_runs/) and a tiny model swept on a CPU with synthetic
prompts (tests/data/runs/tiny-cpu-synthetic, recorded with `carbontop sweep --model tiny
--dataset synthetic --batch-sizes 1,2,4,8 --num-prompts 8`). Expected figures are read from their
points.csv with the csv module, or worked out by hand in the comments.
"""

from __future__ import annotations

import csv
import dataclasses
import re
import shutil
import sys
from pathlib import Path

import pytest

from carbontop.cli import main
from carbontop.config import runs_dir
from carbontop.core.records import PointResult, PointStatus
from carbontop.core.store import find_run, load_run
from carbontop.errors import CarbontopError
from carbontop.figures import compare as cmp
from carbontop.figures import series as fs

ROOT = Path(__file__).resolve().parents[1]
H100 = ROOT / "sample_runs" / "llama2-7b-h100-sharegpt"
TINY = ROOT / "tests" / "data" / "runs" / "tiny-cpu-synthetic"


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "points.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ---- series -------------------------------------------------------------------------------


def test_batch_series_holds_the_ok_points_in_batch_order() -> None:
    rows = csv_rows(H100)
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: int(r["batch_size"]))
    s = fs.batch_series(load_run(H100).points, fs.Metric.J_PER_TOKEN)
    assert s.batch_sizes == tuple(int(r["batch_size"]) for r in ok)
    assert s.y == tuple(float(r["j_per_token"]) for r in ok)
    assert 205 not in s.batch_sizes and 256 not in s.batch_sizes  # OOM points have no figures
    assert not s.has_intervals


def point(batch: int, **kw) -> PointResult:
    return PointResult(batch_size=batch, status=kw.pop("status", PointStatus.OK), **kw)


def test_carbon_metric_is_operational_for_all_where_one_point_lacks_embodied() -> None:
    both = [point(1, gco2e_per_token=2.0, total_gco2e_per_token=2.5),
            point(2, gco2e_per_token=1.0, total_gco2e_per_token=1.2)]
    assert fs.carbon_metric(both) is fs.Metric.TOTAL_GCO2E_PER_TOKEN
    one_missing = [*both, point(4, gco2e_per_token=0.5)]
    assert fs.carbon_metric(one_missing) is fs.Metric.OPERATIONAL_GCO2E_PER_TOKEN
    assert fs.batch_series(one_missing, fs.carbon_metric(one_missing)).y == (2.0, 1.0, 0.5)


def test_lowest_carbon_ignores_failed_points_and_breaks_ties_to_the_larger_batch() -> None:
    points = [point(1, gco2e_per_token=3.0), point(2, gco2e_per_token=1.0),
              point(4, gco2e_per_token=1.0), point(8, status=PointStatus.OOM)]
    assert fs.lowest_carbon_batch(points) == 4
    assert fs.lowest_carbon_batch([point(8, status=PointStatus.OOM)]) is None


def test_error_bars_come_from_the_points_confidence_interval() -> None:
    points = [point(1, j_per_token=2.0, j_per_token_ci95=0.25), point(2, j_per_token=1.0)]
    s = fs.batch_series(points, fs.Metric.J_PER_TOKEN)
    assert s.has_intervals and s.y_interval == ((1.75, 2.25), None)
    below, above = s.y_errors()
    assert below == pytest.approx((0.25, 0.0)) and above == pytest.approx((0.25, 0.0))
    # total gCO2e/token has no interval of its own: no bar rather than the operational one's
    carbon = [point(1, gco2e_per_token=1e-4, gco2e_per_token_ci95=1e-5, total_gco2e_per_token=1.1e-4)]
    assert not fs.batch_series(carbon, fs.Metric.TOTAL_GCO2E_PER_TOKEN).has_intervals
    assert fs.batch_series(carbon, fs.Metric.OPERATIONAL_GCO2E_PER_TOKEN).has_intervals


def test_repeated_batch_sizes_are_drawn_once_as_their_combination() -> None:
    # batch 2 measured by the search (repeat 0) and twice again: the re-measures' mean counts,
    # (1.0 + 1.2) / 2 = 1.1, with their interval; the search's 3.0 (a cold GPU) is left out
    points = [point(1, j_per_token=2.0), point(2, j_per_token=3.0),
              point(2, j_per_token=1.0, repeat=1), point(2, j_per_token=1.2, repeat=2)]
    s = fs.batch_series(points, fs.Metric.J_PER_TOKEN)
    assert s.batch_sizes == (1, 2) and s.y == pytest.approx((2.0, 1.1))
    assert s.y_interval[1] is not None and s.y_interval[0] is None


def test_tradeoff_marks_the_recommended_and_lowest_carbon_points() -> None:
    run = load_run(H100)
    chart = fs.tradeoff(run.points, target=0.2, recommended=204)
    assert chart.carbon is fs.Metric.TOTAL_GCO2E_PER_TOKEN  # the H100 has a published footprint
    assert chart.target == 0.2
    kinds = {m.kind: m.batch_size for m in chart.marks}
    # 204 has the least total gCO2e/token of the sample (1.88e-5) and meets 0.2 s/token
    assert kinds == {fs.MarkKind.RECOMMENDED: 204, fs.MarkKind.LOWEST_CARBON: 204}
    i = chart.series.batch_sizes.index(1)
    row = next(r for r in csv_rows(H100) if r["batch_size"] == "1")
    assert chart.series.x[i] == float(row["total_gco2e_per_token"])
    assert chart.series.y[i] == float(row["s_per_token"])


def test_power_trace_starts_at_the_first_sample_with_every_window_on_that_clock() -> None:
    run = load_run(H100)
    trace = fs.power_trace(run.samples, run.points)
    first_t = min(s.t_s for s in run.samples)
    assert trace.t0_s == first_t
    assert [g.label for g in trace.gpus] == ["GPU 0"]
    assert trace.gpus[0].x[0] == 0.0
    rows = {int(r["batch_size"]): r for r in csv_rows(H100) if r["window_start_s"]}
    w = next(w for w in trace.windows if w.batch_size == 1)
    assert w.start_s == pytest.approx(float(rows[1]["window_start_s"]) - first_t)
    assert w.end_s - w.start_s == pytest.approx(float(rows[1]["duration_s"]), abs=1e-6)
    assert len(trace.windows) == len(rows)


def test_thinning_keeps_the_peak_of_each_bucket() -> None:
    s = fs.Series("p", tuple(float(i) for i in range(100)),
                  tuple(500.0 if i == 37 else 100.0 for i in range(100)), ())
    thin = fs.thin(s, 10)
    assert len(thin) <= 11 and 500.0 in thin.y and thin.x[-1] == 99.0
    assert fs.thin(s, 200) is s


# ---- compare ------------------------------------------------------------------------------


def test_summary_and_table_against_the_first_run() -> None:
    h100, tiny = cmp.summarize(load_run(H100)), cmp.summarize(load_run(TINY))
    assert (h100.largest_ok_batch, h100.smallest_failed_batch) == (204, 205)
    assert h100.batching == "static" and h100.gpu == "NVIDIA H100 80GB HBM3"
    assert tiny.largest_ok_batch == 8 and tiny.smallest_failed_batch is None
    j1_h100 = float(next(r for r in csv_rows(H100) if r["batch_size"] == "1")["j_per_token"])
    j1_tiny = float(next(r for r in csv_rows(TINY) if r["batch_size"] == "1")["j_per_token"])
    rows = dict(cmp.table_rows([h100, tiny]))
    assert rows["J/token, batch 1"] == [f"{j1_h100:.3g}", f"{j1_tiny:.3g} ({j1_tiny / j1_h100:.2f}×)"]
    # 2.69 J/token at batch 1 against 0.161 at 204: 16.7 times less
    assert rows["J/token: batch 1 ÷ largest"][0] == "16.7× less at 204"
    assert rows["max batch"] == ["204 (205 did not fit)", "8 (nothing failed)"]
    assert rows["J/token, recommended"][0] == "0.161 @204"


def test_like_for_like_warnings_name_what_differs() -> None:
    h100, tiny = cmp.summarize(load_run(H100)), cmp.summarize(load_run(TINY))
    assert cmp.like_for_like_warnings([h100, h100]) == []
    warnings = cmp.like_for_like_warnings([h100, tiny])
    assert any("different workloads" in w and "synthetic" in w for w in warnings)
    assert any("Energy was measured differently" in w and "estimate" in w for w in warnings)
    other_grid = dataclasses.replace(tiny, carbon_key=("zone", "FR", 1.0, 5.0, None),
                                     workload_key=h100.workload_key, energy_sources=h100.energy_sources)
    assert [w for w in cmp.like_for_like_warnings([h100, other_grid])
            if "count carbon differently" in w]


# ---- run names, runs, compare and plot on the command line --------------------------------


@pytest.fixture
def saved_runs() -> Path:
    base = runs_dir()
    base.mkdir(parents=True, exist_ok=True)
    shutil.copytree(H100, base / "20261127-093645-llama2-7b")
    shutil.copytree(TINY, base / "20261203-114241-tiny")
    return base


def test_find_run_by_path_name_or_part_of_a_name(saved_runs: Path) -> None:
    assert find_run(str(H100), saved_runs) == H100
    assert find_run("20261203-114241-tiny", saved_runs) == saved_runs / "20261203-114241-tiny"
    assert find_run("llama2", saved_runs) == saved_runs / "20261127-093645-llama2-7b"
    with pytest.raises(CarbontopError, match="names 2 saved runs"):
        find_run("2026", saved_runs)
    with pytest.raises(CarbontopError, match="carbontop runs lists them"):
        find_run("nothing-like-it", saved_runs)


def test_show_takes_a_run_name(saved_runs: Path, capsys) -> None:
    assert main(["show", "tiny"]) == 0
    assert "recommended batch" in capsys.readouterr().out


def test_runs_has_a_date_column_and_fits_80_columns(saved_runs: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "date" in out.splitlines()[0]
    assert "2026-11-27 09:36" in out  # the H100 run's status.started, in its own time zone
    assert "H100 80GB HBM3" in out


def test_compare_prints_the_table_and_the_warnings(saved_runs: Path, capsys) -> None:
    assert main(["compare", "llama2", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "J/token, batch 1" in out and "(reference)" in out
    assert "not like for like" in out and "different workloads" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compare", "no-such-run", "tiny"], "no-such-run is neither a run directory"),
        (["plot", "tiny", "-o", "figure.txt"], "name it .svg, .png or .pdf"),
        (["plot", "tiny", "-o", "f.svg", "--charts", "energy,pie"], "Unknown chart 'pie'"),
    ],
)
def test_compare_and_plot_mistakes_are_one_sentence(saved_runs, args, message, capsys, tmp_path,
                                                     monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_plot_writes_an_svg_with_labelled_axes(saved_runs: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    dest = tmp_path / "fig.svg"
    assert main(["plot", "llama2", "tiny", "-o", str(dest)]) == 0
    assert capsys.readouterr().out.strip() == str(dest)
    text = dest.read_text()
    assert dest.stat().st_size > 50_000  # four charts of real data, not an empty canvas
    # matplotlib writes each label as an SVG comment before its glyphs
    for label in ("batch size", "J/token", "gCO2e/token", "s/token", "power (W)",
                  "time since the sweep started (s)", "latency target 0.2 s/token",
                  "recommended", "lowest carbon"):
        assert f"<!-- {label} -->" in text, label


def test_plot_writes_a_png_of_the_figure_size(saved_runs: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from carbontop.figures.matplotlib_files import DPI, FIGURE_SIZE_IN

    dest = tmp_path / "fig.png"
    assert main(["plot", "llama2", "-o", str(dest), "--charts", "energy,carbon"]) == 0
    height, width, _ = imread(dest).shape
    # two charts side by side: the full width, half the height
    assert (width, height) == (round(FIGURE_SIZE_IN[0] * DPI), round(FIGURE_SIZE_IN[1] / 2 * DPI))


def test_svg_labels_are_where_matplotlib_puts_them(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from carbontop.figures.matplotlib_files import write_figure

    dest = write_figure([fs.chart_run(load_run(TINY))], tmp_path / "one.svg", charts=["power"])
    text = dest.read_text()
    assert re.search(r"<!-- b8 -->", text)  # the window of batch 8 is labelled
    assert "<!-- CPU -->" not in text  # one device: no legend


def test_plot_without_matplotlib_is_one_sentence(saved_runs: Path, tmp_path: Path, capsys,
                                                 monkeypatch) -> None:
    # as where the plot extra is not installed: importing matplotlib fails
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["plot", "tiny", "-o", str(tmp_path / "f.svg")]) == 1
    err = capsys.readouterr().err
    assert "pip install 'carbontop[plot]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "f.svg").exists()
