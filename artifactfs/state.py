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
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

ROOT_ENVIRONMENT_VARIABLE = "ARTIFACTFS_ROOT"


def state_root(override: str | os.PathLike[str] | None = None) -> Path:
    if override:
        return Path(override).absolute()
    from_environment = os.environ.get(ROOT_ENVIRONMENT_VARIABLE)
    if from_environment:
        return Path(from_environment).absolute()
    return Path(platformdirs.user_data_dir("artifactfs", appauthor=False))


def config_file() -> Path:
    return Path(platformdirs.user_config_dir("artifactfs", appauthor=False)) / "config.toml"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:20]


@dataclass(frozen=True)
class RuntimeRecord:
    """What a running daemon publishes about itself under ``run/``."""

    pid: int
    mountpoint: str
    state_dir: str
    remote: str
    socket: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class StateRoot:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def blob_cache_dir(self) -> Path:
        return self.root / "cache" / "blobs"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def mount_dir(self, mountpoint: Path, remote_display: str) -> Path:
        return self.root / "mounts" / _digest(str(mountpoint), remote_display)

    def run_key(self, mountpoint: Path) -> str:
        return _digest(str(mountpoint))

    def socket_path(self, mountpoint: Path) -> Path:
        return self.run_dir / f"{self.run_key(mountpoint)}.sock"

    def runtime_file(self, mountpoint: Path) -> Path:
        return self.run_dir / f"{self.run_key(mountpoint)}.json"

    def publish_runtime(self, record: RuntimeRecord) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        target = self.runtime_file(Path(record.mountpoint))
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps(record.as_dict()))
        os.replace(temporary, target)

    def withdraw_runtime(self, mountpoint: Path) -> None:
        self.runtime_file(mountpoint).unlink(missing_ok=True)
        self.socket_path(mountpoint).unlink(missing_ok=True)

    def runtime(self, mountpoint: Path) -> RuntimeRecord | None:
        try:
            return RuntimeRecord(**json.loads(self.runtime_file(mountpoint).read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def runtimes(self) -> list[RuntimeRecord]:
        records = []
        for path in sorted(self.run_dir.glob("*.json")):
            try:
                records.append(RuntimeRecord(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue
        return records


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
