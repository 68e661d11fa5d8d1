"""Submodules in a real mount: ``git submodule update --init`` works as it does in a clone.

Real FUSE, real ``git http-backend`` serving both repositories, real git.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from artifactfs.state import pid_alive
from artifactfs.testing import FileSpec
from artifactfs.testing.mounts import MountedTree

SUBMODULE_FILES: dict[str, bytes | FileSpec] = {
    "lib.c": b"int lib(void) { return 1; }\n",
    "include/lib.h": b"int lib(void);\n",
    "tool.sh": FileSpec(b"#!/bin/sh\necho tool\n", executable=True),
}


def superproject(make_repo: Any, git_server: Any) -> tuple[str, str]:
    """Serve ``sub`` and ``super`` (which has ``sub`` at ``vendor/sub``); return super's URL and sub's tip."""
    _, sub_tip = make_repo("sub", SUBMODULE_FILES)
    gitmodules = f'[submodule "sub"]\n\tpath = vendor/sub\n\turl = {git_server.url("sub")}\n'
    make_repo(
        "super",
        {
            "README.md": b"# super\n",
            ".gitmodules": gitmodules.encode(),
            "vendor/sub": FileSpec(gitlink=sub_tip),
            "vendor/other.txt": b"beside the submodule\n",
        },
    )
    return git_server.url("super"), sub_tip


def test_submodule_update_init_checks_the_submodule_out(
    make_repo: Any, git_server: Any, mounts: Any, state_root: Path
) -> None:
    url, sub_tip = superproject(make_repo, git_server)
    tree = mounts(url)
    submodule = tree.path / "vendor/sub"
    assert submodule.is_dir() and list(submodule.iterdir()) == []  # a placeholder, as in a clone
    tree.git("submodule", "update", "--init")
    assert (submodule / "lib.c").read_bytes() == SUBMODULE_FILES["lib.c"]
    assert (submodule / "include/lib.h").read_bytes() == SUBMODULE_FILES["include/lib.h"]
    assert (submodule / "tool.sh").stat().st_mode & 0o111
    # The submodule's gitdir is git's default, inside the mount's real gitdir under the state root.
    gitdir = Path(tree.git("-C", "vendor/sub", "rev-parse", "--absolute-git-dir").stdout.strip())
    assert gitdir.is_relative_to(state_root) and gitdir.name == "sub" and gitdir.parent.name == "modules"
    assert tree.git("-C", "vendor/sub", "rev-parse", "HEAD").stdout.strip() == sub_tip
    line = tree.git("submodule", "status").stdout
    assert line.startswith(" ") and line.split()[:2] == [sub_tip, "vendor/sub"]  # initialised, at the gitlink
    assert tree.git("status", "--porcelain").stdout == ""
    assert tree.git("-C", "vendor/sub", "status", "--porcelain").stdout == ""
    # Editing inside the submodule shows in both repositories, as in a clone.
    (submodule / "lib.c").write_bytes(b"int lib(void) { return 2; }\n")
    assert tree.git("-C", "vendor/sub", "status", "--porcelain").stdout == " M lib.c\n"
    assert tree.git("status", "--porcelain").stdout == " M vendor/sub\n"
    # The checkout survives a remount.
    tree.unmount()
    tree.mount()
    assert (submodule / "include/lib.h").read_bytes() == SUBMODULE_FILES["include/lib.h"]
    assert tree.git("-C", "vendor/sub", "rev-parse", "HEAD").stdout.strip() == sub_tip


def test_only_a_submodule_directory_takes_a_gitfile(make_repo: Any, git_server: Any, mounts: Any) -> None:
    url, _ = superproject(make_repo, git_server)
    tree = mounts(url)
    for path in ("vendor/.git", "vendor/sub/.GIT"):
        result = subprocess.run(["touch", str(tree.path / path)], capture_output=True, text=True)
        assert result.returncode != 0 and "Operation not permitted" in result.stderr
    assert subprocess.run(["mkdir", str(tree.path / "vendor/sub/.git")], capture_output=True).returncode != 0


def test_recurse_submodules_mounts_each_submodule_lazily(
    make_repo: Any, git_server: Any, mounts: Any, state_root: Path
) -> None:
    url, sub_tip = superproject(make_repo, git_server)
    tree = mounts(url, "--recurse-submodules")
    status = tree.wait_for(lambda status: status["submodules"].get("vendor/sub") != "mounting", timeout=60)
    assert status["submodules"] == {"vendor/sub": "mounted"}
    submodule = tree.path / "vendor/sub"
    assert os.path.ismount(submodule)
    assert (submodule / "lib.c").read_bytes() == SUBMODULE_FILES["lib.c"]
    assert (submodule / "include/lib.h").read_bytes() == SUBMODULE_FILES["include/lib.h"]
    # A mount of its own: its own daemon and gitdir under the state root, HEAD at the gitlink commit.
    inner = MountedTree(git_server.url("sub"), submodule, state_root)
    assert inner.status()["pid"] != tree.status()["pid"]
    assert Path(inner.status()["gitdir"]).is_relative_to(state_root)
    assert tree.git("-C", "vendor/sub", "rev-parse", "HEAD").stdout.strip() == sub_tip
    line = tree.git("submodule", "status").stdout
    assert line.split()[:2] == [sub_tip, "vendor/sub"] and not line.startswith(("-", "+"))
    assert tree.git("status", "--porcelain").stdout == ""
    (submodule / "lib.c").write_bytes(b"int lib(void) { return 3; }\n")
    assert tree.git("-C", "vendor/sub", "status", "--porcelain").stdout == " M lib.c\n"
    inner_pid = inner.status()["pid"]
    tree.unmount()  # the nested mount goes first
    assert not os.path.ismount(tree.path)
    assert wait_until(lambda: not pid_alive(inner_pid), timeout=30)


def wait_until(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
