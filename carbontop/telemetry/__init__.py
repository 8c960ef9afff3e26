"""Telemetry: power sources (NVML, RAPL, an estimate) and the sampler thread that reads them.

Importing this package does not import pynvml; a source imports it when it is opened.
"""

from carbontop.telemetry.sampler import TelemetrySampler
from carbontop.telemetry.sources import (
    EstimateSource,
    NvmlSource,
    NvmlUnavailable,
    PowerSource,
    RaplSource,
    nvml_environment,
    open_power_source,
)

__all__ = [
    "EstimateSource",
    "NvmlSource",
    "NvmlUnavailable",
    "PowerSource",
    "RaplSource",
    "TelemetrySampler",
    "nvml_environment",
    "open_power_source",
]
