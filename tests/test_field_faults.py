"""Field faults after mount: an outage, failing history fetches, lying object-info replies,
blobs missing on the server, and a full disk under the state root.

Real FUSE, the real ``git http-backend`` server and, in front of it, the fault
proxy (artifactfs/testing/faultproxy.py). Every byte read is compared with
``git cat-file`` output from the served repository.

``ARTIFACTFS_OUTAGE_SECONDS`` (default 15) is how long the outage lasts.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import robustness

from artifactfs.daemon.notify import progress_line
from artifactfs.state import StateRoot
from artifactfs.status import MountStatus
from artifactfs.statusview import render
from artifactfs.testing import FileSpec, GitHttpServer, git
from artifactfs.testing.faultproxy import FaultProxy
from artifactfs.testing.mounts import MountedTree, read_fresh, small_tmpfs

pytestmark = pytest.mark.slow

OUTAGE_SECONDS = float(os.environ.get("ARTIFACTFS_OUTAGE_SECONDS", "15"))


def blob_ids(repo: Path) -> dict[str, str]:
    """path -> blob id of every regular file of the served repository's HEAD."""
    listing = git(repo, "ls-tree", "-r", "-z", "HEAD").decode().split("\0")
    return {
        line.split("\t", 1)[1]: line.split()[2] for line in listing if line and line.split()[0] != "120000"
    }


def served_contents(repo: Path) -> dict[str, bytes]:
    """Every regular file of the served repository's HEAD, as ``git cat-file`` gives it."""
    entries = list(blob_ids(repo).items())
    batch = subprocess.run(
        ["git", f"--git-dir={repo}", "cat-file", "--batch"],
        capture_output=True,
        check=True,
        input="".join(f"{oid}\n" for _, oid in entries).encode(),
    ).stdout
    contents: dict[str, bytes] = {}
    position = 0
    for path, oid in entries:
        header_end = batch.index(b"\n", position)
        header = batch[position:header_end].split()
        assert header[0].decode() == oid and header[1] == b"blob", header
        size = int(header[2])
        contents[path] = batch[header_end + 1 : header_end + 1 + size]
        position = header_end + 1 + size + 1
    return contents


def assert_exact(tree: MountedTree, expected: dict[str, bytes]) -> None:
    for relative, data in sorted(expected.items()):
        assert read_fresh(tree.path / relative) == data, relative
        robustness.add("reads_verified")


def daemon_log(state_root: Path) -> str:
    logs = [mount.log_file for mount in StateRoot(state_root).mount_states()]
    return "".join(path.read_text(errors="replace") for path in logs if path.exists())


def mixed_files(seed: int, count: int, large: int = 0) -> dict[str, bytes | FileSpec]:
    """Source-like texts of many sizes (every digit count), plus ``large`` random binaries of 1 MiB."""
    rng = random.Random(seed)
    files: dict[str, bytes | FileSpec] = {
        "package.json": b'{"name": "field-faults", "version": "1.0.0"}\n' * 20
    }
    for index in range(count):
        size = rng.choice([1, 9, 12, 95, 949, 1234, 8000, 40_000])
        files[f"src/d{index % 8}/m{index:03d}.py"] = (f"# module {index}\n".encode() + rng.randbytes(size))[
            :size
        ]
    for index in range(large):
        files[f"assets/big{index:02d}.bin"] = rng.randbytes(1 << 20)
    files["link"] = FileSpec(symlink_target="package.json")
    return files


# --------------------------------------------------------------------------- (a) outage


