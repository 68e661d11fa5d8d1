"""BlobCache: storage, verification and crash leftovers, with oids computed by real git."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import threading
import zlib
from pathlib import Path

import pytest

from artifactfs.errors import CorruptObjectError
from artifactfs.store.blobcache import BlobCache
from artifactfs.store.loose import encoded_size


def git_blob_id(data: bytes) -> str:
    done = subprocess.run(["git", "hash-object", "--stdin"], input=data, check=True, capture_output=True)
    return done.stdout.decode().strip()


@pytest.fixture
def cache(tmp_path: Path) -> BlobCache:
    return BlobCache(tmp_path / "cache")


def test_store_bytes_lays_out_read_only_files(cache: BlobCache, tmp_path: Path) -> None:
    data = b"hello, world\n"
    oid = git_blob_id(data)
    path = cache.store_bytes(oid, data)
    assert path == tmp_path / "cache" / "loose" / oid[:2] / oid[2:] == cache.path(oid)
    assert cache.read_bytes(oid) == data
    assert zlib.decompress(path.read_bytes()) == b"blob %d\0" % len(data) + data, (
        "a loose object git can read"
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o400  # owner-only (artifactfs.state)
    assert cache.contains(oid) and cache.size(oid) == len(data) and cache.verify(oid)
    assert cache.store_bytes(oid, data) == path, "storing twice is harmless"
    assert list(cache.tmp_dir.iterdir()) == []


def test_store_bytes_rejects_data_that_does_not_match(cache: BlobCache) -> None:
    oid = git_blob_id(b"expected")
    with pytest.raises(CorruptObjectError, match="hashes to"):
        cache.store_bytes(oid, b"something else")
    assert not cache.contains(oid) and cache.size(oid) is None
    assert list(cache.tmp_dir.iterdir()) == []


def test_adopt_file_moves_verified_files_and_deletes_bad_ones(cache: BlobCache) -> None:
    data = random.Random(5).randbytes(3 << 20)
    oid = git_blob_id(data)
    spooled = cache.tmp_dir / "spooled"
    spooled.write_bytes(data)
    assert cache.adopt_file(oid, spooled) == cache.path(oid) and cache.read_bytes(oid) == data
    assert not spooled.exists() and cache.verify(oid)

    again = cache.tmp_dir / "again"
    again.write_bytes(data)
    assert cache.adopt_file(oid, again) == cache.path(oid) and not again.exists()

    bad = cache.tmp_dir / "bad"
    bad.write_bytes(data[:-1])
    other = git_blob_id(data + b"!")
    with pytest.raises(CorruptObjectError, match="hashes to"):
        cache.adopt_file(other, bad)
    assert not bad.exists() and not cache.contains(other)


def test_verify_detects_damage_and_absence(cache: BlobCache) -> None:
    data = b"precious bytes"
    oid = git_blob_id(data)
    path = cache.store_bytes(oid, data)
    os.chmod(path, 0o644)
    stored = bytearray(path.read_bytes())
    stored[-5] ^= 0x01  # the last content byte, just before the adler32 trailer
    path.write_bytes(bytes(stored))
    assert cache.contains(oid) and not cache.verify(oid)
    cache.remove(oid)
    assert not cache.contains(oid) and not cache.verify(oid)
    cache.remove(oid)  # removing a missing blob is not an error


def test_listing_and_totals(cache: BlobCache) -> None:
    blobs = {
        git_blob_id(data): data for data in (b"", b"a", b"bb" * 500, random.Random(4096).randbytes(4096))
    }
    for oid, data in blobs.items():
        cache.store_bytes(oid, data)
    (cache.path(next(iter(blobs))).parent / "not-an-object").write_bytes(b"x")
    assert sorted(cache.iter_oids()) == sorted(blobs)
    assert cache.total_bytes() == sum(encoded_size(len(data)) for data in blobs.values())


def test_clean_tmp_removes_crash_leftovers_only(cache: BlobCache) -> None:
    data = b"kept"
    oid = git_blob_id(data)
    cache.store_bytes(oid, data)
    for name in ("blob-partial", "pack-1.spool", "pack-2.spool"):
        (cache.tmp_dir / name).write_bytes(b"half a blo")
    assert cache.clean_tmp() == 3
    assert list(cache.tmp_dir.iterdir()) == [] and cache.verify(oid)
    assert cache.clean_tmp() == 0


def test_readers_never_see_a_partial_file(cache: BlobCache) -> None:
    blobs = [random.Random(seed).randbytes(4 << 20) for seed in range(4)]
    oids = [git_blob_id(data) for data in blobs]
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for oid in oids:
                size = cache.size(oid)
                if size is not None:
                    seen.append(size)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for oid, data in zip(oids, blobs, strict=True):
            cache.store_bytes(oid, data)
    finally:
        stop.set()
        watcher.join()
    assert seen and set(seen) == {4 << 20}


def test_rejects_malformed_oids(cache: BlobCache) -> None:
    for oid in ("../../etc/passwd", "ABCDEF" + "0" * 34, "0" * 39, "g" * 40):
        with pytest.raises(ValueError, match="not a hex SHA-1"):
            cache.path(oid)
