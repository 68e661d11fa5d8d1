"""HTTP credentials: asking ``git credential`` (fill, approve, reject), and
deciding which of git's own credential requests the mount may answer.

Secrets travel only on the helper's stdin/stdout, never in argv, the
environment, log lines or exception messages.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import trio

from artifactfs.remote.pktline import one_line

log = logging.getLogger("artifactfs.remote.credentials")


@dataclass(frozen=True)
class Credential:
    username: str
    password: str = field(repr=False)


def describe(url: str) -> dict[str, str]:
    """The ``protocol``, ``host`` and ``path`` git's credential protocol names ``url`` by
    (``url`` carries no userinfo; ``host`` keeps an explicit port)."""
    parts = urlsplit(url)
    return {"protocol": parts.scheme, "host": parts.netloc, "path": unquote(parts.path.lstrip("/"))}


def asks_for(url: str, username: str | None, request: Mapping[str, str]) -> bool:
    """Whether git's credential ``request`` is about exactly ``url``: same protocol,
    host and path (git sends the path only with ``credential.useHttpPath``, which
    the gitdir sets for the origin), and the same user when both name one."""
    if any(request.get(key) != value for key, value in describe(url).items()):
        return False
    asked_user = request.get("username")
    return asked_user is None or username is None or asked_user == username


class GitCredentialHelper:
    """Asks the user's configured git credential helpers about one HTTP(S) URL.

    ``url`` must not contain userinfo; ``username`` is the one the remote URL
    named, if any. Interactive prompts are disabled (``GIT_TERMINAL_PROMPT=0``).
    """

    def __init__(self, url: str, username: str | None, *, timeout: float) -> None:
        self._description = describe(url)
        self._username = username
        self._timeout = timeout

    async def fill(self) -> Credential | None:
        """Credentials the helpers know for this URL, or ``None``."""
        output = await self._run("fill", self._username, None)
        if output is None:
            return None
        values: dict[str, str] = {}
        for line in output.decode("utf-8", "replace").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key] = value
        username = values.get("username")
        password = values.get("password")
        if not username or password is None:
            log.debug("git credential fill returned no usable credentials")
            return None
        return Credential(username, password)

    async def approve(self, credential: Credential) -> None:
        """Tell the helpers these credentials worked (so they may store them)."""
        await self._run("approve", credential.username, credential.password)

    async def reject(self, credential: Credential) -> None:
        """Tell the helpers these credentials were refused (so they may erase them)."""
        await self._run("reject", credential.username, credential.password)

    async def _run(self, action: str, username: str | None, password: str | None) -> bytes | None:
        lines = [f"{key}={value}" for key, value in self._description.items() if value]
        if username is not None:
            lines.append(f"username={username}")
        if password is not None:
            lines.append(f"password={password}")
        request = ("\n".join(lines) + "\n\n").encode()
        env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
        with trio.move_on_after(self._timeout) as scope:
            result = await trio.run_process(
                ["git", "credential", action],
                stdin=request,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=env,
            )
        if scope.cancelled_caught:
            log.warning("git credential %s timed out after %.0f s", action, self._timeout)
            return None
        if result.returncode != 0:
            log.debug("git credential %s failed: %s", action, one_line(_stderr_text(result)))
            return None
        return result.stdout


def _stderr_text(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode("utf-8", "replace") if result.stderr else f"exit {result.returncode}"
