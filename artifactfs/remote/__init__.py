"""Talking to Git remotes: URL parsing, transports and the protocol v2 engine."""

from artifactfs.redaction import redact
from artifactfs.remote.protocol import FetchResponse, Ref, RemoteSession, open_remote
from artifactfs.remote.url import RemoteURL

__all__ = [
    "FetchResponse",
    "Ref",
    "RemoteSession",
    "RemoteURL",
    "open_remote",
    "redact",
]
