"""Other users of this machine for tests: who runs a command in a mount, and how.

Tests run as root; a scenario for another user runs its commands through
``setpriv`` with that user's ids and no supplementary groups. ``ensure_user``
creates a system user (no home, no shell) the first time it is needed.
"""

from __future__ import annotations

import json
import pwd
import subprocess
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TESTER = "artifactfs-tester"
"""The second user of the POSIX and ownership tests."""
OUTSIDER = "artifactfs-outsider"
"""A third user: neither root nor a mount's owner."""
PYTHON = "/usr/bin/python3"

_PRELUDE = """
import errno, json, os, socket, stat, sys
def fails(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except OSError as error:
        return errno.errorcode[error.errno]
    return None
def info(path):
    st = os.lstat(path)
    return {"uid": st.st_uid, "gid": st.st_gid, "mode": st.st_mode, "nlink": st.st_nlink,
            "ino": st.st_ino, "size": st.st_size, "rdev": st.st_rdev,
            "atime": st.st_atime_ns, "mtime": st.st_mtime_ns, "ctime": st.st_ctime_ns}
"""


@dataclass(frozen=True)
class Actor:
    """Who runs a scenario: root, or an unprivileged user through ``setpriv``."""

    name: str
    uid: int
    gid: int

    @property
    def prefix(self) -> list[str]:
        if self.uid == 0:
            return []
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]

    def run(self, cwd: Path, code: str, *, check: bool = True) -> Any:
        """Run python ``code`` in ``cwd``; it prints one JSON value, returned decoded."""
        result = subprocess.run(
            [*self.prefix, PYTHON, "-c", _PRELUDE + textwrap.dedent(code)],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"as {self.name}: {result.stderr.strip()}")
        return json.loads(result.stdout) if result.stdout.strip() else None

    def command(
        self, cwd: Path, arguments: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``arguments`` as this user in ``cwd`` with exactly ``env`` (plus a PATH); never raises."""
        environment = {"PATH": "/usr/local/bin:/usr/bin:/bin", **(env or {})}
        return subprocess.run(
            [
                *self.prefix,
                "env",
                "-i",
                *(f"{key}={value}" for key, value in environment.items()),
                *arguments,
            ],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )


def ensure_user(name: str) -> Actor:
    """The system user ``name``, created (no home, no login shell) if missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True
        )
        entry = pwd.getpwnam(name)
    assert entry.pw_uid != 0
    return Actor(name, entry.pw_uid, entry.pw_gid)
