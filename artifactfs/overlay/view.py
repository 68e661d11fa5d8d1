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

import os
import stat
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from artifactfs.objects import blob_id
from artifactfs.overlay.errors import (
    AlreadyExists,
    DirectoryNotEmpty,
    InvalidName,
    InvalidOperation,
    IsADirectory,
    NameTooLong,
    NoAttribute,
    NotADirectory,
    NotFound,
    ReadOnlyEntry,
    ReservedName,
    ResourceBusy,
)
from artifactfs.overlay.store import (
    Batch,
    OverlayRow,
    OverlayStore,
    Readable,
    decode_xattrs,
    encode_xattrs,
    parent_of,
)
from artifactfs.snapshot.entries import BaseEntry, BaseTree, EntryKind
from artifactfs.snapshot.tree import FOLDS_TO_GIT, refusal_reason

ViewVersion = tuple[int, BaseTree]
"""The overlay's row generation and the published base: equal versions show the same namespace."""
NAME_MAX = 255
"""Longest directory entry name, in bytes."""

_DIR_MODE = stat.S_IFDIR | 0o755
_SYMLINK_MODE = stat.S_IFLNK | 0o777


@dataclass(frozen=True, slots=True)
class Node:
    """What the FUSE layer needs to answer stat, readlink and open for one path.

    ``mtime_ns`` is None when the entry is unchanged since the base (the FUSE
    layer reports its fixed base mtime); for data-file content it is the data
    file's mtime. ``atime_ns`` and ``ctime_ns`` None mean "as mtime".
    ``base_oid`` is set when content must come from a base blob. ``nlink``
    counts hard links for files and ``2 + subdirectories`` for directories.
    """

    path: str
    kind: EntryKind
    mode: int
    base_oid: str | None
    data_path: Path | None
    symlink_target: bytes | None
    mtime_ns: int | None
    in_overlay: bool
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    rdev: int = 0
    atime_ns: int | None = None
    ctime_ns: int | None = None
    xattrs: bytes | None = None
    link_id: str | None = None
    """What every hard link of this file shares (its data file id), if it has one."""


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """Outcome of publishing a new base.

    ``dropped`` rows equalled the new base and were removed; ``converted`` rows
    had content equal to the new base blob, so their data file was released
    and they now point at the blob, keeping their mode and mtime; ``kept`` rows
    still diverge; ``repaired`` directory rows were added because the new base no
    longer has a directory that kept rows live in.
    """

    dropped: int
    converted: int
    kept: int
    repaired: int
    retimed: tuple[str, ...] = ()
    """Dropped rows that had an mtime of their own: these paths now report the base mtime."""


def check_name(name: str) -> None:
    """Refuse a directory entry name the overlay must never create.

    ``.git`` in any spelling NTFS or HFS+ would fold to it (what the snapshot
    hides) is refused with EPERM; empty, ``.``, ``..``, ``/`` and NUL with EINVAL.
    """
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > NAME_MAX:
        raise NameTooLong(name, "file name too long")
    reason = refusal_reason(raw)
    if reason == FOLDS_TO_GIT:
        raise ReservedName(name, "name is reserved for git")
    if reason is not None:
        raise InvalidName(name, "invalid file name")


GITFILE = ".git"


