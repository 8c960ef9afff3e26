"""Colour themes from TOML files: the ones shipped with carbontop, then the user's own.

A theme file is a flat TOML table with Textual's theme fields (`name`, `primary`, and optionally
`secondary`, `accent`, `warning`, `error`, `success`, `foreground`, `background`, `surface`,
`panel`, `boost`, `dark`, `luminosity_spread`, `text_alpha`) and an optional `[variables]` table.
A file that cannot be used is reported by name and skipped; the app then keeps its default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from textual.color import Color, ColorParseError
from textual.theme import Theme

from carbontop.core.tomlcompat import tomllib

DEFAULT_THEME = "carbontop-dark"
PACKAGE_THEMES_DIR = Path(__file__).with_name("themes")  # the one copy, in the wheel and the checkout

_COLOUR_KEYS = (
    "primary", "secondary", "warning", "error", "success", "accent",
    "foreground", "background", "surface", "panel", "boost",
)
_FLOAT_KEYS = ("luminosity_spread", "text_alpha")


class ThemeFileError(ValueError):
    """A theme file that cannot be used; the message is one sentence naming the problem."""


@dataclass
class ThemeLoad:
    themes: list[Theme] = field(default_factory=list)  # in load order, later names override earlier
    problems: list[str] = field(default_factory=list)  # one sentence per broken file


def parse_theme(path: Path) -> Theme:
    """Read one theme file; raise ThemeFileError with what is wrong."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ThemeFileError(f"it is not valid TOML ({exc})") from None
    except OSError as exc:
        raise ThemeFileError(f"it cannot be read ({exc.strerror})") from None
    name = data.pop("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise ThemeFileError("'name' must be a non-empty string")
    if "primary" not in data:
        raise ThemeFileError("it has no 'primary' colour")
    kwargs: dict[str, object] = {"name": name.strip()}
    for key in _COLOUR_KEYS:
        if key not in data:
            continue
        value = data.pop(key)
        if not isinstance(value, str):
            raise ThemeFileError(f"'{key}' must be a colour string")
        try:
            Color.parse(value)
        except ColorParseError:
            raise ThemeFileError(f"'{key}' = '{value}' is not a colour") from None
        kwargs[key] = value
    if "dark" in data:
        dark = data.pop("dark")
        if not isinstance(dark, bool):
            raise ThemeFileError("'dark' must be true or false")
        kwargs["dark"] = dark
    for key in _FLOAT_KEYS:
        if key in data:
            value = data.pop(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ThemeFileError(f"'{key}' must be a number")
            kwargs[key] = float(value)
    variables = data.pop("variables", {})
    if not isinstance(variables, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in variables.items()
    ):
        raise ThemeFileError("[variables] must map names to strings")
    kwargs["variables"] = dict(variables)
    if data:
        raise ThemeFileError(f"unknown key(s): {', '.join(sorted(data))}")
    theme = Theme(**kwargs)  # type: ignore[arg-type]
    try:
        theme.to_color_system().generate()  # catches what the single-colour checks cannot
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is unusable
        raise ThemeFileError(f"its colours cannot be combined ({exc})") from None
    return theme


def theme_dirs(user_dir: Path | None) -> list[Path]:
    dirs = [PACKAGE_THEMES_DIR]
    if user_dir is not None:
        dirs.append(user_dir)
    return dirs


def load_themes(dirs: list[Path]) -> ThemeLoad:
    """Every *.toml theme in `dirs`, in order; a theme's name decides which copy wins (the last)."""
    result = ThemeLoad()
    by_name: dict[str, Theme] = {}
    for directory in dirs:
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.toml")):
            try:
                theme = parse_theme(path)
            except ThemeFileError as exc:
                result.problems.append(f"Theme file {path} is broken: {exc}.")
                continue
            by_name.pop(theme.name, None)  # keep load order, latest copy last
            by_name[theme.name] = theme
    result.themes = list(by_name.values())
    return result
