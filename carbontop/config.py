"""Run configuration: one dataclass, loaded from TOML and flags, validated in one place.

Precedence, lowest first: built-in defaults, the user's config file (platformdirs config dir),
a `--config run.toml`, then command-line flags or the TUI form.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import platformdirs

from carbontop.core.carbon import (
    DEFAULT_SLO_S_PER_TOKEN,
    PAPER_INTENSITY_GCO2E_PER_KWH,
    PUE_PRESETS,
    IntensitySource,
    make_intensity_source,
)
from carbontop.core.tomlcompat import tomllib
from carbontop.errors import ConfigError

APP_NAME = "carbontop"

ENGINES = ("hf", "trtllm", "openai")
# Besides the built-in engines, any engine class importable in the engine process, named
# "package.module:Class" (benchmarks/transformers_cb.py runs this way).
ENGINE_CLASS_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
WEIGHTS = ("dummy", "auto")
DTYPES = ("auto", "bf16", "fp16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
COMPILE_MODES = ("auto", "on", "off", "max-autotune")
QUANTS = ("none", "int4-wo", "int8-wo")
BATCHINGS = ("inflight", "static")
POWER_SOURCES = ("auto", "nvml", "rapl", "estimate", "tegrastats")

# ---- what a blank setting becomes --------------------------------------------------------
# The sweep resolves these where a setting is left blank (sweep/runner.py); the CLI's help and the
# form's texts quote them from here, so a changed default is changed everywhere at once.

# A point's steady-state window: at least 20 s on a GPU, which with the NVML counter read at least
# once a second holds about 20 readings, so 10 sub-windows of two or more for the interval. On a
# CPU the tiny model's windows are cut to 3 s: the estimate and RAPL are read every tick (0.1 s),
# so 3 s still holds about 30 readings, and the CPU tests and the quick start stay fast.
GPU_MIN_WINDOW_S = 20.0
CPU_MIN_WINDOW_S = 3.0
# The cap on one point from its first admission: long enough for the window, ramp-up and one
# long request at batch 1 (1,000 tokens at ~20 ms a step on an H100 is 20 s), short enough that a
# slow point cannot eat the sweep's 10 minutes.
GPU_MAX_POINT_S = 90.0
CPU_MAX_POINT_S = 30.0
# With no GPU there is no memory boundary to find: the automatic search stops here instead.
CPU_MAX_BATCH = 16
GPU_MAX_BATCH = 1024
# Servers queue what they cannot hold instead of running out of memory: the search stops here.
OPENAI_MAX_BATCH = 256
GPU_NUM_PROMPTS = 100  # the paper's count
CPU_NUM_PROMPTS = 16


def per_device(gpu: float, cpu: float, unit: str = "") -> str:
    """A default that depends on the device, as help texts quote it: '20 s on a GPU, 3 s on a CPU'."""
    return f"{gpu:g}{unit} on a GPU, {cpu:g}{unit} on a CPU"


def config_dir() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME))


def data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME))


def cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir(APP_NAME))


def runs_dir() -> Path:
    """Where runs go when --out names none (the store is handed this folder)."""
    return data_dir() / "runs"


def user_config_path() -> Path:
    return config_dir() / "config.toml"


@dataclass
class RunConfig:
    # what runs
    model: str = "tiny"  # preset name or a local model folder (or the served name, for openai)
    engine: str = "hf"
    weights: str = "dummy"
    # what counts tokens: a model folder or hub id with a tokenizer; None = the model's own
    tokenizer: str | None = None
    dtype: str = "auto"  # bf16 on a GPU, fp32 on the CPU
    device: str = "auto"  # cuda where a GPU is visible, else cpu
    gpus: list[int] | None = None  # NVML indices in use; None = all visible to the engine
    # tensor-parallel ranks of the built-in engine, one process and one GPU each; None: one per
    # GPU named in --gpus (so --gpus 0,1 shards over both), else 1
    tp: int | None = None
    # the built-in engine's decode step on CUDA: "auto" compiles it, autotuning the matrix
    # products at batch 1; "on" compiles without autotuning; "max-autotune" autotunes every
    # batch size; "off" runs it eagerly (always inside a CUDA graph). On the CPU only "on" compiles.
    compile: str = "auto"
    # weight-only quantisation of the linear layers: the built-in engine through torchao, the
    # trtllm engine through TensorRT-LLM's W4A16 / W8A16
    quant: str = "none"
    # where power comes from: "auto" picks NVML on a GPU, tegrastats on a Jetson, RAPL or the
    # estimate on a CPU
    power_source: str = "auto"
    url: str | None = None  # openai engine: base URL of the server
    arch: str | None = None  # openai engine: preset or folder whose architecture the server runs
    kv_cache_fraction: float = 0.9  # trtllm: share of free GPU memory for the KV cache
    max_num_tokens: int | None = None  # trtllm: tokens one scheduler step may take (None: its own)
    request_timeout_s: float = 600.0  # openai: longest a single request may take
    # the watchdog: an engine that sends no word (phase, progress, result) for this long is killed
    # with its process group and its point recorded as hung. Generous, because compilers and
    # engine builders send nothing while they work: 30 min is several times the whole 16-point
    # H100 sample run, compile included (sample_runs/llama2-7b-h100-sharegpt: 6.5 min)
    stall_timeout_s: float = 1800.0
    # the workload
    dataset: str = "sharegpt"  # "sharegpt", "synthetic" or a path to a ShareGPT-format JSON
    num_prompts: int | None = None  # None: 100 (the paper's count) on a GPU, 16 on a CPU
    max_input_len: int | None = None  # None: the model preset's default (1000 Llama, 500 GPT-2)
    max_output_len: int | None = None
    min_len: int = 4
    seed: int = 0
    # the sweep
    batch_sizes: str | list[int] = "auto"  # "auto" (double to OOM, then bisect) or a list
    # inflight: at most b sequences in flight, a freed slot refilled at once (how servers run);
    # static: the paper's batches of b, each running until its longest request ends
    batching: str = "inflight"
    # each point admits requests until its steady-state window has lasted this long; None: 20 s
    # on a GPU (many energy-counter readings), 3 s on a CPU (see the runner's defaults)
    min_window_s: float | None = None
    # a point stops admitting this long after its first admission, whatever its window; None:
    # 90 s on a GPU, 30 s on a CPU
    max_point_s: float | None = None
    # re-measure every batch that fits this many times, in shuffled (seeded) order, once the GPU
    # has settled to a temperature band; 0 keeps the search's one measurement per batch
    repeats: int = 0
    max_batch: int | None = None  # auto stops here if nothing failed: None = the runner's default for the device and engine
    # carbon
    intensity: float = PAPER_INTENSITY_GCO2E_PER_KWH  # gCO2e/kWh, constant source
    zone: str | None = None  # built-in annual average for an Electricity Maps zone id
    trace: str | None = None  # hourly CSV in Electricity Maps' export format
    trace_shift_h: float = 0.0  # shift the trace's clock by this many hours onto the run's
    emaps_zone: str | None = None  # Electricity Maps API v3, token in ELECTRICITYMAPS_TOKEN
    emaps_token: str | None = field(default=None, repr=False)  # never written into a run
    pue: float = 1.0
    lifetime_years: float = 5.0
    slo_s_per_token: float = DEFAULT_SLO_S_PER_TOKEN
    slo_tpot_p90_s: float | None = None
    # output
    out: str | None = None  # run directory; None = a new one under the data dir
    sample_interval_s: float = 0.1

    # ---- helpers -------------------------------------------------------------------------

    def to_dict(self, *, secrets: bool = False) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not secrets:
            d.pop("emaps_token", None)
        return {k: v for k, v in d.items() if v is not None}

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def batch_plan(self) -> list[int] | None:
        """The explicit batch sizes, or None for the automatic search."""
        if isinstance(self.batch_sizes, str):
            return None if self.batch_sizes == "auto" else parse_batch_sizes(self.batch_sizes)
        return list(self.batch_sizes)

    def intensity_source(
        self, *, http_client: Any = None, emaps_base_url: str | None = None
    ) -> IntensitySource:
        """The grid-intensity source these settings ask for (the precedence lives in carbon)."""
        return make_intensity_source(
            intensity=self.intensity, zone=self.zone, trace=self.trace,
            trace_shift_h=self.trace_shift_h, emaps_zone=self.emaps_zone,
            emaps_token=self.emaps_token, http_client=http_client, emaps_base_url=emaps_base_url)


FIELD_NAMES = {f.name for f in fields(RunConfig)}
DEFAULTS = RunConfig()  # every setting's default, for help texts to quote


def parse_batch_sizes(text: str) -> list[int] | None:
    """'auto' -> None; '1,2,4' -> [1, 2, 4]. Raises ConfigError with a sentence."""
    text = text.strip()
    if text == "auto":
        return None
    try:
        sizes = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise ConfigError(
            f"Batch sizes must be 'auto' or a comma-separated list of whole numbers, not '{text}'.",
            "batch_sizes",
        ) from None
    if not sizes or any(s < 1 for s in sizes):
        raise ConfigError("Every batch size must be 1 or more.", "batch_sizes")
    return sorted(set(sizes))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _coerce(name: str, value: Any) -> Any:
    """Bring a TOML or form value to the field's type, with a sentence when it cannot be."""
    ints = {"num_prompts", "max_input_len", "max_output_len", "min_len", "seed", "max_batch",
            "repeats", "max_num_tokens", "tp"}
    floats = {
        "min_window_s", "max_point_s",
        "intensity", "pue", "lifetime_years", "slo_s_per_token", "slo_tpot_p90_s",
        "kv_cache_fraction", "trace_shift_h", "sample_interval_s", "request_timeout_s",
        "stall_timeout_s",
    }
    if value is None or value == "":
        return None
    if name == "pue" and isinstance(value, str) and not _is_number(value):
        if value.strip().lower() in PUE_PRESETS:
            return PUE_PRESETS[value.strip().lower()][0]
        raise ConfigError(
            f"PUE must be a number or one of {', '.join(PUE_PRESETS)}, not '{value}'.", name)
    try:
        if name in ints:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if name in floats:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
    except (TypeError, ValueError):
        kind = "a whole number" if name in ints else "a number"
        raise ConfigError(f"'{name}' must be {kind}, not '{value}'.", name) from None
    if name == "batch_sizes":
        if isinstance(value, list):
            return parse_batch_sizes(",".join(str(v) for v in value)) or "auto"
        parsed = parse_batch_sizes(str(value))
        return "auto" if parsed is None else parsed
    if name == "gpus":
        return _gpu_indices(value)
    return str(value) if not isinstance(value, str) else value


