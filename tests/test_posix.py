"""POSIX fidelity of the overlay on a real mount, as root and as a second user (``--allow-other``).

Each scenario runs commands inside the mount through ``/usr/bin/python3``,
either as root or, through ``setpriv``, as an unprivileged user the fixture
creates. The kernel checks permissions (``default_permissions``) against the
owners and modes the daemon reports, so these tests check both what is stored
and that other users are allowed and refused exactly as on a local disk.
Survival across a remount is checked where the overlay stores something new.
The schema migration of an existing state database has unit tests at the end.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import sqlite3
import stat
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from artifactfs.overlay.store import OverlayRow, OverlayStore
from artifactfs.snapshot.entries import EntryKind
from artifactfs.testing import FileSpec, make_bare_repo
from artifactfs.testing.mounts import MountedTree

TESTER = "artifactfs-tester"
BASE_MTIME = 1_000_000_000
PYTHON = "/usr/bin/python3"
FILES: dict[str, bytes | FileSpec] = {
    "README.md": b"# readme\n",
    "src/main.c": b"int main(void) { return 0; }\n",
    "src/lib/util.c": b"int util;\n",
    "src/include/util.h": b"int util;\n",
    "bin/run.sh": FileSpec(b"#!/bin/sh\necho run\n", executable=True),
}


@dataclass(frozen=True)
class Actor:
    """Who runs a scenario: root, or the unprivileged tester through ``setpriv``."""

    name: str
    uid: int
    gid: int

    @property
    def prefix(self) -> list[str]:
        if self.uid == 0:
            return []
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]

    def run(self, cwd: Path, code: str, *, check: bool = True) -> Any:
        """Run python ``code`` in ``cwd``; it prints one JSON value, returned decoded."""
        result = subprocess.run(
            [*self.prefix, PYTHON, "-c", _PRELUDE + textwrap.dedent(code)],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"as {self.name}: {result.stderr.strip()}")
        return json.loads(result.stdout) if result.stdout.strip() else None


_PRELUDE = """
import errno, json, os, socket, stat, sys
def fails(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except OSError as error:
        return errno.errorcode[error.errno]
    return None
def info(path):
    st = os.lstat(path)
    return {"uid": st.st_uid, "gid": st.st_gid, "mode": st.st_mode, "nlink": st.st_nlink,
            "ino": st.st_ino, "size": st.st_size, "rdev": st.st_rdev,
            "atime": st.st_atime_ns, "mtime": st.st_mtime_ns, "ctime": st.st_ctime_ns}
"""


@pytest.fixture(scope="session")
def tester() -> Actor:
    """An unprivileged user of this machine, created if missing."""
    try:
        entry = pwd.getpwnam(TESTER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TESTER], check=True
        )
        entry = pwd.getpwnam(TESTER)
    assert entry.pw_uid != 0
    return Actor("user", entry.pw_uid, entry.pw_gid)


@pytest.fixture(params=["root", "user"])
def actor(request: pytest.FixtureRequest, tester: Actor) -> Actor:
    return Actor("root", 0, 0) if request.param == "root" else tester


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("posix") / "repo.git"
    make_bare_repo(path, FILES)
    return path


@pytest.fixture(scope="module")
def tree(repo: Path, tmp_path_factory: pytest.TempPathFactory, fuse: None) -> Iterator[MountedTree]:
    """One mount shared by the tests that only work in directories of their own."""
    scratch = tmp_path_factory.mktemp("shared")
    with MountedTree(str(repo), scratch / "mnt", scratch / "state", ["--allow-other"]) as mounted:
        yield mounted


@pytest.fixture
def own_tree(repo: Path, mounts: Callable[..., MountedTree]) -> MountedTree:
    """A mount of this test's own, for tests that change base entries."""
    return mounts(str(repo), "--allow-other")


@pytest.fixture
def work(tree: MountedTree, actor: Actor, request: pytest.FixtureRequest) -> Path:
    """A directory in the shared mount that root creates and chowns to ``actor``: they must be able
    to use it."""
    path = tree.path / re.sub(r"\W", "-", request.node.name)
    path.mkdir()
    os.chown(path, actor.uid, actor.gid)
    return path


def remount(tree: MountedTree) -> None:
    tree.unmount()
    tree.mount()


# --------------------------------------------------------------------- ownership


def test_base_tree_belongs_to_the_mounting_user(own_tree: MountedTree) -> None:
    for relative in ("", "README.md", "src", "src/lib/util.c", "bin/run.sh"):
        info = os.lstat(own_tree.path / relative)
        assert (info.st_uid, info.st_gid) == (os.getuid(), os.getgid()), relative


def test_uid_and_gid_options_own_the_base_tree(
    repo: Path, mounts: Callable[..., MountedTree], tester: Actor
) -> None:
    tree = mounts(str(repo), "--allow-other", "--uid", str(tester.uid), "--gid", str(tester.gid))
    info = os.lstat(tree.path / "src/main.c")
    assert (info.st_uid, info.st_gid) == (tester.uid, tester.gid)
    # The owner may write the tree, create in it and chmod it; nobody else may.
    result = tester.run(
        tree.path,
        """
        with open("src/main.c", "a") as stream:
            stream.write("// edited\\n")
        os.mkdir("src/new")
        os.chmod("README.md", 0o600)
        print(json.dumps([info("src/new"), info("README.md")]))
        """,
    )
    assert (result[0]["uid"], result[0]["gid"]) == (tester.uid, tester.gid)
    assert stat.S_IMODE(result[1]["mode"]) == 0o600
    assert (tree.path / "src/main.c").read_bytes().endswith(b"// edited\n")


def test_new_entries_belong_to_their_creator(tree: MountedTree, actor: Actor, work: Path) -> None:
    created = actor.run(
        work,
        """
        open("file", "w").close()
        os.mkdir("dir")
        os.symlink("file", "link")
        print(json.dumps({name: info(name) for name in ("file", "dir", "link")}))
        """,
    )
    for name, attributes in created.items():
        assert (attributes["uid"], attributes["gid"]) == (actor.uid, actor.gid), name


def test_chown_is_stored_and_survives_a_remount(own_tree: MountedTree, tester: Actor) -> None:
    os.chown(own_tree.path / "src", tester.uid, tester.gid)
    os.chown(own_tree.path / "README.md", tester.uid, tester.gid)
    os.lchown(own_tree.path / "bin", 0, tester.gid)
    # The new owner may create in the directory chowned to them and chmod the file.
    tester.run(own_tree.path, "open('src/mine.c', 'w').close(); os.chmod('README.md', 0o600)")
    refused = tester.run(
        own_tree.path,
        "print(json.dumps([fails(open, 'bin/theirs', 'w'), fails(os.chown, 'README.md', 0, 0)]))",
    )
    assert refused == ["EACCES", "EPERM"]
    remount(own_tree)
    assert (os.lstat(own_tree.path / "src").st_uid, os.lstat(own_tree.path / "src").st_gid) == (
        tester.uid,
        tester.gid,
    )
    readme = os.lstat(own_tree.path / "README.md")
    assert (readme.st_uid, stat.S_IMODE(readme.st_mode)) == (tester.uid, 0o600)
    assert os.lstat(own_tree.path / "src/mine.c").st_uid == tester.uid
    assert os.lstat(own_tree.path / "bin").st_gid == tester.gid
    # Content and the fixed base mtime are untouched: git still sees the file as clean.
    assert readme.st_mtime_ns == BASE_MTIME * 1_000_000_000
    assert own_tree.git("status", "--porcelain").stdout.splitlines() == ["?? src/mine.c"]


def test_setgid_directory_hands_down_its_group(actor: Actor, tester: Actor, work: Path) -> None:
    group = 0 if actor.uid != 0 else tester.gid  # a group the creator does not have by default
    os.chown(work, actor.uid, group)
    os.chmod(work, 0o2777)
    created = actor.run(
        work,
        """
        open("file", "w").close()
        os.mkdir("dir")
        print(json.dumps([info("file"), info("dir")]))
        """,
    )
    assert [attributes["gid"] for attributes in created] == [group, group]
    assert created[1]["mode"] & stat.S_ISGID
    assert not created[0]["mode"] & stat.S_ISGID


def test_sticky_directory_protects_other_users_files(tree: MountedTree, tester: Actor) -> None:
    shared = tree.path / "sticky"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o1777)
    (shared / "roots").write_text("root's\n")
    os.chmod(shared / "roots", 0o666)
    result = tester.run(
        shared,
        """
        open("mine", "w").close()
        print(json.dumps([fails(os.unlink, "roots"), fails(os.rename, "roots", "stolen"),
                          fails(os.unlink, "mine")]))
        """,
    )
    assert result == ["EPERM", "EPERM", None]
    assert (shared / "roots").exists()


