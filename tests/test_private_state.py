"""Private state: the state root is the owner's alone, and refuses to be anyone else's.

Real mounts against the test git server, checked from a second user (uid
65534 through ``setpriv``): the state root and everything under it is 0700 /
0600 whatever the umask, planted symlinks are not followed, a root others can
write to is refused, non-owners get one-line errors, and failed or aborted
fetches leave no temporary packs. The rules themselves live in
``artifactfs/state.py``; the unit tests at the end pin them down directly.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import robustness

from artifactfs.objects import blob_id
from artifactfs.remote.url import RemoteURL
from artifactfs.state import (
    MountState,
    StateRoot,
    StateRootError,
    check_state_root,
    open_private,
    private_dir,
    write_private_file,
)
from artifactfs.testing import FileSpec, GitHttpServer
from artifactfs.testing.mounts import (
    MountedTree,
    artifactfs_command,
    is_mounted,
    run_cli,
)
from artifactfs.testing.repos import distinct_content as content
from artifactfs.testing.waiting import wait_until

NOBODY = 65534
_AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
_PROJECT = Path(__file__).resolve().parent.parent


FILES: dict[str, bytes | FileSpec] = {
    "README.md": b"# private\n",
    "src/secret.py": b"TOKEN_SHAPED_CONTENT = 'only for the owner'\n",
    "bin/run.sh": FileSpec(b"#!/bin/sh\necho run\n", executable=True),
    "docs/link": FileSpec(symlink_target="../README.md"),
    **{f"pkg/mod{index:02d}.py": content(f"mod{index}", 10_000) for index in range(30)},
}


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may traverse: under pytest's root-only tmp_path, the second user
    would be stopped by a parent directory and no mode of ours would be tested."""
    path = Path(tempfile.mkdtemp(prefix="artifactfs-private-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def state_root(shared_dir: Path) -> Path:
    return shared_dir / "state"


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def as_nobody(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_AS_NOBODY, *command],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        stdin=subprocess.DEVNULL,
        env=env or {"PATH": os.environ["PATH"]},
    )


def cli_as_nobody(*arguments: str, root: Path | None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(_PROJECT), "HOME": "/nonexistent"}
    if root is not None:
        env["ARTIFACTFS_ROOT"] = str(root)
    return as_nobody(sys.executable, "-m", "artifactfs", *arguments, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("artifactfs: error: "), lines[0]
    assert expected in lines[0], lines[0]
    robustness.add("private_checks")


def mount_state_of(state_root: Path, remote: str, mountpoint: Path) -> MountState:
    return StateRoot(state_root).mount_state(
        Path(os.path.realpath(mountpoint)), RemoteURL.parse(remote).redacted()
    )


def use_the_mount(tree: MountedTree) -> None:
    """Read every file, write new and changed ones, and let git write its index."""
    for relative, spec in FILES.items():
        if isinstance(spec, bytes):
            assert (tree.path / relative).read_bytes() == spec, relative
    (tree.path / "notes.txt").write_text("new file\n")
    with (tree.path / "README.md").open("a") as stream:  # copy-up of a base file
        stream.write("changed\n")
    (tree.path / "newdir").mkdir()
    (tree.path / "newdir/inner.txt").write_bytes(b"inner\n")
    status = tree.git("status", "--porcelain").stdout
    assert "README.md" in status and "notes.txt" in status
    tree.wait_for(lambda answer: answer["history_complete"] and answer["hydration"]["complete"])


# --------------------------------------------------------------------------- modes


def test_state_is_owner_only_whatever_the_umask(make_repo, git_server, mounts, state_root, umask_022):
    make_repo("private", FILES, extra_commits=2)
    tree = mounts(git_server.url("private"), "--hydrate", "background")
    use_the_mount(tree)

    loose: list[str] = []
    seen: list[Path] = []
    for directory, subdirectories, files in os.walk(state_root):
        for name in [*subdirectories, *files]:
            path = Path(directory) / name
            info = path.lstat()
            assert not stat.S_ISLNK(info.st_mode), f"symlink in the state: {path}"
            if stat.S_IMODE(info.st_mode) & 0o077:
                loose.append(f"{stat.S_IMODE(info.st_mode):04o} {path.relative_to(state_root)}")
            seen.append(path.relative_to(state_root))
    robustness.add("private_checks", len(seen) + 1)
    assert stat.S_IMODE(state_root.stat().st_mode) == 0o700
    assert loose == [], "readable or writable by others:\n" + "\n".join(loose)

    # The walk covered every kind of state: blobs, overlay, logs, runtime, and git's own writes.
    names = {str(path) for path in seen}
    mount_key = mount_state_of(state_root, tree.remote, tree.path).path.relative_to(state_root)
    for expected in (
        "cache/blobs/loose",
        f"{mount_key}/overlay/overlay.db",
        f"{mount_key}/overlay/journal",
        f"{mount_key}/daemon.log",
        f"{mount_key}/mount.json",
        f"{mount_key}/gitdir/index",
        f"{mount_key}/gitdir/config",
        f"{mount_key}/gitdir/hooks/artifactfs-fsmonitor",
    ):
        assert expected in names, expected
    assert any(
        name.startswith("cache/blobs/loose/") and len(name) == len("cache/blobs/loose/") + 41
        for name in names
    ), "no blob in the cache"
    assert any(name.endswith(".pack") and "/gitdir/objects/pack/" in name for name in names)
    assert any(name.startswith(f"{mount_key}/overlay/data/") for name in names), "no overlay data file"
    assert any(name.startswith("run/") and name.endswith(".json") for name in names), "no runtime record"


def test_second_user_cannot_read_blobs_or_overlay(
    make_repo, git_server, mounts, state_root, shared_dir, umask_022
):
    make_repo("private", FILES)
    tree = mounts(git_server.url("private"), "--hydrate", "none")
    secret = FILES["src/secret.py"]
    assert isinstance(secret, bytes)
    assert (tree.path / "src/secret.py").read_bytes() == secret
    (tree.path / "written.txt").write_text("overlay content\n")
    blob_oid = blob_id(secret)
    blob = StateRoot(state_root).blob_cache_dir / "loose" / blob_oid[:2] / blob_oid[2:]
    overlay = mount_state_of(state_root, tree.remote, tree.path).overlay
    assert zlib.decompress(blob.read_bytes()) == b"blob %d\0" % len(secret) + secret
    data_files = list((overlay / "data").iterdir())
    assert data_files, "the write left no data file"

    # The check itself can fail: the second user reads a world-readable file beside the state.
    control = shared_dir / "readable.txt"
    control.write_text("anyone\n")
    control.chmod(0o644)
    assert as_nobody("cat", str(control)).stdout == "anyone\n"

    for target in (
        blob,
        overlay / "overlay.db",
        data_files[0],
        overlay / "journal",
        StateRoot(state_root).blob_cache_dir.parent,
        mount_state_of(state_root, tree.remote, tree.path).gitdir / "config",
    ):
        result = as_nobody("cat", str(target))
        assert result.returncode != 0 and "Permission denied" in result.stderr, (target, result)
        assert secret.decode() not in result.stdout
        robustness.add("private_checks")
    listing = as_nobody("ls", str(state_root))
    assert listing.returncode != 0 and "Permission denied" in listing.stderr


# --------------------------------------------------------------------------- symlinks and refusals


def test_planted_log_symlink_is_refused_and_not_followed(
    make_repo, git_server, state_root, shared_dir, tmp_path, fuse
):
    make_repo("private", FILES)
    remote = git_server.url("private")
    with MountedTree(remote, tmp_path / "mnt", state_root):
        pass
    log = mount_state_of(state_root, remote, tmp_path / "mnt").log_file
    assert log.is_file()
    victim = shared_dir / "victim.conf"
    victim.write_text("root-owned, outside the state\n")
    before = victim.stat()
    log.unlink()
    log.symlink_to(victim)

    result = run_cli("mount", remote, str(tmp_path / "mnt"), root=state_root, check=False)
    assert_one_line_error(result, "symlink")
    assert str(log) in result.stderr
    assert not is_mounted(tmp_path / "mnt")
    assert victim.read_text() == "root-owned, outside the state\n"
    after = victim.stat()
    assert (after.st_size, after.st_mtime_ns, stat.S_IMODE(after.st_mode)) == (
        before.st_size,
        before.st_mtime_ns,
        stat.S_IMODE(before.st_mode),
    )
    assert log.is_symlink(), "the refusal must not touch the state either"


@pytest.mark.parametrize(
    "mode, owner, expected",
    [
        (0o777, None, "writable by other users"),
        (0o770, None, "writable by other users"),
        (0o700, NOBODY, f"belongs to uid {NOBODY}"),
    ],
)
def test_unsafe_state_root_is_refused_and_nothing_created(
    make_repo, git_server, state_root, tmp_path, fuse, mode, owner, expected
):
    make_repo("private", FILES)
    state_root.mkdir()
    state_root.chmod(mode)
    if owner is not None:
        os.chown(state_root, owner, owner)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_cli("mount", git_server.url("private"), str(mountpoint), root=state_root, check=False)
    assert_one_line_error(result, expected)
    assert os.listdir(state_root) == []
    assert not is_mounted(mountpoint)
    assert stat.S_IMODE(state_root.stat().st_mode) == mode, "the refusal changed the root"


# --------------------------------------------------------------------------- other users' commands


def test_non_owner_gets_one_line_errors(make_repo, git_server, mounts, state_root):
    make_repo("private", FILES)
    tree = mounts(git_server.url("private"), "--hydrate", "none")
    for command in ("unmount", "fsck", "status"):
        # With the owner's state root, and with the second user's own (empty) default root.
        assert_one_line_error(cli_as_nobody(command, str(tree.path), root=state_root), "belongs to uid 0")
        result = cli_as_nobody(command, str(tree.path), root=None)
        assert_one_line_error(result, "")
        assert "Traceback" not in result.stderr
    assert tree.status()["state"] == "mounted"
    assert (tree.path / "README.md").read_bytes() == FILES["README.md"]


# --------------------------------------------------------------------------- temporary packs
# Packs of commits and trees (the tip, then the history) go through git index-pack; blobs live
# in the blob cache. The history fetch is the one that runs while the mount is up.


def leftovers(objects: Path) -> list[str]:
    """Temporary packs and indexes (``tmp_*``) and fetch quarantines anywhere under ``objects``."""
    return sorted(
        str(path.relative_to(objects))
        for path in objects.rglob("*")
        if path.name.startswith(("tmp_", "incoming-"))
    )


def mount_with_history_faults(
    server: GitHttpServer, remote: str, mountpoint: Path, root: Path, *faults: str
) -> MountedTree:
    """Mount, queueing ``faults`` as soon as the tip's fetch is under way: the history fetch,
    which starts only after the mount is ready, takes them."""
    mountpoint.mkdir()
    tree = MountedTree(remote, mountpoint, root, ("--hydrate", "none"))
    process = subprocess.Popen(
        artifactfs_command("mount", "--hydrate", "none", remote, str(mountpoint)),
        env={**os.environ, "ARTIFACTFS_ROOT": str(root)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: any(request.command == "fetch" for request in server.requests), "no tip fetch")
        for fault in faults:
            server.inject(fault)
        _, errors = process.communicate(timeout=120)
    except BaseException:
        process.kill()
        tree.unmount()
        raise
    if process.returncode != 0:
        tree.unmount()
        raise AssertionError(f"mount failed: {errors.strip()}")
    return tree


def test_failed_fetches_leave_no_temporary_pack(make_repo, git_server, state_root, tmp_path, fuse):
    make_repo("faulty", FILES, extra_commits=2000)
    faults = ["reset", "reset"]
    tree = mount_with_history_faults(
        git_server, git_server.url("faulty"), tmp_path / "mnt", state_root, *faults
    )
    try:
        tree.wait_for(lambda status: status["history_complete"], timeout=60)  # after retries
        fetches = [request for request in git_server.requests if request.command == "fetch"]
        assert [request.fault for request in fetches[1 : len(faults) + 1]] == faults, (
            "the faults missed the history"
        )
        assert leftovers(Path(tree.status()["gitdir"]) / "objects") == []
        assert tree.git("log", "--oneline").stdout.count("\n") == 2001, "the history arrived in the end"
        robustness.add("private_checks", len(faults))
    finally:
        tree.unmount()


def test_aborted_fetch_leaves_no_temporary_pack(make_repo, git_server, state_root, tmp_path, fuse):
    make_repo("stalled", FILES, extra_commits=2000)
    tree = mount_with_history_faults(
        git_server, git_server.url("stalled"), tmp_path / "mnt", state_root, "stall:60"
    )
    try:
        objects = Path(tree.status()["gitdir"]) / "objects"
        # Half the history pack has arrived and the indexer is writing it when the mount goes away.
        wait_until(lambda: any(objects.rglob("tmp_pack_*")), "the stalled fetch never started indexing")
    finally:
        tree.unmount()
    assert not is_mounted(tree.path)
    assert leftovers(objects) == []
    robustness.add("private_checks")


# --------------------------------------------------------------------------- the rules, directly


def test_state_root_rules(tmp_path: Path) -> None:
    missing = tmp_path / "parent" / "root"
    previous = os.umask(0)
    try:
        check_state_root(missing, create=True)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(missing.stat().st_mode) == 0o700
    check_state_root(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()

    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    check_state_root(sticky, create=False)  # ours and sticky: others cannot touch what we create
    sticky.chmod(0o777)
    with pytest.raises(StateRootError, match="writable by other users"):
        check_state_root(sticky, create=False)
    os.chown(sticky, NOBODY, NOBODY)
    sticky.chmod(0o700)
    with pytest.raises(StateRootError, match="belongs to uid"):
        check_state_root(sticky, create=False)


def test_private_dir_and_files(tmp_path: Path) -> None:
    older = tmp_path / "older"
    older.mkdir()
    older.chmod(0o755)
    assert private_dir(older / "a" / "b") == older / "a" / "b"
    assert [stat.S_IMODE(path.stat().st_mode) for path in (older / "a", older / "a" / "b")] == [0o700, 0o700]
    private_dir(older)
    assert stat.S_IMODE(older.stat().st_mode) == 0o700, "state of older versions is closed"

    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    (tmp_path / "linkdir").symlink_to(older)
    with pytest.raises(StateRootError, match="symlink"):
        private_dir(tmp_path / "linkdir")
    (tmp_path / "link").symlink_to(victim)
    with pytest.raises(StateRootError, match="symlink"):
        open_private(tmp_path / "link", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    write_private_file(tmp_path / "link", b"replaced\n")
    assert victim.read_text() == "untouched\n"
    assert not (tmp_path / "link").is_symlink() and (tmp_path / "link").read_bytes() == b"replaced\n"
    assert stat.S_IMODE((tmp_path / "link").stat().st_mode) == 0o600

    loose = tmp_path / "loose"
    loose.write_text("from an older version\n")
    loose.chmod(0o644)
    os.close(open_private(loose, os.O_RDONLY))
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600
