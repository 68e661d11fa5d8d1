"""Fetching blob contents: demand reads first, then the tree in priority order.

The :class:`Hydrator` owns every blob the mount may serve. Readers call
:meth:`Hydrator.ensure` and block until the blob is in the
:class:`~artifactfs.store.blobcache.BlobCache`; background workers drain the
:class:`~artifactfs.hydrator.queue.HydrationQueue` in batches of many blobs.
The hydrator decides what to fetch and when; where blobs come from (the local
cache, the shared tier, the origin) is the
:class:`~artifactfs.hydrator.sources.SourceChain`'s business. Each blob is
handed to its waiters as soon as a source has stored it, verified, in the
cache, which git in the mount reads as an alternate object directory.

Failure policy, in one place (errors are classified by :mod:`artifactfs.retry`):

* a transient error (refused, reset, timeout, 5xx, truncated or corrupt pack)
  puts the blobs that have not arrived back in the queue once a backoff with
  jitter has passed; background lanes start nothing before then, and the
  first answer from the remote ends every wait. Hydration never gives up on
  them, so it resumes by itself after an outage;
* a blob the server does not have fails the whole request: the blob the
  server names (or, if it names none, each half of the batch, concurrently)
  is taken out and the rest fetched at once; the missing blob fails for good,
  with one log line, and its readers get EIO at once from then on;
* a full disk while storing blobs pauses every lane until free space grows;
* a reader waits at most ``read_timeout`` seconds, then gets EIO.

Sizes from ``object-info`` are hints: the size of the verified blob replaces
a different hint, and :attr:`Hydrator.on_size_corrected` tells the mount.
"""

from __future__ import annotations

import collections
import errno
import functools
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio
import trio.lowlevel

from artifactfs.errors import ArtifactFSError, CorruptObjectError, MissingObjectError
from artifactfs.hydrator.priority import BINARY_SIZE_THRESHOLD, Classifier, PriorityClass
from artifactfs.hydrator.profile import ProfileRecorder
from artifactfs.hydrator.queue import BOOST, DEMAND, STAT, HydrationQueue, level_of
from artifactfs.hydrator.settings import HydrationSettings
from artifactfs.hydrator.sources import OriginSource, SourceChain
from artifactfs.latency import LatencyHistogram
from artifactfs.objects import ObjectType
from artifactfs.remote import RemoteSession
from artifactfs.retry import HYDRATION_BACKOFF, SPACE_BACKOFF, RemoteHealth, Verdict, classify
from artifactfs.snapshot.entries import EntryKind
from artifactfs.snapshot.tree import Snapshot
from artifactfs.state import free_bytes
from artifactfs.status import ClassProgress, HydrationReport
from artifactfs.store.blobcache import BlobCache
from artifactfs.store.gitdir import GitDir
from artifactfs.store.packstream import PackObject, PackStreamParser

log = logging.getLogger(__name__)

_UNKNOWN_SIZE_GUESS = 16 << 10
_OBJECT_INFO_CHUNK = 2048
_OBJECT_INFO_REQUESTS = 3
_MIN_BATCH = 16
_OBJECT_INFO_ATTEMPTS = 3
"""Failed object-info requests after which a blob's size is left to hydration."""
_LOW_SPACE = 1 << 20
"""A fetch that fails with less free space than this on the cache's disk failed for want of space."""
_DEMAND_LANES = 2
"""Requests for blocked readers that may be in flight at once, beside the stat and background lanes."""
_SMALL_BATCH = 16
_SMALL_BATCH_BYTES = 1 << 20
"""A background batch this small answers about as fast as a demand request of its own."""
_SWITCH_INTERVAL = 0.001
"""Seconds a thread may hold the GIL while another waits (Python's default is 0.005)."""


class BlobUnavailableError(ArtifactFSError):
    """A blob could not be had; the reader gets ``errno``: EIO, or ENOSPC when the local disk is the cause."""

    def __init__(self, message: str, *, errno_value: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = errno_value


@dataclass
class ClassCounters:
    total: int = 0
    hydrated: int = 0
    failed: int = 0
    total_bytes: int = 0
    hydrated_bytes: int = 0

    def report(self) -> ClassProgress:
        return ClassProgress(self.total, self.hydrated, self.failed, self.total_bytes, self.hydrated_bytes)


@dataclass
class _Blob:
    path: str
    priority_class: PriorityClass
    hydrated: bool = False
    failure: str | None = None
    permanent_failure: bool = False


@dataclass
class Arrival:
    """One entry of the hydration record: which blob arrived, why, and when."""

    oid: str
    path: str
    priority_class: str
    demanded: bool
    at: float


@dataclass
class _RateMeter:
    """Bytes per second over a sliding window, for status and ETA."""

    window: float = 5.0
    samples: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)

    def add(self, amount: int) -> None:
        now = time.monotonic()
        self.samples.append((now, amount))
        while self.samples and self.samples[0][0] < now - self.window:
            self.samples.popleft()

    def rate(self) -> float:
        now = time.monotonic()
        while self.samples and self.samples[0][0] < now - self.window:
            self.samples.popleft()
        if not self.samples:
            return 0.0
        span = max(now - self.samples[0][0], 0.5)
        return sum(amount for _, amount in self.samples) / span


