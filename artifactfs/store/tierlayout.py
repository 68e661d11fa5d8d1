"""The shared tier's object layout: blob packs, the index per root tree, and their keys.

Pure encoding, no I/O (see ``docs/shared-tier.md`` for the design and its
cost model). Under the tier's prefix:

* ``packs/<sha256>.blobs``: blob contents, concatenated raw, one priority
  class per pack, about :data:`PACK_TARGET` bytes each; named by the SHA-256
  of their bytes, so two machines writing the same pack write the same object.
* ``trees/<root tree oid>.json``: the index of one tree: which pack holds
  each blob, at which offset and length. Written only after all its packs, so
  a reader that finds an index finds every pack it names; packs no index
  names are never read.
* ``profiles/<repository key>.json``: learned prefetch profiles.

Nothing read from the tier is trusted: every blob is checked against its id
by the blob cache before it is stored or served.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from artifactfs.errors import CorruptObjectError

PACK_TARGET = 8 << 20
"""Bytes per pack: one GET of this size costs about what a few small GETs cost in latency."""
INDEX_VERSION = 1
_OID = re.compile(r"[0-9a-f]{40}")
_PACK_NAME = re.compile(r"[0-9a-f]{64}\.blobs")


@dataclass(frozen=True)
class BlobEntry:
    oid: str
    pack: str
    offset: int
    length: int


@dataclass(frozen=True)
class PackPlan:
    """One pack to assemble: blob ids in order, with their sizes."""

    blobs: tuple[tuple[str, int], ...]

    @property
    def size(self) -> int:
        return sum(length for _, length in self.blobs)


def plan_packs(groups: Iterable[Sequence[tuple[str, int]]], target: int = PACK_TARGET) -> list[PackPlan]:
    """Cut each group of (oid, size), in order, into packs of about ``target`` bytes; none spans groups."""
    plans: list[PackPlan] = []
    for group in groups:
        current: list[tuple[str, int]] = []
        total = 0
        for oid, size in group:
            if current and total + size > target:
                plans.append(PackPlan(tuple(current)))
                current, total = [], 0
            current.append((oid, size))
            total += size
        if current:
            plans.append(PackPlan(tuple(current)))
    return plans


def pack_name(data: bytes) -> str:
    return f"{hashlib.sha256(data).hexdigest()}.blobs"


def pack_key(prefix: str, name: str) -> str:
    return _join(prefix, "packs", name)


def index_key(prefix: str, tree_oid: str) -> str:
    return _join(prefix, "trees", f"{tree_oid}.json")


def profile_key(prefix: str, repository: str) -> str:
    return _join(prefix, "profiles", f"{repository}.json")


def _join(prefix: str, *parts: str) -> str:
    return "/".join(part for part in (prefix.strip("/"), *parts) if part)


def encode_index(tree_oid: str, packs: Sequence[tuple[str, Sequence[tuple[str, int]]]]) -> bytes:
    """The index of ``tree_oid``: for each (pack name, [(oid, size), ...]) in pack order."""
    return json.dumps(
        {
            "version": INDEX_VERSION,
            "tree": tree_oid,
            "packs": [{"name": name, "blobs": [[oid, size] for oid, size in blobs]} for name, blobs in packs],
        },
        separators=(",", ":"),
    ).encode()


def decode_index(data: bytes) -> dict[str, BlobEntry]:
    """Where each blob of an index lives; raises CorruptObjectError for anything malformed."""
    try:
        document = json.loads(data)
        if document["version"] != INDEX_VERSION:
            raise CorruptObjectError(f"tier index version {document['version']!r} is not supported")
        return dict(_entries(document["packs"]))
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptObjectError(f"malformed tier index: {error}") from None


def _entries(packs: list[dict[str, object]]) -> Iterator[tuple[str, BlobEntry]]:
    for pack in packs:
        name = pack["name"]
        blobs = pack["blobs"]
        if not isinstance(name, str) or not _PACK_NAME.fullmatch(name) or not isinstance(blobs, list):
            raise ValueError(f"bad pack entry {name!r}")
        offset = 0
        for oid, size in blobs:
            if not isinstance(oid, str) or not _OID.fullmatch(oid) or not isinstance(size, int) or size < 0:
                raise ValueError(f"bad blob entry {oid!r}")
            yield oid, BlobEntry(oid, name, offset, size)
            offset += size
