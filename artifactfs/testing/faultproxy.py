"""A fault-injecting HTTP proxy for robustness tests (127.0.0.1 only).

:class:`FaultProxy` sits between a mount and a :class:`~artifactfs.testing.GitHttpServer`
(or any smart-HTTP Git server on the loopback interface). It forwards every
request to the upstream server and, on the requests it is told to target
(by default protocol-v2 ``command=fetch`` POSTs), injects faults either from an
explicit schedule (:meth:`FaultProxy.inject`) or at random with a configurable
probability (:meth:`FaultProxy.configure`):

``reset``
    half the response, then a TCP RST.
``5xx``
    an HTTP 500, 502 or 503 answer; the upstream server is never asked.
``stall``
    half the response, a pause of ``stall_seconds``, then the rest.
``truncate``
    a well-framed HTTP response whose pack stops half way (the HTTP layer
    sees a clean end of body; only the Git layer can notice).
``flip``
    one byte of one object's *content* changed inside the pack of a fetch
    response; the object is recompressed and the pack's trailing checksum
    recomputed, so zlib and the pack checksum are both satisfied and only
    checking each object against the id that was asked for can catch it.
``flip-raw``
    one byte of compressed object data inverted (past the pack header and the
    object's entry header), checksums left alone.
``info-flip``
    an ``object-info`` reply with the first digit of one size changed (949
    becomes 849, 12 becomes 22): well-formed, plausible and wrong.
``info-truncate``
    an ``object-info`` reply cut in the middle (a clean end of HTTP body).

Besides faults per request, :meth:`FaultProxy.go_down` stops answering
altogether, as a server that was switched off: the listening socket closes
(new connections are refused) and open connections are reset.
:meth:`FaultProxy.come_back` listens on the same port again.

Every fault injected is counted in :attr:`FaultProxy.injected`.
"""

from __future__ import annotations

import gzip
import io
import logging
import random
import socket
import socketserver
import struct
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Self
from urllib.parse import urlsplit

from artifactfs.errors import ProtocolError
from artifactfs.objects import OFS_DELTA, OID_SIZE, REF_DELTA, ObjectType, checksum
from artifactfs.remote import pktline
from artifactfs.remote.pktline import Packet, PacketKind
from artifactfs.store.packwrite import encode_entry_header

log = logging.getLogger("artifactfs.testing.faultproxy")

FAULT_KINDS = ("reset", "5xx", "stall", "truncate", "flip", "flip-raw", "info-flip", "info-truncate")
DEFAULT_KINDS = ("reset", "5xx", "stall", "truncate", "flip")
_IO_TIMEOUT = 120.0
_SIDEBAND_DATA = 65515  # largest band-1 payload in one pkt-line (65520 - 4 - 1)


class _Closed(Exception):
    """The peer closed the connection between requests."""


