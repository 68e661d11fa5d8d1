"""Byte transports for Git protocol v2: smart HTTP(S), local ``git upload-pack``
and (in :mod:`artifactfs.remote.ssh`) ``git-upload-pack`` over ssh.

A transport does two things: fetch the raw capability advertisement, and send
one command request and stream back the raw response bytes. It owns mapping
transport-level failures (HTTP status codes, connection errors, timeouts,
process failures) to :mod:`artifactfs.errors`; pkt-line content is the
protocol engine's business.
"""

from __future__ import annotations

import logging
import os
import ssl
import subprocess
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    aclosing,
    asynccontextmanager,
    contextmanager,
)
from typing import IO, Protocol, cast

import httpx
import trio

from artifactfs import __version__
from artifactfs.errors import (
    AuthenticationError,
    RemoteError,
    RemoteNotFoundError,
    RemoteUnreachableError,
    TransientRemoteError,
)
from artifactfs.remote.credentials import Credential, GitCredentialHelper
from artifactfs.remote.pktline import one_line
from artifactfs.remote.ssh import SshTransport
from artifactfs.remote.url import RemoteURL

log = logging.getLogger("artifactfs.remote.transport")

USER_AGENT = f"git/artifactfs-{__version__}"
_ADVERTISEMENT_TYPE = "application/x-git-upload-pack-advertisement"
_REQUEST_TYPE = "application/x-git-upload-pack-request"
_RESULT_TYPE = "application/x-git-upload-pack-result"
_INFO_REFS = "/info/refs?service=git-upload-pack"
_READ_SIZE = 65536


