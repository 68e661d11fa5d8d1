"""git loose blob objects stored without compression, readable at any offset.

The blob cache is the one place a hydrated blob lives, and two readers share
it: git (through the gitdir's ``objects/info/alternates``) and the FUSE layer.
git reads loose objects, which are zlib streams of ``blob <size>\\0`` followed
by the content. Deflate's *stored* blocks carry bytes verbatim, so a loose
object written with stored blocks only is a valid object for git and, at the
same time, the plain content at computable offsets for the mount: content
byte ``n`` sits at a fixed position given the header length, with no
inflating.

Layout of every file this module writes::

    78 01                                  zlib header (deflate, fastest)
    { 00|01  LEN  ~LEN  <LEN payload bytes> }  stored blocks of BLOCK bytes, the last one final
    adler32(payload)                       big-endian

where the payload is ``b"blob %d\\0" % size`` followed by the content. Every
block but the last holds exactly :data:`BLOCK` payload bytes.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import BinaryIO, Self

from artifactfs.objects import blob_header, checksum_hasher

BLOCK = 0xFFFF
"""Payload bytes in every stored block but the last: the largest a stored block holds."""
_ZLIB_HEADER = b"\x78\x01"
_BLOCK_HEADER = 5
_FRAME = len(_ZLIB_HEADER) + 4
"""Bytes outside the blocks: the zlib header and the adler32 trailer."""
_COPY_CHUNK = 1 << 20
_MAX_HEADER = 32


def encoded_size(size: int) -> int:
    """Length of the file :func:`write_loose_blob` writes for content of ``size`` bytes."""
    payload = len(blob_header(size)) + size
    return _FRAME + payload + _BLOCK_HEADER * -(-payload // BLOCK)


def content_size(file_size: int) -> int | None:
    """The content size of a file this module wrote, from the file's length alone (None: not one)."""
    body = file_size - _FRAME
    if body <= _BLOCK_HEADER:
        return None
    blocks = -(-body // (BLOCK + _BLOCK_HEADER))
    payload = body - _BLOCK_HEADER * blocks
    for digits in range(1, 21):
        size = payload - len(b"blob \x00") - digits
        if size >= 0 and len(str(size)) == digits:
            return size
    return None


def write_loose_blob(target: BinaryIO, size: int, source: BinaryIO) -> None:
    """Write the loose object for ``size`` bytes of content read from ``source``."""
    header = blob_header(size)
    remaining = len(header) + size
    checksum = zlib.adler32(b"")
    target.write(_ZLIB_HEADER)
    pending = header
    while remaining:
        length = min(BLOCK, remaining)
        block = pending + _read_exact(source, length - len(pending))
        pending = b""
        remaining -= length
        target.write(struct.pack("<BHH", 0 if remaining else 1, length, length ^ 0xFFFF))
        target.write(block)
        checksum = zlib.adler32(block, checksum)
    if source.read(1):
        raise ValueError("the source holds more than the announced size")
    target.write(struct.pack(">I", checksum))


def _read_exact(source: BinaryIO, length: int) -> bytes:
    parts: list[bytes] = []
    while length > 0:
        part = source.read(length)
        if not part:
            raise ValueError("the source ended before the announced size")
        parts.append(part)
        length -= len(part)
    return b"".join(parts)


class StoredContent:
    """The content of one stored object, open: read by offset (:meth:`pread`) or in sequence
    (:meth:`read`, so it can stand in for a file in ``shutil.copyfileobj``). Subclasses say where
    the content's bytes lie in the file."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._position = 0

    def pread(self, length: int, offset: int) -> bytes:
        """Up to ``length`` content bytes from ``offset`` (fewer only at the end)."""
        raise NotImplementedError

    def read(self, length: int = -1) -> bytes:
        if length < 0:
            length = self.size - self._position
        data = self.pread(length, self._position)
        self._position += len(data)
        return data

    def read_all(self) -> bytes:
        return self.pread(self.size, 0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LooseBlobFile(StoredContent):
    """The content of one stored loose blob: stored deflate blocks after the object header."""

    def __init__(self, fd: int, size: int, header_length: int) -> None:
        super().__init__(fd, size)
        self._header_length = header_length

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> LooseBlobFile:
        """Open a file this module wrote; raises ValueError if it is not one."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            start = os.pread(fd, len(_ZLIB_HEADER) + _BLOCK_HEADER + _MAX_HEADER, 0)
            header_end = start.find(b"\x00", len(_ZLIB_HEADER) + _BLOCK_HEADER)
            header = start[len(_ZLIB_HEADER) + _BLOCK_HEADER : header_end + 1]
            if start[:2] != _ZLIB_HEADER or header_end < 0 or not header.startswith(b"blob "):
                raise ValueError(f"{os.fspath(path)} is not a stored loose blob")
            size = int(header[5:-1])
            if header != blob_header(size) or encoded_size(size) != os.fstat(fd).st_size:
                raise ValueError(f"{os.fspath(path)} is truncated or damaged")
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, size, len(header))

    def pread(self, length: int, offset: int) -> bytes:
        """Up to ``length`` content bytes from ``offset`` (fewer only at the end)."""
        end = min(self.size, offset + length)
        parts: list[bytes] = []
        while offset < end:
            position = self._header_length + offset
            block, within = divmod(position, BLOCK)
            count = min(end - offset, BLOCK - within)
            at = len(_ZLIB_HEADER) + block * (BLOCK + _BLOCK_HEADER) + _BLOCK_HEADER + within
            part = os.pread(self.fd, count, at)
            if len(part) != count:
                raise ValueError("stored loose blob shrank while being read")
            parts.append(part)
            offset += count
        return b"".join(parts)


def loose_object_id(path: str | os.PathLike[str]) -> str:
    """Inflate a loose object the way git does and return the id its payload hashes to.

    The payload (``<type> <size>\\0<content>``) is exactly what an object id
    hashes, so this checks the zlib stream, its checksum and the content at once.
    """
    decompressor = zlib.decompressobj()
    hasher = checksum_hasher()
    try:
        with open(path, "rb") as stream:
            while chunk := stream.read(_COPY_CHUNK):
                hasher.update(decompressor.decompress(chunk))
        hasher.update(decompressor.flush())
    except zlib.error as error:
        raise ValueError(f"{os.fspath(path)} does not inflate: {error}") from None
    if not decompressor.eof or decompressor.unused_data:
        raise ValueError(f"{os.fspath(path)} is not one complete zlib stream")
    return hasher.hexdigest()
