"""The Textual app that `carbontop` opens: configure a sweep, watch power live, read the results.

The sweep runs in a thread worker that drives carbontop.sweep's SweepRunner (which keeps the engine
in a child process and the telemetry sampler in its own thread); each sweep event is posted to the
app as a message, and the telemetry pane pulls the sampler four times a second. Nothing in here
blocks the UI thread on the engine, the GPU or pandas, and nothing the sweep raises ends the app.

Importing this module stays light (Textual and carbontop's config only): the runner, the store and
the power sources are imported when first used.
"""

from __future__ import annotations

import logging
import pathlib
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer

from carbontop import config as cfgmod
from carbontop.core.tomlcompat import tomllib
from carbontop.core.verdict import recommendation
from carbontop.errors import CarbontopError
from carbontop.figures.series import ChartRun, chart_run
from carbontop.tui.messages import SweepEnded, SweepEventMessage, SweepFailed, SweepPrepared
from carbontop.tui.screens import (
    ConfirmScreen,
    ErrorScreen,
    ExportScreen,
    HelpScreen,
    OpenScreen,
)
from carbontop.tui.themes import DEFAULT_THEME, load_themes, theme_dirs
from carbontop.tui.widgets.chart_slot import ChartSlot
from carbontop.tui.widgets.config_form import ConfigForm, settings_summary
from carbontop.tui.widgets.header import (
    Setup,
    SetupLine,
    carbon_of_settings,
    saved_setup,
    short_path,
)
from carbontop.tui.widgets.results import ResultsPane
from carbontop.tui.widgets.sweep import SweepPane
from carbontop.tui.widgets.telemetry import TelemetryPane
from carbontop.tui.wording import for_app

if TYPE_CHECKING:
    from carbontop.core.store import SavedRun

log = logging.getLogger(__name__)

LAST_RUN_FILE = "last_run.toml"  # in the config dir: the form starts from the last sweep's setup
UI_STATE_FILE = "tui.toml"  # in the config dir: the theme last chosen
TELEMETRY_POLL_S = 0.25
# The idle sampler only feeds the graphs (4 frames a second), so it need not read at 10 Hz.
IDLE_SAMPLE_INTERVAL_S = 0.25
IDLE_HISTORY_S = 120.0
NARROW_BELOW_COLUMNS = 120  # under this width the form and the panes take turns
COMPACT_FOOTER_BELOW = 100  # columns: the footer's keys pack tighter, so q Quit still shows at 60
SHORT_BELOW_LINES = 30  # under this height the panes drop their boxes for a title rule
TINY_BELOW_LINES = 20  # and under this one the telemetry shows power alone
# From this size the charts sit under the results; below it, g shows them in the results' place.
ROOMY_COLUMNS, ROOMY_LINES = 160, 45
CHART_TRACE_EVERY = 4  # telemetry polls between redraws of the live power chart (once a second)

RunnerFactory = Callable[..., Any]  # (config, on_event, resume_from=saved run) -> a runner
SamplerFactory = Callable[[cfgmod.RunConfig], Any]
RunLoader = Callable[[pathlib.Path], Any]
Exporter = Callable[[pathlib.Path, pathlib.Path], pathlib.Path]


# ---- defaults for the injectable parts (imported on first use, to keep startup fast) ---------


def default_runner_factory(config: cfgmod.RunConfig, on_event: Callable[[Any], None],
                           resume_from: Any = None) -> Any:
    from carbontop.sweep.runner import SweepRunner

    return SweepRunner(config, on_event, resume_from=resume_from)


def default_idle_sampler(config: cfgmod.RunConfig) -> Any:
    """A sampler of the configured device, so power shows before any sweep starts."""
    from carbontop.telemetry.sampler import TelemetrySampler
    from carbontop.telemetry.sources import open_power_source

    source = open_power_source(config.device, config.gpus, config.power_source)
    sampler = TelemetrySampler(source, interval_s=IDLE_SAMPLE_INTERVAL_S, history_s=IDLE_HISTORY_S)
    sampler.start()
    return sampler


def default_run_loader(path: pathlib.Path) -> SavedRun:
    from carbontop.core.store import load_run

    return load_run(path)


RECENT_RUNS = 30  # saved runs the open and compare dialogs list, newest first


