"""End-to-end: the background hydrator through real mounts, a real git server and the real CLI.

Orders are asserted from the daemon's own hydration record (``MountedTree.record()``),
never from timings.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from artifactfs.hydrator.priority import PriorityClass
from artifactfs.testing import FileSpec, GitHttpServer, git
from artifactfs.testing.mounts import MountedTree, run_cli
from artifactfs.testing.repos import distinct_content as content

CLASS_ORDER = [priority_class.label for priority_class in PriorityClass]


def wait_complete(tree: MountedTree, timeout: float = 30.0) -> dict[str, Any]:
    return tree.wait_for(lambda status: status["hydration"]["complete"], timeout=timeout)


def delete_object(repo: Path, oid: str) -> None:
    """Rewrite ``repo``'s objects into one pack that lacks ``oid`` (the repo stays served as before)."""
    every = git(repo, "cat-file", "--batch-all-objects", "--batch-check=%(objectname)").decode().split()
    assert oid in every
    old_packs = list((repo / "objects" / "pack").glob("pack-*"))
    kept = "".join(f"{other}\n" for other in every if other != oid).encode()
    git(repo, "pack-objects", "-q", str(repo / "objects" / "pack" / "pack"), input=kept)
    for path in old_packs:
        path.unlink()
    for directory in (repo / "objects").iterdir():
        if len(directory.name) == 2:
            shutil.rmtree(directory)
    probe = subprocess.run(
        ["git", f"--git-dir={repo}", "cat-file", "-e", oid], capture_output=True, check=False
    )
    assert probe.returncode != 0, "the object is still there"
    assert git(repo, "config", "uploadpack.allowAnySHA1InWant").strip() == b"true"


# --------------------------------------------------------------------------- 1. class order

CLASS_EXAMPLES = [
    ("package.json", "manifest"),
    ("go.mod", "manifest"),
    ("Cargo.toml", "manifest"),
    (".gitignore", "config"),
    ("Dockerfile", "config"),
    ("Makefile", "config"),
    ("main.py", "source"),
    ("app.ts", "source"),
    ("guide.md", "docs"),
    ("notes.txt", "docs"),
    ("NOTES", "text"),
    ("table.csv", "text"),
    ("logo.png", "binary"),
    ("bundle.zip", "binary"),
]


def class_tree() -> tuple[dict[str, bytes | FileSpec], dict[str, str]]:
    """Three directories holding files of every class, plus a large blob named like source."""
    files: dict[str, bytes | FileSpec] = {}
    expected: dict[str, str] = {}
    for group in range(3):
        for name, label in CLASS_EXAMPLES:
            files[f"g{group}/{name}"] = content(f"g{group}/{name}")
            expected[f"g{group}/{name}"] = label
    # Past the size threshold: fetched with the binaries whatever its name says.
    files["data/huge.json"] = content("huge", (4 << 20) + 4096)
    expected["data/huge.json"] = "binary"
    return files, expected


def test_background_arrival_follows_the_priority_classes(make_repo, git_server, mounts):
    files, expected = class_tree()
    make_repo("order", files)
    tree = mounts(git_server.url("order"), "--connections", "1")
    status = wait_complete(tree)
    record = tree.record()

    assert sorted(arrival["path"] for arrival in record) == sorted(files), "each blob arrives exactly once"
    assert not any(arrival["demanded"] for arrival in record)
    for arrival in record:
        assert arrival["priority_class"] == expected[arrival["path"]], arrival["path"]
    sequence = [CLASS_ORDER.index(arrival["priority_class"]) for arrival in record]
    assert sequence == sorted(sequence), f"classes arrived out of order: {[a['path'] for a in record]}"
    assert [arrival["at"] for arrival in record] == sorted(arrival["at"] for arrival in record)

    classes = status["hydration"]["classes"]
    for label in CLASS_ORDER:
        count = sum(1 for value in expected.values() if value == label)
        assert classes[label]["total"] == classes[label]["hydrated"] == count, label
    for relative, data in files.items():
        assert (tree.path / relative).read_bytes() == data


# --------------------------------------------------------------------------- 2. demand preempts