def test_set_id_bits_are_cleared_on_write_and_chown(tree: MountedTree, tester: Actor) -> None:
    work = tree.path / "set-id"
    work.mkdir(mode=0o777)
    os.chmod(work, 0o777)
    program = work / "program"
    program.write_bytes(b"#!/bin/sh\n")
    os.chmod(program, 0o6777)
    tester.run(work, "open('program', 'a').write('echo changed\\n')")
    assert stat.S_IMODE(os.stat(program).st_mode) == 0o777
    os.chmod(program, 0o4755)
    os.chown(program, tester.uid, tester.gid)
    assert stat.S_IMODE(os.stat(program).st_mode) == 0o755
    assert os.stat(program).st_uid == tester.uid


# --------------------------------------------------------------------- special files


def test_fifos_and_sockets_for_everyone(tree: MountedTree, actor: Actor, work: Path) -> None:
    result = actor.run(
        work,
        """
        os.mkfifo("fifo", 0o640)
        server = socket.socket(socket.AF_UNIX)
        server.bind("sock")
        server.listen(1)
        client = socket.socket(socket.AF_UNIX)
        client.connect("sock")
        connection, _ = server.accept()
        client.sendall(b"ping")
        received = connection.recv(4).decode()
        pid = os.fork()
        if pid == 0:
            with open("fifo", "w") as writer:
                writer.write("through the fifo")
            os._exit(0)
        with open("fifo") as reader:
            piped = reader.read()
        os.waitpid(pid, 0)
        os.link("fifo", "fifo-link")
        device = fails(os.mknod, "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        print(json.dumps([info("fifo"), info("sock"), received, piped, device]))
        """,
    )
    fifo, sock, received, piped, device = result
    assert stat.S_ISFIFO(fifo["mode"]) and stat.S_IMODE(fifo["mode"]) == 0o640
    assert stat.S_ISSOCK(sock["mode"])
    assert fifo["uid"] == sock["uid"] == actor.uid
    assert (received, piped) == ("ping", "through the fifo")
    assert device == (None if actor.uid == 0 else "EPERM")
    remount(tree)
    fifo_after, link_after = os.lstat(work / "fifo"), os.lstat(work / "fifo-link")
    assert stat.S_ISFIFO(fifo_after.st_mode) and stat.S_IMODE(fifo_after.st_mode) == 0o640
    assert (fifo_after.st_ino, fifo_after.st_nlink) == (link_after.st_ino, 2)
    assert stat.S_ISSOCK(os.lstat(work / "sock").st_mode)
    if actor.uid == 0:
        null = os.lstat(work / "null")
        assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
        # FUSE mounts are nodev: the node is stored, but opening it is refused.
        with pytest.raises(PermissionError):
            open(work / "null", "rb")


