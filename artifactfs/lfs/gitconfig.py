"""git-lfs in the gitdir: its filter driver, its hooks, and its storage in the blob cache.

Written when a tree has LFS files, at every mount start (the state root may
have moved). What ``git lfs install --local`` would write, plus
``lfs.storage`` pointing at the blob cache's LFS directory: git-lfs then
finds every object the mount has fetched, and the objects it creates
(``git add`` of an LFS file) and pushes (its pre-push hook) are stored once,
where the mount can serve them too. A hook the user already has is kept.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from artifactfs.state import Owner, private_dir, run_as, write_private_file

log = logging.getLogger("artifactfs.lfs")

_CONFIG = {
    "filter.lfs.process": "git-lfs filter-process",
    "filter.lfs.clean": "git-lfs clean -- %f",
    "filter.lfs.smudge": "git-lfs smudge -- %f",
    "filter.lfs.required": "true",
}
_HOOKS = {
    "pre-push": "pre-push",
    "post-checkout": "post-checkout",
    "post-commit": "post-commit",
    "post-merge": "post-merge",
}
_HOOK_TEMPLATE = """#!/bin/sh
# Written by ArtifactFS for Git LFS (as `git lfs install --local` would).
command -v git-lfs >/dev/null 2>&1 || {{ echo >&2 "This repository uses Git LFS; install git-lfs."; exit 2; }}
git lfs {command} "$@"
"""


def install_lfs_config(gitdir: Path, storage: Path, owner: Owner | None = None) -> None:
    """Configure git-lfs for ``gitdir`` with its objects under ``storage`` (as ``owner``, whom the
    gitdir is kept for)."""
    if shutil.which("git-lfs") is None:
        log.warning("the tree has LFS files but git-lfs is not installed: git cannot add or push them")
    for key, value in {**_CONFIG, "lfs.storage": str(storage)}.items():
        subprocess.run(
            ["git", "--git-dir", str(gitdir), "config", key, value],
            check=True,
            capture_output=True,
            cwd=gitdir,
            **run_as(owner),
        )
    hooks = private_dir(gitdir / "hooks", owner)
    for name, command in _HOOKS.items():
        hook = hooks / name
        if not hook.exists():
            write_private_file(
                hook, _HOOK_TEMPLATE.format(command=command).encode(), executable=True, owner=owner
            )