def test_an_outage_right_after_mount_leaves_a_mount_that_recovers_by_itself(
    make_repo, git_server, state_root, tmp_path, fuse
):
    repo, _ = make_repo("outage", mixed_files(1, 160, large=12), extra_commits=5)
    expected = served_contents(repo)
    read_timeout = 2.0
    with FaultProxy(f"http://127.0.0.1:{git_server.port}") as proxy:
        # Throttled, so that hydration is far from done when the remote goes away.
        tree = MountedTree(
            proxy.url("outage"),
            tmp_path / "mnt",
            state_root,
            ["--read-timeout", str(read_timeout), "--max-bandwidth", "1M"],
        )
        with tree:
            pid = tree.status()["pid"]
            down_at = time.monotonic() + 1.0
            threading.Timer(1.0, proxy.go_down).start()
            tree.wait_for(lambda status: proxy.is_down, timeout=10)
            robustness.add("faults_injected")

            # Unreachable, and nothing in transit any more: what has not arrived now cannot arrive.
            status = tree.wait_for(
                lambda s: (
                    s["hydration"]["remote"]["state"] == "unreachable"
                    and s["hydration"]["inflight_blobs"] == 0
                ),
                timeout=30,
            )
            assert not status["hydration"]["complete"], "an outage must never look like complete hydration"
            arrived = {arrival["oid"] for arrival in tree.record()}
            pending = sorted(path for path, oid in blob_ids(repo).items() if oid not in arrived)
            assert pending, "the outage came too late to matter: everything had arrived"
            victim = pending[-1]

            # A read of a blob that is not local waits for the read timeout, then gets EIO.
            started = time.monotonic()
            with pytest.raises(OSError) as raised:
                read_fresh(tree.path / victim)
            waited = time.monotonic() - started
            assert raised.value.errno == errno.EIO
            assert read_timeout - 0.2 <= waited < read_timeout + 5, f"EIO after {waited:.1f}s"

            # The mount stays a mount for the whole outage.
            checks = 0
            while time.monotonic() < down_at + OUTAGE_SECONDS:
                assert os.path.ismount(tree.path)
                assert "package.json" in os.listdir(tree.path)
                assert tree.status()["pid"] == pid
                checks += 1
                time.sleep(0.5)
            assert checks >= 2
            status = tree.status()
            assert status["hydration"]["remote"]["state"] == "unreachable"
            assert not status["hydration"]["complete"] and status["hydration"]["failed_blobs"] == 0, status
            # The outage as people and systemd see it.
            report = MountStatus.from_json(status)
            assert "[unreachable since " in render(report) and "awaiting retry" in render(report)
            assert ", remote unreachable since " in progress_line(report)
            proxy.come_back()

            # The same read succeeds once the remote is back (it asks at once: no need to wait out a backoff).
            assert read_fresh(tree.path / victim) == expected[victim]
            final = tree.wait_for(lambda s: s["hydration"]["complete"] and s["history_complete"], timeout=120)
            hydration = final["hydration"]
            assert hydration["failed_blobs"] == 0 and hydration["retrying_blobs"] == 0, hydration
            assert hydration["hydrated_blobs"] == hydration["total_blobs"], hydration
            assert hydration["remote"]["state"] == "ok", hydration["remote"]
            assert final["pid"] == pid and final["state"] == "mounted"
            assert_exact(tree, expected)
            assert os.readlink(tree.path / "link") == "package.json"
            assert tree.git("status", "--porcelain").stdout == ""
            assert len(tree.git("log", "--oneline").stdout.splitlines()) == 6
    log = daemon_log(state_root)
    assert "remote unreachable" in log and "remote reachable again" in log
    robustness.add("outages_survived")


def test_history_fetch_survives_corrupt_packs_resets_and_5xx(
    make_repo, git_server, state_root, tmp_path, fuse
):
    """Every fetch fails (the history fetch included) for a while after ready: the daemon keeps serving."""
    repo, _ = make_repo("history", mixed_files(5, 120, large=4), extra_commits=20)
    expected = served_contents(repo)
    with FaultProxy(f"http://127.0.0.1:{git_server.port}", seed=9) as proxy:
        with MountedTree(
            proxy.url("history"), tmp_path / "mnt", state_root, ["--max-bandwidth", "2M"]
        ) as tree:
            pid = tree.status()["pid"]
            proxy.configure(probability=1.0, kinds=("flip", "flip-raw", "truncate", "reset", "5xx"))
            deadline = time.monotonic() + 60
            while daemon_log(state_root).count("history fetch failed") < 3:
                assert time.monotonic() < deadline, "the history fetch was never tried under faults"
                assert os.path.ismount(tree.path) and tree.status()["pid"] == pid
                time.sleep(0.2)
            robustness.add("faults_injected", proxy.total_injected)
            assert not tree.status()["history_complete"]
            proxy.stop_faults()
            final = tree.wait_for(lambda s: s["history_complete"] and s["hydration"]["complete"], timeout=120)
            assert final["pid"] == pid and final["hydration"]["failed_blobs"] == 0
            assert len(tree.git("log", "--oneline").stdout.splitlines()) == 21
            assert_exact(tree, expected)


