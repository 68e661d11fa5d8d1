"""Learned prefetch: which paths a mount reads in its first minutes, kept per repository.

A :class:`ProfileRecorder` notes each base file a mount reads (first reads
only, in order) during its first :data:`PROFILE_WINDOW` seconds. The next
mount of the repository queues those paths first, above the priority
classes. Profiles live in the state root's ``profiles/`` directory (owner
only, see :mod:`artifactfs.state`), one file per repository; with a shared
tier they are shared through it too, so a fleet learns what its agents read.
A repository whose profile is turned off (``artifactfs profile off``) neither
records nor follows one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from artifactfs.state import private_dir, read_private_bytes, repository_key, write_private_file

PROFILE_WINDOW = 180.0
"""Seconds after mounting during which reads are recorded."""
PROFILE_LIMIT = 5000
"""Paths kept per profile: about what an agent's first minutes touch."""
_VERSION = 1


class ProfileRecorder:
    """First reads of base files, in order, during the window."""

    def __init__(self, window: float = PROFILE_WINDOW, limit: int = PROFILE_LIMIT) -> None:
        self._started = time.monotonic()
        self._window = window
        self._limit = limit
        self._paths: dict[str, None] = {}

    def note(self, path: str) -> None:
        if path and path not in self._paths and len(self._paths) < self._limit and self.recording:
            self._paths[path] = None

    @property
    def recording(self) -> bool:
        return time.monotonic() - self._started < self._window

    @property
    def paths(self) -> list[str]:
        return list(self._paths)


def encode_profile(paths: Sequence[str]) -> bytes:
    return json.dumps({"version": _VERSION, "paths": list(paths)}, separators=(",", ":")).encode()


def decode_profile(data: bytes) -> list[str]:
    """The paths of a profile; an unreadable or foreign one is empty (a profile is only a hint)."""
    try:
        document = json.loads(data)
    except ValueError:
        return []
    if not isinstance(document, dict) or document.get("version") != _VERSION:
        return []
    paths = document.get("paths")
    if not isinstance(paths, list):
        return []
    return [path for path in paths[:PROFILE_LIMIT] if isinstance(path, str) and path]


class ProfileStore:
    """The profiles of one state root: ``profiles/<repository key>.json`` and ``.off`` markers."""

    def __init__(self, root: Path) -> None:
        self._directory = root / "profiles"

    @staticmethod
    def key(remote_display: str) -> str:
        """The repository's name in the store and in the tier: a digest of its (redacted) URL."""
        return repository_key(remote_display)

    def _file(self, key: str, suffix: str) -> Path:
        return self._directory / f"{key}{suffix}"

    def load(self, key: str) -> list[str] | None:
        try:
            return decode_profile(read_private_bytes(self._file(key, ".json")))
        except FileNotFoundError:
            return None

    def save(self, key: str, paths: Sequence[str]) -> None:
        private_dir(self._directory)
        write_private_file(self._file(key, ".json"), encode_profile(paths))

    def clear(self, key: str) -> bool:
        path = self._file(key, ".json")
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed

    def enabled(self, key: str) -> bool:
        return not self._file(key, ".off").exists()

    def set_enabled(self, key: str, enabled: bool) -> None:
        marker = self._file(key, ".off")
        if enabled:
            marker.unlink(missing_ok=True)
        else:
            private_dir(self._directory)
            write_private_file(marker, b"")
