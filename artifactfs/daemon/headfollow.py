"""Following HEAD: when git in the mount moves HEAD, the mount shows the new commit's tree.

:class:`HeadFollower` owns the mount's current snapshot. It polls the
gitdir's HEAD, waits until the git command that moved it is done, reconciles
the overlay with the new tree (see :meth:`OverlayView.reconcile`), publishes
the new snapshot to the FUSE layer and lets the hydrator track its blobs.
"""

from __future__ import annotations

import logging

import trio

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
                snapshot, blob_id_of_file, busy=self.operations.paths_open_for_writing()
            )
            self.snapshot = snapshot
            self.operations.publish(snapshot, attributes_changed=bool(report.dropped or report.converted))
            log.info(
                "HEAD moved to %s: %d overlay entries dropped, %d converted, %d kept",
                commit,
                report.dropped,
                report.converted,
                report.kept,
            )
            await self.hydrator.track(snapshot, may_be_local=True)
