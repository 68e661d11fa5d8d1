"""Where blobs come from: the :class:`BlobSource` protocol, its local sources, and the chain.

The :class:`~artifactfs.hydrator.hydrator.Hydrator` decides *what* to fetch and
*when* (queue, classes, demand and stat lanes, retries); a source only answers
"these blobs, please". Sources form a :class:`SourceChain`: the local blob
cache, then the shared tier (when configured), then the origin remote. What a
source does not deliver is asked of the next one.

Verification happens in one place: a source hands every blob to
:class:`~artifactfs.store.blobcache.BlobCache` (``store_bytes`` or
``adopt_file``), which hashes the content and refuses it unless it matches the
object id; only then is the blob reported as delivered, and the hydrator
serves blobs only from the cache. A source that offers a wrong blob therefore
never reaches a reader: the tier skips it (one log line) and the chain asks
the origin.

Failure policy of the chain: an optional source (the tier) can never fail a
fetch: its errors, refusals and timeouts are logged (without credentials) and
counted, and the blobs go to the next source. Errors of the last source (the
origin) propagate to the hydrator, which owns retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from artifactfs.latency import LatencyHistogram
from artifactfs.remote import RemoteSession
from artifactfs.retry import Backoff
from artifactfs.status import SourceReport
from artifactfs.store.blobcache import BlobCache
from artifactfs.store.packstream import PackObject, PackStreamParser

log = logging.getLogger(__name__)

Delivered = list[tuple[str, int]]
"""(oid, size) of blobs now verified and stored in the blob cache."""
Deliver = Callable[[Delivered], Delivered]
"""Called on the event loop with each group of blobs as they arrive; returns those that were new to
the caller (a source may deliver a blob twice, e.g. a pack another lane just stored)."""

_OPTIONAL_BACKOFF = Backoff(base=1.0, cap=15.0)
"""How long a failed optional source is left out: a dead tier must not cost every read a timeout, and a
tier back after a blip must not wait long to be asked again (the origin may be down)."""
_SMALL_URGENT = 16
"""An urgent request of up to this many blobs (a blocked read) gets the short timeout; a larger one
(git asking for hundreds of blobs at once) the batch timeout."""
_INLINE_CACHE_CHECKS = 64
"""Batches up to this size are checked against the cache on the event loop; larger ones in a thread."""


class BlobSource(Protocol):
    """Something that can put blobs into the blob cache."""

    name: str

    async def fetch(self, oids: Sequence[str], deliver: Deliver, *, urgent: bool) -> None:
        """Store what this source has of ``oids`` in the cache, calling ``deliver`` as blobs arrive.

        ``urgent``: a reader is blocked on these blobs (few of them): favour
        latency over throughput. Blobs not delivered are ones the source
        lacks; a source that must have every blob (the origin) raises instead.
        """
        ...


@dataclass
class SourceStats:
    """What one source served: for ``status`` and metrics."""

    requests: int = 0
    blobs: int = 0
    bytes: int = 0
    errors: int = 0
    last_error: str | None = None
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def report(self) -> SourceReport:
        return SourceReport(
            self.requests, self.blobs, self.bytes, self.errors, self.last_error, self.latency.report()
        )


class CacheSource:
    """The local blob cache: blobs another mount sharing the cache (or an earlier one) stored."""

    name = "cache"

    def __init__(self, cache: BlobCache) -> None:
        self._cache = cache

    async def fetch(self, oids: Sequence[str], deliver: Deliver, *, urgent: bool) -> None:
        def cached() -> Delivered:
            return [(oid, size) for oid in oids if (size := self._cache.size(oid)) is not None]

        # A large batch is checked in a worker thread: thousands of stat calls would hold up FUSE.
        found = cached() if len(oids) <= _INLINE_CACHE_CHECKS else await trio.to_thread.run_sync(cached)
        if found:
            deliver(found)


class OriginSource:
    """The origin remote: one protocol-v2 ``fetch`` of the wanted blobs, parsed as it streams.

    Object ids of a pack's objects are computed from their content, and the
    cache checks each blob against its id once more as it stores it.
    Background batches are parsed in one worker thread (parsing holds the
    GIL; more threads would only keep the event loop waiting longer for it);
    an urgent request is parsed on the event loop, where a thread hop would
    cost more than its few blobs.
    """

    name = "origin"

    def __init__(self, session: RemoteSession, cache: BlobCache, max_bandwidth: int | None = None) -> None:
        self._session = session
        self._cache = cache
        self._max_bandwidth = max_bandwidth
        self._throttle_until = 0.0
        self._parse_thread = trio.CapacityLimiter(1)

    async def fetch(self, oids: Sequence[str], deliver: Deliver, *, urgent: bool) -> None:
        parser = PackStreamParser(spool_dir=self._cache.tmp_dir, external_base=self._cached_content)
        async with self._session.fetch(list(oids)) as response:
            async for chunk in response.pack_chunks():
                await self._throttle(len(chunk))
                deliver(await self._step(self._ingest, parser, chunk, urgent=urgent))
            deliver(await self._step(self._ingest_end, parser, b"", urgent=urgent))

    async def ingest_stream(
        self,
        parser: PackStreamParser,
        arrived: Sequence[PackObject],
        chunks: AsyncIterator[bytes] | None,
        deliver: Deliver,
    ) -> None:
        """Store the blobs of a pack the origin is already sending (the tip's, from a server without
        filter): ``arrived`` were parsed before, ``chunks`` feed ``parser`` the rest."""
        deliver(await trio.to_thread.run_sync(self._store, arrived, limiter=self._parse_thread))
        if chunks is not None:
            async for chunk in chunks:
                await self._throttle(len(chunk))
                deliver(await self._step(self._ingest, parser, chunk, urgent=False))
            deliver(await self._step(self._ingest_end, parser, b"", urgent=False))

    async def _throttle(self, amount: int) -> None:
        """Pace the origin's bytes to ``max_bandwidth`` bytes per second across all requests."""
        limit = self._max_bandwidth
        if not limit:
            return
        now = time.monotonic()
        self._throttle_until = max(self._throttle_until, now) + amount / limit
        delay = self._throttle_until - now
        if delay > 0.01:
            await trio.sleep(delay)

    async def _step(
        self,
        step: Callable[[PackStreamParser, bytes], Delivered],
        parser: PackStreamParser,
        chunk: bytes,
        *,
        urgent: bool,
    ) -> Delivered:
        if urgent:
            return step(parser, chunk)
        return await trio.to_thread.run_sync(step, parser, chunk, limiter=self._parse_thread)

    def _ingest(self, parser: PackStreamParser, chunk: bytes) -> Delivered:
        return self._store(parser.feed(chunk))

    def _ingest_end(self, parser: PackStreamParser, _: bytes) -> Delivered:
        return self._store(parser.finish())

    def _store(self, objects: Sequence[PackObject]) -> Delivered:
        stored: Delivered = []
        for obj in objects:
            if obj.type_name != "blob":
                continue
            if obj.spool_path is not None:
                self._cache.adopt_file(obj.oid, obj.spool_path)
            else:
                assert obj.data is not None
                self._cache.store_bytes(obj.oid, obj.data)
            stored.append((obj.oid, obj.size))
        return stored

    def _cached_content(self, oid: str) -> bytes | None:
        """Delta bases the server expects us to have (runs in a worker thread)."""
        if not self._cache.contains(oid):
            return None
        return self._cache.read_bytes(oid)


