"""Grid carbon intensity over time, PUE, embodied carbon, and the greenest batch size.

Operational carbon is integrated chunk by chunk: every energy chunk (joules attributed to one
instant, typically the midpoint of a telemetry interval) is multiplied by the grid intensity
at that instant, so a point that straddles an hour boundary of a trace is charged each
hour's intensity for the energy used in it. The paper this project follows used one hourly
reading for a whole run instead.

Sources (all answer gCO2e/kWh at a Unix time):
  ConstantIntensity        one number (the paper's 413 by default)
  ZoneIntensity            a built-in annual average for an Electricity Maps zone id
  TraceIntensity           an Electricity Maps hourly CSV export, a step function per hour
  ElectricityMapsIntensity the Electricity Maps API v3 (latest, then past-range per window)
"""

from __future__ import annotations

import bisect
import csv
import difflib
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from carbontop.core.hardware import GpuSpec
from carbontop.core.records import PointStatus
from carbontop.core.zones import ZONES, ZoneFigure, find_zone
from carbontop.errors import CarbonSourceError

if TYPE_CHECKING:
    from carbontop.core.records import PointResult

__all__ = [
    "PAPER_INTENSITY_GCO2E_PER_KWH",
    "DEFAULT_SLO_S_PER_TOKEN",
    "ZONES",
    "ZoneFigure",
    "PUE_PRESETS",
    "SECONDS_PER_YEAR",
    "J_PER_KWH",
    "DEFAULT_EMAPS_URL",
    "EMAPS_TOKEN_ENV",
    "IntensitySource",
    "ConstantIntensity",
    "ZoneIntensity",
    "TraceIntensity",
    "ElectricityMapsIntensity",
    "make_intensity_source",
    "operational_gco2e",
    "mean_intensity",
    "embodied_gco2e",
    "gco2e_per_token_at",
    "recommend_batch",
    "intensity_extremes",
]

# The paper's one reading: Electricity Maps, Wisconsin (MISO), 2024-05-03 (Lim, Pan, Zhou, CMU,
# "Characterizing the Carbon Impact of LLM Inference").
PAPER_INTENSITY_GCO2E_PER_KWH = 413.0
# Human reading speed the paper uses as its latency bar: 5 tokens/s per user.
DEFAULT_SLO_S_PER_TOKEN = 0.2

J_PER_KWH = 3.6e6
HOUR_S = 3600.0
# A Julian year (365.25 days): the amortisation period is "N years of wall time", and the
# quarter day keeps leap years in it.
SECONDS_PER_YEAR = 365.25 * 86400.0

# PUE presets (facility energy / IT energy), each with where it came from.
PUE_PRESETS: dict[str, tuple[float, str]] = {
    # Google 2024 Environmental Report: fleet-wide trailing-twelve-month PUE 1.10 for 2023.
    "hyperscale": (
        1.10,
        "Google data-centre fleet average, 2023 (Google 2024 Environmental Report)",
    ),
    # Meta 2024 Sustainability Report: data-centre fleet PUE 1.08 for 2023.
    "meta": (1.08, "Meta data-centre fleet average, 2023 (Meta 2024 Sustainability Report)"),
    # Uptime Institute Global Data Center Survey 2023: industry average 1.58.
    "industry": (1.58, "industry average, 2023 (Uptime Institute Global Data Center Survey)"),
}

DEFAULT_EMAPS_URL = "https://api.electricitymaps.com/v3"
EMAPS_TOKEN_ENV = "ELECTRICITYMAPS_TOKEN"
# Electricity Maps' past-range answers at most 10 days at hourly granularity per request.
_EMAPS_MAX_RANGE_S = 10 * 86400.0


