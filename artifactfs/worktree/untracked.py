"""git's untracked cache (the ``UNTR`` index extension) for a freshly published tree.

Without it, git's first ``git status`` lists every directory of the working
tree to look for untracked files, which through FUSE costs a request per
directory. With a cache that git trusts, and the fsmonitor extension saying
nothing changed, git lists no directory at all: a directory's cached listing
stays valid until the fsmonitor hook names something inside it.

A tree that was just published has no untracked files, so every directory's
cached listing is empty and valid. git checks three things before trusting
the cache, and this module computes each exactly as git does:

* the *ident*: the real path of the working tree and the system name;
* the *global exclude files*: ``$GIT_DIR/info/exclude`` and
  ``core.excludesFile`` (by default ``$XDG_CONFIG_HOME/git/ignore``), by the
  blob id of their content, or the null id when absent;
* each directory's ``.gitignore``, by blob id; a directory without one has
  the null id, which tells git not to even look for it.

The global exclude files are those of the user the daemon runs as. git run
by a user whose ``core.excludesFile`` differs rebuilds the cache once.
"""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from artifactfs.store.blobcache import blob_id
from artifactfs.worktree.ewah import encode_ewah, encode_varint

PER_DIRECTORY_EXCLUDE = ".gitignore"
DIR_FLAGS = (1 << 1) | (1 << 2)
"""``DIR_SHOW_OTHER_DIRECTORIES | DIR_HIDE_EMPTY_DIRECTORIES``: what ``git status`` asks by default."""
_NULL_OID = b"\0" * 20
_NULL_STAT = b"\0" * 36
"""A zeroed ``struct stat_data``. With fsmonitor, git does not compare a valid directory's stat data."""


@dataclass
class UntrackedDirectory:
    """One directory of the cache: its ``.gitignore`` blob (if any) and subdirectories by name."""

    exclude_oid: str | None = None
    valid: bool = True
    children: dict[bytes, UntrackedDirectory] = field(default_factory=dict)


@dataclass(frozen=True)
class UntrackedCache:
    """Everything the ``UNTR`` extension holds for one working tree."""

    ident: bytes
    info_exclude_oid: str | None
    excludes_file_oid: str | None
    root: UntrackedDirectory

    def encode(self) -> bytes:
        order: list[UntrackedDirectory] = []
        names = bytearray()

        def visit(name: bytes, directory: UntrackedDirectory) -> None:
            order.append(directory)
            children = sorted(directory.children.items())  # git finds them by binary search on the name
            names.extend(encode_varint(0) + encode_varint(len(children)) + name + b"\0")
            for child_name, child in children:
                visit(child_name, child)

        visit(b"", self.root)
        valid = [position for position, directory in enumerate(order) if directory.valid]
        with_exclude = [position for position, directory in enumerate(order) if directory.exclude_oid]
        return b"".join([
            encode_varint(len(self.ident)), self.ident,
            _NULL_STAT, _NULL_STAT, struct.pack(">I", DIR_FLAGS),
            _oid_bytes(self.info_exclude_oid), _oid_bytes(self.excludes_file_oid),
            PER_DIRECTORY_EXCLUDE.encode() + b"\0",
            encode_varint(len(order)),
            bytes(names),
            encode_ewah(valid, len(order)),
            encode_ewah((), len(order)),  # check-only: only for untracked directories, and there are none
            encode_ewah(with_exclude, len(order)),
            _NULL_STAT * len(valid),
            b"".join(bytes.fromhex(order[position].exclude_oid or "") for position in with_exclude),
            b"\0",
        ])


def _oid_bytes(oid: str | None) -> bytes:
    return bytes.fromhex(oid) if oid else _NULL_OID


def build_untracked_cache(worktree: Path, gitdir: Path, directories: Iterable[str],
                          gitignores: Mapping[str, str], changed: Iterable[str] = ()) -> UntrackedCache:
    """The cache for a tree with these ``directories`` ("" is the root, "/"-separated).

    ``gitignores`` maps a directory to the blob id of its ``.gitignore``;
    directories holding or above a ``changed`` path are left invalid, so git
    lists them once.
    """
    root = UntrackedDirectory(gitignores.get(""))
    nodes = {"": root}
    for path in sorted(directories):
        if not path:
            continue
        parent, _, name = path.rpartition("/")
        node = UntrackedDirectory(gitignores.get(path))
        nodes[parent].children[name.encode("utf-8", "surrogateescape")] = node
        nodes[path] = node
    for path in changed:
        directory = path.rpartition("/")[0]
        while True:
            node = nodes.get(directory)
            if node is not None:
                node.valid = False
            if not directory:
                break
            directory = directory.rpartition("/")[0]
    return UntrackedCache(
        ident=untracked_ident(worktree),
        info_exclude_oid=_exclude_file_id(gitdir / "info" / "exclude"),
        excludes_file_oid=_exclude_file_id(global_excludes_file(gitdir)),
        root=root,
    )


def untracked_ident(worktree: Path) -> bytes:
    """The string git ties a cache to: the working tree's real path and the system's name."""
    location = os.path.realpath(worktree)
    return f"Location {location}, system {os.uname().sysname}".encode("utf-8", "surrogateescape") + b"\0"


def global_excludes_file(gitdir: Path) -> Path | None:
    """``core.excludesFile`` as git resolves it for this user, or its XDG default."""
    result = subprocess.run(["git", "--git-dir", str(gitdir), "config", "--path", "--get", "core.excludesFile"],
                            capture_output=True, text=True, check=False)
    configured = result.stdout.strip()
    if result.returncode == 0 and configured:
        return Path(configured)
    config_home = os.environ.get("XDG_CONFIG_HOME")
    if config_home:
        return Path(config_home) / "git" / "ignore"
    home = os.environ.get("HOME")
    return Path(home) / ".config" / "git" / "ignore" if home else None


def _exclude_file_id(path: Path | None) -> str | None:
    """The id git records for a global exclude file, or None when git would not read it.

    git hashes what it parsed: the content with a newline appended (none for
    an empty file), as a blob.
    """
    if path is None or not os.access(path, os.R_OK):
        return None
    try:
        content = path.read_bytes()
    except OSError:
        return None
    return blob_id(content + b"\n" if content else content)
