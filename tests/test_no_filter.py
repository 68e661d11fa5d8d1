"""Servers without ``filter`` (``uploadpack.allowFilter=false``): the tip arrives with its
blobs in one depth-1 pack, the tree is published once its trees are in, and the blobs keep
streaming into the cache. Every test runs a real mount against ``git http-backend``.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from artifactfs.daemon.startup import TreeTracker
from artifactfs.store.packstream import PackObject
from artifactfs.testing import FileSpec, GitHttpServer
from artifactfs.testing.mounts import read_fresh

STALL = 6.0


def random_files(count: int, size: int) -> dict[str, bytes | FileSpec]:
    """Incompressible files: the pack is as large as they are, so a cut in its middle falls among them."""
    return {f"data/part{index:02}.bin": random.Random(index).randbytes(size) for index in range(count)}


PROJECT: dict[str, bytes | FileSpec] = {
    "README.md": b"# no filter here\n",
    "src/app.py": b"print('app')\n",
    "src/lib/util.py": b"def util():\n    return 1\n",
    "bin/run": FileSpec(b"#!/bin/sh\necho run\n", executable=True),
    "link": FileSpec(symlink_target="README.md"),
    **random_files(6, 40_000),
}


@pytest.fixture
def plain_server(git_root: Path) -> Iterator[GitHttpServer]:
    """A server without filter and without object-info (as hosted forges often are)."""
    with GitHttpServer(git_root, object_info=False, allow_filter=False) as server:
        yield server


def served_files(repo: Path) -> dict[str, tuple[str, bytes]]:
    listing = subprocess.run(
        ["git", "--git-dir", str(repo), "ls-tree", "-r", "-z", "HEAD"], capture_output=True, check=True
    ).stdout
    result: dict[str, tuple[str, bytes]] = {}
    for record in filter(None, listing.split(b"\0")):
        meta, path = record.split(b"\t", 1)
        mode, _, oid = meta.decode().split()
        blob = subprocess.run(
            ["git", "--git-dir", str(repo), "cat-file", "blob", oid], capture_output=True, check=True
        ).stdout
        result[path.decode()] = (mode, blob)
    return result


def mounted_files(root: Path, names: list[str]) -> dict[str, tuple[str, bytes]]:
    result: dict[str, tuple[str, bytes]] = {}
    for name in names:
        path = root / name
        if path.is_symlink():
            result[name] = ("120000", os.readlink(path).encode())
        else:
            mode = "100755" if path.stat().st_mode & 0o111 else "100644"
            result[name] = (mode, read_fresh(path))
    return result


def test_mount_without_filter_is_exact_and_git_works(make_repo, plain_server, mounts) -> None:
    repo, tip = make_repo("plain", PROJECT, extra_commits=3)
    trace = subprocess.run(
        ["git", "-c", "protocol.version=2", "ls-remote", plain_server.url("plain")],
        capture_output=True,
        text=True,
        env={**os.environ, "GIT_TRACE_PACKET": "1"},
    ).stderr
    advertised = next(line for line in trace.splitlines() if "git< fetch=" in line)
    assert "shallow" in advertised and "filter" not in advertised
    tree = mounts(plain_server.url("plain"))
    expected = served_files(repo)
    assert mounted_files(tree.path, sorted(expected)) == expected
    status = tree.wait_for(lambda s: s["hydration"]["hydrated_blobs"] == s["hydration"]["total_blobs"])
    assert status["hydration"]["failed_blobs"] == 0
    assert status["history_shallow"] and not status["history_complete"]

    fetches = [record for record in plain_server.requests if record.command == "fetch"]
    assert all(not record.has_filter for record in fetches)
    assert fetches[0].wants == (tip,) and "deepen 1" in fetches[0].arguments
    # The tip's own pack brought the blobs: no background batch fetched them again, and no
    # history fetch (which, without a filter, would bring every old blob) was made.
    assert sum(record.want_count for record in fetches[1:]) <= 2
    assert not any(any(a.startswith("deepen 2") for a in record.arguments) for record in fetches)

    tree.git("config", "user.email", "dev@example.com")
    tree.git("config", "user.name", "Dev")
    assert tree.git("status", "--porcelain").stdout == ""
    assert tree.git("log", "--format=%H").stdout.split() == [tip]
    (tree.path / "src/app.py").write_text("print('changed')\n")
    (tree.path / "data/part00.bin").unlink()
    tree.git("add", "-A")
    tree.git("commit", "-qm", "change without filter")
    commit = tree.git("rev-parse", "HEAD").stdout.strip()
    tree.git("push", "-q", "origin", "main")
    served = served_files(repo)
    assert (
        subprocess.run(
            ["git", "--git-dir", str(repo), "rev-parse", "main"], capture_output=True, text=True
        ).stdout.strip()
        == commit
    )
    assert served["src/app.py"] == ("100644", b"print('changed')\n")
    assert "data/part00.bin" not in served and served["data/part05.bin"] == expected["data/part05.bin"]


def test_demand_read_asks_by_id_before_the_stream_arrives(make_repo, plain_server, mounts) -> None:
    files = random_files(12, 100_000)
    repo, tip = make_repo("stalled", files)
    plain_server.inject(f"stall:{STALL}")  # the tip's pack: half now, the rest after STALL seconds
    tree = mounts(plain_server.url("stalled"))
    started = time.monotonic()
    contents = {name: read_fresh(tree.path / name) for name in sorted(files)}
    elapsed = time.monotonic() - started
    assert contents == files
    assert elapsed < STALL / 2, f"reads took {elapsed:.1f}s: they waited for the stalled stream"
    by_id = [r for r in plain_server.requests if r.command == "fetch" and r.wants != (tip,)]
    assert by_id, "no blob was asked for by id"
    # Only the blobs read were asked for by id (one per read): the stream brings the rest.
    assert all(r.want_count == 1 for r in by_id) and len(by_id) <= len(files)
    assert not any(r.has_filter for r in plain_server.requests)
    status = tree.wait_for(
        lambda s: s["hydration"]["hydrated_blobs"] == s["hydration"]["total_blobs"], timeout=STALL + 20
    )
    assert status["hydration"]["failed_blobs"] == 0


def test_demand_read_waits_for_the_stream_when_wants_are_refused(make_repo, git_root, mounts) -> None:
    files = random_files(12, 100_000)
    make_repo("strict", files)
    with GitHttpServer(git_root, object_info=False, allow_filter=False, tip_wants_only=True) as server:
        server.inject(f"stall:{STALL}")
        tree = mounts(server.url("strict"))
        try:
            started = time.monotonic()
            contents = {name: read_fresh(tree.path / name) for name in sorted(files)}
            elapsed = time.monotonic() - started
            assert contents == files
            refused = [r for r in server.requests if r.command == "fetch" and r.fault is None]
            assert refused, "no read asked for its blob by id"
            # Some blob was in the stalled half: its reader waited for the stream, not for an error.
            assert elapsed > STALL / 3
            status = tree.wait_for(
                lambda s: s["hydration"]["hydrated_blobs"] == s["hydration"]["total_blobs"], timeout=20
            )
            assert status["hydration"]["failed_blobs"] == 0
        finally:
            tree.unmount()


def _tree(entries: list[tuple[bytes, str, str]]) -> bytes:
    return b"".join(mode + b" " + name.encode() + b"\0" + bytes.fromhex(oid) for mode, name, oid in entries)


def test_tree_tracker_completes_once_every_reachable_tree_arrived_in_any_order() -> None:
    def obj(type_name: str, oid: str, data: bytes) -> PackObject:
        return PackObject(oid, type_name, len(data), data, None)

    blob, gitlink = "b" * 40, "c" * 40
    leaf = _tree([(b"100644", "f", blob), (b"160000", "sub", gitlink)])
    leaf_id = "1" * 40
    middle = _tree([(b"40000", "leaf", leaf_id), (b"100755", "x", blob)])
    middle_id = "2" * 40
    root = _tree([(b"40000", "middle", middle_id), (b"40000", "again", leaf_id)])
    root_id = "3" * 40
    commit_id = "4" * 40
    commit = f"tree {root_id}\nauthor A <a@b> 0 +0000\n\nmsg\n".encode()
    stream = [
        obj("tree", leaf_id, leaf),
        obj("blob", blob, b"x"),
        obj("commit", commit_id, commit),
        obj("tree", root_id, root),
        obj("tree", "9" * 40, _tree([])),  # not reachable: irrelevant
    ]
    tracker = TreeTracker(commit_id)
    for item in stream:
        tracker.add(item)
        assert not tracker.complete
    tracker.add(obj("tree", middle_id, middle))
    assert tracker.complete and tracker.root_tree == root_id
    assert tracker.trees[middle_id] == middle