def _gpu_indices(value: Any) -> list[int]:
    """0, "0,1" or [0, 1] -> GPU indices; anything else is a sentence."""
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, int) and not isinstance(items, bool):
        items = [items]
    indices: list[int] = []
    if isinstance(items, (list, tuple)):
        for item in items:
            text = item.strip() if isinstance(item, str) else item
            if isinstance(text, str) and text.isdigit():
                indices.append(int(text))
            elif isinstance(text, int) and not isinstance(text, bool) and text >= 0:
                indices.append(text)
            else:
                indices = []
                break
    if not indices:
        raise ConfigError(
            f"'gpus' must be GPU indices such as 0 or 0,1 (in a file: gpus = [0, 1]), not '{value}'.",
            "gpus")
    return indices


def validate(cfg: RunConfig) -> RunConfig:
    """Check every field; raise ConfigError naming the field and saying what is wrong."""

    def bad(name: str, msg: str) -> ConfigError:
        return ConfigError(msg, name)

    if cfg.engine not in ENGINES and not ENGINE_CLASS_PATH.fullmatch(cfg.engine):
        raise bad("engine", f"Engine must be one of {', '.join(ENGINES)} or a class named "
                            f"package.module:Class, not '{cfg.engine}'.")
    if cfg.weights not in WEIGHTS:
        raise bad("weights", f"Weights must be 'dummy' or 'auto', not '{cfg.weights}'.")
    if cfg.dtype not in DTYPES:
        raise bad("dtype", f"dtype must be one of {', '.join(DTYPES)}, not '{cfg.dtype}'.")
    if cfg.device not in DEVICES:
        raise bad("device", f"Device must be one of {', '.join(DEVICES)}, not '{cfg.device}'.")
    if cfg.compile not in COMPILE_MODES:
        raise bad("compile", f"compile must be one of {', '.join(COMPILE_MODES)}, not '{cfg.compile}'.")
    if cfg.power_source not in POWER_SOURCES:
        raise bad("power_source", f"The power source must be one of {', '.join(POWER_SOURCES)}, "
                  f"not '{cfg.power_source}'.")
    if cfg.quant not in QUANTS:
        raise bad("quant", f"quant must be one of {', '.join(QUANTS)}, not '{cfg.quant}'.")
    if cfg.quant != "none" and cfg.engine == "openai":
        raise bad("quant", "--quant applies to the engines carbontop runs (hf, trtllm); a server "
                  "quantises its model itself, so start it with the quantised model instead.")
    if not cfg.model:
        raise bad("model", "Name a model: a preset such as 'tiny' or 'llama2-7b', or a model folder.")
    if cfg.num_prompts is not None and cfg.num_prompts < 1:
        raise bad("num_prompts", "The number of prompts must be at least 1.")
    for name in ("max_input_len", "max_output_len"):
        v = getattr(cfg, name)
        if v is not None and v < cfg.min_len:
            raise bad(name, f"'{name}' must be at least the minimum length ({cfg.min_len}).")
    if cfg.min_len < 1:
        raise bad("min_len", "The minimum length must be at least 1 token.")
    if cfg.batching not in BATCHINGS:
        raise bad("batching", f"Batching must be one of {', '.join(BATCHINGS)}, not '{cfg.batching}'.")
    if cfg.min_window_s is not None and cfg.min_window_s <= 0:
        raise bad("min_window_s", "The minimum window must be more than 0 s.")
    if cfg.max_point_s is not None and cfg.max_point_s <= 0:
        raise bad("max_point_s", "The longest a point may take must be more than 0 s.")
    if (cfg.min_window_s is not None and cfg.max_point_s is not None
            and cfg.max_point_s < cfg.min_window_s):
        raise bad("max_point_s", "--max-point-s must be at least --min-window-s, or no window "
                  "could reach its minimum.")
    if cfg.repeats < 0:
        raise bad("repeats", "Repeats must be 0 or more.")
    if cfg.tp is not None and cfg.tp < 1:
        raise bad("tp", "--tp is a number of ranks: 1 or more.")
    if cfg.tp is not None and cfg.tp > 1 and cfg.engine == "openai":
        raise bad("tp", "--tp applies to the engines carbontop runs; a server shards its model "
                  "itself, so start it tensor-parallel instead.")
    if cfg.max_batch is not None and cfg.max_batch < 1:
        raise bad("max_batch", "The largest batch must be at least 1.")
    if cfg.intensity < 0:
        raise bad("intensity", "Carbon intensity cannot be negative.")
    if cfg.pue < 1.0:
        raise bad("pue", "PUE is at least 1.0 (all facility energy over IT energy).")
    if cfg.lifetime_years <= 0:
        raise bad("lifetime_years", "The GPU lifetime must be more than 0 years.")
    if cfg.slo_s_per_token <= 0:
        raise bad("slo_s_per_token", "The latency target must be more than 0 s per token.")
    if not 0.0 < cfg.kv_cache_fraction <= 1.0:
        raise bad("kv_cache_fraction", "The KV-cache memory fraction must be in (0, 1].")
    if cfg.max_num_tokens is not None and cfg.max_num_tokens < 1:
        raise bad("max_num_tokens", "The token budget per step must be at least 1.")
    if cfg.request_timeout_s <= 0:
        raise bad("request_timeout_s", "The request timeout must be more than 0 s.")
    if cfg.stall_timeout_s <= 0:
        raise bad("stall_timeout_s", "The stall timeout must be more than 0 s.")
    if cfg.sample_interval_s <= 0:
        raise bad("sample_interval_s", "The sampling interval must be more than 0 s.")
    if cfg.engine == "openai" and not cfg.url:
        raise bad("url", "The openai engine needs --url, the server's base address (http://host:port).")
    if cfg.url and not cfg.url.startswith(("http://", "https://")):
        raise bad("url", f"The server URL must start with http:// or https://, not '{cfg.url}'.")
    named = [n for n in CARBON_SOURCE_FIELDS if getattr(cfg, n)]
    if len(named) > 1:
        raise _carbon_conflict(named)
    if cfg.batch_plan() is None and cfg.batch_sizes != "auto":
        raise bad("batch_sizes", "Batch sizes must be 'auto' or a list of whole numbers.")
    return cfg


