"""A saved run's run.toml as typed records: what the report, the app and the comparisons read.

run.toml is written as plain tables (store.RunWriter) so that a person can read it and an older or
newer carbontop can too. This module reads it back once, tolerantly: a key that is missing or of
the wrong type reads as "not recorded" (None, "" or an empty tuple), so that runs written before a
key existed still open. Views read these records, never the tables' keys.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any


def _table(data: Any, name: str) -> dict[str, Any]:
    value = data.get(name) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _time(value: Any) -> dt.datetime | None:
    return value if isinstance(value, dt.datetime) else None


def _texts(value: Any) -> tuple[str, ...]:
    """A list of notes (or one note on its own), empty ones left out."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return tuple(str(v) for v in items if v)


@dataclass(frozen=True)
class RunSettings:
    """The [run] table's settings that the views show (the whole table is carbontop.config's to
    read back into a RunConfig). Where the sweep resolved a setting, the resolved value."""

    model: str = ""
    engine: str = ""
    dataset: str = ""
    num_prompts: int | None = None
    max_input_len: int | None = None
    max_output_len: int | None = None
    min_len: int | None = None
    seed: int | None = None
    slo_s_per_token: float | None = None
    slo_tpot_p90_s: float | None = None
    batching: str = ""  # what was asked; the points say what each engine really ran
    repeats: int = 0
    min_window_s: float | None = None  # the steady-state window each point was held to
    trace_shift_h: float | None = None

    @classmethod
    def from_table(cls, run: dict[str, Any]) -> RunSettings:
        def resolved(name: str) -> Any:
            return run.get(f"resolved_{name}") or run.get(name)

        return cls(
            model=_str(run.get("model")),
            engine=_str(run.get("engine")),
            dataset=_str(run.get("dataset")),
            num_prompts=_int(resolved("num_prompts")),
            max_input_len=_int(resolved("max_input_len")),
            max_output_len=_int(resolved("max_output_len")),
            min_len=_int(run.get("min_len")),
            seed=_int(run.get("seed")),
            slo_s_per_token=_float(run.get("slo_s_per_token")),
            slo_tpot_p90_s=_float(run.get("slo_tpot_p90_s")),
            batching=_str(run.get("batching")),
            repeats=_int(run.get("repeats")) or 0,
            min_window_s=_float(run.get("resolved_min_window_s")),
            trace_shift_h=_float(run.get("trace_shift_h")),
        )


@dataclass(frozen=True)
class RunEnvironment:
    """Where the run was measured ([environment])."""

    host: str = ""
    devices: tuple[str, ...] = ()  # device names, in gpu_indices' order
    gpu_indices: tuple[int, ...] = ()
    driver_version: str = ""
    energy_estimated: bool = False  # no hardware counter: TDP x load
    idle_power_w: float | None = None  # before the model was loaded
    idle_power_loaded_w: float | None = None  # with the model loaded, before the first point

    @classmethod
    def from_table(cls, env: dict[str, Any]) -> RunEnvironment:
        devices = env.get("devices")
        indices = env.get("gpu_indices")
        return cls(
            host=_str(env.get("host")),
            devices=tuple(str(d) for d in devices) if isinstance(devices, list) else (),
            gpu_indices=tuple(i for i in (_int(v) for v in indices) if i is not None)
            if isinstance(indices, list) else (),
            driver_version=_str(_table(env, "nvml").get("driver_version")),
            energy_estimated=env.get("energy_estimated") is True,
            idle_power_w=_float(env.get("idle_power_w")),
            idle_power_loaded_w=_float(env.get("idle_power_loaded_w")),
        )

    def device_names(self) -> dict[int, str]:
        """Each device's name by its index (-1, the CPU package, where no GPU index was kept)."""
        if self.gpu_indices:
            return dict(zip(self.gpu_indices, self.devices, strict=False))
        return {-1: self.devices[0]} if self.devices else {}


