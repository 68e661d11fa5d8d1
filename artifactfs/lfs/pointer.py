"""The Git LFS pointer file format (spec v1): parsing, strictly.

A pointer is at most :data:`MAX_POINTER_SIZE` bytes of ``key value`` lines,
each ending in ``\\n``: ``version`` first, then the other keys in sorted
order, with exactly one ``oid sha256:<64 lowercase hex>`` and one decimal
``size``. Anything else is not a pointer and is shown as it is. Pointers with
``ext-`` keys name content that a local extension program must transform;
ArtifactFS cannot do that, so it shows them as they are too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_POINTER_SIZE = 1024
"""git-lfs does not read a blob of this size or more as a pointer."""

_VERSIONS = (b"https://git-lfs.github.com/spec/v1", b"https://hawser.github.com/spec/v1")
_OID = re.compile(rb"sha256:([0-9a-f]{64})")
_SIZE = re.compile(rb"[0-9]{1,19}")
_KEY = re.compile(rb"[a-z0-9.-]+")


@dataclass(frozen=True)
class LfsPointer:
    oid: str
    """Hex sha256 of the object's content."""
    size: int


def parse_pointer(data: bytes) -> LfsPointer | None:
    """The pointer ``data`` is, or ``None`` if it is not exactly a pointer."""
    if not data or len(data) >= MAX_POINTER_SIZE or not data.endswith(b"\n"):
        return None
    lines = data[:-1].split(b"\n")
    fields: list[tuple[bytes, bytes]] = []
    for line in lines:
        key, space, value = line.partition(b" ")
        if not space or not value or not _KEY.fullmatch(key):
            return None
        fields.append((key, value))
    if fields[0][0] != b"version" or fields[0][1] not in _VERSIONS:
        return None
    keys = [key for key, _ in fields[1:]]
    if keys != sorted(set(keys)) or set(keys) != {b"oid", b"size"}:
        return None
    values = dict(fields[1:])
    oid = _OID.fullmatch(values[b"oid"])
    if oid is None or not _SIZE.fullmatch(values[b"size"]):
        return None
    return LfsPointer(oid.group(1).decode(), int(values[b"size"]))
