"""A real smart-HTTP Git server for tests and benchmarks: ``git http-backend``
run as CGI behind the standard library's threading HTTP server on 127.0.0.1.

It owns request recording (what each upload-pack POST asked for) and fault
injection (broken, truncated, stalled or corrupted fetch responses).
"""

from __future__ import annotations

import base64
import gzip
import io
import logging
import socket
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Self, cast
from urllib.parse import unquote, urlsplit

from artifactfs.errors import ProtocolError
from artifactfs.remote import pktline
from artifactfs.remote.pktline import Packet, PacketKind
from artifactfs.testing.repos import git_env

log = logging.getLogger("artifactfs.testing.gitserver")

FAULTS = ("reset", "500", "truncate", "stall:<seconds>", "flip-raw")
_CHUNK = 65536
_FLIP_OFFSET = 12
"""Pack offset of the byte a ``flip-raw`` fault corrupts: the first after the header."""


@dataclass
class RequestRecord:
    """One upload-pack POST as the server saw it."""

    command: str
    wants: tuple[str, ...]
    filter_spec: str | None
    fault: str | None
    response_bytes: int = 0
    arguments: tuple[str, ...] = field(default=())
    user_agent: str = ""

    @property
    def want_count(self) -> int:
        return len(self.wants)

    @property
    def has_filter(self) -> bool:
        return self.filter_spec is not None


