"""The merged namespace the user sees: the published base tree with overlay rows on top.

:class:`OverlayView` owns every namespace rule: which entries exist, what a
change turns into in the overlay (new rows, whiteouts, opaque directories,
metadata-only rows pointing at base blobs), and how the overlay is reconciled
when a new base is published. It never copies base content itself: the FUSE
layer hydrates base blobs and hands them to :meth:`OverlayView.copy_up`.

Invariants kept by every operation:

* a row exists only below a directory that exists in the merged view;
* whiteouts have no rows below them;
* a directory row is opaque whenever the base is hidden at its path (it was
  created over a removed base entry, under an opaque directory, or moved there),
  so a later base can never make unexpected children appear inside it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from artifactfs.overlay.errors import (
    AlreadyExists,
    DirectoryNotEmpty,
    InvalidName,
    InvalidOperation,
    IsADirectory,
    NotADirectory,
    NotFound,
    ReadOnlyEntry,
    ReservedName,
    ResourceBusy,
)
from artifactfs.overlay.store import Batch, OverlayRow, OverlayStore, Readable, parent_of
from artifactfs.snapshot.entries import BaseEntry, BaseTree, EntryKind
from artifactfs.snapshot.tree import FOLDS_TO_GIT, refusal_reason

NodeKind = Literal["file", "dir", "symlink", "gitlink"]
ViewVersion = tuple[int, BaseTree]
"""The overlay's row generation and the published base: equal versions show the same namespace."""

_DIR_MODE = stat.S_IFDIR | 0o755
_SYMLINK_MODE = stat.S_IFLNK | 0o777


@dataclass(frozen=True, slots=True)
class Node:
    """What the FUSE layer needs to answer stat, readlink and open for one path.

    ``mtime_ns`` is None when the entry is unchanged since the base (the FUSE
    layer reports its fixed base mtime); for data-file content it is the data
    file's mtime. ``base_oid`` is set when content must come from a base blob.
    """

    path: str
    kind: NodeKind
    mode: int
    base_oid: str | None
    data_path: Path | None
    symlink_target: bytes | None
    mtime_ns: int | None
    in_overlay: bool


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """Outcome of publishing a new base.

    ``dropped`` rows equalled the new base and were removed; ``converted`` rows
    had content equal to the new base blob but a different mode, so their data
    file was released and they now point at the blob; ``kept`` rows still
    diverge; ``repaired`` directory rows were added because the new base no
    longer has a directory that kept rows live in.
    """

    dropped: int
    converted: int
    kept: int
    repaired: int


def check_name(name: str) -> None:
    """Refuse a directory entry name the overlay must never create.

    ``.git`` in any spelling NTFS or HFS+ would fold to it (what the snapshot
    hides) is refused with EPERM; empty, ``.``, ``..``, ``/`` and NUL with EINVAL.
    """
    reason = refusal_reason(name.encode("utf-8", "surrogateescape"))
    if reason == FOLDS_TO_GIT:
        raise ReservedName(name, "name is reserved for git")
    if reason is not None:
        raise InvalidName(name, "invalid file name")


def _check_new_path(path: str) -> None:
    if path == "":
        raise ResourceBusy(path, "the root directory cannot be replaced")
    for name in path.split("/"):
        check_name(name)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _name_of(path: str) -> str:
    return path.rpartition("/")[2]


def _is_dir(entry: BaseEntry | None) -> bool:
    return entry is not None and entry.kind is EntryKind.DIR


def _base_file_mode(entry: BaseEntry) -> int:
    return stat.S_IFREG | (0o755 if entry.mode & 0o111 else 0o644)


