"""Inode numbers for the paths the kernel knows about.

The namespace is addressed by path (base tree + overlay), the kernel by inode.
This table hands out an inode per path on first lookup, keeps it while the
kernel holds a reference (lookup count) and moves it with renames, so an
inode keeps naming the same file for as long as the kernel remembers it. A
hard-linked file has one inode and several paths: :meth:`InodeTable.path`
gives one of them, and the inode loses its path only when the last goes.
"""

from __future__ import annotations

import pyfuse3

ROOT_INODE = pyfuse3.ROOT_INODE
GITFILE_INODE = ROOT_INODE + 1
"""The synthesized ``.git`` file at the mount root."""


class InodeTable:
    def __init__(self) -> None:
        self._path_of: dict[int, str] = {ROOT_INODE: ""}
        self._inode_of: dict[str, int] = {"": ROOT_INODE}
        self._lookups: dict[int, int] = {}
        self._next = GITFILE_INODE + 1
        self._other_paths: dict[int, set[str]] = {}
        """Hard links: the paths of an inode besides ``_path_of[inode]``."""

    def path(self, inode: int) -> str | None:
        """The current path of ``inode``, or None if it was unlinked or forgotten."""
        return self._path_of.get(inode)

    def inode(self, path: str) -> int:
        """The inode for ``path``, allocating one if the kernel has not seen it."""
        inode = self._inode_of.get(path)
        if inode is None:
            inode = self._next
            self._next += 1
            self._inode_of[path] = inode
            self._path_of[inode] = path
        return inode

    def link(self, inode: int, path: str) -> None:
        """``path`` is one more name of ``inode`` (a hard link)."""
        if self._inode_of.get(path) == inode:
            return
        self.detach(path)
        self._inode_of[path] = inode
        if inode not in self._path_of:
            self._path_of[inode] = path
        else:
            self._other_paths.setdefault(inode, set()).add(path)

    def known(self, path: str) -> int | None:
        return self._inode_of.get(path)

    def remember(self, inode: int, count: int = 1) -> None:
        """The kernel took ``count`` more references to ``inode``."""
        self._lookups[inode] = self._lookups.get(inode, 0) + count

    def forget(self, inode: int, count: int) -> None:
        remaining = self._lookups.get(inode, 0) - count
        if remaining > 0:
            self._lookups[inode] = remaining
            return
        self._lookups.pop(inode, None)
        if inode in (ROOT_INODE, GITFILE_INODE):
            return
        paths = self._other_paths.pop(inode, set())
        path = self._path_of.pop(inode, None)
        if path is not None:
            paths.add(path)
        for path in paths:
            if self._inode_of.get(path) == inode:
                del self._inode_of[path]

    def detach(self, path: str) -> int | None:
        """``path`` was removed: its inode keeps existing (open handles, other links) without it."""
        inode = self._inode_of.pop(path, None)
        if inode is None:
            return None
        others = self._other_paths.get(inode)
        if others:
            others.discard(path)
            if self._path_of.get(inode) == path:
                self._path_of[inode] = others.pop()
            if not others:
                del self._other_paths[inode]
        elif self._path_of.get(inode) == path:
            del self._path_of[inode]
        return inode

    def move(self, old: str, new: str) -> None:
        """``old`` and everything below it now live under ``new``, keeping their inodes."""
        self.detach(new)
        prefix = old + "/"
        moved = [
            (path, inode) for path, inode in self._inode_of.items() if path == old or path.startswith(prefix)
        ]
        for path, _ in moved:
            del self._inode_of[path]
        for path, inode in moved:
            new_path = new + path[len(old) :]
            self._inode_of[new_path] = inode
            others = self._other_paths.get(inode)
            if others is not None and path in others:
                others.discard(path)
                others.add(new_path)
            else:
                self._path_of[inode] = new_path

    def exchange(self, first: str, second: str) -> None:
        """Swap two subtrees (``RENAME_EXCHANGE``)."""
        placeholder = f"\0exchange\0{first}"
        self.move(first, placeholder)
        self.move(second, first)
        self.move(placeholder, second)

    def known_inodes(self) -> list[int]:
        """Every inode that currently has a path."""
        return list(self._inode_of.values())