# --------------------------------------------------------------------------- (b) object-info lies


@pytest.mark.parametrize("mode", ["none", "background"])
def test_corrupt_and_truncated_object_info_replies_never_reach_reads_or_stat(
    make_repo, git_server, state_root, tmp_path, fuse, mode
):
    repo, _ = make_repo("lying", mixed_files(2, 120))
    expected = served_contents(repo)
    with FaultProxy(
        f"http://127.0.0.1:{git_server.port}",
        seed=11,
        commands=("object-info",),
        probability=1.0,
        kinds=("info-flip", "info-truncate"),
    ) as proxy:
        with MountedTree(proxy.url("lying"), tmp_path / "mnt", state_root, ["--hydrate", mode]) as tree:
            if mode == "background":
                tree.wait_for(lambda s: s["hydration"]["complete"], timeout=60)
                # Attributes the kernel cached from the hints were invalidated: stat first, read after.
                for relative, data in expected.items():
                    assert os.stat(tree.path / relative).st_size == len(data), relative
                assert_exact(tree, expected)
            else:
                for relative, data in sorted(expected.items()):
                    assert read_fresh(tree.path / relative) == data, relative
                    robustness.add("reads_verified")
                    assert os.stat(tree.path / relative).st_size == len(data), relative
            assert tree.git("status", "--porcelain").stdout == ""
            hydration = tree.status()["hydration"]
            assert hydration["object_info"], "a bad reply must never turn sizes off"
            robustness.add("faults_injected", proxy.total_injected)
            assert proxy.injected["info-flip"] >= 1 and proxy.injected["info-truncate"] >= 1, proxy.injected
    corrected = daemon_log(state_root).count("object-info said")
    assert corrected, "no wrong hint was ever corrected: the test proved nothing"
    robustness.add("sizes_corrected", corrected)


# --------------------------------------------------------------------------- (c) missing blobs


def delete_objects(repo: Path, oids: set[str]) -> None:
    """Rewrite ``repo``'s objects into one pack without ``oids``; the repository is served as before."""
    every = git(repo, "cat-file", "--batch-all-objects", "--batch-check=%(objectname)").decode().split()
    assert oids <= set(every)
    old = list((repo / "objects" / "pack").glob("pack-*"))
    kept = "".join(f"{oid}\n" for oid in every if oid not in oids).encode()
    git(repo, "pack-objects", "-q", str(repo / "objects" / "pack" / "pack"), input=kept)
    for path in old:
        path.unlink()
    for directory in (repo / "objects").iterdir():
        if len(directory.name) == 2:
            for loose in directory.iterdir():
                loose.unlink()
    for oid in oids:
        probe = subprocess.run(["git", f"--git-dir={repo}", "cat-file", "-e", oid], capture_output=True)
        assert probe.returncode != 0, f"{oid} is still served"


