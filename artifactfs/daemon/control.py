"""The control socket: how other shells talk to a running mount.

One JSON object per line each way over a Unix socket that only the daemon's
user can open. Requests are ``{"op": NAME, ...}``; answers are
``{"ok": true, ...}`` or ``{"ok": false, "error": MESSAGE}``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from artifactfs.errors import ArtifactFSError
from artifactfs.state import private_dir

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
_MAX_REQUEST = 1 << 20


class ControlError(ArtifactFSError):
    """The daemon could not be reached or refused the request."""


async def serve(path: Path, handler: Handler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``path`` until cancelled, answering each request with ``handler``."""
    private_dir(path.parent)
    path.unlink(missing_ok=True)
    listener_socket = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await listener_socket.bind(str(path))
    finally:
        os.umask(old_umask)
    listener_socket.listen(16)
    listener = trio.SocketListener(listener_socket)

    async def connection(stream: trio.SocketStream) -> None:
        async with stream:
            buffer = bytearray()
            while b"\n" not in buffer and len(buffer) < _MAX_REQUEST:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buffer.extend(chunk)
            try:
                request = json.loads(buffer.split(b"\n", 1)[0])
                if not isinstance(request, dict):
                    raise ValueError("request is not an object")
                answer = await handler(request)
            except ArtifactFSError as error:
                answer = {"ok": False, "error": str(error)}
            except ValueError as error:
                answer = {"ok": False, "error": f"bad request: {error}"}
            try:
                await stream.send_all(json.dumps(answer).encode() + b"\n")
            except trio.BrokenResourceError:
                pass

    try:
        await trio.serve_listeners(connection, [listener], task_status=task_status)
    finally:
        path.unlink(missing_ok=True)


def request(path: Path, op: str, *, timeout: float = 10.0, **arguments: Any) -> dict[str, Any]:
    """Send one request to the daemon at ``path`` (blocking); raises :class:`ControlError`."""
    message = json.dumps({"op": op, **arguments}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(timeout)
            client.connect(str(path))
            client.sendall(message)
            buffer = bytearray()
            while b"\n" not in buffer:
                chunk = client.recv(65536)
                if not chunk:
                    break
                buffer.extend(chunk)
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError("no ArtifactFS daemon is running there") from None
    except OSError as error:
        raise ControlError(f"cannot talk to the daemon: {error.strerror or error}") from None
    try:
        answer = json.loads(buffer.split(b"\n", 1)[0])
    except ValueError:
        raise ControlError("the daemon closed the connection without answering") from None
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error", "request failed")))
    return answer