def _row_from_base(path: str, entry: BaseEntry, *, opaque: bool) -> OverlayRow:
    """An overlay row that shows exactly what ``entry`` shows, without depending on the base."""
    if entry.kind is EntryKind.FILE:
        return OverlayRow(path, "file", _base_file_mode(entry), base_oid=entry.oid)
    if entry.kind is EntryKind.SYMLINK:
        return OverlayRow(path, "symlink", _SYMLINK_MODE, base_oid=entry.oid)
    if entry.kind is EntryKind.GITLINK:
        return OverlayRow(path, "gitlink", _DIR_MODE, base_oid=entry.oid)
    return OverlayRow(path, "dir", _DIR_MODE, opaque=opaque)


def git_blob_oid(content: bytes, like: str) -> str:
    """The blob id of ``content`` in the object format ``like`` (an existing id) uses."""
    algorithm = hashlib.sha256 if len(like) == 64 else hashlib.sha1
    return algorithm(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass(frozen=True, slots=True)
class _Resolved:
    """A path looked up in the merged view.

    ``row`` is the overlay row at the path (whiteouts included). ``base`` is the
    base entry at the path when nothing above hides the base there, even if
    ``row`` overrides it. ``base_below`` says the base's children of the path
    show through (the path is a directory merging the base).
    """

    path: str
    node: Node | None
    row: OverlayRow | None
    base: BaseEntry | None
    base_below: bool


class OverlayView:
    """Merged base + overlay namespace; every method is atomic and thread-safe."""

    def __init__(self, store: OverlayStore, base: BaseTree) -> None:
        self._store = store
        self._base = base
        self._lock = threading.RLock()

    @property
    def base(self) -> BaseTree:
        return self._base

    @property
    def version(self) -> ViewVersion:
        """Changes whenever a committed overlay change or a new base may change what a path shows."""
        return self._store.rows_index.generation, self._base

    def set_base(self, base: BaseTree) -> None:
        """Publish ``base`` keeping every row (no content comparison).

        Directories that kept rows need but ``base`` lacks are recreated as
        overlay rows so nothing becomes unreachable.
        """
        with self._lock:
            self._publish(base, None, frozenset())

    # -- reading -------------------------------------------------------------

    def lookup(self, path: str) -> Node | None:
        with self._lock:
            return self._resolve(path).node

    def list_dir(self, path: str) -> list[tuple[str, Node]]:
        """The merged directory listing, sorted by name."""
        with self._lock:
            resolved = self._resolve_dir(path)
            items = self._merged_children(resolved)
            return [(name, self._node_of(_join(path, name), items[name])) for name in sorted(items)]

    def rows(self) -> list[OverlayRow]:
        """Every overlay row: the paths that differ from the base."""
        return self._store.all_rows()

    def changed_since(self, offset: int) -> tuple[int, list[str]]:
        """The change journal's end offset and every path changed after ``offset``."""
        return self._store.changed_since(offset)

    # -- creating ------------------------------------------------------------

    def create_file(self, path: str, mode: int) -> Node:
        _check_new_path(path)
        with self._lock:
            self._resolve_parent(path)
            if self._resolve(path).node is not None:
                raise AlreadyExists(path, "file exists")
            data_id = self._store.new_data_file(None)
            row = OverlayRow(path, "file", stat.S_IFREG | (mode & 0o7777), data_id=data_id)
            try:
                with self._store.batch() as batch:
                    batch.put(row)
                    self._touch_parent(batch, path)
            except BaseException:
                self._store.discard_data([data_id])
                raise
            return self._node_of(path, row)

    def mkdir(self, path: str, mode: int) -> Node:
        _check_new_path(path)
        with self._lock:
            parent = self._resolve_parent(path)
            current = self._resolve(path)
            if current.node is not None:
                raise AlreadyExists(path, "file exists")
            opaque = not parent.base_below or current.base is not None
            row = OverlayRow(
                path, "dir", stat.S_IFDIR | (mode & 0o7777), opaque=opaque, mtime_ns=time.time_ns()
            )
            with self._store.batch() as batch:
                batch.put(row)
                self._touch_parent(batch, path)
            return self._node_of(path, row)

    def symlink(self, path: str, target: bytes) -> Node:
        _check_new_path(path)
        if not target:
            raise NotFound(path, "empty symlink target")
        if b"\0" in target:
            raise InvalidOperation(path, "symlink target contains NUL")
        with self._lock:
            self._resolve_parent(path)
            if self._resolve(path).node is not None:
                raise AlreadyExists(path, "file exists")
            row = OverlayRow(path, "symlink", _SYMLINK_MODE, target=target, mtime_ns=time.time_ns())
            with self._store.batch() as batch:
                batch.put(row)
                self._touch_parent(batch, path)
            return self._node_of(path, row)

    def copy_up(self, path: str, source: Readable | None) -> Node:
        """Give a file its own data file so it can be written.

        ``source`` reads the hydrated base blob (None: start empty, for ``O_TRUNC``).
        A file that already has a data file is returned unchanged. Mode and a
        recorded mtime carry over.
        """
        with self._lock:
            resolved = self._resolve(path)
            node = self._require(resolved)
            if node.kind in ("dir", "gitlink"):
                raise IsADirectory(path, "is a directory")
            if node.kind == "symlink":
                raise InvalidOperation(path, "symlinks have no writable content")
            if node.data_path is not None:
                return node
            data_id = self._store.new_data_file(source)
            recorded_mtime = resolved.row.mtime_ns if resolved.row is not None else None
            row = OverlayRow(path, "file", node.mode, data_id=data_id)
            try:
                if recorded_mtime is not None:
                    os.utime(self._store.data_path(data_id), ns=(recorded_mtime, recorded_mtime))
                with self._store.batch() as batch:
                    batch.put(row)
            except BaseException:
                self._store.discard_data([data_id])
                raise
            return self._node_of(path, row)

    # -- removing ------------------------------------------------------------

    def unlink(self, path: str) -> None:
        """Remove a file or symlink; a whiteout hides the base's entry if it has one.

        Works on a full disk (the store's reserve pays for the rows): removing is how space is freed.
        """
        with self._lock:
            resolved = self._resolve(path)
            node = self._require(resolved)
            if node.kind in ("dir", "gitlink"):
                raise IsADirectory(path, "is a directory")

            def remove() -> None:
                with self._store.batch() as batch:
                    self._vacate(batch, resolved)
                    self._touch_parent(batch, path)

            self._store.with_reserve(remove)

    def rmdir(self, path: str) -> None:
        """Remove an empty directory; works on a full disk like :meth:`unlink`."""
        if path == "":
            raise ResourceBusy(path, "cannot remove the root directory")
        with self._lock:
            resolved = self._resolve(path)
            node = self._require(resolved)
            if node.kind not in ("dir", "gitlink"):
                raise NotADirectory(path, "not a directory")
            if self._merged_children(resolved):
                raise DirectoryNotEmpty(path, "directory not empty")

            def remove() -> None:
                with self._store.batch() as batch:
                    batch.delete_subtree(path)
                    self._vacate(batch, resolved)
                    self._touch_parent(batch, path)

            self._store.with_reserve(remove)

    # -- renaming ------------------------------------------------------------

    def rename(self, old: str, new: str, *, noreplace: bool = False, exchange: bool = False) -> None:
        """Move ``old`` to ``new`` with rename(2) semantics (renameat2 flags included).

        A moved directory that contains base content is materialised: an opaque
        directory row plus one row per visible descendant, pointing at the same
        base blobs and data files, so nothing is copied and the result no longer
        depends on the base.
        """
        if noreplace and exchange:
            raise InvalidOperation(new, "RENAME_NOREPLACE and RENAME_EXCHANGE together")
        if old == "":
            raise ResourceBusy(old, "the root directory cannot be moved")
        _check_new_path(new)
        if new.startswith(old + "/") or (exchange and old.startswith(new + "/")):
            raise InvalidOperation(new, "cannot move a directory into itself")
        with self._lock:
            source = self._resolve(old)
            self._require(source)
            self._resolve_parent(new)
            if old == new:
                return
            target = self._resolve(new)
            if exchange:
                self._require(target)
                self._exchange(source, target)
                return
            if target.node is not None:
                self._check_replaceable(source, target, noreplace=noreplace)
            moved = self._materialize(source)
            with self._store.batch() as batch:
                for row in moved:
                    batch.record(row.path)
                batch.delete_subtree(old)
                self._vacate(batch, source)
                batch.delete_subtree(new)
                batch.delete(new)
                for row in moved:
                    batch.put(replace(row, path=new + row.path[len(old) :]))
                self._touch_parent(batch, old)
                self._touch_parent(batch, new)

    def _check_replaceable(self, source: _Resolved, target: _Resolved, *, noreplace: bool) -> None:
        assert source.node is not None and target.node is not None
        if noreplace:
            raise AlreadyExists(target.path, "file exists")
        source_is_dir = source.node.kind in ("dir", "gitlink")
        target_is_dir = target.node.kind in ("dir", "gitlink")
        if source_is_dir and not target_is_dir:
            raise NotADirectory(target.path, "not a directory")
        if target_is_dir and not source_is_dir:
            raise IsADirectory(target.path, "is a directory")
        if target_is_dir and self._merged_children(target):
            raise DirectoryNotEmpty(target.path, "directory not empty")

    def _exchange(self, first: _Resolved, second: _Resolved) -> None:
        first_rows = self._materialize(first)
        second_rows = self._materialize(second)
        moves = ((first.path, first_rows, second.path), (second.path, second_rows, first.path))
        with self._store.batch() as batch:
            for source, rows, _ in moves:
                for row in rows:
                    batch.record(row.path)
                batch.delete_subtree(source)
                batch.delete(source)
            for source, rows, destination in moves:
                for row in rows:
                    batch.put(replace(row, path=destination + row.path[len(source) :]))
            self._touch_parent(batch, first.path)
            self._touch_parent(batch, second.path)

    def _materialize(self, resolved: _Resolved) -> list[OverlayRow]:
        """Rows (at the same paths) that reproduce everything visible at and below a path."""
        shows_base = resolved.row is None or resolved.base_below
        return self._materialize_entry(resolved.path, resolved.row, resolved.base if shows_base else None)

    def _materialize_entry(
        self, path: str, row: OverlayRow | None, entry: BaseEntry | None
    ) -> list[OverlayRow]:
        """Like :meth:`_materialize` for a visible ``row`` and/or base ``entry``.

        ``entry`` must be None unless the base shows through at ``path`` (no
        row, or a non-opaque directory row over a base directory).
        """
        if row is None:
            assert entry is not None
            top = _row_from_base(path, entry, opaque=True)
            if entry.kind is not EntryKind.DIR:
                return [top]
        elif row.kind != "dir":
            return [row]
        else:
            top = replace(row, opaque=True)
        if not _is_dir(entry):
            below = self._store.subtree(path)
            return [
                top,
                *(replace(r, opaque=True) if r.kind == "dir" else r for r in below if r.kind != "whiteout"),
            ]
        rows = {_name_of(r.path): r for r in self._store.children(path)}
        base_children = self._base.children(path) or {}
        result = [top]
        for name in sorted(rows.keys() | base_children.keys()):
            child_row, child_entry = rows.get(name), base_children.get(name)
            if child_row is not None and child_row.kind == "whiteout":
                continue
            if child_row is not None and (child_row.kind != "dir" or child_row.opaque):
                child_entry = None
            result.extend(self._materialize_entry(_join(path, name), child_row, child_entry))
        return result

    # -- metadata ------------------------------------------------------------

    def chmod(self, path: str, mode: int) -> Node:
        """Change permission bits without copying content (symlinks and gitlinks ignore it)."""
        with self._lock:
            resolved = self._resolve(path)
            node = self._require(resolved)
            if node.kind in ("symlink", "gitlink"):
                return node
            current = resolved.row if resolved.row is not None else self._row_for_base(resolved)
            row = replace(current, mode=stat.S_IFMT(current.mode) | (mode & 0o7777))
            with self._store.batch() as batch:
                batch.put(row)
            return self._node_of(path, row)

    def set_mtime(self, path: str, mtime_ns: int) -> None:
        with self._lock:
            resolved = self._resolve(path)
            self._require(resolved)
            current = resolved.row if resolved.row is not None else self._row_for_base(resolved)
            with self._store.batch() as batch:
                if current.data_id is not None:
                    os.utime(
                        self._store.data_path(current.data_id), ns=(mtime_ns, mtime_ns), follow_symlinks=False
                    )
                    batch.record(path)
                else:
                    batch.put(replace(current, mtime_ns=mtime_ns))

    def note_modified(self, path: str) -> None:
        """Journal that a file's content was written (writes bypass the database).

        Uses the store's reserve on a full disk: a write that filled the disk must still reach the
        journal, or git's fsmonitor would never report the file as changed.
        """

        def record() -> None:
            with self._store.batch() as batch:
                batch.record(path)

        self._store.with_reserve(record)

    def sync(self, path: str | None) -> None:
        """``fsync``: make ``path``'s content (if it has a data file) and all metadata durable."""
        with self._lock:
            row = self._store.get(path) if path is not None else None
            self._store.sync(row.data_id if row is not None else None)

    # -- reconciliation ------------------------------------------------------

    def reconcile(
        self,
        new_base: BaseTree,
        blob_oid_of: Callable[[Path], str],
        *,
        busy: Collection[str] = frozenset(),
    ) -> ReconcileReport:
        """Publish ``new_base`` and drop every row the new base makes redundant.

        A row is dropped only if the merged view stays the same without it:
        content and mode equal to the new base entry, a whiteout over nothing,
        a directory equal to the new base's (an opaque one only when every base
        child is covered by its own row), and only where the base shows through.
        A data file whose content equals the new blob but whose mode differs is
        released and its row kept as a metadata-only row. Rows at ``busy`` paths
        (files open for writing) are never touched.
        """
        with self._lock:
            return self._publish(new_base, blob_oid_of, busy)

    def _publish(
        self,
        new_base: BaseTree,
        blob_oid_of: Callable[[Path], str] | None,
        busy: Collection[str],
    ) -> ReconcileReport:
        rows = self._store.all_rows()
        by_path = {row.path: row for row in rows}
        child_names: dict[str, set[str]] = defaultdict(set)
        for row in rows:
            if row.path:
                child_names[parent_of(row.path)].add(_name_of(row.path))
        dropped: set[str] = set()
        converted: dict[str, OverlayRow] = {}
        shows_base: dict[str, bool] = {"": True}

        def base_shows_below(path: str) -> bool:
            """After reconciliation, do the new base's children of ``path`` show?"""
            if path not in shows_base:
                above = base_shows_below(parent_of(path))
                row = by_path.get(path)
                if row is None or path in dropped:
                    shows_base[path] = above
                else:
                    shows_base[path] = above and row.kind == "dir" and not row.opaque
            return shows_base[path]

        for row in rows:
            if blob_oid_of is None or row.path in busy:
                continue
            visible = row.path == "" or base_shows_below(parent_of(row.path))
            entry = new_base.entry(row.path) if visible else None
            outcome = self._compare(row, entry, new_base, child_names, blob_oid_of)
            if outcome == "drop":
                dropped.add(row.path)
            elif isinstance(outcome, OverlayRow):
                converted[row.path] = outcome

        repaired: dict[str, OverlayRow] = {}

        def is_dir_after(path: str) -> bool:
            if path == "" or path in repaired:
                return True
            row = by_path.get(path)
            if row is not None and path not in dropped:
                return row.kind == "dir"
            return base_shows_below(parent_of(path)) and _is_dir(new_base.entry(path))

        now = time.time_ns()
        for row in rows:
            if row.path == "" or row.kind == "whiteout" or row.path in dropped:
                continue
            parent = parent_of(row.path)
            while not is_dir_after(parent):
                repaired[parent] = OverlayRow(parent, "dir", _DIR_MODE, opaque=True, mtime_ns=now)
                parent = parent_of(parent)

        with self._store.batch(journal=False) as batch:
            for path in dropped:
                batch.delete(path)
            for replacement in converted.values():
                batch.put(replacement)
            for replacement in repaired.values():
                batch.put(replacement)
        self._base = new_base
        return ReconcileReport(
            dropped=len(dropped),
            converted=len(converted),
            kept=len(rows) - len(dropped) - len(converted),
            repaired=len(repaired),
        )

    def _compare(
        self,
        row: OverlayRow,
        entry: BaseEntry | None,
        new_base: BaseTree,
        child_names: Mapping[str, set[str]],
        blob_oid_of: Callable[[Path], str],
    ) -> Literal["drop", "keep"] | OverlayRow:
        """Whether ``row`` is redundant over ``entry`` (the new base entry, None if hidden or absent)."""
        if row.kind == "whiteout":
            return "drop" if entry is None else "keep"
        if entry is None:
            return "keep"
        if row.kind == "file" and entry.kind is EntryKind.FILE:
            same_mode = row.mode == _base_file_mode(entry)
            if row.data_id is None:
                return "drop" if row.base_oid == entry.oid and same_mode else "keep"
            data_path = self._store.data_path(row.data_id)
            if blob_oid_of(data_path) != entry.oid:
                return "keep"
            if same_mode:
                return "drop"
            mtime_ns = os.stat(data_path, follow_symlinks=False).st_mtime_ns
            return OverlayRow(row.path, "file", row.mode, base_oid=entry.oid, mtime_ns=mtime_ns)
        if row.kind == "symlink" and entry.kind is EntryKind.SYMLINK:
            target_oid = row.base_oid if row.target is None else git_blob_oid(row.target, entry.oid)
            return "drop" if target_oid == entry.oid else "keep"
        if row.kind == "gitlink" and entry.kind is EntryKind.GITLINK:
            return "drop" if row.base_oid == entry.oid else "keep"
        if row.kind == "dir" and entry.kind is EntryKind.DIR and row.mode == _DIR_MODE:
            if not row.opaque:
                return "drop"
            base_names = (new_base.children(row.path) or {}).keys()
            return "drop" if base_names <= child_names.get(row.path, set()) else "keep"
        return "keep"

    # -- internals -----------------------------------------------------------

    def _resolve(self, path: str) -> _Resolved:
        """Look ``path`` up through every ancestor (one query for all their rows)."""
        parts = path.split("/") if path else []
        prefixes = [""] + ["/".join(parts[: i + 1]) for i in range(len(parts))]
        rows = self._store.get_many(prefixes)
        visible = True
        for prefix in prefixes[:-1]:
            row = rows.get(prefix)
            entry = self._base.entry(prefix) if visible and prefix else None
            if row is None:
                if prefix and not _is_dir(entry):
                    return _Resolved(path, None, None, None, False)
            elif row.kind != "dir":
                return _Resolved(path, None, None, None, False)
            elif prefix:
                visible = visible and not row.opaque and _is_dir(entry)
        row = rows.get(path)
        entry = self._base.entry(path) if visible else None
        if path == "" and entry is None:
            entry = BaseEntry(EntryKind.DIR, 0o040000, "")
        if row is not None:
            node = None if row.kind == "whiteout" else self._node_of(path, row)
            below = row.kind == "dir" and not row.opaque and _is_dir(entry)
            return _Resolved(path, node, row, entry, below)
        node = None if entry is None else self._node_of(path, entry)
        return _Resolved(path, node, None, entry, _is_dir(entry))

    def _resolve_dir(self, path: str) -> _Resolved:
        resolved = self._resolve(path)
        node = self._require(resolved)
        if node.kind not in ("dir", "gitlink"):
            raise NotADirectory(path, "not a directory")
        return resolved

    def _resolve_parent(self, path: str) -> _Resolved:
        """The directory a new entry at ``path`` goes into; it must accept entries."""
        resolved = self._resolve_dir(parent_of(path))
        assert resolved.node is not None
        if resolved.node.kind == "gitlink":
            raise ReadOnlyEntry(path, "cannot create entries inside a submodule")
        return resolved

    @staticmethod
    def _require(resolved: _Resolved) -> Node:
        if resolved.node is None:
            raise NotFound(resolved.path, "no such file or directory")
        return resolved.node

    def _merged_children(self, resolved: _Resolved) -> dict[str, OverlayRow | BaseEntry]:
        """Visible children by name: overlay rows win, whiteouts hide, base fills in."""
        items: dict[str, OverlayRow | BaseEntry] = {}
        hidden: set[str] = set()
        for row in self._store.children(resolved.path):
            if row.kind == "whiteout":
                hidden.add(_name_of(row.path))
            else:
                items[_name_of(row.path)] = row
        if resolved.base_below:
            for name, entry in (self._base.children(resolved.path) or {}).items():
                if name not in items and name not in hidden:
                    items[name] = entry
        return items

    def _node_of(self, path: str, item: OverlayRow | BaseEntry) -> Node:
        if isinstance(item, BaseEntry):
            return self._node_of_base(path, item)
        if item.kind == "file":
            if item.data_id is not None:
                data_path = self._store.data_path(item.data_id)
                mtime_ns = os.stat(data_path, follow_symlinks=False).st_mtime_ns
                return Node(path, "file", item.mode, None, data_path, None, mtime_ns, True)
            return Node(path, "file", item.mode, item.base_oid, None, None, item.mtime_ns, True)
        if item.kind == "symlink":
            return Node(path, "symlink", _SYMLINK_MODE, item.base_oid, None, item.target, item.mtime_ns, True)
        if item.kind == "gitlink":
            return Node(path, "gitlink", _DIR_MODE, None, None, None, item.mtime_ns, True)
        return Node(path, "dir", item.mode, None, None, None, item.mtime_ns, True)

    @staticmethod
    def _node_of_base(path: str, entry: BaseEntry) -> Node:
        if entry.kind is EntryKind.FILE:
            return Node(path, "file", _base_file_mode(entry), entry.oid, None, None, None, False)
        if entry.kind is EntryKind.SYMLINK:
            return Node(path, "symlink", _SYMLINK_MODE, entry.oid, None, None, None, False)
        kind: NodeKind = "gitlink" if entry.kind is EntryKind.GITLINK else "dir"
        return Node(path, kind, _DIR_MODE, None, None, None, None, False)

    @staticmethod
    def _row_for_base(resolved: _Resolved) -> OverlayRow:
        """A metadata row standing for the base entry at a path that has no row."""
        assert resolved.base is not None
        return _row_from_base(resolved.path, resolved.base, opaque=False)

    @staticmethod
    def _vacate(batch: Batch, resolved: _Resolved) -> None:
        """Make ``resolved.path`` empty: whiteout if the base shows something there."""
        if resolved.base is not None:
            batch.put(OverlayRow(resolved.path, "whiteout"))
        else:
            batch.delete(resolved.path)

    @staticmethod
    def _touch_parent(batch: Batch, path: str) -> None:
        """Record that the directory containing ``path`` changed (its mtime)."""
        parent = parent_of(path)
        now = time.time_ns()
        row = batch.get(parent)
        if row is None:
            batch.put(OverlayRow(parent, "dir", _DIR_MODE, mtime_ns=now))
        else:
            batch.put(replace(row, mtime_ns=now))
