"""The printed summary: recommendation, carbon source, cleanest and dirtiest hour of a trace."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from rich.console import Console

from carbontop.config import RunConfig
from carbontop.core.store import load_run
from carbontop.report import extremes_line, print_summary
from carbontop.sweep.runner import SweepRunner

HEADER = ("Datetime (UTC),Country,Zone name,Zone id,Carbon intensity gCO₂eq/kWh (direct),"
          "Carbon intensity gCO₂eq/kWh (Life cycle),Carbon-free energy percentage (CFE%),"
          "Renewable energy percentage (RE%),Data source,Data estimated,Data estimation method")


def write_trace(path, start: dt.datetime, values: list[float]) -> None:
    rows = [HEADER]
    for i, g in enumerate(values):
        t = (start + dt.timedelta(hours=i)).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(f"{t},Germany,Germany,DE,{g * 0.8:.1f},{g:.1f},40,35,source,false,")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_sweep_with_a_day_long_trace_reports_cleanest_and_dirtiest_hour(tmp_path) -> None:
    hour = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    start = hour - dt.timedelta(hours=12)
    values = [300.0 + 10 * i for i in range(26)]  # 26 hours; the run starts in hour 12
    values[3], values[20] = 50.0, 900.0
    # the run's hour and the two after it alike: a run that crosses the hour (or starts late in
    # it) still meets 420 g/kWh only
    values[13] = values[14] = values[12]
    write_trace(tmp_path / "trace.csv", start, values)
    cfg = RunConfig(model="tiny", device="cpu", dataset="synthetic", num_prompts=2, max_input_len=8,
                    max_output_len=8, batch_sizes="1,2", trace=str(tmp_path / "trace.csv"),
                    pue=1.1, slo_s_per_token=10.0, out=str(tmp_path / "run"))  # any speed passes
    runner = SweepRunner(cfg)
    runner.prepare()
    runner.run()
    run = load_run(tmp_path / "run")
    carbon = run.meta.carbon
    assert carbon.source == "trace"
    assert (carbon.cleanest_gco2e_per_kwh, carbon.dirtiest_gco2e_per_kwh) == (50.0, 900.0)
    plateau_s = ((start + dt.timedelta(hours=12)).timestamp(), (start + dt.timedelta(hours=15)).timestamp())
    for p in run.points:
        # each point's own window lies in the plateau: 420 g/kWh (life cycle), times PUE
        assert plateau_s[0] <= p.window_start_s < p.window_end_s <= plateau_s[1]
        assert p.intensity_gco2e_per_kwh == pytest.approx(420.0)
        assert p.gco2e_per_token == pytest.approx(p.j_per_token / 3.6e6 * 420.0 * 1.1)
    line = extremes_line(run)
    best = run.points[0]
    low = best.j_per_token / 3.6e6 * 50.0 * 1.1
    assert f"b{best.batch_size}: {low:.3g}" in line
    out = io.StringIO()
    print_summary(run, Console(file=out, width=200))
    text = out.getvalue()
    assert "cleanest (50 g/kWh)" in text and "dirtiest (900 g/kWh)" in text
    assert "recommended batch" in text


def test_table_shows_intervals_combined_repeats_and_the_reason(tmp_path) -> None:
    from carbontop.core.records import PointResult, PointStatus
    from carbontop.core.store import RunWriter

    def pt(b, repeat, jpt, *, incomplete=False):
        return PointResult(batch_size=b, status=PointStatus.OK, j_per_token=jpt,
                           j_per_token_ci95=jpt * 0.02, tokens_per_s=100.0 * b,
                           tokens_per_s_ci95=1.0 * b, s_per_token=0.01 * b, duration_s=20.0,
                           slot_occupancy=0.97, repeat=repeat, energy_incomplete=incomplete,
                           batching="inflight")

    writer = RunWriter(tmp_path / "run", {"run": {"model": "tiny", "batching": "inflight",
                                                  "resolved_min_window_s": 20.0, "repeats": 2},
                                          "environment": {"devices": ["H200"],
                                                          "idle_power_w": 70.0,
                                                          "idle_power_loaded_w": 120.0}})
    for p in (pt(1, 0, 0.50), pt(2, 0, 0.30, incomplete=True), pt(2, 1, 0.31), pt(2, 2, 0.29),
              pt(1, 1, 0.52), pt(1, 2, 0.48)):
        writer.write_point(p)
    reason = ("batch 1: its total gCO2e/token lies within the 95% intervals of batch 2's, the "
              "lowest, so the lower-latency batch is recommended (0.01 vs 0.02 s/token)")
    writer.finish("done", recommended_batch=1, recommendation=reason)
    out = io.StringIO()
    print_summary(load_run(tmp_path / "run"), Console(file=out, width=250))
    text = out.getvalue()
    # batch 2's re-measures 0.31 and 0.29 combine to 0.3 +- t(0.975, 1) x s / sqrt(2):
    # s = 0.01414, half-width 12.706 x 0.01 = 0.127, 42.4% of 0.3
    assert "0.300 ±42.4%" in text  # J/tok: one format for the column, 3 figures of its smallest
    assert "J/tok ±95%" in text and "occ %" in text and "97" in text
    assert f"recommended {reason} *" in text
    assert "idle power: 120.0 W with the model loaded" in text and "70.0 W before loading" in text
    assert "batch 2: no energy-counter reading came after its window's end" in text
    assert "method: inflight batching; each point's steady-state window at least 20 s" in text


def test_rows_go_by_batch_size_and_each_caveat_is_said_once(tmp_path) -> None:
    from carbontop.core.records import PointResult, PointStatus
    from carbontop.core.store import RunWriter

    def pt(b, status=PointStatus.OK):
        return PointResult(batch_size=b, status=status, j_per_token=1.0 / b, tokens_per_s=10.0 * b,
                           s_per_token=0.01 * b, duration_s=3.0, energy_source="estimate")

    writer = RunWriter(tmp_path / "run", {
        "run": {"model": "tiny"},
        "environment": {"devices": ["CPU: test"], "energy_estimated": True},
        "workload": {"lengths_exact": False,
                     "tokenizer": "estimate: chars/4; no model folder given",
                     "notes": ["token counts are estimated (no model folder given)"]}})
    # the automatic search's order: double until 8 fails, then bisect
    for p in (pt(1), pt(2), pt(4), pt(8, PointStatus.OOM), pt(6, PointStatus.OOM), pt(5)):
        writer.write_point(p)
    writer.finish("done", recommended_batch=5)
    out = io.StringIO()
    print_summary(load_run(tmp_path / "run"), Console(file=out, width=250))
    text = out.getvalue()
    first_cells = [line.split("│")[1].strip() for line in text.splitlines()
                   if line.startswith("│")]
    assert first_cells == ["1", "2", "4", "5 *", "6", "8"]
    assert text.count("TDP and load") == 1
    assert "energy: estimate (from the CPU's TDP and load: no hardware counter was readable)" in text
    assert text.count("token counts are estimated") == 1


def test_a_run_that_never_recorded_its_end_gets_a_recommendation_from_its_points(tmp_path) -> None:
    """A sweep killed (or copied off its machine) before its closing record has points but no
    recommendation: the summary makes one from them by the sweep's rule and says so, rather than
    claiming that no batch met the latency target."""
    from carbontop.core.records import PointResult, PointStatus
    from carbontop.core.store import RunWriter

    def pt(b, jpt, s_per_token):
        return PointResult(batch_size=b, status=PointStatus.OK, j_per_token=jpt,
                           j_per_token_ci95=jpt * 0.01, gco2e_per_token=jpt / 10,
                           gco2e_per_token_ci95=jpt / 1000, tokens_per_s=100.0 * b,
                           s_per_token=s_per_token, duration_s=20.0, batching="inflight")

    writer = RunWriter(tmp_path / "run", {"run": {"model": "tiny", "slo_s_per_token": 0.05}})
    for p in (pt(1, 2.0, 0.005), pt(64, 0.06, 0.01), pt(128, 0.05, 0.06)):  # 128 misses the SLO
        writer.write_point(p)
    # no writer.finish(): the record still says "running", its owner gone
    out = io.StringIO()
    print_summary(load_run(tmp_path / "run"), Console(file=out, width=250))
    text = out.getvalue()
    assert "none recommended" not in text
    assert "recommended batch 64: lowest" in text and "the sweep recorded none" in text
    assert "│  64 * │" in text  # the table marks it too


def test_a_run_without_its_closing_record_takes_its_boundary_from_its_points(tmp_path) -> None:
    from carbontop.core.records import PointResult, PointStatus
    from carbontop.core.store import RunWriter
    from carbontop.core.verdict import boundary
    from carbontop.figures.compare import summarize

    writer = RunWriter(tmp_path / "run", {"run": {"model": "tiny"}})
    for b, status in ((1, PointStatus.OK), (256, PointStatus.OOM), (128, PointStatus.OK),
                      (192, PointStatus.OOM), (160, PointStatus.OK), (176, PointStatus.OOM)):
        writer.write_point(PointResult(batch_size=b, status=status, j_per_token=1.0 / b,
                                       tokens_per_s=10.0 * b, s_per_token=0.01, duration_s=20.0)
                           if status is PointStatus.OK else PointResult(batch_size=b, status=status))
    run = load_run(tmp_path / "run")
    assert boundary(run) == (160, 176)
    assert summarize(run).smallest_failed_batch == 176  # compare no longer says "nothing failed"
    out = io.StringIO()
    print_summary(run, Console(file=out, width=250))
    assert "largest batch that ran: 160; 176 did not fit" in out.getvalue()