@runtime_checkable
class IntensitySource(Protocol):
    kind: str  # "constant", "zone", "trace", "electricitymaps"
    description: str  # one human sentence for run.toml and the UI
    notes: list[str]  # things the run should say about the figures (clamped trace, gaps)

    def intensity_at(self, t_s: float) -> float:
        """gCO2e/kWh at Unix time t_s."""
        ...

    def hourly_values(self) -> list[tuple[float, float]] | None:
        """(t_s, g/kWh) per hour for traces and API history; None for flat sources."""
        ...

    def refresh(self, t0_s: float, t1_s: float) -> None:
        """Fetch what is needed to cover a finished window; a no-op except for the API."""
        ...


# ---- helpers -------------------------------------------------------------------------------


def _floor_hour(t_s: float) -> float:
    return math.floor(t_s / HOUR_S) * HOUR_S


def _fmt_utc(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def _iso_utc(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_utc(text: str) -> float | None:
    """Unix time of an ISO-like timestamp; a timestamp without an offset is taken as UTC."""
    text = text.strip()
    if not text:
        return None
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _fmt_g(value: float) -> str:
    return f"{value:.0f}" if abs(value - round(value)) < 1e-9 else f"{value:.1f}"


def _check_intensity(value: float, what: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise CarbonSourceError(
            f"{what} must be a carbon intensity of 0 g/kWh or more, not {value}."
        )
    return float(value)


# ---- constant and zone ---------------------------------------------------------------------


class ConstantIntensity:
    kind = "constant"

    def __init__(self, g_per_kwh: float, description: str | None = None) -> None:
        self.g_per_kwh = _check_intensity(g_per_kwh, "The constant grid intensity")
        if description is None:
            description = f"constant {_fmt_g(self.g_per_kwh)} g/kWh"
            if self.g_per_kwh == PAPER_INTENSITY_GCO2E_PER_KWH:
                description += (
                    " (the paper's single Electricity Maps reading for Wisconsin, MISO, 2024-05-03)"
                )
        self.description = description
        self.notes: list[str] = []

    def intensity_at(self, t_s: float) -> float:
        return self.g_per_kwh

    def hourly_values(self) -> list[tuple[float, float]] | None:
        return None

    def refresh(self, t0_s: float, t1_s: float) -> None:
        return None

    def __repr__(self) -> str:
        return f"ConstantIntensity({self.g_per_kwh!r})"


class ZoneIntensity(ConstantIntensity):
    """A constant too: the zone's annual average, with its source and year."""

    kind = "zone"

    def __init__(self, zone: str) -> None:
        found = find_zone(zone)
        if found is None:
            raise CarbonSourceError(_unknown_zone_message(zone))
        self.zone, self.figure = found
        super().__init__(
            self.figure.g_per_kwh,
            f"{self.zone} annual average {self.figure.year} ({self.figure.source}): "
            f"{_fmt_g(self.figure.g_per_kwh)} g/kWh",
        )

    def __repr__(self) -> str:
        return f"ZoneIntensity({self.zone!r})"


def _unknown_zone_message(zone: str) -> str:
    close = difflib.get_close_matches(zone.strip().upper(), list(ZONES), n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return (
        f"Unknown grid zone '{zone}'{hint}: use an Electricity Maps zone id from the built-in "
        f"table, such as US-MIDW-MISO, US-CAL-CISO, US-MIDA-PJM, DE, FR or GB."
    )


# ---- hourly step function (trace and API history) --------------------------------------------


class _StepSeries:
    """Values that each hold from their time stamp until the next one (or one step past the last)."""

    def __init__(self, points: list[tuple[float, float]], step_s: float) -> None:
        self.times = [t for t, _ in points]
        self.values = [v for _, v in points]
        self.step_s = step_s

    def locate(self, t_s: float) -> tuple[float, str]:
        """(value, where): where is "in", "gap", "before" or "after"."""
        i = bisect.bisect_right(self.times, t_s) - 1
        if i < 0:
            return self.values[0], "before"
        if t_s >= self.times[-1] + self.step_s:
            return self.values[-1], "after"
        if t_s >= self.times[i] + self.step_s:
            return self.values[i], "gap"
        return self.values[i], "in"


_HEADER_SPACES = re.compile(r"\s+")


def _norm_header(text: str) -> str:
    return _HEADER_SPACES.sub(" ", text.replace("\ufeff", "").replace("₂", "2").strip().lower())


def _find_columns(header: list[str]) -> tuple[int | None, int | None, int | None, int | None]:
    """Indices of the datetime, life-cycle, direct and zone-id columns (None where absent)."""
    dt_col = lca_col = direct_col = zone_col = None
    for i, raw in enumerate(header):
        h = _norm_header(raw)
        if h == "datetime (utc)":
            dt_col = i
        elif h == "zone id":
            zone_col = i
        elif h.startswith("carbon intensity"):
            # "Carbon intensity gCO₂eq/kWh (Life cycle)" (current exports) or
            # "Carbon Intensity gCO₂eq/kWh (LCA)" (older ones); "(direct)" in both.
            if h.endswith("(life cycle)") or h.endswith("(lca)"):
                lca_col = i
            elif h.endswith("(direct)"):
                direct_col = i
    return dt_col, lca_col, direct_col, zone_col


class TraceIntensity:
    """An Electricity Maps hourly CSV export as a step function of time.

    The intensity at t is the value of the row whose hour contains t. The trace's clock can
    be shifted onto the run's by shift_h hours (trace times + shift_h). Outside the trace's
    span the nearest row is used and a note says so.
    """

    kind = "trace"

    def __init__(self, path: str | Path, shift_h: float = 0.0) -> None:
        self.path = Path(path)
        self.shift_h = float(shift_h)
        if not math.isfinite(self.shift_h):
            raise CarbonSourceError("The trace time shift must be a finite number of hours.")
        points, column, zone_id = _read_trace(self.path)
        shift_s = self.shift_h * HOUR_S
        self.points = [(t + shift_s, v) for t, v in points]
        diffs = [b[0] - a[0] for a, b in zip(self.points, self.points[1:], strict=False)]
        step_s = min(diffs) if diffs else HOUR_S
        self._series = _StepSeries(self.points, step_s)
        self.column = column  # "life cycle" or "direct"
        self.zone = zone_id
        self.notes: list[str] = []
        self._noted: set[str] = set()

        first, last = points[0][0], points[-1][0]
        unit = "hours" if step_s == HOUR_S else "rows"
        what = (
            "life-cycle intensity"
            if column == "life cycle"
            else "direct-emission intensity (the file has no life-cycle column)"
        )
        zone_part = f"zone {zone_id}, " if zone_id else ""
        shift_part = f", trace times shifted by {self.shift_h:+g} h" if self.shift_h else ""
        self.description = (
            f"hourly trace {self.path.name} ({zone_part}{len(points)} {unit} from "
            f"{_fmt_utc(first)} to {_fmt_utc(last)} UTC, {what}{shift_part})"
        )
        if column != "life cycle":
            self.notes.append(
                f"Trace {self.path.name} has no life-cycle column, so direct-emission intensity "
                f"was used; life-cycle figures are higher."
            )

    def intensity_at(self, t_s: float) -> float:
        value, where = self._series.locate(t_s)
        if where != "in" and where not in self._noted:
            self._noted.add(where)
            name = self.path.name
            if where == "before":
                self.notes.append(
                    f"Part of the run falls before trace {name} starts "
                    f"({_fmt_utc(self.points[0][0])} UTC after the shift); its first hour "
                    f"({_fmt_g(value)} g/kWh) was used there."
                )
            elif where == "after":
                self.notes.append(
                    f"Part of the run falls after trace {name} ends "
                    f"({_fmt_utc(self.points[-1][0])} UTC after the shift); its last hour "
                    f"({_fmt_g(value)} g/kWh) was used there."
                )
            else:
                self.notes.append(
                    f"Trace {name} has no row for some of the run's hours; the previous row's "
                    f"value was used there."
                )
        return value

    def hourly_values(self) -> list[tuple[float, float]] | None:
        return list(self.points)

    def refresh(self, t0_s: float, t1_s: float) -> None:
        return None

    def __repr__(self) -> str:
        return f"TraceIntensity({str(self.path)!r}, shift_h={self.shift_h!r})"


def _read_trace(path: Path) -> tuple[list[tuple[float, float]], str, str | None]:
    """(sorted (t_s, g/kWh) rows, "life cycle" or "direct", zone id or None)."""
    try:
        # utf-8-sig: exports opened and re-saved in a spreadsheet often gain a byte-order mark.
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(enumerate(csv.reader(fh), start=1))
    except FileNotFoundError:
        raise CarbonSourceError(f"Trace file {path} does not exist.") from None
    except IsADirectoryError:
        raise CarbonSourceError(f"Trace file {path} is a folder, not a CSV file.") from None
    except UnicodeDecodeError:
        raise CarbonSourceError(f"Trace file {path} is not a UTF-8 text CSV file.") from None
    except csv.Error as exc:
        raise CarbonSourceError(f"Trace file {path} is not a readable CSV file ({exc}).") from None
    except OSError as exc:
        raise CarbonSourceError(f"Trace file {path} cannot be read: {exc.strerror}.") from None

    rows = [(n, r) for n, r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise CarbonSourceError(f"Trace file {path} is empty.")
    header_line, header = rows[0]
    dt_col, lca_col, direct_col, zone_col = _find_columns(header)
    if dt_col is None:
        raise CarbonSourceError(
            f"Trace file {path}, line {header_line}: no 'Datetime (UTC)' column, so this is not "
            f"an Electricity Maps hourly export."
        )
    if lca_col is not None:
        value_col, column = lca_col, "life cycle"
    elif direct_col is not None:
        value_col, column = direct_col, "direct"
    else:
        raise CarbonSourceError(
            f"Trace file {path}, line {header_line}: no carbon-intensity column (expected "
            f"'Carbon intensity gCO₂eq/kWh (Life cycle)' or 'Carbon Intensity gCO₂eq/kWh (LCA)')."
        )
    needed = max(dt_col, value_col) + 1
    points: dict[float, float] = {}
    zone_id: str | None = None
    for line, row in rows[1:]:
        if len(row) < needed:
            raise CarbonSourceError(
                f"Trace file {path}, line {line}: {len(row)} fields where the header has "
                f"{len(header)}."
            )
        t_s = _parse_utc(row[dt_col])
        if t_s is None:
            raise CarbonSourceError(
                f"Trace file {path}, line {line}: '{row[dt_col]}' is not a date and time."
            )
        text = row[value_col].strip()
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise CarbonSourceError(
                f"Trace file {path}, line {line}: carbon intensity '{text}' is not a number of "
                f"0 g/kWh or more."
            )
        if t_s in points:
            raise CarbonSourceError(
                f"Trace file {path}, line {line}: the hour {_fmt_utc(t_s)} UTC appears twice."
            )
        points[t_s] = value
        if zone_col is not None and zone_id is None and len(row) > zone_col:
            zone_id = row[zone_col].strip() or None
    if not points:
        raise CarbonSourceError(f"Trace file {path} has a header but no hourly rows.")
    return sorted(points.items()), column, zone_id


# ---- Electricity Maps API v3 -----------------------------------------------------------------


class ElectricityMapsIntensity:
    """Electricity Maps API v3: the latest reading at start, then each finished window's hours.

    The latest value stands in for live display until refresh(t0, t1) has fetched the hours of
    a finished window from /carbon-intensity/past-range. The token travels only in the
    auth-token header; it is in no message, repr or description.
    """

    kind = "electricitymaps"

    def __init__(
        self,
        zone: str,
        token: str,
        *,
        base_url: str = DEFAULT_EMAPS_URL,
        http_client: Any = None,
        timeout_s: float = 10.0,
    ) -> None:
        if not token:
            raise CarbonSourceError(
                f"The Electricity Maps source needs an API token: set {EMAPS_TOKEN_ENV} or "
                f"emaps_token in the config file."
            )
        self.zone = zone.strip()
        if not self.zone:
            raise CarbonSourceError("Name an Electricity Maps zone, such as FR or US-MIDW-MISO.")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._client = http_client
        self.timeout_s = timeout_s
        self.notes: list[str] = []
        self._hours: dict[float, float] = {}
        latest = self._get("/carbon-intensity/latest", {"zone": self.zone}, "the latest reading")
        value, t_s = _parse_emaps_entry(latest, self.zone, "the latest reading")
        if value is None:
            raise CarbonSourceError(
                f"Electricity Maps has no current carbon intensity for zone {self.zone}."
            )
        self.latest_g_per_kwh = value
        self.latest_t_s = t_s

    @property
    def description(self) -> str:
        when = f" at {_fmt_utc(self.latest_t_s)} UTC" if self.latest_t_s is not None else ""
        text = (
            f"Electricity Maps API v3, zone {self.zone}: latest {_fmt_g(self.latest_g_per_kwh)} "
            f"g/kWh{when}; finished points use each hour's value"
        )
        if self._hours:
            text += f" ({len(self._hours)} hours fetched)"
        return text

    def intensity_at(self, t_s: float) -> float:
        return self._hours.get(_floor_hour(t_s), self.latest_g_per_kwh)

    def hourly_values(self) -> list[tuple[float, float]] | None:
        return sorted(self._hours.items()) if self._hours else None

    def refresh(self, t0_s: float, t1_s: float) -> None:
        """Fetch the hourly values of a finished window [t0_s, t1_s].

        Never raises: the source was checked at construction, and a sweep in progress must not
        be lost to a network hiccup. A failed fetch becomes a note, and the latest reading
        stands in for the hours it could not get.
        """
        if t1_s < t0_s:
            t0_s, t1_s = t1_s, t0_s
        start = _floor_hour(t0_s)
        end = _floor_hour(t1_s) + HOUR_S
        try:
            self._fetch_range(start, end)
        except CarbonSourceError as exc:
            self.notes.append(
                f"{exc} The latest reading ({_fmt_g(self.latest_g_per_kwh)} g/kWh) was used for "
                f"the hours from {_fmt_utc(start)} to {_fmt_utc(end)} UTC."
            )
            return
        wanted = int(round((end - start) / HOUR_S))
        missing = sum(1 for k in range(wanted) if start + k * HOUR_S not in self._hours)
        if missing:
            self.notes.append(
                f"Electricity Maps had no hourly value yet for {missing} of the {wanted} hours "
                f"from {_fmt_utc(start)} UTC; the latest reading "
                f"({_fmt_g(self.latest_g_per_kwh)} g/kWh) was used there."
            )

    def _fetch_range(self, start: float, end: float) -> None:
        s = start
        while s < end:
            e = min(s + _EMAPS_MAX_RANGE_S, end)
            data = self._get(
                "/carbon-intensity/past-range",
                {"zone": self.zone, "start": _iso_utc(s), "end": _iso_utc(e)},
                "the hourly history",
            )
            entries = data.get("data")
            if not isinstance(entries, list):
                raise CarbonSourceError(
                    f"Electricity Maps' past-range reply for zone {self.zone} has no 'data' list."
                )
            for entry in entries:
                value, t_s = _parse_emaps_entry(entry, self.zone, "the hourly history")
                if value is not None and t_s is not None:
                    self._hours[_floor_hour(t_s)] = value
            s = e

    def _get(self, path: str, params: dict[str, str], what: str) -> dict[str, Any]:
        import httpx  # imported here so that the core starts without it

        url = f"{self.base_url}{path}"
        headers = {"auth-token": self._token}
        try:
            if self._client is not None:
                resp = self._client.get(url, params=params, headers=headers, timeout=self.timeout_s)
            else:
                with httpx.Client(timeout=self.timeout_s) as client:
                    resp = client.get(url, params=params, headers=headers)
        except httpx.TimeoutException:
            raise CarbonSourceError(
                f"Electricity Maps did not answer within {self.timeout_s:g} s when asked for "
                f"{what} of zone {self.zone}."
            ) from None
        except httpx.HTTPError as exc:
            raise CarbonSourceError(
                f"Electricity Maps cannot be reached at {self.base_url} ({type(exc).__name__})."
            ) from None
        status = resp.status_code
        if status in (401, 403):
            raise CarbonSourceError(
                f"Electricity Maps refused the API token (HTTP {status}); check {EMAPS_TOKEN_ENV} "
                f"or emaps_token and that the token covers zone {self.zone}."
            )
        if status >= 400:
            detail = _server_message(resp, self._token)
            detail = f": {detail}" if detail else ""
            raise CarbonSourceError(
                f"Electricity Maps answered HTTP {status} when asked for {what} of zone "
                f"{self.zone}{detail}."
            )
        try:
            data = resp.json()
        except ValueError:
            raise CarbonSourceError(
                f"Electricity Maps sent a reply that is not JSON when asked for {what} of zone "
                f"{self.zone}."
            ) from None
        if not isinstance(data, dict):
            raise CarbonSourceError(
                f"Electricity Maps sent JSON that is not the documented object when asked for "
                f"{what} of zone {self.zone}."
            )
        return data

    def __repr__(self) -> str:
        return f"ElectricityMapsIntensity(zone={self.zone!r}, base_url={self.base_url!r})"


def _server_message(resp: Any, token: str) -> str:
    """A short reason from an error reply, never echoing the token."""
    try:
        body = resp.json()
    except ValueError:
        return ""
    msg = ""
    if isinstance(body, dict):
        for key in ("message", "error", "detail"):
            if isinstance(body.get(key), str):
                msg = body[key]
                break
    msg = " ".join(msg.split()).rstrip(".")
    if token and token in msg:
        msg = msg.replace(token, "***")
    return msg[:160]


def _parse_emaps_entry(entry: Any, zone: str, what: str) -> tuple[float | None, float | None]:
    """(g/kWh or None when the hour has no value, Unix time or None)."""
    if not isinstance(entry, dict):
        raise CarbonSourceError(
            f"Electricity Maps sent an entry that is not an object in {what} of zone {zone}."
        )
    if "carbonIntensity" not in entry:
        raise CarbonSourceError(
            f"Electricity Maps' reply has no carbonIntensity in {what} of zone {zone}."
        )
    value = entry["carbonIntensity"]
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise CarbonSourceError(
            f"Electricity Maps sent a carbonIntensity that is not a number in {what} of zone {zone}."
        )
    if value is not None and (not math.isfinite(value) or value < 0):
        raise CarbonSourceError(
            f"Electricity Maps sent a negative or infinite carbonIntensity in {what} of zone {zone}."
        )
    raw_t = entry.get("datetime")
    t_s = _parse_utc(raw_t) if isinstance(raw_t, str) else None
    if raw_t is not None and t_s is None:
        raise CarbonSourceError(
            f"Electricity Maps sent a datetime '{raw_t}' that is not a date in {what} of zone {zone}."
        )
    return (None if value is None else float(value)), t_s


# ---- choosing a source ---------------------------------------------------------------------


def make_intensity_source(
    *,
    intensity: float = PAPER_INTENSITY_GCO2E_PER_KWH,
    zone: str | None = None,
    trace: str | None = None,
    trace_shift_h: float = 0.0,
    emaps_zone: str | None = None,
    emaps_token: str | None = None,
    http_client: Any = None,
    emaps_base_url: str | None = None,
) -> IntensitySource:
    """The source asked for: trace > Electricity Maps API > zone > constant."""
    if trace:
        return TraceIntensity(trace, shift_h=trace_shift_h)
    if emaps_zone:
        token = emaps_token or os.environ.get(EMAPS_TOKEN_ENV, "")
        return ElectricityMapsIntensity(
            emaps_zone,
            token,
            base_url=emaps_base_url or DEFAULT_EMAPS_URL,
            http_client=http_client,
        )
    if zone:
        return ZoneIntensity(zone)
    return ConstantIntensity(intensity)


# ---- the figures -----------------------------------------------------------------------------


def operational_gco2e(
    energy_chunks: Sequence[tuple[float, float]], source: IntensitySource, pue: float
) -> float:
    """Grams of CO2e: sum of energy_j / 3.6e6 [kWh] x intensity_at(t) [g/kWh] x PUE.

    Each chunk is (t_s, energy_j): the energy of one telemetry interval attributed to one
    instant (its midpoint), so the right hour of a trace is charged for it.
    """
    total = 0.0
    for t_s, energy_j in energy_chunks:
        total += energy_j / J_PER_KWH * source.intensity_at(t_s)
    return total * pue


def mean_intensity(
    energy_chunks: Sequence[tuple[float, float]], source: IntensitySource
) -> float | None:
    """Energy-weighted mean gCO2e/kWh over the chunks; None when they hold no energy."""
    energy = sum(e for _, e in energy_chunks)
    if energy <= 0:
        return None
    return sum(e * source.intensity_at(t) for t, e in energy_chunks) / energy


def embodied_gco2e(
    specs: Sequence[GpuSpec | None], duration_s: float, lifetime_years: float
) -> float | None:
    """Embodied grams of the GPUs in use over duration_s, amortised over lifetime_years.

    sum(kgCO2e) x 1000 x duration_s / (lifetime_years x 365.25 days). None (the caller warns,
    naming the GPU) when there is no GPU or any GPU or its embodied figure is unknown.
    """
    if not specs or lifetime_years <= 0:
        return None
    kg = 0.0
    for spec in specs:
        if spec is None or spec.embodied_kgco2e is None:
            return None
        kg += spec.embodied_kgco2e
    return kg * 1000.0 * duration_s / (lifetime_years * SECONDS_PER_YEAR)


def gco2e_per_token_at(
    j_per_token: float,
    intensity_g_per_kwh: float,
    pue: float,
    embodied_gco2e_per_token: float | None = None,
) -> float:
    """Carbon per token had the grid been at a given intensity (for cleanest/dirtiest hours)."""
    g = j_per_token / J_PER_KWH * intensity_g_per_kwh * pue
    return g + (embodied_gco2e_per_token or 0.0)


@dataclass(frozen=True)
class Recommendation:
    batch_size: int
    lowest_carbon_batch: int  # the batch with the lowest carbon figure itself
    basis: str  # "total" (operational + embodied) or "operational"
    reason: str  # one sentence for the summary


def _carbon_interval(p: PointResult, use_total: bool) -> tuple[float, float] | None:
    """(carbon per token, 95% half-width) on the chosen basis. The interval is the operational
    figure's, scaled to the basis: embodied carbon per token moves with the same tokens/s, and
    its own inputs (footprint, lifetime) are constants, not measurements. A point without an
    interval (a run made before intervals existed) compares exactly."""
    c = p.total_gco2e_per_token if use_total else p.gco2e_per_token
    if c is None:
        return None
    rel = 0.0
    if p.gco2e_per_token_ci95 is not None and p.gco2e_per_token:
        rel = p.gco2e_per_token_ci95 / p.gco2e_per_token
    return c, abs(c) * rel


def recommend(
    points: Sequence[PointResult],
    slo_s_per_token: float,
    slo_tpot_p90_s: float | None = None,
) -> Recommendation | None:
    """The batch size with the lowest carbon per token among the points that meet the SLO.

    A point qualifies when it ran to the end (status ok), its user-perceived s/token is at most
    slo_s_per_token and, when slo_tpot_p90_s is given, its TPOT p90 is at most that. Carbon is
    total gCO2e/token (operational + embodied) when every qualifying point has it; otherwise
    operational gCO2e/token for all of them, so that points are never compared on different
    bases. A difference that lies inside the two points' 95% intervals is no difference: among
    the points tied so with the lowest, the one with the lowest s/token wins (then the higher
    throughput, then the larger batch), and the reason says so. None if nothing qualifies.
    """
    ok = []
    for p in points:
        if p.status != PointStatus.OK or p.s_per_token is None or p.s_per_token > slo_s_per_token:
            continue
        if slo_tpot_p90_s is not None and (p.tpot_p90_s is None or p.tpot_p90_s > slo_tpot_p90_s):
            continue
        ok.append(p)
    if not ok:
        return None
    use_total = all(p.total_gco2e_per_token is not None for p in ok)
    scored = [(ci, p) for p in ok if (ci := _carbon_interval(p, use_total)) is not None]
    if not scored:
        return None
    (best_c, best_h), best = min(scored, key=lambda s: (s[0][0], -s[1].batch_size))
    tied = [(c, p) for (c, h), p in scored
            if abs(c - best_c) <= h + best_h or math.isclose(c, best_c, rel_tol=1e-9, abs_tol=1e-15)]
    winner_c, winner = min(tied, key=lambda t: (t[1].s_per_token or 0.0,
                                                -(t[1].tokens_per_s or 0.0), -t[1].batch_size))
    basis = "total" if use_total else "operational"
    if math.isclose(winner_c, best_c, rel_tol=1e-9, abs_tol=1e-15):
        reason = f"batch {winner.batch_size}: lowest {basis} gCO2e/token within {slo_s_per_token:g} s/token"
    else:
        reason = (f"batch {winner.batch_size}: its {basis} gCO2e/token lies within the 95% "
                  f"intervals of batch {best.batch_size}'s, the lowest, so the lower-latency "
                  f"batch is recommended ({winner.s_per_token:.3g} vs {best.s_per_token:.3g} s/token)")
    return Recommendation(winner.batch_size, best.batch_size, basis, reason)


def lowest_carbon_batch(points: Sequence[PointResult]) -> int | None:
    """The point that ran to the end with the least carbon per token, whatever its latency: the
    one home of the "lowest carbon" mark in the app, the charts and the summary. Carbon is total
    gCO2e/token where every such point has it, otherwise operational for all (the basis
    `recommend` uses); a tie goes to the larger batch, which serves more users for the same
    carbon (as `recommend` breaks it); a batch size measured twice counts its later point."""
    by_batch = {p.batch_size: p for p in points if p.status == PointStatus.OK}
    use_total = bool(by_batch) and all(
        p.total_gco2e_per_token is not None for p in by_batch.values())
    scored = [(c, b) for b, p in by_batch.items()
              if (c := p.total_gco2e_per_token if use_total else p.gco2e_per_token) is not None
              and math.isfinite(c)]
    if not scored:
        return None
    best = min(c for c, _ in scored)
    return max(b for c, b in scored if math.isclose(c, best, rel_tol=1e-9, abs_tol=1e-15))


def recommend_batch(
    points: Sequence[PointResult],
    slo_s_per_token: float,
    slo_tpot_p90_s: float | None = None,
) -> int | None:
    """`recommend`'s batch size alone."""
    r = recommend(points, slo_s_per_token, slo_tpot_p90_s)
    return r.batch_size if r is not None else None


def intensity_extremes(source: IntensitySource) -> tuple[float, float] | None:
    """(cleanest, dirtiest) hourly g/kWh of a trace or API history spanning a day or more.

    None for flat sources or shorter histories: a cleanest hour of a 3-hour history says
    nothing about when to run.
    """
    values = source.hourly_values()
    if not values:
        return None
    times = sorted(t for t, _ in values)
    span_s = times[-1] - times[0] + HOUR_S  # the last hour counts in full
    if span_s < 24 * HOUR_S:
        return None
    gs = [g for _, g in values]
    return min(gs), max(gs)