def test_demand_read_preempts_a_long_background_queue(make_repo, git_server, mounts):
    files: dict[str, bytes | FileSpec] = {
        f"src/m{index:04d}.py": content(f"m{index}", 400) for index in range(2000)
    }
    files["assets/logo.png"] = content("logo", 5000)
    make_repo("busy", files)
    tree = mounts(git_server.url("busy"), "--connections", "1", "--max-bandwidth", "150K")

    assert (tree.path / "assets/logo.png").read_bytes() == files["assets/logo.png"]
    status = tree.status()["hydration"]
    assert not status["complete"]
    assert status["hydrated_blobs"] < status["total_blobs"] // 2

    record = tree.record()
    position = next(index for index, arrival in enumerate(record) if arrival["path"] == "assets/logo.png")
    logo = record[position]
    assert logo["demanded"] is True and logo["priority_class"] == "binary"
    assert position < 1000, f"the demanded binary arrived after {position} background blobs"
    assert all(not arrival["demanded"] for arrival in record if arrival["path"] != "assets/logo.png")


# --------------------------------------------------------------------------- 3. missing object


def test_a_blob_missing_on_the_remote_fails_alone(make_repo, git_server, mounts):
    files: dict[str, bytes | FileSpec] = {f"src/f{index:02d}.py": content(f"f{index}") for index in range(30)}
    files["src/gone.py"] = b"this blob is missing on the server\n"
    files["docs/intro.md"] = content("intro")
    repo, _ = make_repo("holey", files)
    gone = git(repo, "rev-parse", "HEAD:src/gone.py").decode().strip()
    delete_object(repo, gone)

    tree = mounts(git_server.url("holey"), "--connections", "1")
    status = wait_complete(tree)["hydration"]
    assert status["failed_blobs"] == 1
    assert status["hydrated_blobs"] == status["total_blobs"] - 1 == len(files) - 1
    assert status["classes"]["source"]["failed"] == 1
    assert any("src/gone.py" in message for message in status["errors"]), status["errors"]

    with pytest.raises(OSError) as raised:
        (tree.path / "src/gone.py").read_bytes()
    assert raised.value.errno == errno.EIO
    # The failure is permanent: reading again does not ask the remote again.
    asked = sum(1 for request in git_server.requests if gone in request.wants)
    with pytest.raises(OSError) as raised_again:
        (tree.path / "src/gone.py").read_bytes()
    assert raised_again.value.errno == errno.EIO
    assert sum(1 for request in git_server.requests if gone in request.wants) == asked

    # Everything else hydrated and the daemon keeps serving.
    for relative, data in files.items():
        if relative != "src/gone.py":
            assert (tree.path / relative).read_bytes() == data
    assert tree.status()["state"] == "mounted"


def test_a_directory_holding_a_missing_blob_still_lists(make_repo, git_server, mounts):
    files = {"src/kept.py": content("kept"), "src/gone.py": b"missing on the server\n"}
    repo, _ = make_repo("holey-dir", files)
    delete_object(repo, git(repo, "rev-parse", "HEAD:src/gone.py").decode().strip())
    tree = mounts(git_server.url("holey-dir"), "--hydrate", "none")
    assert sorted(os.listdir(tree.path / "src")) == ["gone.py", "kept.py"]
    assert (tree.path / "src/kept.py").read_bytes() == files["src/kept.py"]


# --------------------------------------------------------------------------- 4. retries