class Transport(Protocol):
    """What the protocol engine needs from a way of reaching ``git upload-pack``."""

    description: str
    """Credential-free name of the remote, for messages."""

    async def advertise(self) -> bytes:
        """The raw protocol v2 capability advertisement (pkt-lines)."""
        ...

    def request(self, body: bytes) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Send one command request; the context yields the response byte chunks."""
        ...

    async def credential(self) -> Credential | None:
        """Credentials for git in the mount to reach the same remote, or None."""
        ...

    async def aclose(self) -> None: ...


def open_transport(remote: RemoteURL, *, timeout: float) -> Transport:
    if remote.kind == "http":
        return HttpTransport(remote, timeout=timeout)
    if remote.kind == "ssh":
        return SshTransport(remote, timeout=timeout)
    return LocalTransport(remote.url, timeout=timeout)


class HttpTransport:
    """Git smart HTTP(S) over one shared :class:`httpx.AsyncClient`.

    Safe to use from several trio tasks at once; connections are pooled and
    kept alive. Credentials are sent as HTTP Basic auth, never in the URL.
    """

    def __init__(self, remote: RemoteURL, *, timeout: float) -> None:
        self.description = remote.redacted()
        self._base = remote.url
        self._timeout = timeout
        self._client = httpx.AsyncClient(
            # The system trust store, as git uses (honours SSL_CERT_FILE / SSL_CERT_DIR); httpx's
            # default loads certifi's whole bundle up front, 65 ms more on every mount.
            verify=ssl.create_default_context(),
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": USER_AGENT, "Git-Protocol": "version=2"},
        )
        self._username = remote.username
        self._credential: Credential | None = None
        self._password_in_url = remote.password is not None
        if remote.username is not None and remote.password is not None:
            self._credential = Credential(remote.username, remote.password)
        self._helper: GitCredentialHelper | None = None
        """Set once ``git credential fill`` has been asked (at most once per transport)."""
        self._approved = False
        self._auth_lock = trio.Lock()

    async def advertise(self) -> bytes:
        url = self._base + _INFO_REFS
        response = await self._send(
            "GET", url, None, expected_type=_ADVERTISEMENT_TYPE, follow_redirects=True
        )
        try:
            with _translate_http_errors(self.description):
                body = await response.aread()
        finally:
            await response.aclose()
        final = str(response.url)
        if final != url and final.endswith(_INFO_REFS):
            log.debug("remote redirected to %s", final.removesuffix(_INFO_REFS))
            self._base = final.removesuffix(_INFO_REFS)
        return body

    @asynccontextmanager
    async def request(self, body: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        response = await self._send(
            "POST", self._base + "/git-upload-pack", body, expected_type=_RESULT_TYPE, follow_redirects=False
        )
        chunks = self._chunks(response)
        try:
            yield chunks
        finally:
            with trio.CancelScope(shield=True):
                await chunks.aclose()
                await response.aclose()

    async def _chunks(self, response: httpx.Response) -> AsyncGenerator[bytes, None]:
        with _translate_http_errors(self.description):
            body_stream = cast(AsyncGenerator[bytes, None], response.aiter_bytes(_READ_SIZE))
            async with aclosing(body_stream) as body:
                async for chunk in body:
                    yield chunk

    async def aclose(self) -> None:
        await self._client.aclose()

    async def credential(self) -> Credential | None:
        """The credentials this transport authenticates with (from the URL, or filled
        after a 401); if it has none, what the user's credential helpers know now.
        The latter are not kept: the remote has not confirmed them."""
        if self._credential is not None:
            return self._credential
        return await GitCredentialHelper(self._base, self._username, timeout=self._timeout).fill()

    async def _send(
        self, method: str, url: str, body: bytes | None, *, expected_type: str, follow_redirects: bool
    ) -> httpx.Response:
        """Send with authentication (asking credential helpers after a 401 when the
        URL carried no password); return a streaming response that passed
        :meth:`_check`."""
        headers = {"Content-Type": _REQUEST_TYPE} if body is not None else {}
        while True:
            credential = self._credential
            auth = httpx.BasicAuth(credential.username, credential.password) if credential else None
            request = self._client.build_request(method, url, content=body, headers=headers)
            with _translate_http_errors(self.description):
                try:
                    response = await self._client.send(
                        request, auth=auth, stream=True, follow_redirects=follow_redirects
                    )
                except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                    # A pooled keep-alive connection the server had already
                    # closed; upload-pack requests are read-only, so resend once.
                    log.debug("%s: connection dropped before a response; retrying once", self.description)
                    response = await self._client.send(
                        request, auth=auth, stream=True, follow_redirects=follow_redirects
                    )
            if response.status_code in (401, 403):
                await response.aclose()
                if await self._retry_credentials(response.status_code, credential):
                    continue
                raise AuthenticationError(
                    f"{self.description}: authentication failed (HTTP {response.status_code})"
                )
            try:
                self._check(response, expected_type)
            except BaseException:
                await response.aclose()
                raise
            await self._confirm(credential)
            return response

    async def _retry_credentials(self, status: int, failed: Credential | None) -> bool:
        """After a 401/403: True if different credentials are now available to retry with."""
        async with self._auth_lock:
            if self._credential is not failed:
                return self._credential is not None
            if self._helper is None and status == 401 and not self._password_in_url:
                self._helper = GitCredentialHelper(self._base, self._username, timeout=self._timeout)
                self._credential = await self._helper.fill()
                if self._credential is None:
                    raise AuthenticationError(
                        f"{self.description}: authentication required and no credentials found"
                    )
                log.debug("retrying %s with credentials from git credential", self.description)
                return True
            if self._helper is not None and failed is not None:
                await self._helper.reject(failed)
                self._credential = None
            return False

    async def _confirm(self, credential: Credential | None) -> None:
        """Tell the credential helper that credentials it supplied were accepted."""
        if self._helper is None or credential is None or self._approved:
            return
        async with self._auth_lock:
            if not self._approved and self._credential is credential:
                self._approved = True
                await self._helper.approve(credential)

    def _check(self, response: httpx.Response, expected_type: str) -> None:
        status = response.status_code
        where = self.description
        if status in (404, 410):
            raise RemoteNotFoundError(f"{where}: no Git repository here (HTTP {status})")
        if status >= 500:
            raise TransientRemoteError(f"{where}: server error (HTTP {status})")
        if status != 200:
            raise RemoteError(f"{where}: unexpected HTTP status {status}")
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != expected_type:
            raise RemoteNotFoundError(
                f"{where}: not a smart Git HTTP server (content type {content_type or 'missing'!r})"
            )


@contextmanager
def _translate_http_errors(where: str) -> Iterator[None]:
    try:
        yield
    except httpx.ConnectTimeout:
        raise RemoteUnreachableError(f"{where}: connection timed out") from None
    except httpx.ConnectError as exc:
        raise RemoteUnreachableError(
            f"{where}: cannot connect ({one_line(str(exc)) or 'connection failed'})"
        ) from None
    except httpx.TimeoutException:
        raise TransientRemoteError(f"{where}: timed out waiting for the server") from None
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.CloseError) as exc:
        detail = one_line(str(exc)) or type(exc).__name__
        raise TransientRemoteError(f"{where}: connection broken ({detail})") from None
    except httpx.HTTPError as exc:
        raise RemoteError(f"{where}: HTTP failure ({one_line(str(exc)) or type(exc).__name__})") from None


class LocalTransport:
    """Runs ``git upload-pack --stateless-rpc`` on a local repository per command."""

    def __init__(self, path: str, *, timeout: float) -> None:
        self.description = path
        self._path = path
        self._timeout = timeout
        self._env = dict(os.environ, GIT_PROTOCOL="version=2")

    async def advertise(self) -> bytes:
        with trio.move_on_after(self._timeout) as scope:
            result = await trio.run_process(
                ["git", "upload-pack", "--stateless-rpc", "--advertise-refs", self._path],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=self._env,
            )
        if scope.cancelled_caught:
            raise TransientRemoteError(f"{self._path}: git upload-pack timed out")
        if result.returncode != 0:
            message = one_line(result.stderr.decode("utf-8", "replace")) or f"exit status {result.returncode}"
            if "not a git repository" in message or "does not appear to be a git repository" in message:
                raise RemoteNotFoundError(f"{self._path}: not a Git repository")
            raise RemoteError(f"{self._path}: git upload-pack failed: {message}")
        return result.stdout

    @asynccontextmanager
    async def request(self, body: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        with tempfile.TemporaryFile() as stderr:
            process = await trio.lowlevel.open_process(
                ["git", "upload-pack", "--stateless-rpc", self._path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=self._env,
            )
            chunks: AsyncGenerator[bytes, None] | None = None
            try:
                assert process.stdin is not None
                try:
                    await process.stdin.send_all(body)
                    await process.stdin.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    log.debug("git upload-pack exited before reading the whole request")
                chunks = self._chunks(process, stderr)
                yield chunks
            finally:
                with trio.CancelScope(shield=True):
                    if chunks is not None:
                        await chunks.aclose()
                    if process.returncode is None:
                        process.kill()
                    await process.wait()
                    for stream in (process.stdin, process.stdout):
                        if stream is not None:
                            await stream.aclose()

    async def _chunks(self, process: trio.Process, stderr: IO[bytes]) -> AsyncGenerator[bytes, None]:
        assert process.stdout is not None
        while True:
            with trio.move_on_after(self._timeout) as scope:
                chunk = await process.stdout.receive_some(_READ_SIZE)
            if scope.cancelled_caught:
                raise TransientRemoteError(f"{self._path}: timed out waiting for git upload-pack")
            if not chunk:
                break
            yield bytes(chunk)
        status = await process.wait()
        if status != 0:
            stderr.seek(0)
            message = one_line(stderr.read().decode("utf-8", "replace")) or f"exit status {status}"
            raise RemoteError(f"{self._path}: git upload-pack failed: {message}")

    async def credential(self) -> Credential | None:
        """A local repository needs none."""
        return None

    async def aclose(self) -> None:
        """Nothing to release: every request runs its own process."""
