"""The core must load without Textual, torch, transformers or pynvml (and start fast)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ["textual", "torch", "transformers", "pynvml", "tensorrt_llm", "pandas"]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout
    return set(out.split())


def test_core_imports_nothing_heavy() -> None:
    loaded = _modules_after(
        "import carbontop.sweep.runner, carbontop.core.metrics, carbontop.core.carbon, "
        "carbontop.core.workload, carbontop.core.store, carbontop.core.hardware, "
        "carbontop.engines.host, carbontop.telemetry.sampler, carbontop.telemetry.sources, "
        "carbontop.config, carbontop.report"
    )
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_cli_help_imports_nothing_heavy() -> None:
    loaded = _modules_after("import carbontop.cli; carbontop.cli.build_parser()")
    assert not loaded & set(HEAVY)
