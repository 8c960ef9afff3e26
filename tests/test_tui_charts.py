"""The chart view and the compare screen, on two real saved runs (see test_figures.py).

Pilot tests read what is on screen; snapshots (pytest-textual-snapshot) fix the frames at 80x24
and 120x40. Update after an intended change with `pytest --snapshot-update`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_tui_helpers import (
    FixedSampler,
    ScriptedRunner,
    point,
    screen_text,
    wait_until,
)
from textual.app import App, ComposeResult
from textual.widgets import DataTable, SelectionList

from carbontop.config import RunConfig
from carbontop.core.store import load_run
from carbontop.figures.series import chart_run
from carbontop.tui.app import CarbontopApp
from carbontop.tui.compare_screen import CompareScreen
from carbontop.tui.widgets.charts import ChartView, Log2BatchFormatter
from carbontop.tui.widgets.telemetry import TelemetryPane

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
H100 = ROOT / "sample_runs" / "llama2-7b-h100-sharegpt"
TINY = ROOT / "tests" / "data" / "runs" / "tiny-cpu-synthetic"
APP_CONFIG = RunConfig(model="tiny", device="cpu", dataset="synthetic", num_prompts=4,
                       max_input_len=16, max_output_len=16, batch_sizes=[1, 2, 4])


class ChartsHost(App[None]):
    """The chart view alone, fed saved runs as the app feeds it."""

    def __init__(self, runs: list[Path]) -> None:
        super().__init__()
        self.paths = runs

    def compose(self) -> ComposeResult:
        yield ChartView(id="charts")

    def on_mount(self) -> None:
        self.theme = "textual-dark"
        self.query_one(ChartView).show_runs([chart_run(load_run(p)) for p in self.paths])


class CompareHost(App[None]):
    def __init__(self, recent: list[Path], preselect: list[Path]) -> None:
        super().__init__()
        self.recent, self.preselect = recent, preselect

    def on_mount(self) -> None:
        self.theme = "textual-dark"
        self.push_screen(CompareScreen(load_run, self.recent, self.preselect))


def test_log2_axis_ticks_at_powers_of_two() -> None:
    f = Log2BatchFormatter()
    ticks = f.get_ticks(-0.3, 7.97)  # batch 1 .. 204, padded
    assert f.get_labels_for_ticks(ticks) == ["1", "2", "4", "8", "16", "32", "64", "128"]
    # 1 .. 4096 is 13 powers: every 2nd is 7, still over 5, so every 4th
    wide = f.get_ticks(0, 12, max_ticks=5)
    assert f.get_labels_for_ticks(wide) == ["1", "16", "256", "4k"]


async def test_chart_view_tabs_at_80x24_and_a_grid_at_200x50() -> None:
    app = ChartsHost([H100])
    async with app.run_test(size=(80, 24)) as pilot:
        view = app.query_one(ChartView)
        await pilot.pause()
        assert not view.grid
        text = screen_text(app)
        assert "J/token" in text and "batch size (log2)" in text
        assert "128" in text  # the log2 axis reaches 128 (the largest batch is 204)
        view.show_chart("tradeoff")
        await pilot.pause()
        text = screen_text(app)
        assert "✓" in text and "★" in text  # recommended and lowest carbon, both batch 204
        assert "recommended (batch 204)" in text
        view.show_chart("power")
        await pilot.pause()
        text = screen_text(app)
        assert "time since the sweep started (s)" in text and "b1" in text
    app = ChartsHost([H100])
    async with app.run_test(size=(200, 50)) as pilot:
        await pilot.pause()
        assert app.query_one(ChartView).grid
        text = screen_text(app)
        for label in ("J/token", "gCO2e/token", "s/token", "power W"):
            assert label in text


async def test_chart_view_overlays_two_runs_with_a_legend() -> None:
    app = ChartsHost([H100, TINY])
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "llama2-7b-h100-sharegpt vs tiny-cpu-synthetic" in text
        assert "tiny-cpu-synthetic" in text.split("vs", 1)[1]  # in the legend too


async def test_compare_screen_table_and_warnings() -> None:
    app = CompareHost([H100, TINY], [H100, TINY])
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.screen.query_one("#compare-table", DataTable)
        await wait_until(pilot, lambda: table.row_count > 0, what="the compare table")
        labels = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        assert labels[:2] == ["model", "GPU"]
        row = table.get_row_at(labels.index("J/token, batch 1"))
        assert row[1] == "2.69" and row[2].endswith("(0.55×)")  # 1.47 / 2.69
        text = screen_text(app)
        assert "not like for like" in text and "different workloads" in text
        # unpick the reference: the tiny run alone, a hint to pick another
        app.screen.query_one(SelectionList).deselect(str(H100))
        await wait_until(pilot, lambda: table.columns and len(table.columns) == 2, what="one run")
        assert "Pick another run" in screen_text(app)
        await pilot.press("g")
        await pilot.pause()
        assert "batch size (log2)" in screen_text(app)


async def test_compare_screen_adds_a_run_by_path_and_says_a_bad_one() -> None:
    app = CompareHost([], [])
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("a")
        for path, expect in ((Path("no-such-run"), "does not exist"), (TINY, None)):
            box = app.screen.query_one("#compare-path")
            box.value = str(path)
            await pilot.press("enter")
            await pilot.pause()
            if expect:
                assert expect in screen_text(app)
        table = app.screen.query_one("#compare-table", DataTable)
        await wait_until(pilot, lambda: table.row_count > 0, what="the added run")
        assert str(TINY) in app.screen.query_one(SelectionList).selected


def test_chart_view_80x24(snap_compare) -> None:
    assert snap_compare(ChartsHost([H100]), terminal_size=(80, 24))


def test_chart_view_120x40(snap_compare) -> None:
    assert snap_compare(ChartsHost([H100]), terminal_size=(120, 40))


def test_compare_screen_80x24(snap_compare) -> None:
    async def loaded(pilot) -> None:
        table = pilot.app.screen.query_one("#compare-table", DataTable)
        await wait_until(pilot, lambda: table.row_count > 0, what="the compare table")
        await pilot.pause()

    assert snap_compare(CompareHost([H100, TINY], [H100, TINY]), terminal_size=(80, 24),
                        run_before=loaded)


def test_compare_screen_120x40_charts(snap_compare) -> None:
    async def charts(pilot) -> None:
        table = pilot.app.screen.query_one("#compare-table", DataTable)
        await wait_until(pilot, lambda: table.row_count > 0, what="the compare table")
        await pilot.press("g")
        await pilot.pause()

    assert snap_compare(CompareHost([H100, TINY], [H100, TINY]), terminal_size=(120, 40),
                        run_before=charts)


class TelemetryHost(App[None]):
    def compose(self) -> ComposeResult:
        yield TelemetryPane(id="telemetry")

    def on_mount(self) -> None:
        run = load_run(H100)
        self.query_one(TelemetryPane).show_trace(run.samples, {0: "NVIDIA H100 80GB HBM3"})


async def test_telemetry_shows_memory_of_the_total_temperature_utilisation_and_clock() -> None:
    app = TelemetryHost()
    async with app.run_test(size=(120, 20)) as pilot:
        await pilot.pause()
        text = screen_text(app)
        last = load_run(H100).samples[-1]
        used, total = last.mem_used_bytes / 1e9, last.mem_total_bytes / 1e9
        # 0.50 of 85.5 GB at the end of the sweep: the model unloaded
        assert f"{used:5.1f}/{total:.0f} GB {used / total * 100:3.0f}%" in text
        assert f"util {last.util_pct:3.0f}%" in text
        assert f"{last.temp_c:3.0f} °C" in text and f"SM {last.sm_clock_mhz:4.0f} MHz" in text


# ---- in the app ---------------------------------------------------------------------------


class TracingRunner(ScriptedRunner):
    """ScriptedRunner that also saves its sampler's readings to power.csv, as the real one does."""

    def prepare(self) -> None:
        super().prepare()
        self._writer.write_samples(self.sampler.samples())


