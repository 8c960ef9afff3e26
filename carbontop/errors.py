"""Errors a user can cause. Each carries one sentence that the CLI and the TUI show as is."""


class CarbontopError(Exception):
    """A failure the user can fix; its message is a complete sentence shown without a traceback."""


class ConfigError(CarbontopError):
    """A configuration value (flag, TOML file or form field) is invalid."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class WorkloadError(CarbontopError):
    """The prompt source cannot be read or yields no usable prompt."""


class CarbonSourceError(CarbontopError):
    """A grid-intensity source (zone, trace, API) cannot be used."""


class EngineUnavailable(CarbontopError):
    """The chosen engine cannot start here (missing package, no GPU, server down)."""


# How much of another program's message (an engine's, a server's) is quoted inside one of
# carbontop's sentences: the first few lines of a stack trace say nothing the log does not keep.
QUOTE_MAX_CHARS = 300


def one_line(text: object, limit: int = QUOTE_MAX_CHARS) -> str:
    """`text` on one line (white space folded), cut to `limit` characters with an ellipsis."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def quoted(text: object, limit: int = QUOTE_MAX_CHARS) -> str:
    """Another program's message as it sits inside a sentence: one line, no full stop of its own."""
    return one_line(text, limit).rstrip(".")


def first_line(exc: BaseException, limit: int = QUOTE_MAX_CHARS) -> str:
    """An exception's first line, quoted (native libraries append C++ stack traces below it), or
    its type's name where it has no message."""
    lines = str(exc).strip().splitlines()
    return quoted(lines[0], limit) if lines else type(exc).__name__
