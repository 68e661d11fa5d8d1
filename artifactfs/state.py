"""Where ArtifactFS keeps things on disk.

The state root (``--root``, ``$ARTIFACTFS_ROOT``, else the platform's user data
directory) holds::

    cache/blobs/            content-addressed blob cache, shared by all mounts
    mounts/<key>/           one directory per (mountpoint, remote) pair
        gitdir/             the real partial-clone gitdir
        overlay/            copy-on-write overlay (SQLite + data files)
        mount.json          what was mounted (remote without credentials, ref)
        daemon.log          the daemon's log
    run/<key>.sock          control socket of a running daemon
    run/<key>.json          who is running there (pid, mountpoint, state dir)

The run key depends only on the mountpoint, so ``unmount DIR`` finds the
daemon without knowing the remote. Nothing under the root ever holds a secret.

Beside the roots, one machine-wide registry per user (:func:`registry_dir`)
holds a copy of each running mount's record, naming its state root, so that
``list``, ``status`` and ``unmount`` find every mount whatever ``--root`` it
uses. The registry lives on a runtime filesystem (``/run``), so a reboot
empties it; entries of daemons that died are pruned by whoever reads them.

This module also owns the rule that the state is private to its owner: every
directory under the root is 0700 and every file 0600 (blobs 0400), whatever
the umask; files are opened without following symlinks; and a root that other
users can write to, or that another user owns, is refused. Everything that
creates or opens something under the root goes through the functions here.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from artifactfs.errors import ArtifactFSError

log = logging.getLogger(__name__)

ROOT_ENVIRONMENT_VARIABLE = "ARTIFACTFS_ROOT"
REGISTRY_ENVIRONMENT_VARIABLE = "ARTIFACTFS_RUNTIME_DIR"
SYSTEM_REGISTRY = Path("/run/artifactfs")
"""The registry of root's mounts, wherever they were started from (a service has no XDG_RUNTIME_DIR)."""

PRIVATE_DIR_MODE = 0o700
"""Every directory under the state root."""
PRIVATE_EXECUTABLE_MODE = 0o700
"""The one executable ArtifactFS writes: the gitdir's fsmonitor hook."""
PRIVATE_FILE_MODE = 0o600
READ_ONLY_FILE_MODE = 0o400
"""Blob cache files: never rewritten in place."""
PRIVATE_UMASK = 0o077
"""The daemon's umask, for what its libraries and git subprocesses create (packs, SQLite's WAL)."""
GIT_SHARED_REPOSITORY = "0600"
"""``core.sharedRepository`` of every gitdir: git commands run in the mount write owner-only files too."""
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
_GROUP_AND_OTHER = 0o077


class StateRootError(ArtifactFSError):
    """The state root, or something in it, is not private to the user running ArtifactFS."""


def check_state_root(root: Path, *, create: bool) -> None:
    """Refuse a state root another user owns or can write to; create a missing one (0700) if ``create``.

    Others who can write the root could plant symlinks or runtime records in it
    (a sticky root of ours is fine: they cannot touch what we create there). A
    missing root is created only here, before anything is written below it.
    """
    try:
        info = os.stat(root)
    except FileNotFoundError:
        if create:
            try:
                root.parent.mkdir(parents=True, exist_ok=True)
                os.mkdir(root, PRIVATE_DIR_MODE)
            except FileExistsError:
                check_state_root(root, create=False)
            except OSError as error:
                raise StateRootError(f"cannot create the state root {root}: {error.strerror}") from None
        return
    except OSError as error:
        raise StateRootError(f"cannot use the state root {root}: {error.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise StateRootError(f"the state root {root} is not a directory")
    if info.st_uid != os.geteuid():
        raise StateRootError(
            f"the state root {root} belongs to uid {info.st_uid}, not to you (uid {os.geteuid()});"
            " run this as its owner or pass another --root"
        )
    if info.st_mode & _OTHERS_WRITE and not info.st_mode & stat.S_ISVTX:
        raise StateRootError(
            f"the state root {root} is writable by other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); chmod 700 it or pass another --root"
        )


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer can still allocate on ``directory``'s filesystem."""
    info = os.statvfs(directory)
    return info.f_bavail * info.f_frsize


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) 0700; an existing one must be our own directory and is made 0700.

    Making an existing directory 0700 also closes state written by older
    versions (0755 directories): nothing below it is reachable by others.
    """
    try:
        os.mkdir(path, PRIVATE_DIR_MODE)
    except FileNotFoundError:
        private_dir(path.parent)
        return private_dir(path)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise StateRootError(
            f"refusing to use {path}: it is a symlink, and ArtifactFS never creates one there (remove it)"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise StateRootError(f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        raise StateRootError(f"{path} belongs to uid {info.st_uid}, not to you (uid {os.geteuid()})")
    if stat.S_IMODE(info.st_mode) != PRIVATE_DIR_MODE:
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


def open_private(path: Path, flags: int) -> int:
    """``os.open`` for a file under the state root: never through a symlink, created 0600.

    An existing file must be a regular file of ours; group and other bits
    left by older versions are removed.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise StateRootError(
                f"refusing to open {path}: it is a symlink, and ArtifactFS never creates one"
                " there (remove it)"
            ) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateRootError(f"refusing to open {path}: it is not a regular file")
        if info.st_uid != os.geteuid():
            raise StateRootError(f"refusing to open {path}: it belongs to uid {info.st_uid}, not to you")
        if info.st_mode & _GROUP_AND_OTHER:
            os.fchmod(fd, stat.S_IMODE(info.st_mode) & ~_GROUP_AND_OTHER)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private_bytes(path: Path) -> bytes:
    """The content of a file under the state root, read without following a symlink."""
    with os.fdopen(open_private(path, os.O_RDONLY), "rb") as stream:
        return stream.read()


