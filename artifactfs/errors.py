"""Errors that reach the user.

Every failure the CLI reports is an :class:`ArtifactFSError`; its message is a
single line that names the problem (and never contains credentials). Lower
layers raise the most specific subclass so callers can decide what is
retryable.
"""

from __future__ import annotations

import errno

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""A full filesystem, or a full quota: the disk's problem, not the remote's nor the caller's."""


class ArtifactFSError(Exception):
    """Base class: ``str(error)`` is the one-line message shown to the user."""


class UsageError(ArtifactFSError):
    """The command line or a configuration value is wrong."""


class MountpointError(ArtifactFSError):
    """The mount directory is missing, not empty, or already mounted."""


class FuseUnavailableError(ArtifactFSError):
    """``/dev/fuse`` or ``fusermount3`` is missing."""


class RemoteError(ArtifactFSError):
    """Talking to the Git remote failed."""


class InvalidRemoteError(RemoteError):
    """The remote URL or path is malformed or not supported."""


class RemoteUnreachableError(RemoteError):
    """The remote could not be contacted at all (DNS, refused, no such path)."""


class AuthenticationError(RemoteError):
    """The remote rejected our credentials, or asked for some we do not have."""


class RemoteNotFoundError(RemoteError):
    """The remote answered, but there is no Git repository there."""


class UnknownRefError(RemoteError):
    """The requested branch, tag or commit does not exist on the remote."""


class ProtocolError(RemoteError):
    """The remote sent something that is not valid Git protocol v2."""


class UnsupportedObjectFormatError(ProtocolError):
    """The repository uses an object format (such as SHA-256) that ArtifactFS does not support."""


class TransientRemoteError(RemoteError):
    """A failure worth retrying: connection reset, 5xx, truncated response."""


class MissingObjectError(RemoteError):
    """The remote does not have a wanted object; ``oid`` names it when the remote said which."""

    def __init__(self, oid: str | None, message: str | None = None) -> None:
        super().__init__(message or f"remote does not have object {oid}")
        self.oid = oid


class CorruptObjectError(ArtifactFSError):
    """Object data did not hash to its object id, or a pack was malformed."""


class HostileTreeError(ArtifactFSError):
    """A tree contains an entry that must never be materialised."""
