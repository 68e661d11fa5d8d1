"""Remote locations: parsing, validating and displaying Git remote URLs.

This module owns the one place where user-supplied remote text becomes a
:class:`RemoteURL`; scrubbing credentials from text is
:func:`artifactfs.redaction.redact`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

from artifactfs.errors import InvalidRemoteError
from artifactfs.redaction import redact

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class RemoteURL:
    """A validated remote: a smart-HTTP(S) URL or an absolute local repository path.

    ``url`` never carries userinfo; the credentials live in ``username`` and
    ``password`` so that no request URL, log line or message ever contains them.
    """

    kind: Literal["http", "local"]
    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, text: str) -> RemoteURL:
        """Parse user input into a remote, or raise :class:`InvalidRemoteError`."""
        if not text:
            raise InvalidRemoteError("remote URL is empty")
        if _CONTROL_RE.search(text):
            raise InvalidRemoteError("remote URL contains control characters")
        scheme_match = _SCHEME_RE.match(text)
        if scheme_match is not None:
            scheme = scheme_match.group(1).lower()
            if scheme in ("http", "https"):
                return cls._parse_http(text, scheme)
            if scheme == "file":
                return cls._parse_file(text)
            raise InvalidRemoteError(
                f"unsupported remote URL scheme {scheme!r}: use http://, https://, file:// or a local path"
            )
        if "://" in text:
            raise InvalidRemoteError(f"malformed remote URL: {redact(text)}")
        colon = text.find(":")
        slash = text.find("/")
        if colon > 0 and (slash < 0 or colon < slash):
            raise InvalidRemoteError(
                f"unsupported scp-like SSH remote {redact(text)!r}: use an http(s):// URL or a local path"
            )
        return cls._local(Path(text))

    @classmethod
    def _parse_http(cls, text: str, scheme: str) -> RemoteURL:
        shown = redact(text)
        if any(ch.isspace() for ch in text):
            raise InvalidRemoteError(f"malformed remote URL (contains whitespace): {shown}")
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise InvalidRemoteError(f"malformed remote URL ({_first_line(exc)}): {shown}") from None
        if not parts.hostname:
            raise InvalidRemoteError(f"malformed remote URL (no host): {shown}")
        if port == 0:
            raise InvalidRemoteError(f"malformed remote URL (port 0): {shown}")
        if parts.query or parts.fragment or text.endswith(("?", "#")):
            raise InvalidRemoteError(f"remote URL must not contain a query or fragment: {shown}")
        host = parts.netloc.rpartition("@")[2]
        if host.endswith(":"):
            raise InvalidRemoteError(f"malformed remote URL (empty port): {shown}")
        path = parts.path.rstrip("/")
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        return cls("http", f"{scheme}://{host}{path}", username, password)

    @classmethod
    def _parse_file(cls, text: str) -> RemoteURL:
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise InvalidRemoteError(f"file:// URL must not name a host: {redact(text)}")
        if parts.query or parts.fragment:
            raise InvalidRemoteError(f"file:// URL must not contain a query or fragment: {text}")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise InvalidRemoteError(f"file:// URL needs an absolute path: {text}")
        return cls._local(Path(path))

    @classmethod
    def _local(cls, path: Path) -> RemoteURL:
        resolved = path.resolve()
        if not resolved.exists():
            raise InvalidRemoteError(f"local remote path does not exist: {resolved}")
        return cls("local", str(resolved))

    def redacted(self) -> str:
        """Display form: the URL with the username (if any) but never the password."""
        if self.kind == "http" and self.username is not None:
            scheme, _, rest = self.url.partition("://")
            return f"{scheme}://{quote(self.username, safe='')}@{rest}"
        return self.url


def _first_line(exc: BaseException) -> str:
    message = str(exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__
