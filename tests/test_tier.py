"""The shared tier end to end: real mounts, a real git server and a real S3 server (SeaweedFS).

Two machines are two state roots (each with its own blob cache) on this host.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from artifactfs.errors import CorruptObjectError, UsageError
from artifactfs.store.tier import TierLocation
from artifactfs.store.tierlayout import decode_index, encode_index, pack_name, plan_packs
from artifactfs.testing import FileSpec, GitHttpServer
from artifactfs.testing.faultproxy import FaultProxy
from artifactfs.testing.mounts import MountedTree, run_cli
from artifactfs.testing.repos import distinct_content as content
from artifactfs.testing.s3server import SeaweedS3, free_port_pair

_tiers = itertools.count()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_bucket(s3: SeaweedS3) -> str:
    name = f"fleet-{os.getpid()}"
    s3.make_bucket(name)
    return name


@pytest.fixture
def tier_url(s3_bucket: str) -> str:
    """A fresh prefix in the session's bucket: an empty tier."""
    return f"s3://{s3_bucket}/t{next(_tiers)}"


def repository_files() -> dict[str, bytes | FileSpec]:
    files: dict[str, bytes | FileSpec] = {
        "package.json": b'{"name": "fleet"}\n',
        ".gitignore": b"*.log\n",
        "README.md": b"# fleet\n",
        "src/__init__.py": b"",  # an empty blob: no byte range to ask for
        "assets/big.bin": content("big", 300_000),
    }
    for index in range(24):
        files[f"src/mod{index // 8}/file{index}.py"] = content(f"src{index}", 2_000 + index)
    return files


def expected_bytes(files: dict[str, bytes | FileSpec]) -> dict[str, bytes]:
    return {path: spec if isinstance(spec, bytes) else spec.data for path, spec in files.items()}


def machine(
    tmp_path: Path, name: str, remote: str, tier_url: str, env: dict[str, str], *extra: str
) -> MountedTree:
    return MountedTree(
        remote,
        tmp_path / name / "mnt",
        tmp_path / name / "state",
        ("--blob-store", tier_url, "--log-level", "debug", *extra),
        env=env,
    )


def daemon_log(tree: MountedTree) -> str:
    return "".join(path.read_text() for path in (tree.root / "mounts").rglob("daemon.log"))


def complete(status: dict[str, Any]) -> bool:
    return bool(status["hydration"]["complete"])


def published(status: dict[str, Any]) -> bool:
    return bool(status["tier"]["published"]["packs"])


