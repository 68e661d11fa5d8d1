"""Getting a mount's first tree: resolving the ref and fetching the tip blobless.

Time to mount must not grow with history, so the first fetch asks for the tip
commit alone (``deepen 1``) with ``filter blob:none``: one commit and its trees.
The pack is parsed in memory (the trees are needed right away) while the same
bytes stream into ``git index-pack`` for the gitdir. The rest of the history
arrives later, in :func:`complete_history`.

A short commit id that names no branch or tag tip is looked up in the
remote's commit graph: one fetch with ``filter tree:0`` (commits and tags
only, no trees, no blobs) of every branch and tag, parsed in memory and not
stored. That costs a moment per thousand commits, and only such mounts pay it.

A server without ``filter`` sends the tip's blobs too (``deepen 1`` alone).
The tree is published as soon as every tree of the tip has arrived, in
whatever order (git writes a tagged tip's trees before its blobs, an untagged
tip's objects in traversal order); the commit and trees
go into the gitdir as a pack of their own, and the still-open stream is
handed on (:class:`BlobStream`) for the hydrator to store its blobs in the
blob cache. The history is then not fetched at all: without a filter every
older version of every file would come with it. The gitdir stays shallow at
depth 1, like ``git clone --depth 1``, and ``git fetch --deepen`` or
``--unshallow`` in the mount fetches more when wanted.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncGenerator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from artifactfs.errors import CorruptObjectError, ProtocolError, UnknownRefError
from artifactfs.objects import OID_HEX_SIZE, commit_tree, is_abbreviated_oid, is_oid
from artifactfs.remote import Ref, RemoteSession
from artifactfs.retry import HISTORY_BACKOFF, RemoteHealth, retry_forever
from artifactfs.state import Owner
from artifactfs.store.gitdir import GitDir
from artifactfs.store.packstream import PackObject, PackStreamParser
from artifactfs.store.packwrite import PackWriter

log = logging.getLogger(__name__)

INFINITE_DEPTH = 0x7FFFFFFF


@dataclass(frozen=True)
class ResolvedRef:
    commit: str
    branch: str | None
    """Set when the mount should check out a local branch of that name; None for a detached HEAD."""


def resolve_ref(refs: Sequence[Ref], wanted: str | None) -> ResolvedRef:
    """Find the commit to mount: the remote's HEAD, a branch, a tag, or a full commit id."""
    by_name = {ref.name: ref for ref in refs}
    if wanted is None:
        head = by_name.get("HEAD")
        if head is None:
            raise UnknownRefError("the remote has no HEAD (empty repository?); pass --ref")
        target = head.symref_target
        branch = target[len("refs/heads/") :] if target and target.startswith("refs/heads/") else None
        return ResolvedRef(head.oid, branch)
    for candidate, is_branch in (
        (wanted, wanted.startswith("refs/heads/")),
        (f"refs/heads/{wanted}", True),
        (f"refs/tags/{wanted}", False),
    ):
        ref = by_name.get(candidate)
        if ref is not None:
            branch = candidate[len("refs/heads/") :] if is_branch else None
            return ResolvedRef(ref.peeled or ref.oid, branch)
    if is_oid(wanted):
        return ResolvedRef(wanted, None)
    raise UnknownRefError(f"ref {wanted!r} not found on the remote")


async def resolve_wanted(session: RemoteSession, refs: Sequence[Ref], wanted: str | None) -> ResolvedRef:
    """:func:`resolve_ref`, and also a short commit id (4 to 39 hex digits) reachable from a branch or tag."""
    try:
        return resolve_ref(refs, wanted)
    except UnknownRefError:
        if wanted is None or not is_abbreviated_oid(wanted.lower()):
            raise
    prefix = wanted.lower()
    matches = {oid for ref in refs for oid in (ref.peeled, ref.oid) if oid and oid.startswith(prefix)}
    if not matches:
        matches = await _commits_with_prefix(session, refs, prefix)
    if len(matches) > 1:
        shown = ", ".join(sorted(matches)[:5])
        raise UnknownRefError(f"short commit id {wanted!r} is ambiguous ({shown}); give more digits")
    if not matches:
        raise UnknownRefError(
            f"{wanted!r} is not a branch, a tag, or a commit reachable from one on the remote"
        )
    return ResolvedRef(matches.pop(), None)


