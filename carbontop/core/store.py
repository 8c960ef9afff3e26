"""The run directory: written as the sweep goes, read back without a GPU.

    run.toml       configuration, environment, workload, carbon source, status (rewritten atomically)
    points.csv     one row per sweep point (PointResult's fields), appended as each point ends
    requests.csv   one row per request and point
    power.csv      every telemetry sample, with its time and device
    engine.log     what the engine child printed

Rows are flushed and fsynced as they are written, so a crash or a power cut loses at most the
point that was running.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from carbontop.core.records import PointResult, PointStatus, RequestRecord, Sample
from carbontop.errors import CarbontopError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

POINT_COLUMNS = [f.name for f in dataclasses.fields(PointResult)]
REQUEST_COLUMNS = [f.name for f in dataclasses.fields(RequestRecord)]
POWER_COLUMNS = [f.name for f in dataclasses.fields(Sample)]


def new_run_dir(base: Path, label: str = "") -> Path:
    """A fresh folder under `base` named for now (and `label`); the caller chooses `base`."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{label}" if label else stamp
    path = base / name
    n = 1
    while path.exists():
        n += 1
        path = base / f"{name}-{n}"
    return path


def _toml_clean(value: Any) -> Any:
    """TOML has no null: drop Nones, stringify what it cannot hold."""
    if isinstance(value, dict):
        return {str(k): _toml_clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_toml_clean(v) for v in value if v is not None]
    if isinstance(value, (str, int, float, bool, dt.datetime, dt.date)):
        return value
    return str(value)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, PointStatus):
        return value.value
    if isinstance(value, float):
        return repr(value)
    return str(value)


class _CsvAppender:
    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = list(columns)
        new = not path.exists()
        self._fh = open(path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._fh)
        if new:
            self._writer.writerow(self.columns)
            self._sync()

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        wrote = False
        for row in rows:
            self._writer.writerow([_fmt(row.get(c)) for c in self.columns])
            wrote = True
        if wrote:
            self._sync()

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


class RunWriter:
    """Writes one run directory as the sweep goes."""

    def __init__(self, run_dir: Path, meta: dict[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CarbontopError(
                f"Cannot create the run directory {self.run_dir}: {exc.strerror}."
            ) from None
        if (self.run_dir / "points.csv").exists():
            raise CarbontopError(
                f"{self.run_dir} already holds a run; choose another --out or remove it."
            )
        self.meta: dict[str, Any] = dict(meta)
        self.meta.setdefault("status", {})
        self.meta["status"].update({"state": "running", "started": dt.datetime.now().astimezone()})
        self._write_meta()
        self._points = _CsvAppender(self.run_dir / "points.csv", POINT_COLUMNS)
        self._requests = _CsvAppender(self.run_dir / "requests.csv", REQUEST_COLUMNS)
        self._power = _CsvAppender(self.run_dir / "power.csv", POWER_COLUMNS)

    @property
    def engine_log(self) -> Path:
        return self.run_dir / "engine.log"

    def _write_meta(self) -> None:
        tmp = self.run_dir / "run.toml.tmp"
        with open(tmp, "wb") as fh:
            tomli_w.dump(_toml_clean(self.meta), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.run_dir / "run.toml")

    def update_meta(self, section: str, values: dict[str, Any]) -> None:
        self.meta.setdefault(section, {}).update(values)
        self._write_meta()

    def write_point(self, point: PointResult, records: Sequence[RequestRecord] = ()) -> None:
        self._requests.write(dataclasses.asdict(r) for r in records)
        self._points.write([dataclasses.asdict(point)])

    def write_samples(self, samples: Sequence[Sample]) -> None:
        self._power.write(dataclasses.asdict(s) for s in samples)

    def finish(self, state: str, **summary: Any) -> None:
        self.meta["status"].update(
            {"state": state, "finished": dt.datetime.now().astimezone(), **summary}
        )
        self._write_meta()
        for appender in (self._points, self._requests, self._power):
            appender.close()


# ---- reading ------------------------------------------------------------------------------


def _num(text: str) -> Any:
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _read_csv(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = []
        for row in reader:
            if None in row.values():  # a row cut short by a crash mid-write
                continue
            rows.append({k: _num(v) for k, v in row.items()})
        return rows


@dataclass
class SavedRun:
    path: Path
    config: dict[str, Any]
    environment: dict[str, Any]
    meta: dict[str, Any]
    status: str
    points: list[dict[str, Any]]
    requests_count: int
    power: list[dict[str, Any]] = field(default_factory=list)

    def point_results(self) -> list[PointResult]:
        names = set(POINT_COLUMNS)
        out = []
        for row in self.points:
            kw = {k: v for k, v in row.items() if k in names}
            kw["status"] = PointStatus(str(kw.get("status", "ok")))
            kw["message"] = "" if kw.get("message") is None else str(kw["message"])
            kw["energy_source"] = (
                "" if kw.get("energy_source") is None else str(kw["energy_source"])
            )
            out.append(PointResult(**kw))
        return out


def is_run_dir(path: Path) -> bool:
    return (path / "run.toml").exists() and (path / "points.csv").exists()


def load_run(path: Path, *, with_power: bool = True) -> SavedRun:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CarbontopError(f"{path} does not exist or is not a directory.")
    if not is_run_dir(path):
        raise CarbontopError(
            f"{path} is not a carbontop run directory (no run.toml and points.csv)."
        )
    try:
        with open(path / "run.toml", "rb") as fh:
            meta = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CarbontopError(f"{path / 'run.toml'} cannot be read: {exc}.") from None
    with (
        open(path / "requests.csv", encoding="utf-8")
        if (path / "requests.csv").exists()
        else open(os.devnull) as fh
    ):
        n_requests = max(sum(1 for _ in fh) - 1, 0)
    return SavedRun(
        path=path,
        config=meta.get("run", {}),
        environment=meta.get("environment", {}),
        meta=meta,
        status=str(meta.get("status", {}).get("state", "unknown")),
        points=_read_csv(path / "points.csv"),
        requests_count=n_requests,
        power=_read_csv(path / "power.csv") if with_power else [],
    )


def list_runs(base: Path) -> list[Path]:
    if not base.is_dir():
        return []
    return sorted((p for p in base.iterdir() if is_run_dir(p)), reverse=True)


def export_points_csv(run_dir: Path, dest: Path) -> Path:
    """Write the run's points table to `dest` (a file, or a folder that gets points.csv)."""
    import pandas as pd  # pandas only where a user asks for an export

    run = load_run(run_dir, with_power=False)
    dest = Path(dest).expanduser()
    if dest.is_dir():
        dest = dest / f"{run.path.name}-points.csv"
    frame = pd.DataFrame(run.points, columns=POINT_COLUMNS)
    frame.insert(0, "run", run.path.name)
    frame.insert(1, "model", run.config.get("model", ""))
    frame.insert(2, "gpu", ", ".join(run.environment.get("devices", [])))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(dest, index=False)
    except OSError as exc:
        raise CarbontopError(f"Cannot write {dest}: {exc.strerror}.") from None
    return dest
