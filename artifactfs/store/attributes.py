"""The attributes git gives the paths of a tree, asked of git itself.

``git check-attr --cached`` over a scratch index of the tree, so the answer
follows git's own rules (the tree's ``.gitattributes``, ``$GIT_DIR/info/attributes``,
the user's global file). The tree's ``.gitattributes`` blobs must be local (the
blob cache is an alternate of the gitdir).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from artifactfs.errors import ArtifactFSError
from artifactfs.state import Owner, run_as


def tree_attributes(
    gitdir: Path, tree: str, paths: Sequence[str], names: Sequence[str], owner: Owner | None = None
) -> dict[str, dict[str, str]]:
    """``{path: {attribute: value}}`` for ``names`` on ``paths`` of ``tree`` (``unspecified`` included);
    git runs as ``owner`` (whom the gitdir is kept for), if given."""
    if not paths:
        return {}
    with tempfile.TemporaryDirectory(prefix="artifactfs-attr-") as scratch:
        if owner is not None:
            os.chown(scratch, owner.uid, owner.gid)
        environment = {**os.environ, "GIT_INDEX_FILE": os.path.join(scratch, "index")}
        _git(gitdir, ["read-tree", tree], environment, b"", owner)
        request = b"".join(os.fsencode(path) + b"\0" for path in paths)
        output = _git(
            gitdir, ["check-attr", "--cached", "-z", "--stdin", *names], environment, request, owner
        )
    attributes: dict[str, dict[str, str]] = {}
    fields = output.split(b"\0")
    for index in range(0, len(fields) - 2, 3):
        path, name, value = (os.fsdecode(field) for field in fields[index : index + 3])
        attributes.setdefault(path, {})[name] = value
    return attributes


def _git(
    gitdir: Path, arguments: list[str], environment: Mapping[str, str], stdin: bytes, owner: Owner | None
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
