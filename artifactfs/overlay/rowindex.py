"""Which paths have overlay rows, in memory, so lookups of unchanged base paths never query SQLite.

A working tree is mostly unchanged base content: nearly every ``lookup``,
``getattr`` and directory listing is of a path without a row. The
:class:`RowIndex` answers "has this path a row" and "has this directory rows
below it" from two in-memory structures that the store updates after each
commit, and counts the commits that changed rows (:attr:`RowIndex.generation`),
so callers can keep what they derived from rows until the next change.
"""

from __future__ import annotations

from collections.abc import Iterable


class RowIndex:
    """Paths that have a row, and how many rows each directory has as direct children."""

    def __init__(self, paths: Iterable[str]) -> None:
        self._paths: set[str] = set()
        self._children: dict[str, int] = {}
        self.generation = 0
        """Incremented by every applied change; equal generations mean identical rows."""
        for path in paths:
            self._add(path)

    def __contains__(self, path: str) -> bool:
        return path in self._paths

    def has_children(self, path: str) -> bool:
        """Whether some row's parent is ``path``."""
        return path in self._children

    def apply(self, changes: Iterable[tuple[str, bool]]) -> None:
        """Committed changes in order: (path, the path has a row afterwards)."""
        changed = False
        for path, present in changes:
            changed = True
            if present:
                self._add(path)
            else:
                self._remove(path)
        if changed:
            self.generation += 1

    def _add(self, path: str) -> None:
        if path in self._paths:
            return
        self._paths.add(path)
        if path:
            parent = path.rpartition("/")[0]
            self._children[parent] = self._children.get(parent, 0) + 1

    def _remove(self, path: str) -> None:
        if path not in self._paths:
            return
        self._paths.discard(path)
        if path:
            parent = path.rpartition("/")[0]
            remaining = self._children[parent] - 1
            if remaining:
                self._children[parent] = remaining
            else:
                del self._children[parent]
