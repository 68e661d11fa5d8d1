"""Correcting recorded sizes in git's own index (worktree/index.py ``correct_index_sizes``), checked by real git."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from artifactfs.worktree.index import IndexLockedError, correct_index_sizes


def git(repo: Path, *arguments: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *arguments], capture_output=True, text=True, check=True
    ).stdout


def recorded_sizes(repo: Path) -> dict[str, int]:
    """path -> size recorded in the index, as git itself reads it."""
    sizes: dict[str, int] = {}
    path = ""
    for line in git(repo, "ls-files", "--debug").splitlines():
        if not line.startswith(" "):
            path = line
        elif line.strip().startswith("size:"):
            sizes[path] = int(line.split("size:")[1].split()[0])
    return sizes


@pytest.mark.parametrize("version", ["2", "3"])
def test_wrong_sizes_are_replaced_and_git_accepts_the_index(tmp_path, version):
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    deep = "/".join(["n" * 200] * 20) + "/f.txt"  # a 4 KB path: entries are not all short
    names = ["a.txt", "dir/b.txt", deep, "same.txt"]
    for name in names:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(f"content of {name[:10]}\n" * 3)
    (repo / "same.txt").write_text((repo / "a.txt").read_text())  # two entries, one blob
    git(repo, "add", "-A")
    git(repo, "update-index", f"--index-version={version}")
    if version == "3":
        git(repo, "update-index", "--skip-worktree", "dir/b.txt")  # an extended-flags entry
    git(repo, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "x")
    before = recorded_sizes(repo)
    oid_a = git(repo, "rev-parse", "HEAD:a.txt").strip()
    oid_long = git(repo, "rev-parse", f"HEAD:{names[2]}").strip()

    assert correct_index_sizes(repo / ".git", {oid_a: 849, oid_long: 7}) == 3
    after = recorded_sizes(repo)
    assert after == {**before, "a.txt": 849, "same.txt": 849, names[2]: 7}
    git(repo, "ls-files", "--stage")  # the checksum is valid: git reads the index without complaint
    assert correct_index_sizes(repo / ".git", {oid_a: 849}) == 0  # nothing left to change

    # The sizes git sees on disk again: git status is clean once the index names the real sizes.
    real = {oid: int(git(repo, "cat-file", "-s", oid)) for oid in (oid_a, oid_long)}
    assert correct_index_sizes(repo / ".git", real) == 3
    assert git(repo, "status", "--porcelain") == ""

    (repo / ".git/index.lock").write_bytes(b"")
    with pytest.raises(IndexLockedError):
        correct_index_sizes(repo / ".git", {oid_a: 1})
    assert (repo / ".git/index.lock").exists(), "a lock held by git must never be removed"
