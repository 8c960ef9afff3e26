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