async def _commits_with_prefix(session: RemoteSession, refs: Sequence[Ref], prefix: str) -> set[str]:
    """Ids of the remote's commits that start with ``prefix``: the commit graph, fetched without trees."""
    tips = sorted({ref.oid for ref in refs if ref.name.startswith(("refs/heads/", "refs/tags/"))})
    if not tips:
        return set()
    try:
        fetch = session.fetch(tips, filter_spec="tree:0")
    except ProtocolError as error:
        raise UnknownRefError(
            f"{prefix!r} names no branch or tag tip, and the remote cannot send its commit graph alone "
            f"({error}); give the full commit id"
        ) from None
    parser = PackStreamParser()
    found: set[str] = set()
    async with fetch as response:
        async for chunk in response.pack_chunks(checksum=False):
            found.update(_matching_commits(parser.feed(chunk), prefix))
        found.update(_matching_commits(parser.finish(), prefix))
    return found


def _matching_commits(objects: Sequence[PackObject], prefix: str) -> set[str]:
    return {obj.oid for obj in objects if obj.type_name == "commit" and obj.oid.startswith(prefix)}


@dataclass
class BlobStream:
    """The rest of a tip pack from a server without ``filter``: its blobs, still arriving.

    ``arrived`` holds blobs parsed before the last tree; ``chunks`` (None once
    the pack ended) yields the rest for ``parser``. The response stays open
    until the exit stack given to :func:`fetch_tip` closes.
    """

    parser: PackStreamParser
    arrived: list[PackObject]
    chunks: AsyncGenerator[bytes, None] | None


@dataclass
class Tip:
    commit: str
    root_tree: str
    trees: dict[str, bytes]
    shallow: list[str]
    blobs: BlobStream | None = field(default=None)
    """Set when the tip came with its blobs (a server without ``filter``)."""


async def fetch_tip(
    session: RemoteSession, gitdir: GitDir, commit: str, *, spool_dir: Path, streams: AsyncExitStack
) -> Tip:
    """Fetch one commit and all its trees, index them into ``gitdir`` and return the trees.

    Without ``filter`` on the server, the blobs follow in the same pack:
    :func:`_fetch_tip_with_blobs` returns once the trees are in, keeping the
    response open in ``streams`` (large blobs spool to ``spool_dir``).
    """
    if not session.supports("fetch", "filter"):
        return await _fetch_tip_with_blobs(session, gitdir, commit, spool_dir, streams)
    parser = PackStreamParser()
    trees: dict[str, bytes] = {}
    commits: dict[str, bytes] = {}
    async with (
        session.fetch([commit], filter_spec="blob:none", depth=1) as response,
        gitdir.promisor_pack_writer() as pack,
    ):
        async for chunk in response.pack_chunks(checksum=False):
            await pack.write(chunk)
            for obj in parser.feed(chunk):
                _collect(obj.type_name, obj.oid, obj.data, trees, commits)
        for obj in parser.finish():
            _collect(obj.type_name, obj.oid, obj.data, trees, commits)
        shallow = [oid for kind, oid in response.shallow_info if kind == "shallow"]
    raw_commit = commits.get(commit)
    if raw_commit is None:
        raise ProtocolError(f"the remote did not send commit {commit}")
    root_tree = commit_tree(raw_commit)
    if root_tree not in trees:
        raise ProtocolError(f"the remote did not send the root tree of {commit}")
    return Tip(commit, root_tree, trees, shallow)


class TreeTracker:
    """Knows when every tree reachable from one commit has arrived, whatever their order."""

    def __init__(self, commit: str) -> None:
        self.commit = commit
        self.root_tree: str | None = None
        self.trees: dict[str, bytes] = {}
        self.commits: dict[str, bytes] = {}
        self._missing: set[str] = set()

    @property
    def complete(self) -> bool:
        return self.root_tree is not None and not self._missing

    def add(self, obj: PackObject) -> None:
        if obj.data is None:
            return
        if obj.type_name == "commit":
            self.commits[obj.oid] = obj.data
            if obj.oid == self.commit:
                named = obj.data[5 : 5 + OID_HEX_SIZE].decode("ascii", "replace")
                if not obj.data.startswith(b"tree ") or not is_oid(named):
                    raise ProtocolError(f"commit {obj.oid} does not start with its tree")
                self.root_tree = named
                self._need(self.root_tree)
        elif obj.type_name == "tree":
            self.trees[obj.oid] = obj.data
            if obj.oid in self._missing:
                self._missing.discard(obj.oid)
                self._need_children(obj.data)

    def _need(self, oid: str) -> None:
        raw = self.trees.get(oid)
        if raw is None:
            self._missing.add(oid)
        else:
            self._need_children(raw)

    def _need_children(self, raw: bytes) -> None:
        position = 0
        while position < len(raw):
            space = raw.index(b" ", position)
            nul = raw.index(b"\0", space)
            if raw[position:space] == b"40000":
                self._need(raw[nul + 1 : nul + 21].hex())
            position = nul + 21


