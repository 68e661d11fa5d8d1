"""Which paths of a tree git-lfs owns: those whose ``filter`` attribute is ``lfs``.

Asked of git itself (``git check-attr --cached`` over a scratch index of the
tree), so the answer follows git's attribute rules exactly, including
``$GIT_DIR/info/attributes`` and the user's global attributes file. The
tree's ``.gitattributes`` blobs must be local (the blob cache is an alternate
of the gitdir).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from artifactfs.state import Owner
from artifactfs.store.attributes import tree_attributes


def lfs_paths(gitdir: Path, tree: str, paths: Sequence[str], owner: Owner | None = None) -> set[str]:
    """The ``paths`` of ``tree`` that have ``filter=lfs`` (git runs as ``owner``, whom the gitdir is for)."""
    attributes = tree_attributes(gitdir, tree, paths, ["filter"], owner)
    return {path for path, values in attributes.items() if values.get("filter") == "lfs"}
