"""The run configuration form: every field of RunConfig a user sets before a sweep.

Values are read back through carbontop.config (the same coercion and validation as the CLI and
TOML files), so a bad value is marked with the very sentence the CLI would print.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, VerticalScroll
from textual.css.query import NoMatches
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.widget import Widget
from textual.widgets import Input, Label, Static

from carbontop import config as cfgmod
from carbontop.errors import ConfigError
from carbontop.tui.widgets.choice import Choice


@dataclass(frozen=True)
class FieldSpec:
    name: str  # RunConfig attribute
    label: str
    choices: tuple[str, ...] = ()  # a Choice when set, an Input otherwise
    placeholder: str = ""
    required: bool = False  # blank is an error (otherwise blank means "the default": None)
    help: str = ""


def to_text(value: Any) -> str:
    """A config value as the form shows it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _default(name: str) -> str:
    """A setting's default as the form writes it (config.DEFAULTS: one home for each)."""
    return to_text(getattr(cfgmod.DEFAULTS, name))


def _short(gpu: float, cpu: float) -> str:
    """A per-device default in a placeholder's few characters: '20 GPU, 3 CPU'."""
    return f"{gpu:g} GPU, {cpu:g} CPU"


SECTIONS: tuple[tuple[str, tuple[FieldSpec, ...]], ...] = (
    ("Model and engine", (
        FieldSpec("model", "model", placeholder="preset, folder or hub id", required=True,
                  help="A preset (tiny, gpt2, llama2-7b, llama3.1-8b, ...), a local Hugging Face model "
                       "folder, or a hub id (meta-llama/Llama-2-7b-hf) from the local cache."),
        FieldSpec("engine", "engine", cfgmod.ENGINES),
        FieldSpec("url", "server url", placeholder="openai: http://host:8000",
                  help="Base URL of an OpenAI-compatible server; only for the openai engine."),
        FieldSpec("arch", "arch", placeholder="openai: preset or folder",
                  help="For the openai engine: the preset or model folder the server runs, for MFU/MBU."),
        FieldSpec("weights", "weights", cfgmod.WEIGHTS,
                  help="dummy: random weights of the real shape (no download); auto: the real ones."),
        FieldSpec("dtype", "dtype", cfgmod.DTYPES),
        FieldSpec("quant", "quant", cfgmod.QUANTS,
                  help="Weight-only quantisation: int4-wo (CUDA, bf16) or int8-wo, through torchao "
                       "for hf and W4A16/W8A16 for trtllm."),
        FieldSpec("device", "device", cfgmod.DEVICES),
        FieldSpec("gpus", "GPUs", placeholder="all visible (or 0,1)",
                  help="NVML indices of the GPUs in use, comma-separated; blank for all."),
        FieldSpec("compile", "compile", cfgmod.COMPILE_MODES,
                  help="Built-in engine on CUDA: auto compiles the decode step (autotuned at batch 1), "
                       "on compiles, max-autotune autotunes every batch, off runs eagerly."),
        FieldSpec("kv_cache_fraction", "KV fraction", placeholder=_default("kv_cache_fraction"), required=True,
                  help="trtllm: the share of free GPU memory its KV cache may take."),
        FieldSpec("max_num_tokens", "tokens/step", placeholder="trtllm's default",
                  help="trtllm: the tokens one scheduler step may take; blank for TensorRT-LLM's own."),
        FieldSpec("request_timeout_s", "timeout s", placeholder=_default("request_timeout_s"), required=True,
                  help="openai: the longest one request may take, in seconds."),
    )),
    ("Workload", (
        FieldSpec("dataset", "dataset", placeholder="sharegpt/synthetic/path", required=True),
        FieldSpec("tokenizer", "tokenizer", placeholder="the model's own",
                  help="Count tokens with this tokenizer (a folder or a hub id in the local cache); "
                       "blank for the model's own, if it has one."),
        FieldSpec("num_prompts", "prompts", placeholder=_short(cfgmod.GPU_NUM_PROMPTS, cfgmod.CPU_NUM_PROMPTS),
                  help=f"Requests per sweep point; blank for {cfgmod.per_device(cfgmod.GPU_NUM_PROMPTS, cfgmod.CPU_NUM_PROMPTS)}."),
        FieldSpec("max_input_len", "max input", placeholder="preset default",
                  help="Longest prompt, in tokens; blank for the model preset's default."),
        FieldSpec("max_output_len", "max output", placeholder="preset default",
                  help="Longest output, in tokens; blank for the model preset's default."),
        FieldSpec("min_len", "min length", placeholder=_default("min_len"), required=True,
                  help="Shortest prompt and output kept from the dataset, in tokens."),
        FieldSpec("seed", "seed", placeholder=_default("seed"), required=True),
    )),
    ("Sweep", (
        FieldSpec("batch_sizes", "batch sizes", placeholder="auto, or 1,2,4,8", required=True,
                  help="auto: double until out of memory, then bisect; or a list of sizes."),
        FieldSpec("max_batch", "max batch", placeholder=_short(cfgmod.GPU_MAX_BATCH, cfgmod.CPU_MAX_BATCH),
                  help="Where the automatic search stops if nothing failed; blank for "
                       f"{cfgmod.per_device(cfgmod.GPU_MAX_BATCH, cfgmod.CPU_MAX_BATCH)}, "
                       f"{cfgmod.OPENAI_MAX_BATCH} for the openai engine."),
        FieldSpec("batching", "batching", cfgmod.BATCHINGS,
                  help="inflight: a finished request's slot is refilled at once; static: the "
                       "paper's batches, each until its longest request ends."),
        FieldSpec("min_window_s", "min window s", placeholder=_short(cfgmod.GPU_MIN_WINDOW_S, cfgmod.CPU_MIN_WINDOW_S),
                  help="Each point runs until b requests have been in flight this long."),
        FieldSpec("max_point_s", "max point s", placeholder=_short(cfgmod.GPU_MAX_POINT_S, cfgmod.CPU_MAX_POINT_S),
                  help="A point stops admitting requests this long after its first."),
        FieldSpec("repeats", "repeats", placeholder=_default("repeats"), required=True,
                  help="Re-measure every batch that fits this many times, in shuffled order."),
    )),
    ("Carbon", (
        FieldSpec("intensity", "gCO2e/kWh", placeholder=_default("intensity"), required=True,
                  help="Grid carbon intensity, used when no zone, trace or live source is set."),
        FieldSpec("zone", "zone", placeholder="none (e.g. DE)",
                  help="An Electricity Maps zone id: its annual average replaces the number above."),
        FieldSpec("trace", "trace CSV", placeholder="none (hourly CSV)",
                  help="An hourly Electricity Maps export: intensity follows the clock of the run."),
        FieldSpec("trace_shift_h", "trace shift h", placeholder=_default("trace_shift_h"), required=True,
                  help="Shift the trace's clock by this many hours onto the run's."),
        FieldSpec("emaps_zone", "live zone", placeholder="none (API, live)",
                  help="Electricity Maps zone read live through its API during the run."),
        FieldSpec("pue", "PUE", placeholder=f"{cfgmod.DEFAULTS.pue:.1f}", required=True,
                  help="Power usage effectiveness of the facility: a number or a preset, "
                       + ", ".join(f"{n} {v:g}" for n, (v, _) in cfgmod.PUE_PRESETS.items()) + "."),
        FieldSpec("lifetime_years", "GPU life yr", placeholder=_default("lifetime_years"), required=True,
                  help="Years over which the GPU's embodied carbon is spread."),
        FieldSpec("slo_s_per_token", "SLO s/tok", placeholder=_default("slo_s_per_token"), required=True,
                  help="Latency target per token for the recommendation "
                       f"({cfgmod.DEFAULTS.slo_s_per_token:g} s = reading speed)."),
        FieldSpec("slo_tpot_p90_s", "SLO TPOT p90", placeholder="none (seconds)",
                  help="A second target for the recommendation: p90 time per output token, in s."),
    )),
    ("Output", (
        FieldSpec("out", "run folder", placeholder="a new one under the data dir",
                  help="Where this sweep writes its run; blank for a new folder of its own. "
                       "Not remembered for the next start."),
        FieldSpec("sample_interval_s", "sample s", placeholder=_default("sample_interval_s"), required=True,
                  help="Seconds between telemetry readings during a point."),
        FieldSpec("power_source", "power source", cfgmod.POWER_SOURCES,
                  help="auto: NVML on a GPU, tegrastats on a Jetson, RAPL or an estimate on a CPU."),
    )),
)
# Settings a sweep uses that the form does not show, and why.
NOT_IN_FORM = {
    "emaps_token": "a secret: read from ELECTRICITYMAPS_TOKEN or the config file, never shown",
    "stall_timeout_s": "the watchdog's safety net, rarely changed: --stall-timeout-s or the config file",
    "tp": "the GPUs field sets it (one tensor-parallel rank per GPU named); otherwise --tp or the config file",
}
FIELDS: dict[str, FieldSpec] = {f.name: f for _, specs in SECTIONS for f in specs}


