"""The habits of ``git clone``, end to end: the target directory is created, progress shows on a
terminal (and nowhere else), -b/--branch and short commit ids select what to mount, --depth limits
the history fetched in the background."""

from __future__ import annotations

import errno
import os
import select
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from artifactfs.testing import GitHttpServer, commit_files, git
from artifactfs.testing.mounts import MountedTree, artifactfs_command, is_mounted, run_cli

MakeRepo = Callable[..., tuple[Path, str]]
MountFactory = Callable[..., MountedTree]
PHASES = ("connecting", "refs", "trees", "ready")


def mount_on_terminal(*arguments: str, root: Path, timeout: float = 60.0) -> tuple[int, str, str]:
    """Run ``artifactfs mount`` with stderr on a pseudo-terminal; (exit status, terminal text, stdout)."""
    master, slave = os.openpty()
    process = subprocess.Popen(
        artifactfs_command("mount", *arguments),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        env={**os.environ, "ARTIFACTFS_ROOT": str(root)},
    )
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError as error:
                if error.errno == errno.EIO:  # every writer closed the terminal: mount has ended
                    break
                raise
            if not chunk:
                break
            shown += chunk
        assert process.stdout is not None
        stdout = process.stdout.read().decode()
        return process.wait(timeout=timeout), shown.decode().replace("\r\n", "\n"), stdout
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()


def test_mount_creates_the_missing_directory(
    make_repo: MakeRepo, git_server: GitHttpServer, tmp_path: Path, state_root: Path, fuse: None
) -> None:
    make_repo("demo")
    target = tmp_path / "does" / "not" / "exist"
    tree = MountedTree(git_server.url("demo"), target, state_root)
    run_cli("mount", git_server.url("demo"), str(target), root=state_root)
    try:
        assert is_mounted(target)
        assert (target / "README.md").read_bytes() == b"# demo\n"
    finally:
        tree.unmount()
    assert target.is_dir(), "a created directory stays after unmount, as a clone's would"


def test_progress_on_a_terminal_and_quiet_otherwise(
    make_repo: MakeRepo, git_server: GitHttpServer, tmp_path: Path, state_root: Path, fuse: None
) -> None:
    make_repo("demo")
    trees = [MountedTree(git_server.url("demo"), tmp_path / name, state_root) for name in ("a", "b", "c")]
    try:
        status, shown, stdout = mount_on_terminal(git_server.url("demo"), str(trees[0].path), root=state_root)
        assert status == 0 and stdout == ""
        lines = shown.splitlines()
        assert all(line.startswith("artifactfs: ") for line in lines), shown
        positions = [next(i for i, line in enumerate(lines) if phase in line) for phase in PHASES]
        assert positions == sorted(positions), f"phases out of order: {lines}"
        assert f"ready: {trees[0].path}" in lines[-1]

        status, shown, _ = mount_on_terminal(
            "-q", git_server.url("demo"), str(trees[1].path), root=state_root
        )
        assert status == 0 and shown == "", "-q shows nothing"
        assert (trees[1].path / "README.md").exists()

        piped = run_cli("mount", git_server.url("demo"), str(trees[2].path), root=state_root)
        assert piped.stderr == "" and piped.stdout == "", "stderr not a terminal: nothing extra"
        assert (trees[2].path / "README.md").exists()
    finally:
        for tree in trees:
            tree.unmount()


def test_a_failure_on_a_terminal_shows_the_phases_reached_then_the_error(
    make_repo: MakeRepo, git_server: GitHttpServer, tmp_path: Path, state_root: Path, fuse: None
) -> None:
    make_repo("demo")
    target = tmp_path / "mnt"
    status, shown, _ = mount_on_terminal(
        "-b", "missing", git_server.url("demo"), str(target), root=state_root
    )
    lines = shown.splitlines()
    assert status != 0
    assert "connecting" in lines[0] and "refs" in lines[1]
    assert lines[-1].startswith("artifactfs: error: ") and "missing" in lines[-1]
    assert not any("ready" in line for line in lines)
    assert not target.exists() and not state_root.exists()


