"""The run directory: written as the sweep goes, read back without a GPU.

    run.toml       configuration, environment, workload, carbon source, status (rewritten atomically)
    points.csv     one row per sweep point (PointResult's fields), appended as each point ends
    requests.csv   one row per request and point
    power.csv      every telemetry sample, with its time and device
    engine.log     what the engine child printed
    carbontop.log  what carbontop itself noted and carried on from (a failing viewer, ...), with
                   tracebacks; only where there was something

Rows are flushed and fsynced as they are written, whole rows only, and run.toml is replaced
atomically, so a crash or a power cut at any moment leaves readable files and loses at most the
point that was running. run.toml names the process writing it (see liveness.py): a run whose
process is gone reads `interrupted`, never `running`. A small reserve file is given back when the
disk fills, so that the end of the sweep can still be recorded.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import errno
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from carbontop.core.liveness import Heartbeat, effective_state, owner_record
from carbontop.core.records import PointResult, PointStatus, RequestRecord, Sample, StepTimeline
from carbontop.core.run_meta import RunMeta
from carbontop.core.tomlcompat import tomllib
from carbontop.errors import CarbontopError

POINT_COLUMNS = [f.name for f in dataclasses.fields(PointResult)]
REQUEST_COLUMNS = [f.name for f in dataclasses.fields(RequestRecord)]
POWER_COLUMNS = [f.name for f in dataclasses.fields(Sample)]
# one row per engine step (or streamed chunk) of every point: StepTimeline's columns, keyed by
# the point (batch size and repeat), so that a window's steadiness can be checked afterwards
STEP_COLUMNS = ["batch_size", "repeat", "t_s", "tokens", "live", "kv_tokens_read", "decode"]
_BOOL_COLUMNS = [f.name for f in dataclasses.fields(PointResult) if f.type in ("bool", bool)]


def new_run_dir(base: Path, label: str = "") -> Path:
    """Claim a fresh folder under `base` (the caller chooses it) named for now (and `label`).

    The folder is created here, with an exclusive mkdir, so that two sweeps started in the same
    second never share one: the second gets a `-2` suffix.
    """
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{label}" if label else stamp
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunWriteError(f"Cannot create the runs folder {base}: {exc.strerror}.") from None
    n = 1
    while True:
        path = base / (name if n == 1 else f"{name}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
        except OSError as exc:
            raise RunWriteError(f"Cannot create the run directory {path}: {exc.strerror}.") from None


class RunWriteError(CarbontopError):
    """The run directory cannot be written (no space, no permission, a read-only file system)."""


def _write_error(path: Path, exc: OSError) -> RunWriteError:
    if exc.errno == errno.ENOSPC:
        why = "the disk is full"
    elif exc.errno == errno.EDQUOT:
        why = "the disk quota is used up"
    else:
        why = (exc.strerror or str(exc)).lower().rstrip(".")
    return RunWriteError(f"Cannot write {path}: {why}.")


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
    """Appends whole rows: each batch of rows goes down in one write and is fsynced; a write that
    fails half-way (a full disk) is cut back, so the file never ends in half a row."""

    def __init__(self, path: Path, columns: Sequence[str],
                 keep: Callable[[dict[str, str]], bool] | None = None) -> None:
        self.path = path
        self.columns = list(columns)
        if path.exists() and path.stat().st_size > 0:
            _rewrite_rows(path, self.columns, keep)
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            new = os.fstat(self._fd).st_size == 0
        except OSError as exc:
            raise _write_error(path, exc) from None
        if new:
            self._append([self.columns])

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        self._append([[_fmt(row.get(c)) for c in self.columns] for row in rows])

    def _append(self, rows: list[list[str]]) -> None:
        if not rows or self._fd is None:
            return
        buf = io.StringIO()
        csv.writer(buf).writerows(rows)
        data = buf.getvalue().encode("utf-8")
        size = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, size)  # freeing space always works, even on a full disk
            except OSError:
                pass
            raise _write_error(self.path, exc) from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _rewrite_rows(path: Path, columns: list[str], keep: Callable[[dict[str, str]], bool] | None) -> None:
    """Before a resumed sweep appends to an existing table: rows cut short are dropped, so are
    those `keep` refuses, and the columns are brought to this version's (by name), so that new
    rows line up with the header. Written beside the file and renamed over it."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        rows = [dict(zip(header, r, strict=True)) for r in reader if len(r) == len(header)]
    kept = [r for r in rows if keep is None or keep(r)]
    if header == columns and len(kept) == len(rows) and _ends_in_newline(path):
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            writer.writerows([r.get(c, "") for c in columns] for r in kept)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _write_error(path, exc) from None