class Hydrator:
    def __init__(
        self,
        session: RemoteSession,
        sources: SourceChain,
        cache: BlobCache,
        gitdir: GitDir,
        classifier: Classifier,
        settings: HydrationSettings,
    ) -> None:
        self._session = session
        self.sources = sources
        self._cache = cache
        self._gitdir = gitdir
        self._classifier = classifier
        self.settings = settings
        self._queue = HydrationQueue()
        self._blobs: dict[str, _Blob] = {}
        self._sizes: dict[str, int] = {}
        self._current: frozenset[str] | None = None
        """The blobs of the tree tracked last (the mount's HEAD): what the totals describe."""
        self._waiters: dict[str, trio.Event] = {}
        self._inflight: set[str] = set()
        self._urgent_inflight: dict[str, int] = {}
        """Blobs in flight on a demand or stat lane, with that lane's level."""
        self._small_inflight: set[str] = set()
        """Blobs in flight in a small background batch (a reader waits for it rather than ask again)."""
        self._work = trio.lowlevel.ParkingLot()
        self._batch_size = settings.initial_batch
        self._size_pending: dict[str, None] = {}
        self._size_demand: dict[str, None] = {}
        self._size_waiters: dict[str, trio.Event] = {}
        self._size_work = trio.lowlevel.ParkingLot()
        self._object_info = session.object_info_supported
        self._hinted: set[str] = set()
        """Blobs whose size is an object-info hint, not yet confirmed by the verified blob."""
        self._size_attempts: collections.Counter[str] = collections.Counter()
        self.on_size_corrected: Callable[[str, int], None] | None = None
        """Called with a blob id and its verified size when that differs from the size reported before."""
        self.health = RemoteHealth()
        self._backoff = HYDRATION_BACKOFF
        self._retrying: dict[str, int] = {}
        """Blobs whose fetch failed transiently, with the level they go back to the queue at."""
        self._retry_work = trio.lowlevel.ParkingLot()
        self._gate_until = 0.0
        """Trio time before which background fetches wait (set by a transient failure)."""
        self._space_restored: trio.Event | None = None
        """Set while hydration is paused for a full disk; fires when space returns."""
        self._space_floor = 0
        self._space_pauses = 0
        self._space_work = trio.lowlevel.ParkingLot()
        self._rate = _RateMeter()
        self._demanded: set[str] = set()
        self._background_level = BOOST
        self.record: list[Arrival] = []
        self.profile: ProfileRecorder | None = None
        """Notes the paths read in the mount's first minutes (learned prefetch), when on."""
        self.errors: collections.deque[str] = collections.deque(maxlen=20)
        self._error_count = 0
        self._fetch_latency = LatencyHistogram()
        self.started_at = time.monotonic()
        self._streaming = False
        """True while the tip's own pack is still bringing blobs (a remote without filter)."""
        self._awaiting_stream: set[str] = set()
        """Demanded blobs the remote refused to send by id while the stream was running."""

    # ----------------------------------------------------------------- running

    async def take_stream(
        self,
        origin: OriginSource,
        parser: PackStreamParser,
        arrived: Sequence[PackObject],
        chunks: AsyncIterator[bytes] | None,
    ) -> None:
        """Store the blobs of a tip pack still arriving (a remote without filter), verified as usual.

        ``arrived`` were parsed before the trees were complete; ``chunks``
        feeds ``parser`` the rest, through ``origin`` (its parse thread and
        bandwidth cap). Meanwhile the background lanes take nothing (the
        stream brings every blob of the tip), demand reads still ask for their
        blob by id, and a blob the remote refuses by id waits for the stream.
        If the stream breaks, the lanes fetch what it did not bring, as for
        any tree.
        """
        self._streaming = True
        try:
            await origin.ingest_stream(parser, arrived, chunks, lambda stored: self._deliver(stored, set()))
            log.info("the tip's pack is complete: its blobs are all stored")
        except Exception as error:
            verdict = classify(error)
            if verdict is None:
                raise
            if verdict is Verdict.NO_SPACE:
                self._pause_for_space(error)
            else:
                self._note_error(f"the tip's pack broke off ({error}); fetching the rest by id")
        finally:
            self._streaming = False
            for oid in self._awaiting_stream:
                if not self._cache.contains(oid):
                    self._queue.push(oid, DEMAND)  # the remote refused it once; now it fails for good
            self._awaiting_stream.clear()
            self._work.unpark_all()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the fetch lanes and the size resolver until cancelled.

        Demand lanes serve only blobs a reader is blocked on, so a read never
        waits behind a directory fetched for ``stat``, a boosted or a
        background batch; the stat lane serves directories whose sizes a
        ``stat`` asked for; background lanes serve boosted blobs (neighbours,
        ``prefetch``), then the classes.
        """
        # Background batches are parsed in worker threads that hold the GIL; the event loop
        # (FUSE requests, demand lanes) must get it back within a millisecond, not five.
        sys.setswitchinterval(min(sys.getswitchinterval(), _SWITCH_INTERVAL))
        async with trio.open_nursery() as nursery:
            for index in range(_DEMAND_LANES):
                nursery.start_soon(self._lane, self._taker(DEMAND), f"demand-{index}")
            nursery.start_soon(self._lane, self._taker(STAT), "stat")
            for index in range(max(1, self.settings.connections)):
                nursery.start_soon(self._lane, self._take_background, f"background-{index}", True)
            nursery.start_soon(self._requeue_retries)
            nursery.start_soon(self._watch_space)
            if self._object_info:
                nursery.start_soon(self._resolve_sizes, True)
                for _ in range(_OBJECT_INFO_REQUESTS):
                    nursery.start_soon(self._resolve_sizes, False)
            task_status.started()

    async def wait_for_classes(self, last: PriorityClass, *, poll: float = 0.1) -> None:
        """Return once every blob of the classes up to ``last`` has arrived or failed.

        Returns at once when background hydration is off: nothing would ever
        finish them.
        """
        while self.settings.mode == "background":
            if all(
                counters.hydrated + counters.failed >= counters.total
                for priority_class, counters in self._class_counters().items()
                if priority_class <= last
            ):
                return
            await trio.sleep(poll)

    def start_background(self, last: PriorityClass = PriorityClass.BINARY) -> None:
        """Let the background lanes fetch classes up to ``last`` (demand reads are always served).

        The mount opens the manifest and config classes as soon as it is
        ready (their class comes from the name) and the rest once object-info
        has given every size, since size decides the binary class. With
        ``--hydrate none`` the background lanes serve boosted blobs only.
        """
        if self.settings.mode == "background":
            self._background_level = max(self._background_level, level_of(last))
            self._work.unpark_all()

    async def track(self, snapshot: Snapshot, *, may_be_local: bool = False) -> None:
        """Register every blob of ``snapshot``; queue the missing ones by class.

        With ``may_be_local`` (a tree git made or fetched in the mount), blobs
        new to the hydrator are first looked up in the gitdir: a commit's new
        blobs exist only there, and the remote would refuse them. Walks the
        tree with a checkpoint every few hundred entries, and looks the new
        blobs up in the cache in a worker thread (a ``stat`` each, which on
        the event loop would wait for the GIL each time), so a huge tree never
        stalls FUSE requests.
        """
        found: dict[str, str] = {}
        current: set[str] = set()
        for count, (path, entry) in enumerate(snapshot.walk()):
            if count % 512 == 0:
                await trio.sleep(0)
            if entry.kind in (EntryKind.FILE, EntryKind.SYMLINK):
                current.add(entry.oid)
                if entry.oid not in self._blobs:
                    found.setdefault(entry.oid, path)
        cached = await trio.to_thread.run_sync(lambda: {oid: self._cache.size(oid) for oid in found})
        new_oids: list[str] = []
        for count, (oid, path) in enumerate(found.items()):
            if count % 512 == 0:
                await trio.sleep(0)
            if oid in self._blobs:
                continue  # a read registered it meanwhile
            if self._register(oid, path, cached[oid], queue=not may_be_local) is not None and may_be_local:
                new_oids.append(oid)
        self._current = frozenset(current)
        if new_oids:
            local = await trio.to_thread.run_sync(self._hydrate_locally, new_oids)
            for oid, size in local:
                self._mark_hydrated(oid, size)
            for oid in set(new_oids).difference(oid for oid, _ in local):
                self._queue_background(oid)
        self._work.unpark_all()
        self._size_work.unpark_all()

    def _hydrate_locally(self, oids: Sequence[str]) -> list[tuple[str, int]]:
        """Copy blobs that the gitdir already has into the cache (runs in a worker thread)."""
        found: list[tuple[str, int]] = []
        for oid in oids:
            try:
                type_num, content = self._gitdir.read_object(oid)
            except KeyError:
                continue
            if type_num == ObjectType.BLOB:
                self._cache.store_bytes(oid, content)
                found.append((oid, len(content)))
        return found

    def _register(self, oid: str, path: str, size: int | None, *, queue: bool = True) -> _Blob | None:
        """Start accounting for a blob (``size``: its size in the cache, None if not there);
        returns it if it still has to be hydrated."""
        if size is not None:
            self._settle_hint(oid, size)  # before the blob counts anywhere: nothing to correct but the hint
        priority_class = self._classifier.classify(path, self._sizes.get(oid))
        blob = _Blob(path, priority_class)
        self._blobs[oid] = blob
        if size is not None:
            self._sizes[oid] = size
            blob.hydrated = True
            return None
        if oid not in self._sizes and self._object_info:
            self._size_pending[oid] = None
        if queue:
            self._queue_background(oid)
        return blob

    def _queue_background(self, oid: str) -> None:
        if self.settings.mode == "background":
            self._queue.push(oid, level_of(self._blobs[oid].priority_class))

    # ----------------------------------------------------------------- readers

    @property
    def object_info_available(self) -> bool:
        """Whether sizes can be had without fetching contents."""
        return self._object_info

    async def ensure(self, oid: str, *, path: str = "", neighbours: Iterable[tuple[str, str]] = ()) -> Path:
        """Return the cache path of blob ``oid``, fetching it first if needed.

        The blob goes to a demand lane; in background mode ``neighbours``
        ((path, oid) of the files in the same directory) are then boosted on
        the background lanes, once the demand request is on its way. They are
        read only when ``oid`` has to be fetched and was not queued at boost
        level already (its directory was boosted). Raises
        :class:`BlobUnavailableError` on failure or after ``read_timeout`` seconds.
        """
        if self.profile is not None:
            self.profile.note(path)
        if self._cache.contains(oid):
            return self._cache.path(oid)
        blob = self._tracked(oid, path)
        if blob.permanent_failure:
            raise BlobUnavailableError(f"blob {oid} ({blob.path}): {blob.failure}")
        self._demanded.add(oid)
        boost = (
            self.settings.mode == "background"
            and oid not in self._inflight
            and not self._queued_at(oid, BOOST)
        )
        events = self._request([oid], DEMAND)
        if boost:
            await trio.sleep(0)  # a demand lane sends the request first
            for neighbour_path, neighbour in neighbours:
                # The hydrator's own record, not the cache: a stat per file would wait for the GIL each time.
                if neighbour == oid or neighbour in self._inflight:
                    continue
                if not self._tracked(neighbour, neighbour_path).hydrated:
                    self._queue.push(neighbour, BOOST)
            self._work.unpark_all()
        await self._wait(events)
        if self._cache.contains(oid):
            return self._cache.path(oid)
        reason = blob.failure or f"timed out after {self.settings.read_timeout:g}s"
        if self._space_restored is not None:
            reason = f"{reason}; the state root is full, so hydration is paused"
        elif self.health.state == "unreachable":
            reason = f"{reason}; the remote is unreachable ({self.health.last_error})"
        log.error("read of %s (%s) failed: %s", blob.path or oid, oid, reason)
        raise BlobUnavailableError(
            f"blob {oid} ({blob.path}): {reason}",
            errno_value=errno.ENOSPC if self._space_restored is not None else errno.EIO,
        )

    def _tracked(self, oid: str, path: str) -> _Blob:
        """The accounting record of ``oid``, registered (and queued for the background) on first sight."""
        blob = self._blobs.get(oid)
        if blob is None:
            self._register(oid, path, self._cache.size(oid))
            blob = self._blobs[oid]
        return blob

    def _queued_at(self, oid: str, level: int) -> bool:
        """Whether ``oid`` is queued at ``level`` or better."""
        queued = self._queue.level(oid)
        return queued is not None and queued <= level

    def _request(self, oids: Sequence[str], level: int) -> list[trio.Event]:
        """Queue ``oids`` at ``level`` (DEMAND or STAT) for the urgent lanes; returns the events their arrivals set.

        A blob in flight in a large background batch, or (for DEMAND) in a
        directory fetched for ``stat``, is asked for once more on its own:
        whichever copy arrives first wakes the reader.
        """
        events = []
        for oid in oids:
            size = self._cache.size(oid)
            if size is not None:  # stored by a parse not yet delivered, or by another mount
                self._mark_hydrated(oid, size)
                continue
            events.append(self._waiters.setdefault(oid, trio.Event()))
            carried = self._urgent_inflight.get(oid, DEMAND if oid in self._small_inflight else BOOST)
            if carried > level:
                self._queue.push(oid, level)
        self._work.unpark_all()
        return events

    async def _wait(self, events: Sequence[trio.Event]) -> None:
        """Wait until every event is set (each blob arrived or failed), at most ``read_timeout`` seconds."""
        with trio.move_on_after(self.settings.read_timeout):
            for event in events:
                await event.wait()

    def prefetch_paths(self, blobs: Sequence[tuple[str, str]]) -> None:
        """Fetch these (path, oid) blobs ahead of the background queue, registering them first."""
        for path, oid in blobs:
            self._tracked(oid, path)
        self.boost(oid for _, oid in blobs)

    def boost(self, oids: Iterable[str]) -> int:
        """Move blobs to the front of the background queue (``prefetch``); returns how many."""
        raised = 0
        for oid in oids:
            if oid not in self._inflight and not self._cache.contains(oid):
                raised += self._queue.push(oid, BOOST)
        self._work.unpark_all()
        return raised

    def blobs_by_class(self, snapshot: Snapshot) -> tuple[list[list[str]], int]:
        """The hydrated blobs of ``snapshot``'s files, one list per class, best class first, in tree
        order; and how many of its blobs are not hydrated (or not yet tracked)."""
        groups: dict[PriorityClass, dict[str, None]] = {
            priority_class: {} for priority_class in PriorityClass
        }
        pending: set[str] = set()
        for _, entry in snapshot.walk():
            if entry.kind not in (EntryKind.FILE, EntryKind.SYMLINK):
                continue
            blob = self._blobs.get(entry.oid)
            if blob is not None and blob.hydrated:
                groups[blob.priority_class][entry.oid] = None
            else:
                pending.add(entry.oid)
        return [list(groups[priority_class]) for priority_class in sorted(groups)], len(pending)

    def tracks(self, oid: str) -> bool:
        """Whether ``oid`` is a blob of a tree given to this hydrator (so fetching it by id is one blob)."""
        return oid in self._blobs

    def known_size(self, oid: str) -> int | None:
        """The size of ``oid`` if known without asking the remote.

        A tracked blob's size is in memory once known; only untracked ones
        cost a look at the cache (a ``stat`` on the event loop).
        """
        size = self._sizes.get(oid)
        if size is None and oid not in self._blobs:
            size = self._cache.size(oid)
            if size is not None:
                self._sizes[oid] = size
        return size

    async def sizes(
        self, oids: Sequence[str], *, partial: bool = False, neighbours: Iterable[tuple[str, str]] = ()
    ) -> dict[str, int]:
        """Sizes of blobs, from object-info when the server offers it, else by hydrating them.

        Hydrating for sizes also fetches ``neighbours`` ((path, oid) of the
        files in the same directory), see :meth:`_size_by_hydration`. Raises
        :class:`BlobUnavailableError` if a size cannot be had, unless
        ``partial`` (a listing, the index): then blobs whose size object-info
        did not give are left out, and nothing is fetched.
        """
        result: dict[str, int] = {}
        missing: list[str] = []
        for oid in oids:
            size = self.known_size(oid)
            if size is None:
                missing.append(oid)
            else:
                result[oid] = size
        if not missing:
            return result
        if self._object_info:
            # More than one request's worth (the index asking for the whole tree) is bulk work:
            # a stat's or a listing's sizes must not queue behind it.
            wanted = self._size_demand if len(missing) <= _OBJECT_INFO_CHUNK else self._size_pending
            events = []
            for oid in missing:
                wanted[oid] = None
                events.append(self._size_waiters.setdefault(oid, trio.Event()))
            self._size_work.unpark_all()
            with trio.move_on_after(self.settings.read_timeout):
                for event in events:
                    if not event.is_set():  # waiting on a set event would still cost a checkpoint each
                        await event.wait()
            still_missing = [oid for oid in missing if oid not in self._sizes]
        else:
            still_missing = missing
        if still_missing and not partial:
            # With object-info, the rest of the directory has sizes without its content.
            await self._size_by_hydration(still_missing, () if self._object_info else neighbours)
        for oid in missing:
            size = self.known_size(oid)
            if size is None and partial:
                continue
            if size is None:
                blob = self._blobs.get(oid)
                reason = blob.failure if blob and blob.failure else "size unavailable"
                raise BlobUnavailableError(f"blob {oid} ({blob.path if blob else '?'}): {reason}")
            result[oid] = size
        return result

    async def _size_by_hydration(self, oids: Sequence[str], neighbours: Iterable[tuple[str, str]]) -> None:
        """Learn sizes by fetching contents: ``oids`` alone on a demand lane, their directory on the stat lane.

        The first ``stat`` in a directory sends its file(s) in a request of
        their own (a permission check before ``open`` is a ``stat`` too, so
        opening a file never waits for its whole directory) and the rest of
        the unhydrated ``neighbours`` in one request beside it; a ``stat`` of
        any of those then waits for that request. So ``ls -l`` or ``find
        -size`` cost about two requests per directory, not one per file.
        Failures are reported by :meth:`sizes`. While the tip's pack streams
        (a remote without filter), the directory is left to the stream.
        """
        wanted = [oid for oid in oids if not ((blob := self._blobs.get(oid)) and blob.permanent_failure)]
        if all(oid in self._urgent_inflight or self._queued_at(oid, STAT) for oid in wanted):
            await self._wait(self._request(wanted, STAT))
            return
        for path, oid in () if self._streaming else neighbours:
            if oid not in wanted and oid not in self._urgent_inflight:
                blob = self._tracked(oid, path)
                if not blob.hydrated and not blob.permanent_failure:
                    self._queue.push(oid, STAT)
        await self._wait(self._request(wanted, DEMAND))

    # ----------------------------------------------------------------- object-info

    async def _resolve_sizes(self, demand_only: bool) -> None:
        """One of a few concurrent tasks asking the remote for blob sizes (object-info).

        One of them serves only sizes a reader waits for, so a ``stat`` or a
        listing never queues behind the bulk requests made for the whole tree.
        A failed request never turns object-info off: its readers fall back
        to hydration, and the other blobs are asked for again after a backoff.
        """
        while True:
            await self._wait_to_start(gated=not demand_only, stores=False)
            chunk = self._take_size_chunk(demand_only)
            if not chunk:
                await self._size_work.park()
                continue
            try:
                sizes = await self._session.object_info(chunk)
            except Exception as error:
                verdict = classify(error)
                if verdict is None:
                    raise
                if isinstance(error, MissingObjectError):
                    self._remote_answered()
                    await self._settle_missing_size(error.oid, chunk)
                else:
                    self._size_request_failed(chunk, error)
                continue
            self._remote_answered()
            for oid in chunk:
                size = sizes.get(oid)
                if size is not None:
                    self._learn_size(oid, size, verified=False)
            self._release_size_waiters(chunk)

    def _size_request_failed(self, chunk: list[str], error: Exception) -> None:
        """An object-info request failed or its reply was unusable: nothing of it is believed.

        Readers waiting for these sizes are released at once (their sizes
        come from hydration); the rest is asked for again after the backoff,
        up to a few times each.
        """
        self._remote_failed(f"object-info for {len(chunk)} blobs failed", error)
        waited = {oid for oid in chunk if oid in self._size_waiters}
        for oid in chunk:
            self._size_attempts[oid] += 1
            if oid not in waited and self._size_attempts[oid] < _OBJECT_INFO_ATTEMPTS:
                self._size_pending[oid] = None
        self._release_size_waiters(waited)

    def _take_size_chunk(self, demand_only: bool) -> list[str]:
        """Up to one request's worth of blobs whose size is wanted, demanded ones first."""
        chunk: dict[str, None] = {}
        for source in (self._size_demand,) if demand_only else (self._size_demand, self._size_pending):
            while source and len(chunk) < _OBJECT_INFO_CHUNK:
                oid = next(iter(source))
                del source[oid]
                if oid not in self._sizes:
                    chunk[oid] = None
        return list(chunk)

    async def _settle_missing_size(self, oid: str | None, chunk: list[str]) -> None:
        """object-info refused a blob: take it from the gitdir, or fall back to hydrating it."""
        suspects = [oid] if oid in chunk else chunk
        for other in chunk:  # the rest of the chunk was taken off the queues: ask again
            if other not in suspects and other not in self._sizes:
                self._size_demand[other] = None
        local = await trio.to_thread.run_sync(self._hydrate_locally, suspects)
        for found, size in local:
            self._mark_hydrated(found, size)
        self._release_size_waiters(suspects)  # sizes() hydrates whatever is still unknown
        self._size_work.unpark_all()

    def _release_size_waiters(self, oids: Iterable[str]) -> None:
        for oid in oids:
            event = self._size_waiters.pop(oid, None)
            if event is not None:
                event.set()

    def _learn_size(self, oid: str, size: int, *, verified: bool) -> None:
        """Record a blob's size: ``verified`` (from the blob itself) or a hint from object-info."""
        if oid in self._sizes:
            if verified:
                self._settle_hint(oid, size)
            return
        self._sizes[oid] = size
        if not verified:
            self._hinted.add(oid)
        blob = self._blobs.get(oid)
        if blob is None or size <= BINARY_SIZE_THRESHOLD or blob.hydrated:
            return
        reclassified = self._classifier.classify(blob.path, size)
        if reclassified != blob.priority_class:
            blob.priority_class = reclassified
            if oid in self._queue and self.settings.mode == "background" and oid not in self._demanded:
                self._queue.discard(oid)
                self._queue.push(oid, level_of(reclassified))

    def size_hinted(self, oid: str) -> bool:
        """Whether the size known for ``oid`` is still the remote's word only (``settle_size`` pending)."""
        return oid in self._hinted

    def settle_size(self, oid: str, verified_size: int) -> None:
        """The size of the verified blob ``oid`` as served (an open file's length): it wins over any hint."""
        self._settle_hint(oid, verified_size)

    def _settle_hint(self, oid: str, verified_size: int) -> None:
        """Replace an object-info hint with the verified size; a different hint is corrected everywhere."""
        if oid not in self._hinted:
            return
        self._hinted.discard(oid)
        hinted = self._sizes.get(oid)
        self._sizes[oid] = verified_size
        if hinted is None or hinted == verified_size:
            return
        blob = self._blobs.get(oid)
        log.warning(
            "object-info said %d bytes for %s (%s) but the verified blob has %d; using %d",
            hinted,
            blob.path if blob else "?",
            oid,
            verified_size,
            verified_size,
        )
        if self.on_size_corrected is not None:
            self.on_size_corrected(oid, verified_size)

    # ----------------------------------------------------------------- fetching

    async def _lane(self, take: Callable[[], list[tuple[str, int]]], name: str, gated: bool = False) -> None:
        """One fetch request at a time: take a batch, fetch it, repeat; park while there is nothing to take."""
        while True:
            await self._wait_to_start(gated=gated, stores=True)
            batch = take()
            if not batch:
                await self._work.park()
                continue
            oids = [oid for oid, _ in batch]
            urgent = batch[0][1] <= STAT
            small = (
                not urgent
                and len(oids) <= _SMALL_BATCH
                and sum(self._sizes.get(oid, _UNKNOWN_SIZE_GUESS) for oid in oids) <= _SMALL_BATCH_BYTES
            )
            self._inflight.update(oids)
            if urgent:
                self._urgent_inflight.update(batch)
            elif small:
                self._small_inflight.update(oids)
            started = time.monotonic()
            try:
                await self._fetch(oids, urgent=batch[0][1] == DEMAND)
            finally:
                for oid, level in batch:
                    self._inflight.discard(oid)
                    if small:
                        self._small_inflight.discard(oid)
                    if self._urgent_inflight.get(oid) == level:
                        del self._urgent_inflight[oid]
            elapsed = time.monotonic() - started
            self._fetch_latency.observe(elapsed)
            if not urgent:
                self._adapt_batch(elapsed, len(oids))
            log.debug("%s lane fetched %d blobs in %.3fs", name, len(oids), elapsed)

    def _taker(self, level: int) -> Callable[[], list[tuple[str, int]]]:
        """What a demand (or the stat) lane takes: every blob queued at ``level``, up to one batch's limits."""
        settings = self.settings
        return lambda: self._queue.pop_batch(
            level,
            settings.max_batch,
            settings.max_batch_bytes,
            self._sizes,
            _UNKNOWN_SIZE_GUESS,
            min_level=level,
        )

    def _take_background(self) -> list[tuple[str, int]]:
        """Boosted blobs first, then the classes background hydration has opened (nothing while
        the tip's pack still streams: it brings them all)."""
        if self._streaming:
            return []
        return self._queue.pop_batch(
            self._background_level,
            self._batch_size,
            self.settings.max_batch_bytes,
            self._sizes,
            _UNKNOWN_SIZE_GUESS,
            min_level=BOOST,
        )

    def _adapt_batch(self, elapsed: float, count: int) -> None:
        if count < self._batch_size:
            return
        if elapsed < 0.3:
            self._batch_size = min(self._batch_size * 2, self.settings.max_batch)
        elif elapsed > 1.5:
            self._batch_size = max(self._batch_size // 2, _MIN_BATCH)

    async def _fetch(self, oids: list[str], *, urgent: bool = False) -> None:
        """One attempt at ``oids``: deliver what arrives, fail what the origin lacks, retry the rest later."""
        remaining = set(oids)
        while remaining:
            # Wants in batch order (best first): the server packs them in that order.
            ordered = [oid for oid in oids if oid in remaining]
            try:
                origin_asked = await self.sources.fetch(
                    ordered, lambda arrived: self._deliver(arrived, remaining), urgent=urgent
                )
                if remaining:
                    # A server refuses what it lacks; a pack without a wanted blob was altered in transit.
                    raise CorruptObjectError(
                        f"the pack lacked {len(remaining)} wanted blobs (altered in transit?)"
                    )
            except Exception as error:
                verdict = classify(error)
                if verdict is None:
                    raise
                if verdict is Verdict.PERMANENT:
                    assert isinstance(error, MissingObjectError)
                    self._remote_answered()
                    if error.oid in remaining:
                        remaining.discard(error.oid)
                        await self._missing(error.oid)
                        continue  # the rest at once, without the blob the server named
                    await self._split(ordered)
                    return
                self._batch_size = max(self._batch_size // 2, _MIN_BATCH)
                if verdict is Verdict.NO_SPACE or await self._disk_full():
                    self._pause_for_space(error)
                else:
                    self._note_error(
                        f"fetch of {len(remaining)} blobs failed "
                        f"(attempt {self.health.consecutive_failures + 1}): {error}"
                    )
                    self._remote_failed(f"fetch of {len(remaining)} blobs failed", error)
                self._retry_later(ordered)
                return
            if origin_asked:  # the remote's health is the origin's: the cache and tier say nothing of it
                self._remote_answered()
            self._space_pauses = 0

    async def _split(self, oids: list[str]) -> None:
        """The remote lacks one of ``oids`` but did not say which: try each half, concurrently."""
        if len(oids) == 1:
            await self._missing(oids[0])
            return
        middle = len(oids) // 2
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(self._fetch, oids[:middle]))
            nursery.start_soon(functools.partial(self._fetch, oids[middle:]))

    async def _missing(self, oid: str) -> None:
        """The remote does not have ``oid``: take it from the gitdir (git made it here), or fail it for good.

        While the tip's pack streams, a remote may refuse a blob by id that the stream will bring:
        its readers wait for the stream."""
        local = await trio.to_thread.run_sync(self._hydrate_locally, [oid])
        if local:
            self._deliver(local, set())
        elif self._streaming:
            self._awaiting_stream.add(oid)
        else:
            self._fail(oid, "not found on the remote")

    # ----------------------------------------------------------------- retries and pauses

    async def _wait_to_start(self, *, gated: bool, stores: bool) -> None:
        """Wait while the disk is full (``stores``), and while a backoff runs (``gated``)."""
        while True:
            paused = self._space_restored
            if stores and paused is not None:
                await paused.wait()
                continue
            if gated and trio.current_time() < self._gate_until:
                recovered = self.health.recovered
                with trio.move_on_at(self._gate_until):
                    await recovered.wait()
                continue
            return

    def _remote_answered(self) -> None:
        """A request succeeded: the remote is back, so every waiting retry goes now."""
        self._gate_until = 0.0
        self.health.succeeded()
        if self._retrying:
            self._retry_work.unpark_all()

    def _remote_failed(self, what: str, error: Exception) -> None:
        """A transient failure: hold background requests back for the next backoff interval."""
        self.health.failed(f"{what}: {error}")
        delay = self._backoff.delay(self.health.consecutive_failures)
        self._gate_until = max(self._gate_until, trio.current_time() + delay)

    def _retry_later(self, oids: Iterable[str]) -> None:
        """Queue ``oids`` again once the backoff (or the pause) is over; their readers keep waiting."""
        for oid in oids:
            blob = self._blobs.get(oid)
            # The cache, not the hydrated flag, says what is here: gc may have evicted a hydrated blob.
            if blob is None or blob.permanent_failure or self._cache.contains(oid):
                continue
            if oid in self._demanded:
                level = DEMAND
            elif self.settings.mode == "background":
                level = level_of(blob.priority_class)
            else:
                level = BOOST  # with --hydrate none only boosted blobs were asked for
            self._retrying[oid] = min(level, self._retrying.get(oid, level))
        self._retry_work.unpark_all()

    async def _requeue_retries(self) -> None:
        """Put failed-transient blobs back in the queue when the backoff ends or the remote answers."""
        while True:
            if not self._retrying:
                await self._retry_work.park()
                continue
            recovered = self.health.recovered
            with trio.move_on_at(self._gate_until):
                await recovered.wait()
            retrying, self._retrying = self._retrying, {}
            for oid, level in retrying.items():
                if not self._blobs[oid].permanent_failure and oid not in self._inflight:
                    self._queue.push(oid, level)  # a lane drops it if it arrived meanwhile
            self._work.unpark_all()

    async def _disk_full(self) -> bool:
        return await trio.to_thread.run_sync(free_bytes, self._cache.tmp_dir) < _LOW_SPACE

    def _pause_for_space(self, error: Exception) -> None:
        """Storing blobs failed for want of space: every lane waits until free space grows."""
        if self._space_restored is not None:
            return
        self._space_restored = trio.Event()
        self._space_floor = free_bytes(self._cache.tmp_dir) + _LOW_SPACE
        self._space_pauses += 1
        self._note_error(f"disk full while storing blobs ({error}); hydration paused until space returns")
        self._space_work.unpark_all()

    async def _watch_space(self) -> None:
        """While hydration is paused for space, poll free space (with backoff) and resume once it grew."""
        while True:
            restored = self._space_restored
            if restored is None:
                await self._space_work.park()
                continue
            attempt = self._space_pauses
            while True:
                await trio.sleep(SPACE_BACKOFF.delay(attempt))
                attempt += 1
                free = await trio.to_thread.run_sync(free_bytes, self._cache.tmp_dir)
                if free >= self._space_floor:
                    break
            log.warning("%d bytes free again; hydration resumes", free)
            self._space_restored = None
            restored.set()

    def _deliver(self, arrived: list[tuple[str, int]], remaining: set[str]) -> list[tuple[str, int]]:
        """Hand stored blobs to their waiters; returns those that were new here (for the sources' counts)."""
        fresh = []
        for oid, size in arrived:
            remaining.discard(oid)
            blob = self._blobs.get(oid)
            if blob is None or not blob.hydrated:
                fresh.append((oid, size))
                self._rate.add(size)
            self._mark_hydrated(oid, size)
        return fresh

    def _mark_hydrated(self, oid: str, size: int) -> None:
        blob = self._blobs.get(oid)
        if blob is not None and not blob.hydrated:
            self._learn_size(oid, size, verified=True)
            blob.hydrated = True
            blob.failure = None
            self.record.append(
                Arrival(oid, blob.path, blob.priority_class.label, oid in self._demanded, time.monotonic())
            )
        else:
            self._learn_size(oid, size, verified=True)
        self._queue.discard(oid)
        self._demanded.discard(oid)
        self._wake(oid)

    def _fail(self, oid: str, reason: str) -> None:
        """``oid`` cannot be had, ever: one log line, its readers get EIO now and from now on."""
        blob = self._blobs.get(oid)
        if blob is not None:
            blob.failure = reason
            blob.permanent_failure = True
        # One log line naming the blob and the cause.
        self._note_error(f"cannot hydrate {f'{blob.path} ({oid})' if blob else oid}: {reason}", logging.ERROR)
        self._demanded.discard(oid)
        self._queue.discard(oid)
        self._wake(oid)

    def _wake(self, oid: str) -> None:
        event = self._waiters.pop(oid, None)
        if event is not None:
            event.set()

    def _note_error(self, message: str, level: int = logging.WARNING) -> None:
        log.log(level, "%s", message)
        self._error_count += 1
        self.errors.append(message)

    # ----------------------------------------------------------------- reporting

    def _class_counters(self) -> dict[PriorityClass, ClassCounters]:
        """Totals per class over the blobs of the current tree; blobs of earlier HEADs do not count."""
        counters = {priority_class: ClassCounters() for priority_class in PriorityClass}
        for oid in self._current or ():
            blob = self._blobs.get(oid)
            if blob is None:
                continue
            size = self._sizes.get(oid)
            counted = counters[blob.priority_class]
            counted.total += 1
            counted.total_bytes += size or 0
            if blob.hydrated:
                counted.hydrated += 1
                counted.hydrated_bytes += size or 0
            elif blob.failure is not None:
                counted.failed += 1
        return counters

    def status(self) -> HydrationReport:
        by_class = self._class_counters()
        totals = ClassCounters()
        for counters in by_class.values():
            totals.total += counters.total
            totals.hydrated += counters.hydrated
            totals.failed += counters.failed
            totals.total_bytes += counters.total_bytes
            totals.hydrated_bytes += counters.hydrated_bytes
        rate = self._rate.rate()
        remaining_bytes = max(totals.total_bytes - totals.hydrated_bytes, 0)
        # Blobs waiting for a retry are neither hydrated nor failed: an outage never looks complete;
        # nor does a mount whose tree is not counted yet.
        complete = (
            self._current is not None
            and totals.hydrated + totals.failed >= totals.total
            and not self._retrying
        )
        eta = None if complete or rate <= 0 or self.settings.mode == "none" else remaining_bytes / rate
        return HydrationReport(
            mode=self.settings.mode,
            total_blobs=totals.total,
            hydrated_blobs=totals.hydrated,
            failed_blobs=totals.failed,
            total_bytes=totals.total_bytes,
            hydrated_bytes=totals.hydrated_bytes,
            queued_blobs=len(self._queue),
            retrying_blobs=len(self._retrying),
            paused="disk full" if self._space_restored is not None else None,
            remote=self.health.report(),
            inflight_blobs=len(self._inflight),
            rate_bytes_per_second=round(rate, 1),
            eta_seconds=None if eta is None else round(eta, 1),
            complete=complete,
            batch_size=self._batch_size,
            object_info=self._object_info,
            classes={pc.label: by_class[pc].report() for pc in PriorityClass},
            errors=list(self.errors),
            errors_total=self._error_count,
            fetch_latency=self._fetch_latency.report(),
            sources=self.sources.status(),
        )
