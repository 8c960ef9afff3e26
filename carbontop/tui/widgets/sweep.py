"""The sweep pane: every batch size tried or planned, the running point's progress and phase,
and how the search is narrowing the out-of-memory boundary."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import ProgressBar, Static

from carbontop.engines.base import Phase
from carbontop.tui.format import duration

# status -> (mark, theme colour); the words are in the pane's subtitle as a legend
STATUS_MARKS: dict[str, tuple[str, str]] = {
    "pending": ("·", "$text-muted"),
    "running": ("▶", "$accent"),
    "ok": ("✓", "$success"),
    "kv_bound": ("KV", "$warning"),
    "oom": ("OOM", "$error"),
    "crashed": ("crash", "$error"),
    "hung": ("hung", "$error"),
    "cancelled": ("cancelled", "$warning"),
    "error": ("error", "$error"),
    "skipped": ("skipped", "$text-muted"),
}
LEGEND = "✓ done  ▶ running  · pending  OOM/KV/crash: did not fit"

PHASES: dict[Phase, str] = {
    Phase.IDLE_POWER: "measuring idle power",
    Phase.STARTING: "starting engine",
    Phase.RESTARTING: "restarting engine",
    Phase.SETTLING: "letting the GPU settle",
    Phase.LOADING: "loading",
    Phase.BUILDING: "building the executor",
    Phase.COMPILING: "compiling",
    Phase.WARMUP: "warm-up",
    Phase.MEASURING: "measuring",
}


def recorded_text(points: dict[int, str]) -> str:
    """'3 points recorded (2 ok, 1 OOM)': every point with a row in points.csv (as `carbontop
    runs` counts them), by status; planned points that never ran are not rows."""
    counts: dict[str, int] = {}
    for state in points.values():
        if state not in ("pending", "running", "skipped"):
            counts[state] = counts.get(state, 0) + 1
    n = sum(counts.values())
    words = {"ok": "ok", "oom": "OOM", "kv_bound": "KV-bound", "crashed": "crashed",
             "cancelled": "cancelled", "error": "failed"}
    detail = ", ".join(f"{c} {words.get(s, s)}" for s, c in counts.items())
    return f"{n} point{'s' if n != 1 else ''} recorded" + (f" ({detail})" if detail else "")


def status_name(status: object) -> str:
    """PointStatus members and the strings of a saved run both come out as 'ok', 'oom', ..."""
    value = getattr(status, "value", status)
    return str(value or "").lower()


class SweepPane(Vertical):
    DEFAULT_CSS = """
    SweepPane { height: auto; }
    SweepPane #sweep-points { height: auto; }
    SweepPane #sweep-progress-row { height: 1; }
    SweepPane #sweep-phase { width: auto; max-width: 60%; padding-right: 1; color: $accent; }
    SweepPane ProgressBar { width: auto; }
    SweepPane ProgressBar Bar { width: 16; }
    SweepPane #sweep-eta { width: 1fr; padding-left: 1; color: $text-muted; }
    SweepPane #sweep-status { height: auto; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.points: dict[int, str] = {}
        self.auto = False

    def compose(self) -> ComposeResult:
        yield Static("", id="sweep-points")
        with Horizontal(id="sweep-progress-row"):
            yield Static("", id="sweep-phase")
            yield ProgressBar(total=None, show_eta=False, id="sweep-progress")
            yield Static("", id="sweep-eta")
        yield Static("", id="sweep-status")

    def on_mount(self) -> None:
        self.border_title = "Sweep"
        self.border_subtitle = LEGEND
        self.reset("No sweep yet. [b]s[/b] starts one with the run configuration ([b]f[/b] shows it).")

    # ---- state changes ------------------------------------------------------------------

    def reset(self, status: str = "") -> None:
        self.points = {}
        self.auto = False
        self._render_points()
        self.set_phase(None)
        bar = self.query_one("#sweep-progress", ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = False
        self.query_one("#sweep-progress-row").display = False
        self.set_status(status)

    def started(self, planned: tuple[int, ...], auto: bool) -> None:
        self.auto = auto
        for b in planned:
            self.points.setdefault(int(b), "pending")
        self._render_points()
        plan = "doubling until memory runs out, then bisecting" if auto else "the listed batch sizes"
        self.set_status(f"Running {plan}.")

    def set_phase(self, phase: Phase | None, batch_size: int | None = None, detail: str = "") -> None:
        text = PHASES[phase] if phase is not None else ""
        if batch_size is not None and text:
            text = f"{text} · batch {batch_size}"
        # while a point runs the bar and its counts need the room; the detail shows otherwise
        if detail and not self.query_one("#sweep-progress", ProgressBar).display:
            text = f"{text} ({detail})" if text else detail
        widget = self.query_one("#sweep-phase", Static)
        widget.update(text)
        if text:
            self.query_one("#sweep-progress-row").display = True

    def point_started(self, batch_size: int, n_requests: int) -> None:
        for b, s in self.points.items():  # at most one point runs at a time
            if s == "running":
                self.points[b] = "pending"
        self.points[int(batch_size)] = "running"
        self._render_points()
        self.query_one("#sweep-progress-row").display = True
        bar = self.query_one("#sweep-progress", ProgressBar)
        bar.display = True
        bar.update(total=max(1, n_requests), progress=0)
        self.query_one("#sweep-eta", Static).update(f"0/{n_requests} req")

    def progress(self, batch_size: int, done: int, total: int | None, elapsed_s: float,
                 eta_s: float | None, window_s: float | None = None,
                 window_target_s: float | None = None) -> None:
        """A point that runs to a window shows the window's seconds; one that runs a fixed list
        of requests shows the requests."""
        bar = self.query_one("#sweep-progress", ProgressBar)
        eta = f" · ETA {duration(eta_s)}" if eta_s is not None else ""
        if window_target_s:
            seen_s = window_s or 0.0
            bar.update(total=window_target_s, progress=min(seen_s, window_target_s))
            line = f"window {seen_s:.0f}/{window_target_s:.0f} s · {done} req"
        else:
            bar.update(total=max(1, total or 0), progress=done)
            line = f"{done}/{total} req" if total else f"{done} req"
        self.query_one("#sweep-eta", Static).update(f"{line} · {duration(elapsed_s)}{eta}")

    def point_finished(self, batch_size: int, status: object) -> None:
        self.points[int(batch_size)] = status_name(status) or "ok"
        self._render_points()
        bar = self.query_one("#sweep-progress", ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = False  # between points the phase line has the room
        self.query_one("#sweep-eta", Static).update("")

    def boundary(self, largest_ok: int | None, smallest_failed: int | None, next_batch: int | None) -> None:
        if next_batch is not None:
            self.points.setdefault(int(next_batch), "pending")
            self._render_points()
        parts = []
        if largest_ok is not None:
            parts.append(f"fits at {largest_ok}")
        if smallest_failed is not None:
            parts.append(f"fails at {smallest_failed}")
        if next_batch is not None:
            parts.append(f"next {next_batch}")
        elif largest_ok is not None and smallest_failed is not None:
            parts.append("boundary found")
        self.set_status("Memory boundary: " + " · ".join(parts) if parts else "")

    def finished(self, status: str, message: str = "", recommended: int | None = None) -> None:
        self.auto = False
        for b, s in self.points.items():
            if s == "running":
                self.points[b] = "cancelled" if status == "cancelled" else "error"
            elif s == "pending":
                self.points[b] = "skipped"  # planned, never started: the sweep ended first
        self._render_points()
        self.set_phase(None)
        self.query_one("#sweep-progress-row").display = False
        words = {"done": "Sweep finished", "cancelled": "Sweep cancelled", "error": "Sweep failed"}
        text = f"{words.get(status, 'Sweep ' + status)}: {recorded_text(self.points)}."
        if recommended is not None:
            text += f" Recommended batch: [b]{recommended}[/b]."
        if message and status != "cancelled":  # the runner's "cancelled by the user" says it twice
            text += f" {message}"
        self.set_status(text)

    def show_saved(self, statuses: dict[int, str], run_status: str, *, reusable: bool = True) -> None:
        self.points = {int(b): status_name(s) for b, s in statuses.items()}
        self._render_points()
        self.set_phase(None)
        self.query_one("#sweep-progress-row").display = False
        n = len(self.points)
        text = f"Saved run ({run_status or 'unknown status'}), {n} point{'s' if n != 1 else ''}."
        if reusable:
            text += " [b]u[/b] reuses its settings."
        self.set_status(text)

    def set_status(self, text: str) -> None:
        self.query_one("#sweep-status", Static).update(text)

    # ---- drawing ------------------------------------------------------------------------

    def on_resize(self) -> None:
        self._render_points()

    def _render_points(self) -> None:
        widget = self.query_one("#sweep-points", Static)
        if not self.points:
            widget.update("[$text-muted]batch sizes: none yet[/]")
            return
        # Wrapped here, between chips, never inside one: Rich would break "205 OOM" at its space.
        width = widget.content_region.width or self.content_region.width or 80
        lines = self._wrap(self._chips(merge=False), width)
        if len(lines) > self.max_chip_lines:  # a short terminal: runs of one status become one chip
            lines = self._wrap(self._chips(merge=True), width)
        widget.update("\n".join(lines))

    @property
    def max_chip_lines(self) -> int:
        return 2 if self.screen.has_class("-tiny") or self.screen.has_class("-short") else 4

    def _chips(self, *, merge: bool) -> list[tuple[str, int]]:
        """(markup, width) per chip; with `merge`, consecutive sizes of one status share a chip
        ('205–256 OOM ×5')."""
        groups: list[list[int]] = []
        for b in sorted(self.points):
            if merge and groups and self.points[groups[-1][-1]] == self.points[b] != "running":
                groups[-1].append(b)
            else:
                groups.append([b])
        chips: list[tuple[str, int]] = []
        for group in groups:
            state = self.points[group[0]]
            mark, colour = STATUS_MARKS.get(state, (state, "$text"))
            style = f"bold {colour}" if state == "running" else colour
            text = f"{group[0]} {mark}" if len(group) == 1 else f"{group[0]}–{group[-1]} {mark} ×{len(group)}"
            chips.append((f"[{style}]{text}[/]", len(text)))
        if self.auto:
            chips.append(("[$text-muted]…[/]", 1))
        return chips

    @staticmethod
    def _wrap(chips: list[tuple[str, int]], width: int) -> list[str]:
        lead = "batch  "
        lines: list[str] = []
        line, used = lead, len(lead)
        for markup, length in chips:
            if used > len(lead) and used + 2 + length > width:
                lines.append(line)
                line, used = " " * len(lead), len(lead)
            if used > len(lead):
                line, used = line + "  ", used + 2
            line, used = line + markup, used + length
        lines.append(line)
        return lines
