"""Which paths have overlay rows, in memory, so lookups of unchanged base paths never query SQLite.

A working tree is mostly unchanged base content: nearly every ``lookup`` and
``getattr`` is of a path without a row. The :class:`RowIndex` answers "has
this path a row" from memory (the store updates it after each commit; the
store's per-directory row counts answer the same for listings), and counts
the commits that changed rows (:attr:`RowIndex.generation`), so callers can
keep what they derived from rows until the next change.
"""

from __future__ import annotations

from collections.abc import Iterable


class RowIndex:
    """The paths that have a row."""

    def __init__(self, paths: Iterable[str]) -> None:
        self._paths: set[str] = set(paths)
        self.generation = 0
        """Incremented by every applied change; equal generations mean identical rows."""

    def __contains__(self, path: str) -> bool:
        return path in self._paths

    def apply(self, changes: Iterable[tuple[str, bool]]) -> None:
        """Committed changes in order: (path, the path has a row afterwards)."""
        changed = False
        for path, present in changes:
            changed = True
            if present:
                self._paths.add(path)
            else:
                self._paths.discard(path)
        if changed:
            self.generation += 1
