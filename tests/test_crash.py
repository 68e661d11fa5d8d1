"""kill -9 the daemon mid-flight, then ``unmount`` + ``mount`` again: fsync'd data survives.

Each cycle runs a writer (write + fsync numbered files, recording which fsyncs
returned), a renamer (renames one file back and forth, recording each rename
that returned) and bandwidth-capped background hydration, then SIGKILLs the
daemon. ``ARTIFACTFS_CRASH_CYCLES`` (default 3) sets the number of cycles.
"""

from __future__ import annotations

import errno
import functools
import os
import random
import signal
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import robustness

from artifactfs.state import StateRoot
from artifactfs.testing.mounts import MountedTree, is_mounted, run_cli
from artifactfs.testing.waiting import wait_for_exit, wait_until

pytestmark = pytest.mark.slow

CYCLES = int(os.environ.get("ARTIFACTFS_CRASH_CYCLES", "3"))
CRASH_SEED = int(os.environ.get("ARTIFACTFS_CRASH_SEED", "13"))
"""Seeds where in each cycle's workload the kill lands, so a failing run can be replayed."""


def crash_repo_files() -> dict[str, bytes]:
    rng = random.Random(11)
    files = {f"data/d{i % 8}/f{i}.bin": rng.randbytes(rng.randint(8, 120) << 10) for i in range(120)}
    files["README.md"] = b"# crash\n"
    files["keep/a.txt"] = b"a\n"
    return files


def content_for(cycle: int, number: int) -> bytes:
    return (f"cycle {cycle} file {number}\n".encode()) * (1 + number % 50)


def temporary_files(state_root: Path) -> dict[str, list[str]]:
    """Leftovers a crash can produce, by kind."""
    found: dict[str, list[str]] = {
        "cache tmp": [],
        "cache tmp dirs": [],
        "partial": [],
        "gitdir tmp": [],
        "overlay orphans": [],
    }
    tmp_dir = StateRoot(state_root).blob_cache_dir / "tmp"  # per-process scratch dirs: tmp/<pid>/<files>
    if tmp_dir.exists():
        for path in sorted(tmp_dir.rglob("*")):
            found["cache tmp dirs" if path.is_dir() else "cache tmp"].append(str(path.relative_to(tmp_dir)))
    for path in state_root.rglob("*"):
        name = path.name
        if name.endswith(".partial"):
            found["partial"].append(str(path))
        if "/gitdir/" in str(path) and (
            name.startswith("tmp_")
            or name.endswith(".artifactfs-tmp")
            or name.startswith(".tmp")
            or name.endswith(".lock")
        ):
            found["gitdir tmp"].append(str(path.relative_to(state_root)))
    for overlay in (
        mount.overlay for mount in StateRoot(state_root).mount_states() if mount.overlay.exists()
    ):
        connection = sqlite3.connect(f"file:{overlay / 'overlay.db'}?mode=ro", uri=True)
        try:
            referenced = {
                row[0] for row in connection.execute("SELECT data_id FROM entries WHERE data_id IS NOT NULL")
            }
        finally:
            connection.close()
        present = set(os.listdir(overlay / "data"))
        found["overlay orphans"] = sorted(present - referenced)
        missing = referenced - present
        assert not missing, f"overlay rows point at missing data files: {sorted(missing)[:5]}"
    return found


def hydration_moved_on(hydrated_before: int, status: dict[str, Any]) -> bool:
    hydration = status["hydration"]
    return bool(hydration["hydrated_blobs"] > hydrated_before or hydration["complete"])


class Workload:
    """Writer and renamer threads that record exactly what the mount acknowledged."""

    def __init__(self, root: Path, cycle: int) -> None:
        self.root = root
        self.cycle = cycle
        self.stop = threading.Event()
        self.fsynced: list[int] = []
        self.renamed_to: str | None = None  # name of the last rename that returned
        self.rename_target: str | None = None  # the rename in flight, if any
        self.unexpected: list[str] = []
        self.threads = [threading.Thread(target=self.writer), threading.Thread(target=self.renamer)]

    def start(self) -> None:
        (self.root / f"w{self.cycle}").mkdir()
        spinner = self.root / f"spin{self.cycle}"
        spinner.mkdir()
        with open(spinner / "a", "wb") as stream:
            stream.write(b"spinning " * 1000)
            stream.flush()
            os.fsync(stream.fileno())
        self.renamed_to = "a"
        for thread in self.threads:
            thread.start()

    def _gone(self, error: OSError) -> bool:
        """The daemon died: ENOTCONN/ECONNABORTED end the workload; anything else is a failure."""
        if error.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            return True
        self.unexpected.append(repr(error))
        return True

    def writer(self) -> None:
        number = 0
        while not self.stop.is_set():
            try:
                fd = os.open(
                    self.root / f"w{self.cycle}/n{number}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644
                )
                try:
                    os.write(fd, content_for(self.cycle, number))
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as error:
                if self._gone(error):
                    return
            self.fsynced.append(number)
            number += 1

    def renamer(self) -> None:
        directory = self.root / f"spin{self.cycle}"
        while not self.stop.is_set():
            current = self.renamed_to
            assert current is not None
            target = "b" if current == "a" else "a"
            self.rename_target = target
            try:
                os.rename(directory / current, directory / target)
            except OSError as error:
                if self._gone(error):
                    return
            self.renamed_to = target
            self.rename_target = None

    def acknowledged(self, writes: int) -> bool:
        """True once ``writes`` fsyncs returned (or the workload failed, which the test reports)."""
        return len(self.fsynced) >= writes or bool(self.unexpected)

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
            assert not thread.is_alive(), "a workload thread hung on the dead mount"


