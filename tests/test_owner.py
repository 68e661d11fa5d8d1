"""A root daemon mounting for another user (``--allow-other --uid U --gid G``): git as U works in the mount.

Real FUSE, the daemon as root, ``git http-backend`` demanding HTTP Basic auth
behind a token URL, and real git run as ``artifactfs-tester`` through
``setpriv``. That user's git must work as in a clone: status, reads, ``log -p``
with a blob only the origin has (a promisor fetch through the daemon's control
socket), commit, push with the daemon's credentials, checkout of another
branch and back. The state stays private: a third user reads nothing of it,
and the owner reaches nothing but its own mount's git state and blob cache.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from artifactfs.state import (
    Owner,
    StateRoot,
    acting_as,
    handed_dir,
    private_dir,
    traversable_dir,
    write_private_file,
)
from artifactfs.testing import GitHttpServer, commit_files, make_bare_repo
from artifactfs.testing.lfsserver import LfsServer
from artifactfs.testing.mounts import MountedTree, run_cli
from artifactfs.testing.users import OUTSIDER, Actor, ensure_user

TOKEN = "tok-owner-5d2f-NEVER-SHOWN"
FILES: dict[str, bytes] = {f"src/f{index}.txt": f"file {index}\n".encode() for index in range(8)}
FILES.update({"README.md": b"# owned\n", "src/app.py": b"print('v1')\n"})


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may traverse (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="artifactfs-owner-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def outsider() -> Actor:
    return ensure_user(OUTSIDER)


@pytest.fixture
def served(shared_dir: Path) -> Iterator[tuple[GitHttpServer, Path]]:
    root = shared_dir / "served"
    root.mkdir()
    repo = root / "private.git"
    make_bare_repo(repo, FILES)
    commit_files(repo, {"src/app.py": b"print('v2')\n"}, message="app v2")
    commit_files(repo, {"src/other.txt": b"only on other\n"}, branch="other", message="other branch")
    with GitHttpServer(root, auth=("x", TOKEN)) as server:
        yield server, repo


@pytest.fixture
def owned_tree(
    served: tuple[GitHttpServer, Path], shared_dir: Path, tester: Actor, fuse: None
) -> Iterator[MountedTree]:
    server, _ = served
    url = server.url("private").replace("http://", f"http://x:{TOKEN}@")
    arguments = ["--allow-other", "--uid", str(tester.uid), "--gid", str(tester.gid), "--hydrate", "none"]
    tree = MountedTree(url, shared_dir / "mnt", shared_dir / "state", arguments)
    tree.mount()
    yield tree
    tree.unmount()


def git_environment(home: Path) -> dict[str, str]:
    return {
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Agent",
        "GIT_AUTHOR_EMAIL": "agent@example.com",
        "GIT_COMMITTER_NAME": "Agent",
        "GIT_COMMITTER_EMAIL": "agent@example.com",
    }


def as_owner_git(tree: MountedTree, owner: Actor, home: Path, *arguments: str) -> str:
    result = owner.command(tree.path, ["git", *arguments], git_environment(home))
    assert result.returncode == 0, (
        f"git {' '.join(arguments)} as {owner.name} failed: {result.stderr.strip()}"
    )
    assert TOKEN not in result.stdout + result.stderr
    return result.stdout


def served_ref(repo: Path, ref: str) -> str:
    return (repo / "refs" / "heads" / ref).read_text().strip()


def assert_owned_privately(gitdir: Path, owner: Actor) -> None:
    """Everything in ``gitdir`` is ``owner``'s, and no directory is open to group or others.

    (git writes a few files such as ``FETCH_HEAD`` with the caller's umask
    whatever ``core.sharedRepository`` says; the 0700 directories keep them private.)
    """
    for directory, _, names in os.walk(gitdir):
        assert not stat.S_IMODE(os.lstat(directory).st_mode) & 0o077, directory
        for path in [Path(directory), *(Path(directory) / name for name in names)]:
            info = os.lstat(path)
            assert (info.st_uid, info.st_gid) == (owner.uid, owner.gid), path


def test_owner_runs_git_in_the_mount_as_in_a_clone(
    owned_tree: MountedTree, served: tuple[GitHttpServer, Path], shared_dir: Path, tester: Actor
) -> None:
    _, repo = served
    home = shared_dir / "home"
    home.mkdir()
    os.chown(home, tester.uid, tester.gid)
    tree = owned_tree

    def git(*arguments: str) -> str:
        return as_owner_git(tree, tester, home, *arguments)

    assert git("status", "--porcelain") == ""
    assert tester.run(tree.path, "print(json.dumps(open('src/app.py').read()))") == "print('v2')\n"
    # v1 of app.py is no blob of the tip: git's promisor fetch for it goes through the daemon.
    patch = git("log", "-p", "-2", "--", "src/app.py")
    assert "-print('v1')" in patch and "+print('v2')" in patch
    assert tree.status()["git"]["objects_from_origin"] >= 1

    tester.run(tree.path, "open('src/app.py', 'w').write(\"print('v3')\\n\")")
    assert "+print('v3')" in git("diff")
    git("commit", "-q", "-a", "-m", "app v3")
    git("push", "-q", "origin", "main")
    assert served_ref(repo, "main") == git("rev-parse", "HEAD").strip()
    assert tree.status()["git"]["credentials_given"] >= 1

    git("checkout", "-q", "other")
    assert tester.run(tree.path, "print(json.dumps(open('src/other.txt').read()))") == "only on other\n"
    git("checkout", "-q", "main")
    assert git("status", "--porcelain") == ""
    assert (tree.path / "src/app.py").read_bytes() == b"print('v3')\n"

    upstream = commit_files(repo, {"docs/new.md": b"from elsewhere\n"}, message="pushed elsewhere")
    git("fetch", "-q")
    assert git("rev-parse", "origin/main").strip() == upstream
    # What the daemon and git wrote for those commands (packs of lazy fetches, refs, index) is the owner's.
    assert_owned_privately(StateRoot(shared_dir / "state").state_dirs(tree.path)[0] / "gitdir", tester)


def test_state_of_an_owned_mount_is_private(
    owned_tree: MountedTree,
    served: tuple[GitHttpServer, Path],
    shared_dir: Path,
    tester: Actor,
    outsider: Actor,
) -> None:
    state = StateRoot(shared_dir / "state")
    mount_dir = state.state_dirs(owned_tree.path)[0]
    gitdir = mount_dir / "gitdir"
    cache = state.root / "cache" / "owners" / str(tester.uid)
    # What the owner's git touches is the owner's, with the private modes; nothing is open to others.
    assert_owned_privately(gitdir, tester)
    assert os.stat(cache).st_uid == tester.uid and not stat.S_IMODE(os.stat(cache).st_mode) & 0o077
    for directory, _, names in os.walk(state.root):
        for name in names:
            info = os.lstat(Path(directory) / name)
            assert not stat.S_IMODE(info.st_mode) & 0o077 or stat.S_ISSOCK(info.st_mode), (directory, name)

    listed = [str(path) for path in (state.root, state.root / "mounts", mount_dir, gitdir, cache)]
    opened = [
        str(path)
        for path in (
            gitdir / "HEAD",
            gitdir / "config",
            mount_dir / "mount.json",
            mount_dir / "overlay/overlay.db",
        )
    ]
    probe = (
        f"print(json.dumps([[fails(os.listdir, path) for path in {listed!r}],"
        f" [fails(open, path) for path in {opened!r}]]))"
    )
    listings, reads = outsider.run(Path("/"), probe)
    assert listings == ["EACCES"] * 5 and reads == ["EACCES"] * 4
    listings, reads = tester.run(Path("/"), probe)
    # The owner lists nothing above its own state and reads its gitdir, but not the daemon's own files.
    assert listings == ["EACCES", "EACCES", "EACCES", None, None]
    assert reads == [None, None, "EACCES", "EACCES"]


def test_owner_reaches_no_other_mount_state(
    owned_tree: MountedTree, served: tuple[GitHttpServer, Path], shared_dir: Path, tester: Actor
) -> None:
    server, _ = served
    url = server.url("private").replace("http://", f"http://x:{TOKEN}@")
    roots = MountedTree(url, shared_dir / "roots", shared_dir / "state", ["--allow-other"])
    roots.mount()
    try:
        state = StateRoot(shared_dir / "state")
        own_dir = state.state_dirs(roots.path)[0]
        assert stat.S_IMODE(os.stat(own_dir).st_mode) == 0o700
        shared_cache = state.blob_cache_dir
        reads = tester.run(
            Path("/"),
            f"print(json.dumps([fails(os.listdir, {str(own_dir / 'gitdir')!r}),"
            f" fails(os.listdir, {str(shared_cache)!r})]))",
        )
        assert reads == ["EACCES", "EACCES"]
        assert (roots.path / "README.md").read_bytes() == b"# owned\n"
        assert stat.S_IMODE(os.stat(own_dir / "gitdir").st_mode) == 0o700
        assert os.stat(own_dir / "gitdir").st_uid == 0
    finally:
        roots.unmount()


def test_fsck_and_gc_find_the_owner_cache(owned_tree: MountedTree, shared_dir: Path, tester: Actor) -> None:
    tree = owned_tree
    assert tester.run(tree.path, "print(json.dumps(open('README.md').read()))") == "# owned\n"
    cache = StateRoot(shared_dir / "state").root / "cache" / "owners" / str(tester.uid) / "loose"
    stored = [path for path in cache.rglob("*") if path.is_file()]
    assert stored and all(path.stat().st_uid == tester.uid for path in stored)
    tree.unmount()
    checked = run_cli("fsck", str(tree.path), root=tree.root, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"blob cache: {len(stored)} blobs verified" in checked.stdout
    output = run_cli("gc", "--max-size", "0", "--keep-recent", "0", root=tree.root).stdout
    assert f"evicted {len(stored)} blobs" in output
    assert not [path for path in cache.rglob("*") if path.is_file()]


def test_a_remount_for_another_owner_is_refused(owned_tree: MountedTree, tester: Actor) -> None:
    tree = owned_tree
    tree.unmount()
    refused = run_cli("mount", "--allow-other", tree.remote, str(tree.path), root=tree.root, check=False)
    assert refused.returncode != 0
    assert f"belongs to uid {tester.uid}, not 0: mount it with --uid {tester.uid}" in refused.stderr
    assert not os.path.ismount(tree.path)
    tree.mount()
    status = tester.command(tree.path, ["git", "status", "--porcelain"], {"HOME": "/"})
    assert (status.returncode, status.stdout) == (0, ""), status.stderr


def test_owner_reads_lfs_files_and_git_lfs_uses_its_cache(
    shared_dir: Path, tester: Actor, fuse: None
) -> None:
    assert shutil.which("git-lfs"), "git-lfs is missing: run scripts/install"
    model = os.urandom(100_000)
    served = shared_dir / "served"
    served.mkdir()
    with LfsServer(shared_dir / "lfs-storage") as lfs, GitHttpServer(served) as server:
        repo = served / "lfsrepo.git"
        files = {
            ".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n",
            ".lfsconfig": f'[lfs]\n\turl = "{lfs.url("lfsrepo")}"\n'.encode(),
            "data/model.bin": lfs.upload("lfsrepo", model),
        }
        make_bare_repo(repo, files)
        arguments = ["--allow-other", "--uid", str(tester.uid), "--gid", str(tester.gid)]
        with MountedTree(server.url("lfsrepo"), shared_dir / "mnt", shared_dir / "state", arguments) as tree:
            read = tester.run(tree.path, "print(json.dumps(open('data/model.bin', 'rb').read().hex()))")
            assert bytes.fromhex(read) == model
            home = shared_dir / "home"
            home.mkdir()
            os.chown(home, tester.uid, tester.gid)
            assert as_owner_git(tree, tester, home, "status", "--porcelain") == ""
            storage = shared_dir / "state" / "cache" / "owners" / str(tester.uid) / "lfs"
            assert f"LocalMediaDir={storage / 'objects'}" in as_owner_git(tree, tester, home, "lfs", "env")
            stored = [path for path in (storage / "objects").rglob("*") if path.is_file()]
            assert stored and all(path.stat().st_uid == tester.uid for path in stored)


def test_writes_for_an_owner_go_nowhere_that_owner_could_not_write(shared_dir: Path, tester: Actor) -> None:
    owner = Owner(tester.uid, tester.gid)
    above = shared_dir / "state"
    traversable_dir(above)
    handed = handed_dir(above / "gitdir", owner)
    private_dir(handed / "refs" / "heads", owner)
    write_private_file(handed / "refs" / "heads" / "main", b"x\n", owner=owner)
    for path in (handed, handed / "refs", handed / "refs" / "heads", handed / "refs" / "heads" / "main"):
        assert (os.lstat(path).st_uid, os.lstat(path).st_gid) == (owner.uid, owner.gid), path
    assert stat.S_IMODE(os.stat(above).st_mode) == 0o711
    # A link the owner plants to a directory only root may write leads the daemon nowhere.
    secret = shared_dir / "root-only"
    secret.mkdir(mode=0o700)
    os.symlink(secret, handed / "planted")
    with pytest.raises(PermissionError):
        write_private_file(handed / "planted" / "file", b"data", owner=owner)
    with pytest.raises(PermissionError):
        private_dir(handed / "planted" / "dir", owner)
    assert os.listdir(secret) == []
    # Acting as the owner is undone, nested or not: the daemon writes its own files as itself again.
    with acting_as(owner), acting_as(owner):
        pass
    write_private_file(above / "mine", b"root's\n")
    assert os.lstat(above / "mine").st_uid == os.geteuid()