def test_branch_alias_and_short_commit_ids(
    make_repo: MakeRepo, git_server: GitHttpServer, mounts: MountFactory
) -> None:
    path, first = make_repo("refs", {"VERSION": b"1\n"})
    second = commit_files(path, {"VERSION": b"2\n"}, message="two")
    commit_files(path, {"VERSION": b"3\n"}, message="three")
    feature = commit_files(path, {"FEATURE": b"yes\n"}, branch="feature", message="feature")
    url = git_server.url("refs")

    by_alias = mounts(url, "-b", "feature", name="short-b")
    assert (by_alias.path / "FEATURE").read_bytes() == b"yes\n"
    assert by_alias.git("rev-parse", "--abbrev-ref", "HEAD").stdout.strip() == "feature"
    by_long = mounts(url, "--branch", "feature", name="long-branch")
    assert by_long.git("rev-parse", "HEAD").stdout.strip() == feature

    tip_prefix = mounts(url, "--ref", feature[:8], name="tip-prefix")
    assert tip_prefix.git("rev-parse", "HEAD").stdout.strip() == feature

    # Neither a branch nor a tag tip: found in the commit graph of the remote.
    inside = mounts(url, "-b", second[:7], name="inside-history")
    assert (inside.path / "VERSION").read_bytes() == b"2\n"
    assert inside.git("rev-parse", "HEAD").stdout.strip() == second
    assert inside.git("symbolic-ref", "-q", "HEAD", check=False).returncode != 0, "a commit is detached"
    oldest = mounts(url, "-b", first[:10].upper(), name="oldest")
    assert (oldest.path / "VERSION").read_bytes() == b"1\n"


def test_unknown_short_commit_id(
    make_repo: MakeRepo, git_server: GitHttpServer, tmp_path: Path, state_root: Path, fuse: None
) -> None:
    path, first = make_repo("refs", {"VERSION": b"1\n"})
    commit_files(path, {"VERSION": b"2\n"}, message="two")
    unknown = next(prefix for prefix in ("0000000", "fffffff", "1234567") if not first.startswith(prefix))
    result = run_cli(
        "mount", "-b", unknown, git_server.url("refs"), str(tmp_path / "mnt"), root=state_root, check=False
    )
    assert result.returncode != 0
    assert result.stderr.strip() == (
        f"artifactfs: error: {unknown!r} is not a branch, a tag, or a commit reachable from one on the remote"
    )
    assert not state_root.exists()


def test_depth_limits_the_history_fetched_in_the_background(
    make_repo: MakeRepo, git_server: GitHttpServer, mounts: MountFactory
) -> None:
    path, _ = make_repo("history", extra_commits=20)
    git(path, "branch", "other", "main~5")
    limited = mounts(git_server.url("history"), "--depth", "3", name="limited")
    status = limited.wait_for(lambda status: status["history_complete"])
    assert status["history_depth"] == 3
    assert limited.git("rev-list", "--count", "HEAD").stdout.strip() == "3"
    assert limited.git("rev-list", "--count", "origin/other").stdout.strip() == "3"
    assert limited.git("log", "--oneline", "-n", "5").stdout.count("\n") == 3
    full = mounts(git_server.url("history"), name="full")
    full.wait_for(lambda status: status["history_complete"])
    assert full.git("rev-list", "--count", "HEAD").stdout.strip() == "21"


def test_an_ambiguous_short_commit_id_is_refused(
    make_repo: MakeRepo, git_server: GitHttpServer, tmp_path: Path, state_root: Path, fuse: None
) -> None:
    path, _ = make_repo("long", extra_commits=1500)
    commits = git(path, "rev-list", "HEAD").decode().split()
    by_prefix: dict[str, list[str]] = {}
    for commit in commits:
        by_prefix.setdefault(commit[:4], []).append(commit)
    prefix, clashing = next((prefix, found) for prefix, found in sorted(by_prefix.items()) if len(found) > 1)
    result = run_cli(
        "mount", "-b", prefix, git_server.url("long"), str(tmp_path / "mnt"), root=state_root, check=False
    )
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert f"short commit id {prefix!r} is ambiguous" in line and "give more digits" in line
    assert all(commit in line for commit in clashing[:5])
    unique = next(found[0] for found in by_prefix.values() if len(found) == 1)
    tree = MountedTree(git_server.url("long"), tmp_path / "unique", state_root, ["-b", unique[:6]]).mount()
    try:
        assert tree.git("rev-parse", "HEAD").stdout.strip() == unique
    finally:
        tree.unmount()
