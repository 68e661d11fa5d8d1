"""The shared tier: blobs in packs on an S3-compatible object store, shared by a fleet.

A :class:`S3Tier` is a blob source (see :mod:`artifactfs.hydrator.sources`)
and the writer of what it serves. The layout (packs per class, an index per
root tree) is :mod:`artifactfs.store.tierlayout`'s; the design and its cost
model are in ``docs/shared-tier.md``.

The client is boto3: well kept, and it reads the standard AWS configuration
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_REGION``, ``AWS_PROFILE`` and the shared config files) by itself. It is
synchronous, so every call runs in a trio worker thread (at most
:data:`_THREADS` at once); the asyncio-only clients do not run under trio.
Credentials stay inside boto3: nothing here logs or stores them, and errors
are reported by their class and S3 error code only.

Reading: a tree's index is fetched once (and looked for again at most every
:data:`_INDEX_RECHECK` seconds while absent). A blocked read fetches its few
blobs with ranged GETs; a background batch (or git asking for many blobs at
once) fetches whole packs, storing every blob of them. Each blob goes
through the blob cache, which refuses content that does not hash to its id:
such a blob is logged, counted and left to the next source.

Writing: :meth:`S3Tier.publish` uploads a tree's packs, then its index, once
the tree is fully hydrated, if no index exists yet.
"""

from __future__ import annotations

import logging
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from artifactfs.errors import CorruptObjectError, UsageError
from artifactfs.status import TierReport
from artifactfs.store.blobcache import BlobCache
from artifactfs.store.tierlayout import (
    BlobEntry,
    decode_index,
    encode_index,
    index_key,
    pack_key,
    pack_name,
    plan_packs,
    profile_key,
)

log = logging.getLogger(__name__)

Deliver = Callable[[list[tuple[str, int]]], object]

_THREADS = 4
"""boto3 calls in flight at once."""
_INDEX_RECHECK = 30.0
"""Seconds before an index found missing is looked for again (another machine may publish it)."""
_RANGED_PER_PACK = 4
"""Urgent blobs of one pack fetched by ranged GETs each; more than this, and the whole pack is one GET."""
_CLIENT_LOGGERS = ("boto3", "botocore", "s3transfer", "urllib3")
_CONNECT_TIMEOUT = 2.0
_READ_TIMEOUT = 10.0


@dataclass(frozen=True)
class TierLocation:
    """Where the tier lives: ``s3://BUCKET/PREFIX``."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> TierLocation:
        scheme, _, rest = url.partition("://")
        bucket, _, prefix = rest.partition("/")
        if scheme != "s3" or not bucket:
            raise UsageError(f"blob store must be s3://BUCKET/PREFIX, not {url!r}")
        return cls(bucket, prefix.strip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def configured_location(config_file: Path | None, flag: str | None) -> TierLocation | None:
    """The tier from ``--blob-store``, else from the config file's top-level ``blob_store``, else None."""
    if flag:
        return TierLocation.parse(flag)
    if config_file is None or not config_file.exists():
        return None
    try:
        document = tomllib.loads(config_file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"cannot read config file {config_file}: {error}") from error
    value = document.get("blob_store")
    if value is None:
        return None
    if not isinstance(value, str):
        raise UsageError(f"{config_file}: blob_store must be a string s3://BUCKET/PREFIX")
    return TierLocation.parse(value)


