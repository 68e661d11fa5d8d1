"""systemd's notify protocol (``Type=notify``): one datagram per state change."""

from __future__ import annotations

import os
import socket


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
