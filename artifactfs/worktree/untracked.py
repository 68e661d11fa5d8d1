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
* each directory's ``.gitignore``, by the id git computes for it; a
  directory without one has the null id, which tells git not to even look
  for it. git takes the id from the index entry, unless it would convert the
  file on the way in (``text``, ``eol``, ``ident``, ``filter`` or
  ``working-tree-encoding`` attributes, or ``core.autocrlf``): then it hashes
  what it parsed, the content with a newline appended. The attributes are
  asked of git itself (:func:`converting_paths`).

Each of these only decides speed, never correctness: where an id does not
match, git drops the cached listings below it and lists those directories.

The global exclude files are those of the user the daemon runs as. git run
by a user whose ``core.excludesFile`` differs rebuilds the cache once.
"""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from artifactfs.errors import ArtifactFSError
from artifactfs.objects import OID_SIZE, blob_id
from artifactfs.state import Owner, run_as
from artifactfs.store.attributes import tree_attributes
from artifactfs.worktree.ewah import encode_ewah, encode_varint

PER_DIRECTORY_EXCLUDE = ".gitignore"
DIR_FLAGS = (1 << 1) | (1 << 2)
"""``DIR_SHOW_OTHER_DIRECTORIES | DIR_HIDE_EMPTY_DIRECTORIES``: what ``git status`` asks by default."""
_NULL_OID = b"\0" * OID_SIZE
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
        return b"".join(
            [
                encode_varint(len(self.ident)),
                self.ident,
                _NULL_STAT,
                _NULL_STAT,
                struct.pack(">I", DIR_FLAGS),
                _oid_bytes(self.info_exclude_oid),
                _oid_bytes(self.excludes_file_oid),
                PER_DIRECTORY_EXCLUDE.encode() + b"\0",
                encode_varint(len(order)),
                bytes(names),
                encode_ewah(valid, len(order)),
                encode_ewah((), len(order)),  # check-only: only for untracked directories, and there are none
                encode_ewah(with_exclude, len(order)),
                _NULL_STAT * len(valid),
                b"".join(bytes.fromhex(order[position].exclude_oid or "") for position in with_exclude),
                b"\0",
            ]
        )


def _oid_bytes(oid: str | None) -> bytes:
    return bytes.fromhex(oid) if oid else _NULL_OID


def build_untracked_cache(
    worktree: Path,
    gitdir: Path,
    directories: Iterable[str],
    gitignores: Mapping[str, str],
    changed: Iterable[str] = (),
    owner: Owner | None = None,
) -> UntrackedCache:
    """The cache for a tree with these ``directories`` ("" is the root, "/"-separated).

    ``gitignores`` maps a directory to the id git records for its
    ``.gitignore`` (see :func:`gitignore_id`);
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
            ancestor = nodes.get(directory)
            if ancestor is not None:
                ancestor.valid = False
            if not directory:
                break
            directory = directory.rpartition("/")[0]
    return UntrackedCache(
        ident=untracked_ident(worktree),
        info_exclude_oid=_exclude_file_id(gitdir / "info" / "exclude"),
        excludes_file_oid=_exclude_file_id(global_excludes_file(gitdir, owner)),
        root=root,
    )


def gitignore_id(blob_oid: str, content: bytes | None, converted: bool) -> str:
    """The id git records for a per-directory ``.gitignore`` (``content`` None: not at hand, guess)."""
    if not converted or content is None:
        return blob_oid
    return _parsed_id(content)


def _parsed_id(content: bytes) -> str:
    """The id git gives an exclude file it read itself: of what it parsed, the content plus a newline.

    An empty file gets the empty blob's id (nothing is appended).
    """
    return blob_id(content + b"\n" if content else content)


_CONVERSION_ATTRIBUTES = ("text", "crlf", "eol", "ident", "filter", "working-tree-encoding")
_TEXT_VALUES = ("set", "input", "auto")


def converting_paths(gitdir: Path, tree: str, paths: Sequence[str], owner: Owner | None = None) -> set[str]:
    """Which ``paths`` of ``tree`` git converts when reading them from the working tree.

    Mirrors ``would_convert_to_git``: the attributes come from ``git
    check-attr --cached`` over a scratch index of ``tree`` (so the
    ``.gitattributes`` blobs must be local), plus ``core.autocrlf`` and the
    configured filter drivers. git runs as ``owner`` (whom the gitdir is kept for), if given.
    """
    if not paths:
        return set()
    attributes = tree_attributes(gitdir, tree, paths, _CONVERSION_ATTRIBUTES, owner)
    autocrlf = _git(gitdir, ["config", "--get", "core.autocrlf"], check=False, owner=owner).strip().lower()
    drivers = {
        name.split(".")[1]
        for name in _git(
            gitdir,
            ["config", "--name-only", "--get-regexp", r"^filter\..*\.(clean|smudge|process|required)$"],
            check=False,
            owner=owner,
        ).split()
    }
    return {path for path in paths if _converts(attributes.get(path, {}), autocrlf, drivers)}


def _converts(values: Mapping[str, str], autocrlf: str, drivers: set[str]) -> bool:
    if values.get("ident") == "set" or values.get("filter") in drivers:
        return True
    if values.get("working-tree-encoding", "unspecified") not in ("unspecified", "set", "unset"):
        return True
    for attribute in ("text", "crlf"):  # crlf is text's older spelling, consulted when text is unspecified
        value = values.get(attribute, "unspecified")
        if value == "unset":
            return False
        if value in _TEXT_VALUES:
            return True
    if values.get("eol") in ("lf", "crlf"):
        return True
    return autocrlf in ("true", "yes", "on", "1", "input")


def _git(
    gitdir: Path,
    arguments: list[str],
    environment: Mapping[str, str] | None = None,
    *,
    stdin: str | None = None,
    check: bool = True,
    owner: Owner | None = None,
) -> str:
    result: subprocess.CompletedProcess[str] = subprocess.run(
        ["git", "--git-dir", str(gitdir), *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        env=environment,
        check=False,
        cwd=gitdir,
        **run_as(owner),
    )
    if check and result.returncode != 0:
        raise ArtifactFSError(f"git {arguments[0]} failed: {result.stderr.strip()}")
    return result.stdout


def untracked_ident(worktree: Path) -> bytes:
    """The string git ties a cache to: the working tree's real path and the system's name."""
    location = os.path.realpath(worktree)
    return f"Location {location}, system {os.uname().sysname}".encode("utf-8", "surrogateescape") + b"\0"


def global_excludes_file(gitdir: Path, owner: Owner | None = None) -> Path | None:
    """``core.excludesFile`` as git resolves it for this user, or its XDG default."""
    configured = _git(
        gitdir, ["config", "--path", "--get", "core.excludesFile"], check=False, owner=owner
    ).strip()
    if configured:
        return Path(configured)
    config_home = os.environ.get("XDG_CONFIG_HOME")
    if config_home:
        return Path(config_home) / "git" / "ignore"
    home = os.environ.get("HOME")
    return Path(home) / ".config" / "git" / "ignore" if home else None


def _exclude_file_id(path: Path | None) -> str | None:
    """The id git records for a global exclude file (see :func:`_parsed_id`), or None when git would not read it."""
    if path is None or not os.access(path, os.R_OK):
        return None
    try:
        content = path.read_bytes()
    except OSError:
        return None
    return _parsed_id(content)
