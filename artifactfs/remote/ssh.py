"""The ssh transport: protocol v2 with ``git-upload-pack`` on the far side of ``ssh``.

It owns choosing and running the ssh command the way git does
(``GIT_SSH_COMMAND``, then ``core.sshCommand``, then ``GIT_SSH``, then
``ssh``; ``ssh.variant`` or the program's name decides which options it
takes), asking for protocol v2 (``GIT_PROTOCOL=version=2`` in the
environment, sent with ``-o SendEnv=GIT_PROTOCOL``, and put in front of the
remote command if the server did not accept the variable), and keeping
connections open between commands.

Over ssh, protocol v2 is a conversation: the server advertises its
capabilities once, then answers one command after another on the same
connection, each answer ending with a flush packet. Finding that end needs
only the pkt-line lengths, so a finished connection goes back to a small pool
and the next request skips ssh's handshake. Authentication is ssh's own
business (keys, ``ssh-agent`` through the inherited ``SSH_AUTH_SOCK``, the
user's ssh config); nothing secret passes through this module. ssh runs
with ``BatchMode=yes`` (unless the user's command says otherwise), since a
daemon has no one to answer a passphrase or host-key prompt.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import IO, Literal

import trio

from artifactfs.errors import (
    AuthenticationError,
    ProtocolError,
    RemoteError,
    RemoteNotFoundError,
    RemoteUnreachableError,
    TransientRemoteError,
)
from artifactfs.redaction import redact
from artifactfs.remote.credentials import Credential
from artifactfs.remote.pktline import one_line
from artifactfs.remote.url import RemoteURL, SshTarget

log = logging.getLogger("artifactfs.remote.ssh")

Variant = Literal["ssh", "plink", "putty", "tortoiseplink", "simple"]

_READ_SIZE = 65536
_MAX_IDLE = 4
_CLOSE_GRACE = 2.0
_HEX = frozenset(b"0123456789abcdefABCDEF")
_V2_GREETING = b"000eversion 2\n"


@dataclass(frozen=True)
class SshCommand:
    """The program that reaches the server, and how to pass it options."""

    words: list[str]
    """argv prefix; for a shell command (``GIT_SSH_COMMAND``, ``core.sshCommand``) ``sh -c``."""
    variant: Variant

    def argv(self, target: SshTarget, remote_command: str) -> list[str]:
        """The full command line for ``remote_command`` on ``target``, as git builds it."""
        options: list[str] = []
        if self.variant == "ssh":
            options += ["-o", "SendEnv=GIT_PROTOCOL", "-o", "BatchMode=yes"]
        elif self.variant == "tortoiseplink":
            options.append("-batch")
        if target.port is not None:
            if self.variant == "simple":
                raise RemoteError(
                    f"{target.host}: the ssh command cannot be given a port; set ssh.variant "
                    "(ssh, plink, putty or tortoiseplink) or put the port in your ssh config"
                )
            options += ["-P" if self.variant != "ssh" else "-p", str(target.port)]
        return [*self.words, *options, target.destination, remote_command]


def resolve_ssh_command(environ: dict[str, str], config: dict[str, str]) -> SshCommand:
    """git's order: ``GIT_SSH_COMMAND``, ``core.sshCommand``, ``GIT_SSH``, ``ssh``.

    ``config`` holds the user's ``core.sshcommand`` and ``ssh.variant`` (lower-case keys).
    """
    shell_command = environ.get("GIT_SSH_COMMAND") or config.get("core.sshcommand")
    if shell_command:
        words = ["sh", "-c", f'{shell_command} "$@"', shell_command]
        program = (shlex.split(shell_command) or ["ssh"])[0]
    else:
        program = environ.get("GIT_SSH") or "ssh"
        words = [program]
    return SshCommand(words, _variant(environ.get("GIT_SSH_VARIANT") or config.get("ssh.variant"), program))


def _variant(configured: str | None, program: str) -> Variant:
    if configured in ("ssh", "plink", "putty", "tortoiseplink", "simple"):
        return configured  # type: ignore[return-value]
    name = os.path.basename(program).lower().removesuffix(".exe")
    if name == "ssh":
        return "ssh"
    if name in ("plink", "putty", "tortoiseplink"):
        return name  # type: ignore[return-value]
    return "simple"


def upload_pack_command(path: str, *, protocol_in_command: bool) -> str:
    """The remote command: ``git-upload-pack '<path>'``, quoted as git quotes it."""
    quoted = "'" + path.replace("'", "'\\''").replace("!", "'\\!'") + "'"
    command = f"git-upload-pack {quoted}"
    return f"GIT_PROTOCOL=version=2 {command}" if protocol_in_command else command


class MessageFramer:
    """Finds where one pkt-line message ends (its first flush packet) in a byte stream."""

    def __init__(self) -> None:
        self._skip = 0
        self._header = b""

    def end(self, data: bytes) -> int | None:
        """Offset just past the flush that ends the message, or None if ``data`` does not hold it."""
        position = 0
        size = len(data)
        while True:
            if self._skip:
                step = min(self._skip, size - position)
                position += step
                self._skip -= step
                if self._skip:
                    return None
            needed = 4 - len(self._header)
            if position + needed > size:
                self._header += data[position:]
                return None
            header = self._header + data[position : position + needed]
            position += needed
            self._header = b""
            if not _HEX.issuperset(header):
                raise ProtocolError(f"malformed pkt-line length {header!r}")
            length = int(header, 16)
            if length == 0:
                return position
            if length in (1, 2):
                continue
            if length < 4:
                raise ProtocolError(f"malformed pkt-line length {header!r}")
            self._skip = length - 4


@dataclass
class _Connection:
    process: trio.Process
    stderr: IO[bytes]
    leftover: bytes = b""
    finished_message: bool = field(default=False)

    async def read_message(self, timeout: float, where: str) -> AsyncGenerator[bytes, None]:
        """The next message's bytes (its closing flush included) as they arrive."""
        assert self.process.stdout is not None
        framer = MessageFramer()
        self.finished_message = False
        pending, self.leftover = self.leftover, b""
        while True:
            if not pending:
                with trio.move_on_after(timeout) as scope:
                    pending = bytes(await self.process.stdout.receive_some(_READ_SIZE))
                if scope.cancelled_caught:
                    raise TransientRemoteError(f"{where}: timed out waiting for the server")
                if not pending:
                    return
            end = framer.end(pending)
            if end is not None:
                self.leftover = pending[end:]
                self.finished_message = True
                yield pending[:end]
                return
            yield pending
            pending = b""

    def failure(self) -> str:
        self.stderr.seek(0)
        lines = [line for line in self.stderr.read().decode("utf-8", "replace").splitlines() if line.strip()]
        return redact(one_line(lines[-1])) if lines else ""

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    await stream.aclose()
            with trio.move_on_after(_CLOSE_GRACE):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
            self.stderr.close()


