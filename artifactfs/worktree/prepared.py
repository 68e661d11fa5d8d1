"""The index a mount writes for a freshly published tree, so git trusts the mount at once.

It lists every file of the tree with the stat data the mount reports, the
cache-tree of every directory, an untracked cache whose every directory is
valid and empty, and an fsmonitor extension marking every entry unchanged as
of the journal position at publish time. The first ``git status`` then lstats
nothing and lists no directory unless something changed since publishing.

Paths the overlay already changed (a mount whose gitdir was rebuilt under an
existing overlay) are left dirty and their directories invalid, so git looks
at exactly those.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from artifactfs.snapshot.entries import BaseEntry, EntryKind
from artifactfs.snapshot.tree import Snapshot
from artifactfs.state import Owner
from artifactfs.worktree.index import (
    CacheTree,
    FsmonitorState,
    IndexRecord,
    write_index,
)
from artifactfs.worktree.untracked import PER_DIRECTORY_EXCLUDE, build_untracked_cache


@dataclass(frozen=True)
class TreeListing:
    """What the index needs from one walk of the tree."""

    entries: list[tuple[str, BaseEntry]]
    """Every non-directory entry, by path."""
    cache_tree: CacheTree
    directories: list[str]
    gitignores: dict[str, str]
    """Directory path -> blob id of its ``.gitignore``: git reads these on every status."""
    gitattributes: dict[str, str]
    """Directory path -> blob id of its ``.gitattributes``: they decide how git hashes a ``.gitignore``."""

    def blob_oids(self) -> list[str]:
        return [entry.oid for _, entry in self.entries if entry.kind is not EntryKind.GITLINK]


def self_and_ancestors(directory: str) -> Iterator[str]:
    """``a/b/c``, ``a/b``, ``a``, then the root ``""``."""
    while directory:
        yield directory
        directory = directory.rpartition("/")[0]
    yield ""


def list_tree(snapshot: Snapshot) -> TreeListing:
    """Walk ``snapshot`` once (runs in a worker thread: it parses the whole tree)."""
    root = CacheTree(snapshot.root_tree_oid)
    trees: dict[str, CacheTree] = {"": root}
    entries: list[tuple[str, BaseEntry]] = []
    gitignores: dict[str, str] = {}
    gitattributes: dict[str, str] = {}
    for path, entry in snapshot.walk():
        parent, _, name = path.rpartition("/")
        if entry.kind is EntryKind.DIR:
            node = CacheTree(entry.oid)
            trees[parent].children[name.encode("utf-8", "surrogateescape")] = node
            trees[path] = node
            continue
        if name == PER_DIRECTORY_EXCLUDE and entry.kind is EntryKind.FILE:
            gitignores[parent] = entry.oid
        elif name == ".gitattributes" and entry.kind is EntryKind.FILE:
            gitattributes[parent] = entry.oid
        entries.append((path, entry))
        for directory in self_and_ancestors(parent):  # every directory above counts this entry
            trees[directory].entry_count += 1
    for path, node in list(trees.items()):
        if node.oid is not None and snapshot.hides_entries_in(node.oid):
            # The index lacks the hidden entries, so the recorded tree ids would not match it.
            for directory in self_and_ancestors(path):
                trees[directory].invalidate()
    return TreeListing(entries, root, list(trees), gitignores, gitattributes)


def write_prepared_index(
    listing: TreeListing,
    gitdir: Path,
    worktree: Path,
    *,
    mtime_ns: int,
    sizes: Mapping[str, int],
    token: str,
    changed: Iterable[str],
    gitignore_ids: Mapping[str, str],
    owner: Owner | None = None,
) -> None:
    """Write ``gitdir/index`` for the listed tree (runs in a worker thread).

    ``sizes`` maps blob ids to sizes where known; an unknown size is written as
    0, which git never looks at while the entry is fsmonitor-valid. ``changed``
    are paths the overlay holds rows for. ``gitignore_ids`` holds the ids git
    computes for each ``.gitignore`` (see :func:`~artifactfs.worktree.untracked.gitignore_id`).
    ``owner`` is whom the gitdir is kept for (None: the daemon's own user).
    """
    cache_tree = listing.cache_tree
    changed = sorted(set(changed))
    changed_keys = [path.encode("utf-8", "surrogateescape") for path in changed]
    records: list[IndexRecord] = []
    dirty: set[bytes] = set()
    for path, entry in listing.entries:
        key = path.encode("utf-8", "surrogateescape")
        records.append(IndexRecord(key, entry.mode, entry.oid, sizes.get(entry.oid, 0)))
        if changed_keys and any(key == other or key.startswith(other + b"/") for other in changed_keys):
            dirty.add(key)
    for path in changed:
        for directory in self_and_ancestors(path.rpartition("/")[0]):
            node = _cache_tree_node(cache_tree, directory)
            if node is not None:
                node.invalidate()
    untracked = build_untracked_cache(worktree, gitdir, listing.directories, gitignore_ids, changed, owner)
    write_index(
        gitdir, records, mtime_ns, cache_tree, untracked, FsmonitorState(token, frozenset(dirty)), owner
    )


def _cache_tree_node(root: CacheTree, directory: str) -> CacheTree | None:
    node: CacheTree | None = root
    for name in directory.split("/") if directory else ():
        node = node.children.get(name.encode("utf-8", "surrogateescape")) if node is not None else None
    return node
