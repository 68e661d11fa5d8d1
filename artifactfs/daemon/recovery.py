"""Cleaning up after a daemon that died without unmounting (``kill -9``, OOM, crash).

Its FUSE mount stays behind with no one serving it: every access fails with
ENOTCONN. Such a mount can only be detached (lazily, so a shell sitting in it
does not block us); the overlay and caches under the state root are untouched
and the next daemon picks them up.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import subprocess
from pathlib import Path

from artifactfs.errors import MountpointError
from artifactfs.state import RuntimeRecord, StateRoot, pid_alive, registered, unregister

log = logging.getLogger(__name__)

_DEAD_CONNECTION = (errno.ENOTCONN, errno.ECONNABORTED)
"""What the kernel answers on a FUSE mount whose daemon is gone (ECONNABORTED right after it died)."""


def is_mounted(mountpoint: Path) -> bool:
    """Whether anything is mounted at ``mountpoint`` (read from the kernel's mount table, no I/O on it)."""
    escaped = str(mountpoint).replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")
    escaped = escaped.replace("\n", "\\012")
    try:
        with open("/proc/self/mountinfo") as table:
            return any(line.split(" ", 5)[4] == escaped for line in table)
    except OSError:
        return os.path.ismount(mountpoint)


def artifactfs_mounts() -> list[Path]:
    """Mountpoints of every ArtifactFS mount this process can see (from the kernel's mount table)."""
    try:
        with open("/proc/self/mountinfo") as table:
            lines = table.readlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields, _, tail = line.partition(" - ")
        if tail.split(" ", 1)[0] == "fuse.artifactfs":
            escaped = fields.split(" ")[4]
            found.append(Path(re.sub(r"\\([0-7]{3})", lambda match: chr(int(match[1], 8)), escaped)))
    return found


def is_stale_mount(mountpoint: Path) -> bool:
    """True when ``mountpoint`` is a FUSE mount whose daemon is gone.

    ``stat`` alone is not enough: the kernel may answer it from cached
    attributes, while ``statfs`` always asks the (missing) daemon.
    """
    try:
        os.stat(mountpoint)
        if not os.path.ismount(mountpoint):
            return False
        os.statvfs(mountpoint)
    except OSError as error:
        return error.errno in _DEAD_CONNECTION
    return False


def detach_stale_mount(mountpoint: Path) -> None:
    """Lazily unmount a dead FUSE mount; raises :class:`MountpointError` if that fails."""
    result = subprocess.run(
        ["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0 or is_stale_mount(mountpoint):
        raise MountpointError(
            f"{mountpoint} is a stale mount and cannot be detached: {result.stderr.strip()}"
        )
    log.warning("detached the stale mount at %s left by a daemon that died", mountpoint)


def withdraw_dead_runtime(state: StateRoot, mountpoint: Path) -> bool:
    """Remove the runtime record and socket of a daemon that no longer runs; True if there was one."""
    record = state.runtime(mountpoint)
    if record is None or pid_alive(record.pid):
        return False
    state.withdraw_runtime(mountpoint)
    log.warning("removed the runtime record of dead daemon %d for %s", record.pid, mountpoint)
    return True


def live_registered() -> list[RuntimeRecord]:
    """The machine-wide registry's mounts that still run; entries of dead daemons are removed.

    An entry whose pid is gone, or whose mountpoint holds no mount any more
    (its daemon is ending, or the pid was reused), is stale.
    """
    live = []
    for record in registered():
        if pid_alive(record.pid) and is_mounted(Path(record.mountpoint)):
            live.append(record)
        else:
            unregister(Path(record.mountpoint), record.pid)
    return live
