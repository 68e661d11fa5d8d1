"""The first ``git status`` after mount costs what the changes cost, not what the tree costs.

The prepared index carries an fsmonitor extension (every entry unchanged as of
the journal position at publish time) and an untracked cache (every directory
listed, valid and empty), so git lstats no file and lists no directory. Counted
three ways: the daemon's own FUSE request counters, the server's fetch records,
and git's trace2 statistics of the untracked-cache walk.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from artifactfs.testing import GitHttpServer
from artifactfs.testing.mounts import MountedTree

DIRECTORIES = 40
FILES_PER_DIRECTORY = 12


def _tree() -> dict[str, bytes]:
    files = {
        "package.json": b'{"name": "first-status"}\n',
        ".gitignore": b"*.log\nbuild/\n",
        ".gitattributes": b"* text=auto\n",  # git then hashes each .gitignore as it parses it
        "pkg07/.gitignore": b"*.tmp\n",
    }
    for directory in range(DIRECTORIES):
        for number in range(FILES_PER_DIRECTORY):
            files[f"pkg{directory:02d}/sub/file{number:02d}.py"] = (
                f"value = {directory * 100 + number}\n".encode()
            )
    return files


def _fuse_counts(tree: MountedTree) -> dict[str, int]:
    return dict(tree.status()["fuse"]["operations"])


def _delta(before: dict[str, int], after: dict[str, int], *operations: str) -> int:
    return sum(after.get(operation, 0) - before.get(operation, 0) for operation in operations)


def _fetches(server: GitHttpServer) -> int:
    """Blob fetches: the history arrives in the background with a filter, whenever it is ready."""
    return sum(1 for record in server.requests if record.command == "fetch" and not record.has_filter)


def _traced_status(tree: MountedTree, trace: Path) -> tuple[str, dict[str, int]]:
    """``git status --porcelain`` and git's own read_directory statistics for that run."""
    trace.unlink(missing_ok=True)
    result = subprocess.run(
        ["git", "status", "--porcelain"],
        cwd=tree.path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GIT_TRACE2_EVENT": str(trace), "GIT_TRACE2_EVENT_NESTING": "10"},
        check=True,
    )
    statistics: dict[str, int] = {}
    for line in trace.read_text().splitlines():
        event: dict[str, Any] = json.loads(line)
        if (
            event.get("event") == "data"
            and event.get("category") == "read_directory"
            and str(event.get("value")).isdigit()
        ):
            statistics[event["key"]] = int(event["value"])
    return result.stdout, statistics


@pytest.mark.parametrize("object_info", [True, False], ids=["object-info", "no-object-info"])
def test_first_status_reads_nothing(
    object_info: bool,
    make_repo: Callable[..., tuple[Path, str]],
    git_root: Path,
    mounts: Callable[..., MountedTree],
    tmp_path: Path,
) -> None:
    make_repo(files=_tree())
    with GitHttpServer(git_root, object_info=object_info) as server:
        tree = mounts(server.url("repo"), "--hydrate", "none")
        fetches = _fetches(server)
        before = _fuse_counts(tree)
        output, statistics = _traced_status(tree, tmp_path / "trace.json")
        after = _fuse_counts(tree)

        assert output == ""
        assert _fetches(server) == fetches, "git status fetched blobs"
        files = DIRECTORIES * FILES_PER_DIRECTORY
        per_file = _delta(before, after, "getattr", "lookup")
        assert per_file < files // 20, (
            f"{per_file} getattr/lookup requests for {files} files: git lstat'd the tree"
        )
        listings = _delta(before, after, "opendir", "readdir")
        assert listings <= 2, f"git listed {listings} directories"
        assert statistics.get("opendir", 0) == 0, statistics
        assert statistics.get("directory-invalidation", 0) == 0, statistics


def test_first_status_sees_every_kind_of_change(
    make_repo: Callable[..., tuple[Path, str]],
    git_server: GitHttpServer,
    mounts: Callable[..., MountedTree],
    tmp_path: Path,
) -> None:
    make_repo(files=_tree())
    tree = mounts(git_server.url("repo"), "--hydrate", "none")
    (tree.path / "pkg03" / "sub" / "file01.py").write_text("value = -1\n")
    (tree.path / "pkg05" / "sub" / "new.py").write_text("new = True\n")
    (tree.path / "pkg05" / "debug.log").write_text("ignored by the root .gitignore\n")
    (tree.path / "pkg07" / "scratch.tmp").write_text("ignored by pkg07/.gitignore\n")
    (tree.path / "pkg09" / "sub" / "file02.py").unlink()
    (tree.path / "fresh").mkdir()
    (tree.path / "fresh" / "a.txt").write_text("a\n")

    output, statistics = _traced_status(tree, tmp_path / "trace.json")
    assert sorted(output.splitlines()) == sorted(
        [
            " M pkg03/sub/file01.py",
            " D pkg09/sub/file02.py",
            "?? fresh/",
            "?? pkg05/sub/new.py",
        ]
    )
    assert statistics.get("opendir", 0) <= 10, statistics  # changed directories and their parents, of 81

    tree.git("add", "-A")
    tree.git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "changes")
    assert tree.git("status", "--porcelain").stdout == ""
    tree.git("stash", "list")
    (tree.path / "pkg01" / "sub" / "file00.py").write_text("stashed = 1\n")
    tree.git("stash", "-q")
    assert tree.git("status", "--porcelain").stdout == ""
    tree.git("stash", "pop", "-q")
    assert tree.git("status", "--porcelain").stdout == " M pkg01/sub/file00.py\n"
    tree.git("reset", "-q", "--hard", "HEAD~1")
    assert tree.git("status", "--porcelain").stdout == ""
    assert (tree.path / "pkg03" / "sub" / "file01.py").read_text() == "value = 301\n"


def test_status_after_remount_stays_cheap(
    make_repo: Callable[..., tuple[Path, str]],
    git_server: GitHttpServer,
    mounts: Callable[..., MountedTree],
    tmp_path: Path,
) -> None:
    make_repo(files=_tree())
    tree = mounts(git_server.url("repo"), "--hydrate", "none")
    (tree.path / "pkg02" / "sub" / "file03.py").write_text("changed = True\n")
    assert tree.git("status", "--porcelain").stdout == " M pkg02/sub/file03.py\n"
    tree.unmount()
    tree.mount()
    (tree.path / "pkg04" / "late.txt").write_text("written after the remount\n")
    before = _fuse_counts(tree)
    output, statistics = _traced_status(tree, tmp_path / "trace.json")
    after = _fuse_counts(tree)
    assert sorted(output.splitlines()) == [" M pkg02/sub/file03.py", "?? pkg04/late.txt"]
    assert _delta(before, after, "getattr", "lookup") < DIRECTORIES * FILES_PER_DIRECTORY // 20
    assert statistics.get("opendir", 0) <= 2, statistics
