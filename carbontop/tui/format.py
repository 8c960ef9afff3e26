"""Number formatting for the panes: short, unit-free strings (units live in the headers)."""

from __future__ import annotations

import math

DASH = "—"


def sig(value: float | None, digits: int = 3) -> str:
    """`digits` significant figures; scientific only where fixed notation would be long."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if value == 0:
        return "0"
    # the magnitude after rounding: 0.09999 to 3 figures is 0.100, not 0.1000
    magnitude = math.floor(math.log10(abs(float(f"{value:.{digits - 1}e}"))))
    if magnitude < -3 or magnitude >= 6:
        return sci(value, digits)
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:.{decimals}f}"


def sci(value: float | None, digits: int = 3) -> str:
    """Compact scientific notation: 3.44e-5 (no zero-padded exponent, to save columns)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def carbon(value: float | None) -> str:
    """Carbon per token is tiny (1e-5..1e-3 g): scientific below 0.01 g, so columns line up."""
    if value is not None and value != 0 and abs(value) < 0.01:
        return sci(value, 3)
    return sig(value, 3)


def seconds(value: float | None) -> str:
    """Latencies: 3 significant figures, but never more than 4 decimals (0.0071, 0.0789, 12.3),
    so that the column stays 6 wide on an 80-column terminal."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if value != 0 and abs(value) < 0.01:
        return f"{value:.4f}"
    return sig(value, 3)


def throughput(value: float | None) -> str:
    """Tokens per second: 0.523, 85.0, 965.2, 12345."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if abs(value) < 10:
        return sig(value, 3)
    return fixed(value, 1 if abs(value) < 1000 else 0)


def fixed(value: float | None, decimals: int = 1, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{value * scale:.{decimals}f}"


def duration(seconds: float | None) -> str:
    """12s, 3m 05s, 1h 02m."""
    if seconds is None or seconds < 0 or math.isnan(seconds):
        return DASH
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {(s % 3600) // 60:02d}m"