def _ends_in_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


# Kept in the run directory while a sweep writes to it, and given back when the disk fills, so
# that the final state still fits into run.toml. Several times a run.toml's usual size.
RESERVE_NAME = ".carbontop-reserve"
RUN_LOG_NAME = "carbontop.log"
RESERVE_BYTES = 256 * 1024


class RunWriter:
    """Writes one run directory as the sweep goes.

    `resume=True` reopens a run directory that a sweep left cancelled or interrupted: its rows are
    kept (the points `keep_point` accepts) and new rows appended.
    """

    def __init__(self, run_dir: Path, meta: dict[str, Any], *, resume: bool = False,
                 keep_point: Callable[[dict[str, str]], bool] | None = None) -> None:
        self.run_dir = Path(run_dir)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunWriteError(
                f"Cannot create the run directory {self.run_dir}: {exc.strerror}."
            ) from None
        if not resume:
            _refuse_existing(self.run_dir)
        self.meta: dict[str, Any] = dict(meta)
        status = self.meta.setdefault("status", {})
        for stale in ("finished", "message", "recommended_batch", "largest_ok_batch",
                      "smallest_failed_batch", "points"):
            status.pop(stale, None)
        status.update({"state": "running", **owner_record()})
        if resume:
            status["resumed"] = dt.datetime.now().astimezone()
        else:
            status["started"] = dt.datetime.now().astimezone()
        self._make_reserve()
        self._write_meta()
        self._points = _CsvAppender(self.run_dir / "points.csv", POINT_COLUMNS, keep_point)
        self._requests = _CsvAppender(self.run_dir / "requests.csv", REQUEST_COLUMNS)
        self._power = _CsvAppender(self.run_dir / "power.csv", POWER_COLUMNS)
        self._steps = _CsvAppender(self.run_dir / "steps.csv", STEP_COLUMNS)
        self._heartbeat = Heartbeat(self.run_dir / "run.toml")
        self._heartbeat.start()
        self.finished = False

    @property
    def engine_log(self) -> Path:
        return self.run_dir / "engine.log"

    @property
    def run_log(self) -> Path:
        return self.run_dir / RUN_LOG_NAME

    def _make_reserve(self) -> None:
        path = self.run_dir / RESERVE_NAME
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as exc:
            raise _write_error(path, exc) from None
        try:
            # real blocks, not a sparse file: only allocated space can be handed back
            os.write(fd, b"\0" * RESERVE_BYTES)
            os.fsync(fd)
        except OSError:
            pass  # a disk already too full for the reserve: the run still starts
        finally:
            os.close(fd)

    def _write_meta(self) -> None:
        try:
            self._replace_meta()
        except OSError as exc:
            reserve = self.run_dir / RESERVE_NAME
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not reserve.exists():
                raise _write_error(self.run_dir / "run.toml", exc) from None
            reserve.unlink()  # give the reserve back and try once more
            try:
                self._replace_meta()
            except OSError as again:
                raise _write_error(self.run_dir / "run.toml", again) from None

    def _replace_meta(self) -> None:
        """Write run.toml beside itself and rename it into place: a reader (or a crash) only ever
        sees the old file or the new one, whole."""
        fd, tmp = tempfile.mkstemp(prefix=".run.toml.", dir=self.run_dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                tomli_w.dump(_toml_clean(self.meta), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.run_dir / "run.toml")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # the rename itself reaches the disk
            dir_fd = os.open(self.run_dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def update_meta(self, section: str, values: dict[str, Any]) -> None:
        self.meta.setdefault(section, {}).update(values)
        self._write_meta()

    def write_point(self, point: PointResult, records: Sequence[RequestRecord] = (),
                    timeline: StepTimeline | None = None) -> None:
        self._requests.write(dataclasses.asdict(r) for r in records)
        if timeline is not None:
            n = len(timeline.end_s)
            kv = timeline.kv_tokens_read or (None,) * n
            decode = timeline.decode or (None,) * n
            self._steps.write(
                {"batch_size": point.batch_size, "repeat": point.repeat, "t_s": t, "tokens": tokens,
                 "live": live, "kv_tokens_read": k, "decode": d}
                for t, tokens, live, k, d in zip(timeline.end_s, timeline.tokens, timeline.live, kv,
                                                 decode, strict=True))
        self._points.write([dataclasses.asdict(point)])

    def write_samples(self, samples: Sequence[Sample]) -> None:
        self._power.write(dataclasses.asdict(s) for s in samples)

    def finish(self, state: str, **summary: Any) -> None:
        """Record how the sweep ended. Always closes the files, even where run.toml cannot be
        written (then the run reads `interrupted` once this process is gone)."""
        self._heartbeat.stop()
        self.meta["status"].update(
            {"state": state, "finished": dt.datetime.now().astimezone(), **summary}
        )
        try:
            self._write_meta()
        finally:
            self.finished = True
            for appender in (self._points, self._requests, self._power, self._steps):
                appender.close()
            with contextlib.suppress(OSError):
                (self.run_dir / RESERVE_NAME).unlink()


def _refuse_existing(run_dir: Path) -> None:
    if (run_dir / "points.csv").exists():
        raise CarbontopError(
            f"{run_dir} already holds a run; choose another --out, or carry it on with "
            f"`carbontop resume {run_dir}`."
        )
    if (run_dir / "run.toml").exists():
        raise CarbontopError(
            f"{run_dir} holds a run.toml that is not a carbontop run (your configuration?), "
            "which a sweep would overwrite; choose another --out."
        )


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


@dataclass(frozen=True)
class SavedRun:
    """A run directory read back: the same records a live sweep hands the views."""

    path: Path
    meta: RunMeta
    state: str  # the recorded state, or `interrupted` where the process that ran it is gone
    points: tuple[PointResult, ...]
    requests_count: int
    samples: tuple[Sample, ...] = ()
    state_note: str = ""  # why a run recorded as running is shown as interrupted
    # run.toml's [run] table as written: carbontop.config reads it back into a RunConfig (to run
    # the sweep again or carry it on); views read meta.settings
    config: dict[str, Any] = field(default_factory=dict)


def point_from_row(row: dict[str, Any]) -> PointResult:
    """A points.csv row (as _read_csv reads it) back as a PointResult."""
    names = set(POINT_COLUMNS)
    kw = {k: v for k, v in row.items() if k in names}
    kw["status"] = PointStatus(str(kw.get("status", "ok")))
    kw["message"] = "" if kw.get("message") is None else str(kw["message"])
    for name in ("energy_source", "batching", "energy_per_gpu_j"):
        kw[name] = "" if kw.get(name) is None else str(kw[name])
    for name in _BOOL_COLUMNS:
        if name in kw:
            kw[name] = kw[name] in (True, "True", "true", 1)
    return PointResult(**kw)


_SAMPLE_INTS = ("gpu_index", "mem_used_bytes", "mem_total_bytes")  # the rest are floats


def sample_from_row(row: dict[str, Any]) -> Sample | None:
    """A power.csv row back as a Sample; None for a row with no time or device."""
    if row.get("t_s") is None or row.get("gpu_index") is None:
        return None
    names = set(POWER_COLUMNS)
    kw: dict[str, Any] = {}
    for k, v in row.items():
        if k not in names:
            continue
        if isinstance(v, str):  # a number column holding text: not a reading
            v = None
        kw[k] = int(v) if v is not None and k in _SAMPLE_INTS else (None if v is None else float(v))
    kw.setdefault("power_w", None)
    kw.setdefault("energy_j", None)
    return Sample(**kw)


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
    for table in ("run", "environment", "status"):
        if not isinstance(meta.get(table, {}), dict):
            raise CarbontopError(f"{path / 'run.toml'} is not a carbontop run: [{table}] is not a table.")
    try:
        with (
            open(path / "requests.csv", encoding="utf-8")
            if (path / "requests.csv").exists()
            else open(os.devnull) as fh
        ):
            n_requests = max(sum(1 for _ in fh) - 1, 0)
        points = _read_csv(path / "points.csv")
        power = _read_csv(path / "power.csv") if with_power else []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CarbontopError(f"The tables in {path} cannot be read: {exc}.") from None
    live = effective_state(meta.get("status", {}), path / "run.toml")
    return SavedRun(
        path=path,
        meta=RunMeta.from_toml(meta),
        state=live.state,
        points=tuple(point_from_row(row) for row in points),
        requests_count=n_requests,
        samples=tuple(s for s in map(sample_from_row, power) if s is not None),
        state_note=live.note,
        config=dict(meta.get("run", {})),
    )


def list_runs(base: Path | None, limit: int | None = None) -> list[Path]:
    """The run directories under `base`, newest first: the one whose run.toml was written last
    first (a run named by --out sorts by when it ran too), the name breaking ties."""
    if base is None or not base.is_dir():
        return []
    found: list[tuple[float, str, Path]] = []
    for child in base.iterdir():
        try:
            if is_run_dir(child):
                found.append(((child / "run.toml").stat().st_mtime, child.name, child))
        except OSError:  # removed while listed, or unreadable: not a run to offer
            continue
    found.sort(reverse=True)
    return [p for _, _, p in found[:limit]]


def export_points_csv(run_dir: Path, dest: Path) -> Path:
    """Write the run's points table to `dest` (a file, or a folder that gets points.csv)."""
    import pandas as pd  # pandas only where a user asks for an export

    run = load_run(run_dir, with_power=False)
    dest = Path(dest).expanduser()
    if dest.is_dir():
        dest = dest / f"{run.path.name}-points.csv"
    rows = [dataclasses.asdict(p) | {"status": p.status.value} for p in run.points]
    frame = pd.DataFrame(rows, columns=POINT_COLUMNS)
    frame.insert(0, "run", run.path.name)
    frame.insert(1, "model", run.meta.settings.model)
    frame.insert(2, "gpu", ", ".join(run.meta.environment.devices))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(dest, index=False)
    except OSError as exc:
        raise CarbontopError(f"Cannot write {dest}: {exc.strerror}.") from None
    return dest


def find_run(ref: str | Path, base: Path) -> Path:
    """The run directory `ref` names: a path, or a saved run's name under the runs folder (exact,
    or a part of one name only, such as its date or its label)."""
    path = Path(ref).expanduser()
    if path.exists() or len(path.parts) != 1:
        return path  # a path: load_run says in one sentence what is wrong with it
    if is_run_dir(base / path.name):
        return base / path.name
    matches = [p for p in list_runs(base) if path.name in p.name]
    if len(matches) == 1:
        return matches[0]
    if matches:
        shown = ", ".join(p.name for p in matches[:3]) + (", ..." if len(matches) > 3 else "")
        raise CarbontopError(f"{ref} names {len(matches)} saved runs ({shown}); give more of the name.")
    raise CarbontopError(
        f"{ref} is neither a run directory nor the name of a saved run under {base} "
        "(carbontop runs lists them)."
    )
