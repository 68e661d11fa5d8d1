"""The order in which missing blobs are fetched.

A blob sits in the queue at a *level*: ``DEMAND`` (a reader is blocked on it),
``BOOST`` (a neighbour of a demanded file, or named by ``prefetch``), then one
level per :class:`~artifactfs.hydrator.priority.PriorityClass`. A blob only
ever moves up. The heap uses lazy deletion: raising a blob pushes a new heap
entry and stale ones are skipped when popped.

This module is synchronous and does no I/O; the hydrator owns all waiting.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable

from artifactfs.hydrator.priority import PriorityClass

DEMAND = -2
BOOST = -1


def level_of(priority_class: PriorityClass) -> int:
    return int(priority_class)


class HydrationQueue:
    """Pending blob ids ordered by level, then by first arrival."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str]] = []
        self._level: dict[str, int] = {}
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._level)

    def __contains__(self, oid: str) -> bool:
        return oid in self._level

    def push(self, oid: str, level: int) -> bool:
        """Queue ``oid`` at ``level`` or raise it there; returns True if its level changed."""
        current = self._level.get(oid)
        if current is not None and current <= level:
            return False
        self._level[oid] = level
        heapq.heappush(self._heap, (level, next(self._sequence), oid))
        return True

    def discard(self, oid: str) -> None:
        self._level.pop(oid, None)

    def best_level(self) -> int | None:
        self._drop_stale_head()
        return self._heap[0][0] if self._heap else None

    def pop_batch(self, max_level: int, max_count: int, max_bytes: int, size_of: dict[str, int],
                  unknown_size: int) -> list[tuple[str, int]]:
        """Remove and return up to ``max_count`` blobs at ``max_level`` or better, best first.

        The batch stops early once the known (or assumed) sizes reach ``max_bytes``;
        it always holds at least one blob if any is eligible.
        """
        batch: list[tuple[str, int]] = []
        total = 0
        while len(batch) < max_count:
            self._drop_stale_head()
            if not self._heap or self._heap[0][0] > max_level:
                break
            size = size_of.get(self._heap[0][2], unknown_size)
            if batch and total + size > max_bytes:
                break
            level, _, oid = heapq.heappop(self._heap)
            del self._level[oid]
            batch.append((oid, level))
            total += size
        return batch

    def pending_levels(self) -> Iterable[int]:
        return self._level.values()

    def _drop_stale_head(self) -> None:
        heap = self._heap
        while heap and self._level.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
