"""The TUI's pure helpers, against hand-worked values: number formats, the sparkline's time
buckets and bar heights, the best-point rule, the form's text of a config."""

from __future__ import annotations

from carbontop.config import RunConfig
from carbontop.core.records import PointResult, PointStatus, Sample
from carbontop.tui import format as fmt
from carbontop.tui.widgets.config_form import to_text
from carbontop.tui.widgets.results import best_batch
from carbontop.tui.widgets.sparkline import BARS, bar_rows, bucket_max
from carbontop.tui.widgets.telemetry import DeviceSeries


def test_number_formats() -> None:
    assert fmt.sig(0.0123) == "0.0123"
    assert fmt.sig(965.2, 4) == "965.2"
    assert fmt.sig(1.875) == "1.88"
    assert fmt.sig(12.0) == "12.0"
    assert fmt.sig(None) == fmt.DASH and fmt.sig(0.0) == "0"
    assert fmt.sig(0.000123) == "1.23e-4"  # below 1e-3: scientific
    assert fmt.sig(0.099999) == "0.100" and fmt.sig(9.9996) == "10.0"  # rounding moves the point
    assert fmt.seconds(0.00711) == "0.0071" and fmt.seconds(0.0789) == "0.0789"
    assert fmt.sci(3.4532e-5) == "3.45e-5"
    assert fmt.carbon(0.301 / 3.6e6 * 413) == "3.45e-5"  # 0.301 J/tok at 413 g/kWh
    assert fmt.carbon(0.25) == "0.250"
    assert fmt.throughput(85.0) == "85.0" and fmt.throughput(12345.6) == "12346"
    assert fmt.throughput(0.5234) == "0.523"
    assert fmt.fixed(0.021, 1, 100.0) == "2.1"  # MFU as a percentage
    assert fmt.duration(42.8) == "43s" and fmt.duration(185) == "3m 05s"
    assert fmt.duration(3725) == "1h 02m" and fmt.duration(None) == fmt.DASH


def test_bucket_max_lays_readings_on_a_time_axis() -> None:
    # window [0, 10] in 5 cells of 2 s; readings at 4.0 and 4.5 share cell 2, the max stays
    cells = bucket_max([4.0, 4.5, 9.0], [100.0, 120.0, 80.0], t_end=10.0, span_s=10.0, n=5)
    assert cells == [None, None, 120.0, 120.0, 80.0]  # cell 3 holds the earlier reading
    # readings before the window are left out; None readings are gaps in the data
    assert bucket_max([-5.0, 1.0], [999.0, None], t_end=10.0, span_s=10.0, n=5) == [None] * 5
    assert bucket_max([], [], t_end=10.0, span_s=10.0, n=0) == []


def test_bar_heights_scale_from_zero_to_the_ceiling() -> None:
    rows = bar_rows([None, 0.0, 4.0, 8.0], v_max=8.0, height=1)
    assert rows == [[None, 0, 3, 7]]  # blank, lowest bar for a 0 W reading, half, full
    assert [BARS[i] for i in rows[0][1:]] == ["▁", "▄", "█"]
    # two rows: 12 of 16 -> 12 of 16 eighths: the bottom row full, the top row half
    assert bar_rows([12.0], v_max=16.0, height=2) == [[3], [7]]
    assert bar_rows([2.0], v_max=0.0, height=1) == [[0]]


def point(batch_size: int, status: str, gco2e_per_token: float | None,
          total_gco2e_per_token: float | None = None) -> PointResult:
    return PointResult(batch_size, PointStatus(status), gco2e_per_token=gco2e_per_token,
                       total_gco2e_per_token=total_gco2e_per_token)


def test_best_point_is_the_lowest_carbon_among_ok_points_as_the_recommendation_counts_it() -> None:
    rows = {
        1: point(1, "ok", 2e-4),
        8: point(8, "ok", 4e-5),
        16: point(16, "oom", None),
        12: point(12, "kv_bound", 1e-6),
    }
    assert best_batch(rows) == 8
    rows[4] = point(4, "ok", 4e-5)
    assert best_batch(rows) == 8  # a tie goes to the larger batch, as carbon.recommend breaks it
    # with embodied carbon on every ok point, the total decides (here against the operational)
    rows[1] = point(1, "ok", 2e-4, 2.1e-4)
    rows[4] = point(4, "ok", 4e-5, 5e-5)
    rows[8] = point(8, "ok", 4e-5, 6e-5)
    assert best_batch(rows) == 4
    assert best_batch({}) is None


def test_device_series_from_samples() -> None:
    samples = [Sample(1.0, 0, 100.0, None, mem_used_bytes=2_000_000_000, mem_total_bytes=8_000_000_000),
               Sample(2.0, 0, None, None)]
    series = DeviceSeries.from_samples(0, "GPU", samples)
    assert series.times == [1.0, 2.0] and series.power_w == [100.0, None]
    assert series.mem_gb == [2.0, None] and series.mem_total_gb == 8.0


def test_form_text_of_config_values() -> None:
    cfg = RunConfig(batch_sizes=[1, 2, 4], gpus=[0, 1], pue=1.1, max_input_len=None)
    assert to_text(cfg.batch_sizes) == "1,2,4" and to_text(cfg.gpus) == "0,1"
    assert to_text(cfg.pue) == "1.1" and to_text(cfg.intensity) == "413"
    assert to_text(cfg.max_input_len) == ""
