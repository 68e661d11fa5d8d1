"""A full state root: writers get ENOSPC, removals free space, the state stays fsck-clean.

The state root is a real 8 MiB tmpfs mounted for each test, under a real FUSE
mount of a repository served by the real ``git http-backend`` fixture. The disk
is filled the way an agent fills it: by writing one large file in the mount
until the kernel says ENOSPC.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import robustness

from artifactfs.overlay.errors import errno_for
from artifactfs.overlay.store import (
    RESERVE_BYTES,
    OverlayRow,
    OverlayStore,
    inspect_database,
)
from artifactfs.snapshot.entries import EntryKind
from artifactfs.state import StateRoot, free_bytes
from artifactfs.testing import FileSpec, GitHttpServer
from artifactfs.testing.mounts import MountedTree, is_mounted, run_cli, small_tmpfs

STATE_SIZE = "8m"
CHUNK = 256 << 10

FILES: dict[str, bytes | FileSpec] = {
    "README.md": b"# small\n",
    "src/main.py": b"print('hello')\n" * 20,
    "src/util.py": b"def helper() -> int:\n    return 42\n" * 30,
    "bin/run.sh": FileSpec(b"#!/bin/sh\necho run\n", executable=True),
    "docs/link": FileSpec(symlink_target="../README.md"),
    "data/large.txt": b"".join(
        b"line %06d of a file that takes many pages to copy up\n" % n for n in range(4000)
    ),
}
PLAIN_FILES = {path: content for path, content in FILES.items() if isinstance(content, bytes)}


@pytest.fixture
def state_root(tmp_path: Path) -> Iterator[Path]:
    """The state root on its own small tmpfs (overrides conftest's), unmounted after the mounts."""
    with small_tmpfs(tmp_path / "state", STATE_SIZE) as root:
        yield root


@pytest.fixture
def small_remote(make_repo: Callable[..., tuple[Path, str]], git_server: GitHttpServer) -> str:
    make_repo("small", FILES)
    return git_server.url("small")


def mount_settled(mounts: Callable[..., MountedTree], remote: str) -> MountedTree:
    """A mount whose blobs and history are all local, so nothing but the test writes the state root."""
    tree = mounts(remote)
    tree.wait_for(lambda status: status["hydration"]["complete"] and status["history_complete"])
    return tree


def fill_through_mount(path: Path) -> int:
    """Write ``path`` in the mount until the disk is full; returns the bytes written.

    The writer must be told ENOSPC (not EIO), and closing the file must work.
    """
    written = 0
    with open(path, "wb", buffering=0) as stream:
        with pytest.raises(OSError) as failure:
            while True:
                written += stream.write(b"\xa5" * CHUNK)
    assert failure.value.errno == errno.ENOSPC, failure.value
    assert written > 4 << 20, f"only {written} bytes fitted on an 8 MiB state root"
    return written


def fill(directory: Path) -> Path:
    """Take every free byte of ``directory``'s filesystem with a filler file."""
    filler = directory / "filler"
    with open(filler, "ab", buffering=0) as stream, pytest.raises(OSError) as failure:
        while True:
            stream.write(b"\0" * 4096)
    assert failure.value.errno == errno.ENOSPC
    return filler


def expect_enospc(operation: Callable[[], object], *, must_fail: bool) -> None:
    """A write on a full disk either fits (metadata reusing space SQLite holds) or fails with ENOSPC."""
    try:
        operation()
    except OSError as error:
        assert error.errno == errno.ENOSPC, f"expected ENOSPC, got {error!r}"
        robustness.add("full_disk_checks")
        return
    assert not must_fail, "a write that needs new space succeeded on a full disk"
    robustness.add("full_disk_checks")


def assert_repo_reads_right(root: Path) -> None:
    for relative, content in PLAIN_FILES.items():
        assert (root / relative).read_bytes() == content, relative
    assert os.readlink(root / "docs/link") == "../README.md"


def fsck_clean(tree: MountedTree, state_root: Path) -> None:
    checked = run_cli("fsck", str(tree.path), root=state_root, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "result: clean" in checked.stdout, checked.stdout


def test_full_disk_gives_enospc_and_rm_through_the_mount_frees_space(
    small_remote: str, mounts: Callable[..., MountedTree], state_root: Path
) -> None:
    tree = mount_settled(mounts, small_remote)
    root = tree.path
    (root / "scratch").mkdir()
    (root / "scratch/note.txt").write_bytes(b"note\n")
    fill_through_mount(root / "big.bin")
    robustness.add("full_disk_checks")

    # Every write path answers ENOSPC, never EIO. Data needs new pages, so those writes must fail.
    expect_enospc(lambda: (root / "new.txt").write_bytes(b"n" * CHUNK), must_fail=True)
    expect_enospc(lambda: open(root / "data/large.txt", "r+b").close(), must_fail=True)  # copy-up on open
    expect_enospc(lambda: os.truncate(root / "data/large.txt", 10), must_fail=True)  # copy-up on truncate
    expect_enospc(lambda: os.mkdir(root / "newdir"), must_fail=False)
    expect_enospc(lambda: os.symlink("README.md", root / "newlink"), must_fail=False)
    expect_enospc(lambda: os.rename(root / "src/util.py", root / "src/util2.py"), must_fail=False)
    expect_enospc(lambda: os.chmod(root / "src/main.py", 0o600), must_fail=False)
    # Removing is how space is freed, so it works on the full disk, whatever it removes:
    # overlay files and directories, and repository files (which need a whiteout row).
    for leftover in ("new.txt", "newlink", "scratch/note.txt", "README.md"):
        if os.path.lexists(root / leftover):
            os.unlink(root / leftover)
            robustness.add("full_disk_checks")
    for directory in ("newdir", "scratch"):
        if (root / directory).exists():
            os.rmdir(root / directory)
            robustness.add("full_disk_checks")
    assert not (root / "scratch").exists() and not (root / "README.md").exists()

    # rm through the mount works and gives the space back; writing works again.
    os.unlink(root / "big.bin")
    robustness.add("full_disk_checks")
    assert free_bytes(state_root) > 4 << 20, free_bytes(state_root)
    if (root / "src/util2.py").exists():
        os.rename(root / "src/util2.py", root / "src/util.py")
    os.chmod(root / "src/main.py", 0o644)
    tree.git("checkout", "--", "README.md")
    again = random.Random(153).randbytes(1 << 20)
    (root / "again.bin").write_bytes(again)
    assert (root / "again.bin").read_bytes() == again
    assert_repo_reads_right(root)
    status = tree.git("status", "--porcelain").stdout.splitlines()
    assert status == ["?? again.bin"], status

    tree.unmount()
    fsck_clean(tree, state_root)


def test_remount_on_a_full_disk_is_writable_read_only_or_one_clear_line(
    small_remote: str, mounts: Callable[..., MountedTree], state_root: Path
) -> None:
    tree = mount_settled(mounts, small_remote)
    root = tree.path
    fill_through_mount(root / "big.bin")
    tree.unmount()

    # Filled through the mount: the overlay's reserve pays for the remount, which stays writable
    # (writes get ENOSPC) so the big file can be removed through it.
    tree.mount()
    assert tree.status()["read_only"] is False
    assert_repo_reads_right(root)
    expect_enospc(lambda: (root / "more.bin").write_bytes(b"m" * CHUNK), must_fail=True)
    os.unlink(root / "big.bin")
    robustness.add("full_disk_checks")
    (root / "small.txt").write_bytes(b"fits again\n")
    tree.unmount()
    fsck_clean(tree, state_root)

    # Filled by something else while the overlay held no reserve: the remount is read-only.
    (reserve,) = [mount.overlay / "reserve" for mount in StateRoot(state_root).mount_states()]
    reserve.unlink()
    filler = fill(state_root)
    os.truncate(filler, filler.stat().st_size - (128 << 10))
    tree.mount()
    status = tree.status()
    assert status["read_only"] is True and status["state"] == "mounted", status
    assert_repo_reads_right(root)
    assert (root / "small.txt").read_bytes() == b"fits again\n"
    with pytest.raises(OSError) as refused:
        (root / "other.txt").write_bytes(b"x")
    assert refused.value.errno == errno.EROFS
    assert tree.git("status", "--porcelain").stdout.splitlines() == ["?? small.txt"]
    (log_file,) = [mount.log_file for mount in StateRoot(state_root).mount_states()]
    assert "mounting read-only" in log_file.read_text()
    robustness.add("full_disk_checks")
    tree.unmount()

    # Not a byte left: the mount refuses in one line that says why.
    fill(state_root)
    tree.path.mkdir(exist_ok=True)
    refused_mount = run_cli("mount", small_remote, str(tree.path), root=state_root, check=False)
    assert refused_mount.returncode != 0
    assert not is_mounted(tree.path)
    message = refused_mount.stderr.strip()
    assert len(message.splitlines()) == 1 and "no space left in the state root" in message, message
    assert "internal error" not in message and "Traceback" not in message
    robustness.add("full_disk_checks")

    # Space back: a normal, writable mount over state that fsck finds clean.
    filler.unlink()
    tree.mount()
    assert tree.status()["read_only"] is False
    (root / "after.txt").write_bytes(b"writable again\n")
    assert_repo_reads_right(root)
    tree.unmount()
    fsck_clean(tree, state_root)


# ---------------------------------------------------------------------------
# The overlay store alone, on a tiny tmpfs: what a full disk does to its files.
# ---------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "tiny", "2m") as directory:
        yield directory


def test_store_changes_on_a_full_disk_fail_whole_and_map_to_enospc(tiny_disk: Path) -> None:
    store = OverlayStore(tiny_disk / "overlay")
    with store.batch() as batch:
        batch.put(OverlayRow("kept", EntryKind.DIR, 0o40755))
    filler = fill(tiny_disk)
    names = [f"d{number:03}-" + "n" * 200 for number in range(200)]
    committed = []
    for name in names:  # long names: sooner or later a transaction needs a page the disk lacks
        try:
            with store.batch() as batch:
                batch.put(OverlayRow(name, EntryKind.DIR, 0o40755))
        except Exception as error:
            assert errno_for(error) == errno.ENOSPC, repr(error)
            break
        committed.append(name)
    else:
        pytest.fail("the disk never filled up")
    # The failed transaction is gone: the store still reads, and the next change fails the same way.
    assert store.get("kept") is not None and store.get(name) is None
    with pytest.raises(Exception) as again:
        with store.batch() as batch:
            batch.put(OverlayRow(name, EntryKind.DIR, 0o40755))
    assert errno_for(again.value) == errno.ENOSPC, repr(again.value)
    store.close()
    records = store.journal.path.read_bytes().split(b"\0")
    assert records.pop() == b"", "the journal ends in a torn record"
    assert set(records) <= {b"kept", *(name.encode() for name in names)}, records
    filler.unlink()
    rows, problems = inspect_database(tiny_disk / "overlay", read_only=False)
    assert not problems and set(rows) == {"kept", *committed}


def test_removal_on_a_full_disk_uses_the_reserve_and_the_reserve_comes_back(tiny_disk: Path) -> None:
    store = OverlayStore(tiny_disk / "overlay")
    store.arm_reserve()
    reserve = tiny_disk / "overlay" / "reserve"
    assert reserve.stat().st_size == RESERVE_BYTES
    data_id = store.new_data_file(None)
    with store.batch() as batch:
        for number in range(40):
            batch.put(OverlayRow(f"dir{number}", EntryKind.DIR, 0o40755))
        batch.put(OverlayRow("big", EntryKind.FILE, 0o100644, data_id=data_id))
    with open(store.data_path(data_id), "ab", buffering=0) as stream, pytest.raises(OSError):
        while True:
            stream.write(b"\xa5" * 4096)
    journal_size = store.journal.path.stat().st_size
    with pytest.raises(OSError) as refused:
        store.journal.append([b"x" * 8192])
    assert refused.value.errno == errno.ENOSPC
    assert store.journal.path.stat().st_size == journal_size

    def remove_everything() -> None:
        with store.batch() as batch:
            batch.delete_subtree("")

    with pytest.raises(Exception) as without_reserve:
        remove_everything()
    assert errno_for(without_reserve.value) == errno.ENOSPC
    store.with_reserve(remove_everything)
    assert store.all_rows() == []
    assert not store.data_path(data_id).exists()
    assert reserve.stat().st_size == RESERVE_BYTES, "freeing the big file rebuilds the reserve"
    store.close()
