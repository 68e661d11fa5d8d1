"""The hydrator's scheduling, on trio's MockClock with a scripted blob source (pure logic, no network).

The source stores real blobs in a real blob cache, so delivery goes through
the same verification as in a mount; only the origin is replaced.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from dulwich.objects import Blob, ObjectID, Tree

from artifactfs.errors import MissingObjectError, RemoteError
from artifactfs.hydrator.hydrator import BlobUnavailableError, Hydrator
from artifactfs.hydrator.priority import Classifier, PriorityClass
from artifactfs.hydrator.settings import HydrationSettings
from artifactfs.hydrator.sources import CacheSource, Deliver, SourceChain
from artifactfs.snapshot.tree import Snapshot, TreeCache
from artifactfs.store.blobcache import BlobCache

FILES = {
    "package.json": b'{"name": "demo"}\n',
    "ci.yml": b"on: push\n",
    "src/a.py": b"a = 1\n",
    "src/b.py": b"b = 2\n",
    "src/c.py": b"c = 3\n",
    "README.md": b"# demo\n",
    "logo.png": b"\x89PNG fake image bytes\n",
}


@dataclass
class Call:
    oids: list[str]
    urgent: bool
    at: float


@dataclass
class ScriptedSource:
    """An origin that serves ``FILES`` from memory, and fails or blocks as a test says."""

    contents: dict[str, bytes]
    cache: BlobCache
    name: str = "origin"
    calls: list[Call] = field(default_factory=list)
    behaviour: Callable[[Call], Awaitable[None]] | None = None

    async def fetch(self, oids: Sequence[str], deliver: Deliver, *, urgent: bool) -> None:
        call = Call(list(oids), urgent, trio.current_time())
        self.calls.append(call)
        if self.behaviour is not None:
            await self.behaviour(call)
        await trio.sleep(0.01)
        arrived = []
        for oid in oids:
            self.cache.store_bytes(oid, self.contents[oid])
            arrived.append((oid, len(self.contents[oid])))
        deliver(arrived)


class NoGitdir:
    """A gitdir that holds no blobs (nothing was committed in the mount)."""

    def read_object(self, oid: str) -> tuple[int, bytes]:
        raise KeyError(oid)


class NoObjectInfo:
    object_info_supported = False


def snapshot_of(files: dict[str, bytes]) -> tuple[Snapshot, dict[str, str]]:
    """An in-memory snapshot of ``files`` and the oid of each path."""
    objects: dict[str, bytes] = {}
    oids: dict[str, str] = {}

    def build(prefix: str) -> str:
        tree = Tree()
        names = {path[len(prefix) :].split("/", 1)[0] for path in files if path.startswith(prefix)}
        for name in names:
            path = prefix + name
            if path in files:
                blob = Blob.from_string(files[path])
                oids[path] = blob.id.decode()
                tree.add(name.encode(), 0o100644, blob.id)
            else:
                tree.add(name.encode(), 0o040000, ObjectID(build(path + "/").encode()))
        objects[tree.id.decode()] = tree.as_raw_string()
        return str(tree.id.decode())

    root = build("")
    return Snapshot("0" * 40, root, TreeCache(objects.__getitem__)), oids


@dataclass
class Rig:
    hydrator: Hydrator
    source: ScriptedSource
    oids: dict[str, str]
    snapshot: Snapshot

    def path_of(self, oid: str) -> str:
        return next(path for path, known in self.oids.items() if known == oid)


def run(test: Callable[[Rig], Awaitable[None]], tmp_path: Path, **settings: Any) -> None:
    snapshot, oids = snapshot_of(FILES)
    cache = BlobCache(tmp_path / "cache")
    source = ScriptedSource({oid: FILES[path] for path, oid in oids.items()}, cache)
    chain = SourceChain([CacheSource(cache), source], optional_timeout=lambda urgent: 1.0)
    options = {"connections": 1, "initial_batch": 2, "max_batch": 2, "read_timeout": 1e6, **settings}
    hydrator = Hydrator(
        NoObjectInfo(),  # type: ignore[arg-type]
        chain,
        cache,
        NoGitdir(),  # type: ignore[arg-type]
        Classifier(),
        HydrationSettings(**options),
    )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(hydrator.run)
            await test(Rig(hydrator, source, oids, snapshot))
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def hydrated(hydrator: Hydrator) -> None:
    while not hydrator.status().complete:
        await trio.sleep(0.1)


def test_background_follows_the_classes_in_batches_of_the_set_size(tmp_path: Path) -> None:
    async def test(rig: Rig) -> None:
        await rig.hydrator.track(rig.snapshot)
        rig.hydrator.start_background()
        await hydrated(rig.hydrator)
        batches = [call.oids for call in rig.source.calls]
        assert all(len(batch) <= 2 for batch in batches), batches
        classes = [Classifier().classify(rig.path_of(oid)) for batch in batches for oid in batch]
        assert classes == sorted(classes), classes
        assert classes[0] is PriorityClass.MANIFEST and classes[-1] is PriorityClass.BINARY
        assert sorted(oid for batch in batches for oid in batch) == sorted(rig.oids.values())
        assert not any(call.urgent for call in rig.source.calls)

    run(test, tmp_path)


def test_batches_split_by_bytes(tmp_path: Path) -> None:
    async def test(rig: Rig) -> None:
        await rig.hydrator.track(rig.snapshot)
        rig.hydrator.start_background()
        await hydrated(rig.hydrator)
        # Unknown sizes count as 16 KiB each: a 20 KiB budget takes one blob per request.
        assert [len(call.oids) for call in rig.source.calls] == [1] * len(FILES)

    run(test, tmp_path, max_batch=64, initial_batch=64, max_batch_bytes=20 << 10)


def test_demand_preempts_a_blocked_background_batch(tmp_path: Path) -> None:
    release = trio.Event()

    async def hold_background(call: Call) -> None:
        if not call.urgent:
            await release.wait()

    async def test(rig: Rig) -> None:
        rig.source.behaviour = hold_background
        await rig.hydrator.track(rig.snapshot)
        rig.hydrator.start_background()
        while not rig.source.calls:
            await trio.sleep(0.01)
        wanted = rig.oids["logo.png"]  # the last class: background would reach it last
        started = trio.current_time()
        path = await rig.hydrator.ensure(wanted, path="logo.png")
        assert path.is_file()
        assert trio.current_time() - started < 1.0
        demand = [call for call in rig.source.calls if call.urgent]
        assert [call.oids for call in demand] == [[wanted]]
        assert not release.is_set()  # served while the background batch was still held
        release.set()
        await hydrated(rig.hydrator)
        assert rig.hydrator.status().sources["origin"].blobs == len(FILES)

    run(test, tmp_path)


def test_transient_failures_retry_with_backoff_until_the_source_answers(tmp_path: Path) -> None:
    failures = 3

    async def fail_first(call: Call) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise RemoteError("connection reset")

    async def test(rig: Rig) -> None:
        rig.source.behaviour = fail_first
        await rig.hydrator.track(rig.snapshot)
        rig.hydrator.start_background()
        await hydrated(rig.hydrator)
        assert failures == 0
        first, *later = rig.source.calls
        assert set(first.oids) <= {oid for call in later for oid in call.oids}  # the failed batch came back
        # Three failures, three backoffs (0.2 s doubling, jitter 50 %) before the call that succeeded.
        assert later[2].at - first.at >= 0.1 + 0.2 + 0.4
        status = rig.hydrator.status()
        assert status.hydrated_blobs == len(FILES) and status.failed_blobs == 0

    run(test, tmp_path)


def test_a_blob_the_origin_lacks_is_split_out_and_fails_alone(tmp_path: Path) -> None:
    lacking: set[str] = set()

    async def refuse(call: Call) -> None:
        if lacking & set(call.oids):
            raise MissingObjectError(None, "not our ref")  # the server did not say which

    async def test(rig: Rig) -> None:
        lacking.add(rig.oids["src/b.py"])
        rig.source.behaviour = refuse
        await rig.hydrator.track(rig.snapshot)
        rig.hydrator.start_background()
        await hydrated(rig.hydrator)
        status = rig.hydrator.status()
        assert status.failed_blobs == 1 and status.hydrated_blobs == len(FILES) - 1
        with pytest.raises(BlobUnavailableError):
            await rig.hydrator.ensure(rig.oids["src/b.py"], path="src/b.py")
        alone = [call.oids for call in rig.source.calls if call.oids == [rig.oids["src/b.py"]]]
        assert alone, rig.source.calls

    run(test, tmp_path, max_batch=8, initial_batch=8)


@dataclass
class FlakyTier:
    """An optional source that fails, hangs or offers wrong bytes."""

    mode: str
    cache: BlobCache
    name: str = "tier"
    asked: int = 0

    async def fetch(self, oids: Sequence[str], deliver: Deliver, *, urgent: bool) -> None:
        self.asked += 1
        if self.mode == "down":
            raise ConnectionRefusedError("connection refused")
        if self.mode == "hang":
            await trio.sleep(math.inf)


@pytest.mark.parametrize("mode", ["down", "hang"])
def test_an_optional_source_never_fails_a_fetch(tmp_path: Path, mode: str) -> None:
    snapshot, oids = snapshot_of(FILES)
    cache = BlobCache(tmp_path / "cache")
    origin = ScriptedSource({oid: FILES[path] for path, oid in oids.items()}, cache)
    tier = FlakyTier(mode, cache)
    chain = SourceChain([CacheSource(cache), tier, origin], optional_timeout=lambda urgent: 2.0)
    delivered: list[str] = []

    def deliver(arrived: list[tuple[str, int]]) -> list[tuple[str, int]]:
        delivered.extend(oid for oid, _ in arrived)
        return arrived

    async def main() -> None:
        started = trio.current_time()
        assert await chain.fetch(list(oids.values()), deliver, urgent=True)  # the origin was asked
        assert trio.current_time() - started <= 2.1

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sorted(delivered) == sorted(oids.values())
    assert tier.asked == 1
    status = chain.status()
    assert status["tier"].errors == 1
    assert status["origin"].blobs == len(FILES)
    assert status["cache"].blobs == 0
