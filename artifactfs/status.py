"""The status of a running mount, typed: what the daemon reports and everyone else reads.

The daemon builds a :class:`MountStatus`; the control socket carries it as
JSON (:meth:`MountStatus.to_json`, the stable format of ``status --json``);
the CLI, systemd notifications, metrics and tests read it back with
:meth:`MountStatus.from_json`. Field names are the JSON keys, in order.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ClassProgress:
    """Hydration progress of one priority class."""

    total: int
    hydrated: int
    failed: int
    total_bytes: int
    hydrated_bytes: int


@dataclass(frozen=True)
class RemoteHealthReport:
    """Whether the remote answers (``ok``) or not (``unreachable``), since when, and the last error."""

    state: str
    since: float
    last_error: str | None
    consecutive_failures: int

    def describe(self) -> str:
        """``ok``, or ``unreachable since HH:MM:SS (last error)``: the one wording of an outage."""
        if self.state == "ok":
            return "ok"
        since = time.strftime("%H:%M:%S", time.localtime(self.since))
        return f"{self.state} since {since} ({self.last_error})"


@dataclass(frozen=True)
class LatencyReport:
    """A latency histogram: cumulative bucket counts in Prometheus order (``+Inf`` last), sum and count."""

    buckets: list[tuple[float | str, int]]
    sum: float
    count: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LatencyReport:
        return cls([(bound, count) for bound, count in data["buckets"]], data["sum"], data["count"])


@dataclass(frozen=True)
class SourceReport:
    """What one blob source (local cache, shared tier, origin) served."""

    requests: int
    blobs: int
    bytes: int
    errors: int
    last_error: str | None
    latency: LatencyReport

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SourceReport:
        fields = dict(data)
        fields["latency"] = LatencyReport.from_json(data["latency"])
        return cls(**fields)


@dataclass(frozen=True)
class HydrationReport:
    mode: str
    total_blobs: int
    hydrated_blobs: int
    failed_blobs: int
    total_bytes: int
    hydrated_bytes: int
    queued_blobs: int
    retrying_blobs: int
    paused: str | None
    """Why hydration is paused (``disk full``), or None."""
    remote: RemoteHealthReport
    inflight_blobs: int
    rate_bytes_per_second: float
    eta_seconds: float | None
    complete: bool
    batch_size: int
    object_info: bool
    classes: dict[str, ClassProgress]
    errors: list[str]
    """The most recent fetch errors, oldest first."""
    errors_total: int
    fetch_latency: LatencyReport
    sources: dict[str, SourceReport]
    """By source, in the order they are asked."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HydrationReport:
        fields = dict(data)
        fields["remote"] = RemoteHealthReport(**data["remote"])
        fields["classes"] = {label: ClassProgress(**counters) for label, counters in data["classes"].items()}
        fields["fetch_latency"] = LatencyReport.from_json(data["fetch_latency"])
        fields["sources"] = {name: SourceReport.from_json(stats) for name, stats in data["sources"].items()}
        return cls(**fields)


@dataclass(frozen=True)
class FuseReport:
    open_files: int
    operations: dict[str, int]
    """Requests served, by operation."""
    latency: dict[str, LatencyReport]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FuseReport:
        latency = {
            operation: LatencyReport.from_json(report) for operation, report in data["latency"].items()
        }
        return cls(data["open_files"], dict(data["operations"]), latency)


@dataclass(frozen=True)
class TierReport:
    """The shared blob tier (``--blob-store``)."""

    location: str
    indexes_found: int
    indexed_blobs: int
    rejected_blobs: int
    published: dict[str, int]
    """What this mount wrote through to the tier: packs, blobs, bytes."""


@dataclass(frozen=True)
class ProfileReport:
    """The learned prefetch profile: whether it is recorded, how many paths it led and recorded."""

    enabled: bool
    followed_paths: int
    recorded_paths: int


@dataclass(frozen=True)
class LfsReport:
    files: int
    """LFS files in the tree."""
    downloaded: int
    failures: int
    missing: int
    """Objects the LFS server does not have."""
    endpoint: str | None


@dataclass(frozen=True)
class MountStatus:
    pid: int
    state: str
    """``starting``, ``mounted`` or ``unmounting``."""
    read_only: bool
    remote: str
    """The remote without credentials."""
    mountpoint: str
    head: str
    """The commit the mount shows."""
    gitdir: str
    uptime_seconds: float
    history_complete: bool
    history_depth: int | None
    """Commits of history kept per branch and tag (``--depth``), or None for all."""
    history_shallow: bool
    """The remote cannot send history without blobs (no filter): the history stays at depth 1."""
    hydration: HydrationReport
    tier: TierReport | None
    profile: ProfileReport
    git: dict[str, int]
    """Counters of what git in the mount asked the daemon for."""
    fuse: FuseReport
    lfs: LfsReport
    submodules: dict[str, str]
    """Each nested submodule mount (``--recurse-submodules``) by path: ``mounting``, ``mounted`` or
    ``failed: REASON``."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MountStatus:
        """Read a status back from JSON (keys the daemon does not send, such as ``ok``, are ignored)."""
        names = {field.name for field in dataclasses.fields(cls)}
        fields = {name: value for name, value in data.items() if name in names}
        fields["hydration"] = HydrationReport.from_json(data["hydration"])
        fields["tier"] = TierReport(**data["tier"]) if data["tier"] is not None else None
        fields["profile"] = ProfileReport(**data["profile"])
        fields["git"] = dict(data["git"])
        fields["fuse"] = FuseReport.from_json(data["fuse"])
        fields["lfs"] = LfsReport(**data["lfs"])
        fields["submodules"] = dict(data["submodules"])
        return cls(**fields)
