"""``mount --recurse-submodules``: each submodule of the tree as a nested mount of its own.

A submodule is a whole repository at one commit, so it is mounted the way the
superproject is: ``artifactfs mount --ref <gitlink commit> <url> <mount>/<path>``
runs once the superproject's mount is ready, on the placeholder directory
that the gitlink shows (empty, as in a clone). The nested mount has its own
daemon, gitdir, overlay and lazy hydration under the same state root, a
detached HEAD at the gitlink's commit, and a ``.git`` file at its root, so
git in the superproject sees a populated submodule and git inside it works
as in any mount. It mounts its own submodules the same way. Before the
superproject's mount goes away, its nested mounts are unmounted.

Which submodules: the gitlink entries of the tree, at their own positions
(``path`` in ``.gitmodules`` is only used to find each one's URL). URLs are
taken as git takes them, relative ones against the origin's; only http(s)
results are mounted (git refuses local ``file`` transports for submodules
too). A submodule that cannot be mounted is logged and left a placeholder:
the superproject's mount never fails because of one. A nested mount follows
nothing: when HEAD moves the superproject to another gitlink commit, the
nested mount stays where it is, like a clone's submodule until
``git submodule update``.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import trio
from dulwich.config import ConfigFile, parse_submodules

from artifactfs.errors import ArtifactFSError
from artifactfs.remote.url import RemoteURL
from artifactfs.snapshot.entries import EntryKind
from artifactfs.snapshot.tree import Snapshot

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 300.0


@dataclass(frozen=True)
class Submodule:
    name: str
    path: str
    commit: str
    url: str


def submodules_of(snapshot: Snapshot, gitmodules: bytes | None, origin: RemoteURL) -> list[Submodule]:
    """The tree's gitlinks that ``.gitmodules`` gives an http(s) URL for (others are logged)."""
    gitlinks = {path: entry.oid for path, entry in snapshot.walk() if entry.kind is EntryKind.GITLINK}
    if not gitlinks:
        return []
    urls: dict[str, tuple[str, str]] = {}
    if gitmodules is not None:
        try:
            config = ConfigFile.from_file(io.BytesIO(gitmodules))
            for raw_path, raw_url, raw_name in parse_submodules(config):
                urls[raw_path.decode("utf-8", "replace").strip("/")] = (
                    raw_name.decode("utf-8", "replace"),
                    raw_url.decode("utf-8", "replace"),
                )
        except (ValueError, KeyError) as error:
            log.warning("cannot read .gitmodules (%s): submodules stay placeholders", error)
    found = []
    for path, commit in sorted(gitlinks.items()):
        name, configured = urls.get(path, (path, ""))
        url = absolute_url(configured, origin)
        if url is None:
            log.warning("submodule %s has no http(s) URL in .gitmodules: left a placeholder", path)
            continue
        found.append(Submodule(name, path, commit, url))
    return found


def absolute_url(url: str, origin: RemoteURL) -> str | None:
    """``url`` as git resolves a submodule URL (``./``, ``../``: against the origin); None unless http(s)."""
    if url.startswith(("./", "../")):
        if origin.kind != "http":
            return None
        parts = urlsplit(origin.url)
        path = posixpath.normpath(posixpath.join(parts.path.rstrip("/") + "/", url))
        url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    try:
        parsed = RemoteURL.parse(url)
    except ArtifactFSError:
        return None
    return parsed.url if parsed.kind == "http" and parsed.username is None else None


class NestedMounts:
    """The nested mounts one mount made; mounted one at a time, unmounted together."""

    def __init__(self, mountpoint: Path, root: Path, extra_arguments: list[str]) -> None:
        self._mountpoint = mountpoint
        self._root = root
        self._extra_arguments = extra_arguments
        self._mounted: list[Path] = []
        self.states: dict[str, str] = {}
        """Each submodule's path and what became of it, for ``artifactfs status``."""

    async def mount_all(self, submodules: list[Submodule]) -> list[Submodule]:
        """Mount each of ``submodules``; returns those mounted."""
        mounted = []
        for submodule in submodules:
            self.states[submodule.path] = "mounting"
        for submodule in submodules:
            target = self._mountpoint / submodule.path
            error = await self._run(
                "mount",
                "--ref",
                submodule.commit,
                "--recurse-submodules",
                *self._extra_arguments,
                submodule.url,
                str(target),
            )
            if error is None:
                self._mounted.append(target)
                mounted.append(submodule)
                self.states[submodule.path] = "mounted"
                log.info("mounted submodule %s (%s) at %s", submodule.path, submodule.commit, target)
            else:
                self.states[submodule.path] = f"failed: {error}"
                log.warning("could not mount submodule %s: %s", submodule.path, error)
        return mounted

    async def unmount_all(self) -> None:
        """Unmount every nested mount (deepest last mounted first), before the mount containing them."""
        while self._mounted:
            target = self._mounted.pop()
            error = await self._run("unmount", str(target))
            if error is not None:
                log.warning("could not unmount submodule at %s: %s", target, error)

    async def _run(self, *arguments: str) -> str | None:
        """Run one ``artifactfs`` command; its error line, or None on success."""
        command = [sys.executable, "-m", "artifactfs", *arguments]
        with trio.move_on_after(COMMAND_TIMEOUT):
            result = await trio.run_process(
                command,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                stdin=b"",
                env={**os.environ, "ARTIFACTFS_ROOT": str(self._root)},
            )
            if result.returncode == 0:
                return None
            lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
            return lines[-1] if lines else f"exit status {result.returncode}"
        return f"no answer within {COMMAND_TIMEOUT:g}s"
