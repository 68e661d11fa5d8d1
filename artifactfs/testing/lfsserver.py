"""A real Git LFS server for tests: giftless with its local storage backend,
served by werkzeug's threaded WSGI server on 127.0.0.1.

It owns the server's lifetime, uploads of test objects through the real batch
API (``upload`` operation, ``basic`` transfer), and access to the stored
objects (to check what a push uploaded, or to damage one on purpose). Every
request is recorded as ``(method, path)``.

Given a :class:`~artifactfs.testing.gitserver.GitHttpServer`, it also relays
every request outside ``/info/lfs/`` to that server, so a repository and its
LFS endpoint share one origin (``git_url``), as on a forge; ``auth`` then
demands those HTTP Basic credentials on every request, except a storage
request that carries the token giftless signed for it (giftless checks that).
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wsgi import get_input_stream

from artifactfs.testing.gitserver import GitHttpServer

ORGANIZATION = "tests"
_MEDIA_TYPE = "application/vnd.git-lfs+json"
_RELAYED_HEADERS = ("content-type", "cache-control", "expires", "pragma")


def _basic(auth: tuple[str, str] | None) -> dict[str, str]:
    if auth is None:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(":".join(auth).encode()).decode()}


def pointer_text(content: bytes) -> bytes:
    """The LFS pointer file git-lfs writes for ``content``."""
    oid = hashlib.sha256(content).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(content)}\n".encode()


class LfsServer:
    """giftless over ``storage``; repository ``NAME`` is at :meth:`url` ``(NAME)``."""

    def __init__(
        self, storage: Path, *, git: GitHttpServer | None = None, auth: tuple[str, str] | None = None
    ) -> None:
        self.storage = Path(storage)
        self.git = git
        self.auth = auth
        self.requests: list[tuple[str, str]] = []
        self.authenticated: list[tuple[str, str]] = []
        """The requests that carried HTTP Basic credentials."""
        self._lock = threading.Lock()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.server_port

    def url(self, name: str) -> str:
        """The LFS endpoint (``lfs.url``) of repository ``name``."""
        if self.git is not None:
            return f"{self.git_url(name)}/info/lfs"
        return f"http://127.0.0.1:{self.port}/{ORGANIZATION}/{name}.git/info/lfs"

    def git_url(self, name: str) -> str:
        """Repository ``name`` of the relayed git server, on this server's origin."""
        assert self.git is not None, "no git server to relay to"
        return f"http://127.0.0.1:{self.port}/{ORGANIZATION}/{name}.git"

    def start(self) -> None:
        from giftless.app import init_app  # type: ignore[import-untyped]  # the test extra's dependency

        self.storage.mkdir(parents=True, exist_ok=True)
        app = init_app(
            additional_config={
                "AUTH_PROVIDERS": ["giftless.auth.allow_anon:read_write"],
                "LEGACY_ENDPOINTS": False,
                # Actions carry a signed token the storage views check; pyjwt wants a key of 32+ bytes.
                "PRE_AUTHORIZED_ACTION_PROVIDER": {"options": {"private_key": "artifactfs-test-" * 4}},
                "TRANSFER_ADAPTERS": {"basic": {"options": {"storage_options": {"path": str(self.storage)}}}},
            }
        )
        self._server = make_server("127.0.0.1", 0, self._front(app), threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="lfs-server", daemon=True)
        self._thread.start()

    def _front(self, app: Any) -> Any:
        def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
            path = environ.get("PATH_INFO", "")
            with self._lock:
                self.requests.append((environ["REQUEST_METHOD"], path))
                if str(environ.get("HTTP_AUTHORIZATION", "")).startswith("Basic "):
                    self.authenticated.append((environ["REQUEST_METHOD"], path))
            if not self._authorized(environ, path):
                start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="lfs"')])
                return [b"authentication required\n"]
            if self.git is not None and "/info/lfs/" not in path:
                return self._relay(environ, start_response)
            return app(environ, start_response)

        return wsgi

    def _authorized(self, environ: dict[str, Any], path: str) -> bool:
        if self.auth is None:
            return True
        header = str(environ.get("HTTP_AUTHORIZATION", ""))
        if header.startswith("Bearer ") and "/info/lfs/objects/storage/" in path:
            return True
        return header == _basic(self.auth)["Authorization"]

    def _relay(self, environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        """Send the request on to the git server (with its credentials) and stream its answer back."""
        assert self.git is not None
        path = environ["PATH_INFO"].removeprefix(f"/{ORGANIZATION}")
        query = environ.get("QUERY_STRING", "")
        url = f"http://127.0.0.1:{self.git.port}{path}" + (f"?{query}" if query else "")
        headers = {
            key[5:].replace("_", "-"): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
            and key not in ("HTTP_HOST", "HTTP_AUTHORIZATION", "HTTP_TRANSFER_ENCODING")
        }
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        headers.update(_basic(self.git.auth))
        body = get_input_stream(environ).read()
        with httpx.Client(timeout=60) as client:
            request = client.build_request(environ["REQUEST_METHOD"], url, content=body, headers=headers)
            reply = client.send(request, stream=True)
            try:
                passed = [
                    (key, value) for key, value in reply.headers.items() if key.lower() in _RELAYED_HEADERS
                ]
                start_response(f"{reply.status_code} {reply.reason_phrase}", passed)
                yield from reply.iter_raw()
            finally:
                reply.close()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def downloads(self) -> list[str]:
        """Object ids the server has sent content for, in order."""
        with self._lock:
            return [
                path.rsplit("/", 1)[1]
                for method, path in self.requests
                if method == "GET" and "/objects/storage/" in path
            ]

    def object_path(self, name: str, oid: str) -> Path:
        """Where the local storage backend keeps object ``oid`` of repository ``name``."""
        return self.storage / ORGANIZATION / name / oid

    def has_object(self, name: str, oid: str) -> bool:
        return self.object_path(name, oid).is_file()

    def upload(self, name: str, content: bytes) -> bytes:
        """Store ``content`` through the batch API; returns its pointer file."""
        oid = hashlib.sha256(content).hexdigest()
        request = {
            "operation": "upload",
            "transfers": ["basic"],
            "objects": [{"oid": oid, "size": len(content)}],
        }
        headers = {"Accept": _MEDIA_TYPE, "Content-Type": _MEDIA_TYPE}
        with httpx.Client(timeout=30) as client:
            reply = client.post(
                f"{self.url(name)}/objects/batch", json=request, headers={**headers, **_basic(self.auth)}
            )
            reply.raise_for_status()
            actions = reply.json()["objects"][0].get("actions", {})
            if "upload" in actions:
                upload = actions["upload"]
                client.put(
                    upload["href"], content=content, headers=upload.get("header", {})
                ).raise_for_status()
        return pointer_text(content)

    def corrupt(self, name: str, oid: str) -> None:
        """Flip one byte of a stored object, keeping its length."""
        path = self.object_path(name, oid)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        os.utime(path)
