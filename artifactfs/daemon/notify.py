"""systemd's notify protocol (``Type=notify``): one datagram per state change."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import trio

from artifactfs.status import MountStatus

STATUS_INTERVAL = 5.0
"""Seconds between ``STATUS=`` progress lines while systemd supervises the daemon."""


def notify(message: str) -> bool:
    """Send ``message`` to ``$NOTIFY_SOCKET``; returns False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as channel:
        channel.connect(address)
        channel.sendall(message.encode())
    return True


def progress_line(status: MountStatus) -> str:
    """One line for ``systemctl status``: hydration progress of a running mount."""
    hydration = status.hydration
    line = (
        f"{status.state}: {hydration.hydrated_blobs}/{hydration.total_blobs} blobs hydrated, "
        f"{hydration.queued_blobs} queued, {hydration.failed_blobs} failed"
    )
    if hydration.eta_seconds is not None:
        line += f", ETA {hydration.eta_seconds:.0f}s"
    if hydration.retrying_blobs:
        line += f", {hydration.retrying_blobs} awaiting retry"
    if hydration.paused:
        line += f", paused: {hydration.paused}"
    if hydration.remote.state != "ok":
        line += f", remote {hydration.remote.describe()}"
    return line


async def report_progress(status: Callable[[], MountStatus], interval: float = STATUS_INTERVAL) -> None:
    """Send a ``STATUS=`` line every ``interval`` seconds while ``$NOTIFY_SOCKET`` is set."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    while True:
        try:
            notify("STATUS=" + progress_line(status()))
        except OSError:
            return  # the supervisor went away; nobody is listening any more
        await trio.sleep(interval)