def charts_app(tmp_path: Path, **runner_kw) -> CarbontopApp:
    def factory(cfg, on_event):
        return TracingRunner(cfg, on_event, run_dir=tmp_path / "run",
                             points=[point(1), point(2), point(4)], **runner_kw)

    return CarbontopApp(APP_CONFIG, runner_factory=factory,
                        idle_sampler_factory=lambda cfg: FixedSampler(),
                        runs_dir=lambda: tmp_path / "runs", remember=False)


async def test_app_charts_fill_live_and_keep_the_sweeps_trace(tmp_path: Path) -> None:
    app = charts_app(tmp_path, pause_after=2, recommended=4)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.form.built and not app._idle_opening, what="startup")
        assert not app.charts.display or app.charts.region.height == 0  # hidden until g
        await pilot.press("s")
        await wait_until(pilot, lambda: app.sweep.points.get(4) == "running", what="batch 4")
        await pilot.press("g")
        await pilot.pause()
        assert app.charts.region.height > 20 and app.results.region.height == 0
        assert [p.batch_size for p in app.charts.runs[0].points] == [1, 2]
        assert "batch size (log2)" in screen_text(app)
        ScriptedRunner.instances[-1].release()
        await wait_until(pilot, lambda: not app.sweep_running, what="the sweep to end")
        # the whole trace, read back from the run's power.csv: FixedSampler's 120 readings
        await wait_until(pilot, lambda: len(app.charts.runs[0].samples) == 120, what="the trace")
        assert app.charts.runs[0].recommended == 4
        app.charts.show_chart("power")
        await pilot.pause()
        assert "time since the sweep started (s)" in screen_text(app)
        await pilot.press("g")
        await pilot.pause()
        assert app.results.region.height > 0 and app.charts.region.height == 0


