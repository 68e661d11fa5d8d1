"""Branch switching in a real mount: checkout, switch and ``reset --hard`` between distant commits.

Real FUSE, real ``git http-backend``, real git. Each test checks what a clone
would show (every file's mode and bytes, a clean status), what the daemon
publishes afterwards (its HEAD, hydration totals for the current tree only),
and what it cost (one batch of blobs from the origin; no file re-read by git).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from artifactfs.testing import FileSpec, commit_files
from artifactfs.testing.mounts import MountedTree
from artifactfs.testing.repos import distinct_content, served_tree

MAIN: dict[str, bytes | FileSpec] = {
    "README.md": b"# project\n",
    "src/app.py": b"print('main')\n",
    "src/shared.py": b"SHARED = 1\n",
    "scripts/run.sh": FileSpec(b"#!/bin/sh\necho main\n", executable=True),
    "link": FileSpec(symlink_target="README.md"),
    **{f"pkg/mod{index:02}.py": distinct_content(f"main-{index}") for index in range(40)},
}
OLD: dict[str, bytes | FileSpec] = {
    "README.md": b"# project, long ago\n",
    "src/shared.py": b"SHARED = 1\n",
    "scripts/run.sh": FileSpec(b"#!/bin/sh\necho old\n"),  # not executable back then
    "link": FileSpec(symlink_target="src/shared.py"),
    "legacy/setup.cfg": b"[metadata]\nname = old\n",
    **{f"pkg/mod{index:02}.py": distinct_content(f"old-{index}") for index in range(25)},
    **{f"old/deep/dir{index % 4}/f{index}.txt": distinct_content(f"deep-{index}") for index in range(30)},
}


def mounted_tree(root: Path) -> dict[str, tuple[str, bytes]]:
    """What the mount shows, in the same form (the root's ``.git`` file left out)."""
    result = {}
    for directory, names, files in os.walk(root):
        names.sort()
        for name in files:
            path = Path(directory, name)
            relative = path.relative_to(root).as_posix()
            if relative == ".git":
                continue
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                result[relative] = ("120000", os.readlink(path).encode())
            else:
                result[relative] = ("100755" if info.st_mode & 0o111 else "100644", path.read_bytes())
    return result


def blob_count(repo: Path, ref: str) -> int:
    listing = subprocess.run(
        ["git", "--git-dir", str(repo), "ls-tree", "-r", ref], capture_output=True, check=True, text=True
    ).stdout
    return len({line.split()[2] for line in listing.splitlines() if line.split()[1] == "blob"})


def operation_counts(tree: MountedTree) -> dict[str, int]:
    counts: dict[str, int] = tree.status()["fuse"]["operations"]
    return counts


def assert_checked_out(tree: MountedTree, repo: Path, ref: str) -> dict[str, Any]:
    """The mount shows ``ref`` exactly, git sees it clean, and the daemon has published it."""
    commit = subprocess.run(
        ["git", "--git-dir", str(repo), "rev-parse", ref], capture_output=True, check=True, text=True
    ).stdout.strip()
    assert tree.git("rev-parse", "HEAD").stdout.strip() == commit
    assert mounted_tree(tree.path) == served_tree(repo, ref)
    assert tree.git("status", "--porcelain").stdout == ""
    status = tree.wait_for(lambda status: status["head"] == commit, timeout=20)
    totals = tree.wait_for(lambda status: status["hydration"]["complete"], timeout=30)["hydration"]
    assert totals["total_blobs"] == blob_count(repo, ref)  # the current tree's blobs, no others
    assert totals["hydrated_blobs"] == totals["total_blobs"]
    return status


@pytest.fixture
def project(make_repo: Any, git_server: Any) -> tuple[Path, str]:
    repo, _ = make_repo("project", OLD, extra_commits=30)
    git = ["git", "--git-dir", str(repo)]
    subprocess.run([*git, "branch", "old", "main"], check=True)
    subprocess.run([*git, "tag", "v1", "main"], check=True)
    delete = [path for path in OLD if path not in MAIN]
    commit_files(repo, MAIN, delete=delete, message="The new layout")
    return repo, git_server.url("project")


def test_a_remote_branch_checks_out_right_after_mount(project: tuple[Path, str], mounts: Any) -> None:
    repo, url = project
    tree = mounts(url)
    status = tree.status()
    gitdir = Path(status["gitdir"])
    # Written with the gitdir, before history: git finds origin/old at once.
    assert (gitdir / "refs/remotes/origin/old").read_text().strip() == served_commit(repo, "old")
    tree.git("checkout", "-q", "old")
    assert tree.git("rev-parse", "--abbrev-ref", "old@{upstream}").stdout.strip() == "origin/old"
    assert_checked_out(tree, repo, "old")
    tree.wait_for(lambda status: status["history_complete"], timeout=30)
    assert len(tree.git("log", "--oneline", "old", "--").stdout.splitlines()) == 31


def served_commit(repo: Path, ref: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(repo), "rev-parse", ref], capture_output=True, check=True, text=True
    ).stdout.strip()


def test_switch_and_reset_hard_between_distant_commits(project: tuple[Path, str], mounts: Any) -> None:
    repo, url = project
    tree = mounts(url)
    assert_checked_out(tree, repo, "main")
    tree.git("switch", "-q", "old")
    assert_checked_out(tree, repo, "old")
    # The files git just wrote keep the stat data git recorded: status re-reads none of them.
    before = operation_counts(tree)
    assert tree.git("status", "--porcelain").stdout == ""
    after = operation_counts(tree)
    assert after.get("open", 0) - before.get("open", 0) <= 1  # the root's .git file, nothing else
    assert after.get("read", 0) == before.get("read", 0)
    tree.git("switch", "-q", "main")
    assert_checked_out(tree, repo, "main")
    tree.git("reset", "-q", "--hard", "origin/old")
    assert_checked_out(tree, repo, "old")
    tree.git("reset", "-q", "--hard", "origin/main")
    assert_checked_out(tree, repo, "main")
    tree.git("checkout", "-q", "--detach", served_commit(repo, "old"))
    assert_checked_out(tree, repo, "old")


def test_a_checkout_fetches_the_new_trees_blobs_in_one_batch(
    project: tuple[Path, str], mounts: Any, git_server: Any
) -> None:
    repo, url = project
    tree = mounts(url, "--hydrate", "none")
    tree.wait_for(lambda status: status["history_complete"], timeout=30)
    git_server.clear_requests()
    tree.git("checkout", "-q", "old")
    # git's prefetch reaches the daemon, which asks the origin once for every blob the new tree lacks.
    assert tree.status()["git"]["fetches"] >= 1
    blob_fetches = [record.want_count for record in git_server.requests if record.command == "fetch"]
    unchanged = set(served_blob_ids(repo, "old")) & set(served_blob_ids(repo, "main"))
    # One request for every blob the checkout writes; then git's index update asks for the unchanged
    # blobs it lacks too, which only --hydrate none leaves unfetched.
    assert blob_fetches[0] == blob_count(repo, "old") - len(unchanged)
    assert sum(blob_fetches[1:]) <= len(unchanged)
    assert mounted_tree(tree.path) == served_tree(repo, "old")
    assert tree.git("status", "--porcelain").stdout == ""


def served_blob_ids(repo: Path, ref: str) -> list[str]:
    listing = subprocess.run(
        ["git", "--git-dir", str(repo), "ls-tree", "-r", ref], capture_output=True, check=True, text=True
    ).stdout
    return [line.split()[2] for line in listing.splitlines() if line.split()[1] == "blob"]
