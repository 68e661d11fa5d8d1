"""ArtifactFS's public testing API (see docs/testing.md).

Fast repository builders, a real smart-HTTP Git server with request records
and fault injection, a fault-injecting proxy, a driver for real mounts through
the CLI, and the one way tests wait for a condition. The most used names are
re-exported here; the submodules (``repos``, ``gitserver``, ``faultproxy``,
``mounts``, ``waiting``) hold the rest."""

from artifactfs.testing.gitserver import GitHttpServer, RequestRecord
from artifactfs.testing.repos import (
    SERVED_CONFIG,
    FileSpec,
    commit_files,
    git,
    git_env,
    make_bare_repo,
)

__all__ = [
    "SERVED_CONFIG",
    "FileSpec",
    "GitHttpServer",
    "RequestRecord",
    "commit_files",
    "git",
    "git_env",
    "make_bare_repo",
]
