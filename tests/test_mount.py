"""End-to-end: mounting real remotes through the real CLI, FUSE and git server."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from artifactfs.state import pid_alive
from artifactfs.testing import FileSpec, GitHttpServer, commit_files
from artifactfs.testing.mounts import is_mounted, run_cli
from artifactfs.testing.waiting import wait_for_exit, wait_until

SUBMODULE_COMMIT = "0123456789abcdef0123456789abcdef01234567"

TREE: dict[str, bytes | FileSpec] = {
    "package.json": b'{"name": "demo", "version": "1.0.0"}\n',
    "README.md": b"# Demo\n\nSome text.\n",
    "src/main.py": b"print('hello')\n",
    "src/lib/util.py": b"def helper() -> int:\n    return 42\n" * 50,
    "src/lib/empty.py": b"",
    "bin/run.sh": FileSpec(b"#!/bin/sh\necho run\n", executable=True),
    "docs/link-to-readme": FileSpec(symlink_target="../README.md"),
    "docs/dangling": FileSpec(symlink_target="../../../etc/passwd"),
    "assets/blob.bin": bytes(range(256)) * 4096,
    "unicod\u00e9/na\u00efve.txt": "caf\u00e9\n".encode(),
    "vendor/sub": FileSpec(gitlink=SUBMODULE_COMMIT),
}


def snapshot_tree(root: Path) -> dict[str, tuple[str, int | bytes]]:
    """Every entry below ``root`` (except .git) as (kind, content-or-mode) for comparison."""
    result: dict[str, tuple[str, int | bytes]] = {}
    for directory, dirnames, filenames in os.walk(root):
        relative_dir = os.path.relpath(directory, root)
        if relative_dir == ".":
            dirnames[:] = [d for d in dirnames if d != ".git"]
            filenames = [f for f in filenames if f != ".git"]
        for name in dirnames + filenames:
            path = Path(directory) / name
            relative = os.path.normpath(os.path.join(relative_dir, name))
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                result[relative] = ("symlink", os.readlink(path).encode())
            elif stat.S_ISDIR(info.st_mode):
                result[relative] = ("dir", 0)
            else:
                result[relative] = ("file", path.read_bytes() + b"|exec=%d" % bool(info.st_mode & 0o100))
    return result


@pytest.fixture
def repo(make_repo: Callable[..., tuple[Path, str]]) -> tuple[Path, str]:
    return make_repo("demo", TREE, extra_commits=30)


@pytest.fixture
def reference_clone(repo: tuple[Path, str], tmp_path: Path) -> Path:
    target = tmp_path / "reference"
    subprocess.run(["git", "clone", "-q", str(repo[0]), str(target)], check=True, capture_output=True)
    return target


@pytest.mark.parametrize("object_info", [True, False], ids=["object-info", "no-object-info"])
def test_mounted_tree_matches_git_clone_over_http(repo, reference_clone, git_root, mounts, object_info):
    with GitHttpServer(git_root, object_info=object_info) as server:
        tree = mounts(server.url("demo"))
        assert snapshot_tree(tree.path) == snapshot_tree(reference_clone)
        assert (tree.path / ".git").read_text() == f"gitdir: {tree.status()['gitdir']}\n"
        assert os.listdir(tree.path / "vendor/sub") == []


def test_local_path_remote(repo, reference_clone, mounts):
    tree = mounts(str(repo[0]))
    assert snapshot_tree(tree.path) == snapshot_tree(reference_clone)
    assert tree.status()["head"] == repo[1]


def test_sizes_are_exact_before_hydration(repo, reference_clone, git_server, mounts):
    tree = mounts(git_server.url("demo"), "--hydrate", "none")
    for relative in ("package.json", "assets/blob.bin", "src/lib/empty.py", "unicod\u00e9/na\u00efve.txt"):
        assert (tree.path / relative).stat().st_size == (reference_clone / relative).stat().st_size
    assert os.lstat(tree.path / "docs/link-to-readme").st_size == len("../README.md")
    assert os.stat(tree.path / "bin/run.sh").st_mode & 0o111
    assert tree.status()["hydration"]["hydrated_blobs"] == 0


def test_git_status_is_clean_right_after_mount(repo, git_server, mounts):
    tree = mounts(git_server.url("demo"), "--hydrate", "none")
    assert tree.git("status", "--porcelain").stdout == ""
    assert tree.status()["hydration"]["hydrated_blobs"] == 0
    assert tree.git("rev-parse", "HEAD").stdout.strip() == repo[1]
    assert tree.git("rev-parse", "--abbrev-ref", "HEAD").stdout.strip() == "main"


def test_history_arrives_in_background(repo, git_server, mounts):
    tree = mounts(git_server.url("demo"))
    tree.wait_for(lambda status: status["history_complete"])
    assert len(tree.git("log", "--oneline").stdout.splitlines()) == 31
    assert tree.git("rev-parse", "origin/main").stdout.strip() == repo[1]
    assert not (Path(tree.status()["gitdir"]) / "shallow").exists()
    fsck = tree.git("fsck", "--connectivity-only", check=False)
    assert fsck.returncode == 0, fsck.stderr


def test_concurrent_readers_share_batched_fetches(make_repo, git_server, mounts, tmp_path):
    files = {f"pkg{d}/file{i}.py": f"# {d}/{i}\n".encode() * (i + 1) for d in range(4) for i in range(40)}
    make_repo("many", files)
    tree = mounts(git_server.url("many"), "--hydrate", "none")
    git_server.clear_requests()
    errors: list[str] = []
    paths = sorted(files)

    def reader(selection: list[str]) -> None:
        for relative in selection:
            data = (tree.path / relative).read_bytes()
            if data != files[relative]:
                errors.append(relative)

    threads = [threading.Thread(target=reader, args=(paths[i::8],)) for i in range(8)]
    threads += [threading.Thread(target=reader, args=(paths[:10],)) for _ in range(4)]  # same files at once
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    fetches = [request for request in git_server.requests if request.command == "fetch"]
    wanted = [oid for request in fetches for oid in request.wants]
    assert len(wanted) == len(set(wanted)) == len(files), "every blob is fetched exactly once"
    assert max(request.want_count for request in fetches) > 1, "concurrent demands share requests"


def test_unmount_from_another_process_and_remount_reuses_state(repo, git_server, mounts, state_root):
    tree = mounts(git_server.url("demo"))
    first = (tree.path / "src/main.py").read_bytes()
    pid = tree.status()["pid"]
    result = run_cli("unmount", str(tree.path), root=state_root)
    assert result.returncode == 0
    assert not is_mounted(tree.path)
    wait_for_exit(pid)
    git_server.clear_requests()
    tree.mount()
    assert (tree.path / "src/main.py").read_bytes() == first
    # The history may still be completing (the first mount ended early); the tip is not fetched again.
    assert not [r for r in git_server.requests if r.command == "fetch" and "deepen 1" in r.arguments], (
        "tip fetched again"
    )
    assert tree.status()["head"] == repo[1]


def test_sigterm_unmounts_cleanly(repo, git_server, mounts):
    tree = mounts(git_server.url("demo"))
    pid = tree.status()["pid"]
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not is_mounted(tree.path), "still mounted after SIGTERM", timeout=10)


def test_credentials_stay_secret(make_repo, git_root, mounts, state_root, tmp_path):
    make_repo("private", TREE)
    secret = "s3cr3t-t0ken-value"
    with GitHttpServer(git_root, auth=("alice", secret)) as server:
        url = server.url("private").replace("http://", f"http://alice:{secret}@")
        tree = mounts(url)
        assert (tree.path / "package.json").read_bytes() == TREE["package.json"]
        status = tree.status()
        assert secret not in str(status) and "alice:" not in status["remote"]
        pid = status["pid"]
        assert secret.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        for child in Path(f"/proc/{pid}/task").glob("*/children"):
            for child_pid in child.read_text().split():
                assert secret.encode() not in Path(f"/proc/{child_pid}/cmdline").read_bytes()
        list_output = run_cli("list", root=state_root).stdout
        assert secret not in list_output
        tree.unmount()
    for path in state_root.rglob("*"):
        if path.is_file() and not path.is_symlink() and "/cache/blobs/" not in str(path):
            assert secret.encode() not in path.read_bytes(), f"secret written to {path}"


def test_ref_selects_branch_tag_or_commit(make_repo, git_server, mounts):
    path, first = make_repo("refs", {"VERSION": b"1\n"})
    second = commit_files(path, {"VERSION": b"2\n"}, message="two")
    commit_files(path, {"FEATURE": b"yes\n"}, branch="feature", message="feature")
    subprocess.run(["git", "--git-dir", str(path), "tag", "-a", "-m", "v1", "v1", first], check=True)
    by_tag = mounts(git_server.url("refs"), "--ref", "v1", name="tag")
    assert (by_tag.path / "VERSION").read_bytes() == b"1\n"
    assert by_tag.git("rev-parse", "HEAD").stdout.strip() == first
    assert by_tag.git("symbolic-ref", "-q", "HEAD", check=False).returncode != 0, "a tag mounts detached"
    by_commit = mounts(git_server.url("refs"), "--ref", second, name="commit")
    assert (by_commit.path / "VERSION").read_bytes() == b"2\n"
    by_branch = mounts(git_server.url("refs"), "--ref", "feature", name="branch")
    assert (by_branch.path / "FEATURE").read_bytes() == b"yes\n"
    assert by_branch.git("rev-parse", "--abbrev-ref", "HEAD").stdout.strip() == "feature"


def test_empty_remote_is_refused(git_root, git_server, state_root, tmp_path, fuse):
    subprocess.run(["git", "init", "-q", "--bare", str(git_root / "empty.git")], check=True)
    (tmp_path / "mnt").mkdir()
    result = run_cli("mount", git_server.url("empty"), str(tmp_path / "mnt"), root=state_root, check=False)
    assert result.returncode != 0
    assert result.stderr.strip().startswith("artifactfs: error: ") and "--ref" in result.stderr
    assert not is_mounted(tmp_path / "mnt")


def test_daemon_exits_when_its_mount_is_detached_from_outside(repo, git_server, mounts):
    tree = mounts(git_server.url("demo"))
    pid = tree.status()["pid"]
    subprocess.run(["fusermount3", "-u", "-z", str(tree.path)], check=True)
    wait_for_exit(pid)  # an orphaned daemon must not keep running


def test_unmount_during_the_post_mount_directory_walk(make_repo, git_server, mounts, state_root):
    """The daemon walks its own mount after start-up; stopping meanwhile must not deadlock."""
    make_repo("wide", {f"d{d}/e{e}/f.txt": b"x\n" for d in range(40) for e in range(40)})
    tree = mounts(git_server.url("wide"))
    pid = tree.status()["pid"]
    result = run_cli("unmount", str(tree.path), root=state_root, check=False, timeout=40)
    assert result.returncode == 0, result.stderr
    assert not is_mounted(tree.path) and not pid_alive(pid)