def _describe(error: BaseException) -> str:
    """An error without anything boto3 may have put in it besides the S3 error code (no credentials)."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code", "?")
        return f"{type(error).__name__} {code}"
    return type(error).__name__


def _missing(error: BaseException) -> bool:
    response = getattr(error, "response", None)
    return isinstance(response, dict) and response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}


class TierError(Exception):
    """The tier failed or refused; the reader goes to the origin instead."""


class S3Tier:
    """Blob source and publisher on an S3-compatible store."""

    name = "tier"

    def __init__(self, location: TierLocation, cache: BlobCache) -> None:
        self.location = location
        self._cache = cache
        self._client: Any = None
        self._client_lock = trio.Lock()
        self._threads = trio.CapacityLimiter(_THREADS)
        self._trees: dict[str, float] = {}
        """Trees whose index is wanted, with the trio time it was last looked for (0: never)."""
        self._index_lock = trio.Lock()
        self._where: dict[str, BlobEntry] = {}
        self._packs: dict[str, list[BlobEntry]] = {}
        self._pack_locks: dict[str, trio.Lock] = {}
        self.rejected = 0
        """Blobs the tier offered that did not match their ids."""
        self.published: dict[str, int] = {"packs": 0, "blobs": 0, "bytes": 0}

    # ----------------------------------------------------------------- client

    async def _run(self, what: str, call: Callable[[Any], Any], key: str) -> Any:
        """``call(client)`` in a worker thread; a missing key raises KeyError, any other failure TierError."""
        client = await self._ensure_client()
        try:
            return await trio.to_thread.run_sync(call, client, limiter=self._threads, abandon_on_cancel=True)
        except Exception as error:
            if _missing(error):
                raise KeyError(key) from None
            raise TierError(f"{what} {key} failed: {_describe(error)}") from None

    async def _ensure_client(self) -> Any:
        async with self._client_lock:
            if self._client is None:
                self._client = await trio.to_thread.run_sync(self._make_client, abandon_on_cancel=True)
            return self._client

    @staticmethod
    def _make_client() -> Any:
        # boto's own debug logs carry signed request headers (a session token among them): never
        # let them reach the daemon log, whatever --log-level says.
        for name in _CLIENT_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        import boto3  # type: ignore[import-untyped]
        import botocore.config  # type: ignore[import-untyped]

        config = botocore.config.Config(
            connect_timeout=_CONNECT_TIMEOUT,
            read_timeout=_READ_TIMEOUT,
            retries={"max_attempts": 2, "mode": "standard"},
            max_pool_connections=_THREADS * 2,
        )
        return boto3.session.Session().client("s3", config=config)

    async def _get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        arguments: dict[str, Any] = {"Bucket": self.location.bucket, "Key": key}
        if byte_range is not None:
            arguments["Range"] = f"bytes={byte_range[0]}-{byte_range[1] - 1}"

        def get(client: Any) -> bytes:
            body = client.get_object(**arguments)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        data: bytes = await self._run("GET", get, key)
        return data

    async def _put(self, key: str, data: bytes) -> None:
        bucket = self.location.bucket
        await self._run("PUT", lambda client: client.put_object(Bucket=bucket, Key=key, Body=data), key)

    async def _exists(self, key: str) -> bool:
        bucket = self.location.bucket
        try:
            await self._run("HEAD", lambda client: client.head_object(Bucket=bucket, Key=key), key)
        except KeyError:
            return False
        return True

    # ----------------------------------------------------------------- reading

    def use_tree(self, tree_oid: str) -> None:
        """Look blobs up in this tree's index from now on (fetched on first need)."""
        self._trees.setdefault(tree_oid, 0.0)

    async def _load_indexes(self) -> None:
        """Fetch the index of each wanted tree not yet found (one request at a time: later fetches wait)."""
        async with self._index_lock:
            await self._load_indexes_locked()

    async def _load_indexes_locked(self) -> None:
        now = trio.current_time()
        for tree_oid, checked in list(self._trees.items()):
            if checked == float("inf") or (checked and now - checked < _INDEX_RECHECK):
                continue
            self._trees[tree_oid] = now
            try:
                data = await self._get(index_key(self.location.prefix, tree_oid))
            except KeyError:
                continue
            try:
                entries = decode_index(data)
            except CorruptObjectError as error:
                log.warning("ignoring the tier's index of tree %s: %s", tree_oid, error)
                continue
            for oid, entry in entries.items():
                if oid not in self._where:
                    self._where[oid] = entry
                    self._packs.setdefault(entry.pack, []).append(entry)
            self._trees[tree_oid] = float("inf")
            log.info("tier index of tree %s found", tree_oid)

    async def fetch(self, oids: Sequence[str], deliver: Deliver, *, urgent: bool) -> None:
        """Store what the tier has of ``oids``: ranged GETs for few urgent blobs of a pack, else the pack."""
        await self._load_indexes()
        by_pack: dict[str, list[BlobEntry]] = {}
        for oid in oids:
            entry = self._where.get(oid)
            if entry is not None:
                by_pack.setdefault(entry.pack, []).append(entry)
        if not by_pack:
            return
        async with trio.open_nursery() as nursery:
            for name, entries in by_pack.items():
                if urgent and len(entries) <= _RANGED_PER_PACK:
                    for entry in entries:
                        nursery.start_soon(self._fetch_range, entry, deliver)
                else:
                    nursery.start_soon(self._fetch_pack, name, entries, deliver)

    async def _fetch_range(self, entry: BlobEntry, deliver: Deliver) -> None:
        key = pack_key(self.location.prefix, entry.pack)
        try:
            # An empty range is not a valid Range header; an empty blob needs no request.
            data = await self._get(key, (entry.offset, entry.offset + entry.length)) if entry.length else b""
        except KeyError:
            log.warning("the tier lacks %s, which its index names", key)
            return
        deliver(self._stored(self._store([(entry, data)])))

    async def _fetch_pack(self, name: str, wanted: Sequence[BlobEntry], deliver: Deliver) -> None:
        """Fetch a whole pack (once, however many lanes want it) and store every blob it holds."""
        lock = self._pack_locks.setdefault(name, trio.Lock())
        async with lock:
            entries = [entry for entry in self._packs[name] if entry.oid in self._where]
            missing = await trio.to_thread.run_sync(
                lambda: [entry for entry in entries if not self._cache.contains(entry.oid)]
            )
            if not missing:  # another lane stored this pack meanwhile
                deliver([(entry.oid, entry.length) for entry in wanted if entry.oid in self._where])
                return
            key = pack_key(self.location.prefix, name)
            try:
                data = await self._get(key)
            except KeyError:
                log.warning("the tier lacks %s, which its index names", key)
                return
            pieces = [(entry, data[entry.offset : entry.offset + entry.length]) for entry in missing]
            deliver(self._stored(await trio.to_thread.run_sync(self._store, pieces)))

    def _stored(self, outcome: tuple[list[tuple[str, int]], list[str]]) -> list[tuple[str, int]]:
        """Forget the damaged blobs of a store (they are never asked of the tier again); return the stored."""
        stored, damaged = outcome
        for oid in damaged:
            self._where.pop(oid, None)
        self.rejected += len(damaged)
        return stored

    def _store(self, pieces: Sequence[tuple[BlobEntry, bytes]]) -> tuple[list[tuple[str, int]], list[str]]:
        """Store each piece in the cache, which checks it against its id (may run in a worker thread).

        Returns the stored (oid, size) and the ids of pieces that did not match.
        """
        stored: list[tuple[str, int]] = []
        damaged: list[str] = []
        for entry, data in pieces:
            try:
                self._cache.store_bytes(entry.oid, data)
            except CorruptObjectError as error:
                damaged.append(entry.oid)
                log.warning(
                    "the tier's copy of blob %s is damaged (%s); taking it from the origin", entry.oid, error
                )
                continue
            stored.append((entry.oid, len(data)))
        return stored, damaged

    # ----------------------------------------------------------------- writing

    async def publish(self, tree_oid: str, groups: Sequence[Sequence[str]]) -> bool:
        """Upload the blobs of ``tree_oid`` (``groups``: blob ids per class, best first), packs then index.

        Does nothing if the tree's index exists (another machine published
        it). Returns whether it published. Raises :class:`TierError` when the
        tier fails, which the caller logs; a partial upload leaves packs that
        no index names, which readers never see.
        """
        key = index_key(self.location.prefix, tree_oid)
        if await self._exists(key):
            return False
        sized = await trio.to_thread.run_sync(
            lambda: [
                [(oid, size) for oid in group if (size := self._cache.size(oid)) is not None]
                for group in groups
            ]
        )
        started = time.monotonic()
        packs: list[tuple[str, Sequence[tuple[str, int]]]] = []
        written = 0
        for plan in plan_packs(sized):
            data = await trio.to_thread.run_sync(self._assemble, plan.blobs)
            name = pack_name(data)
            await self._put(pack_key(self.location.prefix, name), data)
            packs.append((name, plan.blobs))
            written += len(data)
        await self._put(key, encode_index(tree_oid, packs))
        self.published["packs"] += len(packs)  # counted once the index makes them visible
        self.published["blobs"] += sum(len(blobs) for _, blobs in packs)
        self.published["bytes"] += written
        log.info(
            "published tree %s to the tier %s: %d blobs in %d packs, %.1fs",
            tree_oid,
            self.location,
            sum(len(blobs) for _, blobs in packs),
            len(packs),
            time.monotonic() - started,
        )
        return True

    def _assemble(self, blobs: Sequence[tuple[str, int]]) -> bytes:
        parts = []
        for oid, size in blobs:
            data = self._cache.read_bytes(oid)
            if len(data) != size:
                raise CorruptObjectError(f"blob {oid} changed size in the cache")
            parts.append(data)
        return b"".join(parts)

    # ----------------------------------------------------------------- profiles

    async def get_profile(self, repository: str) -> bytes | None:
        try:
            return await self._get(profile_key(self.location.prefix, repository))
        except KeyError:
            return None

    async def put_profile(self, repository: str, data: bytes) -> None:
        await self._put(profile_key(self.location.prefix, repository), data)

    def status(self) -> TierReport:
        return TierReport(
            location=str(self.location),
            indexes_found=sum(1 for checked in self._trees.values() if checked == float("inf")),
            indexed_blobs=len(self._where),
            rejected_blobs=self.rejected,
            published=dict(self.published),
        )