class ConfigForm(VerticalScroll):
    """Fields by section; `read()` returns a validated RunConfig or raises ConfigError."""

    # shown in the footer while a field has focus: the letter keys type there, escape leaves
    BINDINGS = [Binding("escape", "leave", "Leave the form")]

    DEFAULT_CSS = """
    ConfigForm { padding: 0 1; }
    ConfigForm #form-grid {
        layout: grid; grid-size: 2; grid-columns: 15 1fr; grid-rows: 1; height: auto;
    }
    ConfigForm .section { column-span: 2; text-style: bold; color: $primary; }
    ConfigForm .gap { column-span: 2; }
    ConfigForm .field-label { color: $text-muted; }
    /* the field being edited: its label turns bold in the accent colour behind a marker, so the
       focus shows without colour too */
    ConfigForm .field-label.-focused { color: $accent; text-style: bold; }
    ConfigForm #field-help { column-span: 2; color: $text-muted; height: auto; display: none; }
    ConfigForm #field-error { column-span: 2; color: $error; display: none; }
    ConfigForm #field-error.shown { display: block; }
    """

    class Leave(Message):
        """The user pressed escape in the form: the app moves focus back to the panes."""

    class Edited(Message):
        """A field changed; the app revalidates so marks follow the user's typing."""

    def __init__(self, initial: cfgmod.RunConfig, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.base = initial
        self.error_field: str | None = None
        self.error_message = ""
        self._loading = False
        self._build_started = False

    def compose(self) -> ComposeResult:
        yield Static("[$text-muted]Loading the form…[/]", id="form-loading")

    def build(self) -> None:
        """Mount the fields. The app calls this right after its first frame: the form is the
        largest part of the screen, and building it first would delay that frame by half a second."""
        if self._build_started or not self.is_attached or self.app._exit:
            return  # built, or the app is closing already
        self._build_started = True
        # the fields go in with the grid, in one mount: a grid mounted first and filled after can
        # be caught half-way when the app closes right after its first frame
        self.mount(Grid(*self._fields(), id="form-grid"))
        self.query_one("#form-loading").remove()

    def _fields(self) -> list[Widget]:
        # One grid, one widget per label and per value, one error line moved to the field it is
        # about.
        suggestions = _model_presets()
        widgets: list[Widget] = []
        for n, (title, specs) in enumerate(SECTIONS):
            if n:
                widgets.append(Label("", classes="gap"))
            widgets.append(Label(title, classes="section"))
            for spec in specs:
                value = to_text(getattr(self.base, spec.name))
                widgets.append(Label(spec.label, classes="field-label", id=f"l-{spec.name}"))
                if spec.choices:
                    widgets.append(Choice(spec.choices, value, id=f"f-{spec.name}", tooltip=spec.help or None))
                else:
                    suggester = SuggestFromList(suggestions) if spec.name == "model" and suggestions else None
                    widgets.append(Input(value, placeholder=spec.placeholder, compact=True, id=f"f-{spec.name}",
                                         suggester=suggester, tooltip=spec.help or None))
        widgets.append(Static("", id="field-error"))
        widgets.append(Static("", id="field-help"))
        return widgets

    @property
    def built(self) -> bool:
        """True once the fields are in the DOM. Mounting is asynchronous: until the grid's
        mount is processed, the fields cannot be queried, though build() has run."""
        return self._build_started and bool(self.query("#f-model"))

    def on_mount(self) -> None:
        self.border_title = "Run configuration"

    # ---- values -------------------------------------------------------------------------

    def field(self, name: str) -> Input | Choice:
        return self.query_one(f"#f-{name}")  # type: ignore[return-value]

    def values(self) -> dict[str, str]:
        if not self.built:
            return {name: to_text(getattr(self.base, name)) for name in FIELDS}
        return {name: str(self.field(name).value or "").strip() for name in FIELDS}

    def read(self) -> cfgmod.RunConfig:
        """The form's configuration, validated; raises ConfigError naming the field."""
        values = self.values()
        for name, text in values.items():
            if FIELDS[name].required and not text:
                raise ConfigError(f"'{FIELDS[name].label}' needs a value.", name)
        cfg = cfgmod.from_mapping(values, self.base)
        return cfgmod.validate(cfg)

    def set_config(self, cfg: cfgmod.RunConfig) -> None:
        self.base = cfg
        if not self.built:
            return  # build() reads self.base
        self._loading = True
        try:
            for name in FIELDS:
                self.field(name).value = to_text(getattr(cfg, name))
        finally:
            self.call_after_refresh(self._done_loading)
        self.clear_errors()

    def _done_loading(self) -> None:
        self._loading = False

    # ---- marks --------------------------------------------------------------------------

    def peek(self) -> cfgmod.RunConfig | None:
        """The form's configuration if it is valid, else None; marks nothing."""
        try:
            return self.read()
        except ConfigError:
            return None

    def check(self) -> cfgmod.RunConfig | None:
        """Validate and mark: the config, or None with the offending field marked."""
        try:
            cfg = self.read()
        except ConfigError as exc:
            self.mark(str(exc), exc.field)
            return None
        self.clear_errors()
        return cfg

    def mark(self, message: str, field: str | None) -> None:
        """Show `message` under `field` (or at the top, for a setting that has no field here)."""
        from carbontop.tui.wording import for_app  # imports this module: here, not at the top

        message = for_app(message)
        if field == self.error_field and message == self.error_message:
            return  # unchanged: keep typing smooth
        if not self.built:
            self.build()
        self.clear_errors()
        error = self.query_one("#field-error", Static)
        grid = self.query_one("#form-grid", Grid)
        if field in FIELDS:
            widget = self.field(field)
            widget.add_class("-invalid")
            grid.move_child(error, after=widget)
        else:
            grid.move_child(error, before=0)
        self.error_field = field if field in FIELDS else None
        self.error_message = message
        error.update(message)
        self._fit_rows(error, message)
        error.add_class("shown")

    def _fit_rows(self, line: Static, text: str) -> None:
        # The grid's rows are one line each (that keeps the form quick to lay out): a note that
        # wraps spans as many rows as it needs at the form's width.
        width = max(10, self.scrollable_content_region.width or 36)
        line.styles.row_span = max(1, len(textwrap.wrap(text, width)))

    def clear_errors(self) -> None:
        if self.error_message and self.built:
            for widget in self.query(".-invalid"):
                widget.remove_class("-invalid")
            self.query_one("#field-error", Static).remove_class("shown")
        self.error_field = None
        self.error_message = ""

    def focus_error(self) -> None:
        if self.error_field:
            widget = self.field(self.error_field)
            widget.focus()
            self.scroll_to_widget(widget)

    def focus_first(self) -> None:
        if self.built:
            self.field("model").focus()

    def set_enabled(self, enabled: bool) -> None:
        if not self.built:
            return
        try:
            for name in FIELDS:
                self.field(name).disabled = not enabled
        except NoMatches:  # the app is closing (a sweep's end can arrive then): nothing to enable
            pass

    # ---- events -------------------------------------------------------------------------

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        self._mark_focus(event.widget)

    def on_descendant_blur(self, event: events.DescendantBlur) -> None:
        self.call_later(lambda: self._mark_focus(self.app.focused))

    def _mark_focus(self, focused: Widget | None) -> None:
        """Mark the label of the field being edited and show that field's help under the form."""
        if not self.built:
            return
        name = (focused.id or "").removeprefix("f-") if focused is not None else ""
        if name not in FIELDS or focused not in self.query(f"#f-{name}"):
            name = ""
        for label in self.query(".field-label.-focused"):
            label.remove_class("-focused")
            label.update(FIELDS[(label.id or "").removeprefix("l-")].label)
        help_line = self.query_one("#field-help", Static)
        if not name or not FIELDS[name].help:
            help_line.display = False
        else:
            # right under the field (and under its error, if it has one), where the eye is
            anchor = self.query_one("#field-error") if name == self.error_field else focused
            self.query_one("#form-grid", Grid).move_child(help_line, after=anchor)
            help_line.update(FIELDS[name].help)
            self._fit_rows(help_line, FIELDS[name].help)
            help_line.display = True
        if name:
            label = self.query_one(f"#l-{name}", Label)
            label.add_class("-focused")
            label.update(f"▸ {FIELDS[name].label}")

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if not self._loading:
            self.post_message(self.Edited())

    def on_choice_changed(self, event: Choice.Changed) -> None:
        event.stop()
        if not self._loading:
            self.post_message(self.Edited())

    def action_leave(self) -> None:
        self.post_message(self.Leave())


def settings_summary(cfg: cfgmod.RunConfig) -> str:
    """The settings that decide what a sweep runs, in one short line: 'tiny · hf · auto device ·
    sharegpt, 16 prompts · batch auto'."""
    prompts = f", {cfg.num_prompts} prompts" if cfg.num_prompts else ""
    batches = cfg.batch_sizes if isinstance(cfg.batch_sizes, str) else to_text(cfg.batch_sizes)
    return (f"{cfg.model} · {cfg.engine} · {cfg.device} device · {cfg.dataset}{prompts} · "
            f"batch {batches}")


def _model_presets() -> list[str]:
    """Preset names for the model field's completion."""
    from carbontop.core.modelspec import PRESETS  # light: plain data, no torch

    return sorted(PRESETS)


__all__ = ["ConfigForm", "FIELDS", "FieldSpec", "NOT_IN_FORM", "SECTIONS", "settings_summary", "to_text"]
