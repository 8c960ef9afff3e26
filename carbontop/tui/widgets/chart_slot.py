"""The app's place for the chart view, which it builds the first time the charts show.

textual-plot brings numpy with it: the app's first frame should not wait for either, and a user
who never opens the charts never loads them. Until then the slot keeps what the charts would
show, and hands it over when the view is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from textual.containers import Vertical

from carbontop.figures.series import ChartRun


class ChartSlot(Vertical):
    DEFAULT_CSS = """
    ChartSlot { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.view: Any = None  # charts.ChartView once built
        self._runs: tuple[ChartRun, ...] = ()
        self._current = "energy"

    @property
    def runs(self) -> tuple[ChartRun, ...]:
        return self._runs

    def on_show(self) -> None:
        self.build()

    def build(self) -> None:
        if self.view is not None:
            return
        from carbontop.tui.widgets.charts import ChartView

        self.view = ChartView()
        self.mount(self.view)
        self.view.show_runs(self._runs)
        self.view.show_chart(self._current)

    def show_runs(self, runs: Sequence[ChartRun]) -> None:
        self._runs = tuple(runs)
        if self.view is not None:
            self.view.show_runs(self._runs)

    def update_samples(self, samples: Sequence[Any], t0_s: float | None = None) -> None:
        """New telemetry for the one live run: only the power chart redraws."""
        if len(self._runs) != 1:
            return
        run = self._runs[0]
        self._runs = (dataclasses.replace(run, samples=samples,
                                          t0_s=t0_s if t0_s is not None else run.t0_s),)
        if self.view is not None:
            self.view.update_samples(samples, t0_s)

    def show_chart(self, key: str) -> None:
        self._current = key
        if self.view is not None:
            self.view.show_chart(key)

    def focus_tabs(self) -> None:
        if self.view is not None and self.view.is_mounted:
            self.view.query_one("Tabs").focus()
        else:
            self.call_after_refresh(self.focus_tabs)
