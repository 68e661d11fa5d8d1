"""A published commit's tree, parsed one directory at a time.

A :class:`Snapshot` answers "what is at this path" for one commit. Tree objects
are parsed only when a directory is first visited and the parsed form is shared
between snapshots through a :class:`TreeCache`, so publishing a new HEAD after a
commit costs only the directories that changed.

Entries that must never be materialised (``..``, ``.git`` in any spelling
NTFS or HFS+ would fold to it, names with ``/`` or NUL, duplicates, unknown
modes) are hidden and recorded in :attr:`Snapshot.hidden`; see
docs/security.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from dulwich.index import validate_path_element_hfs, validate_path_element_ntfs
from dulwich.objects import parse_tree

from artifactfs.errors import CorruptObjectError
from artifactfs.objects import OID_SIZE
from artifactfs.snapshot.entries import BaseEntry, EntryKind

log = logging.getLogger(__name__)

TreeSource = Callable[[str], bytes]
"""Returns the raw content of a tree object by hex id (raises KeyError if absent)."""

_KIND_BY_MODE: dict[int, tuple[EntryKind, int]] = {
    0o100644: (EntryKind.FILE, 0o100644),
    0o100664: (EntryKind.FILE, 0o100644),  # historic mode git still reads
    0o100755: (EntryKind.FILE, 0o100755),
    0o120000: (EntryKind.SYMLINK, 0o120000),
    0o040000: (EntryKind.DIR, 0o040000),
    0o160000: (EntryKind.GITLINK, 0o160000),
}


@dataclass(frozen=True, slots=True)
class HiddenEntry:
    path: str
    reason: str


FOLDS_TO_GIT = "name folds to .git"


def refusal_reason(name: bytes) -> str | None:
    """Why a name must not appear in a working tree, or None if it is fine.

    The one rule for names, applied to tree entries from the remote and to
    names created in the mount alike.
    """
    if not name:
        return "empty name"
    if name in (b".", b".."):
        return "relative path component"
    if b"/" in name or b"\0" in name:
        return "slash or NUL in name"
    lowered = name.lower()
    if lowered == b".git":
        return FOLDS_TO_GIT
    # Only a name holding the letters g, i and t can fold to .git (HFS+ ignorables, NTFS short names).
    if b"g" in lowered and b"i" in lowered and b"t" in lowered:
        if not validate_path_element_ntfs(name) or (_is_utf8(name) and not validate_path_element_hfs(name)):
            return FOLDS_TO_GIT
    return None


def _is_utf8(name: bytes) -> bool:
    """HFS+ folding applies to UTF-8 names only; dulwich's check refuses anything else outright."""
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parse_directory(raw: bytes, dir_path: str, hidden: list[HiddenEntry]) -> dict[str, BaseEntry]:
    try:
        items = parse_tree(raw, OID_SIZE)
    except Exception as error:  # dulwich raises several types for malformed trees
        raise CorruptObjectError(f"malformed tree object for {dir_path or '/'}: {error}") from error
    children: dict[str, BaseEntry] = {}
    for name_bytes, git_mode, hex_oid in items:
        reason = refusal_reason(name_bytes)
        name = name_bytes.decode("utf-8", "surrogateescape")
        shown_path = f"{dir_path}/{name}" if dir_path else name
        if reason is None and git_mode not in _KIND_BY_MODE:
            reason = f"unsupported mode {git_mode:o}"
        if reason is None and name in children:
            reason = "duplicate entry"
        if reason is not None:
            hidden.append(HiddenEntry(shown_path, reason))
            log.warning("hiding tree entry %r: %s", shown_path, reason)
            continue
        kind, mode = _KIND_BY_MODE[git_mode]
        children[name] = BaseEntry(kind, mode, hex_oid.decode("ascii"))
    return children


class TreeCache:
    """Parsed directories by tree id, shared by every snapshot of one repository."""

    def __init__(self, source: TreeSource) -> None:
        self._source = source
        self._parsed: dict[str, Mapping[str, BaseEntry]] = {}
        self._hidden: dict[str, list[HiddenEntry]] = {}

    def directory(self, tree_oid: str, dir_path: str) -> Mapping[str, BaseEntry]:
        parsed = self._parsed.get(tree_oid)
        if parsed is None:
            hidden: list[HiddenEntry] = []
            parsed = MappingProxyType(_parse_directory(self._source(tree_oid), dir_path, hidden))
            self._parsed[tree_oid] = parsed
            if hidden:
                self._hidden[tree_oid] = hidden
        return parsed

    def hidden_in(self, tree_oid: str) -> list[HiddenEntry]:
        return self._hidden.get(tree_oid, [])


class Snapshot:
    """The tree of one commit, as a :class:`~artifactfs.snapshot.entries.BaseTree`."""

    def __init__(self, commit_oid: str, root_tree_oid: str, trees: TreeCache) -> None:
        self.commit_oid = commit_oid
        self.root_tree_oid = root_tree_oid
        self._trees = trees
        self._root = BaseEntry(EntryKind.DIR, 0o040000, root_tree_oid)

    def entry(self, path: str) -> BaseEntry | None:
        current = self._root
        if not path:
            return current
        walked = ""
        for name in path.split("/"):
            if current.kind is not EntryKind.DIR:
                return None
            found = self._trees.directory(current.oid, walked).get(name)
            if found is None:
                return None
            current = found
            walked = f"{walked}/{name}" if walked else name
        return current

    def children(self, path: str) -> Mapping[str, BaseEntry] | None:
        found = self.entry(path)
        if found is None:
            return None
        if found.kind is EntryKind.GITLINK:
            return MappingProxyType({})
        if found.kind is not EntryKind.DIR:
            return None
        return self._trees.directory(found.oid, path)

    def walk(self) -> Iterator[tuple[str, BaseEntry]]:
        """Every entry below the root, depth first, parents before children."""
        pending: list[tuple[str, str]] = [("", self.root_tree_oid)]
        while pending:
            dir_path, tree_oid = pending.pop()
            for name, child in sorted(self._trees.directory(tree_oid, dir_path).items(), reverse=True):
                child_path = f"{dir_path}/{name}" if dir_path else name
                yield child_path, child
                if child.kind is EntryKind.DIR:
                    pending.append((child_path, child.oid))

    def hides_entries_in(self, tree_oid: str) -> bool:
        """Whether the (already parsed) directory ``tree_oid`` had entries hidden."""
        return bool(self._trees.hidden_in(tree_oid))

    def hidden(self) -> list[HiddenEntry]:
        """Entries hidden so far in directories that have been parsed."""
        result: list[HiddenEntry] = []
        for _, entry in [("", self._root), *self.walk()]:
            if entry.kind is EntryKind.DIR:
                result.extend(self._trees.hidden_in(entry.oid))
        return result
