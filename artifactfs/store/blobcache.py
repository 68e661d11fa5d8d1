"""Content-addressed cache of blob contents on local disk: the one place a blob lives.

This module owns the cache's on-disk layout: ``root/loose/ab/<38 hex>`` holds
one owner-only, read-only file per blob (in 0700 directories, see
:mod:`artifactfs.state`), named by its Git blob oid, and ``root/tmp/`` holds
partial writes (including pack spool files). ``root/loose`` is a git object
directory: each file is a loose object written with uncompressed deflate
blocks (see :mod:`artifactfs.store.loose`), so git in a mount reads it through
``objects/info/alternates`` while the mount reads content at computed offsets.
A blob therefore exists once on disk, not again in the gitdir's packs.

A file only ever appears under ``loose/`` through an atomic rename after its
content was hashed and found to match its name, so a reader never sees a
partial or unverified blob.

Files are not fsynced: after an unclean shutdown a stored file may be damaged,
which ``verify`` detects; the remote can always supply the blob again.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from artifactfs.errors import CorruptObjectError
from artifactfs.objects import blob_id, check_oid, is_oid, object_hasher
from artifactfs.state import READ_ONLY_FILE_MODE, pid_alive, private_dir
from artifactfs.store.loose import LooseBlobFile, content_size, loose_object_id, write_loose_blob

_READ_CHUNK = 1 << 20


def blob_id_of_file(path: Path) -> str:
    """Git blob oid of a file's content, read in chunks."""
    with path.open("rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        hasher = object_hasher("blob", size)
        seen = 0
        while chunk := stream.read(_READ_CHUNK):
            hasher.update(chunk)
            seen += len(chunk)
    if seen != size:
        raise CorruptObjectError(f"{path.name} changed size while being hashed")
    return hasher.hexdigest()


class BlobCache:
    """Blob files keyed by oid under ``root``; safe for concurrent readers."""

    def __init__(self, root: Path) -> None:
        self._objects = root / "loose"
        self._objects_prefix = f"{self._objects}{os.sep}"
        self._tmp_root = root / "tmp"
        self._tmp = self._tmp_root / str(os.getpid())  # per process: the cache is shared by mounts
        self._serial = itertools.count()
        for directory in (root, self._objects, self._tmp_root, self._tmp):
            private_dir(directory)

    @property
    def tmp_dir(self) -> Path:
        """Scratch directory on the cache's filesystem, e.g. a pack parser's ``spool_dir``."""
        return self._tmp

    @property
    def objects_dir(self) -> Path:
        """The git object directory the cache is (for a gitdir's ``objects/info/alternates``)."""
        return self._objects

    def path(self, oid: str) -> Path:
        """Where blob ``oid`` is stored, as a loose object; read it through :meth:`open`."""
        check_oid(oid)
        return self._objects / oid[:2] / oid[2:]

    def _location(self, oid: str) -> str:
        """``path(oid)`` as a plain string: the hot lookups avoid pathlib's overhead."""
        check_oid(oid)
        return f"{self._objects_prefix}{oid[:2]}{os.sep}{oid[2:]}"

    def contains(self, oid: str) -> bool:
        return os.path.isfile(self._location(oid))

    def size(self, oid: str) -> int | None:
        try:
            return content_size(os.stat(self._location(oid)).st_size)
        except FileNotFoundError:
            return None

    def open(self, oid: str) -> LooseBlobFile:
        """The stored content of ``oid``; raises FileNotFoundError if it is not cached."""
        try:
            return LooseBlobFile.open(self._location(oid))
        except ValueError as error:
            raise CorruptObjectError(str(error)) from None

    def read_bytes(self, oid: str) -> bytes:
        with self.open(oid) as blob:
            return blob.read_all()

    def store_bytes(self, oid: str, data: bytes) -> Path:
        """Store ``data`` as blob ``oid`` after checking that it hashes to ``oid``."""
        target = self.path(oid)
        actual = blob_id(data)
        if actual != oid:
            raise CorruptObjectError(f"blob data for {oid} hashes to {actual}")
        if target.is_file():
            return target
        self._write(target, len(data), io.BytesIO(data))
        return target

    def _write(self, target: Path, size: int, source: BinaryIO) -> None:
        # A serial number, not tempfile.mkstemp: the scratch directory is this process's own, and
        # mkstemp's random names cost as much as the rest of storing a small blob.
        while True:
            partial = f"{self._tmp}{os.sep}blob-{next(self._serial)}"
            try:
                fd = os.open(
                    partial,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    READ_ONLY_FILE_MODE,
                )
                break
            except FileExistsError:
                continue  # left by an earlier process with this pid
        try:
            with os.fdopen(fd, "wb") as stream:
                write_loose_blob(stream, size, source)
            self._install(partial, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
            raise

    def adopt_file(self, oid: str, path: Path) -> Path:
        """Store the content in the file at ``path`` as blob ``oid``, then delete that file.

        The cache takes ownership of ``path``: it is deleted whether its
        content is stored, does not hash to ``oid``, or the blob is already
        stored. ``path`` should be in ``tmp_dir``.
        """
        target = self.path(oid)
        try:
            actual = blob_id_of_file(path)
            if actual != oid:
                raise CorruptObjectError(f"blob file for {oid} hashes to {actual}")
            if not target.is_file():
                with path.open("rb") as source:
                    self._write(target, os.fstat(source.fileno()).st_size, source)
        finally:
            path.unlink(missing_ok=True)
        return target

    def verify(self, oid: str) -> bool:
        """Inflate and rehash the stored blob as git would; False if it is missing or damaged."""
        try:
            return loose_object_id(self.path(oid)) == oid
        except (OSError, ValueError):
            return False

    def remove(self, oid: str) -> None:
        self.path(oid).unlink(missing_ok=True)

    def iter_oids(self) -> Iterator[str]:
        for oid, _ in self._entries():
            yield oid

    def total_bytes(self) -> int:
        total = 0
        for _, entry in self._entries():
            try:
                total += entry.stat().st_size
            except FileNotFoundError:
                continue  # removed while we were counting
        return total

    def _entries(self) -> Iterator[tuple[str, os.DirEntry[str]]]:
        with os.scandir(self._objects) as fanouts:
            for fanout in fanouts:
                if len(fanout.name) != 2 or not fanout.is_dir():
                    continue
                with os.scandir(fanout.path) as entries:
                    for entry in entries:
                        oid = fanout.name + entry.name
                        if is_oid(oid) and entry.is_file():
                            yield oid, entry

    def clean_tmp(self) -> int:
        """Delete partial files left by processes that are gone, and this process's own.

        Each process writes under its own ``tmp/<pid>``, so a mount starting up
        never touches the in-progress writes of another running mount.
        """
        removed = 0
        with os.scandir(self._tmp_root) as entries:
            for entry in entries:
                owner = int(entry.name) if entry.name.isdigit() else None
                if owner is not None and owner != os.getpid() and pid_alive(owner):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    removed += sum(len(files) for _, _, files in os.walk(entry.path))
                    if owner != os.getpid():
                        shutil.rmtree(entry.path, ignore_errors=True)
                        continue
                    for leftover in os.scandir(entry.path):
                        os.unlink(leftover.path)
                else:
                    os.unlink(entry.path)
                    removed += 1
        return removed

    @staticmethod
    def _install(partial: str, target: Path) -> None:
        """Rename a finished, read-only scratch file into place."""
        try:
            os.replace(partial, target)
        except FileNotFoundError:  # the first blob of its fan-out directory
            private_dir(target.parent)
            os.replace(partial, target)
