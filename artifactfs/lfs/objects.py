"""LFS objects in the shared blob cache: ``<cache>/lfs/objects/ab/cd/<sha256>``.

This module owns that layout (git-lfs's own, so git-lfs in a mount can use it
as its ``lfs.storage`` and nothing is stored twice) and the rule that an
object appears there only through an atomic rename after its content was
hashed and matched its name and size. Objects are plain files, read at any
offset. The namespace is separate from the cache's git loose objects
(``<cache>/loose``), which are keyed by git blob id.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import shutil
from pathlib import Path

from artifactfs.errors import CorruptObjectError
from artifactfs.state import READ_ONLY_FILE_MODE, Owner, acting_as, pid_alive, private_dir
from artifactfs.store.loose import StoredContent

_OID = re.compile(r"[0-9a-f]{64}")
_TMP_PREFIX = "artifactfs-"


def _check_oid(oid: str) -> None:
    if not _OID.fullmatch(oid):
        raise ValueError(f"not a hex SHA-256 LFS object id: {oid!r}")


class LfsObjectFile(StoredContent):
    """The content of one stored LFS object: the whole file."""

    def pread(self, length: int, offset: int) -> bytes:
        return os.pread(self.fd, max(0, min(length, self.size - offset)), offset)


class PartialObject:
    """An object being received: written to scratch while hashed, installed by :meth:`commit`."""

    def __init__(self, store: LfsObjectStore, oid: str, size: int, scratch: str, fd: int) -> None:
        self._store = store
        self.oid = oid
        self.size = size
        self._scratch = scratch
        self._fd = fd
        self._hash = hashlib.sha256()
        self.received = 0

    def write(self, data: bytes) -> None:
        """Append ``data``; refuses more bytes than the pointer's size at once."""
        self.received += len(data)
        if self.received > self.size:
            raise CorruptObjectError(f"LFS object {self.oid} is longer than its pointer's {self.size} bytes")
        self._hash.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def commit(self) -> Path:
        """Install the object if it is complete and hashes to its id; raises CorruptObjectError otherwise."""
        os.close(self._fd)
        self._fd = -1
        if self.received != self.size:
            raise CorruptObjectError(f"LFS object {self.oid}: received {self.received} of {self.size} bytes")
        actual = self._hash.hexdigest()
        if actual != self.oid:
            raise CorruptObjectError(f"LFS object {self.oid} hashes to {actual}")
        target = self._store.path(self.oid)
        with acting_as(self._store.owner):
            private_dir(target.parent, self._store.owner)
            os.replace(self._scratch, target)
        return target

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(FileNotFoundError), acting_as(self._store.owner):
            os.unlink(self._scratch)


class LfsObjectStore:
    """LFS objects keyed by sha256 under ``<cache root>/lfs``; safe for concurrent readers.

    In the blob cache of another user (``owner``, see :mod:`artifactfs.state`)
    everything is written as that user, whose git-lfs uses it as its storage.
    """

    def __init__(self, cache_root: Path, owner: Owner | None = None) -> None:
        self.owner = owner
        self.root = cache_root / "lfs"
        self._objects = self.root / "objects"
        self._tmp_root = self.root / "tmp"  # git-lfs keeps its own scratch files here too
        self._tmp = self._tmp_root / f"{_TMP_PREFIX}{os.getpid()}"
        self._serial = itertools.count()
        for directory in (self.root, self._objects, self._tmp_root):
            private_dir(directory, owner)
        with acting_as(owner):
            self._clean_tmp()
        private_dir(self._tmp, owner)

    def _clean_tmp(self) -> None:
        """Remove partial downloads left by mounts whose process is gone (or had our pid)."""
        for entry in os.scandir(self._tmp_root):
            owner = entry.name.removeprefix(_TMP_PREFIX)
            if entry.name.startswith(_TMP_PREFIX) and owner.isdigit():
                if int(owner) == os.getpid() or not pid_alive(int(owner)):
                    shutil.rmtree(entry.path, ignore_errors=True)

    def path(self, oid: str) -> Path:
        _check_oid(oid)
        return self._objects / oid[:2] / oid[2:4] / oid

    def size(self, oid: str) -> int | None:
        try:
            return os.stat(self.path(oid)).st_size
        except FileNotFoundError:
            return None

    def open(self, oid: str, size: int) -> LfsObjectFile:
        """The stored object ``oid`` of ``size`` bytes; FileNotFoundError if it is not stored,
        CorruptObjectError if the stored file has another length."""
        fd = os.open(self.path(oid), os.O_RDONLY | os.O_CLOEXEC)
        actual = os.fstat(fd).st_size
        if actual != size:
            os.close(fd)
            raise CorruptObjectError(f"stored LFS object {oid} has {actual} bytes, its pointer says {size}")
        return LfsObjectFile(fd, size)

    def receive(self, oid: str, size: int) -> PartialObject:
        """Start receiving object ``oid``; the caller must ``commit`` or ``discard`` it."""
        _check_oid(oid)
        while True:
            scratch = f"{self._tmp}{os.sep}{oid}-{next(self._serial)}"
            try:
                with acting_as(self.owner):
                    fd = os.open(
                        scratch,
                        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                        READ_ONLY_FILE_MODE,
                    )
                return PartialObject(self, oid, size, scratch, fd)
            except FileExistsError:
                continue
