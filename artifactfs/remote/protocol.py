"""The Git protocol v2 engine: capability parsing and the ``ls-refs``, ``fetch``
and ``object-info`` commands, identical over every transport.

It owns building command requests, parsing responses, and deciding whether a
response stream ended properly (a truncated stream is a
:class:`TransientRemoteError`, never silently short data).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import trio

from artifactfs import __version__
from artifactfs.errors import (
    MissingObjectError,
    ProtocolError,
    RemoteError,
    TransientRemoteError,
)
from artifactfs.objects import OID_SIZE, check_object_format, checksum_hasher, is_oid
from artifactfs.remote import pktline
from artifactfs.remote.credentials import Credential
from artifactfs.remote.pktline import Packet, PacketKind
from artifactfs.remote.transport import Transport, open_transport
from artifactfs.remote.url import RemoteURL

log = logging.getLogger("artifactfs.remote.protocol")

AGENT = f"artifactfs/{__version__}"
_PACK_HEADER = 12


@dataclass(frozen=True)
class Ref:
    name: str
    oid: str
    symref_target: str | None = None
    peeled: str | None = None


class _PacketReader:
    """Pulls packets off a transport's byte chunks; ``ERR`` packets raise, and
    running out of bytes before the caller is satisfied is a truncated response."""

    def __init__(self, chunks: AsyncIterator[bytes], where: str) -> None:
        self._chunks = chunks
        self._where = where
        self._decoder = pktline.PktLineDecoder()
        self._queue: list[Packet] = []
        self._index = 0

    async def next(self) -> Packet:
        while self._index >= len(self._queue):
            chunk = await anext(self._chunks, None)
            if chunk is None:
                raise TransientRemoteError(f"{self._where}: response ended before it was complete")
            self._queue = self._decoder.feed(chunk)
            self._index = 0
        packet = self._queue[self._index]
        self._index += 1
        if packet.kind is PacketKind.DATA:
            pktline.raise_for_error_packet(packet.payload)
        return packet

    async def lines_until_flush(self) -> list[str]:
        """Text of the data packets up to the closing flush (or response-end)."""
        lines: list[str] = []
        while True:
            packet = await self.next()
            if packet.kind is PacketKind.DATA:
                lines.append(packet.text())
            elif packet.kind is PacketKind.DELIM:
                raise ProtocolError(f"{self._where}: unexpected delim packet in response")
            else:
                return lines


class _PackChecker:
    """Checks the streamed pack: ``PACK`` signature, version, and the trailing
    checksum (SHA-1 or SHA-256, per the object format) over everything before it,
    which catches corruption in transit."""

    def __init__(self, where: str) -> None:
        self._where = where
        self._hash = checksum_hasher()
        self._trailer = OID_SIZE
        self._head = b""
        self._tail = b""
        self.size = 0

    def update(self, data: bytes) -> None:
        self.size += len(data)
        if len(self._head) < _PACK_HEADER:
            self._head += data[: _PACK_HEADER - len(self._head)]
            if len(self._head) == _PACK_HEADER:
                self._check_header()
        window = self._tail + data
        cut = len(window) - self._trailer
        if cut > 0:
            self._hash.update(window[:cut])
            self._tail = window[cut:]
        else:
            self._tail = window

    def _check_header(self) -> None:
        if not self._head.startswith(b"PACK"):
            raise ProtocolError(f"{self._where}: packfile data does not start with PACK")
        version = int.from_bytes(self._head[4:8], "big")
        if version not in (2, 3):
            raise ProtocolError(f"{self._where}: unsupported pack version {version}")

    def finish(self) -> None:
        if self.size < _PACK_HEADER + self._trailer:
            raise TransientRemoteError(f"{self._where}: packfile truncated ({self.size} bytes)")
        if self._hash.digest() != self._tail:
            raise TransientRemoteError(f"{self._where}: packfile checksum mismatch (corrupted in transit)")


class FetchResponse:
    """An open ``fetch`` response: shallow info is read, pack data streams on demand."""

    def __init__(self, reader: _PacketReader, shallow_info: list[tuple[str, str]], where: str) -> None:
        self.shallow_info = shallow_info
        self._reader = reader
        self._where = where
        self._consumed = False

    async def pack_chunks(self) -> AsyncGenerator[bytes, None]:
        """Raw pack bytes as they arrive. Ends normally only once the whole pack and
        the closing flush arrived and the pack checksum matched."""
        if self._consumed:
            raise RuntimeError("pack_chunks() can only be iterated once")
        self._consumed = True
        checker = _PackChecker(self._where)
        while True:
            packet = await self._reader.next()
            if packet.kind is not PacketKind.DATA:
                if packet.kind is PacketKind.DELIM:
                    raise ProtocolError(f"{self._where}: unexpected section after packfile")
                checker.finish()
                log.debug("%s: received %d pack bytes", self._where, checker.size)
                return
            band, data = pktline.split_sideband(packet.payload)
            if band == 1:
                checker.update(data)
                yield data
            else:
                log.debug("%s: remote: %s", self._where, pktline.one_line(data.decode("utf-8", "replace")))


class RemoteSession:
    """A connection to one remote that speaks protocol v2.

    Every command is a separate stateless request, so one session may serve
    several trio tasks at once.
    """

    def __init__(self, transport: Transport, capabilities: dict[str, str]) -> None:
        self._transport = transport
        self.capabilities = capabilities
        self.description = transport.description

    @property
    def object_info_supported(self) -> bool:
        if "object-info" not in self.capabilities:
            return False
        attributes = self.capabilities["object-info"].split()
        return not attributes or "size" in attributes

    def _features(self, command: str) -> set[str]:
        return set(self.capabilities.get(command, "").split())

    def _request(self, command: str, arguments: Sequence[str]) -> bytes:
        parts = [pktline.encode(f"command={command}\n")]
        if "agent" in self.capabilities:
            parts.append(pktline.encode(f"agent={AGENT}\n"))
        if "object-format" in self.capabilities:
            parts.append(pktline.encode(f"object-format={self.capabilities['object-format']}\n"))
        parts.append(pktline.DELIM_PKT)
        parts.extend(pktline.encode(argument + "\n") for argument in arguments)
        parts.append(pktline.FLUSH_PKT)
        return b"".join(parts)

    async def ls_refs(self, prefixes: Sequence[str] = ()) -> list[Ref]:
        """Refs (with symref targets and peeled tags) whose names start with any of
        ``prefixes``, or all refs. ``HEAD`` carries its symref target."""
        arguments = ["symrefs", "peel", *(f"ref-prefix {prefix}" for prefix in prefixes)]
        async with self._transport.request(self._request("ls-refs", arguments)) as chunks:
            lines = await _PacketReader(chunks, self.description).lines_until_flush()
        refs = [self._parse_ref(line) for line in lines]
        log.debug("%s: ls-refs returned %d refs", self.description, len(refs))
        return refs

    def _parse_ref(self, line: str) -> Ref:
        oid, _, rest = line.partition(" ")
        name, *attributes = rest.split(" ")
        if not is_oid(oid) or not name:
            raise ProtocolError(f"{self.description}: malformed ls-refs line {pktline.one_line(line)!r}")
        symref_target: str | None = None
        peeled: str | None = None
        for attribute in attributes:
            key, _, value = attribute.partition(":")
            if key == "symref-target":
                symref_target = value
            elif key == "peeled":
                peeled = value
        return Ref(name, oid, symref_target, peeled)

    def fetch(
        self,
        wants: Sequence[str],
        *,
        filter_spec: str | None = None,
        depth: int | None = None,
        shallows: Sequence[str] = (),
        haves: Sequence[str] = (),
    ) -> AbstractAsyncContextManager[FetchResponse]:
        """Ask for a pack containing ``wants`` (and, unless filtered or cut at
        ``depth``, everything they reach, minus what ``haves`` reach).

        Raises :class:`ProtocolError` up front when the remote cannot honour
        ``filter_spec`` or ``depth``.
        """
        if not wants:
            raise ValueError("fetch needs at least one want")
        for oid in (*wants, *shallows, *haves):
            if not is_oid(oid):
                raise ValueError(f"not an object id: {oid!r}")
        if depth is not None and depth < 1:
            raise ValueError("depth must be at least 1")
        features = self._features("fetch")
        arguments = ["ofs-delta", "no-progress"]
        if filter_spec is not None:
            if "filter" not in features:
                raise ProtocolError(f"{self.description}: remote does not support partial clone filters")
            arguments.append(f"filter {filter_spec}")
        if (depth is not None or shallows) and "shallow" not in features:
            raise ProtocolError(f"{self.description}: remote does not support shallow fetches")
        if depth is not None:
            arguments.append(f"deepen {depth}")
        arguments.extend(f"shallow {oid}" for oid in shallows)
        arguments.extend(f"want {oid}" for oid in wants)
        arguments.extend(f"have {oid}" for oid in haves)
        arguments.append("done")
        return self._open_fetch(self._request("fetch", arguments), len(wants))

    @asynccontextmanager
    async def _open_fetch(self, request: bytes, want_count: int) -> AsyncIterator[FetchResponse]:
        log.debug("%s: fetch of %d wants", self.description, want_count)
        async with self._transport.request(request) as chunks:
            reader = _PacketReader(chunks, self.description)
            shallow_info = await self._read_sections(reader)
            yield FetchResponse(reader, shallow_info, self.description)

    async def _read_sections(self, reader: _PacketReader) -> list[tuple[str, str]]:
        """Read the sections before ``packfile``; return the shallow-info lines."""
        shallow_info: list[tuple[str, str]] = []
        section: str | None = None
        while True:
            packet = await reader.next()
            if packet.kind is PacketKind.DELIM:
                section = None
                continue
            if packet.kind is not PacketKind.DATA:
                raise ProtocolError(f"{self.description}: fetch response has no packfile")
            line = packet.text()
            if section is None:
                if line == "packfile":
                    return shallow_info
                section = line
            elif section == "shallow-info":
                kind, _, oid = line.partition(" ")
                if kind not in ("shallow", "unshallow") or not is_oid(oid):
                    raise ProtocolError(
                        f"{self.description}: malformed shallow-info line {pktline.one_line(line)!r}"
                    )
                shallow_info.append((kind, oid))

    async def object_info(self, oids: Sequence[str]) -> dict[str, int]:
        """Sizes of the given objects, without their content.

        A reply must answer for exactly the objects asked about; one that
        does not (cut short, or naming others) is a :class:`ProtocolError`.
        The sizes are the server's word only: callers check them against
        the blobs once they have them.
        """
        if not self.object_info_supported:
            raise RemoteError(f"{self.description}: remote does not support object-info")
        if not oids:
            return {}
        for oid in oids:
            if not is_oid(oid):
                raise ValueError(f"not an object id: {oid!r}")
        arguments = ["size", *(f"oid {oid}" for oid in oids)]
        async with self._transport.request(self._request("object-info", arguments)) as chunks:
            lines = await _PacketReader(chunks, self.description).lines_until_flush()
        if not lines or lines[0] != "size":
            raise ProtocolError(f"{self.description}: object-info response lacks the attribute line")
        sizes: dict[str, int] = {}
        for line in lines[1:]:
            oid, _, size = line.partition(" ")
            if not is_oid(oid):
                raise ProtocolError(
                    f"{self.description}: malformed object-info line {pktline.one_line(line)!r}"
                )
            if not size:
                raise MissingObjectError(oid)
            if not size.isdigit():
                raise ProtocolError(
                    f"{self.description}: malformed object-info line {pktline.one_line(line)!r}"
                )
            sizes[oid] = int(size)
        if len(lines) - 1 != len(oids) or sizes.keys() != set(oids):
            raise ProtocolError(
                f"{self.description}: object-info answered for {len(sizes)} of {len(set(oids))} objects"
            )
        return sizes

    def supports(self, command: str, feature: str) -> bool:
        """Whether the remote advertised ``feature`` for ``command`` (e.g. fetch's ``filter``)."""
        return feature in self._features(command)

    async def credential(self) -> Credential | None:
        """Credentials git in the mount may use for this remote (see :meth:`Transport.credential`)."""
        return await self._transport.credential()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def parse_capabilities(advertisement: bytes, where: str) -> dict[str, str]:
    """Parse a v2 capability advertisement (tolerating a leading ``# service=`` block)."""
    packets = pktline.decode_all(advertisement)
    if packets and packets[0].kind is PacketKind.DATA and packets[0].payload.startswith(b"# service="):
        if len(packets) < 2 or packets[1].kind is not PacketKind.FLUSH:
            raise ProtocolError(f"{where}: malformed service announcement")
        packets = packets[2:]
    if not packets or packets[0].kind is not PacketKind.DATA or packets[0].text() != "version 2":
        raise ProtocolError(f"{where}: remote does not speak Git protocol version 2")
    capabilities: dict[str, str] = {}
    for packet in packets[1:]:
        if packet.kind is PacketKind.FLUSH:
            return capabilities
        if packet.kind is not PacketKind.DATA:
            raise ProtocolError(f"{where}: malformed capability advertisement")
        name, _, value = packet.text().partition("=")
        if name == "object-format":
            check_object_format(value, where)
        capabilities[name] = value
    raise ProtocolError(f"{where}: capability advertisement is not terminated")


async def open_remote(remote: RemoteURL, *, timeout: float = 60.0) -> RemoteSession:
    """Connect to ``remote`` and discover its capabilities."""
    transport = open_transport(remote, timeout=timeout)
    try:
        capabilities = parse_capabilities(await transport.advertise(), transport.description)
    except BaseException:
        with trio.CancelScope(shield=True):
            await transport.aclose()
        raise
    log.debug("%s: capabilities %s", transport.description, capabilities)
    return RemoteSession(transport, capabilities)
