"""Writing a git index whose stat data matches what the mount reports.

``git status`` compares each file's stat data with the index before it reads
anything. With ``core.checkStat=minimal`` it compares the whole-second mtime
and the size; the mount reports a fixed old mtime and the exact blob size for
every unmodified file, and this module writes the same values into the index,
so a status straight after mount reads no file contents at all.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from artifactfs.errors import ArtifactFSError

_ENTRY_HEADER = struct.Struct(">10I20sH")
_NAME_MASK = 0x0FFF


@dataclass(frozen=True, slots=True)
class IndexRecord:
    path: bytes
    mode: int
    oid: str
    size: int


class IndexLockedError(ArtifactFSError):
    """A git command holds ``index.lock``; the index was left alone."""


def encode_index(records: Iterable[IndexRecord], mtime_ns: int) -> bytes:
    """Serialise a version-2 index with the given stat data for every entry."""
    seconds, nanoseconds = divmod(mtime_ns, 1_000_000_000)
    ordered = sorted(records, key=lambda record: record.path)
    body = bytearray(b"DIRC" + struct.pack(">II", 2, len(ordered)))
    for record in ordered:
        flags = min(len(record.path), _NAME_MASK)
        body += _ENTRY_HEADER.pack(
            seconds, nanoseconds, seconds, nanoseconds, 0, 0, record.mode, 0, 0,
            record.size & 0xFFFFFFFF, bytes.fromhex(record.oid), flags,
        )
        body += record.path
        entry_length = _ENTRY_HEADER.size + len(record.path)
        body += b"\0" * (8 - entry_length % 8)
    body += hashlib.sha1(body).digest()
    return bytes(body)


def write_index(gitdir: Path, records: Iterable[IndexRecord], mtime_ns: int) -> None:
    """Replace ``gitdir/index`` the way git does: via ``index.lock``, never under a running command."""
    lock = gitdir / "index.lock"
    try:
        descriptor = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise IndexLockedError("a git command is running in the mount (index.lock exists)") from None
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(encode_index(records, mtime_ns))
        os.replace(lock, gitdir / "index")
    except BaseException:
        lock.unlink(missing_ok=True)
        raise