def test_reads_survive_transport_faults(make_repo, git_server, mounts, state_root):
    # 300 KB of pack: half of it holds at least two whole (<= 64 KiB) pkt-lines, so some blobs arrive.
    files: dict[str, bytes | FileSpec] = {
        f"pkg/mod{index:02d}.py": content(f"retry{index}", 10_000) for index in range(30)
    }
    files["other/solo.py"] = content("solo")
    make_repo("faulty", files)
    tree = mounts(git_server.url("faulty"), "--hydrate", "none")
    tree.wait_for(lambda status: status["history_complete"])  # no other fetch may take the faults
    git_server.clear_requests()
    faults = ["truncate", "reset", "500", "flip-raw"]
    for fault in faults:
        git_server.inject(fault)

    # A prefetch puts the whole directory in one batch, even with --hydrate none.
    run_cli("prefetch", str(tree.path), "pkg", root=state_root)
    tree.wait_for(lambda status: status["hydration"]["hydrated_blobs"] == 30, timeout=30)
    fetches = [request for request in git_server.requests if request.command == "fetch"]
    assert [request.fault for request in fetches[:5]] == [*faults, None]
    # The truncated response delivered its first half; only the rest was asked for again.
    assert fetches[0].want_count == 30
    assert 0 < fetches[1].want_count < 30
    assert set(fetches[4].wants) <= set(fetches[1].wants)

    for relative, data in files.items():
        assert (tree.path / relative).read_bytes() == data, relative
    status = tree.status()["hydration"]
    assert status["failed_blobs"] == 0 and status["hydrated_blobs"] == len(files)
    for attempt in range(1, len(faults) + 1):
        assert any(f"(attempt {attempt})" in message for message in status["errors"]), status["errors"]
    fsck = tree.git("fsck", "--connectivity-only", check=False)
    assert fsck.returncode == 0, fsck.stderr


# --------------------------------------------------------------------------- 5. read timeout


def test_blocked_read_times_out_with_eio_and_the_mount_recovers(make_repo, git_server, mounts):
    files = {"slow/a.py": content("slow-a"), "fast/b.py": content("fast-b")}
    make_repo("stall", files)
    tree = mounts(git_server.url("stall"), "--hydrate", "none", "--read-timeout", "1")
    stall = 4.0
    git_server.inject(f"stall:{stall}")
    started = time.monotonic()
    with pytest.raises(OSError) as raised:
        (tree.path / "slow/a.py").read_bytes()
    waited = time.monotonic() - started
    assert raised.value.errno == errno.EIO
    assert 0.9 <= waited < stall - 1, f"EIO after {waited:.1f}s: the read timeout did not cut the wait short"

    # No fault left: another read is served while the stalled fetch is still pending.
    assert (tree.path / "fast/b.py").read_bytes() == files["fast/b.py"]
    assert tree.status()["state"] == "mounted"
    # Once the stalled response completes, the first file reads fine too.
    deadline = time.monotonic() + stall + 10
    while True:
        try:
            assert (tree.path / "slow/a.py").read_bytes() == files["slow/a.py"]
            break
        except OSError as error:
            assert error.errno == errno.EIO
            assert time.monotonic() < deadline, "slow/a.py never became readable"
            time.sleep(0.5)


# --------------------------------------------------------------------------- 6. status


STATUS_TREE: dict[str, bytes | FileSpec] = {
    "package.json": b'{"name": "s"}\n',
    ".gitignore": b"*.o\n",
    "src/main.py": content("status-main"),
    "README.md": content("status-readme"),
    "NOTES": content("status-notes"),
    "img/a.png": content("status-png", 20_000),
    "bin/run.sh": FileSpec(b"#!/bin/sh\n", executable=True),
    "link": FileSpec(symlink_target="README.md"),
}


def blob_size(spec: bytes | FileSpec) -> int:
    if isinstance(spec, bytes):
        return len(spec)
    return len(spec.symlink_target.encode()) if spec.symlink_target is not None else len(spec.data)


def test_status_json_shape_and_human_output(make_repo, git_root, mounts, state_root):
    _, tip = make_repo("shape", STATUS_TREE)
    secret = "hunter2-token"
    with GitHttpServer(git_root, auth=("alice", secret)) as server:
        url = server.url("shape").replace("http://", f"http://alice:{secret}@")
        tree = mounts(url)
        wait_complete(tree)
        result = run_cli("status", "--json", str(tree.path), root=state_root)
        assert secret not in result.stdout
        status = json.loads(result.stdout)
        assert isinstance(status["pid"], int) and status["pid"] > 1
        assert status["state"] == "mounted"
        assert status["remote"] == server.url("shape").replace("http://", "http://alice@")
        assert status["head"] == tip
        hydration = status["hydration"]
        for key in ("total_blobs", "hydrated_blobs", "failed_blobs", "total_bytes", "hydrated_bytes"):
            assert isinstance(hydration[key], int), key
        sizes = sum(blob_size(spec) for spec in STATUS_TREE.values())
        assert hydration["total_blobs"] == hydration["hydrated_blobs"] == len(STATUS_TREE)
        assert hydration["failed_blobs"] == 0
        assert hydration["total_bytes"] == hydration["hydrated_bytes"] == sizes
        assert list(hydration["classes"]) == CLASS_ORDER
        for label, counters in hydration["classes"].items():
            assert {"total", "hydrated", "failed"} <= set(counters), label
            assert all(isinstance(counters[key], int) for key in ("total", "hydrated", "failed"))
        assert sum(c["total"] for c in hydration["classes"].values()) == hydration["total_blobs"]
        assert hydration["classes"]["manifest"]["total"] == 1
        assert hydration["classes"]["binary"]["hydrated"] == 1

        human = run_cli("status", str(tree.path), root=state_root).stdout
        assert secret not in human
        for label in CLASS_ORDER:
            assert any(line.strip().startswith(label) for line in human.splitlines()), (label, human)
        assert f"{len(STATUS_TREE)}/{len(STATUS_TREE)} hydrated" in human
        assert tip in human