# --------------------------------------------------------------------- hard links


def test_hard_links(tree: MountedTree, actor: Actor, work: Path) -> None:
    result = actor.run(
        work,
        """
        with open("first", "w") as stream:
            stream.write("shared content")
        os.link("first", "second")
        linked = [info("first"), info("second")]
        with open("second", "a") as stream:
            stream.write(" and more")
        os.chmod("first", 0o600)
        changed = info("second")
        handle = open("first")
        os.unlink("first")
        after_unlink = info("second")
        os.unlink("second")
        orphan = os.fstat(handle.fileno()).st_nlink
        content = handle.read()
        print(json.dumps([linked, changed, after_unlink, orphan, content]))
        """,
    )
    linked, changed, after_unlink, orphan, content = result
    assert [entry["nlink"] for entry in linked] == [2, 2]
    assert linked[0]["ino"] == linked[1]["ino"]
    assert stat.S_IMODE(changed["mode"]) == 0o600 and changed["size"] == len("shared content and more")
    assert after_unlink["nlink"] == 1 and after_unlink["ctime"] >= changed["ctime"]
    assert (orphan, content) == (0, "shared content and more")


def test_hard_link_to_a_base_file_copies_it_up(own_tree: MountedTree) -> None:
    os.link(own_tree.path / "src/main.c", own_tree.path / "main-link.c")
    with open(own_tree.path / "main-link.c", "a") as stream:
        stream.write("// via the link\n")
    expected = FILES["src/main.c"] + b"// via the link\n"  # type: ignore[operator]
    assert (own_tree.path / "src/main.c").read_bytes() == expected
    assert os.lstat(own_tree.path / "src/main.c").st_nlink == 2
    remount(own_tree)
    first, second = os.lstat(own_tree.path / "src/main.c"), os.lstat(own_tree.path / "main-link.c")
    assert (first.st_nlink, second.st_nlink) == (2, 2)
    assert first.st_ino == second.st_ino
    os.unlink(own_tree.path / "src/main.c")
    assert (own_tree.path / "main-link.c").read_bytes() == expected
    assert os.lstat(own_tree.path / "main-link.c").st_nlink == 1


