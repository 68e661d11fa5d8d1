"""Errors raised by overlay operations, and the errno each failure means to a caller.

:func:`errno_for` is the one place that decides which errno a failed overlay
operation reports: the errno an :class:`OverlayError` carries, the errno of an
``OSError`` from a data file or the journal, and ENOSPC for SQLite running out
of room (SQLite's own "database or disk is full" and "cannot grow the
shared-memory index" codes), so a full disk is never reported as EIO.
"""

from __future__ import annotations

import sqlite3
from errno import (
    EBUSY,
    EEXIST,
    EINVAL,
    EIO,
    EISDIR,
    ENAMETOOLONG,
    ENODATA,
    ENOENT,
    ENOSPC,
    ENOTDIR,
    ENOTEMPTY,
    EPERM,
)
from typing import ClassVar

from artifactfs.errors import NO_SPACE_ERRNOS, ArtifactFSError


class OverlayError(ArtifactFSError):
    """A namespace operation was refused; :attr:`errno` says why in POSIX terms."""

    errno: ClassVar[int] = EINVAL

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{detail}: {path!r}")
        self.path = path


class NotFound(OverlayError):
    errno = ENOENT


class AlreadyExists(OverlayError):
    errno = EEXIST


class NotADirectory(OverlayError):
    errno = ENOTDIR


class IsADirectory(OverlayError):
    errno = EISDIR


class DirectoryNotEmpty(OverlayError):
    errno = ENOTEMPTY


class InvalidName(OverlayError):
    """Empty, ``.``, ``..``, or containing NUL: not a name a directory entry can have."""

    errno = EINVAL


class NameTooLong(OverlayError):
    """A directory entry name longer than 255 bytes (NAME_MAX)."""

    errno = ENAMETOOLONG


class NoAttribute(OverlayError):
    """The extended attribute asked for does not exist."""

    errno = ENODATA


class ReservedName(OverlayError):
    """A name Git would treat as its own directory (``.git`` in any spelling)."""

    errno = EPERM


class InvalidOperation(OverlayError):
    """The request contradicts itself, e.g. moving a directory into its own subtree."""

    errno = EINVAL


class ReadOnlyEntry(OverlayError):
    """The entry cannot take this change, e.g. a hard link to a directory."""

    errno = EPERM


class ResourceBusy(OverlayError):
    """The root directory cannot be removed or renamed."""

    errno = EBUSY


_SQLITE_NO_SPACE = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR_SHMSIZE})


def is_no_space(error: BaseException) -> bool:
    """Did this failure happen because the filesystem (or the user's quota) is full?"""
    if isinstance(error, OSError):
        return error.errno in NO_SPACE_ERRNOS
    return isinstance(error, sqlite3.Error) and getattr(error, "sqlite_errorcode", None) in _SQLITE_NO_SPACE


def errno_for(error: BaseException) -> int | None:
    """The errno a caller should see for a failed overlay operation; None means a bug (log it)."""
    if isinstance(error, OverlayError):
        return error.errno
    if isinstance(error, OSError):
        return error.errno or EIO
    if is_no_space(error):
        return ENOSPC
    return None