def from_mapping(data: dict[str, Any], base: RunConfig | None = None, *, origin: str = "") -> RunConfig:
    """Overlay a mapping (TOML table, flags, form) on a base config, coercing each value."""
    cfg = base or RunConfig()
    changes: dict[str, Any] = {}
    where = f" in {origin}" if origin else ""
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in FIELD_NAMES:
            raise ConfigError(f"Unknown setting '{key}'{where}.", name)
        changes[name] = _coerce(name, value)
    named = [n for n in CARBON_SOURCE_FIELDS if changes.get(n) is not None]
    if len(named) > 1:
        raise _carbon_conflict(named, where)
    if named:
        # a layer that names a carbon source replaces the one a lower layer named (flags over a
        # file, a file over the user's defaults); two in one layer are a conflict
        changes.update({n: None for n in CARBON_SOURCE_FIELDS if n not in named})
    return dataclasses.replace(cfg, **changes)


# where gCO2e/kWh comes from, besides the constant --intensity: at most one may be named
CARBON_SOURCE_FIELDS = ("zone", "trace", "emaps_zone")


def _carbon_conflict(named: list[str], where: str = "") -> ConfigError:
    flags = " and ".join("--" + n.replace("_", "-") for n in named)
    return ConfigError(
        f"{flags}{where} name two sources of carbon intensity; choose one.", named[-1])