# --------------------------------------------------------------------- extended attributes


def test_user_xattrs(tree: MountedTree, actor: Actor, work: Path) -> None:
    result = actor.run(
        work,
        """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        open("file", "w").close()
        os.setxattr("file", "user.colour", b"blue")
        os.setxattr("file", "user.empty", b"")
        errors = [fails(os.setxattr, "file", "user.colour", b"red", os.XATTR_CREATE),
                  fails(os.setxattr, "file", "user.missing", b"x", os.XATTR_REPLACE),
                  fails(os.getxattr, "file", "user.missing")]
        os.setxattr("file", "user.colour", b"green", os.XATTR_REPLACE)
        buffer = ctypes.create_string_buffer(2)
        small = libc.getxattr(b"file", b"user.colour", buffer, 2)
        errors.append(errno.errorcode[ctypes.get_errno()] if small < 0 else None)
        errors.append(fails(os.setxattr, "file", "trusted.secret", b"x"))
        listed = sorted(os.listxattr("file"))
        value = os.getxattr("file", "user.colour").decode()
        os.removexattr("file", "user.empty")
        errors.append(fails(os.removexattr, "file", "user.empty"))
        print(json.dumps([errors, listed, value, sorted(os.listxattr("file"))]))
        """,
    )
    errors, listed, value, remaining = result
    trusted = None if actor.uid == 0 else "EPERM"
    assert errors == ["EEXIST", "ENODATA", "ENODATA", "ERANGE", trusted, "ENODATA"]
    expected = ["user.colour", "user.empty"] + (["trusted.secret"] if actor.uid == 0 else [])
    assert listed == sorted(expected)
    assert value == "green"
    remount(tree)
    assert os.getxattr(work / "file", "user.colour") == b"green"
    assert sorted(os.listxattr(work / "file")) == sorted(name for name in expected if name != "user.empty")


def test_xattrs_on_base_entries_and_permissions(own_tree: MountedTree, tester: Actor) -> None:
    os.setxattr(own_tree.path / "README.md", "user.origin", b"base")
    os.setxattr(own_tree.path / "src", "security.label", b"tree")
    result = tester.run(
        own_tree.path,
        """
        print(json.dumps([os.getxattr("README.md", "user.origin").decode(),
                          fails(os.setxattr, "README.md", "user.origin", b"mine"),
                          fails(os.setxattr, "src", "security.label", b"mine"),
                          sorted(os.listxattr("src"))]))
        """,
    )
    assert result == ["base", "EACCES", "EPERM", ["security.label"]]
    assert os.lstat(own_tree.path / "README.md").st_mtime_ns == BASE_MTIME * 1_000_000_000


# --------------------------------------------------------------------- names and directories


