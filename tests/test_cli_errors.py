"""Bad input: each case is one line on stderr, a non-zero exit, and nothing half-made."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from artifactfs.testing import GitHttpServer
from artifactfs.testing.mounts import MountedTree, artifactfs_command, is_mounted, run_cli


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def assert_clean_failure(
    result: subprocess.CompletedProcess[str], expected: str, state_root: Path, mountpoint: Path | None = None
) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("artifactfs: error: ")
    assert expected in lines[0].lower(), lines[0]
    leftovers = [p for p in state_root.rglob("gitdir*")] if state_root.exists() else []
    assert leftovers == [], f"half-made state: {leftovers}"
    if mountpoint is not None:
        assert not is_mounted(mountpoint)


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    path = tmp_path / "mnt"
    path.mkdir()
    return path


def mount(remote: str, directory: Path, state_root: Path, *extra: str, env: dict[str, str] | None = None):
    return run_cli(
        "mount",
        *extra,
        remote,
        str(directory),
        root=state_root,
        check=False,
        env={"GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0", **(env or {})},
    )


@pytest.mark.parametrize(
    "remote, expected",
    [
        ("", "empty"),
        ("http://", "url"),
        ("https://exa mple.com/repo.git", "url"),
        ("http://example.com:99999/repo.git", "port"),
        ("git://example.com/repo.git", "unsupported"),
        ("ssh://git:secret@example.com/repo.git", "password"),
        ("git@example.com:", "no repository path"),
        ("/no/such/repository", "does not exist"),
    ],
)
def test_malformed_remote(remote, expected, empty_dir, state_root, fuse):
    assert_clean_failure(mount(remote, empty_dir, state_root), expected, state_root, empty_dir)


def test_unreachable_remote(empty_dir, state_root, fuse):
    result = mount(f"http://127.0.0.1:{closed_port()}/repo.git", empty_dir, state_root)
    assert_clean_failure(result, "127.0.0.1", state_root, empty_dir)


def test_unreachable_ssh_remote(empty_dir, state_root, fuse):
    result = mount(f"ssh://git@127.0.0.1:{closed_port()}/repo.git", empty_dir, state_root)
    assert_clean_failure(result, "cannot connect", state_root, empty_dir)


def test_not_a_repository(git_server, empty_dir, state_root, fuse):
    assert_clean_failure(
        mount(git_server.url("missing"), empty_dir, state_root), "no git repository", state_root, empty_dir
    )


def test_authentication_failure(make_repo, git_root, empty_dir, state_root, fuse):
    make_repo("private")
    with GitHttpServer(git_root, auth=("alice", "right")) as server:
        wrong = server.url("private").replace("http://", "http://alice:wrong@")
        assert_clean_failure(mount(wrong, empty_dir, state_root), "authentication", state_root, empty_dir)
        anonymous = mount(server.url("private"), empty_dir, state_root)
        assert_clean_failure(anonymous, "authentication", state_root, empty_dir)


def test_unknown_ref(make_repo, git_server, empty_dir, state_root, fuse):
    make_repo("demo")
    result = mount(git_server.url("demo"), empty_dir, state_root, "--ref", "no-such-branch")
    assert_clean_failure(result, "no-such-branch", state_root, empty_dir)


def test_directory_that_cannot_be_created(make_repo, git_server, tmp_path, state_root, fuse):
    make_repo("demo")
    (tmp_path / "a-file").write_text("x")
    target = tmp_path / "a-file" / "absent"
    assert_clean_failure(mount(git_server.url("demo"), target, state_root), "not a directory", state_root)
    assert (tmp_path / "a-file").read_text() == "x"
    assert not state_root.exists()


def test_directory_not_empty(make_repo, git_server, empty_dir, state_root, fuse):
    make_repo("demo")
    (empty_dir / "occupied").write_text("x")
    assert_clean_failure(mount(git_server.url("demo"), empty_dir, state_root), "not empty", state_root)


def test_directory_already_mounted(make_repo, git_server, empty_dir, state_root, fuse):
    make_repo("demo")
    with MountedTree(git_server.url("demo"), empty_dir, state_root):
        result = mount(git_server.url("demo"), empty_dir, state_root)
        assert result.returncode != 0
        assert "already" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert (empty_dir / "README.md").exists(), "the first mount must keep working"


def test_fusermount_missing(make_repo, git_server, empty_dir, state_root, tmp_path, fuse):
    make_repo("demo")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git"))
    result = mount(git_server.url("demo"), empty_dir, state_root, env={"PATH": str(bin_dir)})
    assert_clean_failure(result, "fusermount3", state_root, empty_dir)


def test_dev_fuse_missing(make_repo, git_server, empty_dir, state_root, fuse):
    """Run the CLI in a private mount namespace whose /dev has no fuse device."""
    make_repo("demo")
    command = " ".join(
        [
            "mount -t tmpfs tmpfs /dev &&",
            *[f"'{part}'" for part in artifactfs_command("mount", git_server.url("demo"), str(empty_dir))],
        ]
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
        capture_output=True,
        text=True,
        env={**os.environ, "ARTIFACTFS_ROOT": str(state_root)},
    )
    assert_clean_failure(result, "/dev/fuse", state_root, empty_dir)


def test_unmount_of_unmounted_directory(empty_dir, state_root):
    result = run_cli("unmount", str(empty_dir), root=state_root, check=False)
    assert result.returncode != 0
    assert "not mounted" in result.stderr


def test_status_without_mounts(state_root):
    result = run_cli("status", root=state_root, check=False)
    assert result.returncode != 0
    assert result.stderr.strip() == "artifactfs: error: no ArtifactFS mount is running"


def test_sha256_repository_is_refused_at_mount(make_repo, git_server, empty_dir, state_root, fuse):
    """Tree parsing, the blob cache and the pack parser are SHA-1 only: refuse up front, in one line."""
    make_repo("modern", object_format="sha256")
    result = mount(git_server.url("modern"), empty_dir, state_root)
    assert_clean_failure(result, "sha256 object ids", state_root, empty_dir)
    assert "sha1 only" in result.stderr


def test_bad_priority_rule(make_repo, git_server, empty_dir, state_root, fuse):
    make_repo("demo")
    result = mount(git_server.url("demo"), empty_dir, state_root, "--priority", "urgent=*.py")
    assert_clean_failure(result, "unknown priority class", state_root, empty_dir)
