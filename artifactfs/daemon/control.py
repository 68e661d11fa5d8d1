"""The control socket: how other processes talk to a running mount.

One JSON object per line each way over a Unix socket that only the daemon's
user can open. Requests are ``{"op": NAME, ...}``; answers are
``{"ok": true, ...}`` or ``{"ok": false, "error": MESSAGE}``.

A *stream* operation (git's lazy fetches) is answered with ``{"ok": true}``
and then carries raw bytes both ways on the same connection; the client sends
nothing after its request line until it has read that answer.

Both halves live here. The client half runs in the helpers git starts (once
per lazy fetch, once per credential request), so this module imports trio
only inside :func:`serve`: a helper costs an interpreter start-up and no more.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artifactfs.errors import ArtifactFSError
from artifactfs.state import private_dir

if TYPE_CHECKING:
    import trio

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
StreamHandler = Callable[[dict[str, Any], "trio.SocketStream"], Awaitable[None]]
_MAX_REQUEST = 1 << 20
_PIECE = 65536


class ControlError(ArtifactFSError):
    """The daemon could not be reached or refused the request."""


async def serve(
    path: Path,
    handler: Handler,
    *,
    streams: Mapping[str, StreamHandler] | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] | None = None,
) -> None:
    """Listen on ``path`` until cancelled, answering each request with ``handler``,
    or handing the connection to ``streams[op]`` for a stream operation."""
    import trio

    stream_handlers = dict(streams or {})
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

    async def send(stream: trio.SocketStream, answer: dict[str, Any]) -> bool:
        try:
            await stream.send_all(json.dumps(answer).encode() + b"\n")
        except trio.BrokenResourceError:
            return False
        return True

    async def connection(stream: trio.SocketStream) -> None:
        async with stream:
            buffer = bytearray()
            while b"\n" not in buffer and len(buffer) < _MAX_REQUEST:
                chunk = await stream.receive_some(_PIECE)
                if not chunk:
                    return
                buffer.extend(chunk)
            line, _, rest = bytes(buffer).partition(b"\n")
            stream_handler = None
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("request is not an object")
                op = request.get("op")
                stream_handler = stream_handlers.get(op) if isinstance(op, str) else None
                if stream_handler is not None and rest:
                    raise ValueError("data sent before the answer to a stream request")
                answer = {"ok": True} if stream_handler is not None else await handler(request)
            except ArtifactFSError as error:
                answer = {"ok": False, "error": str(error)}
            except ValueError as error:
                answer = {"ok": False, "error": f"bad request: {error}"}
            if await send(stream, answer) and stream_handler is not None and answer["ok"]:
                await stream_handler(request, stream)

    try:
        await trio.serve_listeners(
            connection, [listener], task_status=task_status or trio.TASK_STATUS_IGNORED
        )
    finally:
        path.unlink(missing_ok=True)


def _connect(path: Path, timeout: float) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        client.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        client.close()
        raise ControlError("no ArtifactFS daemon is running there") from None
    except OSError as error:
        client.close()
        raise ControlError(f"cannot talk to the daemon: {error.strerror or error}") from None
    return client


def _exchange(client: socket.socket, op: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Send one request; return the answer and whatever arrived after its line."""
    try:
        client.sendall(json.dumps({"op": op, **arguments}).encode() + b"\n")
        buffer = bytearray()
        while b"\n" not in buffer:
            chunk = client.recv(_PIECE)
            if not chunk:
                break
            buffer.extend(chunk)
    except OSError as error:
        raise ControlError(f"cannot talk to the daemon: {error.strerror or error}") from None
    line, _, rest = bytes(buffer).partition(b"\n")
    try:
        answer = json.loads(line)
    except ValueError:
        raise ControlError("the daemon closed the connection without answering") from None
    if not isinstance(answer, dict) or not answer.get("ok"):
        reason = answer.get("error", "request failed") if isinstance(answer, dict) else "malformed answer"
        raise ControlError(str(reason))
    return answer, rest


def request(path: Path, op: str, *, timeout: float = 10.0, **arguments: Any) -> dict[str, Any]:
    """Send one request to the daemon at ``path`` (blocking); raises :class:`ControlError`."""
    with _connect(path, timeout) as client:
        return _exchange(client, op, arguments)[0]


def relay(path: Path, op: str, source: int, sink: int, *, timeout: float = 10.0, **arguments: Any) -> None:
    """Open stream operation ``op`` and copy bytes both ways (file descriptor
    ``source`` to the daemon, the daemon to ``sink``) until the daemon closes
    the connection. ``timeout`` bounds connecting and the answer only."""
    with _connect(path, timeout) as client:
        _, early = _exchange(client, op, arguments)
        client.settimeout(None)

        def forward() -> None:
            try:
                while data := os.read(source, _PIECE):
                    client.sendall(data)
                client.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the daemon is gone; the copy below ends too

        threading.Thread(target=forward, name="control-relay", daemon=True).start()
        try:
            _write_all(sink, early)
            while data := client.recv(_PIECE):
                _write_all(sink, data)
        except BrokenPipeError:
            return  # the reader went away; nothing is left to deliver
        except OSError as error:
            raise ControlError(f"connection to the daemon broke: {error.strerror or error}") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