@dataclass(frozen=True)
class RunStatus:
    """How the sweep went and ended, as it recorded it ([status])."""

    state: str = "unknown"  # as recorded: a run recorded `running` may be one whose process died
    started: dt.datetime | None = None
    finished: dt.datetime | None = None
    message: str = ""
    resumes: int = 0
    largest_ok_batch: int | None = None
    smallest_failed_batch: int | None = None
    recommended_batch: int | None = None
    recommendation: str = ""  # the recommended batch and why; older runs kept only the batch
    pid: int | None = None  # the process writing the run, while it runs
    host: str = ""

    @classmethod
    def from_table(cls, status: dict[str, Any]) -> RunStatus:
        return cls(
            state=_str(status.get("state", "unknown")),
            started=_time(status.get("started")),
            finished=_time(status.get("finished")),
            message=_str(status.get("message")),
            resumes=_int(status.get("resumes")) or 0,
            largest_ok_batch=_int(status.get("largest_ok_batch")),
            smallest_failed_batch=_int(status.get("smallest_failed_batch")),
            recommended_batch=_int(status.get("recommended_batch")),
            recommendation=_str(status.get("recommendation")),
            pid=_int(status.get("pid")),
            host=_str(status.get("host")),
        )


@dataclass(frozen=True)
class CarbonRecord:
    """Where the carbon intensity came from ([carbon])."""

    source: str = ""  # constant, zone, trace, emaps
    description: str = ""
    pue: float | None = None
    lifetime_years: float | None = None
    cleanest_gco2e_per_kwh: float | None = None  # a trace's cleanest and dirtiest hour
    dirtiest_gco2e_per_kwh: float | None = None
    notes: tuple[str, ...] = ()

    @classmethod
    def from_table(cls, carbon: dict[str, Any]) -> CarbonRecord:
        return cls(
            source=_str(carbon.get("source")),
            description=_str(carbon.get("description")),
            pue=_float(carbon.get("pue")),
            lifetime_years=_float(carbon.get("lifetime_years")),
            cleanest_gco2e_per_kwh=_float(carbon.get("cleanest_gco2e_per_kwh")),
            dirtiest_gco2e_per_kwh=_float(carbon.get("dirtiest_gco2e_per_kwh")),
            notes=_texts(carbon.get("notes", [])),
        )


@dataclass(frozen=True)
class WorkloadRecord:
    """The prompts the run measured ([workload])."""

    source: str = ""
    prompts: int | None = None
    lengths_exact: bool = True  # False: token counts are the documented estimate
    tokenizer: str = ""  # what counted the tokens; an estimate's name ends in why
    mean_input_tokens: float | None = None
    mean_output_tokens: float | None = None
    notes: tuple[str, ...] = ()

    @classmethod
    def from_table(cls, workload: dict[str, Any]) -> WorkloadRecord:
        return cls(
            source=_str(workload.get("source")),
            prompts=_int(workload.get("prompts")),
            lengths_exact=workload.get("lengths_exact", True) is not False,
            tokenizer=_str(workload.get("tokenizer")),
            mean_input_tokens=_float(workload.get("mean_input_tokens")),
            mean_output_tokens=_float(workload.get("mean_output_tokens")),
            notes=_texts(workload.get("notes", [])),
        )


@dataclass(frozen=True)
class RunMeta:
    """run.toml, typed."""

    settings: RunSettings = RunSettings()
    environment: RunEnvironment = RunEnvironment()
    status: RunStatus = RunStatus()
    carbon: CarbonRecord = CarbonRecord()
    workload: WorkloadRecord = WorkloadRecord()
    model_name: str = ""  # [model] name: the architecture the FLOPs were counted from
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_toml(cls, data: dict[str, Any]) -> RunMeta:
        return cls(
            settings=RunSettings.from_table(_table(data, "run")),
            environment=RunEnvironment.from_table(_table(data, "environment")),
            status=RunStatus.from_table(_table(data, "status")),
            carbon=CarbonRecord.from_table(_table(data, "carbon")),
            workload=WorkloadRecord.from_table(_table(data, "workload")),
            model_name=_str(_table(data, "model").get("name")),
            warnings=_texts(_table(data, "warnings").get("messages", [])),
        )

    @property
    def notes(self) -> tuple[str, ...]:
        """What the workload and the carbon source noted while the run was prepared and measured
        (records skipped, a trace that does not cover the run, ...): shown, never only stored."""
        return self.workload.notes + self.carbon.notes
