"""Public testing helpers: fast repository builders and a real smart-HTTP Git
server with request recording and fault injection."""

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