async def _fetch_tip_with_blobs(
    session: RemoteSession, gitdir: GitDir, commit: str, spool_dir: Path, streams: AsyncExitStack
) -> Tip:
    """A depth-1 fetch with blobs: return once the trees are in, leaving the blobs streaming."""
    parser = PackStreamParser(spool_dir=spool_dir)
    tracker = TreeTracker(commit)
    blobs: list[PackObject] = []
    response = await streams.enter_async_context(session.fetch([commit], depth=1))
    pack_chunks = response.pack_chunks(checksum=False)
    streams.push_async_callback(pack_chunks.aclose)
    chunks: AsyncGenerator[bytes, None] | None = pack_chunks

    def take(objects: list[PackObject]) -> None:
        for obj in objects:
            if obj.type_name == "blob":
                blobs.append(obj)
            else:
                tracker.add(obj)

    async for chunk in pack_chunks:
        take(parser.feed(chunk))
        if tracker.complete:
            break
    else:
        take(parser.finish())
        chunks = None
    if tracker.root_tree is None:
        raise ProtocolError(f"the remote did not send commit {commit}")
    if not tracker.complete:
        raise ProtocolError(f"the remote did not send every tree of {commit}")
    objects = [("commit", tracker.commits[commit]), *(("tree", raw) for raw in tracker.trees.values())]
    pieces: list[bytes] = []
    writer = PackWriter(pieces.append, len(objects))
    for type_name, raw in objects:
        writer.add_bytes(type_name, raw)
    writer.finish()
    async with gitdir.promisor_pack_writer() as pack:
        await pack.write(b"".join(pieces))
    shallow = [oid for kind, oid in response.shallow_info if kind == "shallow"]
    log.info("tip trees in; its blobs keep streaming (the remote has no filter)")
    return Tip(commit, tracker.root_tree, tracker.trees, shallow, BlobStream(parser, blobs, chunks))


def _collect(
    type_name: str, oid: str, data: bytes | None, trees: dict[str, bytes], commits: dict[str, bytes]
) -> None:
    if data is None:
        return
    if type_name == "tree":
        trees[oid] = data
    elif type_name == "commit":
        commits[oid] = data


