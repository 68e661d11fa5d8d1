"""Git pkt-line framing: encoding, incremental decoding, side-band demultiplexing
and the mapping of ``ERR`` packets and fatal side-band messages to errors.

See gitprotocol-common(5) and gitprotocol-v2(5): a packet is a four hex digit
length (counting itself) followed by the payload; ``0000`` (flush), ``0001``
(delim) and ``0002`` (response-end) are payload-less special packets.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from artifactfs.errors import MissingObjectError, ProtocolError, RemoteError
from artifactfs.objects import OID_PATTERN
from artifactfs.redaction import redact

MAX_PKT_LEN = 65520
"""Largest packet, length prefix included (LARGE_PACKET_MAX in git)."""
MAX_PAYLOAD = MAX_PKT_LEN - 4

FLUSH_PKT = b"0000"
DELIM_PKT = b"0001"
RESPONSE_END_PKT = b"0002"

_NOT_OUR_REF_RE = re.compile(rf"not our ref(?: ({OID_PATTERN})\b)?")
_MAX_MESSAGE = 400


class PacketKind(enum.Enum):
    DATA = "data"
    FLUSH = "flush"
    DELIM = "delim"
    RESPONSE_END = "response-end"


@dataclass(frozen=True, slots=True)
class Packet:
    kind: PacketKind
    payload: bytes = b""

    def text(self) -> str:
        """The payload as text without its trailing newline (undecodable bytes replaced)."""
        return self.payload.decode("utf-8", "replace").removesuffix("\n")


FLUSH = Packet(PacketKind.FLUSH)
DELIM = Packet(PacketKind.DELIM)
RESPONSE_END = Packet(PacketKind.RESPONSE_END)
_SPECIAL = {0: FLUSH, 1: DELIM, 2: RESPONSE_END}
_SPECIAL_BYTES = {
    PacketKind.FLUSH: FLUSH_PKT,
    PacketKind.DELIM: DELIM_PKT,
    PacketKind.RESPONSE_END: RESPONSE_END_PKT,
}


def encode(payload: bytes | str) -> bytes:
    """Frame one data packet. Text is UTF-8 encoded and gets no implicit newline."""
    data = payload.encode() if isinstance(payload, str) else payload
    if not data:
        raise ValueError("an empty data packet cannot be encoded (it would read as flush)")
    if len(data) > MAX_PAYLOAD:
        raise ValueError(f"pkt-line payload of {len(data)} bytes exceeds {MAX_PAYLOAD}")
    return b"%04x" % (len(data) + 4) + data


def encode_packet(packet: Packet) -> bytes:
    """Frame any packet, special ones included."""
    if packet.kind is PacketKind.DATA:
        return encode(packet.payload)
    return _SPECIAL_BYTES[packet.kind]


class PktLineDecoder:
    """Turns a byte stream, fed in arbitrary chunks, into packets."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held back because they do not yet form a whole packet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Packet]:
        """Add bytes; return every packet they complete. Raises :class:`ProtocolError`."""
        buffer = self._buffer
        buffer += data
        packets: list[Packet] = []
        pos = 0
        end = len(buffer)
        while end - pos >= 4:
            header = bytes(buffer[pos : pos + 4])
            try:
                length = int(header, 16)
            except ValueError:
                raise ProtocolError(f"invalid pkt-line length prefix {header!r}") from None
            if length < 4:
                special = _SPECIAL.get(length)
                if special is None:
                    raise ProtocolError(f"invalid pkt-line length {length}")
                packets.append(special)
                pos += 4
                continue
            if length > MAX_PKT_LEN:
                raise ProtocolError(f"pkt-line length {length} exceeds {MAX_PKT_LEN}")
            if end - pos < length:
                break
            packets.append(Packet(PacketKind.DATA, bytes(buffer[pos + 4 : pos + length])))
            pos += length
        del buffer[:pos]
        return packets


def decode_all(data: bytes) -> list[Packet]:
    """Decode a complete byte string; trailing partial packets are a :class:`ProtocolError`."""
    decoder = PktLineDecoder()
    packets = decoder.feed(data)
    if decoder.pending:
        raise ProtocolError(f"pkt-line stream ends inside a packet ({decoder.pending} bytes left)")
    return packets


def one_line(text: str) -> str:
    """Collapse remote-supplied text into one short, credential-free line."""
    flat = " ".join(redact(text).split())
    return flat if len(flat) <= _MAX_MESSAGE else flat[: _MAX_MESSAGE - 3] + "..."


def raise_for_error_packet(payload: bytes) -> None:
    """Raise the error an ``ERR <message>`` packet stands for; do nothing otherwise."""
    if not payload.startswith(b"ERR "):
        return
    message = payload[4:].decode("utf-8", "replace")
    _raise_if_missing(message)
    raise RemoteError(f"remote error: {one_line(message)}")


def _raise_if_missing(message: str) -> None:
    """Raise :class:`MissingObjectError` for git's "not our ref", naming the object when the message does."""
    missing = _NOT_OUR_REF_RE.search(message)
    if missing is not None:
        raise MissingObjectError(
            missing.group(1), f"remote does not have object {missing.group(1) or '(unnamed)'}"
        )


def split_sideband(payload: bytes) -> tuple[int, bytes]:
    """Demultiplex one side-band-64k packet into ``(band, data)``.

    Band 1 carries pack data and band 2 progress text; band 3 (a fatal error)
    is raised as :class:`RemoteError` with the server's text (a missing object
    as :class:`MissingObjectError`).
    """
    if not payload:
        raise ProtocolError("empty side-band packet")
    band = payload[0]
    data = payload[1:]
    if band in (1, 2):
        return band, data
    if band == 3:
        message = data.decode("utf-8", "replace")
        _raise_if_missing(message)
        raise RemoteError(f"remote error: {one_line(message)}")
    raise ProtocolError(f"invalid side-band channel {band}")
