"""Driving real mounts from tests and benchmarks through the real CLI.

:class:`MountedTree` runs ``artifactfs mount`` exactly as a user would (a
separate daemon process, a real FUSE mount) and always cleans up, falling
back to ``fusermount3 -u -z`` if the daemon is gone.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from artifactfs.daemon import control
from artifactfs.daemon.recovery import is_mounted as is_mounted
from artifactfs.state import StateRoot


def artifactfs_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "artifactfs", *arguments]


def run_cli(
    *arguments: str, root: Path, check: bool = True, timeout: float = 120.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one ``artifactfs`` command with the given state root."""
    environment = {**os.environ, "ARTIFACTFS_ROOT": str(root), **(env or {})}
    result = subprocess.run(
        artifactfs_command(*arguments),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"artifactfs {' '.join(arguments)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result


def force_unmount(path: Path) -> None:
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


class MountedTree:
    """A mounted remote; use as a context manager or call mount()/unmount()."""

    def __init__(
        self,
        remote: str,
        mountpoint: Path,
        root: Path,
        extra_arguments: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.remote = remote
        self.path = mountpoint
        self.root = root
        self.extra_arguments = list(extra_arguments)
        self.env = env
        self.mount_seconds: float | None = None

    def mount(self) -> MountedTree:
        self.path.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        run_cli("mount", *self.extra_arguments, self.remote, str(self.path), root=self.root, env=self.env)
        self.mount_seconds = time.perf_counter() - started
        return self

    def unmount(self) -> None:
        if is_mounted(self.path):
            result = run_cli("unmount", str(self.path), root=self.root, check=False)
            if result.returncode != 0:
                force_unmount(self.path)

    def status(self) -> dict[str, Any]:
        """The daemon's status, straight from its control socket (no CLI start-up cost)."""
        socket_path = StateRoot(self.root).socket_path(Path(os.path.realpath(self.path)))
        return control.request(socket_path, "status")

    def record(self) -> list[dict[str, Any]]:
        """The daemon's hydration record: every blob that arrived, in order."""
        socket_path = StateRoot(self.root).socket_path(Path(os.path.realpath(self.path)))
        return list(control.request(socket_path, "record")["record"])

    def git(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["git", *arguments], cwd=self.path, capture_output=True, text=True, timeout=120
        )
        if check and result.returncode != 0:
            raise AssertionError(f"git {' '.join(arguments)} failed: {result.stderr.strip()}")
        return result

    def wait_for(self, predicate: Any, timeout: float = 60.0, interval: float = 0.05) -> dict[str, Any]:
        """Poll ``status --json`` until ``predicate(status)`` is true; returns that status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if predicate(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached within {timeout}s; last status: {status}")
            time.sleep(interval)

    def __enter__(self) -> MountedTree:
        return self.mount()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.unmount()


def read_fresh(path: Path) -> bytes:
    """Read through a fresh open, then drop the file's page cache so the next read asks FUSE again."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return b"".join(chunks)


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A real filesystem of ``size`` (e.g. ``"8m"``) mounted at ``directory``: one that fills up. Needs root."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)], check=True
    )
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=True)