def test_status_watch_ends_when_hydration_completes(make_repo, git_server, mounts, state_root):
    files = {f"data/f{index:03d}.py": content(f"watch{index}", 1000) for index in range(300)}
    make_repo("watch", files)
    tree = mounts(git_server.url("watch"), "--connections", "1", "--max-bandwidth", "150K")
    assert not tree.status()["hydration"]["complete"]
    result = run_cli("status", "--watch", str(tree.path), root=state_root, timeout=40)
    assert result.returncode == 0
    assert result.stdout.count("classes:") >= 2, "the display was never redrawn"
    assert "\x1b[" in result.stdout
    last_frame = result.stdout.split("mount:")[-1]
    assert f"{len(files)}/{len(files)} hydrated" in last_frame
    assert f"{len(files)}/{len(files)} hydrated" not in result.stdout.split("mount:")[1]
    assert tree.status()["hydration"]["complete"]


# --------------------------------------------------------------------------- 7. prefetch


def test_prefetch_moves_a_directory_ahead_of_the_queue(make_repo, git_server, mounts, state_root):
    files: dict[str, bytes | FileSpec] = {
        f"src/s{index:03d}.py": content(f"pf{index}", 1000) for index in range(500)
    }
    files.update({f"assets/icon{index}.png": content(f"icon{index}", 2000) for index in range(5)})
    files.update({f"manual/ch{index}.md": content(f"ch{index}", 500) for index in range(5)})
    make_repo("prefetch", files)
    tree = mounts(git_server.url("prefetch"), "--connections", "1", "--max-bandwidth", "150K")

    result = run_cli("prefetch", str(tree.path), "assets", root=state_root)
    assert "queued 5 blobs first" in result.stdout
    status = tree.wait_for(lambda s: s["hydration"]["classes"]["binary"]["hydrated"] == 5, timeout=30)
    assert status["hydration"]["classes"]["source"]["hydrated"] < 500
    assert status["hydration"]["classes"]["docs"]["hydrated"] == 0

    wait_complete(tree, timeout=40)
    record = tree.record()
    paths = [arrival["path"] for arrival in record]
    last_asset = max(paths.index(f"assets/icon{index}.png") for index in range(5))
    last_source = max(index for index, path in enumerate(paths) if path.startswith("src/"))
    first_doc = min(index for index, path in enumerate(paths) if path.startswith("manual/"))
    assert last_asset < last_source, "prefetched binaries waited for every source file"
    assert sum(1 for path in paths[last_asset:] if path.startswith("src/")) > 100
    assert first_doc > last_source, "docs that were not prefetched kept their place"
    assert not any(arrival["demanded"] for arrival in record)


# --------------------------------------------------------------------------- 8. overrides


