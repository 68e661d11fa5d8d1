"""git's index for a mount: prepared once at start-up, its sizes corrected while mounted.

The prepared index (see :mod:`artifactfs.worktree.prepared`) lets the first
``git status`` trust every unmodified file without reading it. Sizes in it
come from ``object-info`` or are 0; when hydration verifies a blob whose size
differs from what was reported, :meth:`IndexKeeper.size_corrected` tells the
kernel, git's fsmonitor and the index.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable
from pathlib import Path

import trio

from artifactfs.daemon.headfollow import HeadFollower
from artifactfs.errors import ArtifactFSError
from artifactfs.fs.operations import BASE_MTIME_NS, Operations
from artifactfs.hydrator.hydrator import BlobUnavailableError, Hydrator
from artifactfs.hydrator.settings import HydrationMode
from artifactfs.lfs.files import LfsFiles
from artifactfs.overlay.view import OverlayView
from artifactfs.snapshot.tree import Snapshot
from artifactfs.store.gitdir import GitDir
from artifactfs.store.loose import LooseBlobFile
from artifactfs.worktree.index import IndexLockedError, correct_index_sizes
from artifactfs.worktree.prepared import TreeListing, list_tree, write_prepared_index
from artifactfs.worktree.untracked import converting_paths, gitignore_id

log = logging.getLogger(__name__)

INDEX_CORRECTION_INTERVAL = 0.5
INDEX_SIZE_WAIT = 2.0
"""Seconds the prepared index waits for object-info sizes; git never needs them while nothing changed."""


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


class IndexKeeper:
    """Writes the mount's prepared index and keeps its sizes right."""

    def __init__(
        self,
        mountpoint: Path,
        hydration_mode: HydrationMode,
        gitdir: GitDir,
        hydrator: Hydrator,
        view: OverlayView,
        operations: Operations,
        head: HeadFollower,
        lfs: LfsFiles,
        publish_token: str,
    ) -> None:
        self._mountpoint = mountpoint
        self._hydration_mode = hydration_mode
        self.gitdir = gitdir
        self.hydrator = hydrator
        self.view = view
        self.operations = operations
        self._head = head
        self.lfs = lfs
        self._publish_token = publish_token
        self._index_sizes: dict[str, int] = {}
        """Verified sizes that differ from what the index may hold (see size_corrected)."""
        self._index_prepared = False
        self._index_sizes_failing = False

    @property
    def snapshot(self) -> Snapshot:
        return self._head.snapshot

    async def prepare(self, fresh: bool) -> None:
        """Write an index git trusts at once (see :mod:`artifactfs.worktree.prepared`).

        Skipped when git already keeps an index for this gitdir. Runs after the
        mount is ready; nothing but git needs the index. Sizes come from
        object-info when the server offers it, for at most a short wait: an
        unknown size is written as 0 and status never looks at it.
        """
        gitdir = self.gitdir
        if not fresh and (gitdir.path / "index").exists():
            return
        listing = await trio.to_thread.run_sync(list_tree, self.snapshot)
        blob_oids = listing.blob_oids()
        exclude_blobs = [
            (_join(directory, name), oid)
            for name, files in ((".gitignore", listing.gitignores), (".gitattributes", listing.gitattributes))
            for directory, oid in files.items()
        ]
        if self._hydration_mode == "none":
            # git reads every .gitignore on every status: fetch them in one request, not one per read.
            # (Background hydration takes them early anyway, with the config class.)
            self.hydrator.prefetch_paths(exclude_blobs)
        if self.hydrator.object_info_available:
            with trio.move_on_after(INDEX_SIZE_WAIT):
                await self.hydrator.sizes(blob_oids, partial=True)
        gitignore_ids = await self._gitignore_ids(listing)
        sizes = {oid: size for oid in blob_oids if (size := self.hydrator.known_size(oid)) is not None}
        # an LFS file shows its object, not its pointer blob
        sizes.update(await self.lfs.index_sizes(INDEX_SIZE_WAIT))
        changed = [row.path for row in self.view.rows()]
        await trio.to_thread.run_sync(
            functools.partial(
                write_prepared_index,
                listing,
                gitdir.path,
                self._mountpoint,
                mtime_ns=BASE_MTIME_NS,
                sizes=sizes,
                token=self._publish_token,
                changed=changed,
                gitignore_ids=gitignore_ids,
                owner=gitdir.owner,
            )
        )

    async def _gitignore_ids(self, listing: TreeListing) -> dict[str, str]:
        """The id git will compute for each ``.gitignore`` (see :mod:`artifactfs.worktree.untracked`).

        Needs the ``.gitattributes`` blobs (git reads them from the gitdir,
        where the blob cache is an alternate), and the content of each
        ``.gitignore`` git converts; each is waited for briefly. A guess that
        turns out wrong only makes git list that directory's subtree once.
        """
        if not listing.gitignores:
            return {}
        paths = {directory: _join(directory, ".gitignore") for directory in listing.gitignores}
        converted: set[str] = set()
        contents: dict[str, bytes] = {}
        with trio.move_on_after(INDEX_SIZE_WAIT):
            await self._hydrate_all(listing.gitattributes.values())
            try:
                # Abandoned on timeout: git may be waiting on a lazy fetch of a .gitattributes blob.
                converted = await trio.to_thread.run_sync(
                    functools.partial(
                        converting_paths,
                        self.gitdir.path,
                        self.snapshot.root_tree_oid,
                        sorted(paths.values()),
                        self.gitdir.owner,
                    ),
                    abandon_on_cancel=True,
                )
            except ArtifactFSError as error:
                log.warning("cannot tell which .gitignore files git converts (%s); guessing none", error)
            for directory, oid in listing.gitignores.items():
                if paths[directory] in converted:
                    with contextlib.suppress(BlobUnavailableError, OSError, ValueError):  # then a guess
                        with LooseBlobFile.open(await self.hydrator.ensure(oid)) as blob:
                            contents[directory] = blob.read_all()
        return {
            directory: gitignore_id(oid, contents.get(directory), paths[directory] in converted)
            for directory, oid in listing.gitignores.items()
        }

    async def _hydrate_all(self, oids: Iterable[str]) -> None:
        """Wait until each blob is local or has failed; failures are the readers' to report."""
        hydrator = self.hydrator

        async def one(oid: str) -> None:
            with contextlib.suppress(BlobUnavailableError):
                await hydrator.ensure(oid)

        async with trio.open_nursery() as nursery:
            for oid in oids:
                nursery.start_soon(one, oid)

    def size_corrected(self, oid: str, size: int) -> None:
        """A blob's verified size differs from the one reported: tell the kernel, git's index and fsmonitor."""
        paths = [path for path, entry in self.snapshot.walk() if entry.oid == oid]
        self.operations.attributes_changed(paths)
        try:
            for path in paths:
                self.view.note_modified(path)
        except (
            ArtifactFSError,
            OSError,
        ) as error:  # a full disk, a read-only overlay: the kernel is fixed at least
            log.warning("could not journal the corrected size of %s: %s", oid, error)
        self._index_sizes[oid] = size
        self._apply_index_sizes()  # at once (rare, and a few ms): the next git status must see it

    def _apply_index_sizes(self) -> None:
        """Write corrected sizes into git's index, once it is prepared and no git command holds it."""
        if not self._index_sizes or not self._index_prepared or self.gitdir.git_busy():
            return
        pending = dict(self._index_sizes)
        try:
            correct_index_sizes(self.gitdir.path, pending, self.gitdir.owner)
        except IndexLockedError:
            return
        except OSError as error:  # a full disk: try again later (said once, not every round)
            (log.debug if self._index_sizes_failing else log.warning)(
                "could not correct sizes in git's index: %s", error
            )
            self._index_sizes_failing = True
            return
        self._index_sizes_failing = False
        for oid in pending:
            self._index_sizes.pop(oid, None)

    async def correct_sizes(self) -> None:
        """Retry corrections that found the index busy (or not yet prepared)."""
        self._index_prepared = True
        while True:
            self._apply_index_sizes()
            await trio.sleep(INDEX_CORRECTION_INTERVAL)
