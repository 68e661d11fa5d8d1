"""The prepared index: byte-compatible with what git writes for the same tree."""

from __future__ import annotations

import subprocess
from pathlib import Path

from artifactfs.worktree.index import CacheTree, IndexRecord, encode_index


def git(repo: Path, *arguments: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *arguments], capture_output=True, text=True, check=True).stdout


def tree_extension(index: bytes) -> bytes:
    start = index.index(b"TREE")
    length = int.from_bytes(index[start + 4:start + 8], "big")
    return index[start:start + 8 + length]


def test_cache_tree_matches_gits_own(tmp_path):
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    layout = ["a.txt", "b/c.txt", "b/d/e.txt", "b/d/f.txt", "bb/g.txt", "z/y/x/w.txt"]
    for relative in layout:
        (repo / relative).parent.mkdir(parents=True, exist_ok=True)
        (repo / relative).write_text(relative)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "x")
    git(repo, "read-tree", "HEAD")  # leaves a complete cache-tree in the index
    expected = tree_extension((repo / ".git/index").read_bytes())

    def build(prefix: str) -> CacheTree:
        node = CacheTree(git(repo, "rev-parse", f"HEAD:{prefix}").strip())
        node.entry_count = sum(1 for path in layout if path.startswith(prefix))
        names = {path[len(prefix):].split("/")[0] for path in layout if path.startswith(prefix) and "/" in path[len(prefix):]}
        node.children = {name.encode(): build(f"{prefix}{name}/") for name in names}
        return node

    records = [IndexRecord(path.encode(), 0o100644, git(repo, "rev-parse", f"HEAD:{path}").strip(), len(path))
               for path in layout]
    ours = encode_index(records, 10**18, build(""))
    assert tree_extension(ours) == expected
    (repo / ".git/index").write_bytes(ours)
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "write-tree").strip() == git(repo, "rev-parse", "HEAD^{tree}").strip()


def test_invalid_cache_tree_entries_are_rebuilt_by_git(tmp_path):
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "d").mkdir()
    (repo / "d/f.txt").write_text("f")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "x")
    oid = git(repo, "rev-parse", "HEAD:d/f.txt").strip()
    root = CacheTree(None, 1, {b"d": CacheTree(None, 1)})
    (repo / ".git/index").write_bytes(encode_index([IndexRecord(b"d/f.txt", 0o100644, oid, 1)], 10**18, root))
    assert git(repo, "write-tree").strip() == git(repo, "rev-parse", "HEAD^{tree}").strip()