def test_names_and_directory_links(tree: MountedTree, actor: Actor, work: Path) -> None:
    result = actor.run(
        work,
        """
        long = "n" * 256
        open("n" * 255, "w").close()
        errors = [fails(open, long, "w"), fails(os.mkdir, long), fails(os.lstat, long),
                  fails(os.symlink, "x", long), fails(os.rename, "n" * 255, long)]
        os.makedirs("a/b")
        os.mkdir("a/c")
        open("a/file", "w").close()
        import subprocess
        listing = subprocess.run(["ls", "-a", "a"], capture_output=True, text=True).stdout.split()
        links = {name: os.lstat(name).st_nlink for name in ("a", "a/b", ".", "../src", "../src/lib")}
        os.rmdir("a/c")
        links["a after rmdir"] = os.lstat("a").st_nlink
        print(json.dumps([errors, os.path.exists("n" * 255), listing, links]))
        """,
    )
    errors, created, listing, links = result
    assert errors == ["ENAMETOOLONG"] * 5
    assert created
    assert listing == [".", "..", "b", "c", "file"]
    assert links == {"a": 4, "a/b": 2, ".": 3, "../src": 4, "../src/lib": 2, "a after rmdir": 3}


# --------------------------------------------------------------------- times


def test_ctime_follows_every_metadata_change(tree: MountedTree, actor: Actor, work: Path) -> None:
    result = actor.run(
        work,
        """
        open("file", "w").close()
        os.utime("file", ns=(10**18, 10**18))
        before = info("file")
        steps = {}
        for step, change in (("chmod", lambda: os.chmod("file", 0o640)),
                             ("xattr", lambda: os.setxattr("file", "user.a", b"1")),
                             ("link", lambda: os.link("file", "other")),
                             ("rename", lambda: os.rename("file", "moved")),
                             ("chown", lambda: os.chown("moved", -1, os.getgid()))):
            change()
            after = info("moved" if step in ("rename", "chown") else "file")
            steps[step] = [after["ctime"] > before["ctime"], after["mtime"] == before["mtime"]]
            before = after
        print(json.dumps(steps))
        """,
    )
    assert result == {step: [True, True] for step in ("chmod", "xattr", "link", "rename", "chown")}


def test_utimensat_now_and_omit(tree: MountedTree, actor: Actor, work: Path) -> None:
    os.chmod(work, 0o777)
    # root's file, writable by everyone: setting both times to now needs write access only.
    (work / "shared").write_text("x")
    os.chmod(work / "shared", 0o666)
    os.utime(work / "shared", ns=(2 * 10**18, 10**18))
    result = actor.run(
        work,
        """
        import subprocess
        def times(name):
            st = os.stat(name)
            return [st.st_atime_ns, st.st_mtime_ns]
        with open("own", "w"):
            pass
        os.utime("own", ns=(2 * 10**18, 10**18))
        start = times("own")
        subprocess.run(["touch", "-a", "own"], check=True)   # atime now, mtime UTIME_OMIT
        atime_only = times("own")
        subprocess.run(["touch", "-m", "own"], check=True)   # mtime now, atime UTIME_OMIT
        mtime_only = times("own")
        subprocess.run(["touch", "shared"], check=True)      # both UTIME_NOW
        shared = times("shared")
        refused = [fails(os.utime, "shared", ns=(5, 5)),
                   subprocess.run(["touch", "-a", "shared"], capture_output=True).returncode]
        print(json.dumps([start, atime_only, mtime_only, shared, refused]))
        """,
    )
    start, atime_only, mtime_only, shared, refused = result
    assert start == [2 * 10**18, 10**18]
    assert atime_only[0] != start[0] and atime_only[1] == start[1]
    assert mtime_only[0] == atime_only[0] and mtime_only[1] > start[1]
    assert shared[0] != 2 * 10**18 and shared[1] > 10**18
    assert refused == ([None, 0] if actor.uid == 0 else ["EPERM", 1])


