"""Entry points: `carbontop` (the app), `carbontop sweep` (headless), `resume`, `open`, `show`,
`export`, `runs`, `compare` and `plot`.

Every failure a user can cause ends in one sentence on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from carbontop import __version__
from carbontop import config as cfgmod  # light: platformdirs and the pure core
from carbontop.core.modelspec import DEFAULT_MAX_LEN, PRESETS, TINY_MAX_LEN
from carbontop.errors import CarbontopError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 130

# Help texts quote the defaults from where they are decided (config, the model presets), never as
# numbers typed again here.
D = cfgmod.DEFAULTS
MODEL_PRESETS = tuple(PRESETS)
MAX_LEN_DEFAULTS = (", ".join(f"{n} {f}" for f, n in DEFAULT_MAX_LEN.items())
                    + f", {TINY_MAX_LEN} tiny")
PUE_PRESET_TEXT = ", ".join(f"{name} ({value:.2f})" for name, (value, _) in cfgmod.PUE_PRESETS.items())

# flag -> RunConfig field, for the sweep and the app
SWEEP_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--model", "model", {"help": f"preset ({', '.join(MODEL_PRESETS)}), a local model folder, or a hub id (meta-llama/Llama-2-7b-hf) from the local Hugging Face cache; for --engine openai the served model name"}),
    ("--engine", "engine", {"metavar": "ENGINE",
                            "help": f"inference engine: {', '.join(cfgmod.ENGINES)} (default "
                                    f"{D.engine}), or an engine class as package.module:Class"}),
    ("--weights", "weights", {"choices": cfgmod.WEIGHTS, "help": "dummy: random weights from the architecture config; auto: the folder's weights"}),
    ("--tokenizer", "tokenizer", {"help": "count tokens with this tokenizer (a model folder, or a hub id in the local Hugging Face cache), e.g. for a preset"}),
    ("--dtype", "dtype", {"choices": cfgmod.DTYPES, "help": "default: bf16 on a GPU, fp32 on the CPU"}),
    ("--device", "device", {"choices": cfgmod.DEVICES, "help": "default: cuda where a GPU is visible"}),
    ("--gpus", "gpus", {"help": "GPU indices to use and measure, e.g. 0 or 0,1"}),
    ("--tp", "tp", {"help": "hf engine: tensor-parallel ranks, one GPU each (default: one per GPU named in --gpus)"}),
    ("--compile", "compile", {"choices": cfgmod.COMPILE_MODES, "help": "hf engine on CUDA: auto compiles the decode step (autotuned at batch 1), on compiles without autotuning, off runs it eagerly; always in a CUDA graph"}),
    ("--quant", "quant", {"choices": cfgmod.QUANTS, "help": f"weight-only quantisation: hf through torchao (int4-wo needs a CUDA GPU), trtllm through TensorRT-LLM's W4A16/W8A16 (default {D.quant})"}),
    ("--power-source", "power_source", {"choices": cfgmod.POWER_SOURCES, "help": f"where power comes from (default {D.power_source}: NVML on a GPU, tegrastats on a Jetson, RAPL or an estimate on a CPU)"}),
    ("--url", "url", {"help": "openai engine: server base URL, e.g. http://localhost:8000"}),
    ("--arch", "arch", {"help": "openai engine: preset or folder with the served model's architecture (for MFU/MBU)"}),
    ("--kv-cache-fraction", "kv_cache_fraction", {"help": f"trtllm: share of free GPU memory for the KV cache (default {D.kv_cache_fraction:g})"}),
    ("--max-num-tokens", "max_num_tokens", {"help": "trtllm: tokens one scheduler step may take (default: TensorRT-LLM's own); a KV-bound point that says 'or token budget' may need more"}),
    ("--request-timeout-s", "request_timeout_s", {"help": f"openai: longest one request may take (default {D.request_timeout_s:g} s)"}),
    ("--stall-timeout-s", "stall_timeout_s", {"help": f"kill an engine that sends no word for this long and record its point as hung (default {D.stall_timeout_s:g} s: compiles and engine builds are silent)"}),
    ("--dataset", "dataset", {"help": f"sharegpt, synthetic, or a ShareGPT-format JSON file (default {D.dataset})"}),
    ("--num-prompts", "num_prompts", {"help": f"prompts per point (default {cfgmod.per_device(cfgmod.GPU_NUM_PROMPTS, cfgmod.CPU_NUM_PROMPTS)})"}),
    ("--max-input-len", "max_input_len", {"help": f"longest prompt in tokens (default: {MAX_LEN_DEFAULTS})"}),
    ("--max-output-len", "max_output_len", {"help": "longest output in tokens (same defaults)"}),
    ("--batch-sizes", "batch_sizes", {"help": "auto (double until OOM, then bisect) or a list like 1,2,4,8"}),
    ("--batching", "batching", {"choices": cfgmod.BATCHINGS, "help": f"inflight: at most b sequences in flight, a finished one's slot refilled at once; static: the paper's batches of b, each until its longest request ends (default {D.batching})"}),
    ("--min-window-s", "min_window_s", {"help": f"each point runs until its steady-state window (b in flight) lasts this long (default {cfgmod.per_device(cfgmod.GPU_MIN_WINDOW_S, cfgmod.CPU_MIN_WINDOW_S, ' s')})"}),
    ("--max-point-s", "max_point_s", {"help": f"a point stops admitting requests this long after its first (default {cfgmod.per_device(cfgmod.GPU_MAX_POINT_S, cfgmod.CPU_MAX_POINT_S, ' s')})"}),
    ("--repeats", "repeats", {"help": f"re-measure each batch that fits N times in shuffled order, once the GPU settles (default {D.repeats})"}),
    ("--max-batch", "max_batch", {"help": f"where auto stops if nothing failed (default {cfgmod.per_device(cfgmod.GPU_MAX_BATCH, cfgmod.CPU_MAX_BATCH)}, {cfgmod.OPENAI_MAX_BATCH} for --engine openai)"}),
    ("--intensity", "intensity", {"help": f"grid carbon intensity, gCO2e/kWh (default {D.intensity:g}, the paper's Wisconsin reading)"}),
    ("--zone", "zone", {"help": "Electricity Maps zone id for a built-in annual average (FR, DE, US-MIDW-MISO, ...)"}),
    ("--trace", "trace", {"help": "hourly intensity CSV in Electricity Maps' export format"}),
    ("--trace-shift-h", "trace_shift_h", {"help": "shift the trace's clock by this many hours"}),
    ("--emaps-zone", "emaps_zone", {"help": "Electricity Maps API v3 zone (token in ELECTRICITYMAPS_TOKEN)"}),
    ("--pue", "pue", {"help": f"power usage effectiveness: a number (default {D.pue:.1f}) or a preset: {PUE_PRESET_TEXT}"}),
    ("--lifetime-years", "lifetime_years", {"help": f"GPU lifetime for embodied carbon (default {D.lifetime_years:g} years)"}),
    ("--slo-s-per-token", "slo_s_per_token", {"help": f"latency target per user (default {D.slo_s_per_token:g} s/token = {1 / D.slo_s_per_token:g} tokens/s)"}),
    ("--slo-tpot-p90-s", "slo_tpot_p90_s", {"help": "optional TPOT p90 target in seconds"}),
    ("--seed", "seed", {"help": f"seed of the prompt sample (default {D.seed})"}),
    ("--out", "out", {"help": "run directory (default: a new folder under the data dir)"}),
]


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="a run TOML; flags override it")
    for flag, dest, kw in SWEEP_FLAGS:
        parser.add_argument(flag, dest=dest, default=None, **kw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carbontop",
        description="Measure what LLM inference costs in energy and carbon. With no command, opens the app.",
    )
    parser.add_argument("--version", action="version", version=f"carbontop {__version__}")
    sub = parser.add_subparsers(dest="command")
    app = sub.add_parser("app", help="open the app (the default)")
    _add_config_flags(app)
    sweep = sub.add_parser("sweep", help="run a batch-size sweep headless and print the table")
    _add_config_flags(sweep)
    sweep.add_argument("--quiet", action="store_true", help="print only the final table")
    resume = sub.add_parser(
        "resume", help="carry on a cancelled or interrupted sweep: finished points are kept")
    resume.add_argument("run_dir", type=Path)
    resume.add_argument("--quiet", action="store_true", help="print only the final table")
    run_help = "a run directory, or a saved run's name (see carbontop runs)"
    open_ = sub.add_parser("open", help="open a saved run in the app (no GPU needed)")
    open_.add_argument("run_dir", help=run_help)
    show = sub.add_parser("show", help="print a saved run's table")
    show.add_argument("run_dir", help=run_help)
    export = sub.add_parser("export", help="export a saved run's points to CSV")
    export.add_argument("run_dir", help=run_help)
    export.add_argument("-o", "--output", type=Path, help="file or folder (default: ./<run>-points.csv)")
    sub.add_parser("runs", help="list saved runs")
    compare = sub.add_parser("compare", help="put saved runs side by side (the first is the reference)")
    compare.add_argument("runs", nargs="+", metavar="RUN", help=run_help)
    compare.add_argument("-o", "--output", type=Path,
                         help="also write the runs' charts, overlaid, to this .svg, .png or .pdf")
    plot = sub.add_parser("plot", help="write saved runs' charts to an SVG, PNG or PDF file (overlaid)")
    plot.add_argument("runs", nargs="+", metavar="RUN", help=run_help)
    plot.add_argument("-o", "--output", type=Path, required=True, help="the file: .svg, .png or .pdf")
    plot.add_argument("--charts", default="energy,carbon,tradeoff,power",
                      help="which charts, in order (default: energy,carbon,tradeoff,power)")
    plot.add_argument("--latency", choices=["s-per-token", "tpot-p90"], default="s-per-token",
                      help="the trade-off chart's latency: user-perceived s/token (default) or TPOT p90")
    plot.add_argument("--title", default="", help="the figure's title (default: the runs' names)")
    return parser


def config_from_args(args: argparse.Namespace) -> Any:
    from carbontop.config import from_mapping, load_toml, load_user_defaults
    from carbontop.errors import ConfigError

    for flag, dest, _ in [("--config", "config", None), *SWEEP_FLAGS]:
        value = getattr(args, dest, None)
        if value is not None and str(value).strip() == "":
            raise ConfigError(f"{flag} was given an empty value; give it one or leave it out.", dest)
    cfg = load_user_defaults()
    if getattr(args, "config", None):
        cfg = load_toml(args.config, cfg)
    flags = {dest: getattr(args, dest) for _, dest, _ in SWEEP_FLAGS if getattr(args, dest, None) is not None}
    return from_mapping(flags, cfg, origin="the command line")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in (None, "app"):
            return _app(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "resume":
            return _resume(args)
        if args.command == "open":
            return _open(args)
        if args.command == "show":
            return _show(args)
        if args.command == "export":
            return _export(args)
        if args.command == "runs":
            return _runs()
        if args.command == "compare":
            return _compare(args)
        if args.command == "plot":
            return _plot(args)
    except CarbontopError as exc:
        print(f"carbontop: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("carbontop: interrupted.", file=sys.stderr)
        return EXIT_CANCELLED
    parser.print_help()
    return EXIT_USAGE


def _app(args: argparse.Namespace) -> int:
    cfg = config_from_args(args) if args.command == "app" else None
    from carbontop.tui.app import run_app

    return run_app(cfg)


def _open(args: argparse.Namespace) -> int:
    from carbontop.core.store import load_run

    run_dir = _find(args.run_dir)
    load_run(run_dir, with_power=False)  # a bad path fails here, in one sentence
    from carbontop.tui.app import run_app

    return run_app(None, open_run=run_dir)


def _resume(args: argparse.Namespace) -> int:
    from carbontop.core.store import load_run
    from carbontop.sweep.resume import check_resumable, config_for_resume

    saved = load_run(args.run_dir, with_power=False)
    check_resumable(saved)
    return _sweep(args, config_for_resume(saved), saved)


def _sweep(args: argparse.Namespace, cfg: Any = None, resume_from: Any = None) -> int:
    from rich.console import Console

    from carbontop.sweep import events
    from carbontop.sweep.runner import SweepRunner

    cfg = cfg if cfg is not None else config_from_args(args)
    err = Console(stderr=True, highlight=False)
    quiet = args.quiet
    bar = _PointBar(err)

    def on_event(event: Any) -> None:
        if quiet:
            return
        if isinstance(event, (events.PointStarted, events.PointProgress)):
            bar.update(event)
            return
        if isinstance(event, (events.PointFinished, events.SweepFinished)):
            bar.done()
        if isinstance(event, events.SweepStarted):
            estimated = " (energy estimated: no hardware counter)" if event.energy_estimated else ""
            err.print(f"[bold]carbontop[/] sweep on {', '.join(event.devices)}{estimated} -> {event.run_dir}")
        elif isinstance(event, events.PhaseChanged):
            at = f" batch {event.batch_size}" if event.batch_size else ""
            detail = f" ({event.detail})" if event.detail else ""
            err.print(f"  {event.phase.value}{at}{detail}")
        elif isinstance(event, events.PointFinished):
            p = event.point
            if p.status.value == "ok":
                ci = (f" ±{p.j_per_token_ci95 / p.j_per_token * 100:.1f}%"
                      if p.j_per_token_ci95 is not None and p.j_per_token else "")
                again = f" (re-measure {p.repeat})" if p.repeat else ""
                err.print(
                    f"  batch {p.batch_size}{again}: {p.tokens_per_s:.1f} tok/s, "
                    f"{(p.j_per_token or 0):.4g} J/tok{ci}, window {p.duration_s or 0:.1f} s, "
                    f"{p.energy_source}"
                )
            else:
                err.print(f"  batch {p.batch_size}: [yellow]{p.status.value}[/] {p.message}")
        elif isinstance(event, events.BoundaryChanged) and event.smallest_failed is not None:
            err.print(f"  boundary: {event.largest_ok} fits, {event.smallest_failed} does not")

    runner = SweepRunner(cfg, on_event, resume_from=resume_from)
    return _drive(runner, err, quiet)


def _drive(runner: Any, err: Any, quiet: bool = False) -> int:
    """Prepare and run the sweep on a thread while the main thread waits for signals."""
    from carbontop.core.store import load_run
    from carbontop.interrupts import StopOnSignals
    from carbontop.report import print_summary

    failure: list[BaseException] = []
    done = threading.Event()
    prepared = threading.Event()  # the run directory is carbontop's from here on

    def target() -> None:
        try:
            runner.prepare()
            prepared.set()
            for warning in runner.warnings:
                err.print(f"[yellow]warning:[/] {warning}")
            if not quiet:
                tokenizer = runner.workload.tokenizer or "the dataset (synthetic lengths)"
                err.print(f"tokens counted by: {tokenizer}")
            runner.run()  # records a cancel that came during prepare() as well
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            failure.append(exc)
        finally:
            done.set()

    def say(text: str) -> None:
        try:
            err.print(text)
        except (OSError, ValueError):
            pass  # no terminal left to tell

    thread = threading.Thread(target=target, name="carbontop-sweep")
    with StopOnSignals(runner.cancel, say) as signals:
        thread.start()
        # Wait on an Event, never on a timed join: signal handlers run here between waits.
        while not done.wait(0.5):
            pass
        thread.join()
    if prepared.is_set():
        try:
            print_summary(load_run(runner.run_dir, with_power=False), _stdout_console())
        except (OSError, ValueError):
            pass  # the terminal is gone (SIGHUP); the run directory holds everything
    if failure:
        exc = failure[0]
        if isinstance(exc, CarbontopError):
            raise exc
        raise CarbontopError(f"The sweep stopped on an unexpected error: {type(exc).__name__}: {exc}")
    if signals.received is not None:
        return signals.received.exit_code
    return EXIT_CANCELLED if runner.cancelled else EXIT_OK


class _PointBar:
    """The running point's progress bar on stderr: requests done, the steady-state window's
    seconds against its target, and the ETA (warm-up and ramp-up counted), as the app shows."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.progress: Any = None
        self.task: Any = None

    def update(self, event: Any) -> None:
        from rich.progress import BarColumn, Progress, TextColumn

        from carbontop.sweep import events

        if self.progress is None:
            self.progress = Progress(TextColumn("  {task.description}"), BarColumn(),
                                     TextColumn("{task.fields[info]}"), console=self.console,
                                     transient=True)
            self.progress.start()
        if isinstance(event, events.PointStarted):
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(f"batch {event.batch_size}", total=None,
                                               info="warming up")
            return
        if self.task is None:
            return
        parts = [f"{event.done} requests"]
        if event.window_target_s:
            parts.append(f"window {event.window_s or 0:.1f}/{event.window_target_s:.0f} s")
        elif event.total:
            parts.append(f"of {event.total}")
        if event.eta_s is not None:
            parts.append(f"ETA {event.eta_s:.0f} s")
        if event.window_target_s:
            self.progress.update(self.task, total=event.window_target_s,
                                 completed=min(event.window_s or 0.0, event.window_target_s),
                                 info=" · ".join(parts))
        else:
            self.progress.update(self.task, total=event.total, completed=event.done,
                                 info=" · ".join(parts))

    def done(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        self.progress = self.task = None


def _stdout_console(piped_width: int = 200) -> Any:
    from rich.console import Console

    console = Console()
    # piped into a file or a script: do not squeeze the table into 80 columns
    return console if console.is_terminal else Console(width=piped_width)


def _show(args: argparse.Namespace) -> int:

    from carbontop.core.store import load_run
    from carbontop.report import print_summary

    print_summary(load_run(_find(args.run_dir), with_power=False), _stdout_console())
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from carbontop.core.store import export_points_csv

    dest = args.output or Path.cwd()
    written = export_points_csv(_find(args.run_dir), dest)
    print(written)
    return EXIT_OK


def _find(ref: str) -> Path:
    """A run directory from its path or its name under the runs folder."""
    from carbontop.config import runs_dir
    from carbontop.core.store import find_run

    return find_run(ref, runs_dir())


def _load_runs(refs: list[str], *, with_power: bool) -> list[Any]:
    from carbontop.core.store import load_run

    return [load_run(_find(ref), with_power=with_power) for ref in refs]


def _compare(args: argparse.Namespace) -> int:
    from carbontop.figures.compare import summarize
    from carbontop.report import print_comparison

    saved = _load_runs(args.runs, with_power=args.output is not None)
    # runs as columns: long cells wrap, so a file gets a page width rather than the widest line
    print_comparison([summarize(run) for run in saved], _stdout_console(piped_width=120))
    if args.output is not None:
        _write_plot(saved, args.output)
    return EXIT_OK


def _plot(args: argparse.Namespace) -> int:
    from carbontop.figures.series import Metric

    charts = [c.strip() for c in args.charts.split(",") if c.strip()]
    latency = Metric.TPOT_P90_S if args.latency == "tpot-p90" else Metric.S_PER_TOKEN
    _write_plot(_load_runs(args.runs, with_power="power" in charts), args.output,
                charts=charts, latency=latency, title=args.title)
    return EXIT_OK


def _write_plot(saved: list[Any], dest: Path, **options: Any) -> None:
    from carbontop.figures.matplotlib_files import output_format, write_figure
    from carbontop.figures.series import chart_run

    output_format(dest)  # a wrong suffix is said before the runs are drawn
    print(write_figure([chart_run(run) for run in saved], dest, **options))


def _runs() -> int:
    from rich.console import Console
    from rich.table import Table

    from carbontop.config import runs_dir
    from carbontop.core.store import list_runs, load_run

    base = runs_dir()
    runs = list_runs(base)
    if not runs:
        print(f"No runs yet under {base}.")
        return EXIT_OK
    # the name is what show, open, compare and plot take; the folder is said once, below
    table = Table(box=None, header_style="bold", pad_edge=False, collapse_padding=True,
                  caption=f"in {base}", caption_justify="left")
    # the name is typed back (show, compare...): it folds rather than loses letters; model and
    # device give way first
    table.add_column("run", overflow="fold", min_width=min(RUN_NAME_MIN_WIDTH, max(len(p.name) for p in runs)))
    table.add_column("date", no_wrap=True)
    table.add_column("model", overflow="ellipsis", no_wrap=True, max_width=12)
    table.add_column("device", overflow="ellipsis", no_wrap=True, max_width=16)
    table.add_column("state", no_wrap=True)
    table.add_column("pts", justify="right", no_wrap=True)
    for path in runs:
        try:
            run = load_run(path, with_power=False)
        except CarbontopError as exc:  # one damaged run must not hide the others
            table.add_row(path.name, "", "", f"unreadable: {exc}", "", "")
            continue
        started = run.meta.status.started
        date = started.strftime("%Y-%m-%d %H:%M") if started is not None else ""
        devices = [_short_device(d) for d in run.meta.environment.devices]
        table.add_row(path.name, date, run.meta.settings.model, ", ".join(devices),
                      run.state, str(len(run.points)))
    Console().print(table)
    return EXIT_OK


RUN_NAME_MIN_WIDTH = 24  # a run's date stamp and the start of its label, at 80 columns


def _short_device(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'H100 80GB HBM3': every GPU NVML names starts with the maker."""
    return name.removeprefix("NVIDIA ").removeprefix("CPU: ")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