def _check_new_path(path: str, *, gitfile_allowed: bool = False) -> None:
    """Refuse a path with a name :func:`check_name` refuses; ``gitfile_allowed`` admits a last name
    of exactly ``.git`` (a submodule's gitfile, see :meth:`OverlayView.allows_gitfile`)."""
    if path == "":
        raise ResourceBusy(path, "the root directory cannot be replaced")
    names = path.split("/")
    for name in names[:-1] if gitfile_allowed and names[-1] == GITFILE else names:
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
        return OverlayRow(path, EntryKind.FILE, _base_file_mode(entry), base_oid=entry.oid)
    if entry.kind is EntryKind.SYMLINK:
        return OverlayRow(path, EntryKind.SYMLINK, _SYMLINK_MODE, base_oid=entry.oid)
    if entry.kind is EntryKind.GITLINK:
        return OverlayRow(path, EntryKind.GITLINK, _DIR_MODE, base_oid=entry.oid)
    return OverlayRow(path, EntryKind.DIR, _DIR_MODE, opaque=opaque)


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

    def __init__(self, store: OverlayStore, base: BaseTree, owner: tuple[int, int] | None = None) -> None:
        self._store = store
        self._base = base
        self._lock = threading.RLock()
        self.owner = owner if owner is not None else (os.getuid(), os.getgid())
        """(uid, gid) of every entry whose row records no owner: the base tree's owner."""
        self._base_subdirs: dict[str, int] = {}
        """Subdirectory counts of base directories (for their link count), per published base."""

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
            resolved = self._resolve(path)
            if resolved.node is None or resolved.node.kind != EntryKind.DIR:
                return resolved.node
            return replace(resolved.node, nlink=2 + self._subdirectories(resolved))

    def list_dir(self, path: str) -> list[tuple[str, Node]]:
        """The merged directory listing, sorted by name."""
        with self._lock:
            resolved = self._resolve_dir(path)
            items = self._merged_children(resolved)
            listing = []
            for name in sorted(items):
                child = _join(path, name)
                node = self._node_of(child, items[name])
                if node.kind == EntryKind.DIR:
                    item = items[name]
                    if isinstance(item, BaseEntry) and not self._store.has_child_rows(child):
                        subdirectories = self._base_subdirectories(child)
                    else:
                        subdirectories = self._subdirectories(self._resolve(child))
                    node = replace(node, nlink=2 + subdirectories)
                listing.append((name, node))
            return listing

    def _subdirectories(self, resolved: _Resolved) -> int:
        """How many directories a directory holds; from memory when it has no rows below it."""
        if resolved.base_below and not self._store.has_child_rows(resolved.path):
            return self._base_subdirectories(resolved.path)
        items = self._merged_children(resolved)
        return sum(
            1
            for item in items.values()
            if (item.kind is EntryKind.DIR if isinstance(item, BaseEntry) else item.kind == EntryKind.DIR)
        )

    def _base_subdirectories(self, path: str) -> int:
        count = self._base_subdirs.get(path)
        if count is None:
            children = self._base.children(path) or {}
            count = self._base_subdirs[path] = sum(1 for e in children.values() if e.kind is EntryKind.DIR)
        return count

    def rows(self) -> list[OverlayRow]:
        """Every overlay row: the paths that differ from the base."""
        return self._store.all_rows()

    def data_paths(self) -> list[Path]:
        """The data file of every row that has one (what :meth:`reconcile` will hash)."""
        return [self._store.data_path(row.data_id) for row in self.rows() if row.data_id is not None]

    def changed_since(self, offset: int) -> tuple[int, list[str]]:
        """The change journal's end offset and every path changed after ``offset``."""
        return self._store.changed_since(offset)

    # -- creating ------------------------------------------------------------

    def _new_owner(
        self, parent: _Resolved, owner: tuple[int, int] | None, mode: int
    ) -> tuple[int | None, int | None, int]:
        """(uid, gid, mode) to store for a new entry: a setgid directory hands down its group (and,
        to directories, its setgid bit)."""
        uid, gid = owner if owner is not None else self.owner
        assert parent.node is not None
        if parent.node.mode & stat.S_ISGID:
            gid = parent.node.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return (*self._stored_owner(uid, gid), mode)

    def _stored_owner(self, uid: int, gid: int) -> tuple[int | None, int | None]:
        """The base tree's owner is stored as None, so such rows stay redundant over an equal base
        (git's commits let reconciliation drop them) and follow ``--uid``/``--gid``."""
        return (None if uid == self.owner[0] else uid), (None if gid == self.owner[1] else gid)

    def allows_gitfile(self, path: str) -> bool:
        """Whether ``path`` is ``.git`` directly inside a submodule of the base.

        ``git submodule update --init`` writes a gitfile there (``gitdir:
        ../.git/modules/NAME``, which is in the real gitdir, outside the
        mount), exactly as in a clone. Only a regular file of that exact name
        is admitted, and only there: tree entries named ``.git`` stay hidden.
        """
        parent, _, name = path.rpartition("/")
        entry = self._base.entry(parent) if parent else None
        return name == GITFILE and entry is not None and entry.kind is EntryKind.GITLINK

    def create_file(self, path: str, mode: int, owner: tuple[int, int] | None = None) -> Node:
        """A new empty file; ``owner`` is the creating (uid, gid), the base tree's owner if None."""
        _check_new_path(path, gitfile_allowed=self.allows_gitfile(path))
        with self._lock:
            parent = self._resolve_parent(path)
            if self._resolve(path).node is not None:
                raise AlreadyExists(path, "file exists")
            uid, gid, full_mode = self._new_owner(parent, owner, stat.S_IFREG | (mode & 0o7777))
            data_id = self._store.new_data_file(None)
            row = OverlayRow(path, EntryKind.FILE, full_mode, data_id=data_id, uid=uid, gid=gid)
            try:
                with self._store.batch() as batch:
                    batch.put(row)
                    self._touch_parent(batch, path)
            except BaseException:
                self._store.discard_data([data_id])
                raise
            return self._node_of(path, row)

    def mkdir(self, path: str, mode: int, owner: tuple[int, int] | None = None) -> Node:
        _check_new_path(path)
        with self._lock:
            parent = self._resolve_parent(path)
            current = self._resolve(path)
            if current.node is not None:
                raise AlreadyExists(path, "file exists")
            opaque = not parent.base_below or current.base is not None
            uid, gid, full_mode = self._new_owner(parent, owner, stat.S_IFDIR | (mode & 0o7777))
            now = time.time_ns()
            row = OverlayRow(
                path,
                EntryKind.DIR,
                full_mode,
                opaque=opaque,
                mtime_ns=now,
                uid=uid,
                gid=gid,
                atime_ns=now,
                ctime_ns=now,
            )
            with self._store.batch() as batch:
                batch.put(row)
                self._touch_parent(batch, path)
            return replace(self._node_of(path, row), nlink=2)

    def mknod(self, path: str, mode: int, rdev: int, owner: tuple[int, int] | None = None) -> Node:
        """A FIFO, unix socket or device node (``mode`` holds its type); who may is the kernel's check."""
        _check_new_path(path)
        if not any(test(mode) for test in (stat.S_ISFIFO, stat.S_ISSOCK, stat.S_ISCHR, stat.S_ISBLK)):
            if stat.S_ISREG(mode):
                return self.create_file(path, mode, owner)
            raise InvalidOperation(path, "mknod of an unsupported file type")
        with self._lock:
            parent = self._resolve_parent(path)
            if self._resolve(path).node is not None:
                raise AlreadyExists(path, "file exists")
            uid, gid, full_mode = self._new_owner(parent, owner, stat.S_IFMT(mode) | (mode & 0o7777))
            now = time.time_ns()
            row = OverlayRow(
                path,
                EntryKind.SPECIAL,
                full_mode,
                uid=uid,
                gid=gid,
                rdev=rdev,
                mtime_ns=now,
                atime_ns=now,
                ctime_ns=now,
            )
            with self._store.batch() as batch:
                batch.put(row)
                self._touch_parent(batch, path)
            return self._node_of(path, row)

    def link(self, existing: str, path: str) -> Node:
        """A hard link: a second row sharing the file's data file (and so its metadata).

        A file still showing its base blob must be copied up first (the FUSE
        layer does it, as it hydrates). A special file gets an empty data file
        the first time it is linked, as the identity its links share.
        """
        _check_new_path(path)
        with self._lock:
            source = self._resolve(existing)
            node = self._require(source)
            if node.kind in (EntryKind.DIR, EntryKind.GITLINK):
                raise ReadOnlyEntry(existing, "cannot hard-link a directory")
            self._resolve_parent(path)
            if self._resolve(path).node is not None:
                raise AlreadyExists(path, "file exists")
            row = source.row
            if (
                node.kind == EntryKind.SYMLINK
                or row is None
                or (row.kind == EntryKind.FILE and row.data_id is None)
            ):
                raise InvalidOperation(existing, "only overlay files and special files can be hard-linked")
            fresh = None
            if row.data_id is None:
                fresh = self._store.new_data_file(None)
                row = replace(row, data_id=fresh)
            row = replace(row, ctime_ns=time.time_ns())
            try:
                with self._store.batch() as batch:
                    batch.put_metadata(row)
                    batch.put(replace(row, path=path))
                    self._touch_parent(batch, path)
            except BaseException:
                if fresh is not None:
                    self._store.discard_data([fresh])
                raise
            return self._node_of(path, row)

    def symlink(self, path: str, target: bytes, owner: tuple[int, int] | None = None) -> Node:
        _check_new_path(path)
        if not target:
            raise NotFound(path, "empty symlink target")
        if b"\0" in target:
            raise InvalidOperation(path, "symlink target contains NUL")
        with self._lock:
            parent = self._resolve_parent(path)
            if self._resolve(path).node is not None:
                raise AlreadyExists(path, "file exists")
            uid, gid, _ = self._new_owner(parent, owner, _SYMLINK_MODE)
            now = time.time_ns()
            row = OverlayRow(
                path, EntryKind.SYMLINK, _SYMLINK_MODE, target=target, uid=uid, gid=gid,
                mtime_ns=now, atime_ns=now, ctime_ns=now,
            )  # fmt: skip
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
            if node.kind in (EntryKind.DIR, EntryKind.GITLINK):
                raise IsADirectory(path, "is a directory")
            if node.kind in (EntryKind.SYMLINK, EntryKind.SPECIAL):
                raise InvalidOperation(path, f"{node.kind}s have no writable content")
            if node.data_path is not None:
                return node
            data_id = self._store.new_data_file(source)
            current = resolved.row if resolved.row is not None else self._row_for_base(resolved)
            row = replace(current, data_id=data_id, base_oid=None, mtime_ns=None)
            try:
                if current.mtime_ns is not None:
                    atime = current.atime_ns if current.atime_ns is not None else current.mtime_ns
                    os.utime(self._store.data_path(data_id), ns=(atime, current.mtime_ns))
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
            if node.kind in (EntryKind.DIR, EntryKind.GITLINK):
                raise IsADirectory(path, "is a directory")

            def remove() -> None:
                with self._store.batch() as batch:
                    self._vacate(batch, resolved)
                    self._touch_parent(batch, path)
                    if resolved.row is not None and resolved.row.data_id is not None:
                        self._touch_links(batch, resolved.row.data_id)

            self._store.with_reserve(remove)

    def rmdir(self, path: str) -> None:
        """Remove an empty directory; works on a full disk like :meth:`unlink`."""
        if path == "":
            raise ResourceBusy(path, "cannot remove the root directory")
        with self._lock:
            resolved = self._resolve(path)
            node = self._require(resolved)
            if node.kind not in (EntryKind.DIR, EntryKind.GITLINK):
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
        _check_new_path(new, gitfile_allowed=self.allows_gitfile(new))
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
                replaced = batch.get(new)
                batch.delete_subtree(new)
                batch.delete(new)
                moved[0] = replace(moved[0], ctime_ns=time.time_ns())
                for row in moved:
                    batch.put(replace(row, path=new + row.path[len(old) :]))
                self._touch_parent(batch, old)
                self._touch_parent(batch, new)
                if replaced is not None and replaced.data_id is not None:
                    self._touch_links(batch, replaced.data_id)

    def _check_replaceable(self, source: _Resolved, target: _Resolved, *, noreplace: bool) -> None:
        assert source.node is not None and target.node is not None
        if noreplace:
            raise AlreadyExists(target.path, "file exists")
        source_is_dir = source.node.kind in (EntryKind.DIR, EntryKind.GITLINK)
        target_is_dir = target.node.kind in (EntryKind.DIR, EntryKind.GITLINK)
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
        elif row.kind != EntryKind.DIR:
            return [row]
        else:
            top = replace(row, opaque=True)
        if not _is_dir(entry):
            below = self._store.subtree(path)
            return [
                top,
                *(
                    replace(r, opaque=True) if r.kind == EntryKind.DIR else r
                    for r in below
                    if r.kind != EntryKind.WHITEOUT
                ),
            ]
        rows = {_name_of(r.path): r for r in self._store.children(path)}
        base_children = self._base.children(path) or {}
        result = [top]
        for name in sorted(rows.keys() | base_children.keys()):
            child_row, child_entry = rows.get(name), base_children.get(name)
            if child_row is not None and child_row.kind == EntryKind.WHITEOUT:
                continue
            if child_row is not None and (child_row.kind != EntryKind.DIR or child_row.opaque):
                child_entry = None
            result.extend(self._materialize_entry(_join(path, name), child_row, child_entry))
        return result

    # -- metadata ------------------------------------------------------------

    def chmod(self, path: str, mode: int) -> Node:
        """Change permission bits without copying content (symlinks and gitlinks ignore it)."""
        return self.set_attributes(path, mode=mode)

    def set_mtime(self, path: str, mtime_ns: int) -> Node:
        return self.set_attributes(path, atime_ns=mtime_ns, mtime_ns=mtime_ns)

    def set_attributes(
        self,
        path: str,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> Node:
        """chmod, chown and utimes in one change, never copying content; ctime becomes now.

        Who may do what is the kernel's check (``default_permissions``), as is
        clearing set-id bits on chown and write (it sends the new mode along).
        Hard links share the result. Symlinks and gitlinks keep their mode.
        """
        with self._lock:
            resolved = self._resolve(path)
            node = self._require(resolved)
            current = resolved.row if resolved.row is not None else self._row_for_base(resolved)
            row = replace(current, ctime_ns=time.time_ns())
            if mode is not None and node.kind not in (EntryKind.SYMLINK, EntryKind.GITLINK):
                row = replace(row, mode=stat.S_IFMT(current.mode) | (mode & 0o7777))
            if uid is not None or gid is not None:
                stored_uid, stored_gid = self._stored_owner(
                    uid if uid is not None else node.uid, gid if gid is not None else node.gid
                )
                row = replace(row, uid=stored_uid, gid=stored_gid)
            if atime_ns is not None or mtime_ns is not None:
                if row.kind == EntryKind.FILE and row.data_id is not None:
                    data_path = self._store.data_path(row.data_id)
                    info = os.stat(data_path, follow_symlinks=False)
                    os.utime(
                        data_path,
                        ns=(
                            atime_ns if atime_ns is not None else info.st_atime_ns,
                            mtime_ns if mtime_ns is not None else info.st_mtime_ns,
                        ),
                        follow_symlinks=False,
                    )
                else:
                    old_mtime = node.mtime_ns if node.mtime_ns is not None else mtime_ns
                    row = replace(
                        row,
                        mtime_ns=mtime_ns if mtime_ns is not None else old_mtime,
                        atime_ns=atime_ns if atime_ns is not None else node.atime_ns,
                    )
            with self._store.batch() as batch:
                batch.put_metadata(row)
            return self.lookup(path) or self._node_of(path, row)

    def xattrs(self, path: str) -> dict[bytes, bytes]:
        """The extended attributes of ``path``."""
        with self._lock:
            return decode_xattrs(self._require(self._resolve(path)).xattrs)

    def set_xattr(self, path: str, name: bytes, value: bytes | None) -> None:
        """Set (``value``) or remove (None) one extended attribute; hard links share them."""
        with self._lock:
            resolved = self._resolve(path)
            node = self._require(resolved)
            attributes = decode_xattrs(node.xattrs)
            if value is None:
                if attributes.pop(name, None) is None:
                    raise NoAttribute(path, "no such attribute")
            else:
                attributes[name] = value
            current = resolved.row if resolved.row is not None else self._row_for_base(resolved)
            row = replace(current, xattrs=encode_xattrs(attributes), ctime_ns=time.time_ns())
            with self._store.batch() as batch:
                batch.put_metadata(row)

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
        content and mode equal to the new base entry and no mtime of its own, a
        whiteout over nothing, a directory equal to the new base's (an opaque
        one only when every base child is covered by its own row), and only
        where the base shows through. A data file whose content equals the new
        blob is released and its row kept as a metadata-only row with the data
        file's mode and mtime: the file git just wrote keeps the stat data git
        recorded in its index (or git would re-read every such file on its next
        command) and never goes back in time (which would fool ``make``). Rows
        at ``busy`` paths (files open for writing) are never touched.
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
                    shows_base[path] = above and row.kind == EntryKind.DIR and not row.opaque
            return shows_base[path]

        link_counts: dict[str, int] = defaultdict(int)
        for row in rows:
            if row.data_id is not None:
                link_counts[row.data_id] += 1
        for row in rows:
            if blob_oid_of is None or row.path in busy:
                continue
            if row.data_id is not None and link_counts[row.data_id] > 1:
                continue  # a hard link: dropping one row would split the file
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
                return row.kind == EntryKind.DIR
            return base_shows_below(parent_of(path)) and _is_dir(new_base.entry(path))

        now = time.time_ns()
        for row in rows:
            if row.path == "" or row.kind == EntryKind.WHITEOUT or row.path in dropped:
                continue
            parent = parent_of(row.path)
            while not is_dir_after(parent):
                repaired[parent] = OverlayRow(parent, EntryKind.DIR, _DIR_MODE, opaque=True, mtime_ns=now)
                parent = parent_of(parent)

        with self._store.batch(journal=False) as batch:
            for path in dropped:
                batch.delete(path)
            for replacement in converted.values():
                batch.put(replacement)
            for replacement in repaired.values():
                batch.put(replacement)
        self._base = new_base
        self._base_subdirs = {}
        return ReconcileReport(
            retimed=tuple(path for path in sorted(dropped) if by_path[path].mtime_ns is not None),
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
        if row.kind == EntryKind.WHITEOUT:
            return "drop" if entry is None else "keep"
        if entry is None or row.metadata_differs_from_base():
            return "keep"
        if row.kind == EntryKind.FILE and entry.kind is EntryKind.FILE:
            same_mode = row.mode == _base_file_mode(entry)
            if row.data_id is None:
                unchanged = row.base_oid == entry.oid and same_mode and row.mtime_ns is None
                return "drop" if unchanged else "keep"
            data_path = self._store.data_path(row.data_id)
            if blob_oid_of(data_path) != entry.oid:
                return "keep"
            mtime_ns = os.stat(data_path, follow_symlinks=False).st_mtime_ns
            return OverlayRow(row.path, EntryKind.FILE, row.mode, base_oid=entry.oid, mtime_ns=mtime_ns)
        if row.kind == EntryKind.SYMLINK and entry.kind is EntryKind.SYMLINK:
            target_oid = row.base_oid if row.target is None else blob_id(row.target)
            return "drop" if target_oid == entry.oid else "keep"
        if row.kind == EntryKind.GITLINK and entry.kind is EntryKind.GITLINK:
            return "drop" if row.base_oid == entry.oid else "keep"
        if row.kind == EntryKind.DIR and entry.kind is EntryKind.DIR and row.mode == _DIR_MODE:
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
            elif row.kind != EntryKind.DIR:
                return _Resolved(path, None, None, None, False)
            elif prefix:
                visible = visible and not row.opaque and _is_dir(entry)
        row = rows.get(path)
        entry = self._base.entry(path) if visible else None
        if path == "" and entry is None:
            entry = BaseEntry(EntryKind.DIR, 0o040000, "")
        if row is not None:
            node = None if row.kind == EntryKind.WHITEOUT else self._node_of(path, row)
            below = row.kind == EntryKind.DIR and not row.opaque and _is_dir(entry)
            return _Resolved(path, node, row, entry, below)
        node = None if entry is None else self._node_of(path, entry)
        return _Resolved(path, node, None, entry, _is_dir(entry))

    def _resolve_dir(self, path: str) -> _Resolved:
        resolved = self._resolve(path)
        node = self._require(resolved)
        if node.kind not in (EntryKind.DIR, EntryKind.GITLINK):
            raise NotADirectory(path, "not a directory")
        return resolved

    def _resolve_parent(self, path: str) -> _Resolved:
        """The directory a new entry at ``path`` goes into.

        A submodule placeholder (an empty directory, as in a clone before
        ``git submodule update``) becomes an opaque directory row on its first
        new entry: that is where git checks the submodule out. The row differs
        from the base's gitlink, so later HEAD moves keep it.
        """
        resolved = self._resolve_dir(parent_of(path))
        assert resolved.node is not None
        if resolved.node.kind == EntryKind.GITLINK:
            with self._store.batch() as batch:
                batch.put(
                    OverlayRow(resolved.path, EntryKind.DIR, _DIR_MODE, opaque=True, mtime_ns=time.time_ns())
                )
            resolved = self._resolve_dir(resolved.path)
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
            if row.kind == EntryKind.WHITEOUT:
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
        kind: EntryKind = EntryKind.DIR if item.kind == EntryKind.WHITEOUT else item.kind
        mode, base_oid, data_path = item.mode, item.base_oid, None
        mtime_ns, atime_ns, ctime_ns = item.mtime_ns, item.atime_ns, item.ctime_ns
        nlink = 2 if kind in (EntryKind.DIR, EntryKind.GITLINK) else 1
        if item.data_id is not None:
            nlink = self._store.link_count(item.data_id)
        if kind == EntryKind.FILE and item.data_id is not None:
            data_path = self._store.data_path(item.data_id)
            info = os.stat(data_path, follow_symlinks=False)
            mtime_ns, atime_ns = info.st_mtime_ns, info.st_atime_ns
            ctime_ns = max(item.ctime_ns or 0, info.st_ctime_ns)
        elif kind == EntryKind.SYMLINK:
            mode = _SYMLINK_MODE
        elif kind == EntryKind.GITLINK:
            mode, base_oid = _DIR_MODE, None
        return Node(
            path,
            kind,
            mode,
            base_oid,
            data_path,
            item.target,
            mtime_ns,
            True,
            uid=item.uid if item.uid is not None else self.owner[0],
            gid=item.gid if item.gid is not None else self.owner[1],
            nlink=nlink,
            rdev=item.rdev,
            atime_ns=atime_ns,
            ctime_ns=ctime_ns,
            xattrs=item.xattrs,
            link_id=item.data_id,
        )

    def _node_of_base(self, path: str, entry: BaseEntry) -> Node:
        uid, gid = self.owner
        if entry.kind is EntryKind.FILE:
            return Node(
                path, EntryKind.FILE, _base_file_mode(entry), entry.oid, None, None, None, False, uid, gid
            )
        if entry.kind is EntryKind.SYMLINK:
            return Node(path, EntryKind.SYMLINK, _SYMLINK_MODE, entry.oid, None, None, None, False, uid, gid)
        kind: EntryKind = EntryKind.GITLINK if entry.kind is EntryKind.GITLINK else EntryKind.DIR
        return Node(path, kind, _DIR_MODE, None, None, None, None, False, uid, gid, nlink=2)

    @staticmethod
    def _row_for_base(resolved: _Resolved) -> OverlayRow:
        """A metadata row standing for the base entry at a path that has no row."""
        assert resolved.base is not None
        return _row_from_base(resolved.path, resolved.base, opaque=False)

    @staticmethod
    def _vacate(batch: Batch, resolved: _Resolved) -> None:
        """Make ``resolved.path`` empty: whiteout if the base shows something there."""
        if resolved.base is not None:
            batch.put(OverlayRow(resolved.path, EntryKind.WHITEOUT))
        else:
            batch.delete(resolved.path)

    @staticmethod
    def _touch_parent(batch: Batch, path: str) -> None:
        """Record that the directory containing ``path`` changed (its mtime and ctime)."""
        parent = parent_of(path)
        now = time.time_ns()
        row = batch.get(parent)
        if row is None:
            batch.put(OverlayRow(parent, EntryKind.DIR, _DIR_MODE, mtime_ns=now, ctime_ns=now))
        else:
            batch.put(replace(row, mtime_ns=now, ctime_ns=now))

    @staticmethod
    def _touch_links(batch: Batch, data_id: str) -> None:
        """A link of a file went away: the links that remain have a new ctime."""
        remaining = batch.links(data_id)
        if remaining:
            row = batch.get(remaining[0])
            assert row is not None
            batch.put_metadata(replace(row, ctime_ns=time.time_ns()))