def write_private_file(path: Path, data: bytes, *, executable: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically (0600, or 0700 if ``executable``).

    A symlink at ``path`` is replaced, never followed. A file that already
    holds ``data`` with that mode is left alone, so a mount that rewrites its
    scripts and config on every start needs no free space when nothing changed.
    """
    mode = PRIVATE_EXECUTABLE_MODE if executable else PRIVATE_FILE_MODE
    try:
        info = os.lstat(path)
        if (
            stat.S_ISREG(info.st_mode)
            and stat.S_IMODE(info.st_mode) == mode
            and info.st_size == len(data)
            and read_private_bytes(path) == data
        ):
            return
    except (FileNotFoundError, StateRootError):
        pass  # absent, or not ours to read: replaced below
    temporary = path.with_name(f".{path.name}.artifactfs-tmp")
    try:
        with os.fdopen(open_private(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as stream:
            stream.write(data)
            if executable:
                os.fchmod(stream.fileno(), PRIVATE_EXECUTABLE_MODE)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def use_private_umask() -> None:
    """Make what the daemon's libraries and subprocesses create owner-only too (call once, at start)."""
    os.umask(PRIVATE_UMASK)


def state_root(override: str | os.PathLike[str] | None = None) -> Path:
    if override:
        return Path(override).absolute()
    from_environment = os.environ.get(ROOT_ENVIRONMENT_VARIABLE)
    if from_environment:
        return Path(from_environment).absolute()
    return Path(platformdirs.user_data_dir("artifactfs", appauthor=False))


def registry_dir() -> Path:
    """Where this user's running mounts are registered machine-wide.

    ``$ARTIFACTFS_RUNTIME_DIR`` if set; else ``/run/artifactfs`` for root;
    else ``$XDG_RUNTIME_DIR/artifactfs``; else a per-user directory in the
    temporary directory (checked like a state root before use).
    """
    override = os.environ.get(REGISTRY_ENVIRONMENT_VARIABLE)
    if override:
        return Path(override).absolute()
    if os.geteuid() == 0:
        return SYSTEM_REGISTRY
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "artifactfs"
    return Path(tempfile.gettempdir()) / f"artifactfs-{os.geteuid()}"


def config_file() -> Path:
    return Path(platformdirs.user_config_dir("artifactfs", appauthor=False)) / "config.toml"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:20]


def repository_key(remote_display: str) -> str:
    """A repository's name in per-repository state (prefetch profiles): a digest of its redacted URL."""
    return _digest("repository", remote_display)


@dataclass(frozen=True)
class RuntimeRecord:
    """What a running daemon publishes about itself under ``run/``."""

    pid: int
    mountpoint: str
    state_dir: str
    remote: str
    socket: str
    root: str = ""
    """The state root the daemon uses (older daemons did not record it)."""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class MountState:
    """The layout of one mount's state directory, ``mounts/<key>/``."""

    path: Path

    @property
    def gitdir(self) -> Path:
        return self.path / "gitdir"

    @property
    def overlay(self) -> Path:
        return self.path / "overlay"

    @property
    def description(self) -> Path:
        """``mount.json``: what was mounted there."""
        return self.path / "mount.json"

    @property
    def log_file(self) -> Path:
        return self.path / "daemon.log"


