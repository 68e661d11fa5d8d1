"""Rendering ``artifactfs status`` for people: a summary, per-class progress, errors."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from artifactfs.status import MountStatus

_BAR_WIDTH = 28


def human_bytes(amount: float) -> str:
    """``amount`` bytes for people: ``512 B``, ``3.4 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(amount) < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"


def _bar(done: int, total: int) -> str:
    filled = _BAR_WIDTH if total == 0 else int(_BAR_WIDTH * done / total)
    return "[" + "#" * filled + "-" * (_BAR_WIDTH - filled) + "]"


def _history(status: MountStatus) -> str:
    if status.history_complete:
        return "complete"
    if status.history_shallow:
        return "depth 1: the remote has no filter"
    return "arriving"


def render(status: MountStatus) -> str:
    hydration = status.hydration
    lines = [
        f"mount:    {status.mountpoint}  ({status.state}, pid {status.pid})",
        f"remote:   {status.remote}  [{hydration.remote.describe()}]",
        f"head:     {status.head}  (history {_history(status)})",
        f"blobs:    {hydration.hydrated_blobs}/{hydration.total_blobs} hydrated, "
        f"{hydration.failed_blobs} failed, {hydration.queued_blobs} queued, "
        f"{hydration.retrying_blobs} awaiting retry  [{hydration.mode}]"
        + (f"  PAUSED: {hydration.paused}" if hydration.paused else ""),
        f"bytes:    {human_bytes(hydration.hydrated_bytes)} of {human_bytes(hydration.total_bytes)}",
    ]
    rate = hydration.rate_bytes_per_second or 0
    eta = hydration.eta_seconds
    lines.append(f"rate:     {human_bytes(rate)}/s" + (f", ETA {eta:.0f}s" if eta is not None else ""))
    lines.append("classes:")
    for label, counters in hydration.classes.items():
        lines.append(
            f"  {label:<9}{_bar(counters.hydrated, counters.total)} "
            f"{counters.hydrated}/{counters.total}"
            + (f", {counters.failed} failed" if counters.failed else "")
        )
    if hydration.sources:
        lines.append("sources:")
        for name, stats in hydration.sources.items():
            latency = stats.latency
            mean = latency.sum / latency.count * 1000 if latency.count else 0.0
            lines.append(
                f"  {name:<9}{stats.blobs} blobs, {human_bytes(stats.bytes)}, "
                f"{stats.requests} requests, {mean:.0f} ms mean"
                + (f", {stats.errors} errors" if stats.errors else "")
            )
    tier = status.tier
    if tier:
        published = tier.published
        lines.append(
            f"tier:     {tier.location}: {tier.indexed_blobs} blobs indexed, "
            f"{tier.rejected_blobs} rejected, {published['blobs']} published"
        )
    lfs = status.lfs
    if lfs.files:
        lines.append(
            f"lfs:      {lfs.files} files, {lfs.downloaded} objects fetched, {lfs.failures} failed "
            f"({lfs.missing} missing on the server)  [{lfs.endpoint}]"
        )
    if hydration.errors:
        lines.append("recent errors:")
        lines.extend(f"  {message}" for message in hydration.errors[-5:])
    return "\n".join(lines)


def watch_status(fetch: Callable[[], MountStatus], interval: float = 0.5) -> MountStatus | None:
    """Redraw the status until hydration completes (then return that status) or the user interrupts."""
    previous_lines = 0
    try:
        while True:
            status = fetch()
            text = render(status)
            if previous_lines:
                sys.stdout.write(f"\x1b[{previous_lines}F\x1b[J")
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
            previous_lines = text.count("\n") + 1
            if status.hydration.complete:
                return status
            time.sleep(interval)
    except KeyboardInterrupt:
        return None