def test_base_directory_and_special_file_times_survive_a_remount(own_tree: MountedTree) -> None:
    os.utime(own_tree.path / "src", ns=(3 * 10**18, 4 * 10**18))
    os.mkfifo(own_tree.path / "pipe")
    os.utime(own_tree.path / "pipe", ns=(5 * 10**18, 6 * 10**18), follow_symlinks=False)
    remount(own_tree)
    assert (os.lstat(own_tree.path / "src").st_atime_ns, os.lstat(own_tree.path / "src").st_mtime_ns) == (
        3 * 10**18,
        4 * 10**18,
    )
    assert (os.lstat(own_tree.path / "pipe").st_atime_ns, os.lstat(own_tree.path / "pipe").st_mtime_ns) == (
        5 * 10**18,
        6 * 10**18,
    )


def test_atime_is_relatime_for_base_and_overlay_files(tree: MountedTree, actor: Actor, work: Path) -> None:
    # A base file of each actor's own: the shared mount keeps the atime one read moved.
    base = "../src/main.c" if actor.uid == 0 else "../src/lib/util.c"
    result = actor.run(
        work,
        f"""
        with open("new", "w") as stream:
            stream.write("content")
        before = [info("new")["atime"], info("{base}")["atime"]]
        for name in ("new", "{base}"):
            with open(name) as stream:
                stream.read()
        after = [info("new"), info("{base}")]
        for name in ("new", "{base}"):
            with open(name) as stream:
                stream.read()
        again = [info("new")["atime"], info("{base}")["atime"]]
        print(json.dumps([before, after, again]))
        """,
    )
    before, after, again = result
    assert after[0]["atime"] >= after[0]["mtime"] and after[0]["atime"] > before[0]
    assert after[1]["atime"] > before[1] and after[1]["mtime"] == BASE_MTIME * 1_000_000_000
    # relatime: a second read soon after does not move it again.
    assert again == [after[0]["atime"], after[1]["atime"]]


# --------------------------------------------------------------------- state database migration

_VERSION_1_SCHEMA = """
CREATE TABLE entries (
    path BLOB PRIMARY KEY, parent BLOB,
    kind TEXT NOT NULL CHECK (kind IN ('file', 'dir', 'symlink', 'gitlink', 'whiteout')),
    mode INTEGER NOT NULL, data_id TEXT, base_oid TEXT, target BLOB,
    opaque INTEGER NOT NULL DEFAULT 0, mtime_ns INTEGER
) WITHOUT ROWID;
CREATE INDEX entries_parent ON entries (parent);
PRAGMA user_version = 1;
"""


def _version_1_state(state: Path) -> None:
    state.mkdir(mode=0o700)
    (state / "data").mkdir(mode=0o700)
    connection = sqlite3.connect(state / "overlay.db")
    connection.executescript(_VERSION_1_SCHEMA)
    connection.executemany(
        "INSERT INTO entries (path, parent, kind, mode, base_oid, mtime_ns) VALUES (?, ?, ?, ?, ?, ?)",
        [(b"src", b"", "dir", 0o40700, None, 7), (b"src/a.c", b"src", "file", 0o100600, "ab" * 20, None)],
    )
    connection.commit()
    connection.close()


def test_a_version_1_database_reads_read_only_and_migrates_when_opened(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _version_1_state(state)
    with OverlayStore(state, read_only=True) as store:
        assert store.get("src/a.c") == OverlayRow("src/a.c", EntryKind.FILE, 0o100600, base_oid="ab" * 20)
    with OverlayStore(state) as store:
        assert store.get("src") == OverlayRow("src", EntryKind.DIR, 0o40700, mtime_ns=7)
        assert store.has_child_rows("src") and not store.has_child_rows("src/a.c")
        with store.batch() as batch:
            batch.put(OverlayRow("src/fifo", EntryKind.SPECIAL, stat.S_IFIFO | 0o644, uid=1000, gid=1000))
    connection = sqlite3.connect(state / "overlay.db")
    assert connection.execute("PRAGMA user_version").fetchone() == (2,)
    connection.close()
    with OverlayStore(state) as store:
        assert store.get("src/fifo") == OverlayRow(
            "src/fifo", EntryKind.SPECIAL, stat.S_IFIFO | 0o644, uid=1000, gid=1000
        )
        assert [row.path for row in store.children("src")] == ["src/a.c", "src/fifo"]