class GitHttpServer:
    """Serves every bare repository under ``root`` at ``http://127.0.0.1:PORT/<name>``.

    ``object_info=False`` hides the ``object-info`` capability and refuses the
    command; ``auth=(user, password)`` demands HTTP Basic auth on every request.
    ``allow_filter=False`` runs upload-pack with ``uploadpack.allowFilter=false``
    (no ``filter`` capability, as on some forges). ``tip_wants_only=True``
    refuses a fetch that wants anything but a ref's tip (``not our ref``), as a
    server would that allows no other wants (git's own v2 upload-pack
    serves a want of any object it has).
    """

    def __init__(
        self,
        root: Path,
        *,
        object_info: bool = True,
        auth: tuple[str, str] | None = None,
        allow_filter: bool = True,
        tip_wants_only: bool = False,
    ) -> None:
        self.root = Path(root)
        self.object_info = object_info
        self.auth = auth
        self.allow_filter = allow_filter
        self.tip_wants_only = tip_wants_only
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._faults: deque[str] = deque()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server is not running")
        return int(self._httpd.server_address[1])

    def url(self, name: str) -> str:
        """URL of repository ``name`` (``.git`` is appended unless already there)."""
        suffix = "" if name.endswith(".git") else ".git"
        return f"http://127.0.0.1:{self.port}/{name}{suffix}"

    def start(self) -> None:
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._stopping.clear()
        self._httpd = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.02,), name="git-http-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = None
        self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def inject(self, fault: str) -> None:
        """Queue a fault for the next ``command=fetch`` request: ``"reset"``,
        ``"500"``, ``"truncate"``, ``"stall:<seconds>"`` or ``"flip-raw"``.

        ``flip-raw`` means what it means to :class:`~artifactfs.testing.faultproxy.FaultProxy`:
        one byte of pack data inverted, checksums left alone."""
        if fault not in ("reset", "500", "truncate", "flip-raw"):
            kind, _, seconds = fault.partition(":")
            if kind != "stall" or not _is_number(seconds):
                raise ValueError(f"unknown fault {fault!r}; expected one of {', '.join(FAULTS)}")
        with self._lock:
            self._faults.append(fault)

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the upload-pack POSTs served so far, oldest first."""
        with self._lock:
            return list(self._records)

    def clear_requests(self) -> None:
        with self._lock:
            self._records.clear()

    def _record(self, body: bytes, user_agent: str) -> RequestRecord:
        """Parse an upload-pack request, record it, and take a fault if it is a fetch."""
        command = ""
        arguments: list[str] = []
        try:
            packets = pktline.decode_all(body)
        except ProtocolError:
            packets = []
        in_arguments = False
        for packet in packets:
            if packet.kind is PacketKind.DELIM:
                in_arguments = True
            elif packet.kind is PacketKind.DATA:
                line = packet.text()
                if in_arguments:
                    arguments.append(line)
                elif line.startswith("command="):
                    command = line.removeprefix("command=")
        wants = tuple(line.split(" ", 1)[1] for line in arguments if line.startswith("want "))
        filters = [line.split(" ", 1)[1] for line in arguments if line.startswith("filter ")]
        with self._lock:
            fault = self._faults.popleft() if command == "fetch" and self._faults else None
            record = RequestRecord(
                command, wants, filters[0] if filters else None, fault, 0, tuple(arguments), user_agent
            )
            self._records.append(record)
        return record

    def _count_response(self, record: RequestRecord, size: int) -> None:
        with self._lock:
            record.response_bytes += size


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler], owner: GitHttpServer) -> None:
        self.owner = owner
        super().__init__(address, handler)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        """A client dropping its keep-alive connection (a daemon unmounting) is not an error."""
        if isinstance(sys.exc_info()[1], ConnectionResetError | BrokenPipeError):
            return
        super().handle_error(request, client_address)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        owner = self.server.owner
        if owner.auth is not None and not self._authorized(owner.auth):
            self.close_connection = True
            challenge = {"WWW-Authenticate": 'Basic realm="git"', "Connection": "close"}
            self._reply(401, b"authentication required\n", challenge)
            return
        parts = urlsplit(self.path)
        path_info = unquote(parts.path)
        body: bytes | None = None
        record: RequestRecord | None = None
        if self.command == "POST" and path_info.endswith("/git-upload-pack"):
            body = self._read_body()
            decoded = gzip.decompress(body) if self.headers.get("Content-Encoding") == "gzip" else body
            record = owner._record(decoded, self.headers.get("User-Agent", ""))
            if record.fault == "500":
                self._reply(500, b"injected failure\n", {})
                return
            if record.command == "object-info" and not owner.object_info:
                error = pktline.encode("ERR invalid command 'object-info'\n")
                self._reply(200, error, {"Content-Type": "application/x-git-upload-pack-result"})
                return
            refused = self._refused_want(path_info, record) if owner.tip_wants_only else None
            if refused is not None:
                error = pktline.encode(f"ERR upload-pack: not our ref {refused}\n")
                self._reply(200, error, {"Content-Type": "application/x-git-upload-pack-result"})
                return
        process = subprocess.Popen(
            ["git", "http-backend"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self._cgi_env(path_info, parts.query, body),
        )
        assert process.stdin is not None and process.stdout is not None
        feeder = threading.Thread(target=self._feed, args=(process.stdin, body), daemon=True)
        feeder.start()
        try:
            self._relay(cast(io.BufferedReader, process.stdout), path_info, parts.query, record)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            process.stdout.close()
            if process.poll() is None:
                process.kill()
            process.wait()
            feeder.join()

    def _refused_want(self, path_info: str, record: RequestRecord) -> str | None:
        """The first want of a fetch that is not a ref's tip, or None."""
        if record.command != "fetch":
            return None
        repo = self.server.owner.root / path_info.removesuffix("/git-upload-pack").lstrip("/")
        tips = subprocess.run(
            ["git", "--git-dir", str(repo), "for-each-ref", "--format=%(objectname)"],
            capture_output=True,
            text=True,
            env=git_env(),
            check=False,
        ).stdout.split()
        return next((oid for oid in record.wants if oid not in tips), None)

    def _authorized(self, credentials: tuple[str, str]) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(token).decode().partition(":")
        except ValueError:
            return False
        return (user, password) == credentials

    def _body_chunks(self) -> Iterator[bytes]:
        """The request body as it arrives (chunked transfer encoding undone)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                yield self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return
        remaining = int(self.headers.get("Content-Length", "0"))
        while remaining > 0:
            piece = self.rfile.read(min(remaining, _CHUNK))
            if not piece:
                return
            remaining -= len(piece)
            yield piece

    def _read_body(self) -> bytes:
        return b"".join(self._body_chunks())

    def _feed(self, stdin: IO[bytes], body: bytes | None) -> None:
        """Write the request body (given, or streamed from the socket) to the CGI."""
        try:
            for piece in [body] if body is not None else self._body_chunks():
                stdin.write(piece)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            try:
                stdin.close()
            except BrokenPipeError:
                pass

    def _cgi_env(self, path_info: str, query: str, body: bytes | None) -> dict[str, str]:
        owner = self.server.owner
        env = git_env()
        env.update(
            GIT_PROJECT_ROOT=str(owner.root),
            GIT_HTTP_EXPORT_ALL="1",
            GATEWAY_INTERFACE="CGI/1.1",
            SERVER_PROTOCOL="HTTP/1.1",
            REQUEST_METHOD=self.command,
            PATH_INFO=path_info,
            QUERY_STRING=query,
            REMOTE_ADDR=self.client_address[0],
            CONTENT_TYPE=self.headers.get("Content-Type", ""),
        )
        if body is not None:
            env["CONTENT_LENGTH"] = str(len(body))
        elif self.headers.get("Content-Length"):
            env["CONTENT_LENGTH"] = self.headers["Content-Length"]
        if owner.auth is not None:
            env["REMOTE_USER"] = owner.auth[0]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if not owner.allow_filter:  # command-line config: over the served repository's own
            env.update(
                GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="uploadpack.allowFilter", GIT_CONFIG_VALUE_0="false"
            )
        return env

    def _relay(
        self, stdout: io.BufferedReader, path_info: str, query: str, record: RequestRecord | None
    ) -> None:
        """Send the CGI response on: parse its headers, then stream the body with
        chunked encoding, applying the request's fault if it has one."""
        status = 200
        headers: list[tuple[str, str]] = []
        while True:
            line = stdout.readline()
            if not line or not line.strip():
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name.lower() != "content-length":
                headers.append((name.strip(), value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        if record is not None and record.fault is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        owner = self.server.owner
        if not owner.object_info and path_info.endswith("/info/refs") and "git-upload-pack" in query:
            self._send_chunk(_without_object_info(stdout.read()))
        elif record is not None and record.fault is not None:
            self._relay_with_fault(stdout, record)
            return
        else:
            while chunk := stdout.read1(_CHUNK):
                if record is not None:
                    owner._count_response(record, len(chunk))
                self._send_chunk(chunk)
        self.wfile.write(b"0\r\n\r\n")

    def _relay_with_fault(self, stdout: io.BufferedReader, record: RequestRecord) -> None:
        """Send a faulted response (buffered whole, then cut in half): ``reset``
        sends the first half and an RST; ``truncate`` the first half and a clean
        end of HTTP body; ``stall:<s>`` waits ``s`` seconds between the halves;
        ``flip`` sends everything with one pack byte inverted."""
        owner = self.server.owner
        fault = record.fault or ""
        self.close_connection = True
        data = stdout.read()
        if fault == "flip-raw":
            data = _flip_pack_byte(data)
        cut = len(data) // 2
        owner._count_response(record, cut if fault in ("reset", "truncate") else len(data))
        self._send_chunk(data[:cut])
        if fault == "reset":
            # Zero linger, and the socket closed before socketserver's shutdown():
            # the kernel answers with RST rather than FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        if fault.startswith("stall:") and owner._stopping.wait(float(fault.removeprefix("stall:"))):
            return
        if fault != "truncate":
            self._send_chunk(data[cut:])
        self.wfile.write(b"0\r\n\r\n")

    def _send_chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
            self.wfile.flush()

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _without_object_info(advertisement: bytes) -> bytes:
    packets = pktline.decode_all(advertisement)
    kept = [p for p in packets if not (p.kind is PacketKind.DATA and p.text().split("=")[0] == "object-info")]
    return b"".join(pktline.encode_packet(p) for p in kept)


def _flip_pack_byte(response: bytes) -> bytes:
    """Invert one byte of pack data (just past the pack header) in a fetch response."""
    packets = pktline.decode_all(response)
    out: list[Packet] = []
    in_pack = False
    offset = 0
    for packet in packets:
        if packet.kind is PacketKind.DATA and not in_pack and packet.text() == "packfile":
            in_pack = True
        elif in_pack and packet.kind is PacketKind.DATA and packet.payload[:1] == b"\x01":
            data = packet.payload[1:]
            index = _FLIP_OFFSET - offset
            if 0 <= index < len(data):
                flipped = bytearray(data)
                flipped[index] ^= 0xFF
                packet = Packet(PacketKind.DATA, b"\x01" + bytes(flipped))
            offset += len(data)
        out.append(packet)
    return b"".join(pktline.encode_packet(p) for p in out)