def load_toml(path: Path, base: RunConfig | None = None) -> RunConfig:
    """Read a run TOML (flat keys, or a [run] table as run.toml writes it)."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} does not exist.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Config file {path} is not valid TOML: {exc}.") from None
    except OSError as exc:
        raise ConfigError(f"Config file {path} cannot be read: {exc.strerror}.") from None
    tables = [k for k, v in data.items() if isinstance(v, dict)]
    if "run" in tables:
        # [run] holds the configuration; in a run.toml that a sweep wrote (it has [status]) the
        # other tables record what the run found, in a hand-written file they are mistakes
        unknown = [] if "status" in tables else [k for k in tables if k not in RUN_TOML_TABLES]
        data = {k: v for k, v in data["run"].items() if not k.startswith(RESOLVED_PREFIX)}
    else:
        unknown = tables
    if unknown:
        raise ConfigError(
            f"Config file {path} has a table [{unknown[0]}] that carbontop does not know; settings "
            "go at the top level (or under [run]).")
    data = {k: v for k, v in data.items() if not isinstance(v, dict)}
    return from_mapping(data, base, origin=str(path))



# run.toml's [run] also records what "auto" and the defaults became on the machine that ran it
RESOLVED_PREFIX = "resolved_"


def resumed_config(run_table: dict[str, Any], origin: str) -> RunConfig:
    """The configuration a saved run ran with, defaults resolved as they were on its machine, so
    that carrying it on measures the same thing (dtype, device, prompts, lengths)."""
    settings = {k: v for k, v in run_table.items() if not k.startswith(RESOLVED_PREFIX)}
    for key, value in run_table.items():
        if key.startswith(RESOLVED_PREFIX) and key[len(RESOLVED_PREFIX):] in FIELD_NAMES:
            settings[key[len(RESOLVED_PREFIX):]] = value
    return from_mapping(settings, origin=origin)


# tables the store writes into a run.toml beside [run]
RUN_TOML_TABLES = ("run", "environment", "model", "workload", "carbon", "warnings", "engine")


def load_user_defaults() -> RunConfig:
    """The user's config file if there is one, else the built-in defaults."""
    path = user_config_path()
    if path.exists():
        return load_toml(path)
    return RunConfig()
