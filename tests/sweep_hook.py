"""`python tests/sweep_hook.py ENGINE carbontop-args...`: the carbontop CLI with a test-double
engine (a "module:Class" from engines_for_tests) and a short idle measurement. Tests only: it
patches the runner from outside, so that the fault tests drive the real CLI process end to end.
"""

from __future__ import annotations

import dataclasses
import sys

from carbontop.sweep import runner as runner_module


def main() -> int:
    engine, argv = sys.argv[1], sys.argv[2:]
    runner_module.IDLE_MEASURE_S = 0.2
    prepare = runner_module.SweepRunner.prepare

    def prepare_with_test_engine(self: runner_module.SweepRunner) -> None:
        prepare(self)
        self.engine_spec = dataclasses.replace(self.engine_spec, engine=engine)

    runner_module.SweepRunner.prepare = prepare_with_test_engine  # type: ignore[method-assign]
    from carbontop.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
