"""The run configuration form: every field of RunConfig a user sets before a sweep.

Values are read back through carbontop.config (the same coercion and validation as the CLI and
TOML files), so a bad value is marked with the very sentence the CLI would print.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.widgets import Input, Label, Select, Static

from carbontop import config as cfgmod
from carbontop.errors import ConfigError


@dataclass(frozen=True)
class FieldSpec:
    name: str  # RunConfig attribute
    label: str
    choices: tuple[str, ...] = ()  # a Select when set, an Input otherwise
    placeholder: str = ""
    required: bool = False  # blank is an error (otherwise blank means "the default": None)
    help: str = ""


SECTIONS: tuple[tuple[str, tuple[FieldSpec, ...]], ...] = (
    ("Model and engine", (
        FieldSpec("model", "model", placeholder="preset or model folder", required=True,
                  help="A preset (tiny, gpt2, llama2-7b, ...) or a local Hugging Face model folder."),
        FieldSpec("engine", "engine", cfgmod.ENGINES),
        FieldSpec("url", "server url", placeholder="http://host:8000 (openai engine)",
                  help="Base URL of an OpenAI-compatible server; only for the openai engine."),
        FieldSpec("arch", "architecture", placeholder="preset or folder (openai engine)",
                  help="For the openai engine: the preset or model folder the server runs, for MFU/MBU."),
        FieldSpec("weights", "weights", cfgmod.WEIGHTS,
                  help="dummy: random weights of the real shape (no download); auto: the real ones."),
        FieldSpec("dtype", "dtype", cfgmod.DTYPES),
        FieldSpec("device", "device", cfgmod.DEVICES),
        FieldSpec("gpus", "GPUs", placeholder="all visible (or 0,1)",
                  help="NVML indices of the GPUs in use, comma-separated; blank for all."),
    )),
    ("Workload", (
        FieldSpec("dataset", "dataset", placeholder="sharegpt, synthetic or a JSON path", required=True),
        FieldSpec("num_prompts", "prompts", placeholder="100 on a GPU, 16 on the CPU",
                  help="Requests per sweep point; blank for 100 on a GPU (as the paper), 16 on the CPU."),
        FieldSpec("max_input_len", "max input", placeholder="model preset's default",
                  help="Longest prompt, in tokens; blank for the model preset's default."),
        FieldSpec("max_output_len", "max output", placeholder="model preset's default",
                  help="Longest output, in tokens; blank for the model preset's default."),
        FieldSpec("seed", "seed", placeholder="0", required=True),
    )),
    ("Sweep", (
        FieldSpec("batch_sizes", "batch sizes", placeholder="auto, or 1,2,4,8", required=True,
                  help="auto: double until out of memory, then bisect; or a list of sizes."),
        FieldSpec("max_batch", "max batch", placeholder="1024 on a GPU, 16 on the CPU",
                  help="Where the automatic search stops if nothing failed."),
    )),
    ("Carbon", (
        FieldSpec("intensity", "gCO2e/kWh", placeholder="413", required=True,
                  help="Grid carbon intensity, used when no zone, trace or live source is set."),
        FieldSpec("zone", "zone", placeholder="none (e.g. DE, US-MIDW-MISO)",
                  help="An Electricity Maps zone id: its annual average replaces the number above."),
        FieldSpec("trace", "trace CSV", placeholder="none (hourly CSV path)",
                  help="An hourly Electricity Maps export: intensity follows the clock of the run."),
        FieldSpec("emaps_zone", "live zone", placeholder="none (token: ELECTRICITYMAPS_TOKEN)",
                  help="Electricity Maps zone read live through its API during the run."),
        FieldSpec("pue", "PUE", placeholder="1.0", required=True,
                  help="Power usage effectiveness of the facility: 1.1 for a hyperscaler, 1.58 average."),
        FieldSpec("lifetime_years", "GPU life yr", placeholder="5", required=True,
                  help="Years over which the GPU's embodied carbon is spread."),
        FieldSpec("slo_s_per_token", "SLO s/tok", placeholder="0.2", required=True,
                  help="Latency target per token for the recommendation (0.2 s = reading speed)."),
    )),
)
FIELDS: dict[str, FieldSpec] = {f.name: f for _, specs in SECTIONS for f in specs}


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


class ConfigForm(VerticalScroll):
    """Fields by section; `read()` returns a validated RunConfig or raises ConfigError."""

    BINDINGS = [Binding("escape", "leave", "Leave form", show=False)]

    DEFAULT_CSS = """
    ConfigForm { padding: 0 1; }
    ConfigForm .section { text-style: bold; color: $primary; margin-top: 1; height: 1; }
    ConfigForm .section.first { margin-top: 0; }
    ConfigForm .field { height: 1; }
    ConfigForm .field Label { width: 12; color: $text-muted; }
    ConfigForm .field Input, ConfigForm .field Select { width: 1fr; }
    ConfigForm .field-error { color: $error; height: auto; display: none; padding-left: 12; }
    ConfigForm .field-error.shown { display: block; }
    ConfigForm #form-error { color: $error; height: auto; display: none; }
    ConfigForm #form-error.shown { display: block; }
    """

    class Leave(Message):
        """The user pressed escape in the form: the app moves focus back to the panes."""

    class Edited(Message):
        """A field changed; the app revalidates so marks follow the user's typing."""

    def __init__(self, initial: cfgmod.RunConfig, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.base = initial
        self.error_field: str | None = None
        self._loading = False

    def compose(self) -> ComposeResult:
        yield Static("", id="form-error")
        suggestions = _model_presets()
        for n, (title, specs) in enumerate(SECTIONS):
            yield Label(title, classes="section first" if n == 0 else "section")
            for spec in specs:
                value = to_text(getattr(self.base, spec.name))
                with Horizontal(classes="field", id=f"row-{spec.name}"):
                    yield Label(spec.label)
                    if spec.choices:
                        options = [(c, c) for c in spec.choices]
                        if value not in spec.choices:  # a value from a newer config: keep it visible
                            options.append((value, value))
                        yield Select(options, value=value, allow_blank=False, compact=True,
                                     id=f"f-{spec.name}", tooltip=spec.help or None)
                    else:
                        suggester = SuggestFromList(suggestions) if spec.name == "model" and suggestions else None
                        yield Input(value, placeholder=spec.placeholder, compact=True, id=f"f-{spec.name}",
                                    suggester=suggester, tooltip=spec.help or None)
                yield Static("", classes="field-error", id=f"e-{spec.name}")

    def on_mount(self) -> None:
        self.border_title = "Run configuration"

    # ---- values -------------------------------------------------------------------------

    def values(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, spec in FIELDS.items():
            widget = self.query_one(f"#f-{name}")
            value = widget.value  # type: ignore[attr-defined]
            out[name] = "" if value is None or value is Select.BLANK else str(value).strip()
        return out

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
        self._loading = True
        try:
            for name, spec in FIELDS.items():
                value = to_text(getattr(cfg, name))
                widget = self.query_one(f"#f-{name}")
                if isinstance(widget, Select):
                    if value not in spec.choices:
                        widget.set_options([(c, c) for c in (*spec.choices, value)])
                    widget.value = value
                else:
                    widget.value = value  # type: ignore[attr-defined]
        finally:
            self.call_after_refresh(self._done_loading)
        self.clear_errors()

    def _done_loading(self) -> None:
        self._loading = False

    # ---- marks --------------------------------------------------------------------------

    def check(self) -> cfgmod.RunConfig | None:
        """Validate and mark: the config, or None with the offending field marked."""
        self.clear_errors()
        try:
            return self.read()
        except ConfigError as exc:
            self.mark(str(exc), exc.field)
            return None

    def mark(self, message: str, field: str | None) -> None:
        """Show `message` under `field` (or at the top, for a setting that has no field here)."""
        self.clear_errors()
        if field in FIELDS:
            self.error_field = field
            self.query_one(f"#f-{field}").add_class("-invalid")
            error = self.query_one(f"#e-{field}", Static)
        else:
            self.error_field = None
            error = self.query_one("#form-error", Static)
        error.update(message)
        error.add_class("shown")

    def clear_errors(self) -> None:
        self.error_field = None
        for widget in self.query(".-invalid"):
            widget.remove_class("-invalid")
        for error in self.query(".field-error.shown, #form-error.shown"):
            error.remove_class("shown")

    def focus_error(self) -> None:
        if self.error_field:
            widget = self.query_one(f"#f-{self.error_field}")
            widget.focus()
            self.scroll_to_widget(widget)

    def focus_first(self) -> None:
        self.query_one("#f-model").focus()

    def set_enabled(self, enabled: bool) -> None:
        for name in FIELDS:
            self.query_one(f"#f-{name}").disabled = not enabled

    # ---- events -------------------------------------------------------------------------

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if not self._loading:
            self.post_message(self.Edited())

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if not self._loading:
            self.post_message(self.Edited())

    def action_leave(self) -> None:
        self.post_message(self.Leave())


def _model_presets() -> list[str]:
    """Preset names for the model field's completion, if the preset table is importable."""
    try:
        from carbontop.core import modelspec  # light: plain data, no torch
    except Exception:  # noqa: BLE001 - completion is a nicety; the field works without it
        return []
    presets = getattr(modelspec, "PRESETS", None)
    if isinstance(presets, dict):
        return sorted(presets)
    return []


__all__ = ["ConfigForm", "FIELDS", "FieldSpec", "SECTIONS", "to_text"]
