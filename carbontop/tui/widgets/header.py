"""The line at the top: where the figures below come from (host, GPUs, driver, carbon source, run
folder), so that a screenshot of the app says what it measured."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual.widgets import Static

from carbontop.core.run_meta import RunMeta

SEPARATOR = " · "


@dataclass(frozen=True)
class Setup:
    """What the header shows; every part is optional text, empty when unknown."""

    host: str = ""
    devices: tuple[str, ...] = ()  # device names as NVML (or the CPU source) gives them
    driver: str = ""
    carbon: str = ""
    run_folder: str = ""  # the run's folder, or (folder_new) the one a new folder will go in
    folder_new: bool = False  # the next sweep makes a folder of its own under run_folder
    saved: bool = False  # a saved run is shown (not this machine's live state)


def devices_text(names: Iterable[str]) -> str:
    """'H100 80GB HBM3', '2× H100 80GB HBM3', or the names joined: the vendor prefix adds nothing."""
    short = [n.removeprefix("NVIDIA ").strip() for n in names if n]
    if not short:
        return ""
    if len(set(short)) == 1 and len(short) > 1:
        return f"{len(short)}× {short[0]}"
    return ", ".join(short)


def carbon_text(description: str) -> str:
    """The carbon source's description up to its first aside: 'constant 413 g/kWh', 'hourly
    trace de.csv'. The full sentence is in run.toml and `carbontop show`."""
    for cut in (" (", ";"):
        if cut in description:
            description = description.split(cut, 1)[0]
    return description.strip()


def carbon_of_settings(config: Any) -> str:
    """The carbon source the form's settings ask for, in header words, without opening it (a live
    source would call its API, a trace would read its file). carbon.make_intensity_source holds
    the precedence, trace > Electricity Maps > zone > constant; a test keeps this in step."""
    if config.trace:
        return f"hourly trace {Path(config.trace).name}"
    if config.emaps_zone:
        return f"Electricity Maps API v3, zone {config.emaps_zone}"
    if config.zone:
        return f"zone {config.zone}"
    return f"constant {config.intensity:g} g/kWh"


def short_path(path: str | os.PathLike[str], width: int | None = None) -> str:
    """`path` with the home folder as ~, and cut to its last parts ('…/runs/x') to fit `width`."""
    text = str(path)
    home = str(Path.home())
    if home not in ("", "/") and (text == home or text.startswith(home + os.sep)):
        text = "~" + text[len(home):]
    if width is None or len(text) <= width:
        return text
    parts = Path(text).parts
    for keep in range(len(parts) - 1, 0, -1):
        candidate = "…/" + "/".join(parts[-keep:])
        if len(candidate) <= width:
            return candidate
    return "…/" + parts[-1] if parts else text


def saved_setup(path: str | os.PathLike[str], meta: RunMeta) -> Setup:
    """The setup of a saved run, from its run.toml."""
    return Setup(
        host=meta.environment.host,
        devices=meta.environment.devices,
        driver=meta.environment.driver_version,
        carbon=carbon_text(meta.carbon.description),
        run_folder=str(path),
        saved=True,
    )


class SetupLine(Static):
    """One line; the run folder is shortened first, then the line is cut with an ellipsis."""

    DEFAULT_CSS = """
    SetupLine { height: 1; width: 1fr; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis;
                background: $panel; color: $text; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id, markup=True)
        self.setup = Setup()

    def show(self, setup: Setup) -> None:
        self.setup = setup
        self._redraw()

    def on_resize(self) -> None:
        self._redraw()

    def _parts(self, folder: str, *, labels: bool) -> list[tuple[str, str]]:
        s = self.setup
        parts = [("saved run" if s.saved else "host", s.host),
                 ("", devices_text(s.devices)),
                 ("driver", s.driver),
                 ("carbon", s.carbon),
                 ("run", f"new in {folder}" if s.folder_new and folder else folder)]
        if not labels:  # a narrow terminal: the values say what they are, but a saved run says so
            parts = [("saved" if s.saved and label == "saved run" else "",
                      value.removeprefix("constant ") if label == "carbon" else value)
                     for label, value in parts]
        return [(label, value) for label, value in parts if value]

    def _redraw(self) -> None:
        width = max(0, self.size.width - 2) or 200

        def plain(folder: str, labels: bool) -> str:
            return SEPARATOR.join(f"{label} {value}" if label else value
                                  for label, value in self._parts(folder, labels=labels))

        # the full line; else without the labels (and 'constant': the number says it); else with
        # the folder cut to its last parts; else cut with an ellipsis
        folder = short_path(self.setup.run_folder) if self.setup.run_folder else ""
        labels = len(plain(folder, True)) <= width
        if folder and len(plain(folder, labels)) > width:
            room = width - len(plain("", labels)) - len(SEPARATOR)
            folder = short_path(self.setup.run_folder, max(16, room))
        self.update(SEPARATOR.join(
            (f"[$text-muted]{label}[/] {escape(value)}" if label else escape(value))
            for label, value in self._parts(folder, labels=labels)
        ))


__all__ = ["Setup", "SetupLine", "carbon_of_settings", "carbon_text", "devices_text",
           "saved_setup", "short_path"]
