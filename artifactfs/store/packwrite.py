"""Writing Git packs (gitformat-pack(5), version 2) of whole objects.

This module owns the byte layout of a pack ArtifactFS *sends*: the header
with the object count, one undeltified entry per object (type and size
varint, then the zlib stream of the content), and the trailing SHA-1 over
everything before it. Reading packs is :mod:`artifactfs.store.packstream`'s job.

Entries are never deltified: the receiver (``git index-pack``) then has no
base to resolve, and the sender needs no delta search. Content is compressed
at zlib level 1: the pack crosses a local socket, not a network.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from artifactfs.objects import TYPE_NUMBERS, checksum_hasher

_FLUSH_AT = 1 << 16
_COMPRESSION_LEVEL = 1


def entry_header(type_name: str, size: int) -> bytes:
    """An entry's type-and-size header for a whole object of ``type_name``."""
    try:
        type_number = TYPE_NUMBERS[type_name]
    except KeyError:
        raise ValueError(f"not a packable object type: {type_name!r}") from None
    return encode_entry_header(type_number, size)


def encode_entry_header(type_number: int, size: int) -> bytes:
    """3 type bits and 4 size bits, then 7 size bits per byte (the delta types included)."""
    if size < 0:
        raise ValueError("object size must not be negative")
    first = (type_number << 4) | (size & 0x0F)
    size >>= 4
    header = bytearray()
    while size:
        header.append(first | 0x80)
        first = size & 0x7F
        size >>= 7
    header.append(first)
    return bytes(header)


class PackWriter:
    """Emits a pack of exactly ``count`` objects to ``sink`` in pieces of about 64 KiB.

    Add objects with :meth:`add_bytes`, then call :meth:`finish`, which
    checks the count and writes the trailer.
    """

    def __init__(self, sink: Callable[[bytes], None], count: int) -> None:
        if count < 0:
            raise ValueError("object count must not be negative")
        self._sink = sink
        self._count = count
        self._added = 0
        self._hash = checksum_hasher()
        self._pending = bytearray()
        self._emit(b"PACK" + (2).to_bytes(4, "big") + count.to_bytes(4, "big"))

    def add_bytes(self, type_name: str, data: bytes) -> None:
        self._start(type_name, len(data))
        compressor = zlib.compressobj(_COMPRESSION_LEVEL)
        self._emit(compressor.compress(data))
        self._emit(compressor.flush())

    def finish(self) -> None:
        if self._added != self._count:
            raise ValueError(f"pack announced {self._count} objects but {self._added} were added")
        self._flush()
        self._sink(self._hash.digest())

    def _start(self, type_name: str, size: int) -> None:
        if self._added == self._count:
            raise ValueError(f"pack announced {self._count} objects; cannot add more")
        self._added += 1
        self._emit(entry_header(type_name, size))

    def _emit(self, data: bytes) -> None:
        self._pending += data
        if len(self._pending) >= _FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            data = bytes(self._pending)
            self._pending.clear()
            self._hash.update(data)
            self._sink(data)
