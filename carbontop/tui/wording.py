"""Sentences from the core, worded for the app.

The core's sentences are shared by the CLI and the app, and name a setting by its flag
(`choose another --out`) or by its config key (`'num_prompts' must be ...`). The app has no flags:
there the setting is the form's field, named by its label (`choose another 'run folder'`). A `--word` that is no setting (`pip install
--force-reinstall`) is left as it is.
"""

from __future__ import annotations

import re

from carbontop.tui.widgets.config_form import FIELDS

_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")
_QUOTED_NAME = re.compile(r"'([a-z][a-z0-9_]*)'")


def for_app(text: str) -> str:
    """`text` with every flag that is a form field replaced by that field's label, in quotes."""

    def label(match: re.Match[str]) -> str:
        spec = FIELDS.get(match.group(1).replace("-", "_"))
        return f"'{spec.label}'" if spec is not None else match.group(0)

    def quoted(match: re.Match[str]) -> str:
        spec = FIELDS.get(match.group(1))
        return f"'{spec.label}'" if spec is not None else match.group(0)

    return _QUOTED_NAME.sub(quoted, _FLAG.sub(label, text))


__all__ = ["for_app"]
