"""Overlay store and merged view: real SQLite and real data files in tmp dirs.

The base tree is a dict-backed implementation of the ``BaseTree`` protocol.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from artifactfs.objects import blob_id
from artifactfs.overlay.errors import OverlayError
from artifactfs.overlay.store import OverlayRow, OverlayStore
from artifactfs.overlay.view import Node, OverlayView
from artifactfs.snapshot.entries import BaseEntry, EntryKind

Spec = bytes | tuple[str, bytes]


class FakeBase:
    """A base tree built from ``{path: content}``.

    Content is ``bytes`` (regular file), ``("exec", bytes)``, ``(EntryKind.SYMLINK, target)``
    or ``(EntryKind.GITLINK, commit id)``; parent directories are implied.
    """

    def __init__(self, files: Mapping[str, Spec]) -> None:
        self.blobs: dict[str, bytes] = {}
        self._entries: dict[str, BaseEntry] = {}
        self._children: dict[str, dict[str, BaseEntry]] = {"": {}}
        for path, spec in files.items():
            kind, content = (EntryKind.FILE, spec) if isinstance(spec, bytes) else spec
            if kind == EntryKind.GITLINK:
                entry = BaseEntry(EntryKind.GITLINK, 0o160000, content.decode())
            else:
                oid = blob_id(content)
                self.blobs[oid] = content
                git_mode = {EntryKind.FILE: 0o100644, "exec": 0o100755, EntryKind.SYMLINK: 0o120000}[kind]
                entry_kind = EntryKind.SYMLINK if kind == EntryKind.SYMLINK else EntryKind.FILE
                entry = BaseEntry(entry_kind, git_mode, oid)
            self._add(path, entry)
        self._entries[""] = BaseEntry(EntryKind.DIR, 0o040000, self._tree_oid(""))

    def _add(self, path: str, entry: BaseEntry) -> None:
        parent, _, name = path.rpartition("/")
        if parent and parent not in self._entries:
            self._add(parent, BaseEntry(EntryKind.DIR, 0o040000, self._tree_oid(parent)))
            self._children[parent] = {}
        self._entries[path] = entry
        self._children[parent][name] = entry

    @staticmethod
    def _tree_oid(path: str) -> str:
        return hashlib.sha1(b"tree " + path.encode()).hexdigest()

    def entry(self, path: str) -> BaseEntry | None:
        return self._entries.get(path)

    def children(self, path: str) -> Mapping[str, BaseEntry] | None:
        return self._children.get(path)


BASE_FILES: dict[str, Spec] = {
    "README.md": b"readme\n",
    "tool.sh": ("exec", b"#!/bin/sh\n"),
    "link": (EntryKind.SYMLINK, b"README.md"),
    "vendor/lib": (EntryKind.GITLINK, b"c" * 40),
    "src/main.py": b"print('main')\n",
    "src/util.py": b"def util(): ...\n",
    "src/pkg/__init__.py": b"",
    "src/pkg/mod.py": b"x = 1\n",
    "docs/guide.md": b"guide\n",
}


def blob_oid_of(path: Path) -> str:
    return blob_id(path.read_bytes())


class Env:
    """A state directory, its store and view, and a place to hydrate base blobs."""

    def __init__(self, root: Path, base: FakeBase) -> None:
        self.root = root
        self.state = root / "state"
        self.base = base
        self.store = OverlayStore(self.state)
        self.view = OverlayView(self.store, base)

    def reopen(self) -> None:
        self.store.close()
        self.store = OverlayStore(self.state)
        self.view = OverlayView(self.store, self.view.base)

    def hydrate(self, oid: str) -> io.BytesIO:
        return io.BytesIO(self.base.blobs[oid])

    def write(self, path: str, content: bytes) -> Node:
        """What the FUSE layer does for open(O_WRONLY|O_TRUNC) + write."""
        node = self.view.lookup(path)
        if node is None:
            node = self.view.create_file(path, 0o644)
        elif node.data_path is None:
            node = self.view.copy_up(path, None)
        assert node.data_path is not None
        node.data_path.write_bytes(content)
        self.view.note_modified(path)
        return node

    def read(self, path: str) -> bytes:
        node = self.view.lookup(path)
        assert node is not None and node.kind == EntryKind.FILE
        if node.data_path is not None:
            return node.data_path.read_bytes()
        assert node.base_oid is not None
        return self.base.blobs[node.base_oid]

    def names(self, path: str) -> list[str]:
        return [name for name, _ in self.view.list_dir(path)]

    def data_files(self) -> set[str]:
        return set(os.listdir(self.store.data_dir))

    def snapshot(self, path: str = "") -> dict[str, tuple[str, int, bytes | None]]:
        """Everything visible below ``path``: kind, mode and content/target."""
        result: dict[str, tuple[str, int, bytes | None]] = {}
        for _, node in self.view.list_dir(path):
            if node.kind == EntryKind.FILE:
                result[node.path] = (EntryKind.FILE, node.mode, self.read(node.path))
            elif node.kind == EntryKind.SYMLINK:
                target = node.symlink_target
                if target is None:
                    assert node.base_oid is not None
                    target = self.base.blobs.get(node.base_oid, b"?")
                result[node.path] = (EntryKind.SYMLINK, node.mode, target)
            else:
                result[node.path] = (node.kind, node.mode, None)
                if node.kind == EntryKind.DIR:
                    result.update(self.snapshot(node.path))
        return result


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    environment = Env(tmp_path, FakeBase(BASE_FILES))
    yield environment
    environment.store.close()


def raises_errno(code: int) -> pytest.RaisesExc[OverlayError]:
    return pytest.raises(OverlayError, check=lambda error: error.errno == code)


# -- reading the base -----------------------------------------------------------


def test_base_entries_are_presented_with_posix_modes(env: Env) -> None:
    readme = env.view.lookup("README.md")
    assert readme is not None
    assert (readme.kind, readme.mode, readme.in_overlay, readme.mtime_ns) == (
        EntryKind.FILE,
        stat.S_IFREG | 0o644,
        False,
        None,
    )
    assert readme.base_oid == blob_id(b"readme\n")
    tool = env.view.lookup("tool.sh")
    assert tool is not None and tool.mode == stat.S_IFREG | 0o755
    link = env.view.lookup("link")
    assert link is not None and (link.kind, link.mode) == (EntryKind.SYMLINK, stat.S_IFLNK | 0o777)
    submodule = env.view.lookup("vendor/lib")
    assert submodule is not None and (submodule.kind, submodule.mode) == (
        EntryKind.GITLINK,
        stat.S_IFDIR | 0o755,
    )
    root = env.view.lookup("")
    assert root is not None and root.kind == EntryKind.DIR
    assert env.view.lookup("missing") is None
    assert env.view.lookup("README.md/child") is None
    assert env.view.lookup("vendor/lib/inside") is None
    assert env.names("") == ["README.md", "docs", "link", "src", "tool.sh", "vendor"]
    assert env.view.list_dir("vendor/lib") == []
    with raises_errno(errno.ENOTDIR):
        env.view.list_dir("README.md")
    with raises_errno(errno.ENOENT):
        env.view.list_dir("nope")


# -- creating --------------------------------------------------------------------


def test_create_file_makes_an_empty_writable_data_file(env: Env) -> None:
    node = env.view.create_file("src/new.py", 0o100640)
    assert node.kind == EntryKind.FILE and node.mode == stat.S_IFREG | 0o640 and node.in_overlay
    assert node.data_path is not None and node.data_path.read_bytes() == b""
    assert node.mtime_ns == node.data_path.stat().st_mtime_ns
    assert "new.py" in env.names("src")
    with raises_errno(errno.EEXIST):
        env.view.create_file("src/new.py", 0o644)
    with raises_errno(errno.EEXIST):
        env.view.create_file("README.md", 0o644)
    with raises_errno(errno.ENOENT):
        env.view.create_file("absent/x", 0o644)
    with raises_errno(errno.ENOTDIR):
        env.view.create_file("README.md/x", 0o644)


def test_mkdir_and_symlink(env: Env) -> None:
    directory = env.view.mkdir("src/newdir", 0o750)
    assert directory.kind == EntryKind.DIR and directory.mode == stat.S_IFDIR | 0o750
    assert env.view.list_dir("src/newdir") == []
    env.view.symlink("src/newdir/up", b"../main.py")
    link = env.view.lookup("src/newdir/up")
    assert link is not None and link.symlink_target == b"../main.py" and link.mode == stat.S_IFLNK | 0o777
    with raises_errno(errno.EEXIST):
        env.view.mkdir("src", 0o755)
    with raises_errno(errno.EEXIST):
        env.view.symlink("link", b"x")
    with raises_errno(errno.ENOENT):
        env.view.symlink("empty", b"")


def test_copy_up_copies_the_hydrated_blob(env: Env) -> None:
    base_node = env.view.lookup("src/main.py")
    assert base_node is not None and base_node.base_oid is not None
    node = env.view.copy_up("src/main.py", env.hydrate(base_node.base_oid))
    assert node.data_path is not None and node.data_path.read_bytes() == b"print('main')\n"
    assert node.base_oid is None and node.in_overlay
    again = env.view.copy_up("src/main.py", None)
    assert again.data_path == node.data_path and again.data_path.read_bytes() == b"print('main')\n"
    truncated = env.view.copy_up("tool.sh", None)
    assert truncated.data_path is not None and truncated.data_path.read_bytes() == b""
    assert truncated.mode == stat.S_IFREG | 0o755
    with raises_errno(errno.EISDIR):
        env.view.copy_up("src", None)
    with raises_errno(errno.EINVAL):
        env.view.copy_up("link", None)


# -- removing --------------------------------------------------------------------


def test_unlink_base_file_leaves_a_whiteout(env: Env) -> None:
    env.view.unlink("src/util.py")
    assert env.view.lookup("src/util.py") is None
    assert env.names("src") == ["main.py", "pkg"]
    assert env.store.get("src/util.py") is not None  # the whiteout row
    env.view.unlink("link")
    assert env.view.lookup("link") is None
    with raises_errno(errno.ENOENT):
        env.view.unlink("src/util.py")
    with raises_errno(errno.EISDIR):
        env.view.unlink("src")
    created = env.view.create_file("src/util.py", 0o644)
    assert created.data_path is not None and env.read("src/util.py") == b""


def test_unlink_overlay_file_keeps_open_descriptors_readable(env: Env) -> None:
    node = env.write("scratch.txt", b"still here")
    assert node.data_path is not None
    with node.data_path.open("rb") as handle:
        env.view.unlink("scratch.txt")
        assert handle.read() == b"still here"
    assert not node.data_path.exists()
    assert env.store.get("scratch.txt") is None  # nothing in the base: no whiteout needed
    assert env.data_files() == set()


def test_rmdir_then_mkdir_hides_old_base_children(env: Env) -> None:
    with raises_errno(errno.ENOTEMPTY):
        env.view.rmdir("src/pkg")
    with raises_errno(errno.ENOTDIR):
        env.view.rmdir("README.md")
    with raises_errno(errno.EBUSY):
        env.view.rmdir("")
    env.view.unlink("src/pkg/__init__.py")
    env.view.unlink("src/pkg/mod.py")
    env.view.rmdir("src/pkg")
    assert env.view.lookup("src/pkg") is None
    assert env.names("src") == ["main.py", "util.py"]
    env.view.mkdir("src/pkg", 0o755)
    assert env.view.list_dir("src/pkg") == []
    assert env.view.lookup("src/pkg/mod.py") is None
    env.write("src/pkg/fresh.py", b"new")
    assert env.names("src/pkg") == ["fresh.py"]
    env.view.rmdir("vendor/lib")
    assert env.names("vendor") == []


def test_a_submodule_placeholder_takes_a_checkout_and_its_gitfile(env: Env) -> None:
    with raises_errno(errno.EPERM):
        env.view.create_file("src/.git", 0o644)  # only directly inside a submodule
    with raises_errno(errno.EPERM):
        env.view.mkdir("vendor/lib/.git", 0o755)  # a gitfile, never a directory
    with raises_errno(errno.EPERM):
        env.view.create_file("vendor/lib/.GIT", 0o644)  # the exact name only
    env.write("vendor/lib/.git", b"gitdir: ../../.git/modules/lib\n")
    env.write("vendor/lib/lib.c", b"int x;\n")
    node = env.view.lookup("vendor/lib")
    assert node is not None and node.kind == "dir"
    assert env.names("vendor/lib") == [".git", "lib.c"]
    assert env.read("vendor/lib/.git") == b"gitdir: ../../.git/modules/lib\n"
    env.view.rename("vendor/lib/lib.c", "vendor/lib/.git")  # git's lockfile-then-rename
    assert env.names("vendor/lib") == [".git"]
    env.view.reconcile(env.base, blob_oid_of)  # the checkout survives a HEAD move
    env.reopen()
    assert env.read("vendor/lib/.git") == b"int x;\n"


# -- metadata --------------------------------------------------------------------


def test_chmod_base_file_keeps_base_content(env: Env) -> None:
    node = env.view.chmod("README.md", 0o600)
    assert node.mode == stat.S_IFREG | 0o600 and node.in_overlay
    assert node.base_oid == blob_id(b"readme\n") and node.data_path is None
    assert env.data_files() == set()
    looked_up = env.view.lookup("README.md")
    assert looked_up == node
    directory = env.view.chmod("src", 0o700)
    assert directory.mode == stat.S_IFDIR | 0o700
    assert env.names("src") == ["main.py", "pkg", "util.py"]
    assert env.view.chmod("link", 0o600).mode == stat.S_IFLNK | 0o777
    copied = env.view.copy_up("README.md", env.hydrate(node.base_oid))
    assert copied.mode == stat.S_IFREG | 0o600 and env.read("README.md") == b"readme\n"


def test_set_mtime(env: Env) -> None:
    env.view.set_mtime("README.md", 1_000_000_000)
    node = env.view.lookup("README.md")
    assert node is not None and node.mtime_ns == 1_000_000_000 and node.data_path is None
    env.view.set_mtime("src", 2_000_000_000)
    directory = env.view.lookup("src")
    assert directory is not None and directory.mtime_ns == 2_000_000_000
    assert env.names("src") == ["main.py", "pkg", "util.py"]
    written = env.write("notes.txt", b"n")
    env.view.set_mtime("notes.txt", 3_000_000_000)
    assert written.data_path is not None and written.data_path.stat().st_mtime_ns == 3_000_000_000
    after = env.view.lookup("notes.txt")
    assert after is not None and after.mtime_ns == 3_000_000_000
    copied = env.view.copy_up("README.md", None)
    assert copied.mtime_ns == 1_000_000_000


def test_creating_an_entry_updates_the_parent_mtime(env: Env) -> None:
    before = env.view.lookup("docs")
    assert before is not None and before.mtime_ns is None
    env.write("docs/new.md", b"x")
    after = env.view.lookup("docs")
    assert after is not None and after.mtime_ns is not None and after.mode == stat.S_IFDIR | 0o755


# -- names -----------------------------------------------------------------------


@pytest.mark.parametrize("name", [".git", ".GIT", ".Git", "src/.gIt", "docs/.git/x", ".git ", "git~1"])
def test_git_directory_names_are_refused(env: Env, name: str) -> None:
    with raises_errno(errno.EPERM):
        env.view.create_file(name, 0o644)
    with raises_errno(errno.EPERM):
        env.view.mkdir(name, 0o755)
    with raises_errno(errno.EPERM):
        env.view.symlink(name, b"target")
    with raises_errno(errno.EPERM):
        env.view.rename("README.md", name)
    assert env.view.lookup("README.md") is not None


def test_names_that_are_not_utf8_round_trip(env: Env) -> None:
    name = os.fsdecode(b"caf\xe9.txt")
    env.write(name, b"latin-1 name")
    env.reopen()
    assert name in env.names("")
    assert env.read(name) == b"latin-1 name"


@pytest.mark.parametrize("name", ["a\0b", ".", "..", "src/..", "a//b", ""])
def test_malformed_names_are_refused(env: Env, name: str) -> None:
    with pytest.raises(OverlayError) as caught:
        env.view.mkdir(name, 0o755)
    assert caught.value.errno in (errno.EINVAL, errno.EBUSY)
    assert env.names("") == ["README.md", "docs", "link", "src", "tool.sh", "vendor"]


# -- renaming --------------------------------------------------------------------


def test_rename_base_file_moves_metadata_only(env: Env) -> None:
    env.view.rename("README.md", "docs/README.md")
    assert env.view.lookup("README.md") is None
    moved = env.view.lookup("docs/README.md")
    assert moved is not None and moved.in_overlay and moved.data_path is None
    assert env.read("docs/README.md") == b"readme\n"
    assert env.data_files() == set()


def test_rename_overlay_file_keeps_its_data_file(env: Env) -> None:
    node = env.write("draft.txt", b"draft")
    env.view.rename("draft.txt", "src/final.txt")
    moved = env.view.lookup("src/final.txt")
    assert moved is not None and moved.data_path == node.data_path
    assert env.read("src/final.txt") == b"draft"
    assert env.store.get("draft.txt") is None  # not in the base: no whiteout


def test_rename_directory_with_base_descendants(env: Env) -> None:
    env.write("src/pkg/mod.py", b"x = 2\n")
    env.view.unlink("src/util.py")
    env.view.chmod("src/main.py", 0o700)
    before = env.snapshot("src")
    data_before = env.data_files()
    env.view.rename("src", "lib")
    assert env.view.lookup("src") is None and "src" not in env.names("")
    after = env.snapshot("lib")
    assert after == {"lib" + path[len("src") :]: value for path, value in before.items()}
    assert env.view.lookup("lib/util.py") is None
    assert env.data_files() == data_before  # nothing copied, nothing lost
    moved_dir = env.store.get("lib")
    assert moved_dir is not None and moved_dir.opaque
    # the moved tree no longer depends on the base: a new base without src changes nothing
    env.view.set_base(FakeBase({"README.md": b"readme\n"}))
    assert env.snapshot("lib") == after


def test_rename_directory_into_itself_is_refused(env: Env) -> None:
    with raises_errno(errno.EINVAL):
        env.view.rename("src", "src/pkg/inner")
    with raises_errno(errno.EBUSY):
        env.view.rename("", "x")
    with raises_errno(errno.ENOENT):
        env.view.rename("absent", "x")
    with raises_errno(errno.ENOENT):
        env.view.rename("README.md", "absent/x")


def test_rename_over_existing_targets(env: Env) -> None:
    victim = env.write("docs/old.md", b"old")
    env.write("docs/new.md", b"new")
    env.view.rename("docs/new.md", "docs/old.md")
    assert env.read("docs/old.md") == b"new" and env.view.lookup("docs/new.md") is None
    assert victim.data_path is not None and not victim.data_path.exists()

    env.view.rename("docs/old.md", "README.md")  # over a base file
    assert env.read("README.md") == b"new"

    with raises_errno(errno.EISDIR):
        env.view.rename("README.md", "docs")
    with raises_errno(errno.ENOTDIR):
        env.view.rename("docs", "tool.sh")
    with raises_errno(errno.ENOTEMPTY):
        env.view.rename("docs", "src")
    with raises_errno(errno.EEXIST):
        env.view.rename("README.md", "tool.sh", noreplace=True)
    with raises_errno(errno.EINVAL):
        env.view.rename("README.md", "tool.sh", noreplace=True, exchange=True)

    env.view.unlink("src/pkg/__init__.py")
    env.view.unlink("src/pkg/mod.py")  # src/pkg is now an empty base directory
    env.view.rename("docs", "src/pkg")
    assert env.names("src/pkg") == ["guide.md"]
    assert env.read("src/pkg/guide.md") == b"guide\n"
    assert env.view.lookup("docs") is None


def test_rename_exchange_swaps_two_entries(env: Env) -> None:
    env.write("docs/guide.md", b"edited guide\n")
    env.view.rename("docs", "src", exchange=True)
    assert env.names("src") == ["guide.md"]
    assert env.read("src/guide.md") == b"edited guide\n"
    assert env.names("docs") == ["main.py", "pkg", "util.py"]
    assert env.read("docs/pkg/mod.py") == b"x = 1\n"
    env.view.rename("README.md", "tool.sh", exchange=True)
    assert env.read("tool.sh") == b"readme\n" and env.read("README.md") == b"#!/bin/sh\n"
    with raises_errno(errno.ENOENT):
        env.view.rename("README.md", "absent", exchange=True)


def test_rename_gitlink_keeps_it_a_gitlink(env: Env) -> None:
    env.view.rename("vendor", "third_party")
    moved = env.view.lookup("third_party/lib")
    assert moved is not None and moved.kind == EntryKind.GITLINK
    row = env.store.get("third_party/lib")
    assert row is not None and row.base_oid == "c" * 40


# -- persistence -----------------------------------------------------------------


def test_overlay_survives_reopening(env: Env) -> None:
    env.write("src/main.py", b"changed\n")
    env.view.unlink("docs/guide.md")
    env.view.mkdir("new", 0o700)
    env.view.symlink("new/link", b"../README.md")
    env.view.chmod("tool.sh", 0o700)
    env.view.rename("src/pkg", "pkg2")
    before = env.snapshot()
    env.reopen()
    assert env.snapshot() == before
    assert env.store.removed_at_startup == []


def test_startup_removes_only_unreferenced_data_files(env: Env) -> None:
    kept = env.write("kept.txt", b"keep me")
    stray = env.store.data_dir / ("ab" * 16)
    stray.write_bytes(b"left over by a crash")
    env.reopen()
    assert not stray.exists()
    assert env.store.removed_at_startup == ["ab" * 16]
    assert kept.data_path is not None and kept.data_path.read_bytes() == b"keep me"
    assert env.read("kept.txt") == b"keep me"


def test_synced_data_survives_kill_9(tmp_path: Path) -> None:
    state = tmp_path / "state"
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from artifactfs.overlay.store import OverlayRow, OverlayStore
        from artifactfs.overlay.view import OverlayView
        from artifactfs.snapshot.entries import BaseEntry, EntryKind

        class Empty:
            def entry(self, path):
                return BaseEntry(EntryKind.DIR, 0o040000, "0" * 40) if path == "" else None
            def children(self, path):
                return {{}} if path == "" else None

        view = OverlayView(OverlayStore(Path({str(state)!r})), Empty())
        node = view.create_file("saved.txt", 0o644)
        fd = os.open(node.data_path, os.O_WRONLY)
        os.write(fd, b"durable")
        view.sync("saved.txt")
        view.mkdir("made", 0o755)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent.parent, check=False)
    assert result.returncode == -9
    with OverlayStore(state) as store:
        view = OverlayView(store, FakeBase({}))
        node = view.lookup("saved.txt")
        assert node is not None and node.data_path is not None
        assert node.data_path.read_bytes() == b"durable"
        made = view.lookup("made")
        assert made is not None and made.kind == EntryKind.DIR


def test_store_batch_rolls_back_as_a_whole(env: Env) -> None:
    data_id = env.store.new_data_file(None)
    with pytest.raises(RuntimeError), env.store.batch() as batch:
        batch.put(OverlayRow("a.txt", EntryKind.FILE, stat.S_IFREG | 0o644, data_id=data_id))
        batch.put(OverlayRow("b", EntryKind.WHITEOUT))
        raise RuntimeError("interrupted")
    assert env.store.all_rows() == []
    assert env.view.changed_since(0) == (0, [])
    with env.store.batch() as batch:
        batch.put(OverlayRow("a.txt", EntryKind.FILE, stat.S_IFREG | 0o644, data_id=data_id))
    with env.store.batch() as batch:  # a move: the data file is still referenced afterwards
        batch.delete("a.txt")
        batch.put(OverlayRow("c.txt", EntryKind.FILE, stat.S_IFREG | 0o644, data_id=data_id))
    assert env.data_files() == {data_id}
    with pytest.raises(ValueError):
        OverlayRow("d.txt", EntryKind.FILE, stat.S_IFREG | 0o644)


# -- reconciliation --------------------------------------------------------------


def test_reconcile_after_commit_releases_everything_equal(env: Env) -> None:
    env.write("src/main.py", b"print('v2')\n")
    env.write("src/new.py", b"new\n")
    env.view.unlink("docs/guide.md")
    env.view.rmdir("docs")
    env.view.chmod("README.md", 0o755)
    env.view.mkdir("tests", 0o755)
    env.write("tests/test_x.py", b"def test(): ...\n")
    env.view.symlink("latest", b"src/new.py")
    before = env.snapshot()
    committed = dict(BASE_FILES)
    committed.pop("docs/guide.md")
    committed.update(
        {
            "src/main.py": b"print('v2')\n",
            "src/new.py": b"new\n",
            "README.md": ("exec", b"readme\n"),
            "tests/test_x.py": b"def test(): ...\n",
            "latest": (EntryKind.SYMLINK, b"src/new.py"),
        }
    )
    new_base = FakeBase(committed)
    env.base = new_base
    mtimes = {path: env.view.lookup(path).mtime_ns for path in ("src/main.py", "src/new.py")}  # type: ignore[union-attr]
    report = env.view.reconcile(new_base, blob_oid_of)
    # Written files keep their mtime as metadata-only rows; everything else equal is gone.
    rows = env.store.all_rows()
    assert {row.path for row in rows} == {"src/main.py", "src/new.py", "tests/test_x.py"}
    assert all(row.data_id is None and row.mtime_ns is not None for row in rows)
    assert report.kept == 0 and report.converted == 3 and report.dropped > 0
    assert env.data_files() == set()
    assert env.snapshot() == before
    assert {path: env.view.lookup(path).mtime_ns for path in mtimes} == mtimes  # type: ignore[union-attr]
    env.view.reconcile(new_base, blob_oid_of)  # a second publish changes nothing more
    assert env.store.all_rows() == rows


def test_reconcile_keeps_diverged_entries(env: Env) -> None:
    env.write("src/main.py", b"uncommitted edit\n")
    env.write("src/util.py", b"committed edit\n")
    env.view.unlink("docs/guide.md")  # deleted but not committed
    env.view.chmod("tool.sh", 0o644)  # exec bit dropped but not committed
    env.write("scratch.txt", b"untracked\n")
    before = env.snapshot()
    committed = dict(BASE_FILES)
    committed["src/util.py"] = b"committed edit\n"
    new_base = FakeBase(committed)
    env.base = new_base
    report = env.view.reconcile(new_base, blob_oid_of)
    assert env.snapshot() == before
    remaining = {row.path for row in env.store.all_rows()}
    assert {"src/main.py", "docs/guide.md", "tool.sh", "scratch.txt"} <= remaining
    util = env.store.get("src/util.py")  # committed: no data file, its mtime kept
    assert util is not None and util.data_id is None and util.mtime_ns is not None
    assert report.converted == 1 and report.kept == len(remaining) - 1
    assert len(env.data_files()) == 2  # main.py and scratch.txt


def test_reconcile_converts_equal_content_with_a_different_mode(env: Env) -> None:
    env.write("README.md", b"readme v2\n")
    env.view.chmod("README.md", 0o600)
    new_base = FakeBase({**BASE_FILES, "README.md": b"readme v2\n"})
    env.base = new_base
    report = env.view.reconcile(new_base, blob_oid_of)
    assert report.converted == 1
    node = env.view.lookup("README.md")
    assert node is not None and node.mode == stat.S_IFREG | 0o600
    assert node.data_path is None and node.base_oid == blob_id(b"readme v2\n")
    assert env.data_files() == set()


def test_reconcile_never_touches_busy_paths(env: Env) -> None:
    node = env.write("src/main.py", b"being written\n")
    new_base = FakeBase({**BASE_FILES, "src/main.py": b"being written\n"})
    report = env.view.reconcile(new_base, blob_oid_of, busy={"src/main.py"})
    assert (report.dropped, report.kept) == (0, 1)
    after = env.view.lookup("src/main.py")
    assert after is not None and after.data_path == node.data_path
    assert node.data_path is not None and node.data_path.read_bytes() == b"being written\n"


def test_reconcile_recreates_directories_the_new_base_removed(env: Env) -> None:
    env.write("docs/notes.md", b"mine\n")
    without_docs = {path: spec for path, spec in BASE_FILES.items() if not path.startswith("docs/")}
    new_base = FakeBase(without_docs)
    env.base = new_base
    report = env.view.reconcile(new_base, blob_oid_of)
    assert report.repaired == 0  # the docs row written as the parent's mtime already exists
    assert env.names("docs") == ["notes.md"]
    assert env.read("docs/notes.md") == b"mine\n"

    env.write("src/pkg/mod.py", b"edited\n")  # copy-up: no row for src or src/pkg
    assert env.store.get("src/pkg") is None
    without_src = {path: spec for path, spec in without_docs.items() if not path.startswith("src/")}
    newer = FakeBase(without_src)
    env.base = newer
    report = env.view.reconcile(newer, blob_oid_of)
    assert report.repaired == 2
    assert env.names("src") == ["pkg"] and env.names("src/pkg") == ["mod.py"]
    assert env.read("src/pkg/mod.py") == b"edited\n"


def test_reconcile_opaque_directory_needs_every_base_child_covered(env: Env) -> None:
    original = env.snapshot()
    for name in ("__init__.py", "mod.py"):
        env.view.unlink(f"src/pkg/{name}")
    env.view.rmdir("src/pkg")
    env.view.mkdir("src/pkg", 0o755)
    env.write("src/pkg/mod.py", b"x = 1\n")  # same content as the base's
    before = env.snapshot()
    report = env.view.reconcile(env.base, blob_oid_of)  # base still has __init__.py
    assert env.snapshot() == before
    assert env.view.lookup("src/pkg/__init__.py") is None
    assert report.kept >= 2  # the opaque dir and mod.py under it

    env.write("src/pkg/__init__.py", b"")
    env.view.reconcile(env.base, blob_oid_of)
    assert {row.path for row in env.store.all_rows()} == {"src/pkg/__init__.py", "src/pkg/mod.py"}
    assert env.data_files() == set()
    assert env.snapshot() == original


@pytest.mark.slow
def test_reconcile_handles_thousands_of_rows(env: Env) -> None:
    files: dict[str, Spec] = dict(BASE_FILES)
    env.view.mkdir("gen", 0o755)
    for index in range(30):
        env.view.mkdir(f"gen/d{index}", 0o755)
    for index in range(2000):
        path = f"gen/d{index % 30}/f{index}.txt"
        env.write(path, b"%d\n" % index)
        files[path] = b"%d\n" % index
    new_base = FakeBase(files)
    report = env.view.reconcile(new_base, blob_oid_of)
    assert report.kept == 0 and report.converted == 2000 and env.data_files() == set()
    assert {row.kind for row in env.store.all_rows() if row.path.startswith("gen/")} == {"file"}


# -- journal ---------------------------------------------------------------------


def test_changed_since_reports_touched_paths(env: Env) -> None:
    start, paths = env.view.changed_since(0)
    assert paths == []
    env.write("docs/a.md", b"a")
    env.view.rename("src/util.py", "src/helpers.py")
    middle, paths = env.view.changed_since(start)
    assert middle > start
    assert {"docs/a.md", "docs", "src/util.py", "src/helpers.py", "src"} <= set(paths)
    env.view.unlink("docs/a.md")
    latest, paths = env.view.changed_since(middle)
    assert latest > middle and "docs/a.md" in paths and "src/helpers.py" not in paths
    assert env.view.changed_since(latest) == (latest, [])
    env.reopen()
    assert env.view.changed_since(latest) == (latest, [])


# --------------------------------------------------------------------- POSIX metadata


def count_queries(env: Env, action: Callable[[], object]) -> int:
    statements: list[str] = []
    env.store._conn.set_trace_callback(statements.append)
    try:
        action()
    finally:
        env.store._conn.set_trace_callback(None)
    return len(statements)


def test_lookups_cost_one_query_and_none_without_rows(env: Env) -> None:
    """At most the resolve query: link and subdirectory counts come from memory, and a path with no
    row on it or above it is resolved without SQLite at all."""
    env.write("docs/new.md", b"new\n")  # rows elsewhere (docs, the root) must not make src cost more
    for path in ("src/main.py", "src", "src/pkg", "README.md", "docs/new.md"):
        prefixes = ["", *("/".join(path.split("/")[: depth + 1]) for depth in range(path.count("/") + 1))]
        with_rows = any(prefix in env.store.rows_index for prefix in prefixes)
        assert count_queries(env, functools.partial(env.view.lookup, path)) == int(with_rows), path
    assert (
        "docs/new.md" in env.store.rows_index and "" not in env.store.rows_index
    )  # src resolves from memory
    assert env.view.lookup("src").nlink == 3  # type: ignore[union-attr]
    assert env.view.lookup("").nlink == 2 + 3  # type: ignore[union-attr]  # src, docs, vendor


def test_hard_links_share_content_and_metadata(env: Env) -> None:
    env.write("a.txt", b"shared\n")
    env.view.link("a.txt", "src/b.txt")
    env.view.set_attributes("src/b.txt", mode=0o600, uid=1234)
    first, second = env.view.lookup("a.txt"), env.view.lookup("src/b.txt")
    assert first is not None and second is not None
    assert (first.nlink, first.mode & 0o777, first.uid) == (2, 0o600, 1234)
    assert first.link_id == second.link_id and first.data_path == second.data_path
    env.view.set_xattr("a.txt", b"user.k", b"v")
    assert env.view.xattrs("src/b.txt") == {b"user.k": b"v"}
    env.reopen()
    assert env.view.lookup("a.txt").nlink == 2  # type: ignore[union-attr]
    env.view.unlink("a.txt")
    remaining = env.view.lookup("src/b.txt")
    assert remaining is not None and remaining.nlink == 1 and env.read("src/b.txt") == b"shared\n"
    with raises_errno(errno.EINVAL):
        env.view.link("README.md", "copy")  # a base file is copied up by the FUSE layer first


def test_reconcile_keeps_links_owners_and_xattrs_but_drops_the_owners_own_rows(env: Env) -> None:
    uid, gid = env.view.owner
    env.view.set_attributes("README.md", uid=uid, gid=gid)  # the base owner: nothing to keep
    env.view.set_attributes("src/main.py", uid=uid + 1)
    env.view.set_xattr("src/util.py", b"user.k", b"v")
    env.write("linked", b"readme\n")
    env.view.link("linked", "other")
    report = env.view.reconcile(env.base, blob_oid_of)
    kept = {row.path for row in env.store.all_rows() if row.kind != EntryKind.DIR}
    assert "README.md" not in kept
    assert {"src/main.py", "src/util.py", "linked", "other"} <= kept
    assert report.dropped >= 1


def test_names_longer_than_255_bytes_are_refused(env: Env) -> None:
    env.view.create_file("é" * 127, 0o644)  # 254 bytes
    with raises_errno(errno.ENAMETOOLONG):
        env.view.create_file("é" * 128, 0o644)
    with raises_errno(errno.ENAMETOOLONG):
        env.view.mkdir("src/" + "x" * 256, 0o755)
