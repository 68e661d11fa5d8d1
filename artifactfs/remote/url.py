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
_SSH_SCHEMES = ("ssh", "git+ssh", "ssh+git")
_DRIVE_RE = re.compile(r"^[A-Za-z]:[\\/]")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class SshTarget:
    """Where an ssh remote's ``git-upload-pack`` runs: ``[user@]host`` (and port), and the repository path."""

    host: str
    path: str
    user: str | None = None
    port: int | None = None

    @property
    def destination(self) -> str:
        """The ``[user@]host`` argument of ssh."""
        return self.host if self.user is None else f"{self.user}@{self.host}"


@dataclass(frozen=True)
class RemoteURL:
    """A validated remote: a smart-HTTP(S) URL, an ssh remote or an absolute local repository path.

    ``url`` never carries a password; HTTP credentials live in ``username`` and
    ``password`` so that no request URL, log line or message ever contains them.
    An ssh remote's ``url`` is the form the user gave (``ssh://`` or scp-like),
    which git in the mount uses as it is; ``ssh`` says where to connect.
    """

    kind: Literal["http", "ssh", "local"]
    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssh: SshTarget | None = None

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
            if scheme in _SSH_SCHEMES:
                return cls._parse_ssh(text)
            raise InvalidRemoteError(
                f"unsupported remote URL scheme {scheme!r}: "
                "use http://, https://, ssh://, file://, [user@]host:path or a local path"
            )
        if "://" in text:
            raise InvalidRemoteError(f"malformed remote URL: {redact(text)}")
        # git's rule: a colon before any slash makes it scp-like ssh ("host:path", "[host:22]:path"),
        # so "./a:b" or "/srv/a:b" stay local paths and "a:b" never is one.
        # A drive-letter path ("C:\\src", "C:/src") is a path, as git reads it on Windows.
        colon = text.find(":", text.find("]") + 1 if text.startswith("[") else 0)
        slash = text.find("/")
        if colon >= 0 and (slash < 0 or colon < slash) and not _DRIVE_RE.match(text):
            return cls._parse_scp(text, colon)
        return cls._local(Path(text))

    @classmethod
    def _parse_ssh(cls, text: str) -> RemoteURL:
        if any(ch.isspace() for ch in text):
            raise InvalidRemoteError(f"malformed ssh URL (contains whitespace): {redact(text)}")
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise InvalidRemoteError(f"malformed ssh URL ({_first_line(exc)}): {redact(text)}") from None
        if parts.password is not None:
            raise InvalidRemoteError(
                f"ssh URL must not contain a password (use ssh keys or ssh-agent): {redact(text)}"
            )
        if parts.query or parts.fragment:
            raise InvalidRemoteError(f"ssh URL must not contain a query or fragment: {redact(text)}")
        if not parts.hostname:
            raise InvalidRemoteError(f"malformed ssh URL (no host): {text}")
        if port == 0:
            raise InvalidRemoteError(f"malformed ssh URL (port 0): {text}")
        path = unquote(parts.path)
        if path.startswith("/~"):
            path = path[1:]  # ssh://host/~user/repo names a home directory, as in git
        user = unquote(parts.username) if parts.username else None
        host = parts.netloc.rpartition("@")[2]
        if host.startswith("["):
            host = host[1 : host.index("]")]
        else:
            host = host.partition(":")[0]
        target = _checked_target(SshTarget(host, path, user, port), text)
        return cls("ssh", text, ssh=target)

    @classmethod
    def _parse_scp(cls, text: str, colon: int) -> RemoteURL:
        where, path = text[:colon], text[colon + 1 :]
        user: str | None = None
        port: int | None = None
        if where.startswith("["):
            # "[host:port]:path" and "[user@host:port]:path", as git reads them.
            inner = where[1 : where.find("]")] if where.endswith("]") else ""
            if not inner:
                raise InvalidRemoteError(f"malformed scp-like ssh remote: {text}")
            where, _, port_text = inner.rpartition(":") if inner.count(":") == 1 else (inner, "", "")
            if port_text:
                if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                    raise InvalidRemoteError(f"malformed scp-like ssh remote (port): {text}")
                port = int(port_text)
        if "@" in where:
            user, _, where = where.rpartition("@")
        target = _checked_target(SshTarget(where, path, user or None, port), text)
        return cls("ssh", text, ssh=target)

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


def _checked_target(target: SshTarget, text: str) -> SshTarget:
    """Refuse what ssh would take for an option, or what names nothing."""
    if not target.host:
        raise InvalidRemoteError(f"malformed ssh remote (no host): {text}")
    if not target.path:
        raise InvalidRemoteError(f"malformed ssh remote (no repository path): {text}")
    for what, value in (("host", target.host), ("user", target.user or ""), ("path", target.path)):
        if value.startswith("-"):
            raise InvalidRemoteError(f"ssh remote {what} must not start with '-': {text}")
    return target


def _first_line(exc: BaseException) -> str:
    message = str(exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__