class StateRoot:
    """The layout of the state root: every path under it is spelled here (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def blob_cache_dir(self) -> Path:
        return self.root / "cache" / "blobs"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def mounts_dir(self) -> Path:
        return self.root / "mounts"

    def mount_dir(self, mountpoint: Path, remote_display: str) -> Path:
        return self.mounts_dir / _digest(str(mountpoint), remote_display)

    def mount_state(self, mountpoint: Path, remote_display: str) -> MountState:
        return MountState(self.mount_dir(mountpoint, remote_display))

    def mount_states(self) -> list[MountState]:
        """Every mount's state directory, in a stable order."""
        return [MountState(path) for path in sorted(self.mounts_dir.glob("*")) if path.is_dir()]

    def run_key(self, mountpoint: Path) -> str:
        return _digest(str(mountpoint))

    def socket_path(self, mountpoint: Path) -> Path:
        return self.run_dir / f"{self.run_key(mountpoint)}.sock"

    def runtime_file(self, mountpoint: Path) -> Path:
        return self.run_dir / f"{self.run_key(mountpoint)}.json"

    def publish_runtime(self, record: RuntimeRecord) -> None:
        """Record a running daemon under ``run/`` and in the machine-wide registry."""
        private_dir(self.run_dir)
        data = json.dumps({**record.as_dict(), "root": str(self.root)}).encode()
        write_private_file(self.runtime_file(Path(record.mountpoint)), data)
        try:
            check_state_root(registry_dir(), create=True)
            private_dir(registry_dir())
            write_private_file(_registry_file(Path(record.mountpoint)), data)
        except (OSError, StateRootError) as error:  # the mount works; only `list` elsewhere misses it
            log.warning("cannot register the mount in %s: %s", registry_dir(), error)

    def withdraw_runtime(self, mountpoint: Path) -> None:
        self.runtime_file(mountpoint).unlink(missing_ok=True)
        self.socket_path(mountpoint).unlink(missing_ok=True)
        unregister(mountpoint)

    def runtime(self, mountpoint: Path) -> RuntimeRecord | None:
        try:
            return RuntimeRecord(**json.loads(read_private_bytes(self.runtime_file(mountpoint))))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def state_dirs(self, mountpoint: Path) -> list[Path]:
        """Every state directory kept for ``mountpoint``: the running daemon's, then by ``mount.json``."""
        found: list[Path] = []
        record = self.runtime(mountpoint)
        if record is not None:
            found.append(Path(record.state_dir))
        for mount in self.mount_states():
            try:
                recorded = json.loads(read_private_bytes(mount.description)).get("mountpoint")
            except (OSError, ValueError, AttributeError, StateRootError):
                continue
            if recorded == str(mountpoint) and mount.path not in found:
                found.append(mount.path)
        return found

    def runtimes(self) -> list[RuntimeRecord]:
        records = []
        for path in sorted(self.run_dir.glob("*.json")):
            try:
                records.append(RuntimeRecord(**json.loads(read_private_bytes(path))))
            except (OSError, ValueError, TypeError):
                continue
        return records


def _registry_file(mountpoint: Path) -> Path:
    return registry_dir() / f"{_digest(str(mountpoint))}.json"


def unregister(mountpoint: Path, pid: int | None = None) -> None:
    """Remove ``mountpoint``'s entry from the machine-wide registry (only if daemon ``pid``'s, when given)."""
    path = _registry_file(mountpoint)
    try:
        if pid is not None:
            try:
                owner = json.loads(read_private_bytes(path)).get("pid")
            except (ValueError, AttributeError):
                owner = pid  # unreadable: nobody's entry
            if owner != pid:
                return  # a new daemon registered there since the entry was read
        path.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
    except (OSError, StateRootError) as error:
        log.warning("cannot withdraw %s from the registry: %s", mountpoint, error)


def registered() -> list[RuntimeRecord]:
    """Every record in the machine-wide registry, live or not (see ``recovery.live_registered``)."""
    directory = registry_dir()
    try:
        check_state_root(directory, create=False)
        paths = sorted(directory.glob("*.json"))
    except (OSError, StateRootError):
        return []
    records = []
    for path in paths:
        try:
            records.append(RuntimeRecord(**json.loads(read_private_bytes(path))))
        except (OSError, ValueError, TypeError, StateRootError):
            continue
    return records


class Footprint:
    """The directories an attempt is about to create, so that a failed attempt removes exactly those.

    Taken before the attempt: each given directory that does not exist yet,
    and its missing ancestors. :meth:`remove` deletes each such directory with
    all it holds if ``whole`` (state only this attempt wrote), else only if
    empty (a mountpoint), then the missing ancestors that are left empty.
    """

    def __init__(self, directories: Iterable[Path], *, whole: bool) -> None:
        self._whole = whole
        self._created: list[list[Path]] = []
        for directory in directories:
            missing: list[Path] = []
            current = directory
            while not _exists(current) and current != current.parent:
                missing.append(current)
                current = current.parent
            self._created.append(missing)

    def remove(self) -> None:
        for missing in self._created:
            for index, directory in enumerate(missing):
                try:
                    if index == 0 and self._whole:
                        shutil.rmtree(directory)
                    else:
                        os.rmdir(directory)
                except FileNotFoundError:
                    continue
                except OSError:
                    break  # not empty: someone else uses it now


def _exists(path: Path) -> bool:
    """False only for a path that is surely absent (a dead FUSE mount fails ``lstat`` but is there)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError:
        pass
    return True


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc to look at: trust kill()
    return status.rpartition(")")[2].split()[0] not in ("Z", "X")
