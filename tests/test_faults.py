"""Reads through a faulty network: exact bytes or EIO, never wrong bytes.

The mount talks to the real ``git http-backend`` fixture through
:class:`~artifactfs.testing.faultproxy.FaultProxy`, which resets connections,
answers 5xx, stalls, truncates packs and alters object content inside
otherwise valid packs. Readers compare every read with a ``git clone``.

``ARTIFACTFS_FAULT_SECONDS`` (default 12) is how long the faulty phase runs.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest
import robustness

from artifactfs.maintenance.gc import collect
from artifactfs.state import StateRoot
from artifactfs.store.blobcache import BlobCache
from artifactfs.testing import FileSpec
from artifactfs.testing.faultproxy import FaultProxy, _alter_pack, _parse_pack
from artifactfs.testing.mounts import MountedTree, read_fresh, run_cli

FAULT_SECONDS = float(os.environ.get("ARTIFACTFS_FAULT_SECONDS", "12"))
READERS = 8


def faulty_repo_files(seed: int = 7) -> dict[str, bytes | FileSpec]:
    """Random binaries (never deltified), similar texts (deltified) and a few large files."""
    rng = random.Random(seed)
    files: dict[str, bytes | FileSpec] = {}
    for index in range(48):
        files[f"bin/d{index % 6}/blob{index}.bin"] = rng.randbytes(rng.randint(1, 96) << 10)
    shared = "".join(f"line {n}: {rng.random()}\n" for n in range(800))
    for index in range(48):
        files[f"text/t{index % 4}/file{index}.txt"] = (shared + f"variant {index}\n" * (index + 1)).encode()
    for index in range(3):
        files[f"large/big{index}.dat"] = rng.randbytes((1 + index) << 20)
    files["empty"] = b""
    files["link"] = FileSpec(symlink_target="text/t0/file0.txt")
    return files


def evict_blob_cache(state_root: Path) -> int:
    """What ``artifactfs gc --max-size 0`` does: every later read has to fetch again."""
    return collect(BlobCache(StateRoot(state_root).blob_cache_dir), 0, keep_recent=0).evicted_blobs


class ReadLedger:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.exact = 0
        self.eio = 0
        self.wrong: list[str] = []
        self.other_errors: list[str] = []

    def check(self, mount: Path, relative: str, expected: bytes) -> bool:
        """One verified read; True if it returned the right bytes."""
        try:
            data = read_fresh(mount / relative)
        except OSError as error:
            with self.lock:
                if error.errno == errno.EIO:
                    self.eio += 1
                else:
                    self.other_errors.append(f"{relative}: {error!r}")
            return False
        with self.lock:
            if data == expected:
                self.exact += 1
                robustness.add("reads_verified")
                return True
            self.wrong.append(f"{relative}: {len(data)} bytes, expected {len(expected)}")
        return False


@pytest.fixture
def reference(make_repo, tmp_path) -> tuple[Path, dict[str, bytes]]:
    repo, _ = make_repo("faulty", faulty_repo_files())
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True, capture_output=True)
    contents = {}
    for directory, dirnames, filenames in os.walk(clone):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            path = Path(directory) / name
            if not path.is_symlink():
                contents[str(path.relative_to(clone))] = path.read_bytes()
    assert len(contents) == 100
    return repo, contents


@pytest.mark.slow
def test_pack_surgery_keeps_the_pack_valid_but_changes_one_object(tmp_path, make_repo):
    """The ``flip`` fault really does reach object content only: git accepts the pack, ids change."""
    repo, _ = make_repo("surgery", faulty_repo_files())
    pack = subprocess.run(
        ["git", "--git-dir", str(repo), "pack-objects", "--stdout", "--delta-base-offset", "--all", "-q"],
        input=b"",
        capture_output=True,
        check=True,
    ).stdout
    entries = _parse_pack(pack)
    assert entries is not None and any(entry.kind == 6 for entry in entries), (
        "the fixture should produce deltas"
    )
    for pick in (lambda n: 0, lambda n: n - 1, lambda n: n // 2):
        altered = _alter_pack(pack, raw=False, choose=pick)
        assert altered is not None and altered != pack
        target = tmp_path / f"check{len(list(tmp_path.iterdir()))}.git"
        subprocess.run(["git", "init", "-q", "--bare", str(target)], check=True)
        indexed = subprocess.run(
            ["git", "--git-dir", str(target), "index-pack", "--stdin"], input=altered, capture_output=True
        )
        assert indexed.returncode == 0, indexed.stderr  # zlib and the trailing checksum are fine
        original_ids = set(
            subprocess.run(
                [
                    "git",
                    "--git-dir",
                    str(repo),
                    "cat-file",
                    "--batch-all-objects",
                    "--batch-check=%(objectname)",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
        )
        new_ids = set(
            subprocess.run(
                [
                    "git",
                    "--git-dir",
                    str(target),
                    "cat-file",
                    "--batch-all-objects",
                    "--batch-check=%(objectname)",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
        )
        assert new_ids - original_ids, "some object must now hash to an id nobody asked for"
    raw = _alter_pack(pack, raw=True, choose=lambda n: n // 2)
    assert raw is not None and len(raw) == len(pack) and raw[:12] == pack[:12]
    assert sum(a != b for a, b in zip(raw, pack, strict=True)) == 1


TRANSPORT_FAULTS = ("reset", "5xx", "stall", "truncate")
ALL_FAULTS = ("reset", "5xx", "stall", "truncate", "flip", "flip-raw")


def hammer(
    tree: MountedTree,
    state_root: Path,
    paths: list[str],
    contents: dict[str, bytes],
    ledger: ReadLedger,
    seconds: float,
) -> int:
    """Concurrent readers over every file, twice per round, the blob cache evicted between rounds."""
    deadline = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < deadline or rounds < 2:
        rounds += 1

        def reader(seed: int) -> None:
            order = paths[:]
            random.Random(seed).shuffle(order)
            for relative in order * 2:
                ledger.check(tree.path, relative, contents[relative])

        threads = [threading.Thread(target=reader, args=(rounds * 100 + n,)) for n in range(READERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=240)
        assert not any(thread.is_alive() for thread in threads), "a reader hung under faults"
        evict_blob_cache(state_root)  # readers are idle: the next round fetches everything again
    return rounds


def run_faulty_mount(
    reference, git_server, state_root, tmp_path, kinds: tuple[str, ...], *, recover: bool
) -> None:
    repo, contents = reference
    paths = sorted(contents)
    ledger = ReadLedger()
    with FaultProxy(
        f"http://127.0.0.1:{git_server.port}", seed=1234, stall_seconds=0.4, commands=("fetch", "object-info")
    ) as proxy:
        tree = MountedTree(proxy.url("faulty"), tmp_path / "mnt", state_root, ["--read-timeout", "30"])
        with tree:
            daemon_pid = tree.status()["pid"]
            proxy.configure(probability=0.4, kinds=kinds)
            try:
                rounds = hammer(tree, state_root, paths, contents, ledger, FAULT_SECONDS)
            finally:
                robustness.add("faults_injected", proxy.total_injected)
            print(
                f"faults {dict(proxy.injected)} over {rounds} rounds; reads exact={ledger.exact} eio={ledger.eio}"
            )
            assert not ledger.wrong, f"wrong bytes served: {ledger.wrong[:5]}"
            assert not ledger.other_errors, f"errors other than EIO: {ledger.other_errors[:5]}"
            assert proxy.total_injected >= 10, f"too few faults injected to mean anything: {proxy.injected}"
            assert set(proxy.injected) == set(kinds), proxy.injected
            assert ledger.exact > len(paths), "most reads should succeed despite faults"
            status = tree.status()
            assert status["pid"] == daemon_pid and status["state"] == "mounted", (
                "the daemon must keep serving"
            )
            if not recover:
                return

            # Faults stop: every blob becomes readable, and hydration completes with nothing failed.
            proxy.stop_faults()
            pending = paths[:]
            for _ in range(6):
                pending = [p for p in pending if not ledger.check(tree.path, p, contents[p])]
                if not pending:
                    break
                time.sleep(0.5)
            assert not pending, f"still unreadable after faults stopped: {pending[:5]}"
            assert not ledger.wrong and not ledger.other_errors
            final = tree.wait_for(lambda s: s["hydration"]["complete"], timeout=60)["hydration"]
            assert final["failed_blobs"] == 0, final
            assert final["hydrated_blobs"] == final["total_blobs"], final
            assert tree.git("status", "--porcelain").stdout == ""
            for relative in paths:
                assert (tree.path / relative).read_bytes() == contents[relative]
            assert os.readlink(tree.path / "link") == "text/t0/file0.txt"


def test_transport_faults_give_exact_bytes_or_eio_then_full_hydration(
    reference, git_server, state_root, tmp_path, fuse
):
    run_faulty_mount(reference, git_server, state_root, tmp_path, TRANSPORT_FAULTS, recover=True)


def test_content_flips_are_caught_by_verification(reference, git_server, state_root, tmp_path, fuse):
    """Valid packs carrying altered object content: never served, only EIO; the daemon keeps serving."""
    run_faulty_mount(reference, git_server, state_root, tmp_path, ("flip", "5xx"), recover=False)


def test_every_fault_kind_then_full_recovery(reference, git_server, state_root, tmp_path, fuse):
    run_faulty_mount(reference, git_server, state_root, tmp_path, ALL_FAULTS, recover=True)


@pytest.fixture
def solo(make_repo, git_server, tmp_path):
    data = random.Random(5).randbytes(4 << 20)
    make_repo("solo", {"solo/only.bin": data, "other/x.txt": b"x\n"})
    return data


def test_corrupt_pack_bytes_do_not_kill_the_daemon(make_repo, git_server, state_root, tmp_path, fuse):
    files = faulty_repo_files()
    make_repo("faulty", files)
    with FaultProxy(f"http://127.0.0.1:{git_server.port}", seed=1) as proxy:
        with MountedTree(proxy.url("faulty"), tmp_path / "mnt", state_root, ["--hydrate", "none"]) as tree:
            for _ in range(8):
                proxy.inject("flip-raw")  # the next fetch carries one inverted byte of compressed data
                robustness.add("faults_injected")
                run_cli("prefetch", str(tree.path), "large", root=state_root)
                for relative in ("large/big2.dat", "large/big1.dat", "large/big0.dat"):
                    try:
                        data: bytes | int = read_fresh(tree.path / relative)
                    except OSError as error:
                        data = error.errno or 0
                    assert data == files[relative], (
                        f"{relative}: {data if isinstance(data, int) else 'wrong bytes'}"
                    )
                assert tree.status()["state"] == "mounted"
                evict_blob_cache(state_root)


def test_blob_altered_in_transit_is_refetched(solo, git_server, state_root, tmp_path, fuse):
    """The altered copy hashes to another id: it is never served, and the retry brings the real blob."""
    with FaultProxy(f"http://127.0.0.1:{git_server.port}", seed=3) as proxy:
        with MountedTree(proxy.url("solo"), tmp_path / "mnt", state_root, ["--hydrate", "none"]) as tree:
            proxy.inject("flip")
            robustness.add("faults_injected")
            assert read_fresh(tree.path / "solo/only.bin") == solo
            assert proxy.injected["flip"] == 1
            hydration = tree.status()["hydration"]
            assert hydration["failed_blobs"] == 0
            assert any("altered in transit" in message for message in hydration["errors"])
