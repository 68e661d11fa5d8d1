"""Writing a git index whose stat data matches what the mount reports.

``git status`` compares each file's stat data with the index before it reads
anything. With ``core.checkStat=minimal`` it compares the whole-second mtime
and the size; the mount reports a fixed old mtime and the exact blob size for
every unmodified file, and this module writes the same values into the index,
so a status straight after mount reads no file contents at all.

The index also carries a cache-tree (the ``TREE`` extension) naming the tree
object of every directory. Without it ``git commit`` must rebuild every tree
from the index, and in a partial clone git first fetches every blob it has
not seen; with it, only directories that changed are rebuilt.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from artifactfs.errors import ArtifactFSError
from artifactfs.objects import OID_SIZE, checksum
from artifactfs.state import PRIVATE_FILE_MODE
from artifactfs.worktree.ewah import encode_ewah
from artifactfs.worktree.untracked import UntrackedCache

_ENTRY_HEADER = struct.Struct(">10I20sH")
_NAME_MASK = 0x0FFF
_FSMONITOR_VERSION = 2


@dataclass(frozen=True)
class FsmonitorState:
    """The ``FSMN`` extension: entries are unchanged as of ``token``, except those at ``dirty`` paths."""

    token: str
    dirty: frozenset[bytes] = frozenset()

    def encode(self, ordered_paths: list[bytes]) -> bytes:
        dirty = [position for position, path in enumerate(ordered_paths) if path in self.dirty]
        bitmap = encode_ewah(dirty, dirty[-1] + 1 if dirty else 0)
        return (
            struct.pack(">I", _FSMONITOR_VERSION)
            + self.token.encode()
            + b"\0"
            + struct.pack(">I", len(bitmap))
            + bitmap
        )


@dataclass
class CacheTree:
    """One directory of the cache-tree: its tree id (None if unknown) and subdirectories."""

    oid: str | None
    entry_count: int = 0
    children: dict[bytes, CacheTree] = field(default_factory=dict)

    def invalidate(self) -> None:
        self.oid = None

    def encode(self, name: bytes = b"") -> bytes:
        valid = self.oid is not None
        encoded = bytearray(
            name + b"\0" + b"%d %d\n" % (self.entry_count if valid else -1, len(self.children))
        )
        if self.oid is not None:
            encoded += bytes.fromhex(self.oid)
        for child_name in sorted(self.children, key=lambda child: (len(child), child)):  # git's own order
            encoded += self.children[child_name].encode(child_name)
        return bytes(encoded)


@dataclass(frozen=True, slots=True)
class IndexRecord:
    path: bytes
    mode: int
    oid: str
    size: int


class IndexLockedError(ArtifactFSError):
    """A git command holds ``index.lock``; the index was left alone."""


def encode_index(
    records: Iterable[IndexRecord],
    mtime_ns: int,
    cache_tree: CacheTree | None = None,
    untracked: UntrackedCache | None = None,
    fsmonitor: FsmonitorState | None = None,
) -> bytes:
    """Serialise a version-2 index with the given stat data for every entry, and its extensions."""
    seconds, nanoseconds = divmod(mtime_ns, 1_000_000_000)
    ordered = sorted(records, key=lambda record: record.path)
    body = bytearray(b"DIRC" + struct.pack(">II", 2, len(ordered)))
    for record in ordered:
        flags = min(len(record.path), _NAME_MASK)
        body += _ENTRY_HEADER.pack(
            seconds,
            nanoseconds,
            seconds,
            nanoseconds,
            0,
            0,
            record.mode,
            0,
            0,
            record.size & 0xFFFFFFFF,
            bytes.fromhex(record.oid),
            flags,
        )
        body += record.path
        entry_length = _ENTRY_HEADER.size + len(record.path)
        body += b"\0" * (8 - entry_length % 8)
    if cache_tree is not None:
        extension = cache_tree.encode()
        body += b"TREE" + struct.pack(">I", len(extension)) + extension
    if untracked is not None:
        extension = untracked.encode()
        body += b"UNTR" + struct.pack(">I", len(extension)) + extension
    if fsmonitor is not None:
        extension = fsmonitor.encode([record.path for record in ordered])
        body += b"FSMN" + struct.pack(">I", len(extension)) + extension
    body += checksum(body)
    return bytes(body)


def write_index(
    gitdir: Path,
    records: Iterable[IndexRecord],
    mtime_ns: int,
    cache_tree: CacheTree | None = None,
    untracked: UntrackedCache | None = None,
    fsmonitor: FsmonitorState | None = None,
) -> None:
    """Replace ``gitdir/index`` the way git does: via ``index.lock``, never under a running command."""
    lock = gitdir / "index.lock"
    try:
        descriptor = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        raise IndexLockedError("a git command is running in the mount (index.lock exists)") from None
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(encode_index(records, mtime_ns, cache_tree, untracked, fsmonitor))
        os.replace(lock, gitdir / "index")
    except BaseException:
        lock.unlink(missing_ok=True)
        raise


def correct_index_sizes(gitdir: Path, sizes: Mapping[str, int]) -> int:
    """Record the verified size of each blob in ``sizes`` in every index entry naming it; returns how many changed.

    For blobs whose size was reported wrong before they were verified: git
    trusts a non-zero recorded size that differs from ``lstat`` as a
    modification without reading the file, so a wrong size makes an
    unmodified file look modified. Handles index versions 2 and 3 (git's
    defaults; version 4 is left alone), under ``index.lock`` like git itself.
    Raises :class:`IndexLockedError` while a git command holds the lock.
    """
    lock = gitdir / "index.lock"
    try:
        descriptor = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise IndexLockedError("a git command is running in the mount (index.lock exists)") from None
    try:
        with os.fdopen(descriptor, "wb") as stream:
            try:
                data = bytearray((gitdir / "index").read_bytes())
            except FileNotFoundError:
                return 0
            changed = _patch_sizes(data, sizes)
            if changed:
                stream.write(data)
        if changed:
            os.replace(lock, gitdir / "index")
        return changed
    finally:
        lock.unlink(missing_ok=True)


def _patch_sizes(data: bytearray, sizes: Mapping[str, int]) -> int:
    if not sizes or data[:4] != b"DIRC":
        return 0
    version, count = struct.unpack_from(">II", data, 4)
    if version not in (2, 3):
        return 0
    hash_size = OID_SIZE
    position = 12
    changed = 0
    for _ in range(count):
        flags = struct.unpack_from(">H", data, position + 40 + hash_size)[0]
        header = 40 + hash_size + 2 + (2 if version == 3 and flags & 0x4000 else 0)
        name_length = flags & _NAME_MASK
        if name_length == _NAME_MASK:
            name_length = data.index(b"\0", position + header) - (position + header)
        wanted = sizes.get(data[position + 40 : position + 40 + hash_size].hex())
        if wanted is not None and struct.unpack_from(">I", data, position + 36)[0] != wanted & 0xFFFFFFFF:
            struct.pack_into(">I", data, position + 36, wanted & 0xFFFFFFFF)
            changed += 1
        entry_length = header + name_length
        position += entry_length + 8 - entry_length % 8
    if changed:
        trailer = len(data) - hash_size
        data[trailer:] = checksum(bytes(data[:trailer]))
    return changed