def default_exporter(run_dir: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    from carbontop.core.store import export_points_csv

    return export_points_csv(run_dir, dest)


def stop_sampler(sampler: Any) -> None:
    """Stop a sampler thread and close its source; never raises (it runs on the way out)."""
    try:
        sampler.stop()
    except Exception:  # noqa: BLE001 - on the way out a failing sampler must not stop the rest
        log.warning("The telemetry sampler did not stop cleanly", exc_info=True)
    try:
        sampler.source.close()
    except Exception:  # noqa: BLE001 - likewise a source that cannot close (NVML already gone)
        log.warning("The power source did not close cleanly", exc_info=True)


# ---- remembered state ---------------------------------------------------------------------


def last_run_path() -> pathlib.Path:
    return cfgmod.config_dir() / LAST_RUN_FILE


def initial_config() -> tuple[cfgmod.RunConfig, list[str]]:
    """The user's config file overlaid with the last sweep's settings; and what went wrong."""
    problems: list[str] = []
    try:
        base = cfgmod.load_user_defaults()
    except CarbontopError as exc:
        problems.append(f"{exc} Using the built-in defaults.")
        base = cfgmod.RunConfig()
    path = last_run_path()
    if path.exists():
        try:
            base = cfgmod.load_toml(path, base)
        except CarbontopError as exc:
            problems.append(f"The last run's settings were not used: {exc}")
    return base, problems


def saved_run_settings(recorded: dict[str, Any]) -> cfgmod.RunConfig | None:
    """A saved run's [run] table as settings for a new sweep: what it was run with, in a new
    folder (its own already holds it, and may be a path on another machine). None when the
    settings no longer validate (an older carbontop's run)."""
    fields = {k: v for k, v in recorded.items() if k in cfgmod.FIELD_NAMES and k != "out"}
    try:
        return cfgmod.validate(cfgmod.from_mapping(fields, cfgmod.RunConfig()))
    except CarbontopError:
        return None


def save_last_run(config: cfgmod.RunConfig) -> str | None:
    """Write the config for the next start; the problem as a sentence, or None."""
    import tomli_w

    data = config.to_dict()  # secrets are left out
    data.pop("out", None)  # a fixed run directory would make the next sweep collide with this one
    try:
        path = last_run_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(tomli_w.dumps(data), encoding="utf-8")
    except (OSError, TypeError, ValueError) as exc:
        return f"The settings could not be saved for next time: {exc}."
    return None


def read_ui_state() -> dict[str, Any]:
    try:
        with open(cfgmod.config_dir() / UI_STATE_FILE, "rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def write_ui_state(state: dict[str, Any]) -> None:
    import tomli_w

    try:
        path = cfgmod.config_dir() / UI_STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(tomli_w.dumps(state), encoding="utf-8")
    except OSError:
        pass  # a read-only config dir only costs the remembered theme


class IdleSamplerReady(Message):
    def __init__(self, sampler: Any, error: str, key: tuple[Any, ...], driver: str = "") -> None:
        super().__init__()
        self.sampler = sampler
        self.error = error
        self.key = key
        self.driver = driver


def driver_version(source: Any) -> str:
    """The NVIDIA driver's version where the source reads NVML; '' elsewhere or when unknown."""
    if getattr(source, "kind", "") != "nvml":
        return ""
    from carbontop.telemetry.sources import nvml_environment

    return str(nvml_environment().get("driver_version") or "")


# ---- the app ------------------------------------------------------------------------------


class CarbontopApp(App[int]):
    """carbontop's one screen: run configuration, live telemetry, the sweep, the results."""

    CSS_PATH = pathlib.Path(__file__).with_name("app.tcss")  # absolute: subclasses live elsewhere
    TITLE = "carbontop"
    ENABLE_COMMAND_PALETTE = False  # every action has a key in the footer
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (NARROW_BELOW_COLUMNS, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-tiny"), (TINY_BELOW_LINES, "-short"), (SHORT_BELOW_LINES, "-tall")]
    BINDINGS = [
        # The footer shows these in this order; at 60 columns the last must still be q Quit, so
        # start and cancel take turns and the theme key lives in help only.
        Binding("s", "start", "Start"),
        Binding("c", "cancel", "Cancel"),
        Binding("o", "open", "Open"),
        Binding("u", "use_saved_settings", "Reuse"),
        Binding("e", "export", "Export"),
        Binding("r", "focus_results", "Table"),
        Binding("R", "resume", "Resume"),  # only where a stopped run is shown
        Binding("f", "toggle_config", "Form"),
        Binding("t", "cycle_theme", "Theme", show=False),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
        # after q Quit, so that q still shows at 60 columns; from 80 these show too
        Binding("g", "toggle_charts", "Charts"),
        Binding("v", "compare", "Compare"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        config: cfgmod.RunConfig | None = None,
        open_run: pathlib.Path | None = None,
        *,
        runner_factory: RunnerFactory | None = None,
        idle_sampler_factory: SamplerFactory | None = None,
        run_loader: RunLoader | None = None,
        exporter: Exporter | None = None,
        runs_dir: Callable[[], pathlib.Path | None] | None = None,
        remember: bool = True,
        stop_on_signals: bool = False,
        driver_class: type | None = None,
    ) -> None:
        super().__init__(driver_class=driver_class)
        self._startup_problems: list[str] = []
        if config is None:
            config, self._startup_problems = initial_config()
        self.initial = config
        self._open_at_start = open_run
        self._runner_factory = runner_factory or default_runner_factory
        self._idle_factory = idle_sampler_factory if idle_sampler_factory is not None else default_idle_sampler
        self._load_run = run_loader or default_run_loader
        self._export = exporter or default_exporter
        self._runs_dir = runs_dir or cfgmod.runs_dir
        self._remember = remember  # False in tests that must not touch the user's config dir
        # SIGTERM, SIGHUP, a kill's SIGINT: taken as the headless sweep takes them (run_app only:
        # a test's event loop keeps its own)
        self._stop_on_signals = stop_on_signals
        self._stop_listening: Callable[[], None] | None = None
        self.stop_signal: Any = None  # the interrupts.StopSignal being acted on, once one came

        self.runner: Any = None
        self._sweep_config: cfgmod.RunConfig | None = None  # of the sweep running or last run
        self.run_dir: pathlib.Path | None = None
        self.saved_config: cfgmod.RunConfig | None = None  # the shown saved run's, for u
        self._resumable: Any = None  # the shown saved run, where it can be carried on (R)
        self.sweep_running = False
        self.showing_saved = False
        self._cancel_requested = False
        self._shutting_down = False
        self._idle_sampler: Any = None
        self._idle_key: tuple[Any, ...] | None = None
        self._idle_opening = False
        self.host = socket.gethostname()  # for the header line
        self._live_devices: tuple[str, ...] = ()
        self._live_driver = ""
        self._chart_run: ChartRun | None = None  # the sweep running (or last run) as charted
        self._chart_ticks = 0

        themes = load_themes(theme_dirs(cfgmod.config_dir() / "themes"))
        for theme in themes.themes:
            self.register_theme(theme)
        self.theme_names = [t.name for t in themes.themes] or ["textual-dark", "textual-light"]
        self._theme_problems = themes.problems
        wanted = read_ui_state().get("theme") if remember else None
        if wanted not in self.available_themes:
            wanted = DEFAULT_THEME if DEFAULT_THEME in self.available_themes else "textual-dark"
        self.theme = wanted

    # ---- layout -------------------------------------------------------------------------

    def get_default_screen(self) -> Screen:
        # The breakpoint classes come with the first resize event, after the first styling: set
        # them on the new screen, so that the first frame is styled once, for this width.
        screen = super().get_default_screen()
        screen.add_class("-narrow" if self.size.width < NARROW_BELOW_COLUMNS else "-wide")
        height = self.size.height
        screen.add_class("-tiny" if height < TINY_BELOW_LINES else
                         "-short" if height < SHORT_BELOW_LINES else "-tall")
        return screen

    def compose(self) -> ComposeResult:
        # kept as attributes: timers and worker messages can arrive while the app shuts down,
        # when a query would no longer find them
        self.form = ConfigForm(self.initial, id="config")
        self.telemetry = TelemetryPane(id="telemetry")
        self.sweep = SweepPane(id="sweep")
        self.results = ResultsPane(id="results")
        self.setup_line = SetupLine(id="setup")
        yield self.setup_line
        self.charts = ChartSlot(id="charts")
        with Horizontal(id="body"):
            yield self.form
            with Vertical(id="monitor"):
                yield self.telemetry
                yield self.sweep
                yield self.results
                yield self.charts
        self.footer = Footer(compact=self.size.width < COMPACT_FOOTER_BELOW)
        yield self.footer

    def on_mount(self) -> None:
        self._main = self.screen
        if self._stop_on_signals:
            from carbontop.tui.terminal import listen_for_stop_signals

            self._stop_listening = listen_for_stop_signals(self.stop_on_signal)
        self.charts.border_title = "Charts"
        for problem in self._theme_problems:
            self.notify(f"{problem} It was not loaded; the theme is {self.theme}.",
                        severity="warning", timeout=12)
        for problem in self._startup_problems:
            self.notify(for_app(problem), severity="warning", timeout=12)
        self.results.table.focus()
        self.call_after_refresh(self.form.build)  # after the first frame: see ConfigForm.build
        self.set_interval(TELEMETRY_POLL_S, self._poll_telemetry)
        self.show_setup()
        if self._open_at_start is not None:
            try:
                self.show_saved(self._load_run(pathlib.Path(self._open_at_start)))
            except CarbontopError as exc:
                self.show_error("Cannot open the run", str(exc))
            except Exception as exc:  # noqa: BLE001 - a damaged run must not end the app
                log.exception("Cannot open the run %s", self._open_at_start)
                self.show_error("Cannot open the run", f"{type(exc).__name__}: {exc}")
        else:
            self._start_idle_sampler(self.initial)

    def on_resize(self, event: events.Resize) -> None:
        self.footer.compact = event.size.width < COMPACT_FOOTER_BELOW
        main = getattr(self, "_main", self.screen)
        main.set_class(event.size.width >= ROOMY_COLUMNS and event.size.height >= ROOMY_LINES,
                       "-roomy")

    def on_unmount(self) -> None:
        if self._stop_listening is not None:
            self._stop_listening()
            self._stop_listening = None
        self.cleanup()

    # ---- signals from outside: kill, timeout, a dropped SSH session ------------------------

    def stop_on_signal(self, stop: Any) -> None:
        """A stop signal (interrupts.StopSignal): a running sweep is stopped as the headless
        sweep stops (its point cancelled, the run recorded as `stop.state` with `stop.reason`),
        then the app exits with 128 + the signal's number. A second signal quits at once."""
        import os

        if self.stop_signal is not None:
            if stop == self.stop_signal:
                return  # one hang-up, told twice: SIGHUP and the terminal's EIO
            os._exit(stop.exit_code)  # the run keeps its finished points and reads interrupted
        self.stop_signal = stop
        if self.sweep_running and self.runner is not None:
            self._cancel_requested = True
            self.runner.cancel(stop.state, stop.reason)  # the first reason given stays
            self.sweep.set_status(f"{escape(stop.reason)}: stopping the sweep; finished points "
                                  "stay. The app closes once the end is recorded.")
            return  # on_sweep_ended exits, after the sweep's shutdown
        self._quit(stop.exit_code)

    def terminal_hung_up(self) -> None:
        """The terminal's input failed with EIO: the hang-up SIGHUP also says (one event)."""
        from carbontop.tui.terminal import hang_up

        stop = hang_up()
        if stop is not None and self.stop_signal is None:
            self.stop_on_signal(stop)

    def cleanup(self) -> None:
        """Cancel a running sweep and stop the idle sampler (idempotent)."""
        self._shutting_down = True
        if self.runner is not None and self.sweep_running and not self._cancel_requested:
            self._cancel_requested = True
            self.runner.cancel()  # sets a flag the sweep's thread reads
        self._stop_idle_sampler()

    @property
    def narrow(self) -> bool:
        return getattr(self, "_main", self.screen).has_class("-narrow")

    def _show_config(self, show: bool) -> None:
        main = getattr(self, "_main", self.screen)
        if self.narrow:
            main.set_class(show, "-config-open")
        else:
            main.set_class(not show, "-config-closed")

    def config_visible(self) -> bool:
        main = getattr(self, "_main", self.screen)
        if self.narrow:
            return main.has_class("-config-open")
        return not main.has_class("-config-closed")

    # ---- telemetry ----------------------------------------------------------------------

    def _live_sampler(self) -> Any:
        if self.sweep_running and self.runner is not None:
            sampler = getattr(self.runner, "sampler", None)
            if sampler is not None:
                return sampler
            return None
        return self._idle_sampler

    def _poll_telemetry(self) -> None:
        if self.showing_saved or self._shutting_down or not self.telemetry.is_mounted:
            return
        sampler = self._live_sampler()
        if sampler is None:
            return
        try:
            self.telemetry.show_live(sampler)
        except Exception as exc:  # noqa: BLE001 - a sampler hiccup must not end the app
            log.warning("The live telemetry could not be shown", exc_info=True)
            self.telemetry.note(f"Telemetry unavailable: {type(exc).__name__}: {exc}")
        if self.sweep_running and self._chart_run is not None and self.charts_shown():
            self._chart_ticks += 1
            if self._chart_ticks % CHART_TRACE_EVERY == 0:
                self._chart_live_trace(sampler)

    # ---- charts -------------------------------------------------------------------------

    def charts_shown(self) -> bool:
        main = getattr(self, "_main", self.screen)
        return main.has_class("-charts") or main.has_class("-roomy")

    def _chart_live_trace(self, sampler: Any) -> None:
        """The sweep's power so far, from the sampler's history (its last 15 minutes); the
        whole trace is read from power.csv when the sweep ends."""
        run = self._chart_run
        try:
            samples = sampler.samples(t0=run.t0_s) if run is not None else []
        except Exception:  # noqa: BLE001 - the chart waits for the next tick
            log.warning("The live power chart missed a tick", exc_info=True)
            return
        self.charts.update_samples(samples)

    def _sampler_now(self) -> float:
        """The sweep's sampler's latest reading time: the live power chart's clock starts there
        (the sampler's clock, not this process's, so that its history lines up)."""
        try:
            latest = self._live_sampler().latest() or {}
            return max(float(s.t_s) for s in latest.values())
        except Exception:  # noqa: BLE001 - no reading yet: now will do
            return time.time()

    def _chart_update(self, **changes: Any) -> None:
        import dataclasses

        if self._chart_run is None:
            return
        self._chart_run = dataclasses.replace(self._chart_run, **changes)
        self.charts.show_runs([self._chart_run])

    @work(thread=True, group="chart-trace", exit_on_error=False)
    def _load_sweep_trace(self, run_dir: pathlib.Path) -> None:
        # A finished sweep's trace stays on screen: the whole of it, from its run directory.
        try:
            saved = self._load_run(run_dir)
        except Exception:  # noqa: BLE001 - the live trace already shown stays instead
            log.warning("The finished sweep's power trace could not be read", exc_info=True)
            return
        self.call_from_thread(self._sweep_trace_loaded, saved)

    def _sweep_trace_loaded(self, saved: SavedRun) -> None:
        if self.sweep_running or self.showing_saved or self._chart_run is None or not saved.samples:
            return  # a new sweep or a saved run took the charts meanwhile, or nothing was saved
        self._chart_update(samples=saved.samples, t0_s=None)  # its clock: the first sample

    def action_toggle_charts(self) -> None:
        main = getattr(self, "_main", self.screen)
        show = not main.has_class("-charts")
        main.set_class(show, "-charts")
        if show:
            self.charts.focus_tabs()
            sampler = self._live_sampler()
            if self.sweep_running and sampler is not None:
                self._chart_live_trace(sampler)
        else:
            self.results.table.focus()

    def _recent_runs(self) -> list[pathlib.Path]:
        from carbontop.core.store import list_runs

        return list_runs(self._runs_dir(), limit=RECENT_RUNS)

    def action_compare(self) -> None:
        from carbontop.tui.compare_screen import CompareScreen  # brings the charts (and numpy)

        preselect = [self.run_dir] if self.run_dir is not None and not self.sweep_running else []
        self.push_screen(CompareScreen(self._load_run, self._recent_runs(), preselect))

    @staticmethod
    def _sampler_key(config: cfgmod.RunConfig) -> tuple[Any, ...]:
        return (config.device, tuple(config.gpus or ()))

    def _start_idle_sampler(self, config: cfgmod.RunConfig) -> None:
        if self._idle_factory is None or self.sweep_running or self._shutting_down or self._idle_opening:
            return
        key = self._sampler_key(config)
        if self._idle_sampler is not None and key == self._idle_key:
            return
        self._stop_idle_sampler()
        self._idle_opening = True
        self._open_idle_sampler(config, key)

    @work(thread=True, group="idle-sampler", exit_on_error=False)
    def _open_idle_sampler(self, config: cfgmod.RunConfig, key: tuple[Any, ...]) -> None:
        # Opening NVML can take a moment: off the UI thread, so the first frame does not wait.
        try:
            sampler = self._idle_factory(config)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - no power source is a note, not a failure
            log.info("No power source for the idle telemetry", exc_info=True)
            self.post_message(IdleSamplerReady(None, str(exc), key))
            return
        try:
            driver = driver_version(getattr(sampler, "source", None))
        except Exception:  # noqa: BLE001 - the header then leaves the driver out
            log.warning("The driver version could not be read", exc_info=True)
            driver = ""
        self.post_message(IdleSamplerReady(sampler, "", key, driver))

    def on_idle_sampler_ready(self, message: IdleSamplerReady) -> None:
        self._idle_opening = False
        source = getattr(message.sampler, "source", None)
        try:
            names = dict(source.device_names() or {}) if source is not None else {}
        except Exception:  # noqa: BLE001 - the header then names no device
            log.warning("The power source could not name its devices", exc_info=True)
            names = {}
        self._live_devices = tuple(names[i] for i in sorted(names))
        self._live_driver = message.driver
        self.show_setup()
        if message.sampler is None:
            if not self.sweep_running and not self.showing_saved:
                self.telemetry.clear_devices()  # the old device's graphs would mislead
                self.telemetry.note(f"No power readings before the sweep: {message.error}")
            return
        if self.sweep_running or self._shutting_down:
            stop_sampler(message.sampler)  # a sweep started meanwhile: its runner samples now
            return
        self._idle_sampler, self._idle_key = message.sampler, message.key

    def _stop_idle_sampler(self) -> None:
        sampler, self._idle_sampler, self._idle_key = self._idle_sampler, None, None
        if sampler is not None:
            stop_sampler(sampler)

    # ---- the form -----------------------------------------------------------------------

    def on_config_form_edited(self, message: ConfigForm.Edited) -> None:
        if self._shutting_down or not self.form.is_attached:
            return
        try:
            config = self.form.check()
        except NoMatches:  # an edit that arrives while the app closes: its fields are gone
            return
        if config is not None and not self.showing_saved:
            self._start_idle_sampler(config)  # follows a change of device or GPUs
            self.show_setup()

    def show_setup(self) -> None:
        """The header: a saved run's setup while one is shown, else this machine's and the
        next (or running) sweep's."""
        if self.showing_saved or self._shutting_down or not self.form.is_attached:
            return
        try:
            config = self._sweep_config if self.sweep_running and self._sweep_config else (
                self.form.peek() or self.initial)
        except NoMatches:  # the app is closing: the form's fields are gone already
            return
        folder, new = (config.out or str(cfgmod.runs_dir())), not config.out
        if self.run_dir is not None and (self.sweep_running or self._sweep_config is not None):
            folder, new = str(self.run_dir), False
        self.setup_line.show(Setup(host=self.host, devices=self._live_devices,
                                   driver=self._live_driver, carbon=carbon_of_settings(config),
                                   run_folder=folder, folder_new=new))
        if self._sweep_config is None:  # no sweep yet in this session
            # the form may be hidden (under 120 columns): say what s would run
            self.sweep.set_status(f"No sweep yet. [b]s[/b] runs {escape(settings_summary(config))} "
                                  "([b]f[/b]: the form).")

    def on_config_form_leave(self, message: ConfigForm.Leave) -> None:
        if self.narrow:
            self._show_config(False)
        self.results.table.focus()

    # ---- actions ------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "start":
            return not self.sweep_running  # False: left out of the footer, the key does nothing
        if action == "cancel":
            return self.sweep_running
        if action == "use_saved_settings":
            return self.showing_saved and self.saved_config is not None and not self.sweep_running
        if action == "resume":
            return self.showing_saved and self._resumable is not None and not self.sweep_running
        return True

    def action_start(self) -> None:
        if self.sweep_running:
            self.notify("A sweep is already running; c cancels it.", severity="warning")
            return
        config = self.form.check()
        if config is None:
            self._show_config(True)
            self.form.focus_error()
            self.notify("Fix the marked setting first; the sweep has not started.", severity="error")
            return
        if self._remember:
            problem = save_last_run(config)
            if problem:
                self.notify(problem, severity="warning")
        self.start_sweep(config)

    def start_sweep(self, config: cfgmod.RunConfig, resume_from: Any = None) -> None:
        """Hand `config` to a new runner on a worker thread (carrying `resume_from` on, if given)."""
        self._stop_idle_sampler()
        self.showing_saved = False
        self.saved_config = None
        self._resumable = None
        self.run_dir = None
        self.results.clear()
        self._chart_run = None
        self.charts.show_runs([])
        self.sweep.reset("Preparing: the model, the workload and the power source…")
        self._cancel_requested = False
        try:
            extra = {"resume_from": resume_from} if resume_from is not None else {}
            self.runner = self._runner_factory(config, self._on_runner_event, **extra)
        except CarbontopError as exc:
            self.show_error("The sweep cannot start", str(exc))
            self._start_idle_sampler(config)
            return
        except Exception as exc:  # noqa: BLE001 - a bug in setting up must not end the app
            log.exception("The sweep could not start")
            self.show_error("The sweep cannot start", f"{type(exc).__name__}: {exc}")
            self._start_idle_sampler(config)
            return
        self.sweep_running = True
        self._sweep_config = config
        self.show_setup()
        self.form.set_enabled(False)
        if self.narrow:
            self._show_config(False)
        self.results.table.focus()
        self.refresh_bindings()
        self._run_sweep(self.runner)

    def _on_runner_event(self, event: Any) -> None:
        """Called on the sweep's thread: hand the event to the UI thread and return at once."""
        self.post_message(SweepEventMessage(event))

    @work(thread=True, exclusive=True, group="sweep", exit_on_error=False)
    def _run_sweep(self, runner: Any) -> None:
        during = "prepare"
        try:
            runner.prepare()
            self.post_message(SweepPrepared())
            during = "run"
            runner.run()  # after a cancel during prepare() it only records the end
        except CarbontopError as exc:
            self.post_message(SweepFailed(str(exc), field=getattr(exc, "field", None),
                                          expected=True, during=during))
        except BaseException as exc:  # noqa: BLE001 - whatever happens, the app stays up
            self.post_message(SweepFailed(f"{type(exc).__name__}: {exc}", field=None,
                                          expected=False, during=during))
        finally:
            self.post_message(SweepEnded())

    def action_cancel(self) -> None:
        if not self.sweep_running or self.runner is None:
            self.notify("No sweep is running.", severity="warning")
            return
        if self._cancel_requested:
            return
        self._cancel_requested = True
        self.runner.cancel()  # sets a flag the sweep's thread reads
        self.sweep.set_status("Cancelling: the running point stops, finished points stay.")
        self.notify("Cancelling the sweep…")

    def action_export(self) -> None:
        if self.run_dir is None:
            self.notify("Nothing to export yet: start a sweep (s) or open a saved run (o).",
                        severity="warning")
            return
        self.push_screen(ExportScreen(self.run_dir / "points_export.csv"), self._export_to)

    def _export_to(self, dest: pathlib.Path | None) -> None:
        if dest is None or self.run_dir is None:
            return
        self._export_worker(self.run_dir, dest)

    @work(thread=True, group="export", exit_on_error=False)
    def _export_worker(self, run_dir: pathlib.Path, dest: pathlib.Path) -> None:
        # the store's export reads with pandas: its import alone is too slow for the UI thread
        try:
            written = self._export(run_dir, dest)
        except CarbontopError as exc:
            self.call_from_thread(self.show_error, "Export failed", str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - pandas and the disk fail in many ways; the app stays
            log.exception("The export of %s failed", run_dir)
            self.call_from_thread(self.show_error, "Export failed", f"{type(exc).__name__}: {exc}")
            return
        self.call_from_thread(self._exported, pathlib.Path(written))

    def _exported(self, written: pathlib.Path) -> None:
        self.last_export = written
        self.notify(f"Wrote {short_path(written, 56)}", title="Exported the results")

    def action_open(self) -> None:
        if self.sweep_running:
            self.notify("A sweep is running: cancel it (c) before opening a saved run.",
                        severity="warning")
            return
        start = str(self.run_dir) if self.run_dir else ""
        self.push_screen(OpenScreen(self._load_run, self._recent_runs(), start),
                         self._opened)

    def _opened(self, saved: SavedRun | None) -> None:
        if saved is None:
            return
        try:
            self.show_saved(saved)
        except Exception as exc:  # noqa: BLE001 - a damaged run must not end the app
            log.exception("Cannot show the run %s", saved.path)
            self.show_error("Cannot show the run", f"{type(exc).__name__}: {exc}")

    def show_saved(self, saved: SavedRun) -> None:
        """Show a saved run: its table, its points, its power trace, its setup."""
        self._stop_idle_sampler()
        self.showing_saved = True
        self.run_dir = pathlib.Path(saved.path)
        self.setup_line.show(saved_setup(saved.path, saved.meta))
        self.results.set_points(list(saved.points), recommendation(saved).batch_size)
        statuses = {p.batch_size: p.status.value for p in saved.points}
        self.saved_config = saved_run_settings(saved.config)
        self.sweep.show_saved(statuses, saved.state, reusable=self.saved_config is not None)
        env = saved.meta.environment
        self.telemetry.show_trace(saved.samples, env.device_names(), estimated=env.energy_estimated)
        self._chart_run = None
        self.charts.show_runs([chart_run(saved)])
        # The form keeps the next sweep's settings: opening a run only offers its own (u).
        self._offer_resume(saved)
        self.refresh_bindings()

    def _offer_resume(self, saved: SavedRun) -> None:
        """A run that stopped before its end can be carried on (R); its notes are shown too."""
        from carbontop.sweep.resume import RESUMABLE_STATES

        for note in saved.meta.notes:
            self.notify(note, title="Note")
        self._resumable = saved if saved.state in RESUMABLE_STATES else None
        if self._resumable is not None:
            why = saved.state_note or saved.meta.status.message
            self.notify(f"This run stopped before its end ({saved.state}{': ' + why if why else ''}). "
                        "R (shift+r) carries it on: finished points are kept.", title="Resume?", timeout=15)

    def action_resume(self) -> None:
        from carbontop.sweep.resume import check_resumable, config_for_resume

        saved = self._resumable
        if saved is None or self.sweep_running:
            self.notify("Open a cancelled or interrupted run first (o).", severity="warning")
            return
        try:
            check_resumable(saved)
            config = config_for_resume(saved)
        except CarbontopError as exc:
            self.show_error("The run cannot be carried on", str(exc))
            return
        self.start_sweep(config, resume_from=saved)

    def action_use_saved_settings(self) -> None:
        """Put the shown run's settings into the form, to run it again (its folder excepted)."""
        if not self.showing_saved or self.saved_config is None:
            self.notify("Open a saved run first (o); its settings can then fill the form.",
                        severity="warning")
            return
        self.form.set_config(self.saved_config)
        self._show_config(True)
        self.form.focus_first()
        self.notify("The form holds the saved run's settings now (a new run folder); "
                    "s starts a sweep with them.", timeout=6)

    def action_focus_results(self) -> None:
        if self.narrow and self.config_visible():
            self._show_config(False)
        getattr(self, "_main", self.screen).remove_class("-charts")  # the table in the charts' place
        self.results.table.focus()

    def action_toggle_config(self) -> None:
        show = not self.config_visible()
        self._show_config(show)
        if show and self.narrow:
            self.form.focus_first()
        elif not show:
            self.results.table.focus()

    def action_cycle_theme(self) -> None:
        names = self.theme_names
        i = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(i + 1) % len(names)]
        if self._remember:
            write_ui_state({**read_ui_state(), "theme": self.theme})
        # one theme note at a time: pressing t five times should not stack five of them
        for note in [n for n in self._notifications if n.message.startswith("Theme: ")]:
            self._unnotify(note, refresh=False)
        self.notify(f"Theme: {self.theme}", timeout=2)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.energy_sources()))

    def energy_sources(self) -> list[str]:
        """Where the energy of the figures shown comes from: the points' own energy_source, or
        the live power source's kind before any point finished."""
        found = [p.energy_source for p in self.results.points.values()]
        found = [s for s in found if s]
        if found:
            return sorted(set(found))
        source = getattr(self._live_sampler(), "source", None)
        kind = getattr(source, "kind", "") if source is not None else ""
        return [kind] if kind else []

    async def action_quit(self) -> None:
        if self.sweep_running:
            self.push_screen(
                ConfirmScreen(
                    "Quit carbontop?",
                    "A sweep is running. Quitting cancels it: the running point stops and the "
                    f"finished points stay in {self.run_dir or 'the run directory'}.",
                    yes="Cancel sweep and quit",
                    no="Keep running",
                ),
                self._quit_answer,
            )
            return
        self._quit()

    def _quit_answer(self, yes: bool | None) -> None:
        if yes:
            self._quit()

    def _quit(self, code: int = 0) -> None:
        self.cleanup()
        self.exit(code, return_code=code)

    def show_error(self, title: str, message: str) -> None:
        self.push_screen(ErrorScreen(title, for_app(message)))

    # ---- sweep messages -----------------------------------------------------------------

    def on_sweep_prepared(self, message: SweepPrepared) -> None:
        run_dir = getattr(self.runner, "run_dir", None)
        if run_dir is not None:
            self.run_dir = pathlib.Path(run_dir)
            self.show_setup()

    def on_sweep_event_message(self, message: SweepEventMessage) -> None:
        try:
            self._show_event(message.event)
        except Exception as exc:  # noqa: BLE001 - a display bug must not end a measurement
            log.exception("The app could not show %s", type(message.event).__name__)
            self.show_error("carbontop could not show a sweep event",
                            f"{type(exc).__name__}: {exc}\n\nThe sweep goes on; its run directory has every point.")

    def _show_event(self, event: Any) -> None:
        from carbontop.sweep import (
            events as ev,  # plain dataclasses, already imported by the runner
        )

        if isinstance(event, ev.SweepStarted):
            self.run_dir = pathlib.Path(event.run_dir)
            config = getattr(self.runner, "config", None) or self.form.peek()
            self._chart_run = ChartRun(label=self.run_dir.name, t0_s=self._sampler_now(),
                                       slo_s_per_token=getattr(config, "slo_s_per_token", None))
            self._chart_ticks = 0
            self.charts.show_runs([self._chart_run])
            self.sweep.started(tuple(event.planned), event.auto)
            self.show_setup()
        elif isinstance(event, ev.PhaseChanged):
            self.sweep.set_phase(event.phase, event.batch_size, event.detail)
        elif isinstance(event, ev.PointStarted):
            self.sweep.point_started(event.batch_size, event.n_requests)
        elif isinstance(event, ev.PointProgress):
            self.sweep.progress(event.batch_size, event.done, event.total, event.elapsed_s, event.eta_s,
                                event.window_s, event.window_target_s)
        elif isinstance(event, ev.PointFinished):
            self.results.add_point(event.point)
            if self._chart_run is not None:
                self._chart_update(points=(*self._chart_run.points, event.point))
            self.sweep.point_finished(event.point.batch_size, event.point.status)
        elif isinstance(event, ev.BoundaryChanged):
            self.sweep.boundary(event.largest_ok, event.smallest_failed, event.next_batch)
        elif isinstance(event, ev.SweepFinished):
            self.run_dir = pathlib.Path(event.run_dir) if event.run_dir else self.run_dir
            self.sweep.finished(event.status, "" if event.status == "error" else event.message,
                                event.recommended_batch)
            self.results.set_recommended(event.recommended_batch)
            if self._chart_run is not None and self.run_dir is not None:
                self._chart_update(recommended=event.recommended_batch)
                self._load_sweep_trace(self.run_dir)
            if event.status == "done":
                self.notify(f"Results in {short_path(self.run_dir, 56)}" if self.run_dir else "",
                            title="Sweep finished")

    def on_sweep_failed(self, message: SweepFailed) -> None:
        if message.expected and message.field:
            self.form.mark(message.message, message.field)
        if message.during == "prepare":
            self.sweep.reset("The sweep did not start.")
            title = "The sweep cannot start"
        else:
            self.sweep.set_status(f"[$error]Sweep failed.[/] Finished points are in {self.run_dir}.")
            title = "The sweep failed"
        if not message.expected:
            title += " (unexpected error)"
        self.show_error(title, message.message)

    def on_sweep_ended(self, message: SweepEnded) -> None:
        self.sweep_running = False
        self._cancel_requested = False
        if self.stop_signal is not None:
            self._quit(self.stop_signal.exit_code)  # the sweep's end is recorded: now go
            return
        if self._shutting_down:
            return  # quitting: the form's widgets may already be gone
        self.form.set_enabled(True)
        self.refresh_bindings()
        self.show_setup()
        if not self._shutting_down:
            # peek, not check: a field marked by the failure stays marked
            self._start_idle_sampler(self.form.peek() or self.initial)


def run_app(config: cfgmod.RunConfig | None = None, open_run: pathlib.Path | None = None) -> int:
    """Open the app; with `open_run`, show that saved run. Returns the exit code.

    With `config` None the form starts from the user's config file and the last run's settings.
    """
    from carbontop.tui.terminal import terminal_driver_class

    app = CarbontopApp(config=config, open_run=open_run, stop_on_signals=True,
                       driver_class=terminal_driver_class())
    try:
        result = app.run()
    finally:
        app.cleanup()
    return result if isinstance(result, int) else 0


__all__ = ["CarbontopApp", "run_app"]
