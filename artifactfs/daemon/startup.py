"""Getting a mount's first tree: resolving the ref and fetching the tip blobless.

Time to mount must not grow with history, so the first fetch asks for the tip
commit alone (``deepen 1``) with ``filter blob:none``: one commit and its trees.
The pack is parsed in memory (the trees are needed right away) while the same
bytes stream into ``git index-pack`` for the gitdir. The rest of the history
arrives later, in :func:`complete_history`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from artifactfs.errors import CorruptObjectError, ProtocolError, UnknownRefError
from artifactfs.objects import commit_tree, is_oid
from artifactfs.remote import Ref, RemoteSession
from artifactfs.retry import HISTORY_BACKOFF, RemoteHealth, retry_forever
from artifactfs.store.gitdir import GitDir
from artifactfs.store.packstream import PackStreamParser

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


@dataclass
class Tip:
    commit: str
    root_tree: str
    trees: dict[str, bytes]
    shallow: list[str]


async def fetch_tip(session: RemoteSession, gitdir: GitDir, commit: str) -> Tip:
    """Fetch one commit and all its trees, index them into ``gitdir`` and return the trees."""
    parser = PackStreamParser()
    trees: dict[str, bytes] = {}
    commits: dict[str, bytes] = {}
    async with (
        session.fetch([commit], filter_spec="blob:none", depth=1) as response,
        gitdir.promisor_pack_writer() as pack,
    ):
        async for chunk in response.pack_chunks():
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
    session: RemoteSession, path: Path, remote_display: str, resolved: ResolvedRef
) -> tuple[GitDir, Tip]:
    """Build a complete gitdir at ``path`` for ``resolved``, or leave nothing behind."""
    staging = path.with_name(path.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        gitdir = GitDir.create(staging, remote_display)
        tip = await fetch_tip(session, gitdir, resolved.commit)
        gitdir.write_shallow(tip.shallow)
        gitdir.set_head(resolved.branch, resolved.commit)
        if resolved.branch is not None:
            gitdir.update_ref(f"refs/remotes/origin/{resolved.branch}", resolved.commit)
            gitdir.set_upstream(resolved.branch)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return GitDir(path), tip


async def complete_history(session: RemoteSession, gitdir: GitDir, health: RemoteHealth) -> None:
    """Fetch the remaining (blobless) history of every branch and tag, then record the refs.

    Runs after the mount is ready, so it never gives up and never ends the
    daemon: every failure waits and tries again (see :mod:`artifactfs.retry`).
    """
    await retry_forever(
        lambda: _fetch_history_once(session, gitdir), "history fetch", health, HISTORY_BACKOFF
    )


async def _fetch_history_once(session: RemoteSession, gitdir: GitDir) -> None:
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
                depth=INFINITE_DEPTH,
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
    for ref in published:
        if ref.name.startswith("refs/heads/"):
            gitdir.update_ref("refs/remotes/origin/" + ref.name[len("refs/heads/") :], ref.oid)
        else:
            gitdir.update_ref(ref.name, ref.oid)
    head_ref = next((ref for ref in refs if ref.name == "HEAD"), None)
    if head_ref is not None and head_ref.symref_target and head_ref.symref_target.startswith("refs/heads/"):
        target = "refs/remotes/origin/" + head_ref.symref_target[len("refs/heads/") :]
        (gitdir.path / "refs/remotes/origin/HEAD").write_text(f"ref: {target}\n")
    log.info(
        "history complete: %d refs, %d shallow commits left", len(published), len(gitdir.shallow_commits())
    )