@dataclass
class _Message:
    head: bytes  # request or status line
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class FaultProxy:
    """Forwards ``http://127.0.0.1:<port>/...`` to ``upstream`` and injects faults.

    ``upstream`` is a base URL such as ``http://127.0.0.1:8000`` (only loopback
    addresses are accepted). ``commands`` names the protocol-v2 commands whose
    POSTs may be faulted (``None``: every upload-pack POST).
    """

    def __init__(
        self,
        upstream: str,
        *,
        probability: float = 0.0,
        kinds: tuple[str, ...] = DEFAULT_KINDS,
        stall_seconds: float = 1.0,
        seed: int | None = None,
        commands: tuple[str, ...] | None = ("fetch",),
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the fault proxy only forwards to loopback http URLs, not {upstream!r}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.commands = commands
        self.stall_seconds = stall_seconds
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._schedule: deque[str] = deque()
        self._probability = 0.0
        self._kinds: tuple[str, ...] = DEFAULT_KINDS
        self.configure(probability=probability, kinds=kinds)
        self.injected: Counter[str] = Counter()
        """Faults injected so far, by kind."""
        self.requests = 0
        """Requests forwarded (faulted or not)."""
        self.targeted = 0
        """Requests that were eligible for a fault."""
        self.flip_misses = 0
        """``flip`` faults drawn for a response that had no object to alter (sent unchanged)."""
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._down = False
        self._connections: set[socket.socket] = set()
        self.refused_while_down = 0
        """Connections reset because the proxy was down (open ones at :meth:`go_down`)."""

    # ------------------------------------------------------------------ control

    def configure(self, *, probability: float | None = None, kinds: tuple[str, ...] | None = None) -> None:
        """Change the random fault rate and the kinds drawn from (takes effect at once)."""
        with self._lock:
            if probability is not None:
                if not 0.0 <= probability <= 1.0:
                    raise ValueError("probability must be within [0, 1]")
                self._probability = probability
            if kinds is not None:
                unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
                if unknown or not kinds:
                    raise ValueError(
                        f"unknown fault kinds {unknown}; expected some of {', '.join(FAULT_KINDS)}"
                    )
                self._kinds = tuple(kinds)

    def inject(self, *faults: str) -> None:
        """Queue faults for the next targeted requests, in order (before any random ones)."""
        for fault in faults:
            if fault not in FAULT_KINDS:
                raise ValueError(f"unknown fault {fault!r}; expected one of {', '.join(FAULT_KINDS)}")
        with self._lock:
            self._schedule.extend(faults)

    def stop_faults(self) -> None:
        """No more faults: clear the schedule and the random rate."""
        with self._lock:
            self._schedule.clear()
            self._probability = 0.0

    @property
    def total_injected(self) -> int:
        with self._lock:
            return sum(self.injected.values())

    def _draw(self) -> str | None:
        with self._lock:
            self.targeted += 1
            if self._schedule:
                return self._schedule.popleft()
            if self._probability and self._random.random() < self._probability:
                return self._random.choice(self._kinds)
            return None

    def _count(self, fault: str) -> None:
        with self._lock:
            self.injected[fault] += 1

    def _choose(self, upper: int) -> int:
        with self._lock:
            return self._random.randrange(upper)

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("proxy is not running")
        return self._port

    def url(self, name: str) -> str:
        suffix = "" if name.endswith(".git") else ".git"
        return f"http://127.0.0.1:{self.port}/{name}{suffix}"

    def start(self) -> None:
        if self._server is not None or self._port:
            raise RuntimeError("proxy already started")
        self._listen()

    def _listen(self) -> None:
        self._server = _Server(("127.0.0.1", self._port), _Handler, self)
        self._port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fault-proxy", daemon=True
        )
        self._thread.start()

    def _close_listener(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None
        self._thread = None

    def stop(self) -> None:
        self._close_listener()
        self._port = 0

    @property
    def is_down(self) -> bool:
        return self._down

    def go_down(self) -> None:
        """Stop answering: refuse new connections and reset the open ones (a server switched off)."""
        with self._lock:
            self._down = True
            open_connections = list(self._connections)
        self._close_listener()
        for connection in open_connections:
            self._reset(connection)

    def come_back(self) -> None:
        """Answer again, on the same port."""
        with self._lock:
            self._down = False
        self._listen()

    def _reset(self, connection: socket.socket) -> None:
        with self._lock:
            self.refused_while_down += 1
        try:
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed by its handler

    def _track(self, connection: socket.socket, active: bool) -> bool:
        """Register a client connection (False if the proxy is down: the caller resets it)."""
        with self._lock:
            if not active:
                self._connections.discard(connection)
                return True
            if self._down:
                return False
            self._connections.add(connection)
            return True

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ one request

    def _targets(self, request: _Message) -> bool:
        method, _, rest = request.head.decode("latin-1").partition(" ")
        if method != "POST" or "/git-upload-pack" not in rest.split(" ")[0]:
            return False
        if self.commands is None:
            return True
        body = request.body
        if (request.header("Content-Encoding") or "").lower() == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError):
                return False
        try:
            packets = pktline.decode_all(body)
        except ProtocolError:
            return False
        for packet in packets:
            if packet.kind is PacketKind.DATA and packet.text().startswith("command="):
                return packet.text().removeprefix("command=") in self.commands
        return False

    def _forward(self, request: _Message) -> _Message:
        """Send ``request`` upstream on a fresh connection and read the whole response."""
        with socket.create_connection(self.upstream, timeout=_IO_TIMEOUT) as upstream:
            headers = [
                (k, v)
                for k, v in request.headers
                if k.lower() not in ("connection", "content-length", "transfer-encoding", "keep-alive")
            ]
            headers += [("Content-Length", str(len(request.body))), ("Connection", "close")]
            upstream.sendall(_serialize(request.head, headers, request.body))
            reader = upstream.makefile("rb")
            response = _read_message(reader, is_response=True)
            reader.close()
        return response


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler], owner: FaultProxy) -> None:
        self.owner = owner
        super().__init__(address, handler)


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        owner = self.server.owner
        if not owner._track(self.connection, True):
            owner._reset(self.connection)
            return
        try:
            self._serve_requests()
        finally:
            owner._track(self.connection, False)

    def _serve_requests(self) -> None:
        owner = self.server.owner
        self.connection.settimeout(_IO_TIMEOUT)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                request = _read_message(self.rfile, is_response=False)
            except (_Closed, OSError, ValueError):
                return
            with owner._lock:
                owner.requests += 1
            fault = owner._draw() if owner._targets(request) else None
            try:
                if not self._answer(request, fault):
                    return
            except OSError:
                return

    def _answer(self, request: _Message, fault: str | None) -> bool:
        """Answer one request; False if the connection must be closed afterwards."""
        owner = self.server.owner
        if fault == "5xx":
            owner._count(fault)
            status = (500, 502, 503)[owner._choose(3)]
            self._send(
                f"HTTP/1.1 {status} Injected Fault".encode(),
                [("Content-Type", "text/plain")],
                b"injected fault\n",
            )
            return True
        response = owner._forward(request)
        if owner.is_down:
            return False  # switched off while upstream answered: the connection was reset
        body = response.body
        if fault in ("flip", "flip-raw", "info-flip"):
            altered = (
                _alter_object_info(body, choose=owner._choose)
                if fault == "info-flip"
                else _alter_fetch_response(body, raw=fault == "flip-raw", choose=owner._choose)
            )
            if altered is None:
                with owner._lock:
                    owner.flip_misses += 1
                fault = None
            else:
                body = altered
        if fault is None:
            self._send(response.head, response.headers, body)
            return (request.header("Connection") or "").lower() != "close"
        owner._count(fault)
        if fault == "info-truncate":
            fault = "truncate"
        cut = len(body) // 2
        if fault in ("flip", "flip-raw", "info-flip"):
            self._send(response.head, response.headers, body)
            return True
        if fault == "truncate":
            # Chunked framing ends cleanly: only the Git layer sees the pack stop.
            self._send_head(response.head, response.headers, [("Transfer-Encoding", "chunked")])
            if cut:
                self.wfile.write(b"%x\r\n%s\r\n" % (cut, body[:cut]))
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return True
        self._send_head(response.head, response.headers, [("Content-Length", str(len(body)))])
        self.wfile.write(body[:cut])
        self.wfile.flush()
        if fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return False
        assert fault == "stall", fault
        time.sleep(owner.stall_seconds)
        self.wfile.write(body[cut:])
        self.wfile.flush()
        return True

    def _send_head(self, head: bytes, headers: list[tuple[str, str]], extra: list[tuple[str, str]]) -> None:
        kept = [
            (k, v)
            for k, v in headers
            if k.lower() not in ("connection", "content-length", "transfer-encoding", "keep-alive")
        ]
        lines = [head] + [f"{k}: {v}".encode("latin-1") for k, v in kept + extra]
        self.wfile.write(b"\r\n".join(lines) + b"\r\n\r\n")

    def _send(self, head: bytes, headers: list[tuple[str, str]], body: bytes) -> None:
        self._send_head(head, headers, [("Content-Length", str(len(body)))])
        self.wfile.write(body)
        self.wfile.flush()


