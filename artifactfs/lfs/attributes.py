"""Which paths of a tree git-lfs owns: those whose ``filter`` attribute is ``lfs``.

Asked of git itself (``git check-attr --cached`` over a scratch index of the
tree), so the answer follows git's attribute rules exactly, including
``$GIT_DIR/info/attributes`` and the user's global attributes file. The
tree's ``.gitattributes`` blobs must be local (the blob cache is an alternate
of the gitdir).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from artifactfs.errors import ArtifactFSError
from artifactfs.state import Owner, run_as


def lfs_paths(gitdir: Path, tree: str, paths: Sequence[str], owner: Owner | None = None) -> set[str]:
    """The ``paths`` of ``tree`` that have ``filter=lfs`` (git runs as ``owner``, whom the gitdir is for)."""
    if not paths:
        return set()
    with tempfile.TemporaryDirectory(prefix="artifactfs-lfs-attr-") as scratch:
        if owner is not None:
            os.chown(scratch, owner.uid, owner.gid)
        environment = {**os.environ, "GIT_INDEX_FILE": os.path.join(scratch, "index")}
        _git(gitdir, ["read-tree", tree], environment, b"", owner)
        request = b"".join(os.fsencode(path) + b"\0" for path in paths)
        output = _git(
            gitdir, ["check-attr", "--cached", "-z", "--stdin", "filter"], environment, request, owner
        )
    fields = output.split(b"\0")
    return {
        os.fsdecode(fields[index])
        for index in range(0, len(fields) - 2, 3)
        if fields[index + 1] == b"filter" and fields[index + 2] == b"lfs"
    }


def _git(
    gitdir: Path, arguments: list[str], environment: dict[str, str], stdin: bytes, owner: Owner | None
) -> bytes:
    result: subprocess.CompletedProcess[bytes] = subprocess.run(
        ["git", "--git-dir", str(gitdir), *arguments],
        input=stdin,
        capture_output=True,
        env=environment,
        check=False,
        cwd=gitdir,
        **run_as(owner),
    )
    if result.returncode != 0:
        message = result.stderr.decode("utf-8", "replace").strip()
        raise ArtifactFSError(f"git {arguments[0]} failed: {message}")
    return result.stdout
