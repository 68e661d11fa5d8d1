"""The hydration queue: order by level then arrival, boosts, lazy discards, batch limits."""

from __future__ import annotations

from artifactfs.hydrator.priority import PriorityClass
from artifactfs.hydrator.queue import BOOST, DEMAND, HydrationQueue, level_of

M, C, S, D, T, B = (
    PriorityClass.MANIFEST,
    PriorityClass.CONFIG,
    PriorityClass.SOURCE,
    PriorityClass.DOCS,
    PriorityClass.TEXT,
    PriorityClass.BINARY,
)


def _drain(queue: HydrationQueue, max_level: int = level_of(B)) -> list[tuple[str, int]]:
    return queue.pop_batch(max_level, 10_000, 1 << 40, {}, 1)


def test_queue_orders_by_level_then_arrival() -> None:
    queue = HydrationQueue()
    for oid, priority_class in [("b1", B), ("s1", S), ("m1", M), ("s2", S), ("c1", C), ("m2", M)]:
        assert queue.push(oid, level_of(priority_class))
    queue.push("d", DEMAND)
    queue.push("x", BOOST)
    assert len(queue) == 8
    assert queue.best_level() == DEMAND
    assert [oid for oid, _ in _drain(queue)] == ["d", "x", "m1", "m2", "c1", "s1", "s2", "b1"]
    assert len(queue) == 0 and queue.best_level() is None


def test_queue_levels_only_rise_and_stale_entries_are_skipped() -> None:
    queue = HydrationQueue()
    queue.push("a", level_of(B))
    queue.push("b", level_of(S))
    assert queue.push("a", BOOST) is True
    assert queue.push("a", level_of(T)) is False  # never lowered
    assert queue.push("b", level_of(S)) is False  # same level: no change
    assert queue.push("a", DEMAND) is True
    assert len(queue) == 2 and "a" in queue
    assert sorted(queue.pending_levels()) == [DEMAND, level_of(S)]
    # Three heap entries for "a": it comes out once, at its best level.
    assert _drain(queue) == [("a", DEMAND), ("b", level_of(S))]
    assert _drain(queue) == []


def test_queue_discard_is_lazy_but_exact() -> None:
    queue = HydrationQueue()
    for oid in ("a", "b", "c"):
        queue.push(oid, level_of(S))
    queue.discard("a")
    queue.discard("never-queued")
    assert "a" not in queue and len(queue) == 2
    assert queue.best_level() == level_of(S)
    assert [oid for oid, _ in _drain(queue)] == ["b", "c"]
    # A discarded blob can be queued again, and comes out once.
    queue.push("a", level_of(M))
    assert _drain(queue) == [("a", level_of(M))]


def test_queue_batch_respects_max_level() -> None:
    queue = HydrationQueue()
    queue.push("bg", level_of(M))
    queue.push("boosted", BOOST)
    queue.push("demanded", DEMAND)
    assert queue.pop_batch(BOOST, 100, 1 << 30, {}, 1) == [("demanded", DEMAND), ("boosted", BOOST)]
    assert queue.pop_batch(BOOST, 100, 1 << 30, {}, 1) == []
    assert queue.best_level() == level_of(M) and "bg" in queue


def test_queue_batch_count_and_byte_limits() -> None:
    queue = HydrationQueue()
    for index in range(10):
        queue.push(f"o{index}", level_of(S))
    assert [oid for oid, _ in queue.pop_batch(level_of(B), 3, 1 << 30, {}, 1)] == ["o0", "o1", "o2"]
    sizes = {"o3": 40, "o4": 40, "o5": 40, "o6": 500}
    # 40 + 40 fits in 100, a third 40 would not.
    assert [oid for oid, _ in queue.pop_batch(level_of(B), 100, 100, sizes, 1)] == ["o3", "o4"]
    assert [oid for oid, _ in queue.pop_batch(level_of(B), 100, 100, sizes, 1)] == ["o5"]
    # An oversized blob still goes, alone, so the queue never wedges.
    assert [oid for oid, _ in queue.pop_batch(level_of(B), 100, 100, sizes, 1)] == ["o6"]
    # Unknown sizes count as the guess.
    assert [oid for oid, _ in queue.pop_batch(level_of(B), 100, 100, {}, 30)] == ["o7", "o8", "o9"]
    assert len(queue) == 0