# ---------------------------------------------------------------------- HTTP framing


def _serialize(head: bytes, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [head] + [f"{k}: {v}".encode("latin-1") for k, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _read_message(stream: IO[bytes] | io.BufferedIOBase, *, is_response: bool) -> _Message:
    readline = stream.readline
    read = stream.read
    head = readline(65537)
    while head in (b"\r\n", b"\n"):
        head = readline(65537)
    if not head:
        raise _Closed()
    headers: list[tuple[str, str]] = []
    while True:
        line = readline(65537)
        if not line:
            raise ValueError("connection closed inside the headers")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    message = _Message(head.rstrip(b"\r\n"), headers, b"")
    encoding = (message.header("Transfer-Encoding") or "").lower()
    length = message.header("Content-Length")
    if "chunked" in encoding:
        parts: list[bytes] = []
        while True:
            size_line = readline(65537)
            if not size_line:
                raise ValueError("connection closed inside a chunked body")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                break
            parts.append(_read_exactly(read, size))
            readline(65537)
        message.body = b"".join(parts)
    elif length is not None:
        message.body = _read_exactly(read, int(length))
    elif is_response:
        message.body = read()  # until the upstream closes
    return message


def _read_exactly(read: Callable[[int], bytes], size: int) -> bytes:
    data = read(size)
    if len(data) != size:
        raise ValueError("connection closed inside a body")
    return bytes(data)


# ---------------------------------------------------------------------- object-info surgery


def _alter_object_info(response: bytes, *, choose: Callable[[int], int]) -> bytes | None:
    """The object-info reply with the first digit of one size changed, or None if it has no size."""
    try:
        packets = pktline.decode_all(response)
    except ProtocolError:
        return None
    candidates = [
        index
        for index, packet in enumerate(packets)
        if packet.kind is PacketKind.DATA and packet.text().partition(" ")[2].isdigit()
    ]
    if not candidates:
        return None
    index = candidates[choose(len(candidates))]
    oid, _, size = packets[index].text().partition(" ")
    first = "8" if size[0] == "9" else str(int(size[0]) + 1)
    packets[index] = Packet(PacketKind.DATA, f"{oid} {first}{size[1:]}\n".encode())
    return b"".join(pktline.encode_packet(packet) for packet in packets)


# ---------------------------------------------------------------------- pack surgery


def _alter_fetch_response(response: bytes, *, raw: bool, choose: Callable[[int], int]) -> bytes | None:
    """The fetch response with one object's data altered, or None if it carries no pack object."""
    try:
        packets = pktline.decode_all(response)
    except ProtocolError:
        return None
    before: list[Packet] = []
    after: list[Packet] = []
    pack = bytearray()
    in_pack = False
    for packet in packets:
        if not in_pack:
            before.append(packet)
            if packet.kind is PacketKind.DATA and packet.payload.rstrip(b"\n") == b"packfile":
                in_pack = True
        elif packet.kind is PacketKind.DATA and packet.payload[:1] == b"\x01":
            pack += packet.payload[1:]
        elif packet.kind is PacketKind.DATA and packet.payload[:1] == b"\x02":
            continue  # progress messages are dropped
        else:
            after.append(packet)
    if not in_pack:
        return None
    altered = _alter_pack(bytes(pack), raw=raw, choose=choose)
    if altered is None:
        return None
    out = [pktline.encode_packet(p) for p in before]
    for start in range(0, len(altered), _SIDEBAND_DATA):
        out.append(pktline.encode(b"\x01" + altered[start : start + _SIDEBAND_DATA]))
    out.extend(pktline.encode_packet(p) for p in after)
    return b"".join(out)


@dataclass
class _PackEntry:
    offset: int
    kind: int
    size: int
    base_offset: int | None  # OFS_DELTA: absolute offset of the base
    base_ref: bytes | None  # REF_DELTA: base object id
    data_offset: int  # where the zlib stream starts
    compressed: bytes


def _parse_pack(pack: bytes) -> list[_PackEntry] | None:
    if len(pack) < 32 or pack[:4] != b"PACK":
        return None
    count = int.from_bytes(pack[8:12], "big")
    entries: list[_PackEntry] = []
    position = 12
    view = memoryview(pack)
    for _ in range(count):
        offset = position
        byte = pack[position]
        position += 1
        kind = (byte >> 4) & 7
        size = byte & 15
        shift = 4
        while byte & 0x80:
            byte = pack[position]
            position += 1
            size |= (byte & 0x7F) << shift
            shift += 7
        base_offset = None
        base_ref = None
        if kind == OFS_DELTA:
            byte = pack[position]
            position += 1
            distance = byte & 0x7F
            while byte & 0x80:
                byte = pack[position]
                position += 1
                distance = ((distance + 1) << 7) | (byte & 0x7F)
            base_offset = offset - distance
        elif kind == REF_DELTA:
            base_ref = bytes(pack[position : position + OID_SIZE])
            position += OID_SIZE
        inflater = zlib.decompressobj()
        start = position
        while not inflater.eof:
            if position >= len(pack) - OID_SIZE:
                return None
            piece = view[position : position + 65536]
            inflater.decompress(piece)
            position += len(piece) - len(inflater.unused_data)
            if not inflater.eof and len(inflater.unused_data) == 0 and len(piece) == 0:
                return None
        entries.append(
            _PackEntry(offset, kind, size, base_offset, base_ref, start, bytes(pack[start:position]))
        )
    return entries


def _ofs_encoding(distance: int) -> bytes:
    out = bytearray([distance & 0x7F])
    distance >>= 7
    while distance:
        distance -= 1
        out.insert(0, 0x80 | (distance & 0x7F))
        distance >>= 7
    return bytes(out)


def _alter_pack(pack: bytes, *, raw: bool, choose: Callable[[int], int]) -> bytes | None:
    pick = choose
    entries = _parse_pack(pack)
    if not entries:
        return None
    # Prefer whole blobs with content; fall back to any non-empty object.
    candidates = [e for e in entries if e.kind == ObjectType.BLOB and e.size > 0] or [
        e for e in entries if e.size > 0
    ]
    if not candidates:
        return None
    target = candidates[pick(len(candidates))]
    if raw:
        # Invert one byte of the compressed stream past its 2-byte zlib header.
        if len(target.compressed) <= 2:
            return None
        position = target.data_offset + 2 + pick(len(target.compressed) - 2)
        corrupted = bytearray(pack)
        corrupted[position] ^= 0xFF
        return bytes(corrupted)
    content = bytearray(zlib.decompress(target.compressed))
    content[pick(len(content))] ^= 0x20
    target.compressed = zlib.compress(bytes(content))
    out = bytearray(pack[:12])
    new_offsets: dict[int, int] = {}
    for entry in entries:
        start = len(out)
        new_offsets[entry.offset] = start
        out += encode_entry_header(entry.kind, entry.size)
        if entry.kind == OFS_DELTA:
            assert entry.base_offset is not None
            out += _ofs_encoding(start - new_offsets[entry.base_offset])
        elif entry.kind == REF_DELTA:
            assert entry.base_ref is not None
            out += entry.base_ref
        out += entry.compressed
    out += checksum(out)
    return bytes(out)
