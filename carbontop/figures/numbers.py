"""One number format per table column, for the CLI's table and the app's alike.

A column whose values span orders of magnitude (carbon per token: 3e-4 at batch 1, 2e-5 at batch
200) must not print some of them fixed and some scientific ("0.000308" above "7.04e-06"): the eye
compares lengths. So the notation and the decimals are chosen once per column, from all its values:
fixed where every value reads well fixed, with enough decimals for the smallest one to keep its
significant figures; scientific for every value otherwise, with the same number of figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

DASH = "—"
# fixed notation stays readable from 0.001 up to a million; outside it, scientific
FIXED_FROM = 1e-3
FIXED_BELOW = 1e6
MAX_DECIMALS = 6


def _present(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values
            if v is not None and not (isinstance(v, float) and math.isnan(v))]


def sci(value: float, digits: int = 3) -> str:
    """Compact scientific notation: 3.44e-5 (no zero-padded exponent, to save columns)."""
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def column_format(values: Iterable[float | None], digits: int = 3,
                  missing: str = DASH) -> Callable[[float | None], str]:
    """A formatter for every value of one column: the same notation and decimals for all."""
    present = [abs(v) for v in _present(values) if v != 0]
    if not present:
        return lambda v: missing if v is None else f"{float(v):.{max(0, digits - 1)}f}"
    # magnitudes after rounding to `digits` figures: 0.09999 is 0.100
    low = min(math.floor(math.log10(float(f"{v:.{digits - 1}e}"))) for v in present)
    high = max(float(f"{v:.{digits - 1}e}") for v in present)
    if 10.0 ** low >= FIXED_FROM and high < FIXED_BELOW:
        decimals = min(MAX_DECIMALS, max(0, digits - 1 - low))
        return lambda v: missing if v is None or math.isnan(float(v)) else f"{float(v):.{decimals}f}"
    return lambda v: missing if v is None or math.isnan(float(v)) else sci(float(v), digits)


@dataclass(frozen=True)
class NumberFormat:
    """How one column prints: a fixed number of decimals, or `digits` significant figures for its
    smallest value with one notation for all (column_format); after `scale` (SI unit to the
    header's unit: x1000 for ms, x100 for %)."""

    decimals: int | None = None
    digits: int = 3
    scale: float = 1.0

    def for_column(self, values: Iterable[float | None], missing: str = DASH) -> Callable[[float | None], str]:
        """A formatter for this column's values (already scaled) and the values it will print."""
        if self.decimals is not None:
            decimals = self.decimals
            return lambda v: missing if v is None or math.isnan(float(v)) else f"{float(v):.{decimals}f}"
        return column_format(values, self.digits, missing)


# Every figure's format, by its points.csv column: the CLI's table and the app's read it here.
FORMATS: dict[str, NumberFormat] = {
    "tokens_per_s": NumberFormat(decimals=1),
    "s_per_token": NumberFormat(decimals=4),
    "ttft_p50_s": NumberFormat(decimals=3),
    "ttft_p90_s": NumberFormat(decimals=3),
    "tpot_p50_s": NumberFormat(decimals=2, scale=1000.0),
    "tpot_p90_s": NumberFormat(decimals=2, scale=1000.0),
    "j_per_token": NumberFormat(digits=3),
    "gco2e_per_token": NumberFormat(digits=3),
    "embodied_gco2e_per_token": NumberFormat(digits=3),
    "total_gco2e_per_token": NumberFormat(digits=3),
    "slot_occupancy": NumberFormat(decimals=0, scale=100.0),
    "mfu": NumberFormat(decimals=2, scale=100.0),
    "mbu": NumberFormat(decimals=1, scale=100.0),
    "duration_s": NumberFormat(decimals=1),
    "peak_mem_gb": NumberFormat(decimals=1),
    "avg_power_w": NumberFormat(decimals=0),
    "energy_j": NumberFormat(digits=4),
    "intensity_gco2e_per_kwh": NumberFormat(decimals=0),
}


__all__ = ["DASH", "FORMATS", "NumberFormat", "column_format", "sci"]
