"""Git LFS in a real mount: a real LFS server (giftless), real git-lfs, real git.

The served repository marks ``*.bin`` with ``filter=lfs`` and names the LFS
server in its ``.lfsconfig``; its objects were uploaded through the server's
batch API. A pointer-shaped blob without the attribute is shown as it is.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from artifactfs.errors import CorruptObjectError
from artifactfs.lfs.batch import endpoint_for_remote, same_origin
from artifactfs.lfs.objects import LfsObjectStore
from artifactfs.lfs.pointer import parse_pointer
from artifactfs.state import StateRoot
from artifactfs.testing.lfsserver import LfsServer, pointer_text
from artifactfs.testing.mounts import MountedTree, run_cli

NAME = "lfsrepo"
MODEL = random.Random(28).randbytes(300_000)
SMALL = b"small lfs object\n" * 10
STRAY = b"content behind a pointer that no attribute marks\n"


def oid_of(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


@pytest.fixture(scope="session")
def git_lfs() -> str:
    path = shutil.which("git-lfs")
    assert path, "git-lfs is missing: run scripts/install"
    return path


@pytest.fixture
def lfs_server(tmp_path: Path, git_lfs: str) -> Iterator[LfsServer]:
    with LfsServer(tmp_path / "lfs-storage") as server:
        yield server


@pytest.fixture
def lfs_repo(make_repo: Callable[..., tuple[Path, str]], lfs_server: LfsServer) -> Path:
    files = {
        ".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n",
        ".lfsconfig": f'[lfs]\n\turl = "{lfs_server.url(NAME)}"\n'.encode(),
        "README.md": b"# lfs demo\n",
        "data/model.bin": lfs_server.upload(NAME, MODEL),
        "data/small.bin": lfs_server.upload(NAME, SMALL),
        "notes/pointer.txt": pointer_text(STRAY),
    }
    repo, _ = make_repo(NAME, files)
    return repo


def read_error(path: Path) -> int | None:
    try:
        path.read_bytes()
    except OSError as error:
        return error.errno
    return None


def test_pointer_parsing_is_strict() -> None:
    pointer = pointer_text(SMALL)
    parsed = parse_pointer(pointer)
    assert parsed is not None and parsed.oid == oid_of(SMALL) and parsed.size == len(SMALL)
    assert parse_pointer(pointer.rstrip(b"\n")) is None  # every line ends in a newline
    assert parse_pointer(pointer.replace(b"\n", b"\r\n")) is None
    assert parse_pointer(pointer.replace(b"sha256:", b"sha1:")) is None
    assert parse_pointer(pointer.upper()) is None
    lines = pointer.splitlines(keepends=True)
    assert parse_pointer(lines[0] + lines[2] + lines[1]) is None  # keys in order
    assert parse_pointer(pointer + b"x-extra 1\n") is None
    assert parse_pointer(pointer.replace(b"size ", b"size -")) is None
    assert parse_pointer(pointer + b"\n") is None


def test_object_store_installs_only_verified_objects(tmp_path: Path) -> None:
    store = LfsObjectStore(tmp_path / "cache")
    good = store.receive(oid_of(SMALL), len(SMALL))
    good.write(SMALL[:10])
    good.write(SMALL[10:])
    assert store.size(oid_of(SMALL)) is None  # nothing visible before the hash is checked
    good.commit()
    with store.open(oid_of(SMALL), len(SMALL)) as stored:
        assert stored.pread(5, 10) == SMALL[10:15] and stored.read() == SMALL
    damaged = store.receive(oid_of(MODEL), len(MODEL))
    damaged.write(MODEL[:-1] + b"?")
    with pytest.raises(CorruptObjectError):
        damaged.commit()
    damaged.discard()
    short = store.receive(oid_of(MODEL), len(MODEL))
    short.write(MODEL[:-1])
    with pytest.raises(CorruptObjectError):
        short.commit()
    short.discard()
    long = store.receive(oid_of(SMALL[:-1]), len(SMALL) - 1)
    with pytest.raises(CorruptObjectError):
        long.write(SMALL)
    long.discard()
    assert store.size(oid_of(MODEL)) is None and store.size(oid_of(SMALL[:-1])) is None
    assert [path for path in (store.root / "tmp").rglob("*") if path.is_file()] == []


def test_endpoint_and_origin_rules() -> None:
    assert endpoint_for_remote("https://host/org/repo") == "https://host/org/repo.git/info/lfs"
    assert endpoint_for_remote("https://host/org/repo.git/") == "https://host/org/repo.git/info/lfs"
    assert same_origin("https://host/a.git/info/lfs", "https://host:443/b")
    assert not same_origin("https://host/a.git/info/lfs", "https://host:8443/a.git")
    assert not same_origin("https://host/a", "http://host/a")
    assert not same_origin("https://host/a", "https://host.evil/a")


def test_read_shows_object_and_stat_fetches_nothing(
    lfs_repo: Path, lfs_server: LfsServer, git_server, mounts: Callable[..., MountedTree]
) -> None:
    tree = mounts(git_server.url(NAME), "--hydrate", "none")
    model = tree.path / "data/model.bin"
    assert model.stat().st_size == len(MODEL)
    assert os.path.getsize(tree.path / "data/small.bin") == len(SMALL)
    sizes = {entry.name: entry.stat().st_size for entry in os.scandir(tree.path / "data")}
    assert sizes == {"model.bin": len(MODEL), "small.bin": len(SMALL)}
    assert lfs_server.downloads() == []  # sizes come from the pointers alone

    assert model.read_bytes() == MODEL
    assert lfs_server.downloads() == [oid_of(MODEL)]
    assert (tree.path / "data/small.bin").read_bytes() == SMALL
    # Without filter=lfs, a pointer is just a file.
    assert (tree.path / "notes/pointer.txt").read_bytes() == pointer_text(STRAY)
    assert model.read_bytes() == MODEL
    assert sorted(lfs_server.downloads()) == sorted([oid_of(MODEL), oid_of(SMALL)])


def test_prefetch_fetches_the_objects_of_lfs_files(
    lfs_repo: Path, lfs_server: LfsServer, git_server, mounts: Callable[..., MountedTree]
) -> None:
    tree = mounts(git_server.url(NAME), "--hydrate", "none")
    run_cli("prefetch", str(tree.path), "data/model.bin", root=tree.root)
    tree.wait_for(lambda status: status["lfs"]["downloaded"] == 1, timeout=30)
    assert lfs_server.downloads() == [oid_of(MODEL)]  # that file's object, and no other
    assert (tree.path / "data/model.bin").read_bytes() == MODEL
    assert lfs_server.downloads() == [oid_of(MODEL)]


def test_fresh_mount_is_clean_and_git_lfs_works(
    lfs_repo: Path, lfs_server: LfsServer, git_server, mounts: Callable[..., MountedTree]
) -> None:
    tree = mounts(git_server.url(NAME))
    assert tree.git("status", "--porcelain").stdout == ""
    # Without fsmonitor git lstats every file: the index records the sizes the files show.
    assert tree.git("-c", "core.fsmonitor=false", "status", "--porcelain").stdout == ""
    listed = tree.git("lfs", "ls-files", "--long").stdout.split()
    assert oid_of(MODEL) in listed and oid_of(SMALL) in listed
    # The index records the pointer blobs, while the files show the objects.
    staged = tree.git("ls-files", "-s", "data/model.bin").stdout.split()[1]
    assert tree.git("cat-file", "blob", staged).stdout.encode() == pointer_text(MODEL)
    # Background hydration brings every object, verified, into the shared cache.
    tree.wait_for(lambda status: status["lfs"]["downloaded"] == 2, timeout=30)
    assert (tree.path / "data/model.bin").read_bytes() == MODEL
    assert (
        "lfs:      2 files, 2 objects fetched, 0 failed"
        in run_cli("status", str(tree.path), root=tree.root).stdout
    )
    # git-lfs finds the mount's objects in its own storage (the cache) and checks them itself.
    # git-lfs uses the cache as its storage, and checks the mount's objects there itself.
    # (Its fsck takes any pointer-shaped blob for LFS: it complains about notes/pointer.txt only.)
    local_media = f"LocalMediaDir={tree.root / 'cache/blobs/lfs/objects'}"
    assert local_media in tree.git("lfs", "env").stdout.splitlines()
    fsck = tree.git("lfs", "fsck", check=False).stdout
    assert "notes/pointer.txt" in fsck and "data/" not in fsck
    assert tree.git("status", "--porcelain").stdout == ""


def test_edit_commit_push_uploads_the_object(
    lfs_repo: Path, lfs_server: LfsServer, git_server, mounts: Callable[..., MountedTree]
) -> None:
    tree = mounts(git_server.url(NAME))
    edited = MODEL[:1000] + b"edited in the mount" + MODEL[1000:]
    (tree.path / "data/model.bin").write_bytes(edited)
    (tree.path / "data/new.bin").write_bytes(b"a new large file\n" * 100)
    assert set(tree.git("status", "--porcelain").stdout.splitlines()) == {
        " M data/model.bin",
        "?? data/new.bin",
    }
    tree.git("add", "-A")
    tree.git("commit", "-q", "-m", "edit an LFS file")
    tree.git("push", "-q", "origin", "main")

    assert lfs_server.has_object(NAME, oid_of(edited))
    assert lfs_server.has_object(NAME, oid_of(b"a new large file\n" * 100))
    served = subprocess.run(
        ["git", "--git-dir", str(lfs_repo), "show", "main:data/model.bin"], capture_output=True, check=True
    ).stdout
    assert served == pointer_text(edited)
    head = tree.git("rev-parse", "HEAD").stdout.strip()
    tree.wait_for(lambda status: status["head"] == head, timeout=10)
    assert (tree.path / "data/model.bin").read_bytes() == edited
    assert tree.git("status", "--porcelain").stdout == ""


def test_corrupt_object_is_refused(
    lfs_repo: Path, lfs_server: LfsServer, git_server, mounts: Callable[..., MountedTree]
) -> None:
    lfs_server.corrupt(NAME, oid_of(MODEL))
    tree = mounts(git_server.url(NAME), "--hydrate", "none")
    model = tree.path / "data/model.bin"
    assert model.stat().st_size == len(MODEL)
    assert read_error(model) == errno.EIO
    assert oid_of(MODEL) in lfs_server.downloads()
    assert read_error(model) == errno.EIO  # asked again, refused again: never wrong bytes
    assert lfs_server.downloads().count(oid_of(MODEL)) == 2
    assert (tree.path / "data/small.bin").read_bytes() == SMALL


TOKEN = "lfs-tok-5e2b-NEVER-SHOWN"


@pytest.fixture
def private_lfs(
    git_root: Path, tmp_path: Path, make_repo: Callable[..., tuple[Path, str]], git_lfs: str
) -> Iterator[tuple[LfsServer, Path]]:
    """A repository and its LFS endpoint on one origin that demands HTTP Basic auth."""
    from artifactfs.testing import GitHttpServer

    with (
        GitHttpServer(git_root, auth=("x", TOKEN)) as git,
        LfsServer(tmp_path / "lfs-storage", git=git, auth=("x", TOKEN)) as server,
    ):
        files = {
            ".gitattributes": b"*.bin filter=lfs -text\n",
            "README.md": b"# private lfs\n",
            "data/model.bin": server.upload(NAME, MODEL),
        }
        repo, _ = make_repo(NAME, files)
        yield server, repo


def test_private_lfs_uses_the_remotes_credentials(
    private_lfs: tuple[LfsServer, Path], mounts: Callable[..., MountedTree], tmp_path: Path
) -> None:
    server, repo = private_lfs
    home = tmp_path / "home"
    home.mkdir()
    url = server.git_url(NAME).replace("http://", f"http://x:{TOKEN}@")
    tree = mounts(url, "--hydrate", "none")
    model = tree.path / "data/model.bin"
    assert model.read_bytes() == MODEL  # batch request and download on the remote's origin, authenticated
    assert ("POST", f"/tests/{NAME}.git/info/lfs/objects/batch") in server.requests

    edited = b"edited behind auth\n" * 1000
    model.write_bytes(edited)
    environment = {
        **os.environ,
        "HOME": str(home),  # no credential helper of the user's: only the daemon can answer
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Dev",
        "GIT_AUTHOR_EMAIL": "dev@example.com",
        "GIT_COMMITTER_NAME": "Dev",
        "GIT_COMMITTER_EMAIL": "dev@example.com",
    }
    for arguments in (["add", "-A"], ["commit", "-q", "-m", "edit"], ["push", "-q", "origin", "main"]):
        result = subprocess.run(
            ["git", *arguments], cwd=tree.path, capture_output=True, text=True, env=environment, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert TOKEN not in result.stderr
    assert server.has_object(NAME, oid_of(edited))
    assert tree.status()["git"]["credentials_given"] > 0  # git-lfs and git asked the daemon
    logs = [mount.log_file for mount in StateRoot(tree.root).mount_states() if mount.log_file.exists()]
    assert all(TOKEN not in path.read_text() for path in logs)


def test_credentials_never_reach_another_origin(
    git_root: Path, tmp_path: Path, make_repo: Callable[..., tuple[Path, str]], git_lfs: str, mounts
) -> None:
    from artifactfs.testing import GitHttpServer

    with GitHttpServer(git_root, auth=("x", TOKEN)) as git, LfsServer(tmp_path / "lfs-storage") as server:
        files = {
            ".gitattributes": b"*.bin filter=lfs -text\n",
            ".lfsconfig": f"[lfs]\n\turl = {server.url(NAME)}\n".encode(),
            "data/model.bin": server.upload(NAME, MODEL),
        }
        make_repo(NAME, files)
        tree = mounts(git.url(NAME).replace("http://", f"http://x:{TOKEN}@"), "--hydrate", "none")
        assert (tree.path / "data/model.bin").read_bytes() == MODEL
        assert server.downloads() == [oid_of(MODEL)]
        assert server.authenticated == []  # the remote's token stays on the remote's origin


def test_background_follows_the_classes_by_real_size(
    make_repo: Callable[..., tuple[Path, str]], lfs_server: LfsServer, git_server, mounts
) -> None:
    big = random.Random(304).randbytes(5 << 20)  # above the binary threshold, behind a pointer of 130 bytes
    small = b"VALUE = 1\n" * 50
    files = {
        ".gitattributes": b"src/*.py filter=lfs -text\n",
        ".lfsconfig": f"[lfs]\n\turl = {lfs_server.url(NAME)}\n".encode(),
        "src/a_big.py": lfs_server.upload(NAME, big),
        "src/b_small.py": lfs_server.upload(NAME, small),
    }
    make_repo(NAME, files)
    tree = mounts(git_server.url(NAME))
    tree.wait_for(lambda status: status["lfs"]["downloaded"] == 2, timeout=30)
    # By path a_big.py comes first; by its real size it is a binary, fetched after the source file.
    assert lfs_server.downloads() == [oid_of(small), oid_of(big)]
    assert (tree.path / "src/a_big.py").read_bytes() == big
    assert lfs_server.downloads() == [oid_of(small), oid_of(big)]  # served from the cache
