"""pyfuse3 operations: translate kernel requests into view, overlay and hydrator calls.

This layer owns inode numbers, open handles and the attributes the kernel
caches. It never decides what a path contains (that is the
:class:`~artifactfs.overlay.view.OverlayView`) nor how blobs are fetched (the
:class:`~artifactfs.hydrator.hydrator.Hydrator`). Every ``await`` here is a
point where other requests may run; state is only mutated between them.

Attribute policy: base files report :data:`BASE_MTIME_NS` and their exact blob
size, so git's index (prepared with the same values) sees them as clean
without reading them. Everything is cached by the kernel for
:data:`CACHE_TIMEOUT` seconds; the daemon invalidates what changes behind the
kernel's back. Owners, modes, link counts and times come from the view; the
kernel checks permissions against them (``default_permissions``), so this layer
only records who creates what (the request's uid and gid).

atime follows relatime: it moves when a file is read and its atime is not newer
than its mtime or ctime, or is a day old. The moved atime lives in memory, so
reads never write the database; after a remount a file shows its stored atime
again (set by utimensat or creation, else its data file's, else the mtime).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from artifactfs.fs.basechanges import changed_paths
from artifactfs.fs.inodes import GITFILE_INODE, InodeTable
from artifactfs.fs.viewcache import ViewCache
from artifactfs.hydrator.hydrator import BlobUnavailableError, Hydrator
from artifactfs.latency import LatencyHistogram
from artifactfs.lfs.files import LfsFiles
from artifactfs.lfs.objects import LfsObjectFile
from artifactfs.overlay.errors import errno_for
from artifactfs.overlay.view import Node, OverlayView
from artifactfs.snapshot.entries import EntryKind
from artifactfs.snapshot.tree import Snapshot
from artifactfs.status import FuseReport
from artifactfs.store.loose import LooseBlobFile, StoredContent

log = logging.getLogger(__name__)

BASE_MTIME_NS = 1_000_000_000 * 1_000_000_000
"""2001-09-09: an old, fixed mtime for unmodified files, so git never sees them as racily clean."""

CACHE_TIMEOUT = 300.0
GITFILE_NAME = b".git"
NAME_MAX = 255
RELATIME_AGE_NS = 24 * 3600 * 1_000_000_000
"""relatime: an atime older than this moves on the next read even if it is newer than mtime."""

_XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")
"""The extended attribute namespaces stored (system.* names ACLs, which are off)."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _fuse_errors(method: Callable[_P, Coroutine[Any, Any, _R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """Turn every failure of one request into the errno the kernel should see for it."""

    name = method.__name__

    @functools.wraps(method)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except BlobUnavailableError as error:
            raise pyfuse3.FUSEError(error.errno) from None
        except Exception as error:
            # Overlay refusals, data-file errors and a full disk (ENOSPC, SQLite's included) map in one place.
            code = errno_for(error)
            if code is None:
                # An escaping exception would end pyfuse3's main loop: fail this request only.
                log.exception("%s failed", name)
                code = errno.EIO
            raise pyfuse3.FUSEError(code) from None
        finally:
            operations = args[0]
            assert isinstance(operations, Operations)
            operations.record(name, time.perf_counter() - started)

    return wrapper


def _forget_pages(inodes: list[int]) -> None:
    """Drop the kernel's cached pages (and attributes) of ``inodes``. Blocks on page locks: call it
    from a worker thread, never from the thread that answers FUSE requests."""
    for inode in inodes:
        try:
            pyfuse3.invalidate_inode(inode)
        except OSError:
            pass  # the kernel already forgot it


@dataclass
class _FileHandle:
    inode: int
    node: Node
    """What the file was when opened (an unlinked open file still reports its owner and mode)."""
    fd: int
    """A data file (overlay content), or -1."""
    writable: bool
    written: bool = False
    blob: StoredContent | None = None
    """Set instead of ``fd`` for a file whose content is still its base blob (or its LFS object)."""
    read: bool = False
    oid: str | None = None
    """The base blob to open on the first read when ``blob`` is not open yet (see :meth:`Operations.open`)."""


@dataclass
class _DirHandle:
    path: str
    listing: Sequence[tuple[bytes, Node | None]] | None = None
    sizes: dict[str, int] = field(default_factory=dict)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        view: OverlayView,
        snapshot: Snapshot,
        hydrator: Hydrator,
        lfs: LfsFiles,
        gitfile: bytes,
        state_dir: Path,
    ) -> None:
        super().__init__()
        self._view = view
        self._cache = ViewCache(view)
        self._snapshot = snapshot
        self._hydrator = hydrator
        self._lfs = lfs
        lfs.publish(snapshot)
        self._gitfile = gitfile
        self._state_dir = state_dir
        self._inodes = InodeTable()
        self._files: dict[int, _FileHandle] = {}
        self._dirs: dict[int, _DirHandle] = {}
        self._next_handle = 1
        self._atimes: dict[int, int] = {}
        """atimes that reads moved since mount (relatime), by inode."""
        self._linked: dict[str, int] = {}
        """The inode of each hard-linked file, by its link id: every link shows one inode."""
        self._latency: dict[str, LatencyHistogram] = {}
        self._gitfile_released = trio.Event()
        self.write_events = 0
        """Counts every way content can start or stop changing (a writable open or release, a
        truncate): equal before and after a span, every file not open for writing was left alone."""

    # ------------------------------------------------------------- publishing

    async def publish(self, snapshot: Snapshot, *, retimed: Iterable[str]) -> None:
        """Adopt a new base snapshot.

        Reconciling never changes what a path with overlay rows contains, but a
        dropped overlay entry that had its own mtime reports the base mtime
        again: the kernel forgets the attributes of those paths (``retimed``),
        and only those, so git's next ``lstat`` of every file it just wrote
        stays in the kernel. Paths without rows show the new base: whatever the
        kernel holds about those that changed is forgotten too.
        """
        self._lfs.publish(snapshot)
        previous, self._snapshot = self._snapshot, snapshot
        self.attributes_changed(retimed)
        stale = self._forget_base_changes(previous, snapshot)
        if stale:
            # Dropping cached pages waits for each page's lock, and a page being read holds its
            # lock until this event loop answers that READ: so never on this thread.
            await trio.to_thread.run_sync(_forget_pages, stale)

    def _forget_base_changes(self, previous: Snapshot, snapshot: Snapshot) -> list[int]:
        """Make the kernel drop entries and attributes of known paths the new base changed; returns
        the inodes whose cached pages must go too (see :meth:`publish`)."""
        if previous.root_tree_oid == snapshot.root_tree_oid:
            return []
        known = {
            path for inode in self._inodes.known_inodes() if (path := self._inodes.path(inode)) is not None
        }
        stale: list[int] = []
        for path in changed_paths(previous, snapshot, known):
            inode = self._inodes.known(path)
            if inode is not None:
                stale.append(inode)
                try:
                    pyfuse3.invalidate_inode(inode, attr_only=True)
                except OSError:
                    pass  # the kernel already forgot it
            parent, _, name = path.rpartition("/")
            parent_inode = self._inodes.known(parent)
            if parent_inode is not None:
                # Asynchronous: a request on that directory may be in progress in this event loop.
                pyfuse3.invalidate_entry_async(
                    parent_inode, name.encode("utf-8", "surrogateescape"), ignore_enoent=True
                )
        return stale

    def attributes_changed(self, paths: Iterable[str]) -> None:
        """These paths' attributes (a size reported wrong, an mtime) changed: the kernel must ask again."""
        for path in paths:
            inode = self._inodes.known(path)
            if inode is not None:
                try:
                    pyfuse3.invalidate_inode(inode, attr_only=True)
                except OSError:
                    pass  # the kernel already forgot it

    def release_gitfile(self) -> None:
        """The index now matches the mount: let git open ``.git``."""
        self._gitfile_released.set()

    def paths_open_for_writing(self) -> set[str]:
        """Paths with a writable handle: reconciling must not take their data files away."""
        paths = set()
        for handle in self._files.values():
            if handle.writable and (path := self._inodes.path(handle.inode)) is not None:
                paths.add(path)
        return paths

    # ------------------------------------------------------------- helpers

    def _path(self, inode: int) -> str:
        path = self._inodes.path(inode)
        if path is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return path

    @staticmethod
    def _join(parent: str, name: bytes) -> str:
        text = name.decode("utf-8", "surrogateescape")
        return f"{parent}/{text}" if parent else text

    def _node(self, path: str) -> Node:
        node = self._cache.lookup(path)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _handle(self) -> int:
        handle = self._next_handle
        self._next_handle += 1
        return handle

    def _neighbours(self, path: str) -> Iterator[tuple[str, str]]:
        """(path, oid) of the files beside ``path``; lazy, as the hydrator reads it only on a miss."""
        parent = path.rpartition("/")[0]
        for name, entry in (self._snapshot.children(parent) or {}).items():
            if entry.kind is EntryKind.FILE:
                yield (f"{parent}/{name}" if parent else name), entry.oid

    def _base_attributes(
        self, inode: int, mode: int, size: int, mtime_ns: int, node: Node | None = None
    ) -> pyfuse3.EntryAttributes:
        """Attributes of ``inode``; owner, links and times from ``node`` (the base owner's if None)."""
        attributes = pyfuse3.EntryAttributes()
        attributes.st_ino = inode
        attributes.st_mode = mode
        attributes.st_size = size
        attributes.st_blksize = 4096
        attributes.st_blocks = (size + 511) // 512
        attributes.st_mtime_ns = mtime_ns
        if node is None:
            attributes.st_nlink = 1
            attributes.st_uid, attributes.st_gid = self._view.owner
            attributes.st_atime_ns = attributes.st_ctime_ns = mtime_ns
        else:
            attributes.st_nlink = node.nlink
            attributes.st_uid = node.uid
            attributes.st_gid = node.gid
            attributes.st_rdev = node.rdev
            atime_ns = self._atimes.get(inode, node.atime_ns)
            attributes.st_atime_ns = atime_ns if atime_ns is not None else mtime_ns
            attributes.st_ctime_ns = node.ctime_ns if node.ctime_ns is not None else mtime_ns
        attributes.entry_timeout = CACHE_TIMEOUT
        attributes.attr_timeout = CACHE_TIMEOUT
        return attributes

    def _gitfile_attributes(self) -> pyfuse3.EntryAttributes:
        return self._base_attributes(GITFILE_INODE, stat.S_IFREG | 0o444, len(self._gitfile), BASE_MTIME_NS)

    def _inode_for(self, node: Node) -> int:
        """The inode of ``node``'s path; every hard link of one file gets the same one."""
        if node.nlink < 2 or node.kind in (EntryKind.DIR, EntryKind.GITLINK) or node.link_id is None:
            return self._inodes.inode(node.path)
        inode = self._linked.get(node.link_id)
        if inode is not None and self._inodes.path(inode) is not None:
            self._inodes.link(inode, node.path)
            return inode
        inode = self._inodes.inode(node.path)
        self._linked[node.link_id] = inode
        return inode

    def _content_oid(self, node: Node) -> str | None:
        """The blob whose bytes a node shows, when they are not in an overlay data file."""
        if node.data_path is None and node.symlink_target is None:
            return node.base_oid
        return None

    def _attributes_with_size(self, inode: int, node: Node, size: int | None) -> pyfuse3.EntryAttributes:
        mtime_ns = node.mtime_ns if node.mtime_ns is not None else BASE_MTIME_NS
        if node.kind in (EntryKind.DIR, EntryKind.GITLINK):
            return self._base_attributes(inode, node.mode, 4096, mtime_ns, node)
        if node.kind == EntryKind.SPECIAL:
            return self._base_attributes(inode, node.mode, 0, mtime_ns, node)
        if node.data_path is not None:
            info = os.stat(node.data_path)
            return self._base_attributes(inode, node.mode, info.st_size, info.st_mtime_ns, node)
        if node.symlink_target is not None:
            return self._base_attributes(inode, node.mode, len(node.symlink_target), mtime_ns, node)
        attributes = self._base_attributes(inode, node.mode, size or 0, mtime_ns, node)
        if size is None:
            attributes.attr_timeout = 0  # size still unknown: make the kernel ask again
        return attributes

    async def _attributes(self, inode: int, node: Node, *, fetch: bool = False) -> pyfuse3.EntryAttributes:
        """Attributes with the exact size when it can be had without fetching content (object-info).

        Otherwise the size is left unknown, with attribute timeout 0, unless
        ``fetch`` (a ``getattr``: someone asks for the size): then the file's
        whole directory is fetched in one request, so ``ls -l`` or ``find
        -size`` cost one request per directory. A ``lookup`` never fetches:
        opening a file must cost its own blob only.
        """
        oid = self._content_oid(node)
        size = None
        if oid is not None:
            await self._lfs.ready()
            if self._lfs.covers(node.path):  # an LFS file: the size its pointer names
                return self._attributes_with_size(
                    inode, node, await self._lfs.size(node.path, oid, fetch=fetch)
                )
            size = self._hydrator.known_size(oid)
            if size is None and (fetch or self._hydrator.object_info_available):
                size = (await self._hydrator.sizes([oid], neighbours=self._neighbours(node.path)))[oid]
        return self._attributes_with_size(inode, node, size)

    # ------------------------------------------------------------- lookup & attributes

    @_fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._path(parent_inode)
        if len(name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        if name == b".":
            path = parent
        elif name == b"..":
            path = parent.rpartition("/")[0]
        elif parent == "" and name == GITFILE_NAME:
            self._inodes.remember(GITFILE_INODE)
            return self._gitfile_attributes()
        else:
            path = self._join(parent, name)
        node = self._cache.lookup(path)
        if node is None:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = CACHE_TIMEOUT
            return negative
        inode = self._inode_for(node)
        attributes = await self._attributes(inode, node)
        self._inodes.remember(inode)
        return attributes

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self._inodes.forget(inode, count)
            if self._inodes.path(inode) is None:
                self._atimes.pop(inode, None)
                if self._linked:
                    self._linked = {data: known for data, known in self._linked.items() if known != inode}

    @_fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        if inode == GITFILE_INODE:
            return self._gitfile_attributes()
        path = self._inodes.path(inode)
        if path is None:
            return self._orphan_attributes(inode)
        return await self._attributes(inode, self._node(path), fetch=True)

    def _orphan_attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        """Attributes of an unlinked file that is still open: its last known metadata, no links."""
        for handle in self._files.values():
            if handle.inode != inode:
                continue
            if handle.blob is not None:
                attributes = self._base_attributes(inode, handle.node.mode, handle.blob.size, BASE_MTIME_NS)
            elif handle.oid is not None:
                size = self._hydrator.known_size(handle.oid) or 0
                attributes = self._base_attributes(inode, handle.node.mode, size, BASE_MTIME_NS)
            else:
                info = os.fstat(handle.fd)
                attributes = self._base_attributes(
                    inode, handle.node.mode, info.st_size, info.st_mtime_ns, handle.node
                )
                attributes.st_ctime_ns = max(attributes.st_ctime_ns, info.st_ctime_ns)
                attributes.st_atime_ns = info.st_atime_ns
            attributes.st_nlink = 0
            attributes.st_uid, attributes.st_gid = handle.node.uid, handle.node.gid
            return attributes
        raise pyfuse3.FUSEError(errno.ENOENT)

    @_fuse_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        if inode == GITFILE_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)
        path = self._inodes.path(inode)
        if path is None:
            handle = self._files.get(fh) if fh is not None else None
            if handle is not None and fields.update_size:
                os.ftruncate(handle.fd, attr.st_size)
            return self._orphan_attributes(inode)
        node = self._node(path)
        if fields.update_size:
            self.write_events += 1
            if node.kind != EntryKind.FILE:
                raise pyfuse3.FUSEError(
                    errno.EISDIR if node.kind in (EntryKind.DIR, EntryKind.GITLINK) else errno.EINVAL
                )
            node = await self._writable(path, node, truncate=attr.st_size == 0)
            assert node.data_path is not None
            os.truncate(node.data_path, attr.st_size)
            node = self._node(path)  # the data file's new size and ctime
        changes: dict[str, int] = {}
        if fields.update_mode:
            changes["mode"] = stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_atime:
            changes["atime_ns"] = attr.st_atime_ns
            self._atimes.pop(inode, None)
        if fields.update_mtime:
            changes["mtime_ns"] = attr.st_mtime_ns
        if changes or fields.update_ctime:
            node = self._view.set_attributes(path, **changes)
        return await self._attributes(inode, node)

    @_fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(self._path(inode))
        if node.kind != EntryKind.SYMLINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        if node.symlink_target is not None:
            return node.symlink_target
        assert node.base_oid is not None
        with LooseBlobFile.open(await self._hydrator.ensure(node.base_oid, path=node.path)) as blob:
            return blob.read_all()

    # ------------------------------------------------------------- directories

    @_fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        path = self._path(inode)
        node = self._node(path)
        if node.kind not in (EntryKind.DIR, EntryKind.GITLINK):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        handle = self._handle()
        self._dirs[handle] = _DirHandle(path)
        return handle

    @_fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dirs[fh]
        if handle.listing is None or start_id == 0:
            listing: list[tuple[bytes, Node | None]] = [
                (b".", self._node(handle.path)),
                (b"..", self._node(handle.path.rpartition("/")[0])),
            ]
            if handle.path == "":
                listing.append((GITFILE_NAME, None))
            listing.extend(self._cache.listing(handle.path))
            handle.listing = listing
            handle.sizes = await self._listing_sizes(listing)
        for index in range(start_id, len(handle.listing)):
            name, node = handle.listing[index]
            if node is None:
                attributes = self._gitfile_attributes()
                inode = GITFILE_INODE
            elif index < 2:
                # The kernel takes no reference for "." and ".." (it never links them).
                attributes = self._attributes_with_size(self._inodes.inode(node.path), node, None)
                if not pyfuse3.readdir_reply(token, name, attributes, index + 1):
                    return
                continue
            else:
                inode = self._inode_for(node)
                oid = self._content_oid(node)
                attributes = self._attributes_with_size(inode, node, handle.sizes.get(oid) if oid else None)
            if not pyfuse3.readdir_reply(token, name, attributes, index + 1):
                return
            self._inodes.remember(inode)

    async def _listing_sizes(self, listing: Sequence[tuple[bytes, Node | None]]) -> dict[str, int]:
        """Sizes for a directory listing in one batch (never hydrating: unknown ones are left out).

        LFS files report the size their pointer names once it is known; until
        the LFS paths are (right after a mount or a HEAD move), any blob that
        may be a pointer is left out.
        """
        lfs_ready = self._lfs.settled()
        oids: list[str] = []
        lfs_sizes: dict[str, int] = {}
        for _, node in listing:
            if node is None or (oid := self._content_oid(node)) is None:
                continue
            if not lfs_ready or self._lfs.covers(node.path):
                size = self._lfs.known_size(node.path, oid, maybe_lfs=not lfs_ready)
                if size is not None:
                    lfs_sizes[oid] = size
            else:
                oids.append(oid)
        known = {oid: size for oid in oids if (size := self._hydrator.known_size(oid)) is not None}
        missing = [oid for oid in oids if oid not in known]
        if missing and self._hydrator.object_info_available:
            # partial: a blob the remote lacks must not make the whole directory unlistable.
            known.update(await self._hydrator.sizes(missing, partial=True))
        return known | lfs_sizes

    @_fuse_errors
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @_fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._join(self._path(parent_inode), name)
        node = self._view.mkdir(path, stat.S_IMODE(mode), (ctx.uid, ctx.gid))
        inode = self._inodes.inode(path)
        attributes = await self._attributes(inode, node)
        self._inodes.remember(inode)
        return attributes

    @_fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = self._join(self._path(parent_inode), name)
        self._view.rmdir(path)
        self._inodes.detach(path)

    # ------------------------------------------------------------- names

    @_fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self._path(parent_inode)
        if parent == "" and name == GITFILE_NAME:
            raise pyfuse3.FUSEError(errno.EPERM)
        path = self._join(parent, name)
        self._view.unlink(path)
        self._inodes.detach(path)

    @_fuse_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old_parent = self._path(parent_inode_old)
        new_parent = self._path(parent_inode_new)
        for parent, name in ((old_parent, name_old), (new_parent, name_new)):
            if parent == "" and name.lower() == GITFILE_NAME:
                raise pyfuse3.FUSEError(errno.EPERM)
        old = self._join(old_parent, name_old)
        new = self._join(new_parent, name_new)
        exchange = bool(flags & pyfuse3.RENAME_EXCHANGE)
        self._view.rename(old, new, noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE), exchange=exchange)
        if exchange:
            self._inodes.exchange(old, new)
        else:
            self._inodes.move(old, new)

    @_fuse_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._join(self._path(parent_inode), name)
        node = self._view.symlink(path, target, (ctx.uid, ctx.gid))
        inode = self._inodes.inode(path)
        attributes = await self._attributes(inode, node)
        self._inodes.remember(inode)
        return attributes

    @_fuse_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._join(self._path(parent_inode), name)
        node = self._view.mknod(path, mode, rdev, (ctx.uid, ctx.gid))
        inode = self._inodes.inode(path)
        attributes = await self._attributes(inode, node)
        self._inodes.remember(inode)
        return attributes

    @_fuse_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """A hard link; a file still showing its base blob is copied up first."""
        existing = self._path(inode)
        path = self._join(self._path(new_parent_inode), new_name)
        node = self._node(existing)
        if node.kind == EntryKind.FILE:
            await self._writable(existing, node, truncate=False)
        node = self._view.link(existing, path)
        self._inodes.link(inode, path)
        if node.link_id is not None:
            self._linked[node.link_id] = inode
        attributes = await self._attributes(inode, node)
        self._inodes.remember(inode)
        return attributes

    # ------------------------------------------------------------- files

    async def _writable(self, path: str, node: Node, *, truncate: bool) -> Node:
        """Make sure ``path`` has its own data file (copy-up), hydrating the base content if kept."""
        if node.data_path is not None:
            return node
        if truncate or node.base_oid is None:
            return self._view.copy_up(path, None)
        lfs_object = await self._lfs_object(path, node.base_oid)
        if lfs_object is not None:
            with lfs_object:
                current = self._node(path)  # the view may have changed while we waited
                return current if current.data_path is not None else self._view.copy_up(path, lfs_object)
        source = await self._hydrator.ensure(node.base_oid, path=path, neighbours=self._neighbours(path))
        node = self._node(path)  # the view may have changed while we waited
        if node.data_path is not None:
            return node
        with LooseBlobFile.open(source) as blob:
            return self._view.copy_up(path, blob)

    async def _lfs_object(self, path: str, oid: str) -> LfsObjectFile | None:
        """The LFS object ``path`` shows, or None when its base blob is its content."""
        if not self._lfs.settled():
            await self._lfs.ready()  # a cancel scope per open otherwise, on the hottest path
        if not self._lfs.covers(path):
            return None
        return await self._lfs.open(path, oid)

    @_fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        writable = bool(flags & (os.O_WRONLY | os.O_RDWR))
        if inode == GITFILE_INODE:
            if writable:
                raise pyfuse3.FUSEError(errno.EPERM)
            # git reads this file before it touches the gitdir; right after mount it
            # waits here until the prepared index is written, instead of finding none.
            await self._gitfile_released.wait()
            handle = self._handle()
            # .git is never unlinked, so its handle's node (the root's) is never reported.
            self._files[handle] = _FileHandle(inode, self._node(""), -1, False)
            return pyfuse3.FileInfo(fh=handle, keep_cache=True)
        path = self._path(inode)
        node = self._node(path)
        if node.kind in (EntryKind.DIR, EntryKind.GITLINK):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if writable:
            self.write_events += 1
            node = await self._writable(path, node, truncate=bool(flags & os.O_TRUNC))
            assert node.data_path is not None
            fd = os.open(node.data_path, os.O_RDWR)
            if flags & os.O_TRUNC:
                os.ftruncate(fd, 0)
        elif node.data_path is not None:
            fd = os.open(node.data_path, os.O_RDONLY)
        else:
            assert node.base_oid is not None
            lfs_object = await self._lfs_object(path, node.base_oid)
            if lfs_object is not None:
                handle = self._handle()
                self._files[handle] = _FileHandle(inode, node, -1, False, blob=lfs_object)
                return pyfuse3.FileInfo(fh=handle, keep_cache=True)
            source = await self._hydrator.ensure(node.base_oid, path=path, neighbours=self._neighbours(path))
            handle = self._handle()
            if self._hydrator.size_hinted(node.base_oid):
                blob = LooseBlobFile.open(source)
                # The verified length wins over a size hint the kernel may hold (see attributes_changed).
                self._hydrator.settle_size(node.base_oid, blob.size)
                self._files[handle] = _FileHandle(inode, node, -1, False, blob=blob)
            else:
                # Local content: the blob is opened by the first read, and a re-read from the
                # page cache never asks, so an open of a cached file costs no file operation.
                self._files[handle] = _FileHandle(inode, node, -1, False, oid=node.base_oid)
            return pyfuse3.FileInfo(fh=handle, keep_cache=True)
        handle = self._handle()
        self._files[handle] = _FileHandle(inode, node, fd, writable)
        return pyfuse3.FileInfo(fh=handle, keep_cache=False)

    @_fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._join(self._path(parent_inode), name)
        self.write_events += 1
        node = self._view.create_file(path, stat.S_IMODE(mode), (ctx.uid, ctx.gid))
        assert node.data_path is not None
        fd = os.open(node.data_path, os.O_RDWR)
        inode = self._inodes.inode(path)
        handle = self._handle()
        self._files[handle] = _FileHandle(inode, node, fd, True)
        attributes = await self._attributes(inode, node)
        self._inodes.remember(inode)
        return pyfuse3.FileInfo(fh=handle), attributes

    @_fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._files[fh]
        if not handle.read and handle.inode != GITFILE_INODE:
            handle.read = True
            self._accessed(handle)
        if handle.blob is None and handle.oid is not None:
            await self._open_blob(handle, handle.oid)
        if handle.blob is not None:
            return handle.blob.pread(size, off)
        if handle.inode == GITFILE_INODE:
            return self._gitfile[off : off + size]
        return os.pread(handle.fd, size, off)

    async def _open_blob(self, handle: _FileHandle, oid: str) -> None:
        """Open the base blob of a handle whose open found it local (it is fetched again if evicted since)."""
        blob = LooseBlobFile.open(
            await self._hydrator.ensure(oid, path=self._inodes.path(handle.inode) or "")
        )
        if handle.blob is None:
            handle.blob = blob
        else:
            blob.close()  # a concurrent read opened it first

    @_fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._files[fh]
        if not handle.writable:
            raise pyfuse3.FUSEError(errno.EBADF)
        handle.written = True
        return os.pwrite(handle.fd, buf, off)

    @_fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._files[fh]
        if handle.writable:
            os.fsync(handle.fd)
            self._view.sync(self._inodes.path(handle.inode))

    @_fuse_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self._view.sync(None)

    @_fuse_errors
    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is not None and handle.blob is not None:
            handle.blob.close()
        if handle is None or handle.fd < 0:
            return
        if handle.writable:
            self.write_events += 1
        os.close(handle.fd)
        path = self._inodes.path(handle.inode)
        if handle.written and path is not None:
            self._view.note_modified(path)

    def _accessed(self, handle: _FileHandle) -> None:
        """relatime on a handle's first read: move the atime if it is due, and make the kernel ask again.

        The new atime is kept here (a data file's own atime also moves if its
        filesystem keeps atimes): reads never write the database.
        """
        node = handle.node
        mtime_ns = node.mtime_ns if node.mtime_ns is not None else BASE_MTIME_NS
        atime_ns = self._atimes.get(handle.inode, node.atime_ns if node.atime_ns is not None else mtime_ns)
        ctime_ns = node.ctime_ns if node.ctime_ns is not None else mtime_ns
        now = time.time_ns()
        if atime_ns > max(mtime_ns, ctime_ns) and now - atime_ns < RELATIME_AGE_NS:
            return
        self._atimes[handle.inode] = now
        try:
            pyfuse3.invalidate_inode(handle.inode, attr_only=True)
        except OSError:
            pass  # the kernel already forgot it

    # ------------------------------------------------------------- filesystem

    @_fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        info = os.statvfs(self._state_dir)
        data = pyfuse3.StatvfsData()
        data.f_bsize = info.f_bsize
        data.f_frsize = info.f_frsize
        data.f_blocks = info.f_blocks
        data.f_bfree = info.f_bfree
        data.f_bavail = info.f_bavail
        data.f_files = info.f_files
        data.f_ffree = info.f_ffree
        data.f_favail = info.f_favail
        data.f_namemax = 255
        return data

    # Extended attributes. The kernel checks access (read or write permission,
    # CAP_SYS_ADMIN for trusted.* and security.*) before it asks; pyfuse3 turns
    # XATTR_CREATE/REPLACE into a getxattr first and answers ERANGE itself.

    def _xattr_path(self, inode: int, name: bytes) -> str:
        if inode == GITFILE_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)
        if not name.startswith(_XATTR_NAMESPACES):
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        return self._path(inode)

    @_fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if inode == GITFILE_INODE:
            raise pyfuse3.FUSEError(errno.ENODATA)
        value = self._view.xattrs(self._xattr_path(inode, name)).get(name)
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value

    @_fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._view.set_xattr(self._xattr_path(inode, name), name, value)

    @_fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        if inode == GITFILE_INODE:
            return []
        names = self._view.xattrs(self._path(inode))
        # Like a local filesystem: trusted.* is listed to privileged callers only.
        return [name for name in names if ctx.uid == 0 or not name.startswith(b"trusted.")]

    @_fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._view.set_xattr(self._xattr_path(inode, name), name, None)

    def record(self, operation: str, seconds: float) -> None:
        """Account one served request (called by the error-mapping wrapper of every handler)."""
        histogram = self._latency.get(operation)
        if histogram is None:
            histogram = self._latency[operation] = LatencyHistogram()
        histogram.observe(seconds)

    def stats(self) -> FuseReport:
        return FuseReport(
            open_files=len(self._files),
            operations={operation: sum(h.counts) for operation, h in sorted(self._latency.items())},
            latency={operation: h.report() for operation, h in sorted(self._latency.items())},
        )
