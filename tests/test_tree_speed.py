"""The caches that make tree-wide tools fast never show a stale tree.

Unchanged base paths are answered from memory (overlay row index, nodes and
listings per view version), a local base file is opened without touching its
blob, and the kernel keeps entries, attributes and pages for long. These tests
change the tree every way it can change (writes, unlink, rename, mkdir, HEAD
moved by git with and without writing the tree) and check what the kernel
shows afterwards; and they check the requests a re-read costs.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from artifactfs.fs.basechanges import changed_paths
from artifactfs.overlay.rowindex import RowIndex
from artifactfs.overlay.store import OverlayRow, OverlayStore
from artifactfs.snapshot.entries import BaseEntry, EntryKind
from artifactfs.testing import commit_files
from artifactfs.testing.mounts import MountedTree

BASE = {
    "README.md": b"# project\n",
    "src/app.py": b"print('app')\n",
    "src/lib/util.py": b"def util():\n    return 1\n",
    "src/lib/more.py": b"VALUE = 2\n",
    "docs/guide.md": b"guide\n" * 1000,
}


def operations(tree: MountedTree) -> dict[str, int]:
    counts: dict[str, int] = tree.status()["fuse"]["operations"]
    return counts


def eventually(check: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``check`` (an assertion) until it passes; kernel invalidations are asynchronous."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except (AssertionError, OSError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.02)


@pytest.fixture
def project(make_repo, git_server, mounts) -> tuple[MountedTree, Path]:
    repo, _ = make_repo("project", BASE, extra_commits=2)
    tree = mounts(git_server.url("project"))
    tree.git("config", "user.email", "dev@example.com")
    tree.git("config", "user.name", "Dev")
    tree.wait_for(lambda status: status["hydration"]["complete"] and status["history_complete"])
    return tree, repo


# --------------------------------------------------------------------- the row index


def test_row_index_tracks_rows_and_generation() -> None:
    index = RowIndex(["", "src", "src/a.py"])
    assert "src/a.py" in index and "src/b.py" not in index
    generation = index.generation
    index.apply([("src/a.py", False), ("src/b.py", True), ("src/b.py", False)])
    assert index.generation == generation + 1
    assert "src/a.py" not in index and "src/b.py" not in index and "src" in index
    index.apply([])
    assert index.generation == generation + 1  # nothing changed, same version


def test_store_index_follows_commits_and_ignores_rolled_back_batches(tmp_path: Path) -> None:
    with OverlayStore(tmp_path / "state") as store:
        with store.batch() as batch:
            batch.put(OverlayRow("src", EntryKind.DIR, 0o40755))
            batch.put(OverlayRow("src/a.py", EntryKind.FILE, 0o100644, base_oid="a" * 40))
        assert store.get("src/a.py") is not None
        assert [row.path for row in store.children("src")] == ["src/a.py"]
        generation = store.rows_index.generation
        with pytest.raises(RuntimeError), store.batch() as batch:
            batch.put(OverlayRow("src/b.py", EntryKind.FILE, 0o100644, base_oid="b" * 40))
            raise RuntimeError("abandon the batch")
        assert store.rows_index.generation == generation and "src/b.py" not in store.rows_index
        with store.batch() as batch:
            batch.delete_subtree("src")
        assert store.children("src") == [] and store.get("src/a.py") is None
        assert store.get("src") is not None
    with OverlayStore(tmp_path / "state") as reopened:
        assert "src" in reopened.rows_index and "src/a.py" not in reopened.rows_index


# --------------------------------------------------------------------- writes through the mount


def test_listings_and_lookups_follow_changes_through_the_mount(project) -> None:
    tree, _ = project
    src = tree.path / "src"
    assert sorted(os.listdir(src)) == ["app.py", "lib"]
    assert not (src / "new.py").exists()  # a negative entry the kernel may keep

    (src / "new.py").write_bytes(b"new\n")
    assert sorted(os.listdir(src)) == ["app.py", "lib", "new.py"]
    assert (src / "new.py").read_bytes() == b"new\n"

    os.rename(src / "lib", src / "library")
    assert sorted(os.listdir(src)) == ["app.py", "library", "new.py"]
    assert sorted(os.listdir(src / "library")) == ["more.py", "util.py"]
    assert (src / "library/util.py").read_bytes() == BASE["src/lib/util.py"]
    assert not (src / "lib").exists()

    (src / "app.py").unlink()
    (src / "library/more.py").unlink()
    assert sorted(os.listdir(src)) == ["library", "new.py"]
    assert os.listdir(src / "library") == ["util.py"]
    with pytest.raises(FileNotFoundError):
        (src / "app.py").read_bytes()

    (src / "lib").mkdir()
    (src / "lib/again.py").write_bytes(b"again\n")
    assert sorted(os.listdir(src)) == ["lib", "library", "new.py"]
    assert os.listdir(src / "lib") == ["again.py"]
    status = sorted(tree.git("status", "--porcelain", "--untracked-files=all").stdout.splitlines())
    assert status == sorted(
        [
            " D src/app.py",
            " D src/lib/more.py",
            " D src/lib/util.py",
            "?? src/lib/again.py",
            "?? src/library/util.py",
            "?? src/new.py",
        ]
    )


def test_lazily_opened_files_write_copy_up_truncate_and_survive_unlink(project) -> None:
    tree, _ = project
    readme, guide = tree.path / "README.md", tree.path / "docs/guide.md"
    assert readme.read_bytes() == BASE["README.md"]

    with open(readme, "rb") as reader:  # opened before the file changes under it
        with open(readme, "ab") as writer:  # a write opens a copy-up, never the base blob
            writer.write(b"appended\n")
        assert readme.read_bytes() == BASE["README.md"] + b"appended\n"
        # One file: a reader opened before the copy-up sees the write, as on any filesystem.
        assert reader.read() == BASE["README.md"] + b"appended\n"

    with open(guide, "wb") as truncating:  # O_TRUNC on a base file
        truncating.write(b"short\n")
    assert guide.read_bytes() == b"short\n" and guide.stat().st_size == 6

    util = tree.path / "src/lib/util.py"
    reader_fd = os.open(util, os.O_RDONLY)
    try:
        util.unlink()
        assert os.fstat(reader_fd).st_size == len(BASE["src/lib/util.py"])
        assert os.pread(reader_fd, 1 << 16, 0) == BASE["src/lib/util.py"]
    finally:
        os.close(reader_fd)
    assert not util.exists()
    assert sorted(tree.git("status", "--porcelain").stdout.splitlines()) == [
        " D src/lib/util.py",
        " M README.md",
        " M docs/guide.md",
    ]


def test_reading_a_local_file_again_costs_no_read_and_no_flush(project) -> None:
    tree, _ = project
    files = [tree.path / path for path in BASE]
    for path in files:
        assert path.read_bytes() == BASE[str(path.relative_to(tree.path))]
    before = operations(tree)
    for path in files:
        assert path.read_bytes() == BASE[str(path.relative_to(tree.path))]
    after = operations(tree)
    assert after.get("read", 0) == before.get("read", 0)  # pages stayed in the kernel
    assert after.get("flush", 0) <= 1  # answered ENOSYS once, never asked again
    assert after["open"] - before["open"] == len(files)


def test_a_file_that_is_not_local_still_blocks_on_read(make_repo, git_server, mounts) -> None:
    make_repo("lazy", BASE)
    tree = mounts(git_server.url("lazy"), "--hydrate", "none")
    assert (tree.path / "docs/guide.md").read_bytes() == BASE["docs/guide.md"]
    assert tree.status()["hydration"]["hydrated_blobs"] >= 1


# --------------------------------------------------------------------- HEAD moves


def test_head_moved_by_checkout_shows_the_new_tree(project, tmp_path) -> None:
    tree, _ = project
    src = tree.path / "src"
    assert sorted(os.listdir(src)) == ["app.py", "lib"]
    tree.git("checkout", "-q", "-b", "topic")
    (src / "topic.py").write_bytes(b"topic\n")
    (src / "app.py").write_bytes(b"print('topic')\n")
    tree.git("add", "-A")
    tree.git("commit", "-q", "-m", "topic")
    tree.wait_for(lambda status: status["head"] == tree.git("rev-parse", "HEAD").stdout.strip())
    tree.git("checkout", "-q", "main")
    main = tree.git("rev-parse", "HEAD").stdout.strip()
    tree.wait_for(lambda status: status["head"] == main)
    assert sorted(os.listdir(src)) == ["app.py", "lib"]
    assert (src / "app.py").read_bytes() == BASE["src/app.py"]
    assert not (src / "topic.py").exists()
    tree.git("checkout", "-q", "topic")
    assert sorted(os.listdir(src)) == ["app.py", "lib", "topic.py"]
    assert (src / "app.py").read_bytes() == b"print('topic')\n"
    assert tree.git("status", "--porcelain").stdout == ""


def test_head_moved_without_writing_the_tree_reaches_the_kernel(project) -> None:
    """``git reset --soft`` moves HEAD and writes nothing: unchanged paths show the new base at once,
    though the kernel had their entries, attributes, pages and a negative entry cached."""
    tree, repo = project
    readme, docs = tree.path / "README.md", tree.path / "docs"
    assert readme.read_bytes() == BASE["README.md"]
    assert os.listdir(docs) == ["guide.md"]
    assert not (docs / "new.md").exists()
    with pytest.raises(OSError) as missing:
        os.stat(docs / "new.md")
    assert missing.value.errno == errno.ENOENT

    upstream = commit_files(
        repo,
        {"README.md": b"# project, rewritten upstream\n", "docs/new.md": b"new\n"},
        delete=["docs/guide.md"],
    )
    tree.git("fetch", "-q", "origin")
    tree.git("reset", "-q", "--soft", upstream)
    tree.wait_for(lambda status: status["head"] == upstream)

    def shows_new_base() -> None:
        assert readme.read_bytes() == b"# project, rewritten upstream\n"
        assert readme.stat().st_size == len(b"# project, rewritten upstream\n")
        assert os.listdir(docs) == ["new.md"]
        assert (docs / "new.md").read_bytes() == b"new\n"
        assert not (docs / "guide.md").exists()

    eventually(shows_new_base)
    listing = subprocess.run(["find", ".", "-type", "f"], cwd=tree.path, capture_output=True, text=True)
    assert sorted(listing.stdout.split()) == sorted(
        ["./.git", "./README.md", "./docs/new.md", "./src/app.py", "./src/lib/more.py", "./src/lib/util.py"]
    )


# --------------------------------------------------------------------- base changes


class _Tree:
    """A BaseTree from {path: oid} of files; directory ids derive from their content."""

    def __init__(self, files: dict[str, str]) -> None:
        self._children: dict[str, dict[str, BaseEntry]] = {"": {}}
        for path in sorted(files):
            parts = path.split("/")
            for depth in range(len(parts) - 1):
                self._children.setdefault("/".join(parts[: depth + 1]), {})
            self._children["/".join(parts[:-1])][parts[-1]] = BaseEntry(EntryKind.FILE, 0o100644, files[path])
        for directory in sorted(self._children, key=lambda d: -d.count("/") if d else 1):
            if directory:
                parent, _, name = directory.rpartition("/")
                oid = repr(sorted((n, e.oid) for n, e in self._children[directory].items()))
                self._children[parent][name] = BaseEntry(EntryKind.DIR, 0o040000, oid)

    def entry(self, path: str) -> BaseEntry | None:
        parent, _, name = path.rpartition("/")
        return (self._children.get(parent) or {}).get(name)

    def children(self, path: str) -> Mapping[str, BaseEntry] | None:
        return self._children.get(path)


def test_changed_paths_follow_known_changed_directories_only() -> None:
    old = _Tree({"a/x": "1", "a/y": "2", "b/deep/z": "3", "c/w": "4", "top": "5"})
    new = _Tree({"a/x": "1", "a/new": "6", "b/deep/z": "7", "c/w": "4", "top": "8"})
    everything = {"", "a", "b", "b/deep", "c"}
    assert list(changed_paths(old, new, everything)) == [
        "a",
        "b",
        "top",
        "b/deep",
        "b/deep/z",
        "a/new",
        "a/y",
    ]
    # The kernel knows neither b nor anything below it: nothing there can be cached.
    assert sorted(changed_paths(old, new, {"", "a"})) == ["a", "a/new", "a/y", "b", "top"]
    assert list(changed_paths(old, old, everything)) == []
