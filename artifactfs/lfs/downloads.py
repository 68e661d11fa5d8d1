"""LFS objects in flight: a reader's own requests, and batches for the background and prefetch.

This module owns the rule that a reader never waits behind a batch (its
object gets a request of its own, and a batch skips an object a reader
stored meanwhile), that one failing object fails alone, and what a reader is
told when its object cannot be had: EIO with the reason (ENOSPC for a full
disk), at once, and again only after a new attempt. Objects the server does
not have are remembered and never asked for again.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from artifactfs.errors import CorruptObjectError, MissingObjectError, TransientRemoteError
from artifactfs.hydrator.hydrator import BlobUnavailableError
from artifactfs.lfs.batch import LfsClient
from artifactfs.lfs.objects import LfsObjectFile, LfsObjectStore
from artifactfs.lfs.pointer import LfsPointer
from artifactfs.status import LfsReport

log = logging.getLogger("artifactfs.lfs")

BATCH = 32
"""Objects named in one batch request."""


@dataclass
class _Download:
    done: trio.Event
    error: str | None = None
    errno_value: int = errno.EIO


class LfsDownloads:
    """Fetches objects into ``store`` through ``client`` (set once the endpoint is known)."""

    def __init__(self, store: LfsObjectStore, read_timeout: float) -> None:
        self._store = store
        self._read_timeout = read_timeout
        self.client: LfsClient | None = None
        self.endpoint_error = "no LFS endpoint known yet"
        self._batches: dict[str, _Download] = {}
        """Objects in flight in background or prefetch batches."""
        self._demand: dict[str, _Download] = {}
        """Objects in flight for a reader, each in a request of its own."""
        self._missing: dict[str, str] = {}
        """Objects the server does not have, with its message."""
        self._nursery: trio.Nursery | None = None
        self.downloaded = 0
        self.failures = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the readers' requests until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            if self.client is not None:
                with trio.CancelScope(shield=True):
                    await self.client.aclose()

    def is_missing(self, oid: str) -> bool:
        return oid in self._missing

    async def open(self, pointer: LfsPointer, path: str) -> LfsObjectFile:
        """The stored object, fetched first if needed; raises :class:`BlobUnavailableError`
        when it cannot be had (at once after a failed attempt, or after the read timeout)."""
        with trio.move_on_after(self._read_timeout):
            while True:
                try:
                    return self._store.open(pointer.oid, pointer.size)
                except FileNotFoundError:
                    pass
                except CorruptObjectError as error:
                    raise BlobUnavailableError(f"LFS object of {path}: {error}") from None
                if pointer.oid in self._missing:
                    raise BlobUnavailableError(f"LFS object of {path}: {self._missing[pointer.oid]}")
                download = self._demand.get(pointer.oid) or self._start(pointer)
                await download.done.wait()
                if download.error is not None and self._store.size(pointer.oid) is None:
                    log.error("read of %s failed: %s", path, download.error)
                    raise BlobUnavailableError(
                        f"LFS object of {path}: {download.error}", errno_value=download.errno_value
                    )
        raise BlobUnavailableError(f"LFS object of {path}: timed out after {self._read_timeout:g}s")

    def _start(self, pointer: LfsPointer) -> _Download:
        download = self._demand[pointer.oid] = _Download(trio.Event())
        assert self._nursery is not None
        self._nursery.start_soon(self._download, [pointer], self._demand)
        return download

    async def fetch(self, pointers: Sequence[LfsPointer]) -> bool:
        """Download, in batch requests, those objects not stored, not in flight and not known
        missing; whether any download was started."""
        batch: list[LfsPointer] = []
        started = False
        for pointer in pointers:
            oid = pointer.oid
            if oid in self._batches or oid in self._demand or oid in self._missing:
                continue
            if self._store.size(oid) is not None:
                continue
            started = True
            self._batches[oid] = _Download(trio.Event())
            batch.append(pointer)
            if len(batch) == BATCH:
                await self._download(batch, self._batches)
                batch = []
        if batch:
            await self._download(batch, self._batches)
        return started

    async def wait_in_flight(self) -> None:
        """Wait until the downloads in flight now have ended."""
        for download in [*self._batches.values(), *self._demand.values()]:
            await download.done.wait()

    async def _download(self, pointers: Sequence[LfsPointer], registry: dict[str, _Download]) -> None:
        """Fetch ``pointers``' objects (entries of ``registry``) after one batch request; an object
        a reader's own request stored meanwhile is not fetched again."""
        try:
            if self.client is None:
                raise TransientRemoteError(self.endpoint_error)
            located = await self.client.locate(pointers)
        except (TransientRemoteError, OSError) as error:
            for pointer in pointers:
                self._failed(registry, pointer.oid, error)
            return
        for pointer in pointers:
            answer = located[pointer.oid]
            try:
                if self._store.size(pointer.oid) is None:
                    if isinstance(answer, Exception):
                        raise answer
                    await self.client.fetch(pointer, answer, self._store)
                    self.downloaded += 1
                self._finish(registry, pointer.oid, None)
            except Exception as error:  # one object fails; the daemon and the batch go on
                self._failed(registry, pointer.oid, error)

    def _failed(self, registry: dict[str, _Download], oid: str, error: Exception) -> None:
        self.failures += 1
        message = str(error) or type(error).__name__
        if isinstance(error, MissingObjectError):
            self._missing[oid] = message
        log.warning("LFS object %s not fetched: %s", oid, message)
        no_space = isinstance(error, OSError) and error.errno == errno.ENOSPC
        self._finish(registry, oid, message, errno.ENOSPC if no_space else errno.EIO)

    @staticmethod
    def _finish(
        registry: dict[str, _Download], oid: str, error: str | None, errno_value: int = errno.EIO
    ) -> None:
        download = registry.pop(oid, None)
        if download is not None:
            download.error = error
            download.errno_value = errno_value
            download.done.set()

    def report(self, *, files: int) -> LfsReport:
        """The status of LFS in a mount whose tree has ``files`` LFS files."""
        return LfsReport(
            files=files,
            downloaded=self.downloaded,
            failures=self.failures,
            missing=len(self._missing),
            endpoint=self.client.description if self.client is not None else None,
        )
