"""The order in which missing blobs are fetched.

A blob sits in the queue at a *level*: ``DEMAND`` (a reader is blocked on its
content), ``STAT`` (a ``stat`` is blocked on its size, or on the size of a
file in the same directory), ``BOOST`` (a neighbour of a demanded file, or
named by ``prefetch``), then one level per
:class:`~artifactfs.hydrator.priority.PriorityClass`. A blob only ever moves
up. Each level is a first-in first-out line with lazy deletion: raising or
discarding a blob leaves a stale entry behind, skipped when reached.

This module is synchronous and does no I/O; the hydrator owns all waiting.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from artifactfs.hydrator.priority import PriorityClass

DEMAND = -3
STAT = -2
BOOST = -1


def level_of(priority_class: PriorityClass) -> int:
    return int(priority_class)


class HydrationQueue:
    """Pending blob ids ordered by level, then by first arrival at that level."""

    def __init__(self) -> None:
        self._lines: dict[int, collections.deque[str]] = {}
        self._level: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._level)

    def __contains__(self, oid: str) -> bool:
        return oid in self._level

    def level(self, oid: str) -> int | None:
        """The level ``oid`` waits at, or None if it is not queued."""
        return self._level.get(oid)

    def push(self, oid: str, level: int) -> bool:
        """Queue ``oid`` at ``level`` or raise it there; returns True if its level changed."""
        current = self._level.get(oid)
        if current is not None and current <= level:
            return False
        self._level[oid] = level
        line = self._lines.get(level)
        if line is None:
            line = self._lines[level] = collections.deque()
        line.append(oid)
        return True

    def discard(self, oid: str) -> None:
        self._level.pop(oid, None)

    def best_level(self) -> int | None:
        for level in sorted(self._lines):
            if self._live_head(level) is not None:
                return level
        return None

    def pop_batch(
        self,
        max_level: int,
        max_count: int,
        max_bytes: int,
        size_of: dict[str, int],
        unknown_size: int,
        *,
        min_level: int = DEMAND,
    ) -> list[tuple[str, int]]:
        """Remove and return up to ``max_count`` blobs with a level from ``min_level`` to ``max_level``, best first.

        The batch stops early once the known (or assumed) sizes reach ``max_bytes``;
        it always holds at least one blob if any is eligible.
        """
        batch: list[tuple[str, int]] = []
        total = 0
        for level in sorted(self._lines):
            if level < min_level or level > max_level:
                continue
            line = self._lines[level]
            while len(batch) < max_count and (oid := self._live_head(level)) is not None:
                size = size_of.get(oid, unknown_size)
                if batch and total + size > max_bytes:
                    return batch
                line.popleft()
                del self._level[oid]
                batch.append((oid, level))
                total += size
        return batch

    def pending_levels(self) -> Iterable[int]:
        return self._level.values()

    def _live_head(self, level: int) -> str | None:
        """The first entry of a level's line that is still queued there (stale ones are dropped)."""
        line = self._lines[level]
        while line:
            if self._level.get(line[0]) == level:
                return line[0]
            line.popleft()
        return None
