"""Client of the Git LFS batch API: where to download objects from, and the download itself.

One ``POST {endpoint}/objects/batch`` (operation ``download``, transfer
``basic``) names many objects; the server answers each with an ``href`` and
the ``header`` values to send with it, or an error. Content is streamed into
the object store, which installs it only after its sha256 and size match the
pointer. Credentials (the git remote's, given only for an endpoint on the
remote's own origin) go as HTTP Basic auth, never in a URL or a log line; an
``href`` on another origin gets only the headers the server gave for it.
"""

from __future__ import annotations

import base64
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from artifactfs.errors import MissingObjectError, TransientRemoteError
from artifactfs.lfs.objects import LfsObjectStore
from artifactfs.lfs.pointer import LfsPointer
from artifactfs.remote.credentials import Credential
from artifactfs.remote.transport import USER_AGENT

log = logging.getLogger("artifactfs.lfs.batch")

MEDIA_TYPE = "application/vnd.git-lfs+json"
_READ_SIZE = 1 << 20

CredentialSource = Callable[[], Awaitable[Credential | None]]


@dataclass(frozen=True)
class Download:
    """Where the server says one object's content is."""

    href: str
    headers: dict[str, str] = field(repr=False)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def same_origin(first: str, second: str) -> bool:
    """Whether two URLs share scheme, host and port (a default port written out or not)."""

    def origin(url: str) -> tuple[str, str | None, int | None]:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        return scheme, parts.hostname, parts.port or _DEFAULT_PORTS.get(scheme)

    return origin(first) == origin(second)


def endpoint_for_remote(remote_url: str) -> str:
    """git-lfs's default endpoint for a git remote: ``<url>.git/info/lfs`` (``.git`` added if missing)."""
    base = remote_url.rstrip("/")
    return (base if base.endswith(".git") else base + ".git") + "/info/lfs"


class LfsClient:
    """Downloads LFS objects from one endpoint; safe to use from several tasks at once.

    ``credential`` is asked only when the endpoint shares the git remote's
    origin (``remote_url``); other endpoints are asked anonymously.
    """

    def __init__(
        self, endpoint: str, remote_url: str, credential: CredentialSource, *, timeout: float
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.description = _redacted(self.endpoint)
        self._credential = credential if same_origin(self.endpoint, remote_url) else None
        self._client = httpx.AsyncClient(
            verify=ssl.create_default_context(),
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": USER_AGENT},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _auth(self) -> dict[str, str]:
        """The Authorization header for this endpoint's origin, if it has credentials."""
        if self._credential is None:
            return {}
        credential = await self._credential()
        if credential is None:
            return {}
        token = base64.b64encode(f"{credential.username}:{credential.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def locate(self, pointers: Sequence[LfsPointer]) -> dict[str, Download | Exception]:
        """Ask where each object is: a :class:`Download`, or the error for that object
        (:class:`MissingObjectError` when the server does not have it)."""
        body = {
            "operation": "download",
            "transfers": ["basic"],
            "objects": [{"oid": pointer.oid, "size": pointer.size} for pointer in pointers],
        }
        try:
            reply = await self._client.post(
                f"{self.endpoint}/objects/batch",
                json=body,
                headers={"Accept": MEDIA_TYPE, "Content-Type": MEDIA_TYPE, **await self._auth()},
            )
        except httpx.HTTPError as error:
            raise TransientRemoteError(f"{self.description}: {type(error).__name__}") from None
        if reply.status_code != 200:
            raise TransientRemoteError(f"{self.description}: batch request failed (HTTP {reply.status_code})")
        try:
            objects = reply.json()["objects"]
            answers = {str(entry["oid"]): entry for entry in objects}
        except (ValueError, KeyError, TypeError):
            raise TransientRemoteError(f"{self.description}: garbled batch reply") from None
        return {pointer.oid: self._answer(pointer, answers.get(pointer.oid)) for pointer in pointers}

    def _answer(self, pointer: LfsPointer, entry: Any) -> Download | Exception:
        if not isinstance(entry, dict):
            return TransientRemoteError(f"{self.description}: no answer for LFS object {pointer.oid}")
        error = entry.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            message = (
                f"{self.description}: LFS object {pointer.oid}: {error.get('message', '')} (code {code})"
            )
            return MissingObjectError(message) if code in (404, 410) else TransientRemoteError(message)
        action = (entry.get("actions") or {}).get("download")
        if not isinstance(action, dict) or not isinstance(action.get("href"), str):
            return TransientRemoteError(
                f"{self.description}: no download action for LFS object {pointer.oid}"
            )
        headers = action.get("header") or {}
        if not isinstance(headers, dict):
            return TransientRemoteError(f"{self.description}: garbled headers for LFS object {pointer.oid}")
        return Download(action["href"], {str(key): str(value) for key, value in headers.items()})

    async def fetch(self, pointer: LfsPointer, download: Download, store: LfsObjectStore) -> None:
        """Stream the object into ``store``; raises CorruptObjectError (wrong length or hash),
        MissingObjectError (404/410) or TransientRemoteError."""
        headers = dict(download.headers)
        if "authorization" not in {key.lower() for key in headers} and same_origin(
            download.href, self.endpoint
        ):
            headers.update(await self._auth())
        partial = store.receive(pointer.oid, pointer.size)
        try:
            try:
                async with self._client.stream(
                    "GET", download.href, headers=headers, follow_redirects=True
                ) as reply:
                    if reply.status_code in (404, 410):
                        raise MissingObjectError(f"{self.description}: LFS object {pointer.oid} is gone")
                    if reply.status_code != 200:
                        raise TransientRemoteError(
                            f"{self.description}: download of LFS object {pointer.oid} failed "
                            f"(HTTP {reply.status_code})"
                        )
                    async for chunk in reply.aiter_bytes(_READ_SIZE):
                        partial.write(chunk)
            except httpx.HTTPError as error:
                raise TransientRemoteError(
                    f"{self.description}: download of LFS object {pointer.oid}: {type(error).__name__}"
                ) from None
            partial.commit()
        finally:
            partial.discard()


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return parts._replace(netloc=host, query="", fragment="").geturl()