def test_kill_9_mid_flight_loses_nothing_acknowledged(make_repo, git_server, state_root, tmp_path, fuse):
    repo, _ = make_repo("crash", crash_repo_files())
    tree = MountedTree(git_server.url("crash"), tmp_path / "mnt", state_root, ["--max-bandwidth", "2M"])
    history: list[Workload] = []
    leftovers_per_cycle: list[int] = []
    crash_points = random.Random(CRASH_SEED)
    try:
        tree.mount()
        for cycle in range(CYCLES):
            hydrated_before = tree.status()["hydration"]["hydrated_blobs"]
            workload = Workload(tree.path, cycle)
            workload.start()
            # Kill after a seeded number of acknowledged writes, once hydration has moved on this cycle.
            writes = crash_points.randint(6, 60)
            wait_until(functools.partial(workload.acknowledged, writes), f"the writer did not reach {writes}")
            tree.wait_for(functools.partial(hydration_moved_on, hydrated_before), timeout=30)
            status = tree.status()
            assert not status["hydration"]["complete"] or cycle > 0, "hydration should still be in flight"
            os.kill(status["pid"], signal.SIGKILL)
            wait_for_exit(status["pid"])
            workload.join()
            assert not workload.unexpected, workload.unexpected
            assert len(workload.fsynced) > 5, "the writer should have made progress before the crash"
            history.append(workload)
            robustness.add("crashes_survived")

            # The stale mount is cleaned by `unmount`; fsck finds the state consistent.
            assert is_mounted(tree.path)
            run_cli("unmount", str(tree.path), root=state_root)
            assert not is_mounted(tree.path)
            checked = run_cli("fsck", str(tree.path), root=state_root, check=False)
            assert checked.returncode == 0, checked.stdout + checked.stderr
            after_crash = temporary_files(state_root)  # what the killed daemon left behind
            leftovers_per_cycle.append(len(after_crash["gitdir tmp"]))

            tree.mount()
            for earlier in history:
                for number in earlier.fsynced:
                    path = tree.path / f"w{earlier.cycle}/n{number}"
                    assert path.read_bytes() == content_for(earlier.cycle, number), (
                        f"lost fsync'd write {path}"
                    )
                spinner = tree.path / f"spin{earlier.cycle}"
                names = sorted(os.listdir(spinner))
                allowed = {earlier.renamed_to, earlier.rename_target} - {None}
                assert len(names) == 1 and names[0] in allowed, (names, allowed)
                assert (spinner / names[0]).read_bytes() == b"spinning " * 1000
            status_lines = tree.git("status", "--porcelain").stdout.splitlines()
            assert all(line.startswith("??") for line in status_lines), status_lines
            assert tree.git("diff", "--stat").stdout == ""
            checked = run_cli("fsck", str(tree.path), root=state_root, check=False)
            assert checked.returncode == 0, checked.stdout + checked.stderr

            # The new daemon removed the dead one's leftovers (its own in-flight spool files may exist).
            leftovers = temporary_files(state_root)
            assert not leftovers["overlay orphans"], leftovers
            assert not leftovers["partial"], leftovers
            assert not set(after_crash["cache tmp"]) & set(leftovers["cache tmp"]), (after_crash, leftovers)
            assert len(leftovers["cache tmp dirs"]) <= 4, (
                leftovers
            )  # scratch dirs of dead processes are removed
        # Whatever the gitdir keeps from a killed indexer must not pile up cycle after cycle.
        # (a killed `git index-pack` may leave a tmp_pack_* behind: at most one per fetch lane, never a pile).
        print("gitdir temporary files per cycle:", leftovers_per_cycle)
        assert max(leftovers_per_cycle) <= 4, (leftovers_per_cycle, temporary_files(state_root))
        assert leftovers_per_cycle[-1] <= leftovers_per_cycle[0] + 2, leftovers_per_cycle
        # Hydration still completes after all the crashes, and every blob is right.
        final = tree.wait_for(lambda s: s["hydration"]["complete"], timeout=90)["hydration"]
        assert final["failed_blobs"] == 0 and final["hydrated_blobs"] == final["total_blobs"], final
        for relative, data in crash_repo_files().items():
            assert (tree.path / relative).read_bytes() == data
            robustness.add("reads_verified")
    finally:
        tree.unmount()