class SshTransport:
    """``git-upload-pack`` over ssh, with finished connections kept for the next request.

    Safe to use from several trio tasks at once: each request has a
    connection of its own.
    """

    def __init__(self, remote: RemoteURL, *, timeout: float) -> None:
        assert remote.ssh is not None
        self.description = remote.url
        self._target = remote.ssh
        self._timeout = timeout
        self._env = dict(os.environ, GIT_PROTOCOL="version=2")
        self._command: SshCommand | None = None
        self._protocol_in_command = False
        self._idle: list[_Connection] = []

    async def advertise(self) -> bytes:
        connection, advertisement = await self._connect()
        await self._release(connection)
        return advertisement

    @asynccontextmanager
    async def request(self, body: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        holder: list[_Connection] = []
        chunks = self._exchange(body, holder)
        try:
            yield chunks
        finally:
            with trio.CancelScope(shield=True):
                await chunks.aclose()
                if holder:
                    await self._release(holder[0])

    async def _exchange(self, body: bytes, holder: list[_Connection]) -> AsyncGenerator[bytes, None]:
        """Send ``body`` and yield the response; a pooled connection that turns out dead
        before answering anything is replaced by a fresh one, once."""
        connection = await self._take()
        reused = connection is not None
        if connection is None:
            connection, _ = await self._connect()
        holder.append(connection)
        while True:
            received = False
            try:
                await self._send(connection, body)
                async with aclosing(connection.read_message(self._timeout, self.description)) as message:
                    async for chunk in message:
                        received = True
                        yield chunk
            except TransientRemoteError:
                if received or not reused:
                    raise
            if connection.finished_message:
                return
            if received or not reused:
                raise self._ended(connection)
            log.debug("%s: a kept ssh connection had closed; opening a new one", self.description)
            holder.clear()
            await connection.close()
            connection, _ = await self._connect()
            holder.append(connection)
            reused = False

    async def _send(self, connection: _Connection, body: bytes) -> None:
        assert connection.process.stdin is not None
        try:
            await connection.process.stdin.send_all(body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise TransientRemoteError(f"{self.description}: the ssh connection closed") from None

    async def _take(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.process.returncode is None and not connection.leftover:
                return connection
            await connection.close()
        return None

    async def _release(self, connection: _Connection) -> None:
        """Keep a connection whose last answer was read whole; close any other."""
        if (
            connection.finished_message
            and not connection.leftover
            and connection.process.returncode is None
            and len(self._idle) < _MAX_IDLE
        ):
            self._idle.append(connection)
        else:
            await connection.close()

    async def _connect(self) -> tuple[_Connection, bytes]:
        """Open a connection and read the server's greeting; ask for v2 in the command if it was not v2."""
        command = await self._ssh_command()
        while True:
            remote_command = upload_pack_command(
                self._target.path, protocol_in_command=self._protocol_in_command
            )
            connection = await self._spawn(command.argv(self._target, remote_command))
            advertisement = b"".join(
                [chunk async for chunk in connection.read_message(self._timeout, self.description)]
            )
            if not connection.finished_message:
                error = self._ended(connection)
                await connection.close()
                raise error
            if advertisement.startswith(_V2_GREETING) or self._protocol_in_command:
                return connection, advertisement
            # The server did not pass GIT_PROTOCOL on (no AcceptEnv, or an ssh without SendEnv).
            log.debug(
                "%s: no protocol v2 through the ssh environment; asking in the command", self.description
            )
            await connection.close()
            self._protocol_in_command = True

    async def _spawn(self, argv: list[str]) -> _Connection:
        stderr = tempfile.TemporaryFile()
        try:
            process = await trio.lowlevel.open_process(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=self._env
            )
        except OSError as error:
            stderr.close()
            raise RemoteError(f"{self.description}: cannot run {argv[0]}: {error.strerror}") from None
        return _Connection(process, stderr)

    def _ended(self, connection: _Connection) -> RemoteError:
        """The error for a connection that closed before its answer was complete."""
        message = connection.failure() or "the connection closed"
        where = self.description
        lowered = message.lower()
        if "permission denied" in lowered or "host key verification failed" in lowered:
            return AuthenticationError(f"{where}: ssh authentication failed: {message}")
        if "not a git repository" in lowered or "does not appear to be a git repository" in lowered:
            return RemoteNotFoundError(f"{where}: not a Git repository ({message})")
        if any(
            cause in lowered
            for cause in ("connection refused", "could not resolve", "no route to host", "timed out")
        ):
            return RemoteUnreachableError(f"{where}: cannot connect ({message})")
        return TransientRemoteError(f"{where}: the ssh connection ended early ({message})")

    async def _ssh_command(self) -> SshCommand:
        if self._command is None:
            self._command = resolve_ssh_command(dict(os.environ), await _user_ssh_config())
        return self._command

    async def credential(self) -> Credential | None:
        """ssh authenticates by itself; git in the mount runs the same ssh."""
        return None

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.close()


async def _user_ssh_config() -> dict[str, str]:
    """``core.sshCommand`` and ``ssh.variant`` from the user's (global and system) git config."""
    result = await trio.run_process(
        ["git", "config", "--get-regexp", r"^(core\.sshcommand|ssh\.variant)$"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd="/",
    )
    config: dict[str, str] = {}
    for line in result.stdout.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(" ")
        config[key.lower()] = value
    return config
