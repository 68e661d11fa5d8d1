"""Following HEAD: when git in the mount moves HEAD, the mount shows the new commit's tree.

:class:`HeadFollower` owns the mount's current snapshot. It polls the
gitdir's HEAD, waits until the git command that moved it is done, reconciles
the overlay with the new tree (see :meth:`OverlayView.reconcile`), publishes
the new snapshot to the FUSE layer and lets the hydrator track its blobs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import trio

from artifactfs.errors import ArtifactFSError
from artifactfs.fs.operations import Operations
from artifactfs.hydrator.hydrator import Hydrator
from artifactfs.overlay.view import OverlayView
from artifactfs.snapshot.tree import Snapshot, TreeCache
from artifactfs.store.blobcache import blob_id_of_file
from artifactfs.store.gitdir import GitDir

log = logging.getLogger(__name__)

HEAD_POLL_INTERVAL = 0.1


class HeadFollower:
    """The mount's current snapshot, and the loop that moves it to where git moved HEAD."""

    def __init__(
        self,
        gitdir: GitDir,
        trees: TreeCache,
        snapshot: Snapshot,
        view: OverlayView,
        operations: Operations,
        hydrator: Hydrator,
    ) -> None:
        self.gitdir = gitdir
        self.trees = trees
        self.snapshot = snapshot
        """The tree the mount shows now."""
        self.view = view
        self.operations = operations
        self.hydrator = hydrator

    async def run(self) -> None:
        """Publish the tree git moved HEAD to, once the git command that moved it is done."""
        gitdir = self.gitdir
        while True:
            await trio.sleep(HEAD_POLL_INTERVAL)
            commit = gitdir.head_oid()
            if commit is None or commit == self.snapshot.commit_oid or gitdir.git_busy():
                continue
            try:
                tree = gitdir.commit_tree(commit)
            except KeyError:
                continue  # the commit object is not visible yet
            snapshot = Snapshot(commit, tree, self.trees)
            report = self.view.reconcile(
                snapshot, await self._hashed_data_files(), busy=self.operations.paths_open_for_writing()
            )
            self.snapshot = snapshot
            await self.operations.publish(snapshot, retimed=report.retimed)
            log.info(
                "HEAD moved to %s: %d overlay entries dropped, %d converted, %d kept",
                commit,
                report.dropped,
                report.converted,
                report.kept,
            )
            await self.hydrator.track(snapshot, may_be_local=True)

    async def _hashed_data_files(self) -> Callable[[Path], str]:
        """Blob ids of the overlay data files, hashed in a worker thread, for :meth:`OverlayView.reconcile`.

        After a checkout there are thousands of them; hashing them on the event
        loop would hold every FUSE request. Ids computed while any file was
        opened or closed for writing, or truncated, are not trusted: those are
        hashed again during the reconcile.
        """
        operations = self.operations
        events = operations.write_events
        paths = self.view.data_paths()

        def hash_all() -> dict[Path, str]:
            hashes = {}
            for path in paths:
                with contextlib.suppress(OSError, ArtifactFSError):  # removed meanwhile: not reconciled
                    hashes[path] = blob_id_of_file(path)
            return hashes

        hashes = await trio.to_thread.run_sync(hash_all)
        if operations.write_events != events:
            hashes.clear()

        def blob_oid_of(path: Path) -> str:
            known = hashes.get(path)
            return known if known is not None else blob_id_of_file(path)

        return blob_oid_of
