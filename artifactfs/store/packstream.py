"""Incremental parser for Git pack streams (gitformat-pack(5), versions 2 and 3).

This module owns turning pack bytes that arrive in arbitrary chunks into fully
resolved, hashed objects as soon as each one is complete: inflating entries,
resolving OFS_DELTA and REF_DELTA entries (including deltas whose base comes
later in the stream or lives outside it), spooling large objects to disk, and
checking the pack's trailing SHA-1. It keeps only a bounded LRU of object
contents for use as delta bases; everything else is a small per-object record.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto
from pathlib import Path
from typing import BinaryIO

from dulwich.errors import ApplyDeltaError
from dulwich.pack import apply_delta

from artifactfs.errors import CorruptObjectError, TransientRemoteError
from artifactfs.objects import (
    OFS_DELTA,
    OID_SIZE,
    REF_DELTA,
    TYPE_NAMES,
    checksum_hasher,
    object_hasher,
    object_id,
)


class PackCorruptError(CorruptObjectError):
    """The pack stream is malformed, or an object in it does not check out."""


class MissingDeltaBaseError(PackCorruptError):
    """A delta's base is not in the pack, not in the base cache, and not available externally."""


class TruncatedPackError(TransientRemoteError):
    """The stream ended before the whole pack arrived; fetching again may succeed."""


_HEADER_SIZE = 12
# Largest shift accepted while decoding a variable-length integer; anything
# longer is garbage and would otherwise make us buffer input without bound.
_MAX_VARINT_SHIFT = 70
# Input is buffered at most this much at a time, whatever the caller's chunk size.
_FEED_SLICE = 1 << 20
# Compressed bytes handed to zlib per call (bounds the copy zlib makes of leftovers).
_INFLATE_INPUT = 1 << 18
# Inflated bytes produced per zlib call.
_INFLATE_OUTPUT = 1 << 20


@dataclass(frozen=True)
class PackObject:
    """One resolved object; exactly one of ``data`` and ``spool_path`` is set."""

    oid: str
    type_name: str
    size: int
    data: bytes | None
    spool_path: Path | None


@dataclass(frozen=True)
class _WaitingDelta:
    """A delta whose base has not been resolved yet."""

    offset: int
    delta: bytes


@dataclass
class _Entry:
    """The pack entry whose compressed body is being read."""

    offset: int
    kind: int
    size: int
    base_offset: int | None
    base_oid: bytes | None
    inflater: zlib._Decompress
    hasher: hashlib._Hash | None  # set for non-delta entries, hashed while inflating
    spool: BinaryIO | None = None
    spool_path: Path | None = None
    pieces: list[bytes] = field(default_factory=list)
    produced: int = 0


class _State(Enum):
    HEADER = auto()
    ENTRY = auto()
    BODY = auto()
    TRAILER = auto()
    DONE = auto()