async def create_gitdir(
    session: RemoteSession,
    path: Path,
    remote_display: str,
    resolved: ResolvedRef,
    refs: Sequence[Ref],
    *,
    spool_dir: Path,
    streams: AsyncExitStack,
    owner: Owner | None = None,
) -> tuple[GitDir, Tip]:
    """Build a complete gitdir at ``path`` for ``resolved`` (kept for ``owner``), or leave nothing behind
    (see :func:`fetch_tip` for ``spool_dir`` and ``streams``).

    Every branch of the remote gets its remote-tracking ref at once, so
    ``git checkout <branch>`` works from the first moment: a tip that is not
    local yet is fetched by git's lazy fetch until :func:`fetch_branch_tips`
    brings them all.
    """
    staging = path.with_name(path.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        gitdir = GitDir.create(staging, remote_display, owner)
        tip = await fetch_tip(session, gitdir, resolved.commit, spool_dir=spool_dir, streams=streams)
        gitdir.write_shallow(tip.shallow)
        gitdir.set_head(resolved.branch, resolved.commit)
        _write_remote_branches(gitdir, refs)
        if resolved.branch is not None:
            gitdir.update_ref(f"refs/remotes/origin/{resolved.branch}", resolved.commit)
            gitdir.set_upstream(resolved.branch)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return GitDir(path, owner), tip


def _write_remote_branches(gitdir: GitDir, refs: Sequence[Ref]) -> None:
    """Point ``refs/remotes/origin/*`` (and ``origin/HEAD``) at the remote's branches, as a clone does."""
    for ref in refs:
        if ref.name.startswith("refs/heads/"):
            gitdir.update_ref("refs/remotes/origin/" + ref.name[len("refs/heads/") :], ref.oid)
    head = next((ref for ref in refs if ref.name == "HEAD"), None)
    if head is not None and head.symref_target and head.symref_target.startswith("refs/heads/"):
        target = "refs/remotes/origin/" + head.symref_target[len("refs/heads/") :]
        gitdir.update_ref("refs/remotes/origin/HEAD", f"ref: {target}")


async def fetch_branch_tips(session: RemoteSession, gitdir: GitDir, health: RemoteHealth) -> None:
    """Fetch the tip commit (and trees) of every remote branch that is not local, blobless, depth 1.

    A few hundred milliseconds right after mount, long before the full
    history: ``git checkout`` or ``git switch`` of any branch then finds its
    commit and trees locally and asks the daemon only for the blobs, in one
    batch. The tips join the ``shallow`` file until the history arrives.
    """
    await retry_forever(
        lambda: _fetch_tips_once(session, gitdir), "branch tips fetch", health, HISTORY_BACKOFF
    )


async def _fetch_tips_once(session: RemoteSession, gitdir: GitDir) -> None:
    refs = await session.ls_refs(["HEAD", "refs/heads/"])
    branches = [ref for ref in refs if ref.name.startswith("refs/heads/")]
    wants = sorted({ref.oid for ref in branches if not gitdir.has_object(ref.oid)})
    if wants:
        head = gitdir.head_oid()
        shallow = set(gitdir.shallow_commits())
        async with (
            session.fetch(
                wants,
                filter_spec="blob:none",
                depth=1,
                shallows=sorted(shallow),
                haves=[head] if head else [],
            ) as response,
            gitdir.promisor_pack_writer() as pack,
        ):
            async for chunk in response.pack_chunks():
                await pack.write(chunk)
            for kind, oid in response.shallow_info:
                if kind == "shallow":
                    shallow.add(oid)
                else:
                    shallow.discard(oid)
        lacking = [oid for oid in wants if not gitdir.has_object(oid)]
        if lacking:
            raise CorruptObjectError(f"the tips pack lacked {len(lacking)} branch tips (altered in transit?)")
        gitdir.write_shallow(sorted(shallow))
    _write_remote_branches(gitdir, refs)
    log.info("branch tips local: %d branches, %d fetched", len(branches), len(wants))


async def complete_history(
    session: RemoteSession, gitdir: GitDir, health: RemoteHealth, depth: int | None = None
) -> None:
    """Fetch the remaining (blobless) history of every branch and tag, then record the refs.

    ``depth`` (``mount --depth``) keeps that many commits of each branch and
    tag, counted from its tip, as ``git clone --depth`` does; None fetches all.
    Runs after the mount is ready, so it never gives up and never ends the
    daemon: every failure waits and tries again (see :mod:`artifactfs.retry`).
    Only for a remote with ``filter`` (see :func:`history_available`).
    """
    await retry_forever(
        lambda: _fetch_history_once(session, gitdir, depth or INFINITE_DEPTH),
        "history fetch",
        health,
        HISTORY_BACKOFF,
    )


def history_available(session: RemoteSession) -> bool:
    """Whether the history can arrive without its blobs; without ``filter`` every old blob would
    come with it, so such a mount stays at depth 1 (see the module docstring)."""
    return session.supports("fetch", "filter")


async def _fetch_history_once(session: RemoteSession, gitdir: GitDir, depth: int) -> None:
    refs = await session.ls_refs(["HEAD", "refs/heads/", "refs/tags/"])
    shallow = gitdir.shallow_commits()
    published = [ref for ref in refs if ref.name.startswith(("refs/heads/", "refs/tags/"))]
    wants = sorted({ref.oid for ref in published})
    if shallow and wants:
        head = gitdir.head_oid()
        async with (
            session.fetch(
                wants,
                filter_spec="blob:none",
                depth=depth,
                shallows=shallow,
                haves=[head] if head else [],
            ) as response,
            gitdir.promisor_pack_writer() as pack,
        ):
            async for chunk in response.pack_chunks():
                await pack.write(chunk)
            remaining = set(shallow)
            for kind, oid in response.shallow_info:
                if kind == "unshallow":
                    remaining.discard(oid)
                else:
                    remaining.add(oid)
        # A pack whose objects were altered in transit indexes fine under other ids: check the branch tips
        # arrived (commits, always sent; a tag may name a blob, which the filter leaves out).
        lacking = [
            ref.name
            for ref in published
            if ref.name.startswith("refs/heads/") and not gitdir.has_object(ref.oid)
        ]
        if lacking:
            raise CorruptObjectError(
                f"the history pack lacked {len(lacking)} branch tips (altered in transit?)"
            )
        gitdir.write_shallow(sorted(remaining))
    _write_remote_branches(gitdir, refs)
    for ref in published:
        if ref.name.startswith("refs/tags/"):
            gitdir.update_ref(ref.name, ref.oid)
    log.info(
        "history complete: %d refs, %d shallow commits left", len(published), len(gitdir.shallow_commits())
    )
