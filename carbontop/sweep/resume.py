"""Carrying on a sweep that stopped before its end (`carbontop resume RUN_DIR`, the app's offer).

The same configuration (defaults resolved as they were), the same run directory: the points that
finished are kept and fed to the search, so it picks up where it stopped; a point that was
cancelled or failed on its own (an engine error) is measured again.
"""

from __future__ import annotations

from carbontop.config import RunConfig, resumed_config
from carbontop.core.records import PointStatus
from carbontop.core.store import SavedRun
from carbontop.errors import CarbontopError

# how a run may have ended for it to be carried on
RESUMABLE_STATES = ("cancelled", "interrupted", "error")
# the points a resumed sweep keeps: measured, or a memory boundary the search has learnt from
KEPT_STATUSES = (PointStatus.OK, PointStatus.OOM, PointStatus.KV_BOUND, PointStatus.CRASHED,
                 PointStatus.HUNG)


def check_resumable(saved: SavedRun) -> None:
    if saved.state == "running":
        owner = saved.meta.status
        raise CarbontopError(
            f"{saved.path} is still being written by PID {owner.pid or '?'} on "
            f"{owner.host or '?'}; stop that sweep first.")
    if saved.state == "done":
        raise CarbontopError(f"{saved.path} ran to its end; there is nothing to carry on.")
    if saved.state not in RESUMABLE_STATES:
        raise CarbontopError(f"{saved.path} ended as '{saved.state}', which cannot be carried on.")


def config_for_resume(saved: SavedRun) -> RunConfig:
    cfg = resumed_config(dict(saved.config), origin=str(saved.path / "run.toml"))
    return cfg.replace(out=str(saved.path))


def check_same_devices(saved: SavedRun, device_names: list[str]) -> None:
    """A sweep carried on elsewhere would mix two machines' figures in one table."""
    before = list(saved.meta.environment.devices)
    if before and before != list(device_names):
        raise CarbontopError(
            f"{saved.path} was measured on {', '.join(before)}, and this sweep would run on "
            f"{', '.join(device_names) or 'nothing'}; carry it on where it ran.")