def test_priority_overrides_from_flags_and_config(make_repo, git_server, mounts, tmp_path):
    files: dict[str, bytes | FileSpec] = {
        "src/a.py": content("ov-a"),
        "src/b.py": content("ov-b"),
        "src/c.ts": content("ov-c"),
        "docs/guide.md": content("ov-guide"),
        "docs/api/ref.md": content("ov-ref"),
        "README.md": content("ov-readme"),
        "package.json": b"{}\n",
    }
    make_repo("overrides", files)
    config = tmp_path / "artifactfs.toml"
    config.write_text('[priority]\nmanifest = ["docs/**"]\n')
    tree = mounts(git_server.url("overrides"), "--priority", "binary=*.py", "--config", str(config))
    status = wait_complete(tree)["hydration"]
    classes = {label: counters["total"] for label, counters in status["classes"].items()}
    assert classes == {"manifest": 3, "config": 0, "source": 1, "docs": 1, "text": 0, "binary": 2}
    by_path = {arrival["path"]: arrival["priority_class"] for arrival in tree.record()}
    assert by_path["src/a.py"] == by_path["src/b.py"] == "binary"
    assert by_path["docs/api/ref.md"] == by_path["docs/guide.md"] == "manifest"
    assert by_path["README.md"] == "docs" and by_path["src/c.ts"] == "source"


# --------------------------------------------------------------------------- 9. promisor packs


def test_hydrated_blobs_serve_git_without_the_remote(make_repo, git_root, mounts):
    files: dict[str, bytes | FileSpec] = {f"pkg/m{index}.py": content(f"pp{index}") for index in range(20)}
    files["README.md"] = b"# offline\n"
    make_repo("offline", files, extra_commits=3)
    server = GitHttpServer(git_root)
    server.start()
    try:
        tree = mounts(server.url("offline"))
        tree.wait_for(lambda s: s["hydration"]["complete"] and s["history_complete"])
    finally:
        server.stop()
    shown = subprocess.run(
        ["git", "cat-file", "-p", "HEAD:pkg/m3.py"],
        cwd=tree.path,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == files["pkg/m3.py"]
    log = subprocess.run(
        ["git", "log", "-p", "--format=%H"], cwd=tree.path, capture_output=True, timeout=30, check=False
    )
    assert log.returncode == 0, log.stderr
    assert b"+# offline" in log.stdout
    gitdir = Path(tree.status()["gitdir"])
    packs = sorted((gitdir / "objects" / "pack").glob("pack-*.pack"))
    assert packs
    for pack in packs:
        assert pack.with_suffix(".promisor").exists(), f"{pack.name} is not a promisor pack"
    fsck = tree.git("fsck", "--connectivity-only", check=False)
    assert fsck.returncode == 0, fsck.stderr


def test_hydrated_blobs_live_once_and_git_reads_them(make_repo, git_root, mounts):
    """Demand reads add no pack to the gitdir: git finds the blobs in the cache, through alternates."""
    count = 40
    files = {f"d{index:03d}/file.py": content(f"demand{index}", 200) for index in range(count)}
    make_repo("packs", files)
    server = GitHttpServer(git_root)
    server.start()
    try:
        tree = mounts(server.url("packs"), "--hydrate", "none")
        tree.wait_for(lambda status: status["history_complete"])  # its pack lands in the gitdir, as it should
        gitdir = Path(tree.status()["gitdir"])
        pack_dir = gitdir / "objects" / "pack"
        packs_before = sorted(pack_dir.glob("pack-*.pack"))
        for relative, data in files.items():  # one directory each: one fetch per read
            assert (tree.path / relative).read_bytes() == data
        fetches = [
            request for request in server.requests if request.command == "fetch" and not request.has_filter
        ]
        assert len(fetches) >= count
    finally:
        server.stop()
    assert sorted(pack_dir.glob("pack-*.pack")) == packs_before
    assert (gitdir / "objects" / "info" / "alternates").read_text().strip().endswith("loose")
    fsck = tree.git("fsck", "--connectivity-only", check=False)
    assert fsck.returncode == 0, fsck.stderr
    # Every blob read is readable by git with the remote gone, and not duplicated in the gitdir.
    for relative in ("d000/file.py", "d027/file.py", f"d{count - 1:03d}/file.py"):
        shown = subprocess.run(
            ["git", "cat-file", "-p", f"HEAD:{relative}"],
            cwd=tree.path,
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert shown.returncode == 0 and shown.stdout == files[relative], shown.stderr
        oid = tree.git("rev-parse", f"HEAD:{relative}").stdout.strip()
        assert not (gitdir / "objects" / oid[:2] / oid[2:]).exists()
