"""What a running mount answers on its control socket: status, unmount, prefetch, credential, record.

:mod:`artifactfs.daemon.control` carries the requests; this module decides
what each operation does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from artifactfs.daemon.gitserve import GitService
from artifactfs.daemon.headfollow import HeadFollower
from artifactfs.errors import ArtifactFSError
from artifactfs.hydrator.hydrator import Hydrator
from artifactfs.lfs.files import LfsFiles
from artifactfs.snapshot.pathspec import matching_files
from artifactfs.status import MountStatus


class ControlCommands:
    """Answers one control request at a time (see :func:`artifactfs.daemon.control.serve`)."""

    def __init__(
        self,
        status: Callable[[], MountStatus],
        request_shutdown: Callable[[], None],
        head: HeadFollower,
        hydrator: Hydrator,
        lfs: LfsFiles,
        git_service: GitService,
    ) -> None:
        self.status = status
        self.request_shutdown = request_shutdown
        self.head = head
        self.hydrator = hydrator
        self.lfs = lfs
        self.git_service = git_service

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "status":
            return {"ok": True, **self.status().to_json()}
        if op == "unmount":
            self.request_shutdown()
            return {"ok": True, "pid": os.getpid()}
        if op == "prefetch":
            paths = request.get("paths")
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise ArtifactFSError("prefetch needs a list of paths")
            return {"ok": True, "boosted": self.prefetch(paths)}
        if op == "credential":
            return {"ok": True, **await self.git_service.credential(request)}
        if op == "record":
            return {"ok": True, "record": [arrival.__dict__ for arrival in self.hydrator.record]}
        raise ArtifactFSError(f"unknown control operation {op!r}")

    def prefetch(self, pathspecs: list[str]) -> int:
        """Raise every blob under or matching ``pathspecs`` to the front of the queue."""
        files = matching_files(self.head.snapshot, pathspecs)
        self.lfs.prefetch(files)  # the objects of the LFS files among them
        return self.hydrator.boost([oid for _, oid in files])
