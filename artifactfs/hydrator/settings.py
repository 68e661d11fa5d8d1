"""Hydration settings and their defaults: the one place the CLI's mount options take theirs from.

Apart from :mod:`artifactfs.hydrator.hydrator` so that the CLI reads the
defaults without importing the hydrator and its dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

HydrationMode = Literal["background", "none"]
HYDRATION_MODES: tuple[HydrationMode, ...] = get_args(HydrationMode)


@dataclass
class HydrationSettings:
    mode: HydrationMode = "background"
    connections: int = 3
    """Background fetch requests in flight at once (a separate lane serves demand reads)."""
    initial_batch: int = 256
    max_batch: int = 4096
    max_batch_bytes: int = 64 << 20
    read_timeout: float = 120.0
    """Seconds a read waits for its blob before failing with EIO."""
    max_bandwidth: int | None = None
    """Bytes per second across all fetches, or None for no limit."""
