"""Building served bare repositories quickly with ``git fast-import``.

Public testing helpers: the test suite and benchmark scripts use them to make
repositories of any shape (many files, long histories) in well under a second
per thousand commits.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

SERVED_CONFIG: dict[str, str] = {
    "uploadpack.allowFilter": "true",
    "uploadpack.allowAnySHA1InWant": "true",
    "transfer.advertiseObjectInfo": "true",
    "http.receivepack": "true",
    "gc.auto": "0",
}
"""Repository config that lets a served repository answer partial-clone
fetches, fetches of arbitrary object ids, object-info and pushes."""

_IDENTITY = "A U Thor <author@example.com>"
_EPOCH = 1_700_000_000


@dataclass(frozen=True)
class FileSpec:
    """A tree entry: file content, a symlink when ``symlink_target`` is set, or a
    submodule entry (gitlink) naming the commit ``gitlink``."""

    data: bytes = b""
    executable: bool = False
    symlink_target: str | None = None
    gitlink: str | None = None


def git_env() -> dict[str, str]:
    """Environment for git plumbing that ignores the user's and system config."""
    return dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0")


def git(repo: Path, *args: str, input: bytes | None = None) -> bytes:
    """Run ``git`` against ``repo`` (a git dir) and return its stdout; raise on failure."""
    result = subprocess.run(
        ["git", f"--git-dir={repo}", *args], input=input, capture_output=True, env=git_env(), check=False
    )
    if result.returncode != 0:
        command = " ".join(args[:2])
        raise RuntimeError(f"git {command} failed: {result.stderr.decode('utf-8', 'replace').strip()}")
    return result.stdout


def make_bare_repo(
    path: Path,
    files: Mapping[str, bytes | FileSpec],
    *,
    branch: str = "main",
    message: str = "Initial commit",
    extra_commits: int = 0,
    object_format: str = "sha1",
) -> str:
    """Create a bare repository at ``path`` whose ``branch`` (also ``HEAD``) holds
    ``files``; return the tip commit id.

    ``object_format`` is git's ``--object-format`` (``sha256`` builds a
    repository ArtifactFS must refuse).

    ``extra_commits`` adds that many history commits before the tip; the first
    of them introduces ``files`` and the rest, like the tip, leave the tree
    unchanged (history costs commits, not blobs).
    """
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "git",
            "init",
            "--quiet",
            "--bare",
            f"--initial-branch={branch}",
            f"--object-format={object_format}",
            str(path),
        ],
        env=git_env(),
        check=True,
    )
    for key, value in SERVED_CONFIG.items():
        git(path, "config", key, value)
    stream: list[bytes] = []
    for index in range(extra_commits):
        changes = _file_commands(files) if index == 0 else []
        stream.append(_commit(branch, f"History commit {index + 1}", _EPOCH + index, changes))
    tip_changes = _file_commands(files) if extra_commits == 0 else []
    stream.append(_commit(branch, message, _EPOCH + extra_commits, tip_changes))
    return _fast_import(path, branch, stream)


def commit_files(
    path: Path,
    files: Mapping[str, bytes | FileSpec],
    *,
    branch: str = "main",
    message: str = "Update files",
    delete: Iterable[str] = (),
) -> str:
    """Add one commit on top of ``branch`` (creating it if needed) that writes
    ``files`` and removes ``delete``; return its id."""
    ref = f"refs/heads/{branch}"
    tip = subprocess.run(
        ["git", f"--git-dir={path}", "show", "--no-patch", "--format=%ct", f"{ref}^0", "--"],
        capture_output=True,
        env=git_env(),
        check=False,
    )
    parent = f"{ref}^0" if tip.returncode == 0 else None
    timestamp = int(tip.stdout.strip()) + 1 if parent else _EPOCH
    changes = [f"D {_quote(name)}\n".encode() for name in delete] + _file_commands(files)
    return _fast_import(path, branch, [_commit(branch, message, timestamp, changes, parent=parent)])


def _commit(
    branch: str, message: str, timestamp: int, changes: list[bytes], *, parent: str | None = None
) -> bytes:
    """One fast-import commit; without ``parent`` it continues the branch as
    already built in this stream (or starts it)."""
    encoded = message.encode()
    parts = [
        f"commit refs/heads/{branch}\n".encode(),
        f"author {_IDENTITY} {timestamp} +0000\n".encode(),
        f"committer {_IDENTITY} {timestamp} +0000\n".encode(),
        b"data %d\n" % len(encoded),
        encoded + b"\n",
    ]
    if parent is not None:
        parts.append(f"from {parent}\n".encode())
    parts.extend(changes)
    return b"".join(parts)


def _file_commands(files: Mapping[str, bytes | FileSpec]) -> list[bytes]:
    commands: list[bytes] = []
    for name, value in sorted(files.items()):
        spec = value if isinstance(value, FileSpec) else FileSpec(value)
        if spec.gitlink is not None:
            commands.append(f"M 160000 {spec.gitlink} {_quote(name)}\n".encode())
            continue
        if spec.symlink_target is not None:
            mode, data = "120000", spec.symlink_target.encode()
        else:
            mode, data = ("100755" if spec.executable else "100644"), spec.data
        commands.append(
            f"M {mode} inline {_quote(name)}\n".encode() + b"data %d\n" % len(data) + data + b"\n"
        )
    return commands


def _quote(name: str) -> str:
    """Quote a path for fast-import when it needs it (C-style, like git)."""
    if not any(ch in name for ch in '"\\\n') and not name.startswith('"'):
        return name
    escaped = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _fast_import(path: Path, branch: str, commits: list[bytes]) -> str:
    git(path, "fast-import", "--quiet", "--done", input=b"".join(commits) + b"done\n")
    return git(path, "rev-parse", f"refs/heads/{branch}").decode().strip()


def distinct_content(label: str, size: int = 300) -> bytes:
    """Deterministic, incompressible bytes, distinct per label (so no two blobs are deltas of each other)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{label}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def served_tree(repo: Path, ref: str = "main") -> dict[str, tuple[str, bytes]]:
    """What the bare ``repo`` holds at ``ref``: path -> (mode, content), the reference a mount is checked against."""
    result = {}
    for record in filter(None, git(repo, "ls-tree", "-r", "-z", ref).split(b"\0")):
        meta, path = record.split(b"\t", 1)
        mode, _, oid = meta.split()
        result[path.decode()] = (mode.decode(), git(repo, "cat-file", "blob", oid.decode()))
    return result