def _delta_sizes(offset: int, delta: bytes) -> tuple[int, int]:
    """Source and target sizes from a delta's header."""
    sizes: list[int] = []
    pos = 0
    for _ in range(2):
        value = shift = 0
        while True:
            if pos >= len(delta) or shift > _MAX_VARINT_SHIFT:
                raise PackCorruptError(f"delta at offset {offset} has a malformed header")
            byte = delta[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        sizes.append(value)
    return sizes[0], sizes[1]


def _apply(offset: int, base: bytes, delta: bytes) -> bytes:
    source_size, target_size = _delta_sizes(offset, delta)
    if source_size != len(base):
        raise PackCorruptError(
            f"delta at offset {offset} expects a {source_size}-byte base, but its base has {len(base)} bytes"
        )
    try:
        # The compiled applier allocates the declared target size up front, so a
        # hostile size surfaces as MemoryError.
        result = b"".join(apply_delta(base, delta))
    except (ApplyDeltaError, MemoryError) as exc:
        raise PackCorruptError(f"delta at offset {offset} does not apply: {exc}") from exc
    if len(result) != target_size:
        raise PackCorruptError(
            f"delta at offset {offset} produced {len(result)} bytes instead of {target_size}"
        )
    return result


class PackStreamParser:
    """Feed pack bytes in; get resolved objects out as soon as each is complete.

    ``external_base(oid)`` supplies the raw content of an object that is not
    (or no longer) available in this pack: the base of a thin pack's delta, or
    a base evicted from the ``base_cache_bytes`` LRU. Its answer is checked
    against the oid; for objects never seen in this pack the type is inferred
    from which ``"<type> <size>\\0"`` header makes the content hash to the oid.

    A REF_DELTA whose base is unknown is parked until the base turns up later
    in the stream; ``finish()`` makes one last ``external_base`` attempt for
    whatever is still parked. Once a method has raised, discard the parser.
    ``finish()`` must be called at the end of the stream even when giving up
    early: it deletes the partially written spool file, if any.
    """

    def __init__(
        self,
        *,
        spool_dir: Path | None = None,
        spool_threshold: int = 16 << 20,
        base_cache_bytes: int = 64 << 20,
        external_base: Callable[[str], bytes | None] | None = None,
    ) -> None:
        self.objects_expected: int | None = None
        self.objects_done = 0
        self._spool_dir = spool_dir
        self._spool_threshold = spool_threshold
        self._cache_limit = base_cache_bytes
        self._external_base = external_base
        self._state = _State.HEADER
        self._buf = bytearray()
        self._pos = 0
        self._buf_offset = 0  # stream offset of self._buf[0]
        self._pack_hash = checksum_hasher()
        self._held = b""  # the latest bytes fed: possibly the trailer, so not hashed yet
        self._entries_read = 0
        self._entry: _Entry | None = None
        self._records: dict[int, tuple[bytes, str]] = {}  # offset -> (oid, type) once resolved
        self._offset_of: dict[bytes, int] = {}
        self._spooled: dict[bytes, Path] = {}
        self._cache: OrderedDict[bytes, tuple[str, bytes]] = OrderedDict()
        self._cache_bytes = 0
        self._deferred: set[int] = set()  # offsets of deltas waiting for their base
        self._waiting_on_offset: dict[int, list[_WaitingDelta]] = {}
        self._waiting_on_oid: dict[bytes, list[_WaitingDelta]] = {}

    def feed(self, chunk: bytes) -> list[PackObject]:
        """Consume ``chunk``; return the objects it completed, in completion order."""
        out: list[PackObject] = []
        view = memoryview(chunk)
        try:
            for start in range(0, len(view), _FEED_SLICE):
                piece = view[start : start + _FEED_SLICE]
                self._hash_input(piece)
                self._buf += piece
                self._advance(out)
                if self._pos:
                    del self._buf[: self._pos]
                    self._buf_offset += self._pos
                    self._pos = 0
        except BaseException:
            self._drop_spool()
            for obj in out:  # completed, but never handed to the caller
                if obj.spool_path is not None:
                    obj.spool_path.unlink(missing_ok=True)
            raise
        return out

    def finish(self) -> list[PackObject]:
        """Declare the end of the stream; return deltas resolved by a last external lookup.

        The trailer checksum has been verified by ``feed`` as soon as it
        arrived; here a stream that stopped short raises TruncatedPackError.
        """
        if self._state is not _State.DONE:
            self._drop_spool()
            raise TruncatedPackError(self._truncation_message())
        out: list[PackObject] = []
        for oid in list(self._waiting_on_oid):
            if oid not in self._waiting_on_oid:
                continue  # resolved meanwhile by another external base's deltas
            found = self._from_external(oid, None)
            if found is None:
                continue
            type_name, base = found
            for waiting in self._waiting_on_oid.pop(oid):
                self._resolve_delta(waiting.offset, type_name, base, waiting.delta, out)
        if self._waiting_on_oid:
            missing = ", ".join(oid.hex() for oid in list(self._waiting_on_oid)[:3])
            more = len(self._waiting_on_oid) - 3
            raise MissingDeltaBaseError(
                f"pack has {len(self._deferred)} deltas whose base is unavailable "
                f"(e.g. {missing}{f' and {more} more' if more > 0 else ''})"
            )
        return out

    def _truncation_message(self) -> str:
        if self.objects_expected is None:
            return "pack stream ended before its header"
        if self._state is _State.TRAILER:
            return "pack stream ended before its trailing checksum"
        return f"pack stream ended after {self._entries_read} of {self.objects_expected} objects"

    def _hash_input(self, piece: memoryview) -> None:
        """Hash everything but the last 20 bytes seen, which may be the trailer."""
        if len(piece) >= OID_SIZE:
            self._pack_hash.update(self._held)
            self._pack_hash.update(piece[:-OID_SIZE])
            self._held = bytes(piece[-OID_SIZE:])
            return
        joined = self._held + piece
        cut = len(joined) - OID_SIZE
        if cut > 0:
            self._pack_hash.update(joined[:cut])
            joined = joined[cut:]
        self._held = joined

    def _advance(self, out: list[PackObject]) -> None:
        progressing = True
        while progressing:
            state = self._state
            if state is _State.HEADER:
                progressing = self._read_pack_header()
            elif state is _State.ENTRY:
                progressing = self._read_entry_header()
            elif state is _State.BODY:
                progressing = self._inflate(out)
            elif state is _State.TRAILER:
                progressing = self._check_trailer()
            else:
                if self._pos < len(self._buf):
                    raise PackCorruptError("pack stream has data after its trailing checksum")
                progressing = False

    def _read_pack_header(self) -> bool:
        if len(self._buf) - self._pos < _HEADER_SIZE:
            return False
        header = bytes(self._buf[self._pos : self._pos + _HEADER_SIZE])
        if header[:4] != b"PACK":
            raise PackCorruptError(f"not a Git pack: bad signature {header[:4]!r}")
        version = int.from_bytes(header[4:8], "big")
        if version not in (2, 3):
            raise PackCorruptError(f"unsupported pack version {version}")
        self.objects_expected = int.from_bytes(header[8:12], "big")
        self._pos += _HEADER_SIZE
        self._state = _State.ENTRY if self.objects_expected else _State.TRAILER
        return True

    def _read_entry_header(self) -> bool:
        """Parse a type/size header (and delta base reference); False if more input is needed."""
        buf = self._buf
        end = len(buf)
        pos = self._pos
        offset = self._buf_offset + pos
        if pos >= end:
            return False
        byte = buf[pos]
        pos += 1
        kind = (byte >> 4) & 0x07
        size = byte & 0x0F
        shift = 4
        while byte & 0x80:
            if pos >= end:
                return False
            if shift > _MAX_VARINT_SHIFT:
                raise PackCorruptError(f"object at offset {offset} has a malformed size")
            byte = buf[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
        base_offset: int | None = None
        base_oid: bytes | None = None
        if kind == OFS_DELTA:
            if pos >= end:
                return False
            byte = buf[pos]
            pos += 1
            distance = byte & 0x7F
            while byte & 0x80:
                if pos >= end:
                    return False
                if distance >= offset:
                    raise PackCorruptError(f"delta at offset {offset} has a malformed base offset")
                byte = buf[pos]
                pos += 1
                distance = ((distance + 1) << 7) | (byte & 0x7F)
            base_offset = offset - distance
            known = base_offset in self._records or base_offset in self._deferred
            if distance == 0 or not known:
                raise PackCorruptError(
                    f"delta at offset {offset} refers to offset {base_offset}, where no earlier object starts"
                )
        elif kind == REF_DELTA:
            if end - pos < OID_SIZE:
                return False
            base_oid = bytes(buf[pos : pos + OID_SIZE])
            pos += OID_SIZE
        elif kind not in TYPE_NAMES:
            raise PackCorruptError(f"object at offset {offset} has invalid type {kind}")
        self._pos = pos
        self._entry = self._start_entry(offset, kind, size, base_offset, base_oid)
        self._state = _State.BODY
        return True

    def _start_entry(
        self, offset: int, kind: int, size: int, base_offset: int | None, base_oid: bytes | None
    ) -> _Entry:
        type_name = TYPE_NAMES.get(kind)
        hasher = None
        if type_name is not None:
            hasher = object_hasher(type_name, size)
        entry = _Entry(offset, kind, size, base_offset, base_oid, zlib.decompressobj(), hasher)
        if hasher is not None and self._spool_dir is not None and size > self._spool_threshold:
            fd, name = tempfile.mkstemp(prefix="pack-", suffix=".spool", dir=self._spool_dir)
            entry.spool = os.fdopen(fd, "wb")
            entry.spool_path = Path(name)
        return entry

    def _inflate(self, out: list[PackObject]) -> bool:
        """Inflate as much of the current entry as the buffer allows; True once it is complete."""
        entry = self._entry
        assert entry is not None
        inflater = entry.inflater
        while self._pos < len(self._buf):
            remaining = entry.size - entry.produced
            # One byte beyond the declared size is enough to detect an oversized body.
            limit = min(remaining + 1, _INFLATE_OUTPUT)
            # Compressed data is rarely much larger than its output: handing zlib
            # little more than that keeps its copy of the leftover input small.
            end = min(len(self._buf), self._pos + min(_INFLATE_INPUT, remaining + 1024))
            with memoryview(self._buf) as whole, whole[self._pos : end] as part:
                try:
                    piece = inflater.decompress(part, limit)
                except zlib.error as exc:
                    raise PackCorruptError(
                        f"object at offset {entry.offset} has corrupt compressed data ({exc})"
                    ) from exc
                # When the stream ends exactly as the output limit fills, CPython reports the
                # leftover input in both unconsumed_tail and unused_data: count it once.
                leftover = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
                self._pos += len(part) - len(leftover)
            entry.produced += len(piece)
            if entry.produced > entry.size:
                raise PackCorruptError(
                    f"object at offset {entry.offset} inflates to more than its declared {entry.size} bytes"
                )
            if entry.hasher is not None:
                entry.hasher.update(piece)
            if entry.spool is not None:
                entry.spool.write(piece)
            else:
                entry.pieces.append(piece)
            if inflater.eof:
                if entry.produced != entry.size:
                    raise PackCorruptError(
                        f"object at offset {entry.offset} inflates to {entry.produced} bytes, "
                        f"but its header says {entry.size}"
                    )
                self._entry = None
                self._entries_read += 1
                self._state = _State.TRAILER if self._entries_read == self.objects_expected else _State.ENTRY
                self._finish_entry(entry, out)
                return True
        return False

    def _finish_entry(self, entry: _Entry, out: list[PackObject]) -> None:
        type_name = TYPE_NAMES.get(entry.kind)
        if type_name is not None:
            assert entry.hasher is not None
            oid = entry.hasher.digest()
            if entry.spool is not None:
                entry.spool.close()
                path = entry.spool_path
                self._complete(entry.offset, oid, type_name, None, path, entry.size, out)
            else:
                data = b"".join(entry.pieces)
                self._complete(entry.offset, oid, type_name, data, None, entry.size, out)
            return
        delta = b"".join(entry.pieces)
        if entry.base_offset is not None:
            if entry.base_offset in self._deferred:
                self._deferred.add(entry.offset)
                waiting = _WaitingDelta(entry.offset, delta)
                self._waiting_on_offset.setdefault(entry.base_offset, []).append(waiting)
                return
            base_oid = self._records[entry.base_offset][0]
        else:
            assert entry.base_oid is not None
            base_oid = entry.base_oid
        found = self._lookup_base(base_oid)
        if found is None:
            if base_oid in self._offset_of:
                raise MissingDeltaBaseError(
                    f"delta base {base_oid.hex()} was evicted from the base cache and "
                    "external_base cannot supply it; raise base_cache_bytes"
                )
            self._deferred.add(entry.offset)
            self._waiting_on_oid.setdefault(base_oid, []).append(_WaitingDelta(entry.offset, delta))
            return
        type_name, base = found
        self._resolve_delta(entry.offset, type_name, base, delta, out)

    def _resolve_delta(
        self, offset: int, type_name: str, base: bytes, delta: bytes, out: list[PackObject]
    ) -> None:
        data = _apply(offset, base, delta)
        self._complete(offset, object_id(type_name, data), type_name, data, None, len(data), out)

    def _complete(
        self,
        offset: int,
        oid: bytes,
        type_name: str,
        data: bytes | None,
        spool_path: Path | None,
        size: int,
        out: list[PackObject],
    ) -> None:
        """Record and hand out a resolved object, then resolve every delta that waited for it."""
        work = [(offset, oid, type_name, data, spool_path, size)]
        while work:
            offset, oid, type_name, data, spool_path, size = work.pop()
            self._records[offset] = (oid, type_name)
            self._offset_of.setdefault(oid, offset)
            self._deferred.discard(offset)
            if spool_path is not None:
                self._spooled[oid] = spool_path
            elif data is not None:
                self._remember(oid, type_name, data)
            self.objects_done += 1
            out.append(PackObject(oid.hex(), type_name, size, data, spool_path))
            waiting = self._waiting_on_offset.pop(offset, []) + self._waiting_on_oid.pop(oid, [])
            if not waiting:
                continue
            if data is None:
                found = self._lookup_base(oid)
                if found is None:
                    raise MissingDeltaBaseError(
                        f"spool file of delta base {oid.hex()} vanished and external_base cannot supply it"
                    )
                data = found[1]
            for delta in waiting:
                result = _apply(delta.offset, data, delta.delta)
                result_oid = object_id(type_name, result)
                work.append((delta.offset, result_oid, type_name, result, None, len(result)))

    def _check_trailer(self) -> bool:
        available = len(self._buf) - self._pos
        if available < OID_SIZE:
            return False
        if available > OID_SIZE:
            raise PackCorruptError("pack stream has data after its trailing checksum")
        expected = bytes(self._buf[self._pos :])
        actual = self._pack_hash.digest()
        if expected != actual:
            raise PackCorruptError(
                f"pack checksum mismatch: trailer says {expected.hex()}, data hashes to {actual.hex()}"
            )
        self._pos = len(self._buf)
        self._state = _State.DONE
        return True

    def _lookup_base(self, oid: bytes) -> tuple[str, bytes] | None:
        """Content of an object from the base cache, its spool file, or ``external_base``."""
        cached = self._cache.get(oid)
        if cached is not None:
            self._cache.move_to_end(oid)
            return cached
        offset = self._offset_of.get(oid)
        known_type = None if offset is None else self._records[offset][1]
        found: tuple[str, bytes] | None = None
        spool_path = self._spooled.get(oid)
        if spool_path is not None and known_type is not None:
            try:
                found = self._checked(oid, (known_type,), spool_path.read_bytes(), "spool file")
            except FileNotFoundError:
                found = None  # the caller has already adopted the file elsewhere
        if found is None:
            found = self._from_external(oid, known_type)
        if found is not None:
            self._remember(oid, *found)
        return found

    def _from_external(self, oid: bytes, known_type: str | None) -> tuple[str, bytes] | None:
        if self._external_base is None:
            return None
        data = self._external_base(oid.hex())
        if data is None:
            return None
        types = (known_type,) if known_type is not None else ("blob", "tree", "commit", "tag")
        return self._checked(oid, types, data, "external_base")

    @staticmethod
    def _checked(oid: bytes, types: tuple[str, ...], data: bytes, source: str) -> tuple[str, bytes]:
        for type_name in types:
            if object_id(type_name, data) == oid:
                return type_name, data
        raise PackCorruptError(f"{source} content for delta base {oid.hex()} does not hash to it")

    def _remember(self, oid: bytes, type_name: str, data: bytes) -> None:
        """Keep ``data`` as a possible delta base, evicting least recently used bases."""
        if len(data) > self._cache_limit:
            return
        if oid in self._cache:
            self._cache.move_to_end(oid)
            return
        self._cache[oid] = (type_name, data)
        self._cache_bytes += len(data)
        while self._cache_bytes > self._cache_limit:
            _, (_, evicted) = self._cache.popitem(last=False)
            self._cache_bytes -= len(evicted)

    def _drop_spool(self) -> None:
        """Delete the spool file of an entry that will never complete."""
        entry = self._entry
        if entry is not None and entry.spool is not None and entry.spool_path is not None:
            entry.spool.close()
            entry.spool_path.unlink(missing_ok=True)
            entry.spool = None