async def test_app_charts_sit_under_the_results_at_200x50() -> None:
    app = CarbontopApp(APP_CONFIG, open_run=H100, idle_sampler_factory=lambda c: FixedSampler(),
                       remember=False)
    async with app.run_test(size=(200, 50)) as pilot:
        await wait_until(pilot, lambda: app.showing_saved and app.charts.runs, what="the run")
        await pilot.pause()
        assert app.results.region.height > 5 and app.charts.region.height > 10
        assert "J/token" in screen_text(app)


async def test_app_compare_key_opens_the_compare_screen_with_the_shown_run() -> None:
    app = CarbontopApp(APP_CONFIG, open_run=H100, idle_sampler_factory=lambda c: FixedSampler(),
                       runs_dir=lambda: TINY.parent, remember=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.showing_saved, what="the run")
        await pilot.press("v")
        await pilot.pause()
        assert isinstance(app.screen, CompareScreen)
        assert app.screen.selected_paths() == [H100]
        app.screen.query_one(SelectionList).select(str(TINY))
        table = app.screen.query_one("#compare-table", DataTable)
        await wait_until(pilot, lambda: len(table.columns) == 3, what="two runs compared")
        await pilot.press("s")  # the main screen's start key does nothing from here
        await pilot.pause()
        assert not app.sweep_running and isinstance(app.screen, CompareScreen)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, CompareScreen)


class PointsHost(App[None]):
    def __init__(self, run) -> None:
        super().__init__()
        self.run = run

    def compose(self) -> ComposeResult:
        yield ChartView()

    def on_mount(self) -> None:
        self.query_one(ChartView).show_runs([self.run])


async def test_error_bars_show_where_points_carry_an_interval() -> None:
    from carbontop.figures.series import ChartRun

    def run(ci: float | None) -> ChartRun:
        return ChartRun("ci", tuple(point(b, j_per_token=2.0 / b, j_per_token_ci95=ci)
                                    for b in (1, 2, 4, 8)))

    texts = []
    for ci in (0.5, None):
        app = PointsHost(run(ci))
        async with app.run_test(size=(80, 30)) as pilot:
            await pilot.pause()
            texts.append(screen_text(app))
    # a bar of ±0.5 J/token spans several rows of a 2 J/token axis; without intervals, none
    assert texts[0].count("│") >= 4 and texts[1].count("│") == 0
