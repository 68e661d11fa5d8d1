"""The program git runs to reach a mount's daemon (see :mod:`artifactfs.worktree.bridge`).

::

    python -m artifactfs.githelper SOCKET upload-pack [REPOSITORY]
        relay one upload-pack session (a lazy fetch) between git and the daemon
    python -m artifactfs.githelper SOCKET credential ACTION
        a git credential helper: for ``get``, print what the daemon answers

git starts it once per lazy fetch and once per credential request, so it
imports the control client and nothing heavier (no click, no trio).
Credentials pass only through the socket and stdout, never argv.
"""

from __future__ import annotations

import sys
from pathlib import Path

from artifactfs.daemon import control

_USAGE = "usage: python -m artifactfs.githelper SOCKET (upload-pack [REPOSITORY] | credential ACTION)"
_CREDENTIAL_WAIT = 90.0
"""Seconds to wait for the daemon's answer, which may ask the user's own credential helpers first."""


def _credential(socket: Path, action: str) -> None:
    """git's credential-helper protocol (gitcredentials(7)): key=value lines in, key=value lines out."""
    fields: dict[str, str] = {}
    for line in sys.stdin.read().splitlines():
        if not line:
            break
        key, separator, value = line.partition("=")
        if separator:
            fields[key] = value
    if action != "get":
        return  # store and erase: the daemon keeps what it has; nothing is written anywhere
    answer = control.request(socket, "credential", timeout=_CREDENTIAL_WAIT, action=action, fields=fields)
    if answer.get("username") and "password" in answer:
        sys.stdout.write(f"username={answer['username']}\npassword={answer['password']}\n")


def main(arguments: list[str]) -> int:
    if len(arguments) < 2 or arguments[1] not in ("upload-pack", "credential"):
        print(_USAGE, file=sys.stderr)
        return 2
    socket, operation = Path(arguments[0]), arguments[1]
    try:
        if operation == "upload-pack":
            control.relay(socket, "upload-pack", sys.stdin.fileno(), sys.stdout.fileno())
        elif len(arguments) == 3:
            _credential(socket, arguments[2])
        else:
            print(_USAGE, file=sys.stderr)
            return 2
    except control.ControlError as error:
        print(f"artifactfs: {error} (is the mount still running?)", file=sys.stderr)
        return 128
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
