"""LFS paths for the FUSE layer: their size (from the pointer) and their content (the object).

A base file is an LFS file when git gives its path ``filter=lfs`` (see
:mod:`artifactfs.lfs.attributes`) and its blob is exactly a pointer (see
:mod:`artifactfs.lfs.pointer`); any other file, pointer-shaped or not, is
shown as its blob, as git-lfs would. The pointer blob comes through the
hydrator like any blob (boosted as soon as the attributes are known: the
size of every LFS file depends on it); its ``size`` is the file's size, so
``stat`` never fetches an object. Until the LFS paths of the published
snapshot are known, base files wait (up to the read timeout) rather than be
shown as their pointers.

Objects are fetched (:mod:`artifactfs.lfs.downloads`) into the blob cache's
LFS namespace (:mod:`artifactfs.lfs.objects`), which stores an object only
once its sha256 and size match the pointer, so wrong bytes are never served.
In the background, objects follow the hydrator's classes by their real size
(then their path): each class's objects start once the hydrator has finished
that class's blobs. Failures there are retried with backoff for as long as
the mount lives, except for objects the server does not have.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path

import trio

from artifactfs.errors import ArtifactFSError
from artifactfs.hydrator.hydrator import BlobUnavailableError, Hydrator
from artifactfs.hydrator.priority import Classifier, PriorityClass
from artifactfs.lfs.attributes import lfs_paths
from artifactfs.lfs.batch import CredentialSource, LfsClient, endpoint_for_remote
from artifactfs.lfs.downloads import LfsDownloads
from artifactfs.lfs.gitconfig import install_lfs_config
from artifactfs.lfs.objects import LfsObjectFile, LfsObjectStore
from artifactfs.lfs.pointer import MAX_POINTER_SIZE, LfsPointer, parse_pointer
from artifactfs.snapshot.entries import EntryKind
from artifactfs.snapshot.tree import Snapshot
from artifactfs.status import LfsReport
from artifactfs.store.blobcache import BlobCache

log = logging.getLogger("artifactfs.lfs")

_RETRY_FIRST = 1.0
_RETRY_MAX = 60.0


def _by_class_and_path(item: tuple[PriorityClass, str, LfsPointer]) -> tuple[PriorityClass, str]:
    return item[0], item[1]


class _Unknown:
    """The pointer blob is not local and the caller would not fetch it."""


UNKNOWN = _Unknown()


class LfsFiles:
    """Sizes and content of the LFS files of the published snapshot."""

    def __init__(
        self,
        hydrator: Hydrator,
        cache: BlobCache,
        store: LfsObjectStore,
        gitdir: Path,
        classifier: Classifier,
        remote_url: str | None,
        credential: CredentialSource,
    ) -> None:
        self._hydrator = hydrator
        self._cache = cache
        self._store = store
        self._gitdir = gitdir
        self._classifier = classifier
        self._remote_url = remote_url
        self._credential = credential
        self._snapshot: Snapshot | None = None
        self._paths_for: Snapshot | None = None
        self._paths: frozenset[str] = frozenset()
        self._computed = trio.Event()
        self._published = trio.Event()
        self._pointers: dict[str, LfsPointer | None] = {}
        """Pointer blob id -> its pointer (None: the blob is not a pointer)."""
        self._downloads = LfsDownloads(store, hydrator.settings.read_timeout)
        self._configured = False
        self._nursery: trio.Nursery | None = None
        self._background_wake = trio.Event()

    # ----------------------------------------------------------------- running

    def publish(self, snapshot: Snapshot) -> None:
        """Adopt a new base snapshot; readers of LFS paths wait until its attributes are known."""
        self._snapshot = snapshot
        self._published.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Work out each published snapshot's LFS paths, then hydrate their objects in the background."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._downloads.run)
            nursery.start_soon(self._background)
            task_status.started()
            delay = _RETRY_FIRST
            while True:
                await self._published.wait()
                self._published = trio.Event()
                snapshot = self._snapshot
                assert snapshot is not None
                if await self._compute(snapshot):
                    delay = _RETRY_FIRST
                    continue
                # Not knowing is not "none": readers keep waiting (up to their timeout) and it is
                # tried again after a backoff, or at once for a newer snapshot.
                with trio.move_on_after(delay):
                    await self._published.wait()
                delay = min(delay * 2, _RETRY_MAX)
                self._published.set()

    async def _compute(self, snapshot: Snapshot) -> bool:
        """Work out ``snapshot``'s LFS paths; False if that failed (a blob or git was not available)."""
        files: list[tuple[str, str]] = []
        attributes: list[str] = []
        lfsconfig: str | None = None
        for count, (path, entry) in enumerate(snapshot.walk()):
            if count % 512 == 0:
                await trio.sleep(0)
            if entry.kind is not EntryKind.FILE:
                continue
            files.append((path, entry.oid))
            name = path.rpartition("/")[2]
            if name == ".gitattributes":
                attributes.append(entry.oid)
            elif path == ".lfsconfig":
                lfsconfig = entry.oid
        paths: set[str] = set()
        try:
            texts = [await self._blob_bytes(oid) for oid in attributes]
            if any(b"lfs" in text for text in texts):
                paths = await trio.to_thread.run_sync(
                    lfs_paths, self._gitdir, snapshot.root_tree_oid, [path for path, _ in files]
                )
            if paths and self._downloads.client is None:
                await self._open_client(lfsconfig)  # before readers of LFS paths are let in
        except (ArtifactFSError, OSError) as error:
            log.error("cannot tell which files are LFS files yet (%s); trying again", error)
            return False
        if self._snapshot is snapshot:
            self._paths = frozenset(paths)
            self._paths_for = snapshot
        self._computed.set()
        self._computed = trio.Event()
        if not paths:
            return True
        if not self._configured:  # once per daemon: the state root may have moved since the last one
            await trio.to_thread.run_sync(install_lfs_config, self._gitdir, self._store.root)
            self._configured = True
        pointer_blobs = [(path, oid) for path, oid in files if path in paths]
        self._hydrator.prefetch_paths(pointer_blobs)  # every LFS file's size depends on its pointer
        log.info("%d LFS files in %s", len(pointer_blobs), snapshot.commit_oid)
        self._background_wake.set()
        return True

    async def _open_client(self, lfsconfig: str | None) -> None:
        if lfsconfig is not None:
            await self._hydrator.ensure(lfsconfig)  # git reads it from the cache, an alternate
        endpoint = await trio.to_thread.run_sync(self._configured_endpoint, lfsconfig)
        if endpoint is None and self._remote_url is not None:
            endpoint = endpoint_for_remote(self._remote_url)
        if endpoint is None:
            self._downloads.endpoint_error = (
                "no LFS endpoint: set lfs.url (a local remote has none of its own)"
            )
            log.error("%s", self._downloads.endpoint_error)
            return
        timeout = min(60.0, self._hydrator.settings.read_timeout)
        client = LfsClient(endpoint, self._remote_url or "", self._credential, timeout=timeout)
        self._downloads.client = client
        log.info("LFS endpoint %s", client.description)

    def _configured_endpoint(self, lfsconfig: str | None) -> str | None:
        """``lfs.url`` (or ``remote.origin.lfsurl``) from the gitdir, then from the tree's ``.lfsconfig``."""
        sources = [["config", "--get", "lfs.url"], ["config", "--get", "remote.origin.lfsurl"]]
        if lfsconfig is not None:
            sources.append(["config", "--blob", lfsconfig, "--get", "lfs.url"])
        for arguments in sources:
            result = subprocess.run(
                ["git", "--git-dir", str(self._gitdir), *arguments], capture_output=True, check=False
            )
            value = result.stdout.decode("utf-8", "replace").strip()
            if result.returncode == 0 and value:
                return value
        return None

    async def _blob_bytes(self, oid: str) -> bytes:
        await self._hydrator.ensure(oid)
        with self._cache.open(oid) as blob:
            return blob.read_all()

    # ----------------------------------------------------------------- the FUSE layer's questions

    async def ready(self) -> None:
        """Wait until the LFS paths of the published snapshot are known; raises
        :class:`BlobUnavailableError` after the read timeout."""
        with trio.move_on_after(self._hydrator.settings.read_timeout):
            while not self.settled():
                await self._computed.wait()
            return
        raise BlobUnavailableError("which files are LFS files is not known yet (see the daemon log)")

    def covers(self, path: str) -> bool:
        """Whether ``path`` has ``filter=lfs`` (after :meth:`ready`)."""
        return path in self._paths

    async def size(self, path: str, blob_oid: str, *, fetch: bool) -> int | None:
        """The size ``path`` shows (a covered path): the pointer's size, or the blob's when it is
        not a pointer; None if that needs the pointer blob and ``fetch`` is false."""
        known = self._hydrator.known_size(blob_oid)
        if known is not None and known >= MAX_POINTER_SIZE:
            return known
        pointer = await self._pointer(blob_oid, path, fetch=fetch)
        if isinstance(pointer, _Unknown):
            return None
        if pointer is None:
            return self._cache.size(blob_oid)
        return pointer.size

    def settled(self) -> bool:
        """Whether the LFS paths of the published snapshot are known (:meth:`ready` would not wait)."""
        return self._snapshot is None or self._paths_for is self._snapshot

    def known_size(self, path: str, blob_oid: str, *, maybe_lfs: bool = False) -> int | None:
        """:meth:`size` without fetching or waiting (for directory listings); with ``maybe_lfs``
        (the LFS paths are not known yet), only a blob too large to be a pointer has a size."""
        known = self._hydrator.known_size(blob_oid)
        if known is not None and known >= MAX_POINTER_SIZE:
            return known
        if maybe_lfs or blob_oid not in self._pointers:
            return None
        pointer = self._pointers[blob_oid]
        return known if pointer is None else pointer.size

    async def open(self, path: str, blob_oid: str) -> LfsObjectFile | None:
        """The object a covered path shows, fetched if needed; None if its blob is not a pointer.
        Raises :class:`BlobUnavailableError` when the object cannot be had."""
        known = self._hydrator.known_size(blob_oid)
        if known is not None and known >= MAX_POINTER_SIZE:
            return None
        pointer = await self._pointer(blob_oid, path, fetch=True)
        if not isinstance(pointer, LfsPointer):
            return None
        return await self._downloads.open(pointer, path)

    async def index_sizes(self, wait: float) -> dict[str, int]:
        """The size git's index must record for each LFS file's blob: its pointer's size, which
        the file shows. git takes a recorded size that differs from ``lstat`` as a change
        without reading the file, so a pointer not had within ``wait`` seconds gets 0 (git
        then compares content, through git-lfs's clean filter)."""
        with trio.move_on_after(wait), contextlib.suppress(BlobUnavailableError):
            await self.ready()
        snapshot = self._paths_for
        if snapshot is None or not self.settled():
            return {}
        blobs: dict[str, str] = {}
        for path in self._paths:
            entry = snapshot.entry(path)
            if entry is not None and entry.kind is EntryKind.FILE:
                blobs.setdefault(entry.oid, path)
        sizes = dict.fromkeys(blobs, 0)

        async def learn(oid: str, path: str) -> None:
            try:
                size = await self.size(path, oid, fetch=True)
            except BlobUnavailableError:
                return
            if size is not None:
                sizes[oid] = size

        with trio.move_on_after(wait):
            async with trio.open_nursery() as nursery:
                for oid, path in blobs.items():
                    nursery.start_soon(learn, oid, path)
        return sizes

    async def _pointer(self, blob_oid: str, path: str, *, fetch: bool) -> LfsPointer | None | _Unknown:
        if blob_oid in self._pointers:
            return self._pointers[blob_oid]
        if not self._cache.contains(blob_oid):
            if not fetch:
                return UNKNOWN
            await self._hydrator.ensure(blob_oid, path=path)
        with self._cache.open(blob_oid) as blob:
            pointer = parse_pointer(blob.read_all()) if blob.size < MAX_POINTER_SIZE else None
        self._pointers[blob_oid] = pointer
        return pointer

    # ----------------------------------------------------------------- the background and prefetch

    async def _background(self) -> None:
        """Hydrate every LFS object of the published snapshot, class by class, retrying failures."""
        delay = _RETRY_FIRST
        while True:
            await self._background_wake.wait()
            self._background_wake = trio.Event()
            if self._hydrator.settings.mode != "background":
                continue
            while True:
                pending = await self._pending_objects(self._snapshot_files())
                if not pending:
                    delay = _RETRY_FIRST
                    break
                failures = self._downloads.failures
                started = False
                for priority_class in sorted({priority_class for priority_class, _ in pending}):
                    await self._hydrator.wait_for_classes(priority_class)
                    of_class = [pointer for item_class, pointer in pending if item_class == priority_class]
                    started = await self._downloads.fetch(of_class) or started
                if not started:
                    # Everything left is in flight elsewhere (a reader, a prefetch): wait, then look again.
                    await self._downloads.wait_in_flight()
                elif self._downloads.failures > failures:
                    await trio.sleep(delay)  # a backoff, not a synchronisation: the remote had trouble
                    delay = min(delay * 2, _RETRY_MAX)

    def prefetch(self, files: Sequence[tuple[str, str]]) -> None:
        """Fetch the objects of the LFS files among ``files`` ((path, blob id)) ahead of the background
        (``artifactfs prefetch``)."""
        assert self._nursery is not None
        self._nursery.start_soon(self._prefetch, files)

    async def _prefetch(self, files: Sequence[tuple[str, str]]) -> None:
        try:
            await self.ready()
        except BlobUnavailableError:
            return  # the log says why; the background tries again
        pending = await self._pending_objects([(path, oid) for path, oid in files if self.covers(path)])
        await self._downloads.fetch([pointer for _, pointer in pending])

    def _snapshot_files(self) -> list[tuple[str, str]]:
        """(path, blob id) of every LFS file of the snapshot whose LFS paths are known."""
        snapshot = self._paths_for
        if snapshot is None:
            return []
        files = []
        for path in sorted(self._paths):
            entry = snapshot.entry(path)
            if entry is not None and entry.kind is EntryKind.FILE:
                files.append((path, entry.oid))
        return files

    async def _pending_objects(
        self, files: Sequence[tuple[str, str]]
    ) -> list[tuple[PriorityClass, LfsPointer]]:
        """(class by real size, pointer) of the objects of ``files`` ((path, blob id) of LFS files)
        not stored and not known missing, by class, then path."""
        pending: dict[str, tuple[PriorityClass, str, LfsPointer]] = {}

        async def consider(path: str, blob_oid: str) -> None:
            try:
                pointer = await self._pointer(blob_oid, path, fetch=True)
            except BlobUnavailableError:
                return  # the hydrator reports it; the file shows its error to readers
            if not isinstance(pointer, LfsPointer) or self._downloads.is_missing(pointer.oid):
                return
            if pointer.oid not in pending and self._store.size(pointer.oid) is None:
                pending[pointer.oid] = (self._classifier.classify(path, pointer.size), path, pointer)

        async with trio.open_nursery() as nursery:  # the pointers arrive together, in the hydrator's batches
            for path, blob_oid in files:
                nursery.start_soon(consider, path, blob_oid)
        return [
            (priority_class, pointer)
            for priority_class, _, pointer in sorted(pending.values(), key=_by_class_and_path)
        ]

    def status(self) -> LfsReport:
        return self._downloads.report(files=len(self._paths))