def read_all(tree: MountedTree, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        assert (tree.path / path).read_bytes() == data, path


def blob_wants(server: GitHttpServer) -> int:
    return sum(record.want_count for record in server.requests if not record.has_filter)


@pytest.mark.parametrize("hydrate", ["background", "none"])
def test_machine_b_hydrates_from_the_tier_alone(make_repo, git_root, s3, tier_url, tmp_path, fuse, hydrate):
    """With ``--hydrate none`` and no object-info every blob, sizes too, is a demand read: ranged GETs."""
    files = repository_files()
    make_repo(files=files)
    expected = expected_bytes(files)
    with (
        GitHttpServer(git_root, object_info=hydrate == "background") as git_server,
        FaultProxy(f"http://127.0.0.1:{git_server.port}") as origin,
    ):
        remote = origin.url("repo")
        with machine(tmp_path, "a", remote, tier_url, s3.env()) as a:
            a.wait_for(lambda status: complete(status) and published(status), timeout=60)
            read_all(a, expected)
            assert a.status()["hydration"]["sources"]["tier"]["blobs"] == 0  # nothing was there yet
        git_server.clear_requests()
        with machine(tmp_path, "b", remote, tier_url, s3.env(), "--hydrate", hydrate) as b:
            origin.go_down()  # the origin is gone right after B's mount: connections reset, none accepted
            check_machine_b(b, expected)
    assert blob_wants(git_server) == 0
    log = daemon_log(b)
    assert "tier index of tree" in log  # the debug log was written
    for secret in ("artifactfs-test-secret", "artifactfs-test"):  # credentials never logged, even at debug
        assert secret not in log


def check_machine_b(b: MountedTree, expected: dict[str, bytes]) -> None:
    """Every file reads exactly, every blob came from the tier, and git finds them without fetching."""
    read_all(b, expected)
    status = b.wait_for(complete, timeout=60)
    sources = status["hydration"]["sources"]
    assert sources["origin"]["requests"] == 0 and sources["origin"]["blobs"] == 0
    assert sources["tier"]["errors"] == 0, sources["tier"]["last_error"]
    # Every blob came from the tier; one that another lane's tier request stored a moment before is
    # credited to the cache, or found there by the hydrator itself (no source counts it then).
    assert sources["tier"]["blobs"] + sources["cache"]["blobs"] <= status["hydration"]["total_blobs"]
    assert sources["tier"]["blobs"] > status["hydration"]["total_blobs"] // 2
    assert status["hydration"]["failed_blobs"] == 0
    # Blobs from the tier reach git through the cache (the gitdir's alternate): no fetch needed.
    shown = subprocess.run(
        ["git", "cat-file", "blob", "HEAD:assets/big.bin"], cwd=b.path, capture_output=True, check=True
    )
    assert shown.stdout == expected["assets/big.bin"]
    assert b.git("status", "--porcelain").stdout == ""
    rendered = run_cli("status", str(b.path), root=b.root).stdout
    tier_line = next(line for line in rendered.splitlines() if line.startswith("  tier "))
    assert tier_line.startswith(f"  tier     {sources['tier']['blobs']} blobs")
    assert next(line for line in rendered.splitlines() if line.startswith("  origin ")).startswith(
        "  origin   0 blobs, 0 B, 0 requests"
    )


def test_a_corrupt_tier_object_is_skipped_and_taken_from_the_origin(
    make_repo, git_server, s3, tier_url, tmp_path, fuse
):
    files = repository_files()
    make_repo(files=files)
    remote = git_server.url("repo")
    expected = expected_bytes(files)
    with machine(tmp_path, "a", remote, tier_url, s3.env()) as a:
        a.wait_for(lambda status: complete(status) and published(status), timeout=60)
    client = s3.client()
    bucket, _, prefix = tier_url.removeprefix("s3://").partition("/")
    packs = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/packs/")["Contents"]
    for pack in packs:  # same length, different bytes: only verification can tell
        key = pack["Key"]
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        client.put_object(Bucket=bucket, Key=key, Body=bytes(byte ^ 0x5A for byte in data))
    with machine(tmp_path, "b", remote, tier_url, s3.env()) as b:
        read_all(b, expected)
        status = b.wait_for(complete, timeout=60)
        assert status["tier"]["rejected_blobs"] > 0
        # Only the empty blob survives flipped bytes; every other blob came from the origin.
        assert status["hydration"]["sources"]["tier"]["blobs"] == 1
        assert status["hydration"]["sources"]["origin"]["blobs"] == status["hydration"]["total_blobs"] - 1
        assert status["hydration"]["failed_blobs"] == 0


def test_a_tier_that_is_down_leaves_reads_exact(make_repo, git_server, s3, tmp_path, fuse):
    files = repository_files()
    make_repo(files=files)
    closed = free_port_pair(set())  # nothing listens there
    env = {**s3.env(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}"}
    with machine(tmp_path, "a", git_server.url("repo"), "s3://nobucket/x", env) as a:
        read_all(a, expected_bytes(files))
        status = a.wait_for(complete, timeout=60)
        sources = status["hydration"]["sources"]
        assert sources["tier"]["errors"] >= 1 and sources["tier"]["blobs"] == 0
        assert sources["origin"]["blobs"] >= len(files)
        text = daemon_log(a)
        assert "blob source tier failed" in text
        assert "artifactfs-test-secret" not in text  # credentials never logged


def test_packs_follow_the_classes_and_the_size_target() -> None:
    groups = [[("a" * 40, 5), ("b" * 40, 5)], [("c" * 40, 20), ("d" * 40, 1), ("e" * 40, 1)]]
    plans = plan_packs(groups, target=10)
    assert [[oid[0] for oid, _ in plan.blobs] for plan in plans] == [["a", "b"], ["c"], ["d", "e"]]
    data = b"x" * 10
    index = decode_index(encode_index("f" * 40, [(pack_name(data), groups[0])]))
    assert index["b" * 40].offset == 5 and index["b" * 40].length == 5
    with pytest.raises(CorruptObjectError):
        decode_index(b'{"version": 1, "packs": [{"name": "../../etc", "blobs": []}]}')
    with pytest.raises(UsageError):
        TierLocation.parse("https://bucket/prefix")


def test_a_profile_learned_on_one_machine_is_followed_on_another(
    make_repo, git_server, s3, tier_url, tmp_path, fuse
):
    files = repository_files()
    make_repo(files=files)
    remote = git_server.url("repo")
    expected = expected_bytes(files)
    first_reads = ["assets/big.bin", "src/mod2/file20.py"]
    a = MountedTree(
        remote,
        tmp_path / "a" / "mnt",
        tmp_path / "a" / "state",
        ("--blob-store", tier_url, "--hydrate", "none"),
        env=s3.env(),
    )
    with a:
        for path in first_reads:
            assert (a.path / path).read_bytes() == expected[path]
    b = MountedTree(
        remote,
        tmp_path / "b" / "mnt",
        tmp_path / "b" / "state",
        ("--blob-store", tier_url, "--hydrate", "none"),
        env=s3.env(),
    )
    with b:
        status = b.wait_for(lambda status: status["hydration"]["hydrated_blobs"] >= 2, timeout=30)
        assert status["profile"]["followed_paths"] == 2
        # The index's .gitignore blobs are fetched at start whatever the profile says.
        record = [(entry["path"], entry["demanded"]) for entry in b.record() if entry["path"] != ".gitignore"]
        assert record == [(path, False) for path in first_reads]
