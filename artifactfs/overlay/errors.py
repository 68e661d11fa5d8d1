"""Errors raised by overlay operations, each carrying the errno the FUSE layer returns."""

from __future__ import annotations

from errno import EBUSY, EEXIST, EINVAL, EISDIR, ENOENT, ENOTDIR, ENOTEMPTY, EPERM
from typing import ClassVar

from artifactfs.errors import ArtifactFSError


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


class ReservedName(OverlayError):
    """A name Git would treat as its own directory (``.git`` in any spelling)."""

    errno = EPERM


class InvalidOperation(OverlayError):
    """The request contradicts itself, e.g. moving a directory into its own subtree."""

    errno = EINVAL


class ReadOnlyEntry(OverlayError):
    """The entry cannot be changed, e.g. the inside of a submodule placeholder."""

    errno = EPERM


class ResourceBusy(OverlayError):
    """The root directory cannot be removed or renamed."""

    errno = EBUSY
