from __future__ import annotations

import csv

import pytest

from carbontop.core.records import PointResult, PointStatus, RequestRecord, Sample
from carbontop.core.store import (
    POINT_COLUMNS,
    RunWriter,
    export_points_csv,
    list_runs,
    load_run,
    new_run_dir,
)
from carbontop.errors import CarbontopError

REQUIRED = ["batch_size", "status", "n_requests", "input_tokens", "output_tokens", "duration_s",
            "tokens_per_s", "s_per_token", "ttft_p50_s", "ttft_p90_s", "tpot_p50_s", "tpot_p90_s",
            "energy_j", "energy_source", "j_per_token", "gco2e_per_token", "mfu", "mbu",
            "peak_mem_gb", "avg_power_w", "embodied_gco2e_per_token", "total_gco2e_per_token",
            "intensity_gco2e_per_kwh"]


def test_point_columns_hold_the_contract() -> None:
    assert set(REQUIRED) <= set(POINT_COLUMNS)


def test_rows_are_on_disk_as_soon_as_written(tmp_path) -> None:
    run_dir = tmp_path / "run"
    writer = RunWriter(run_dir, {"run": {"model": "tiny"}, "environment": {"devices": ["CPU: x"]}})
    point = PointResult(batch_size=4, status=PointStatus.OK, n_requests=2, output_tokens=10,
                        tokens_per_s=12.5, energy_j=3.0, energy_source="rapl", j_per_token=0.3)
    recs = [RequestRecord(4, 0, 0, 5, 5, 1.0, 0.1, 0.5), RequestRecord(4, 1, 0, 6, 5, 1.0, 0.1, 0.6)]
    writer.write_point(point, recs)
    writer.write_samples([Sample(1.0, -1, 10.0, 100.0)])
    # before finish: another reader already sees everything (the sweep may still crash)
    with open(run_dir / "points.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["batch_size"] == "4" and rows[0]["status"] == "ok"
    run = load_run(run_dir)
    assert run.state == "running"
    assert run.requests_count == 2 and run.samples[0].power_w == 10.0
    writer.write_point(PointResult(batch_size=8, status=PointStatus.OOM, message="out of memory"))
    writer.finish("done", recommended_batch=4)
    run = load_run(run_dir)
    assert run.state == "done" and run.meta.status.recommended_batch == 4
    assert [p.status for p in run.points] == ["ok", "oom"]
    assert run.points[1].tokens_per_s is None
    results = run.points
    assert results[0].status is PointStatus.OK and results[0].tokens_per_s == 12.5


def test_a_row_cut_by_a_crash_is_skipped(tmp_path) -> None:
    writer = RunWriter(tmp_path / "r", {"run": {}})
    writer.write_point(PointResult(batch_size=1, status=PointStatus.OK, tokens_per_s=1.0))
    with open(tmp_path / "r" / "points.csv", "a") as fh:
        fh.write("2,ok,")  # half a row
    assert len(load_run(tmp_path / "r").points) == 1


def test_refuses_to_overwrite_and_bad_paths(tmp_path) -> None:
    RunWriter(tmp_path / "r", {"run": {}})
    with pytest.raises(CarbontopError, match="already holds a run"):
        RunWriter(tmp_path / "r", {"run": {}})
    with pytest.raises(CarbontopError, match="does not exist"):
        load_run(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CarbontopError, match="not a carbontop run directory"):
        load_run(tmp_path / "plain")


def test_export_and_listing(tmp_path) -> None:
    base = tmp_path / "runs"
    d = new_run_dir(base, "tiny-hf")
    writer = RunWriter(d, {"run": {"model": "tiny"}, "environment": {"devices": ["NVIDIA H100 80GB HBM3"]}})
    writer.write_point(PointResult(batch_size=2, status=PointStatus.OK, tokens_per_s=5.0))
    writer.finish("done")
    out = export_points_csv(d, tmp_path / "x.csv")
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["model"] == "tiny" and rows[0]["gpu"] == "NVIDIA H100 80GB HBM3"
    assert float(rows[0]["tokens_per_s"]) == 5.0
    assert list_runs(base) == [d]
    folder = tmp_path / "exports"
    folder.mkdir()
    assert export_points_csv(d, folder).parent == folder


def test_saved_runs_are_listed_newest_first(tmp_path) -> None:
    import os

    for n, name in enumerate(["b-old", "a-new"]):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.toml").write_text("")
        (tmp_path / name / "points.csv").write_text("")
        os.utime(tmp_path / name / "run.toml", (1000 + n, 1000 + n))
    (tmp_path / "only-a-config").mkdir()  # a run.toml alone is not a run: it cannot be opened
    (tmp_path / "only-a-config" / "run.toml").write_text("")
    assert list_runs(tmp_path) == [tmp_path / "a-new", tmp_path / "b-old"]
    assert list_runs(tmp_path, limit=1) == [tmp_path / "a-new"]
    assert list_runs(tmp_path / "missing") == [] and list_runs(None) == []
