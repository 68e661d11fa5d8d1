"""Persistence of the overlay: one SQLite row per changed path plus content data files.

The store owns ``<state>/overlay.db`` and ``<state>/data/``. It knows nothing about
the base tree; :mod:`artifactfs.overlay.view` gives the rows their meaning.

Durability contract:

* every mutation is one SQLite transaction committed before the call returns, so
  a killed daemon never loses a metadata change it acknowledged;
* file content lives in data files named by generated ids and is written by the
  FUSE layer directly, so writes need no database update (size and mtime come
  from ``os.stat`` of the data file);
* :meth:`OverlayStore.sync` is what ``fsync`` maps to: it flushes a data file,
  the data directory and the database files to stable storage;
* a data file is created before the row that references it is committed and is
  unlinked only after the row that referenced it is gone, so a crash can leave
  unreferenced data files (removed on the next start) but never a row that
  points at a missing file.

Full disk: a failed write changes nothing (a failed commit is rolled back, a
torn journal record is cut off), so the caller gets ENOSPC and the metadata
stays consistent. Removing entries must keep working on a full disk, because
that is how space is freed through the mount, yet it still writes (a whiteout
or parent row in the WAL, a journal record). For that the store keeps a
pre-allocated *reserve* file of :data:`RESERVE_BYTES` beside the database:
:meth:`OverlayStore.with_reserve` runs such an operation and, if it fails for
lack of space, deletes the reserve and runs it once more; the reserve is grown
back whenever the store frees a data file. A reserve file rather than a free
space threshold: it is space ArtifactFS already holds, so nothing else on the
filesystem (the blob cache, other programs) can take it first.

Paths are stored as bytes (UTF-8 with ``surrogateescape``) so names that are
not valid UTF-8 survive a round trip.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import quote

from artifactfs.errors import ArtifactFSError
from artifactfs.overlay.errors import is_no_space
from artifactfs.overlay.rowindex import RowIndex
from artifactfs.snapshot.entries import EntryKind
from artifactfs.state import free_bytes, open_private, private_dir

_SCHEMA_VERSION = 2
_DATA_ID_RE = re.compile(r"[0-9a-f]{32}")
_V1_COLUMNS = "path, kind, mode, data_id, base_oid, target, opaque, mtime_ns"
_COLUMNS = f"{_V1_COLUMNS}, uid, gid, atime_ns, ctime_ns, rdev, xattrs"
_COLUMNS_OF_V1 = f"{_V1_COLUMNS}, NULL, NULL, NULL, NULL, 0, NULL"
"""What a version-1 database (before ownership, times, special files and xattrs) reads as."""
_TABLE = """
CREATE TABLE {name} (
    path     BLOB PRIMARY KEY,
    parent   BLOB,
    kind     TEXT NOT NULL CHECK (kind IN ('file', 'dir', 'symlink', 'gitlink', 'special', 'whiteout')),
    mode     INTEGER NOT NULL,
    data_id  TEXT,
    base_oid TEXT,
    target   BLOB,
    opaque   INTEGER NOT NULL DEFAULT 0,
    mtime_ns INTEGER,
    uid      INTEGER,
    gid      INTEGER,
    atime_ns INTEGER,
    ctime_ns INTEGER,
    rdev     INTEGER NOT NULL DEFAULT 0,
    xattrs   BLOB
) WITHOUT ROWID;
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS entries_parent ON entries (parent);
CREATE INDEX IF NOT EXISTS entries_data_id ON entries (data_id) WHERE data_id IS NOT NULL;
"""
_SCHEMA = _TABLE.format(name="entries") + _INDEXES
_MIGRATE_FROM_V1 = (
    _TABLE.format(name="entries_v2")
    + f"INSERT INTO entries_v2 (parent, {_V1_COLUMNS}) SELECT parent, {_V1_COLUMNS} FROM entries;"
    + "DROP TABLE entries; ALTER TABLE entries_v2 RENAME TO entries;"
    + _INDEXES
)
"""Version 2 adds columns and a row kind; SQLite cannot change a CHECK in place, so the table is rebuilt."""
_JOURNAL_LIMIT = 8 << 20
"""A journal larger than this is started afresh when the store opens (a new generation)."""
RESERVE_BYTES = 1 << 20
"""Space held back for removals on a full disk (one removal writes a few pages of WAL and journal)."""
WRITABLE_MINIMUM = 256 << 10
"""Free space (the reserve included) below which the overlay should be opened read-only: opening it
for writing takes SQLite's shared-memory index (32 KiB) and WAL, and removals need some reserve."""
_RESERVE_NAME = "reserve"
_T = TypeVar("_T")


