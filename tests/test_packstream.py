"""PackStreamParser against packs written by real git, checked against git cat-file."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import string
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from artifactfs.errors import CorruptObjectError, TransientRemoteError
from artifactfs.store.blobcache import BlobCache
from artifactfs.store.packstream import (
    MissingDeltaBaseError,
    PackCorruptError,
    PackObject,
    PackStreamParser,
    TruncatedPackError,
)

GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
}
OFS_DELTA = 6
REF_DELTA = 7
LARGE_SIZE = 300_000


def git(cwd: Path, *args: str, stdin: bytes | None = None) -> bytes:
    done = subprocess.run(["git", *args], cwd=cwd, input=stdin, env=GIT_ENV, check=True, capture_output=True)
    return done.stdout


@dataclass(frozen=True)
class Repo:
    path: Path
    objects: dict[str, tuple[str, bytes]]  # oid -> (type, content), from git cat-file

    def pack(self, *options: str, revs: str = "main") -> bytes:
        """``git pack-objects`` of ``revs`` (rev-list arguments, one per line)."""
        return git(self.path, "pack-objects", "--stdout", "--revs", *options, stdin=revs.encode())

    def reachable(self, revs: str) -> set[str]:
        listing = git(self.path, "rev-list", "--objects", *revs.split()).decode()
        return {line.split()[0] for line in listing.splitlines()}


def read_all_objects(path: Path) -> dict[str, tuple[str, bytes]]:
    raw = git(path, "cat-file", "--batch-all-objects", "--batch")
    objects: dict[str, tuple[str, bytes]] = {}
    pos = 0
    while pos < len(raw):
        eol = raw.index(b"\n", pos)
        oid, type_name, size = raw[pos:eol].decode().split()
        start = eol + 1
        objects[oid] = (type_name, raw[start : start + int(size)])
        pos = start + int(size) + 1
    return objects


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """History of a slowly edited text file and some binaries; branch ``big`` adds a large blob."""
    path = tmp_path_factory.mktemp("repo")
    rng = random.Random(1234)
    git(path, "init", "-q", "-b", "main")
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(400)]
    lines = [" ".join(rng.choices(words, k=10)) for _ in range(300)]
    (path / "src").mkdir()
    for version in range(30):
        for _ in range(4):
            lines[rng.randrange(len(lines))] = " ".join(rng.choices(words, k=10))
        lines.append(f"version {version}")
        (path / "notes.txt").write_text("\n".join(lines))
        (path / "src" / "config.ini").write_text(f"[build]\nnumber = {version}\n")
        if version % 5 == 0:
            (path / "src" / f"data-{version}.bin").write_bytes(rng.randbytes(2000))
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", f"version {version}")
    git(path, "tag", "-a", "v1", "-m", "first release", "HEAD~3")
    git(path, "checkout", "-q", "-b", "big")
    large = rng.randbytes(LARGE_SIZE)
    (path / "large.bin").write_bytes(large)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "add large")
    (path / "large.bin").write_bytes(large[:100_000] + rng.randbytes(3000) + large[100_000:])
    git(path, "commit", "-q", "-am", "edit large")
    git(path, "checkout", "-q", "main")
    return Repo(path, read_all_objects(path))


def entry_kinds(tmp_path: Path, pack: bytes) -> Counter[int]:
    """Entry type codes in a (non-thin) pack, found through the index git builds for it."""
    pack_file = tmp_path / "kinds.pack"
    pack_file.write_bytes(pack)
    git(tmp_path, "index-pack", "-o", str(tmp_path / "kinds.idx"), str(pack_file))
    index = git(tmp_path, "show-index", stdin=(tmp_path / "kinds.idx").read_bytes()).decode()
    return Counter((pack[int(line.split()[0])] >> 4) & 7 for line in index.splitlines())


def entry_offsets(tmp_path: Path, pack: bytes) -> list[int]:
    pack_file = tmp_path / "offsets.pack"
    pack_file.write_bytes(pack)
    git(tmp_path, "index-pack", "-o", str(tmp_path / "offsets.idx"), str(pack_file))
    index = git(tmp_path, "show-index", stdin=(tmp_path / "offsets.idx").read_bytes()).decode()
    return sorted(int(line.split()[0]) for line in index.splitlines())


def with_trailer(body: bytes) -> bytes:
    return body + hashlib.sha1(body).digest()


def chunks(data: bytes, sizes: Iterator[int]) -> Iterator[bytes]:
    pos = 0
    while pos < len(data):
        size = next(sizes)
        yield data[pos : pos + size]
        pos += size


def random_sizes(seed: int) -> Iterator[int]:
    rng = random.Random(seed)
    while True:
        yield rng.choice((1, 2, 7, rng.randint(1, 300), rng.randint(1, 70_000)))


def parse(
    pack: bytes, sizes: Iterator[int] | None = None, parser: PackStreamParser | None = None
) -> list[PackObject]:
    """Feed ``pack`` in chunks of the given sizes (whole if None) and collect every object."""
    parser = parser or PackStreamParser()
    found: list[PackObject] = []
    for piece in chunks(pack, sizes) if sizes is not None else [pack]:
        found += parser.feed(piece)
    found += parser.finish()
    assert parser.objects_expected == parser.objects_done == len(found)
    return found


def content(obj: PackObject) -> bytes:
    if obj.spool_path is not None:
        assert obj.data is None
        return obj.spool_path.read_bytes()
    assert obj.data is not None
    return obj.data


def assert_matches_git(found: list[PackObject], repo: Repo, expected_oids: set[str]) -> None:
    assert sorted(obj.oid for obj in found) == sorted(expected_oids)
    for obj in found:
        type_name, data = repo.objects[obj.oid]
        assert (obj.type_name, obj.size) == (type_name, len(data))
        assert content(obj) == data


@pytest.mark.parametrize("delta_kind", [OFS_DELTA, REF_DELTA])
@pytest.mark.parametrize("chunking", ["whole", "random", "one-byte"])
def test_parses_git_pack(repo: Repo, tmp_path: Path, delta_kind: int, chunking: str) -> None:
    options = ("--delta-base-offset",) if delta_kind == OFS_DELTA else ()
    pack = repo.pack(*options, "--all", revs="")
    kinds = entry_kinds(tmp_path, pack)
    assert kinds[delta_kind] > 10 and kinds[OFS_DELTA + REF_DELTA - delta_kind] == 0
    assert {1, 2, 3, 4} <= set(kinds)
    if chunking == "one-byte":
        pack = repo.pack(*options)  # the smaller main-only pack keeps this quick
        expected = repo.reachable("main")
        sizes: Iterator[int] | None = iter(lambda: 1, 0)
    else:
        expected = repo.reachable("--all")
        sizes = None if chunking == "whole" else random_sizes(len(pack))
    assert_matches_git(parse(pack, sizes), repo, expected)


def test_ref_deltas_before_their_bases_wait_for_them(repo: Repo, tmp_path: Path) -> None:
    pack = repo.pack(revs="main")
    offsets = entry_offsets(tmp_path, pack)
    bounds = [*offsets, len(pack) - 20]
    entries = [pack[start:end] for start, end in itertools.pairwise(bounds)]
    reordered = with_trailer(pack[:12] + b"".join(reversed(entries)))

    parser = PackStreamParser()
    per_entry = [parser.feed(entry) for entry in [reordered[:12], *reversed(entries)]]
    per_entry.append(parser.feed(reordered[-20:]) + parser.finish())

    counts = [len(batch) for batch in per_entry]
    assert 0 in counts[1:-1], "deltas whose base comes later must be held back"
    assert max(counts) > 1, "a base must release the deltas waiting for it"
    assert_matches_git([obj for batch in per_entry for obj in batch], repo, repo.reachable("main"))


def test_large_blob_spools_and_serves_as_delta_base(repo: Repo, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    parser = PackStreamParser(spool_dir=spool_dir, spool_threshold=64 << 10)
    found = parse(repo.pack("--delta-base-offset", revs="big"), random_sizes(7), parser)
    assert_matches_git(found, repo, repo.reachable("big"))
    large = [obj for obj in found if obj.size > 64 << 10]
    assert len(large) == 2
    spooled = [obj for obj in large if obj.spool_path is not None]
    assert len(spooled) == 1, "exactly one version is stored whole; the other is a delta"
    assert spooled[0].spool_path is not None and spooled[0].spool_path.parent == spool_dir
    assert sorted(spool_dir.iterdir()) == [spooled[0].spool_path]
    assert all(obj.data is not None for obj in found if obj.spool_path is None)


def test_adopted_spool_file_is_fetched_back_through_external_base(repo: Repo, tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")
    asked: list[str] = []

    def from_cache(oid: str) -> bytes | None:
        asked.append(oid)
        return cache.read_bytes(oid) if cache.contains(oid) else None

    parser = PackStreamParser(spool_dir=cache.tmp_dir, spool_threshold=64 << 10, external_base=from_cache)
    pack = repo.pack(revs="big")
    bounds = [0, *entry_offsets(tmp_path, pack), len(pack)]
    found: list[PackObject] = []
    for start, end in itertools.pairwise(bounds):  # one entry per feed: the delta comes later
        for obj in parser.feed(pack[start:end]):
            if obj.spool_path is not None:
                cache.adopt_file(obj.oid, obj.spool_path)
            found.append(obj)
    found += parser.finish()

    adopted = [obj.oid for obj in found if obj.spool_path is not None]
    assert len(adopted) == 1 and asked == adopted
    assert cache.verify(adopted[0]) and list(cache.tmp_dir.iterdir()) == []
    for obj in found:
        if obj.spool_path is None:
            assert obj.data == repo.objects[obj.oid][1]


def test_tiny_base_cache_falls_back_to_external_base(repo: Repo) -> None:
    pack = repo.pack("--delta-base-offset", "--all", revs="")
    in_pack = repo.reachable("--all")
    asked: dict[int, list[str]] = {}
    for limit in (0, 16 << 10, 64 << 20):
        calls: list[str] = []

        def lookup(oid: str, calls: list[str] = calls) -> bytes | None:
            calls.append(oid)
            return repo.objects[oid][1]

        parser = PackStreamParser(base_cache_bytes=limit, external_base=lookup)
        found = parse(pack, random_sizes(limit), parser)
        assert_matches_git(found, repo, in_pack)
        asked[limit] = calls
    assert set(asked[0]) <= in_pack
    assert len(asked[0]) > len(asked[16 << 10]) > 0
    assert asked[64 << 20] == []


def test_evicted_base_without_external_base_is_reported(repo: Repo) -> None:
    with pytest.raises(MissingDeltaBaseError, match="evicted"):
        parse(repo.pack("--delta-base-offset"), parser=PackStreamParser(base_cache_bytes=0))


def test_thin_pack_resolves_against_external_bases(repo: Repo) -> None:
    pack = repo.pack("--thin", "--delta-base-offset", revs="main\n^main~3\n")
    in_pack = repo.reachable("main ^main~3")
    asked: list[str] = []

    def lookup(oid: str) -> bytes | None:
        asked.append(oid)
        return repo.objects[oid][1] if oid in repo.objects else None

    found = parse(pack, random_sizes(3), PackStreamParser(external_base=lookup))
    assert_matches_git(found, repo, in_pack)
    external = set(asked) - in_pack
    assert external <= repo.reachable("main~3")
    # external_base returns bare content: the parser must work out each base's type.
    assert {repo.objects[oid][0] for oid in external} == {"blob", "tree"}
    with pytest.raises(MissingDeltaBaseError, match="base is unavailable"):
        parse(pack)
    with pytest.raises(PackCorruptError, match="does not hash to it"):
        parse(pack, parser=PackStreamParser(external_base=lambda oid: b"not the base"))


def test_truncated_stream_is_transient(repo: Repo, tmp_path: Path) -> None:
    pack = repo.pack("--delta-base-offset", revs="big")
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    for cut in (0, 5, 12, 13, len(pack) // 2, len(pack) - 21, len(pack) - 20, len(pack) - 1):
        parser = PackStreamParser(spool_dir=spool_dir, spool_threshold=64 << 10)
        for piece in chunks(pack[:cut], random_sizes(cut)):
            parser.feed(piece)
        with pytest.raises(TruncatedPackError, match="ended") as caught:
            parser.finish()
        assert isinstance(caught.value, TransientRemoteError)
        for leftover in spool_dir.iterdir():  # only completed objects may remain
            assert leftover.stat().st_size == LARGE_SIZE + 3000
            leftover.unlink()


def test_flipped_byte_inside_an_object_is_corruption(repo: Repo, tmp_path: Path) -> None:
    pack = repo.pack("--delta-base-offset", revs="main")
    bounds = [*entry_offsets(tmp_path, pack), len(pack) - 20]
    rng = random.Random(99)
    spans = rng.sample(list(itertools.pairwise(bounds)), 25)
    for start, end in spans:
        # The last bytes of an entry are always inside its zlib stream.
        for position in (end - 1, end - 6, rng.randrange(max(start + 1, end - 8), end)):
            damaged = bytearray(pack)
            damaged[position] ^= 0x40
            parser = PackStreamParser()
            with pytest.raises(CorruptObjectError):
                parser.feed(bytes(damaged))


def test_malformed_pack_framing_is_corruption(repo: Repo) -> None:
    pack = repo.pack(revs="main~25")
    cases = {
        "checksum mismatch": pack[:-1] + bytes([pack[-1] ^ 1]),
        "bad signature": b"PACX" + pack[4:],
        "unsupported pack version 4": pack[:7] + b"\x04" + pack[8:],
        "after its trailing checksum": pack + b"\x00",
        # The low bits of the first entry's size, with a checksum that still matches.
        "more than its declared|but its header says": with_trailer(
            pack[:12] + bytes([pack[12] ^ 1]) + pack[13:-20]
        ),
    }
    for message, damaged in cases.items():
        with pytest.raises(PackCorruptError, match=message):
            parser = PackStreamParser()
            for piece in chunks(damaged, random_sizes(len(message))):
                parser.feed(piece)
            parser.finish()


def test_delta_against_the_wrong_base_is_corruption(repo: Repo, tmp_path: Path) -> None:
    pack = repo.pack(revs="main")
    offsets = entry_offsets(tmp_path, pack)
    first = PackStreamParser().feed(pack[: offsets[1]])[0]
    delta_at = next(offset for offset in offsets if (pack[offset] >> 4) & 7 == REF_DELTA)
    header_end = delta_at + 1
    while pack[header_end - 1] & 0x80:
        header_end += 1
    forged = bytearray(pack[:-20])
    forged[header_end : header_end + 20] = bytes.fromhex(first.oid)
    with pytest.raises(PackCorruptError, match="does not apply|expects a"):
        parse(with_trailer(bytes(forged)))


def test_empty_pack(repo: Repo) -> None:
    pack = git(repo.path, "pack-objects", "--stdout", stdin=b"")
    parser = PackStreamParser()
    assert parser.feed(pack) == [] and parser.finish() == []
    assert parser.objects_expected == parser.objects_done == 0


@pytest.mark.slow
def test_stream_ending_exactly_at_the_output_limit(tmp_path: Path) -> None:
    """64 MiB of zeros: zlib's end comes as an output slice fills, with the trailer in the same input."""
    repo = tmp_path / "zeros.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    oid = (
        subprocess.run(
            ["git", "--git-dir", str(repo), "hash-object", "-w", "--stdin"],
            input=bytes(64 << 20),
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    pack = subprocess.run(
        ["git", "--git-dir", str(repo), "pack-objects", "--stdout"],
        input=f"{oid}\n".encode(),
        capture_output=True,
        check=True,
    ).stdout
    for chunk in (len(pack), 65536, 4096 * 3 + 7, 1000):
        parser = PackStreamParser(spool_dir=tmp_path, spool_threshold=16 << 20)
        objects = [
            obj for start in range(0, len(pack), chunk) for obj in parser.feed(pack[start : start + chunk])
        ]
        objects += parser.finish()
        assert [(obj.oid, obj.size) for obj in objects] == [(oid, 64 << 20)], chunk
        assert objects[0].spool_path is not None and objects[0].spool_path.stat().st_size == 64 << 20
        objects[0].spool_path.unlink()
