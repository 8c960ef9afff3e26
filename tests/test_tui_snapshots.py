"""Snapshots of the main screen (pytest-textual-snapshot): a sweep in progress, no live values.

The sampler is a fixed double and the sweep state comes from scripted events, so every frame is
the same on every machine. Update after an intended change with `pytest --snapshot-update`.
"""

from __future__ import annotations

import pytest
from test_tui_helpers import FixedSampler, isolated_dirs, point, wait_until  # noqa: F401

from carbontop.config import RunConfig
from carbontop.core.records import PointStatus
from carbontop.engines.base import Phase
from carbontop.sweep import events as ev
from carbontop.tui.app import CarbontopApp
from carbontop.tui.messages import SweepEventMessage

pytestmark = [pytest.mark.usefixtures("isolated_dirs"), pytest.mark.timeout(60)]

RUN_DIR = "/data/carbontop/runs/20240503-120000-llama2-7b-hf"
CONFIG = RunConfig(model="llama2-7b", device="cuda", dataset="sharegpt", num_prompts=100,
                   batch_sizes="auto", intensity=413.0, pue=1.1)

SCRIPT = [
    ev.SweepStarted(RUN_DIR, (1,), True, ("NVIDIA H100 80GB HBM3",), False),
    ev.PointStarted(1, 100),
    ev.PointFinished(point(1)),
    ev.BoundaryChanged(1, None, 2),
    ev.PointFinished(point(2)),
    ev.BoundaryChanged(2, None, 4),
    ev.PointFinished(point(4)),
    ev.BoundaryChanged(4, None, 8),
    ev.PointFinished(point(8, PointStatus.OOM, message="CUDA out of memory")),
    ev.BoundaryChanged(4, 8, 6),
    ev.PointStarted(6, 100),
    ev.PhaseChanged(Phase.MEASURING, 6, ""),
    ev.PointProgress(6, 42, 100, 31.0, 42.8),
]


@pytest.fixture(autouse=True)
def fixed_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """The header names the runs folder: the same one on every machine (nothing is written)."""
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/data")


def snapshot_app() -> CarbontopApp:
    app = CarbontopApp(CONFIG, idle_sampler_factory=lambda cfg: FixedSampler(), remember=False)
    app.host = "gpu-node-7"  # the header names the host: the same one on every machine
    return app


async def sweep_in_progress(pilot) -> None:
    app = pilot.app
    await wait_until(pilot, lambda: app.form.built and not app._idle_opening, what="startup")
    app._poll_telemetry()
    for event in SCRIPT:
        app.post_message(SweepEventMessage(event))
    app.sweep_running = True  # as while a runner works: start dimmed, cancel live
    app.refresh_bindings()
    # every scripted event shown before the frame is taken, however slow the machine
    await wait_until(pilot, lambda: app.sweep.points.get(6) == "running"
                     and app.sweep.points.get(8) not in (None, "pending", "running"),
                     what="the scripted sweep")
    await pilot.wait_for_scheduled_animations()
    for _ in range(3):
        await pilot.pause()


def test_main_screen_80x24(snap_compare) -> None:
    assert snap_compare(snapshot_app(), terminal_size=(80, 24), run_before=sweep_in_progress)


def test_main_screen_120x40(snap_compare) -> None:
    assert snap_compare(snapshot_app(), terminal_size=(120, 40), run_before=sweep_in_progress)


def test_config_form_80x24(snap_compare) -> None:
    async def open_form(pilot) -> None:
        await wait_until(pilot, lambda: pilot.app.form.built, what="the form")
        await pilot.press("f")
        pilot.app.form.field("num_prompts").value = "many"  # marked, with its sentence
        await pilot.pause()
        pilot.app.form.field("device").focus()  # a choice: marked, with its help, no cursor
        await pilot.pause()
        await pilot.pause()

    assert snap_compare(snapshot_app(), terminal_size=(80, 24), run_before=open_form)


def test_main_screen_60x15(snap_compare) -> None:
    assert snap_compare(snapshot_app(), terminal_size=(60, 15), run_before=sweep_in_progress)


def test_main_screen_200x50(snap_compare) -> None:
    assert snap_compare(snapshot_app(), terminal_size=(200, 50), run_before=sweep_in_progress)