class ChangeJournal:
    """Append-only file of NUL-terminated paths, one per change, in the order they happened.

    Readers address it by byte offset. It is plain bytes on purpose: git's
    fsmonitor hook (a shell script) answers "what changed since offset N" with
    ``tail``, in a few milliseconds. A new generation starts when the store
    opens with a journal past the size limit; the previous generation is kept
    (one only), so an offset into it still answers: its rest, then the whole
    current journal. A reader whose offset refers to an older generation, or
    lies beyond the end, must assume everything changed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.previous_path = path.with_name(path.name + ".previous")
        """The generation before the current one."""
        with suppress(FileNotFoundError):
            if path.lstat().st_size > _JOURNAL_LIMIT:
                os.replace(path, self.previous_path)
        self._fd = open_private(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def append(self, keys: Iterable[bytes]) -> None:
        """Append records whole: after a failed write (ENOSPC) the journal ends where it ended before,
        since a torn record would merge with the next one into a path that never changed."""
        records = memoryview(b"".join(key + b"\0" for key in keys if key))
        if not records:
            return
        end = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            while records:
                records = records[os.write(self._fd, records) :]
        except OSError:
            os.ftruncate(self._fd, end)
            raise

    def read_since(self, offset: int) -> tuple[int, list[bytes]]:
        with os.fdopen(open_private(self.path, os.O_RDONLY), "rb") as stream:
            stream.seek(offset)
            tail = stream.read()
        return offset + len(tail), [key for key in tail.split(b"\0") if key]

    def close(self) -> None:
        os.close(self._fd)


class OverlayStoreError(ArtifactFSError):
    """The state directory holds something this version cannot use."""


class Readable(Protocol):
    """Where copied-up content comes from: anything with a file-like ``read``."""

    def read(self, length: int = -1, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class OverlayRow:
    """One overlay entry.

    ``mode`` is a full ``st_mode`` (type and permission bits; 0 for whiteouts).
    A ``file`` has exactly one of ``data_id`` (content in a data file) or
    ``base_oid`` (content is still that base blob; only metadata changed). A
    ``symlink`` has ``target`` or, when moved or touched unchanged from the base,
    ``base_oid``. A ``gitlink`` (submodule placeholder) has the commit id in
    ``base_oid``. ``opaque`` dirs hide whatever the base has below them.
    ``mtime_ns`` is unused for data-file rows (the data file's own mtime counts)
    and ``None`` elsewhere means "unchanged since the base". A ``special`` row is a
    FIFO, socket or device node (type in ``mode``, device number in ``rdev``).
    ``uid``/``gid`` None means the owner of the base tree; ``atime_ns`` and
    ``ctime_ns`` None mean "as mtime" (a data file's own atime counts when set).
    ``xattrs`` is :func:`encode_xattrs` of the extended attributes (None: none).
    Rows that share a ``data_id`` are hard links of one file and carry the same
    metadata.
    """

    path: str
    kind: EntryKind
    mode: int = 0
    data_id: str | None = None
    base_oid: str | None = None
    target: bytes | None = None
    opaque: bool = False
    mtime_ns: int | None = None
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    ctime_ns: int | None = None
    rdev: int = 0
    xattrs: bytes | None = None

    def __post_init__(self) -> None:
        if self.kind == EntryKind.FILE and (self.data_id is None) == (self.base_oid is None):
            raise ValueError(f"file row needs exactly one of data_id or base_oid: {self.path!r}")
        if self.kind == EntryKind.SYMLINK and (self.target is None) == (self.base_oid is None):
            raise ValueError(f"symlink row needs exactly one of target or base_oid: {self.path!r}")
        if self.kind == EntryKind.GITLINK and self.base_oid is None:
            raise ValueError(f"gitlink row needs a commit id: {self.path!r}")
        if self.data_id is not None and self.kind not in (EntryKind.FILE, EntryKind.SPECIAL):
            raise ValueError(f"only file and special rows have data files: {self.path!r}")
        if self.kind == EntryKind.SPECIAL and not (stat.S_ISFIFO(self.mode) or stat.S_ISSOCK(self.mode)):
            if not (stat.S_ISCHR(self.mode) or stat.S_ISBLK(self.mode)):
                raise ValueError(f"special row with mode {self.mode:o}: {self.path!r}")

    def metadata_differs_from_base(self) -> bool:
        """Whether the row records ownership or xattrs a base entry cannot show."""
        return self.uid is not None or self.gid is not None or bool(self.xattrs)


def encode_xattrs(attributes: dict[bytes, bytes]) -> bytes | None:
    """Extended attributes as one column value: length-prefixed name and value pairs, sorted."""
    if not attributes:
        return None
    parts = []
    for name in sorted(attributes):
        value = attributes[name]
        parts.append(len(name).to_bytes(4, "big") + name + len(value).to_bytes(4, "big") + value)
    return b"".join(parts)


def decode_xattrs(raw: bytes | None) -> dict[bytes, bytes]:
    attributes: dict[bytes, bytes] = {}
    offset = 0
    while raw and offset < len(raw):
        size = int.from_bytes(raw[offset : offset + 4], "big")
        name = raw[offset + 4 : offset + 4 + size]
        offset += 4 + size
        size = int.from_bytes(raw[offset : offset + 4], "big")
        attributes[name] = raw[offset + 4 : offset + 4 + size]
        offset += 4 + size
    return attributes


def encode_path(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def decode_path(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def parent_of(path: str) -> str:
    """The parent directory of a non-root path ("" for top-level names)."""
    return path.rpartition("/")[0]


def _subtree_bounds(path: str) -> tuple[bytes, bytes]:
    """Key range holding exactly the strict descendants of ``path`` ("0" follows "/")."""
    key = encode_path(path)
    return key + b"/", key + b"0"


_Record = tuple[
    bytes, str, int, str | None, str | None, bytes | None, int, int | None,
    int | None, int | None, int | None, int | None, int, bytes | None,
]  # fmt: skip


def _row_from_db(record: _Record) -> OverlayRow:
    raw_path, kind, mode, data_id, base_oid, target, opaque, mtime_ns = record[:8]
    uid, gid, atime_ns, ctime_ns, rdev, xattrs = record[8:]
    return OverlayRow(
        path=decode_path(raw_path),
        kind=EntryKind(kind),
        mode=mode,
        data_id=data_id,
        base_oid=base_oid,
        target=target,
        opaque=bool(opaque),
        mtime_ns=mtime_ns,
        uid=uid,
        gid=gid,
        atime_ns=atime_ns,
        ctime_ns=ctime_ns,
        rdev=rdev,
        xattrs=xattrs,
    )


_METADATA_COLUMNS = ("mode", "uid", "gid", "atime_ns", "ctime_ns", "xattrs")
"""What hard links share (content and mtime are the shared data file's)."""


class Batch:
    """Mutations that commit together; obtained from :meth:`OverlayStore.batch`.

    Reads through the batch see its uncommitted writes. Data files that no row
    references once the batch is complete are unlinked after the commit, so
    moving a row (delete + put with the same ``data_id``) keeps its data file.
    """

    def __init__(self, conn: sqlite3.Connection, journal: ChangeJournal | None) -> None:
        self._conn = conn
        self._journal = journal
        self._data_ids: set[str] = set()
        """Data ids whose number of rows may have changed: unreferenced ones are unlinked, shared ones
        (hard links) counted."""
        self._touched: list[bytes] = []
        self.changes: list[tuple[str, bool]] = []
        """(path, has a row afterwards) for every row written or deleted, in order."""
        self.parent_deltas: dict[bytes | None, int] = {}
        """Change in the number of rows under each parent key, applied to the store's count on commit."""

    def get(self, path: str) -> OverlayRow | None:
        record = self._conn.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE path = ?", (encode_path(path),)
        ).fetchone()
        return None if record is None else _row_from_db(record)

    def put(self, row: OverlayRow) -> None:
        """Insert or replace the row at ``row.path``."""
        key = encode_path(row.path)
        previous = self._conn.execute("SELECT data_id FROM entries WHERE path = ?", (key,)).fetchone()
        if previous is not None and previous[0] is not None:
            self._data_ids.add(previous[0])
        if row.data_id is not None:
            self._data_ids.add(row.data_id)
        parent = None if row.path == "" else encode_path(parent_of(row.path))
        self._conn.execute(
            f"INSERT OR REPLACE INTO entries (parent, {_COLUMNS}) VALUES ({', '.join('?' * 15)})",
            (
                parent,
                key,
                row.kind,
                row.mode,
                row.data_id,
                row.base_oid,
                row.target,
                int(row.opaque),
                row.mtime_ns,
                row.uid,
                row.gid,
                row.atime_ns,
                row.ctime_ns,
                row.rdev,
                row.xattrs,
            ),
        )
        self._touched.append(key)
        self.changes.append((row.path, True))
        if previous is None:
            self.parent_deltas[parent] = self.parent_deltas.get(parent, 0) + 1

    def put_metadata(self, row: OverlayRow) -> None:
        """Put ``row`` and give its metadata to every hard link of it (rows sharing its data file)."""
        self.put(row)
        if row.data_id is None:
            return
        assignments = ", ".join(f"{column} = ?" for column in _METADATA_COLUMNS)
        linked = self._conn.execute(
            f"UPDATE entries SET {assignments} WHERE data_id = ? AND path != ? RETURNING path",
            (*(getattr(row, column) for column in _METADATA_COLUMNS), row.data_id, encode_path(row.path)),
        ).fetchall()
        self._touched.extend(key for (key,) in linked)

    def links(self, data_id: str) -> list[str]:
        """Every path whose row uses ``data_id``: the hard links of one file."""
        return [
            decode_path(key)
            for (key,) in self._conn.execute("SELECT path FROM entries WHERE data_id = ?", (data_id,))
        ]

    def delete(self, path: str) -> None:
        key = encode_path(path)
        for (data_id,) in self._conn.execute(
            "DELETE FROM entries WHERE path = ? RETURNING data_id", (key,)
        ).fetchall():
            if data_id is not None:
                self._data_ids.add(data_id)
            self._touched.append(key)
            self.changes.append((path, False))
            self._removed(key)

    def _removed(self, key: bytes) -> None:
        parent = None if key == b"" else key.rpartition(b"/")[0]
        self.parent_deltas[parent] = self.parent_deltas.get(parent, 0) - 1

    def delete_subtree(self, path: str) -> None:
        """Delete every strict descendant of ``path`` (all rows but the root's, for "")."""
        if path == "":
            deleted = self._conn.execute(
                "DELETE FROM entries WHERE path != ? RETURNING path, data_id", (b"",)
            )
        else:
            deleted = self._conn.execute(
                "DELETE FROM entries WHERE path > ? AND path < ? RETURNING path, data_id",
                _subtree_bounds(path),
            )
        for key, data_id in deleted.fetchall():
            if data_id is not None:
                self._data_ids.add(data_id)
            self._touched.append(key)
            self.changes.append((decode_path(key), False))
            self._removed(key)

    def record(self, path: str) -> None:
        """Journal ``path`` as changed without changing its row (e.g. content written)."""
        self._touched.append(encode_path(path))

    def _finish(self) -> dict[str, int]:
        """Write the journal and return how many rows each data id it changed now has (0: unreferenced).

        The journal is written before the commit: after a crash it may name a
        change that did not happen, never miss one that did.
        """
        if self._journal is not None and self._touched:
            self._journal.append(self._touched)
        return {
            data_id: self._conn.execute(
                "SELECT count(*) FROM entries WHERE data_id = ?", (data_id,)
            ).fetchone()[0]
            for data_id in sorted(self._data_ids)
        }


class OverlayStore:
    """The overlay's rows, data files and change journal under one state directory.

    Safe to share between threads: every public method holds one lock.

    Opening deletes the reserve (see the module docstring) so that opening and
    the rest of a start-up have room on a full disk; :meth:`arm_reserve`
    builds it up again. ``read_only`` opens an existing database without
    writing it (a mount with too little space to write).
    """

    def __init__(self, state_dir: Path, *, read_only: bool = False) -> None:
        self.state_dir = state_dir
        self.data_dir = state_dir / "data"
        self._db_path = state_dir / "overlay.db"
        self._reserve_path = state_dir / _RESERVE_NAME
        self._reserve_wanted = False
        self._reserve_complete = False
        self._lock = threading.RLock()
        self._columns = _COLUMNS
        self._child_rows: dict[bytes | None, int] = {}
        """Rows per parent key, kept in memory so a directory without rows costs no query."""
        self._shared: dict[str, int] = {}
        """Rows per data id for ids that more than one row uses (hard links), kept in memory."""
        if read_only:
            uri = f"file:{quote(str(self._db_path))}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            private_dir(state_dir)
            private_dir(self.data_dir)
            self._release_reserve()
            os.close(
                open_private(self._db_path, os.O_RDWR | os.O_CREAT)
            )  # 0600; SQLite's -wal and -shm copy it
            self._conn = sqlite3.connect(self._db_path, isolation_level=None, check_same_thread=False)
        try:
            self._open_database(read_only)
            self.rows_index = RowIndex(
                decode_path(key) for (key,) in self._conn.execute("SELECT path FROM entries")
            )
            """Paths with rows, so reads of unchanged paths skip SQLite."""
        except BaseException:
            self._conn.close()
            raise
        self.journal = ChangeJournal(state_dir / "journal")
        self.removed_at_startup = [] if read_only else self._remove_unreferenced_data()
        """Names of the unreferenced data files deleted while opening (for logging)."""

    def _open_database(self, read_only: bool) -> None:
        """Check the schema version; create the schema only in a new database (an existing one is
        not written while opening, so a full disk does not stop a remount)."""
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, 1, _SCHEMA_VERSION):
            raise OverlayStoreError(f"overlay database {self._db_path} has unknown schema version {version}")
        if read_only:
            if version == 0:
                raise OverlayStoreError(
                    f"overlay database {self._db_path} was never set up; it cannot be read"
                )
            if version == 1:
                self._columns = _COLUMNS_OF_V1
            self._count_rows()
            return
        if self._conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self._conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL: commits reach the OS before returning (survive kill -9);
        # sync() makes them survive power loss too.
        self._conn.execute("PRAGMA synchronous = NORMAL")
        if version == 0:
            self._conn.executescript(_SCHEMA)
            self._conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        elif version == 1:
            self._conn.executescript(f"BEGIN IMMEDIATE; {_MIGRATE_FROM_V1} PRAGMA user_version = 2; COMMIT;")
        self._count_rows()

    def _count_rows(self) -> None:
        """Load the in-memory counts: rows per parent, rows per shared data id."""
        self._child_rows = dict(self._conn.execute("SELECT parent, count(*) FROM entries GROUP BY parent"))
        self._shared = dict(
            self._conn.execute(
                "SELECT data_id, count(*) FROM entries WHERE data_id IS NOT NULL"
                " GROUP BY data_id HAVING count(*) > 1"
            )
        )

    def has_child_rows(self, path: str) -> bool:
        """Whether any row (whiteouts included) lies directly below ``path``; answered from memory."""
        with self._lock:
            return self._child_rows.get(encode_path(path), 0) > 0

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            self.journal.close()

    def __enter__(self) -> OverlayStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------

    def get(self, path: str) -> OverlayRow | None:
        if path not in self.rows_index:
            return None
        with self._lock:
            record = self._conn.execute(
                f"SELECT {self._columns} FROM entries WHERE path = ?", (encode_path(path),)
            ).fetchone()
        return None if record is None else _row_from_db(record)

    def link_count(self, data_id: str) -> int:
        """How many rows share ``data_id`` (a file's hard links); answered from memory."""
        with self._lock:
            return self._shared.get(data_id, 1)

    def get_many(self, paths: Iterable[str]) -> dict[str, OverlayRow]:
        keys = [encode_path(path) for path in paths if path in self.rows_index]
        if not keys:
            return {}
        marks = ", ".join("?" * len(keys))
        with self._lock:
            records = self._conn.execute(
                f"SELECT {self._columns} FROM entries WHERE path IN ({marks})", keys
            ).fetchall()
        rows = (_row_from_db(record) for record in records)
        return {row.path: row for row in rows}

    def children(self, path: str) -> list[OverlayRow]:
        """Rows whose parent is ``path`` (whiteouts included)."""
        if not self.has_child_rows(path):
            return []
        with self._lock:
            records = self._conn.execute(
                f"SELECT {self._columns} FROM entries WHERE parent = ?", (encode_path(path),)
            ).fetchall()
        return [_row_from_db(record) for record in records]

    def subtree(self, path: str) -> list[OverlayRow]:
        """Rows strictly below ``path``, parents before children."""
        with self._lock:
            if path == "":
                records = self._conn.execute(
                    f"SELECT {self._columns} FROM entries WHERE path != ? ORDER BY path", (b"",)
                ).fetchall()
            else:
                records = self._conn.execute(
                    f"SELECT {self._columns} FROM entries WHERE path > ? AND path < ? ORDER BY path",
                    _subtree_bounds(path),
                ).fetchall()
        return [_row_from_db(record) for record in records]

    def all_rows(self) -> list[OverlayRow]:
        """Every row, parents before children."""
        with self._lock:
            records = self._conn.execute(f"SELECT {self._columns} FROM entries ORDER BY path").fetchall()
        return [_row_from_db(record) for record in records]

    def changed_since(self, offset: int) -> tuple[int, list[str]]:
        """The journal's end offset and the sorted paths journaled after ``offset``."""
        with self._lock:
            end, keys = self.journal.read_since(offset)
        return end, sorted({decode_path(key) for key in keys})

    # -- writing -------------------------------------------------------------

    @contextmanager
    def batch(self, *, journal: bool = True) -> Iterator[Batch]:
        """One transaction: committed when the block exits, rolled back if it raises.

        With ``journal=False`` the changes are not recorded in the change journal
        (used when the visible namespace does not change, e.g. reconciliation).
        """
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                batch = Batch(self._conn, self.journal if journal else None)
                yield batch
                counts = batch._finish()
                self._conn.execute("COMMIT")
                self.rows_index.apply(batch.changes)
                for parent, delta in batch.parent_deltas.items():
                    self._child_rows[parent] = self._child_rows.get(parent, 0) + delta
                for data_id, count in counts.items():
                    if count > 1:
                        self._shared[data_id] = count
                    else:
                        self._shared.pop(data_id, None)
            except BaseException:
                # SQLite has already rolled back a COMMIT that failed for lack of space.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            self.discard_data(data_id for data_id, count in counts.items() if count == 0)

    def with_reserve(self, operation: Callable[[], _T]) -> _T:
        """Run ``operation``, a change that must work on a full disk (a removal, journaling a write).

        If it fails for lack of space, the reserve is deleted and the operation
        runs once more; the reserve is then built up again as far as space allows.
        """
        with self._lock:
            try:
                return operation()
            except Exception as error:
                if not (self._reserve_wanted and is_no_space(error) and self._release_reserve()):
                    raise
            try:
                return operation()
            finally:
                self.arm_reserve()

    def arm_reserve(self) -> None:
        """Grow the reserve file towards :data:`RESERVE_BYTES`, as far as the free space allows.

        The first call turns the reserve on; from then on space the store frees refills it.
        """
        with self._lock:
            self._reserve_wanted = True
            if self._reserve_complete:
                return
            try:
                fd = open_private(self._reserve_path, os.O_WRONLY | os.O_CREAT)
                try:
                    size = os.fstat(fd).st_size
                    target = min(RESERVE_BYTES, size + free_bytes(self.state_dir) // 4096 * 4096)
                    if target > size:
                        os.posix_fallocate(fd, 0, target)
                    self._reserve_complete = target == RESERVE_BYTES
                finally:
                    os.close(fd)
            except OSError:
                # Space (or an inode) taken meanwhile: tried again when the store next frees
                # space. On a filesystem that cannot allocate, removals rely on free space alone.
                return

    def _release_reserve(self) -> bool:
        """Delete the reserve; True if that freed space."""
        self._reserve_complete = False
        try:
            size = os.lstat(self._reserve_path).st_size
            os.unlink(self._reserve_path)
        except FileNotFoundError:
            return False
        return size > 0

    def new_data_file(self, source: Readable | None) -> str:
        """Create a data file holding what ``source`` reads (empty if None); returns its id.

        The caller must commit a row referencing the id, or :meth:`discard_data` it.
        """
        data_id = secrets.token_hex(16)
        fd = open_private(self.data_path(data_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            with os.fdopen(fd, "wb") as target:
                if source is not None:
                    shutil.copyfileobj(source, target, 1 << 20)
        except BaseException:
            self.discard_data([data_id])
            raise
        return data_id

    def data_path(self, data_id: str) -> Path:
        if _DATA_ID_RE.fullmatch(data_id) is None:
            raise ValueError(f"not a data file id: {data_id!r}")
        return self.data_dir / data_id

    def discard_data(self, data_ids: Iterable[str]) -> None:
        """Unlink data files no row references (open descriptors keep working).

        Space freed here first refills a reserve that a removal on a full disk used.
        """
        freed = False
        for data_id in data_ids:
            with suppress(FileNotFoundError):
                os.unlink(self.data_path(data_id))
                freed = True
        if freed and self._reserve_wanted and not self._reserve_complete:
            self.arm_reserve()

    def sync(self, data_id: str | None = None) -> None:
        """Make ``data_id``'s content and every committed row durable (``fsync``)."""
        with self._lock:
            if data_id is not None:
                _fsync_path(self.data_path(data_id), os.O_RDONLY | os.O_NOFOLLOW)
            _fsync_path(self.data_dir, os.O_RDONLY | os.O_DIRECTORY)
            # In WAL mode committed transactions sit in the -wal file (or, after
            # a checkpoint, in the main file); flushing both covers either case.
            for suffix in ("-wal", ""):
                with suppress(FileNotFoundError):
                    _fsync_path(Path(f"{self._db_path}{suffix}"), os.O_RDONLY | os.O_NOFOLLOW)
            _fsync_path(self.state_dir, os.O_RDONLY | os.O_DIRECTORY)

    # -- recovery ------------------------------------------------------------

    def _remove_unreferenced_data(self) -> list[str]:
        """Unlink data-directory entries no row references (crash leftovers)."""
        referenced = {
            data_id
            for (data_id,) in self._conn.execute("SELECT data_id FROM entries WHERE data_id IS NOT NULL")
        }
        removed: list[str] = []
        with os.scandir(self.data_dir) as entries:
            for entry in entries:
                if entry.name in referenced or stat.S_ISDIR(entry.stat(follow_symlinks=False).st_mode):
                    continue
                os.unlink(entry.path)
                removed.append(entry.name)
        return sorted(removed)


def space_for_writing(state_dir: Path) -> int:
    """Free space on ``state_dir``'s filesystem plus the overlay's own reserve there."""
    try:
        reserve = os.lstat(state_dir / _RESERVE_NAME).st_size
    except FileNotFoundError:
        reserve = 0
    return free_bytes(state_dir) + reserve


def _fsync_path(path: Path, flags: int) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_ROW_KINDS: frozenset[str] = frozenset(EntryKind)


def inspect_database(state_dir: Path, *, read_only: bool) -> tuple[dict[str, OverlayRow], list[str]]:
    """Read every row of the overlay under ``state_dir`` for a consistency check.

    Returns the well-formed rows and one message per malformed one. Raises
    :class:`OverlayStoreError` if the database cannot be opened or fails
    SQLite's own check. ``read_only`` is for a database a running daemon owns;
    otherwise opening it replays a WAL a killed daemon left behind, as the
    next mount would.
    """
    database = state_dir / "overlay.db"
    uri = f"file:{quote(str(database))}" + ("?mode=ro" if read_only else "")
    try:
        connection = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as error:
        raise OverlayStoreError(f"overlay database {database} cannot be opened: {error}") from None
    try:
        verdict = [line for (line,) in connection.execute("PRAGMA quick_check")]
        if verdict != ["ok"]:
            raise OverlayStoreError(f"overlay database {database} is corrupt: {'; '.join(verdict[:3])}")
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        columns = _COLUMNS_OF_V1 if version == 1 else _COLUMNS
        records = connection.execute(f"SELECT {columns} FROM entries").fetchall()
    except sqlite3.Error as error:
        raise OverlayStoreError(f"overlay database {database} is unreadable: {error}") from None
    finally:
        connection.close()
    rows: dict[str, OverlayRow] = {}
    problems: list[str] = []
    for record in records:
        path = decode_path(record[0])
        kind, data_id = record[1], record[3]
        if kind not in _ROW_KINDS:
            problems.append(f"overlay row {path!r} is malformed: unknown kind {kind!r}")
        elif data_id is not None and not _DATA_ID_RE.fullmatch(data_id):
            problems.append(f"overlay row {path!r} is malformed: bad data file id {data_id!r}")
        else:
            rows[path] = _row_from_db(record)
    return rows, problems
