"""The prepared index: byte-compatible with what git writes for the same tree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from artifactfs.worktree.index import CacheTree, IndexRecord, encode_index


def git(repo: Path, *arguments: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *arguments], capture_output=True, text=True, check=True
    ).stdout


def tree_extension(index: bytes) -> bytes:
    start = index.index(b"TREE")
    length = int.from_bytes(index[start + 4 : start + 8], "big")
    return index[start : start + 8 + length]


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
        names = {
            path[len(prefix) :].split("/")[0]
            for path in layout
            if path.startswith(prefix) and "/" in path[len(prefix) :]
        }
        node.children = {name.encode(): build(f"{prefix}{name}/") for name in names}
        return node

    records = [
        IndexRecord(path.encode(), 0o100644, git(repo, "rev-parse", f"HEAD:{path}").strip(), len(path))
        for path in layout
    ]
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


def test_varint_matches_gits_encoding():
    from artifactfs.worktree.ewah import encode_varint

    assert encode_varint(0) == b"\x00"
    assert encode_varint(127) == b"\x7f"
    assert encode_varint(128) == b"\x80\x00"  # each continuation is offset by one
    assert encode_varint(16511) == b"\xff\x7f"
    assert encode_varint(16512) == b"\x80\x80\x00"


def test_ewah_bitmap_layout():
    from artifactfs.worktree.ewah import encode_ewah

    empty = encode_ewah((), 0)
    assert empty == bytes.fromhex("0000000000000001000000000000000000000000")
    bitmap = encode_ewah([0, 65, 69], 70)
    bit_size, words = int.from_bytes(bitmap[:4], "big"), int.from_bytes(bitmap[4:8], "big")
    assert (bit_size, words) == (70, 3)
    marker, first, second = (int.from_bytes(bitmap[8 + 8 * i : 16 + 8 * i], "big") for i in range(3))
    assert marker == 2 << 33  # no run, two literal words follow
    assert (first, second) == (1, (1 << 1) | (1 << 5))


def _status_statistics(repo: Path, trace: Path) -> tuple[str, dict[str, int]]:
    import json
    import os

    trace.unlink(missing_ok=True)
    output = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GIT_TRACE2_EVENT": str(trace), "GIT_TRACE2_EVENT_NESTING": "10"},
    ).stdout
    statistics = {}
    for line in trace.read_text().splitlines():
        event = json.loads(line)
        if event.get("category") == "read_directory" and str(event.get("value")).isdigit():
            statistics[event["key"]] = int(event["value"])
    return output, statistics


@pytest.mark.parametrize("attributes", [None, "* text=auto\n", "*.txt eol=lf\n.gitignore ident\n"])
def test_git_trusts_the_fsmonitor_and_untracked_cache_extensions(tmp_path, attributes):
    """On a plain checkout, git takes our FSMN and UNTR at face value: it lists no directory."""
    from artifactfs.worktree.index import FsmonitorState, write_index
    from artifactfs.worktree.untracked import build_untracked_cache, converting_paths, gitignore_id

    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    layout = {
        ".gitignore": "*.log\n",
        "a.txt": "a",
        "b/c.txt": "c",
        "b/d/e.txt": "e",
        "b/d/.gitignore": "*.tmp\n",
        "bb/g.txt": "g",
        "c/h.txt": "h",
        "c/e/i.txt": "i",
    }
    if attributes is not None:
        layout[".gitattributes"] = attributes
    for relative, content in layout.items():
        (repo / relative).parent.mkdir(parents=True, exist_ok=True)
        (repo / relative).write_text(content)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "x")
    changed = tmp_path / "changed"
    changed.write_text("")
    hook = tmp_path / "hook"
    hook.write_text(f"#!/bin/sh\nprintf 'token-2\\0'\ntr '\\n' '\\0' < {changed}\n")
    hook.chmod(0o755)
    git(repo, "config", "core.fsmonitor", str(hook))
    git(repo, "config", "core.fsmonitorHookVersion", "2")
    git(repo, "config", "core.untrackedCache", "true")

    records, gitignores = [], {}
    converted = converting_paths(
        repo / ".git", git(repo, "rev-parse", "HEAD^{tree}").strip(), [".gitignore", "b/d/.gitignore"]
    )
    assert converted == (set() if attributes is None else {".gitignore", "b/d/.gitignore"})
    for line in git(repo, "ls-files", "-s").splitlines():
        mode_oid_stage, path = line.split("\t")
        mode, oid, _ = mode_oid_stage.split()
        records.append(IndexRecord(path.encode(), int(mode, 8), oid, 0))  # wrong sizes: never looked at
        if path.endswith(".gitignore"):
            gitignores[path.rpartition("/")[0]] = gitignore_id(
                oid, (repo / path).read_bytes(), path in converted
            )
    untracked = build_untracked_cache(repo, repo / ".git", ["", "b", "b/d", "bb", "c", "c/e"], gitignores)
    (repo / ".git" / "index").unlink()
    write_index(repo / ".git", records, 0, None, untracked, FsmonitorState("token-1"))

    output, statistics = _status_statistics(repo, tmp_path / "trace")
    assert output == ""
    assert statistics["opendir"] == 0 and statistics["directory-invalidation"] == 0, statistics

    (repo / "b" / "d" / "new.txt").write_text("new")
    (repo / "b" / "d" / "x.tmp").write_text("ignored")
    (repo / "bb" / "g.txt").write_text("changed")
    changed.write_text("b/d/new.txt\nb/d/x.tmp\nbb/g.txt\n")
    output, statistics = _status_statistics(repo, tmp_path / "trace")
    assert sorted(output.splitlines()) == [" M bb/g.txt", "?? b/d/new.txt"]
    assert statistics["opendir"] == 4, statistics  # what changed and its parents: not c, c/e