def _describe(error: BaseException) -> str:
    """One line for a failure: the first leaf of an exception group (a source's concurrent requests)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}"


class SourceChain:
    """Ask each source in turn for what the ones before it did not deliver.

    Every source but the last is optional: its failures are logged and
    counted, never raised. The last (the origin) is authoritative.
    """

    def __init__(self, sources: Sequence[BlobSource], *, optional_timeout: Callable[[bool], float]) -> None:
        if not sources:
            raise ValueError("a source chain needs at least one source")
        self._sources = list(sources)
        self._optional_timeout = optional_timeout
        self.stats = {source.name: SourceStats() for source in self._sources}
        self._failures: dict[str, int] = {}
        self._skip_until: dict[str, float] = {}
        """Trio time before which a failing optional source is not asked (so a dead tier costs no waits)."""

    @property
    def names(self) -> list[str]:
        return [source.name for source in self._sources]

    def source(self, name: str) -> BlobSource | None:
        return next((source for source in self._sources if source.name == name), None)

    async def fetch(self, oids: Sequence[str], deliver: Deliver, *, urgent: bool) -> bool:
        """Deliver each blob of ``oids`` from the first source that has it; raises what the last one does.

        Returns whether the last source was asked (the others lacked something).
        """
        remaining = dict.fromkeys(oids)
        *optional, last = self._sources
        for source in optional:
            if not remaining:
                return False
            await self._ask_optional(source, remaining, deliver, urgent=urgent)
        if not remaining:
            return False
        await self._ask(last, remaining, deliver, urgent=urgent)
        return True

    async def _ask_optional(
        self, source: BlobSource, remaining: dict[str, None], deliver: Deliver, *, urgent: bool
    ) -> None:
        if trio.current_time() < self._skip_until.get(source.name, 0.0):
            return
        timeout = self._optional_timeout(urgent and len(remaining) <= _SMALL_URGENT)
        try:
            with trio.move_on_after(timeout) as scope:
                await self._ask(source, remaining, deliver, urgent=urgent)
        except Exception as error:  # an optional source never fails a fetch
            self._note_failure(source.name, _describe(error))
            return
        if scope.cancelled_caught:
            self._note_failure(source.name, f"no answer within {timeout:g}s")
        elif self._failures.pop(source.name, 0):
            log.warning("blob source %s answers again", source.name)

    def _note_failure(self, name: str, message: str) -> None:
        stats = self.stats[name]
        stats.errors += 1
        stats.last_error = message
        failures = self._failures[name] = self._failures.get(name, 0) + 1
        delay = _OPTIONAL_BACKOFF.delay(failures)
        self._skip_until[name] = trio.current_time() + delay
        log.warning(
            "blob source %s failed (%s); using the next source, and only it for %.1fs", name, message, delay
        )

    async def _ask(
        self, source: BlobSource, remaining: dict[str, None], deliver: Deliver, *, urgent: bool
    ) -> None:
        stats = self.stats[source.name]

        def counted(arrived: Delivered) -> Delivered:
            for oid, _ in arrived:  # a source may deliver more than was asked (a whole pack)
                remaining.pop(oid, None)
            fresh = deliver(arrived) if arrived else []
            stats.blobs += len(fresh)
            stats.bytes += sum(size for _, size in fresh)
            return fresh

        stats.requests += 1
        started = time.monotonic()
        try:
            await source.fetch(list(remaining), counted, urgent=urgent)
        finally:
            stats.latency.observe(time.monotonic() - started)

    def status(self) -> dict[str, SourceReport]:
        return {name: stats.report() for name, stats in self.stats.items()}