@pytest.mark.parametrize("object_info", [True, False], ids=["object-info", "no-object-info"])
def test_a_dozen_blobs_missing_on_the_server_cost_seconds(
    make_repo, git_root, state_root, tmp_path, fuse, object_info
):
    files = mixed_files(3, 400)
    repo, _ = make_repo("holey", files)
    expected = served_contents(repo)
    rng = random.Random(4)
    missing_paths = sorted(rng.sample(sorted(path for path in expected if path.startswith("src/")), 12))
    oids = {path: git(repo, "rev-parse", f"HEAD:{path}").decode().strip() for path in missing_paths}
    assert len(set(oids.values())) == 12, "pick distinct blobs"
    delete_objects(repo, set(oids.values()))

    started = time.monotonic()
    with (
        GitHttpServer(git_root, object_info=object_info) as git_server,
        MountedTree(git_server.url("holey"), tmp_path / "mnt", state_root, ["--read-timeout", "120"]) as tree,
    ):
        final = tree.wait_for(lambda s: s["hydration"]["complete"], timeout=120)
        elapsed = time.monotonic() - started
        hydration: dict[str, Any] = final["hydration"]
        assert hydration["failed_blobs"] == 12, hydration
        assert hydration["hydrated_blobs"] == hydration["total_blobs"] - 12, hydration
        assert elapsed < 20, f"full hydration took {elapsed:.1f}s with a dozen blobs missing"

        missing_oids = set(oids.values())
        asked = [request for request in git_server.requests if missing_oids & set(request.wants)]
        assert len(asked) <= 3 * 12, f"{len(asked)} fetches asked for missing blobs: isolation is not fast"
        for path in missing_paths:
            began = time.monotonic()
            with pytest.raises(OSError) as raised:
                read_fresh(tree.path / path)
            assert raised.value.errno == errno.EIO
            assert time.monotonic() - began < 1.0, "a known-missing blob must fail at once"
        assert_exact(tree, {path: data for path, data in expected.items() if path not in oids})
        assert [request for request in git_server.requests if missing_oids & set(request.wants)] == asked, (
            "a blob known to be missing was asked for again"
        )

        began = time.monotonic()
        result = subprocess.run(
            ["git", "status", "--porcelain"], cwd=tree.path, capture_output=True, text=True, timeout=60
        )
        assert time.monotonic() - began < 10, "git status waited on missing blobs"
        assert result.returncode in (0, 128), result.stderr
        assert tree.status()["state"] == "mounted"

    log = daemon_log(state_root)
    for path, oid in oids.items():
        lines = [line for line in log.splitlines() if oid in line and "cannot hydrate" in line]
        assert len(lines) == 1 and path in lines[0] and "not found on the remote" in lines[0], lines
    robustness.add("missing_blobs_isolated", len(oids))


# --------------------------------------------------------------------------- full disk while hydrating


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 48 MiB tmpfs: a real filesystem that fills up."""
    with small_tmpfs(tmp_path / "small", "48m") as mountpoint:
        yield mountpoint


def test_a_full_disk_pauses_hydration_until_space_returns(make_repo, git_server, small_disk, tmp_path, fuse):
    rng = random.Random(6)
    files: dict[str, bytes | FileSpec] = {
        f"data/blob{index:02d}.bin": rng.randbytes(1 << 20) for index in range(16)
    }
    files["README.md"] = b"small\n"
    repo, _ = make_repo("roomy", files)
    expected = served_contents(repo)
    state_root = small_disk / "state"
    state_root.mkdir()
    ballast = small_disk / "ballast"
    # Leave 6 MiB: the 16 MiB of blobs cannot fit beside the ballast, the mount itself can.
    ballast.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - (6 << 20)))
    with MountedTree(git_server.url("roomy"), tmp_path / "mnt", state_root, ["--read-timeout", "2"]) as tree:
        paused = tree.wait_for(lambda s: s["hydration"]["paused"] == "disk full", timeout=60)["hydration"]
        assert paused["failed_blobs"] == 0, "a full disk must not fail blobs for good"
        assert not paused["complete"]
        arrived = {arrival["oid"] for arrival in tree.record()}
        waiting = sorted(path for path, oid in blob_ids(repo).items() if oid not in arrived)
        assert waiting, "nothing was left to hydrate when the disk filled"

        # A reader of a blob that cannot be stored now gets ENOSPC after the read timeout, not at once;
        # so does a writer, whose copy-up needs the blob.
        started = time.monotonic()
        with pytest.raises(OSError) as raised:
            read_fresh(tree.path / waiting[0])
        assert raised.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as raised:
            with open(tree.path / waiting[-1], "r+b") as stream:
                stream.write(b"x")
        assert raised.value.errno == errno.ENOSPC
        assert time.monotonic() - started >= 1.8
        # Paused means idle: no fetch is attempted while the disk stays full.
        requests = len(git_server.requests)
        time.sleep(2)
        assert len(git_server.requests) - requests <= 1, "hydration kept fetching into a full disk"
        assert os.path.ismount(tree.path) and tree.status()["hydration"]["paused"] == "disk full"

        ballast.unlink()
        final = tree.wait_for(lambda s: s["hydration"]["complete"], timeout=90)["hydration"]
        assert final["paused"] is None and final["failed_blobs"] == 0, final
        assert final["hydrated_blobs"] == final["total_blobs"]
        assert_exact(tree, expected)
    robustness.add("disk_full_pauses")
