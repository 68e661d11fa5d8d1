"""Git object rules: the object format, object ids, type numbers and the hashes git computes.

Every module that names an object id, hashes an object or checks a pack or
index trailer asks this one. ArtifactFS works with SHA-1 repositories only:
tree parsing, the blob cache and the pack parser assume 20-byte ids, so a
remote that announces another object format is refused when it is first
contacted (see :func:`check_object_format`) instead of failing later.

This module sits at the bottom of the layering with :mod:`artifactfs.errors`:
it imports nothing else from ArtifactFS.
"""

from __future__ import annotations

import enum
import hashlib
import re

from dulwich.objects import Commit

from artifactfs.errors import UnsupportedObjectFormatError

OBJECT_FORMAT = "sha1"
"""The object format ArtifactFS speaks, as git's ``object-format`` capability names it."""
OID_SIZE = 20
"""Bytes in a raw object id; also the length of a pack's and an index's trailing checksum."""
OID_HEX_SIZE = 2 * OID_SIZE
OID_PATTERN = f"[0-9a-f]{{{OID_HEX_SIZE}}}"
"""A full object id in lower-case hex, for building larger patterns."""
_OID_RE = re.compile(OID_PATTERN)
_ABBREVIATED_OID_RE = re.compile(f"[0-9a-f]{{4,{OID_HEX_SIZE - 1}}}")


class ObjectType(enum.IntEnum):
    """git's object types, numbered as in pack entry headers."""

    COMMIT = 1
    TREE = 2
    BLOB = 3
    TAG = 4

    @property
    def type_name(self) -> str:
        """The name in an object's header (``b"blob 12\\0"``)."""
        return self.name.lower()


OFS_DELTA = 6
"""Pack entry type of a delta whose base is named by its offset in the same pack."""
REF_DELTA = 7
"""Pack entry type of a delta whose base is named by its object id."""
TYPE_NAMES: dict[int, str] = {kind.value: kind.type_name for kind in ObjectType}
"""Type name by pack entry type number, for the four whole-object types."""
TYPE_NUMBERS: dict[str, int] = {name: number for number, name in TYPE_NAMES.items()}


def is_oid(text: str) -> bool:
    """Whether ``text`` is a full object id in lower-case hex."""
    return _OID_RE.fullmatch(text) is not None


def is_abbreviated_oid(text: str) -> bool:
    """Whether ``text`` is a shortened object id as git accepts one: 4 or more hex digits, not all."""
    return _ABBREVIATED_OID_RE.fullmatch(text) is not None


def check_oid(oid: str) -> None:
    """Raise ValueError unless ``oid`` is a full object id in lower-case hex."""
    if not is_oid(oid):
        raise ValueError(f"not a hex SHA-1 object id: {oid!r}")


def check_object_format(object_format: str, where: str) -> None:
    """Refuse a remote whose ``object-format`` capability is not the one ArtifactFS supports."""
    if object_format != OBJECT_FORMAT:
        shown = object_format if re.fullmatch(r"[a-z0-9-]{1,20}", object_format) else "an unknown format"
        raise UnsupportedObjectFormatError(
            f"{where}: the repository uses {shown} object ids; ArtifactFS supports {OBJECT_FORMAT} only"
        )


def object_header(type_name: str, size: int) -> bytes:
    """The header git hashes before an object's content: ``<type> <size>\\0``."""
    return b"%s %d\x00" % (type_name.encode("ascii"), size)


def blob_header(size: int) -> bytes:
    return object_header("blob", size)


def object_hasher(type_name: str, size: int) -> hashlib._Hash:
    """A hash already fed the header: feed it the ``size`` content bytes to get the object id."""
    return hashlib.sha1(object_header(type_name, size))


def object_id(type_name: str, content: bytes) -> bytes:
    """The raw object id of a whole object."""
    hasher = object_hasher(type_name, len(content))
    hasher.update(content)
    return hasher.digest()


def blob_id(content: bytes) -> str:
    """The hex object id of a blob with this content."""
    return object_id("blob", content).hex()


def checksum_hasher() -> hashlib._Hash:
    """An empty hash of the kind that ends packs and index files (and hashes loose objects)."""
    return hashlib.sha1()


def checksum(data: bytes | bytearray) -> bytes:
    """The trailing checksum git writes after a pack's or an index file's ``data``."""
    return hashlib.sha1(data).digest()


def commit_tree(raw_commit: bytes) -> str:
    """The root tree id named by a commit's raw content."""
    commit = Commit.from_raw_string(ObjectType.COMMIT, raw_commit)
    assert isinstance(commit, Commit)
    tree: bytes = commit.tree
    return tree.decode("ascii")
